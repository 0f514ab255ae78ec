"""Out-of-distribution detection from logits: scores, AUROC, FPR at 95% TPR, and OOD sets.

Sign convention: every score is *higher for more in-distribution* inputs, and in-distribution is
the positive class of the ROC. The temperature T divides the logits:

  * `msp`: maximum softmax probability at the training temperature, `max_k softmax(z / T)_k`;
  * `max_logit`: `max_k z_k` (independent of T);
  * `energy`: the negative free energy `T * logsumexp(z / T)`. The energy of Liu et al. (2020)
    is `E(x) = -T * logsumexp(z / T)` (low for in-distribution data); the score is `-E(x)`.

AUROC is the Mann-Whitney statistic `P(s_in > s_out) + P(s_in = s_out) / 2`, computed from
mid-ranks (tie-aware). FPR@95%TPR: the threshold `t` is the largest score that keeps at least
95% of the in-distribution scores `>= t`; the FPR is the fraction of OOD scores `>= t`.

OOD sets (`ood_sets`): `uniform_noise` (i.i.d. uniform pixels in [0, 1]), `inverted` (1 - x),
`blurred` (Gaussian blur, sigma = image height / 12 pixels), and for CIFAR the other CIFAR and
SVHN when their files are present (otherwise skipped with the loader's reason).
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

from tempscale_tf.validation import check_temperature

SCORES = ("msp", "max_logit", "energy")
OOD_SETS = ("uniform_noise", "inverted", "blurred", "cifar10", "cifar100", "svhn")


# ------------------------------------------------------------------------------------ scores


def _logsumexp(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def msp_score(logits, temperature=1.0) -> np.ndarray:
    """`max softmax(z / T)` per sample (higher = more in-distribution)."""
    t = check_temperature(temperature)
    z = np.asarray(logits, np.float64) / t
    return np.exp(np.max(z, axis=-1) - _logsumexp(z))


def max_logit_score(logits) -> np.ndarray:
    """`max z` per sample (higher = more in-distribution)."""
    return np.max(np.asarray(logits, np.float64), axis=-1)


def energy_score(logits, temperature=1.0) -> np.ndarray:
    """Negative energy `T * logsumexp(z / T)` per sample (higher = more in-distribution)."""
    t = check_temperature(temperature)
    return t * _logsumexp(np.asarray(logits, np.float64) / t)


def ood_scores(logits, temperature=1.0) -> dict:
    """{score name: [N] scores} for every name in `SCORES`."""
    return {
        "msp": msp_score(logits, temperature),
        "max_logit": max_logit_score(logits),
        "energy": energy_score(logits, temperature),
    }


# ----------------------------------------------------------------------------------- metrics


def midranks(x) -> np.ndarray:
    """1-based ranks of `x` with ties given the average of the ranks they span."""
    x = np.asarray(x, np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start index of each run of equal values in the sorted order.
    new_run = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    starts = np.flatnonzero(new_run)
    ends = np.concatenate([starts[1:], [len(x)]])
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def _check_scores(scores, name):
    scores = np.asarray(scores, np.float64).ravel()
    if scores.size == 0:
        raise ValueError(f"`{name}` is empty")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"`{name}` holds non-finite scores")
    return scores


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve with in-distribution as positives (rank-based, tie-aware).

    `(R_in - n_in (n_in + 1) / 2) / (n_in n_out)` with `R_in` the sum of the mid-ranks of the
    in-distribution scores in the pooled sample: 1 when every in-distribution score exceeds every
    OOD score, 0.5 for identical score sets.
    """
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    ranks = midranks(np.concatenate([s_in, s_out]))
    n_in, n_out = len(s_in), len(s_out)
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2.0) / (n_in * n_out))


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """False-positive rate (OOD accepted) at the threshold where the TPR first reaches `tpr`.

    The threshold is the `ceil(tpr * n_in)`-th largest in-distribution score; inputs with a
    score `>=` the threshold are called in-distribution.

    Args:
      scores_in: in-distribution scores (higher = more in-distribution).
      scores_out: OOD scores.
      tpr: the true-positive rate of the threshold.
    """
    s_in = np.sort(_check_scores(scores_in, "scores_in"))[::-1]
    s_out = _check_scores(scores_out, "scores_out")
    if not 0 < tpr <= 1:
        raise ValueError(f"`tpr` must be in (0, 1], received {tpr}")
    threshold = s_in[int(math.ceil(tpr * len(s_in) - 1e-9)) - 1]
    return float(np.mean(s_out >= threshold))


def ood_metrics(logits_in, logits_out, temperature=1.0) -> dict:
    """{score: {"auroc": ..., "fpr95": ...}} for every score of `ood_scores` at temperature T.

    Args:
      logits_in: in-distribution logits `[N, K]`.
      logits_out: OOD logits `[M, K]`.
      temperature: T of the scores.
    """
    s_in = ood_scores(logits_in, temperature)
    s_out = ood_scores(logits_out, temperature)
    return {
        name: {
            "auroc": auroc(s_in[name], s_out[name]),
            "fpr95": fpr_at_tpr(s_in[name], s_out[name]),
        }
        for name in SCORES
    }


# ---------------------------------------------------------------------------------- OOD sets


def uniform_noise(shape, seed=0) -> np.ndarray:
    """i.i.d. uniform [0, 1] images of `shape` [N, H, W, C] (float32)."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=shape).astype(np.float32)


def inverted(images) -> np.ndarray:
    """`1 - x` (photographic negative) of images in [0, 1]."""
    return (1.0 - np.asarray(images, np.float32)).astype(np.float32)


def blurred(images, sigma=None) -> np.ndarray:
    """Gaussian blur over height and width (default sigma: height / 12 pixels, ~2.7 at 32)."""
    from scipy.ndimage import gaussian_filter

    images = np.asarray(images, np.float32)
    sigma = images.shape[1] / 12.0 if sigma is None else float(sigma)
    return np.clip(gaussian_filter(images, sigma=(0, sigma, sigma, 0)), 0.0, 1.0).astype(np.float32)


def default_ood_sets(dataset: str) -> tuple:
    """The OOD sets used for `dataset` when none are named."""
    if dataset == "cifar10":
        return ("uniform_noise", "cifar100", "svhn")
    if dataset == "cifar100":
        return ("uniform_noise", "cifar10", "svhn")
    return ("uniform_noise", "inverted", "blurred")


def _svhn_test(data_dir) -> np.ndarray:
    """SVHN test images (uint8): `test_32x32.mat` (official) or a prepared tfds `svhn_cropped`."""
    from tempscale_tf import data as data_lib

    root = pathlib.Path(data_dir).expanduser() if data_dir else data_lib.default_data_dir()
    for rel in ("test_32x32.mat", "svhn/test_32x32.mat"):
        path = root / rel
        if path.exists():
            from scipy.io import loadmat

            return np.transpose(loadmat(path)["X"], (3, 0, 1, 2)).astype(np.uint8)
    if any((root / "svhn_cropped").glob("*/dataset_info.json")):
        import tensorflow_datasets as tfds

        ds = tfds.load(
            "svhn_cropped", split="test", data_dir=str(root), download=False, batch_size=-1
        )
        return np.asarray(tfds.as_numpy(ds)["image"], np.uint8)
    raise FileNotFoundError(
        f"SVHN not found under {root}: put the official test_32x32.mat there (or in svhn/), or "
        "a tensorflow-datasets `svhn_cropped` build"
    )


def make_ood_set(name: str, images_in, data_dir=None, max_examples=None, seed=0) -> np.ndarray:
    """Float32 images in [0, 1] of the OOD set `name`, shaped like `images_in` [N, H, W, C].

    Transformed sets (`inverted`, `blurred`) transform `images_in`; `uniform_noise` has as many
    images as `images_in`; dataset sets (`cifar10`, `cifar100`, `svhn`) take a seeded sample of
    `max_examples` (default len(images_in)) test images.

    Args:
      name: one of `OOD_SETS`.
      images_in: the in-distribution images `[N, H, W, C]` in [0, 1].
      data_dir: where a dataset set's files are.
      max_examples: size of a dataset set (default `len(images_in)`).
      seed: the seed of the sample and of the noise.

    Raises:
      FileNotFoundError / ValueError: when a dataset set's files are missing or unreadable, or
        its images do not have the in-distribution image shape.
    """
    from tempscale_tf.analysis.features import to_float_images
    from tempscale_tf.data import subset_indices

    images_in = np.asarray(images_in, np.float32)
    n = int(max_examples or len(images_in))
    if name == "uniform_noise":
        return uniform_noise((n, *images_in.shape[1:]), seed)
    if name == "inverted":
        return inverted(images_in[:n])
    if name == "blurred":
        return blurred(images_in[:n])
    if name in ("cifar10", "cifar100"):
        from tempscale_tf import data as data_lib

        images, _ = data_lib.load_arrays(name, "test", data_dir)
    elif name == "svhn":
        images = _svhn_test(data_dir)
    else:
        raise ValueError(f"unknown OOD set {name!r}; use one of {', '.join(OOD_SETS)}")
    if tuple(images.shape[1:]) != tuple(images_in.shape[1:]):
        raise ValueError(
            f"OOD set {name!r} has images of shape {images.shape[1:]}, the in-distribution "
            f"data {images_in.shape[1:]}"
        )
    return to_float_images(images[subset_indices(len(images), n, seed=seed)])


def ood_sets(names, images_in, data_dir=None, max_examples=None, seed=0):
    """Build several OOD sets; those whose loader fails are skipped (unknown names raise).

    Args:
      names: OOD set names.
      images_in: the in-distribution images.
      data_dir: where dataset sets' files are.
      max_examples: size of dataset sets.
      seed: the seed of samples and noise.

    Returns:
      (dict name -> images, dict name -> reason for every skipped set).
    """
    unknown = [n for n in names if n not in OOD_SETS]
    if unknown:
        raise ValueError(f"unknown OOD set(s) {unknown}; use any of {', '.join(OOD_SETS)}")
    sets, skipped = {}, {}
    for name in names:
        try:
            sets[name] = make_ood_set(name, images_in, data_dir, max_examples, seed)
        except (FileNotFoundError, ValueError, OSError, ImportError) as e:
            skipped[name] = f"{type(e).__name__}: {e}"
    return sets, skipped
