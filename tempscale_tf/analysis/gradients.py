"""Per-sample gradients of the temperature cross-entropy (paper Sec. III, Eq. 4-6).

Convention: the temperature T *divides* the logits. For one sample with logits `z` [K], one-hot
label `y`, `p = softmax(z / T)` and the loss `CE_T = -log p_y`:

  * w.r.t. the logits:              dCE_T/dz = (p - y) / T,
  * w.r.t. the penultimate features `f` of a final Dense layer `z = f @ kernel + b`
    (`kernel` [D, K], i.e. `z = W f + b` with `W = kernel^T`):
                                    dCE_T/df = W^T (p - y) / T = kernel @ (p - y) / T.

The norm `||p - y||` lies in [0, sqrt(2)]: it vanishes for confidently correct samples and
approaches sqrt(2) for confidently wrong ones; at a high T, `p` flattens towards uniform, so
`||p - y||` stays large for every sample (hard samples keep their gradient) while the whole
gradient shrinks by 1/T (the effective learning rate drops unless lr is scaled by T).

"Hard" samples are those with a low logit margin `z_y - max_{j != y} z_j`: the bottom quartile of
margins in the batch, or the misclassified ones (margin < 0). Their *gradient share* is the
fraction of the summed per-sample gradient norms that they contribute,
`sum_{hard} ||g_i|| / sum_i ||g_i||` (with `power=2`, of the summed squared norms).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tempscale_tf.losses import temperature_cross_entropy
from tempscale_tf.validation import check_temperature


def softmax(logits, temperature=1.0) -> np.ndarray:
    """`softmax(logits / temperature)` along the last axis, in float64 (the temperature divides)."""
    t = check_temperature(temperature)
    z = np.asarray(logits, np.float64) / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def one_hot(labels, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float64)[np.asarray(labels, np.int64)]


def logit_margin(logits, labels) -> np.ndarray:
    """`z_y - max_{j != y} z_j` per sample [N] (negative: misclassified; 0 on ties)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    rows = np.arange(len(labels))
    true = logits[rows, labels]
    other = logits.copy()
    other[rows, labels] = -np.inf
    return true - other.max(axis=-1)


def logit_gradients(logits, labels, temperature=1.0) -> np.ndarray:
    """Per-sample gradient of `CE(softmax(z / T), y)` w.r.t. the logits: `(p - y) / T` [N, K].

    Args:
      logits: `[N, K]`.
      labels: int `[N]`.
      temperature: T, which divides the logits.
    """
    t = check_temperature(temperature)
    logits = np.asarray(logits, np.float64)
    return (softmax(logits, t) - one_hot(labels, logits.shape[-1])) / t


def logit_gradient_norms(logits, labels, temperature=1.0) -> np.ndarray:
    """`||softmax(z / T) - y||_2 / T` per sample [N].

    Args:
      logits: `[N, K]`.
      labels: int `[N]`.
      temperature: T, which divides the logits.
    """
    return np.linalg.norm(logit_gradients(logits, labels, temperature), axis=-1)


def feature_gradients(logits, labels, kernel, temperature=1.0) -> np.ndarray:
    """Analytic per-sample gradient w.r.t. the penultimate features: `kernel @ (p - y) / T`.

    Args:
      logits: [N, K] logits of the features (`features @ kernel + bias`).
      labels: int [N].
      kernel: [D, K] kernel of the final Dense layer (`head_parameters`).
      temperature: T > 0, divides the logits.

    Returns:
      float64 [N, D].
    """
    return logit_gradients(logits, labels, temperature) @ np.asarray(kernel, np.float64).T


def feature_gradients_autodiff(head, features, labels, temperature=1.0) -> np.ndarray:
    """Per-sample feature gradients by automatic differentiation through `head`.

    Differentiates the *summed* loss `sum_i CE(softmax(head(f_i) / T), y_i)` w.r.t. the batch of
    features; samples are independent, so row i is the gradient of sample i's own loss.

    Args:
      head: a callable (e.g. the model's `logits` Dense layer) mapping features [N, D] to logits.
      features: [N, D].
      labels: int [N].
      temperature: T > 0, divides the logits.

    Returns:
      float32 [N, D].
    """
    f = tf.convert_to_tensor(np.asarray(features, np.float32))
    with tf.GradientTape() as tape:
        tape.watch(f)
        loss = temperature_cross_entropy(
            np.asarray(labels, np.int32), head(f), temperature, reduction="sum"
        )
    return tape.gradient(loss, f).numpy()


def hard_mask(margins, rule: str = "quartile", quantile: float = 0.25) -> np.ndarray:
    """Boolean [N] mask of the hard samples.

    Args:
      margins: logit margins [N] (`logit_margin`).
      rule: "quartile": the `ceil(quantile * N)` samples with the lowest margins (ties broken by
        position); "misclassified": margin < 0 (ties at the top count as correct).
      quantile: fraction of samples called hard under the "quartile" rule.
    """
    margins = np.asarray(margins, np.float64)
    mask = np.zeros(len(margins), bool)
    if rule == "misclassified":
        return margins < 0
    if rule != "quartile":
        raise ValueError(f"unknown rule {rule!r}; use 'quartile' or 'misclassified'")
    if not 0 < quantile <= 1:
        raise ValueError(f"`quantile` must be in (0, 1], received {quantile}")
    n_hard = int(math.ceil(quantile * len(margins)))
    mask[np.argsort(margins, kind="stable")[:n_hard]] = True
    return mask


def gradient_share(norms, mask, power: float = 1.0) -> float:
    """Fraction `sum_{mask} ||g_i||^power / sum_i ||g_i||^power` (NaN if all gradients are 0).

    Args:
      norms: per-sample gradient norms `[N]`.
      mask: bool `[N]`, the samples whose share is returned.
      power: the exponent on the norms.
    """
    weights = np.asarray(norms, np.float64) ** power
    total = weights.sum()
    return float(weights[np.asarray(mask, bool)].sum() / total) if total > 0 else float("nan")


def gradient_statistics(logits, labels, temperature=1.0, kernel=None, quantile=0.25) -> dict:
    """Scalar summaries of the per-sample gradients of one model at temperature T.

    Returns a dict with `logit_norm_{mean,median}`, `logit_norm_{hard,easy}_median` (quartile
    rule), `hard_share` (share of the summed logit-gradient norms from the bottom `quantile` of
    margins), `misclassified_share` (from the misclassified samples; 0 if there are none),
    `misclassified_fraction`, and with `kernel` also `feature_norm_{mean,median}` and
    `feature_hard_share` (feature-space norms of `kernel @ (p - y) / T`).

    Args:
      logits: `[N, K]`.
      labels: int `[N]`.
      temperature: T, which divides the logits.
      kernel: the head's kernel `[D, K]` for the feature-space norms (None: skip them).
      quantile: the fraction of lowest-margin samples called hard.
    """
    margins = logit_margin(logits, labels)
    norms = logit_gradient_norms(logits, labels, temperature)
    hard = hard_mask(margins, "quartile", quantile)
    wrong = hard_mask(margins, "misclassified")
    stats = {
        "logit_norm_mean": float(norms.mean()),
        "logit_norm_median": float(np.median(norms)),
        "logit_norm_hard_median": float(np.median(norms[hard])),
        "logit_norm_easy_median": float(np.median(norms[~hard])) if (~hard).any() else math.nan,
        "hard_share": gradient_share(norms, hard),
        "misclassified_share": gradient_share(norms, wrong) if wrong.any() else 0.0,
        "misclassified_fraction": float(wrong.mean()),
    }
    if kernel is not None:
        fnorms = np.linalg.norm(feature_gradients(logits, labels, kernel, temperature), axis=-1)
        stats["feature_norm_mean"] = float(fnorms.mean())
        stats["feature_norm_median"] = float(np.median(fnorms))
        stats["feature_hard_share"] = gradient_share(fnorms, hard)
    return stats


def temperature_sweep(logits, labels, temperatures, quantile=0.25) -> dict:
    """Gradient statistics of fixed logits re-evaluated at each loss temperature.

    Answers "which samples would drive the update if this model's loss were taken at T?" (the
    logits stay fixed; only the loss temperature changes).

    Args:
      logits: `[N, K]` (fixed).
      labels: int `[N]`.
      temperatures: the loss temperatures.
      quantile: the fraction of lowest-margin samples called hard.

    Returns:
      dict of float arrays over `temperatures`: `temperature`, `hard_share`,
      `misclassified_share`, `logit_norm_hard_median`, `logit_norm_easy_median`.
    """
    rows = [gradient_statistics(logits, labels, t, quantile=quantile) for t in temperatures]
    keys = ("hard_share", "misclassified_share", "logit_norm_hard_median", "logit_norm_easy_median")
    out = {k: np.array([r[k] for r in rows]) for k in keys}
    out["temperature"] = np.asarray(temperatures, np.float64)
    return out


def two_level_gradient_norm(margins, temperature, num_classes: int = 10) -> np.ndarray:
    """`||dCE_T/dz||` for logits `z_y = m`, `z_j = 0` (j != y) as a function of the margin m.

    The closed form of the model-free curve: `p_y = e^{m/T} / (e^{m/T} + K - 1)`,
    `||p - y||^2 = (1 - p_y)^2 + (K - 1) p_j^2` with `p_j = (1 - p_y) / (K - 1)`, divided by T.

    Args:
      margins: the margins m (array).
      temperature: T.
      num_classes: K.
    """
    t = check_temperature(temperature)
    m = np.asarray(margins, np.float64)
    k = int(num_classes)
    # 1 - p_y = (K - 1) / (e^{m/T} + K - 1), computed stably for large |m / T|.
    one_minus_py = np.exp(np.log(k - 1) - np.logaddexp(m / t, np.log(k - 1)))
    pj = one_minus_py / (k - 1)
    return np.sqrt(one_minus_py**2 + (k - 1) * pj**2) / t
