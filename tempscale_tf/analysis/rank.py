"""Rank of representations: effective rank, numerical rank, accuracy under PCA truncation.

* Effective rank (Roy & Vetterli, 2007): with singular values `s_i` of the (centred) matrix and
  `p_i = s_i / sum_j s_j`, `erank = exp(-sum_i p_i log p_i)` (0 log 0 = 0). k equal non-zero
  singular values give exactly k; it is 0 for an all-zero matrix by convention here.
* Numerical rank: the number of singular values above `tol`. The default tolerance is the one of
  `numpy.linalg.matrix_rank` / LAPACK, `tol = s_max * max(N, D) * eps`, where `eps` is the machine
  epsilon of the *input* dtype (float32 model outputs: 1.19e-7), since the data carry that
  precision even though the SVD runs in float64. `rtol` instead sets `tol = rtol * s_max`.
* PCA truncation: features are centred (`mu` = their mean), projected onto their top-k principal
  directions `V_k`, `f_k = mu + (f - mu) V_k V_k^T`, and classified by the model's own final Dense
  layer `z = f_k @ kernel + bias`; nothing is refit. k = rank recovers the model's logits.

Matrices are "centred" by subtracting the column (feature) mean over samples. The temperature
(which divides the logits) does not enter these functions; compare runs trained at different T.
"""

from __future__ import annotations

import numpy as np


def _matrix(x, center: bool) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a matrix [N, D], received shape {x.shape}")
    x = x.astype(np.float64)
    return x - x.mean(axis=0, keepdims=True) if center else x


def singular_values(x, center: bool = True) -> np.ndarray:
    """Singular values (descending, float64) of `x` [N, D], centred over rows by default."""
    return np.linalg.svd(_matrix(x, center), compute_uv=False)


def effective_rank_from_singular_values(s) -> float:
    """`exp(entropy(s / sum(s)))` of non-negative singular values (0 if they are all 0)."""
    s = np.asarray(s, np.float64)
    if np.any(s < 0):
        raise ValueError("singular values must be non-negative")
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def effective_rank(x, center: bool = True) -> float:
    """Roy & Vetterli's effective rank of `x` [N, D] (centred over rows by default)."""
    return effective_rank_from_singular_values(singular_values(x, center))


def default_rank_tolerance(s, shape, dtype) -> float:
    """`s_max * max(shape) * eps(dtype)` (numpy's matrix_rank rule, eps of the input dtype).

    Args:
      s: singular values.
      shape: the matrix's shape.
      dtype: the input's dtype (its machine epsilon).
    """
    s = np.asarray(s)
    eps = (
        np.finfo(dtype).eps if np.issubdtype(np.dtype(dtype), np.floating) else np.finfo(float).eps
    )
    return float((s.max() if s.size else 0.0) * max(shape) * eps)


def numerical_rank(x, center: bool = True, tol=None, rtol=None) -> int:
    """Number of singular values of `x` (centred by default) above a tolerance.

    Args:
      x: [N, D].
      center: subtract the mean row first.
      tol: absolute tolerance; default `default_rank_tolerance` (see the module docstring).
      rtol: relative tolerance, `tol = rtol * s_max` (exclusive with `tol`).
    """
    if tol is not None and rtol is not None:
        raise ValueError("give at most one of `tol` and `rtol`")
    dtype = np.asarray(x).dtype
    s = singular_values(x, center)
    if tol is None:
        tol = rtol * s.max() if rtol is not None else default_rank_tolerance(s, np.shape(x), dtype)
    return int(np.sum(s > tol))


def projected_accuracies(features, labels, kernel, bias, ks=None, fit_features=None):
    """Accuracy of the model's own head on features projected onto their top-k PCs.

    Args:
      features: [N, D] features to classify.
      labels: int [N].
      kernel, bias: the final Dense layer (`[D, K]`, `[K]`).
      ks: the k values (default 0 .. min(N_fit, D)); k = 0 keeps only the mean feature.
      fit_features: features whose mean and principal directions are used (default: `features`).

    Returns:
      (ks int array, accuracies float array).
    """
    features = np.asarray(features, np.float64)
    fit = features if fit_features is None else np.asarray(fit_features, np.float64)
    labels = np.asarray(labels, np.int64)
    kernel = np.asarray(kernel, np.float64)
    bias = np.asarray(bias, np.float64)
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)  # rows: principal directions
    max_k = vt.shape[0]
    ks = np.arange(max_k + 1) if ks is None else np.asarray(ks, np.int64)
    if ks.size and (ks.min() < 0 or ks.max() > max_k):
        raise ValueError(f"k must be in [0, {max_k}], received {ks.tolist()}")
    coords = (features - mean) @ vt.T  # [N, r]
    head = vt @ kernel  # [r, K]: each principal direction's contribution to the logits
    # logits_k = (mu + sum_{i<k} c_i v_i) @ kernel + b, accumulated one direction at a time.
    logits = np.broadcast_to(mean @ kernel + bias, (len(features), kernel.shape[1])).copy()
    by_k = {}
    wanted = set(int(k) for k in ks)
    for k in range(max(wanted, default=0) + 1):
        if k > 0:
            logits += np.outer(coords[:, k - 1], head[k - 1])
        if k in wanted:
            by_k[k] = float(np.mean(np.argmax(logits, axis=-1) == labels))
    accs = [by_k[int(k)] for k in ks]
    return ks, np.asarray(accs)


def smallest_k_within(ks, accuracies, reference, tolerance=0.01):
    """Smallest k whose accuracy is >= `reference - tolerance` (None if none is).

    With accuracies in [0, 1], `tolerance=0.01` is "within 1 point" of the reference (e.g. the
    accuracy of the full features).

    Args:
      ks: the numbers of kept components, increasing.
      accuracies: the accuracy at each k.
      reference: the accuracy to be within `tolerance` of.
      tolerance: the allowed drop.
    """
    ks = np.asarray(ks)
    accuracies = np.asarray(accuracies, np.float64)
    ok = accuracies >= reference - tolerance - 1e-12
    if not ok.any():
        return None
    return int(ks[ok].min())
