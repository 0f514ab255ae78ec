"""Feature geometry around class prototypes (paper Fig. 1, 2/3, 6/7).

The *prototype* of class c is the mean penultimate feature of the evaluated samples labelled c
(true labels): `mu_c = mean_{i: y_i = c} f_i`. Statistics use population moments (ddof = 0).
The temperature (which divides the logits, `softmax(z / T)`) enters only through the gradients
whose direction is compared with the direction to the prototype.
"""

from __future__ import annotations

import numpy as np


def class_prototypes(features, labels, num_classes=None) -> np.ndarray:
    """Class-mean features [K, D] (rows of classes without samples are NaN).

    Args:
      features: `[N, D]`.
      labels: int `[N]`.
      num_classes: K (default: the largest label + 1).
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    k = int(num_classes if num_classes is not None else labels.max() + 1)
    sums = np.zeros((k, features.shape[1]))
    np.add.at(sums, labels, features)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def _cosine(a, b, eps=1e-12) -> np.ndarray:
    """Row-wise cosine similarity (0 where a row has zero norm)."""
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(na * nb, eps)


def prototype_statistics(features, labels, prototypes=None, num_classes=None) -> dict:
    """Per-class distance and cosine statistics of samples w.r.t. their class prototype.

    For every sample i of class c: `d_i = ||f_i - mu_c||_2` (Euclidean distance) and
    `s_i = cos(f_i, mu_c) = <f_i, mu_c> / (||f_i|| ||mu_c||)` (cosine similarity of the feature
    and prototype vectors, both taken from the origin).

    Args:
      features: [N, D]; labels: int [N].
      prototypes: [K, D]; default `class_prototypes(features, labels)`.
      num_classes: K (default: from `prototypes` or the labels).

    Returns:
      dict of float64 arrays [K]: `count`, `distance_mean`, `distance_var`, `cosine_mean`,
      `cosine_var`, `prototype_norm` (NaN for classes without samples), and the per-sample
      `distance` and `cosine` arrays [N].
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    if prototypes is None:
        prototypes = class_prototypes(features, labels, num_classes)
    prototypes = np.asarray(prototypes, np.float64)
    k = prototypes.shape[0]
    own = prototypes[labels]
    distance = np.linalg.norm(features - own, axis=-1)
    cosine = _cosine(features, own)
    out = {
        name: np.full(k, np.nan)
        for name in ("distance_mean", "distance_var", "cosine_mean", "cosine_var")
    }
    out["count"] = np.bincount(labels, minlength=k).astype(np.float64)
    out["prototype_norm"] = np.linalg.norm(prototypes, axis=-1)
    for c in range(k):
        sel = labels == c
        if sel.any():
            out["distance_mean"][c] = distance[sel].mean()
            out["distance_var"][c] = distance[sel].var()
            out["cosine_mean"][c] = cosine[sel].mean()
            out["cosine_var"][c] = cosine[sel].var()
    out["distance"], out["cosine"] = distance, cosine
    return out


def summarize_prototype_statistics(stats: dict) -> dict:
    """Class-averaged scalars of `prototype_statistics` (unweighted mean over present classes).

    `relative_distance_mean` divides each class's mean distance by its prototype's norm, so runs
    whose features have different scales (as different temperatures produce) can be compared.
    """
    present = stats["count"] > 0
    mean = lambda key: float(np.mean(stats[key][present]))
    return {
        "distance_mean": mean("distance_mean"),
        "distance_var": mean("distance_var"),
        "cosine_mean": mean("cosine_mean"),
        "cosine_var": mean("cosine_var"),
        "relative_distance_mean": float(
            np.mean(
                stats["distance_mean"][present]
                / np.maximum(stats["prototype_norm"][present], 1e-12)
            )
        ),
    }


def prototype_direction_cosines(features, labels, feature_gradients, prototypes) -> np.ndarray:
    """Cosine between each sample's descent direction and the direction to its prototype.

    `cos(-g_i, mu_{y_i} - f_i)` where `g_i` is the gradient of sample i's loss w.r.t. its
    feature (`gradients.feature_gradients`, at the temperature of interest). 1 means a gradient
    step moves the feature straight towards its class prototype. Samples sitting on their
    prototype or with a zero gradient get 0.

    Args:
      features: `[N, D]`.
      labels: int `[N]`.
      feature_gradients: `[N, D]`, the per-sample loss gradients w.r.t. the features.
      prototypes: `[K, D]` (`class_prototypes`).

    Returns:
      float64 [N].
    """
    features = np.asarray(features, np.float64)
    to_prototype = np.asarray(prototypes, np.float64)[np.asarray(labels, np.int64)] - features
    return _cosine(-np.asarray(feature_gradients, np.float64), to_prototype)


def tsne_embedding(features, max_examples=1000, seed=0, perplexity=30.0):
    """2-D t-SNE (scikit-learn, PCA initialisation) of a seeded sample of the features.

    Features are standardised by their overall scale (divided by the RMS norm) first, so runs
    with different feature scales get comparable perplexity calibration.

    Args:
      features: `[N, D]`.
      max_examples: embed a seeded sample of this many (None/0: all).
      seed: the sample's and t-SNE's seed.
      perplexity: t-SNE's perplexity (capped below the sample size).

    Returns:
      (embedding float32 [n, 2], indices [n] of the embedded samples).

    Raises:
      ValueError: if the sample has fewer than 3 distinct feature vectors (a collapsed model).
    """
    from sklearn.manifold import TSNE

    from tempscale_tf.data import subset_indices

    features = np.asarray(features, np.float64)
    idx = subset_indices(len(features), max_examples, seed=seed)
    x = features[idx]
    x = x - x.mean(axis=0)
    scale = np.sqrt(np.mean(np.sum(x**2, axis=1)))
    if len(np.unique(x, axis=0)) < 3 or not scale > 0:
        # scikit-learn's Barnes-Hut t-SNE crashes on (near-)identical points.
        raise ValueError(
            "t-SNE needs at least 3 distinct feature vectors; these features are collapsed "
            f"({len(np.unique(x, axis=0))} distinct of {len(x)})"
        )
    x = x / scale
    perplexity = float(min(perplexity, max(2.0, (len(idx) - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(x).astype(np.float32), idx
