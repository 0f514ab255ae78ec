"""Calibration metrics and post-hoc temperature scaling.

Convention (as everywhere in this library): the temperature T *divides* the logits, and the
calibrated probabilities are `softmax(logits / T)`. A fitted temperature is *absolute*: it divides
the model's raw logits (if the model was trained at some temperature T_train, the fitted T is not
relative to T_train).

Metrics (numpy, float64, no TensorFlow needed):

  - `expected_calibration_error(probs, labels, n_bins)`: top-label ECE with equal-width bins
    (Guo et al. 2017): `sum_b (n_b / N) |acc_b - conf_b|`.
  - `classwise_ece(probs, labels, n_bins)`: the mean over classes of the ECE of each class's
    probability against the event `y == k` (Kull et al. 2019).
  - `negative_log_likelihood(logits, labels, temperature)`: mean `-log softmax(logits / T)_y`.
  - `brier_score(probs, labels)`: mean over examples of `sum_k (p_k - 1[y == k])^2` (in [0, 2]).
  - `reliability_diagram(probs, labels, n_bins, path)`: a matplotlib figure (Agg, no display).

Temperature scaling: `fit_temperature(logits, labels)` minimises the validation NLL of
`softmax(logits / T)` over T (a bounded 1-D search on log T), and `calibrated_model(model, T)`
appends the library's `TemperatureScaling` layer so the fitted T is saved with the model.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from tempscale_tf.validation import check_positive_int, check_temperature

__all__ = [
    "brier_score",
    "calibrated_model",
    "calibration_metrics",
    "classwise_ece",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_diagram",
    "softmax",
]

# Tolerance for probabilities computed in float32 (values slightly outside [0, 1], row sums).
_PROB_ATOL = 1e-5
_ROW_SUM_ATOL = 1e-3


# ------------------------------------------------------------------------------ input checks


def _as_numpy(x, name):
    if hasattr(x, "numpy"):
        x = x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be array-like, received {type(x).__name__}") from e


def _check_labels(labels, num_examples: int, num_classes: int) -> np.ndarray:
    """Integer class ids `[N]` (or `[N, 1]`) in `[0, num_classes)` -> int64 `[N]`."""
    labels = _as_numpy(labels, "labels")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"`labels` must be integer class ids of shape [N], received shape {labels.shape}"
        )
    if len(labels) != num_examples:
        raise ValueError(
            f"`labels` has {len(labels)} entries but there are {num_examples} predictions"
        )
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("`labels` must be integer class ids, received non-integer floats")
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"`labels` must be integer class ids, received dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if num_examples and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}) for {num_classes} classes, received "
            f"values in [{labels.min()}, {labels.max()}]"
        )
    return labels


def _check_2d(x, name) -> np.ndarray:
    x = _as_numpy(x, name)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must have shape [N, num_classes], received shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is empty: at least one example is needed")
    if x.shape[1] < 2:
        raise ValueError(f"`{name}` must have at least 2 classes, received shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"`{name}` must be numeric, received dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return x


def _check_probs_labels(probs, labels):
    probs = _check_2d(probs, "probs")
    if probs.min() < -_PROB_ATOL or probs.max() > 1.0 + _PROB_ATOL:
        raise ValueError(
            f"`probs` must lie in [0, 1], received values in [{probs.min()}, {probs.max()}]; "
            "pass probabilities (softmax outputs), not logits"
        )
    sums = probs.sum(axis=1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > _ROW_SUM_ATOL:
        raise ValueError(
            f"each row of `probs` must sum to 1 (a distribution over classes); the largest "
            f"deviation is {worst:.3g}"
        )
    probs = np.clip(probs, 0.0, 1.0)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    return probs, labels


def _check_bins(n_bins) -> int:
    return check_positive_int(n_bins, "n_bins")


# ------------------------------------------------------------------------------------ metrics


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """`softmax(logits / temperature)` along the last axis, numpy float64 (stable)."""
    t = check_temperature(temperature)
    z = np.asarray(logits, dtype=np.float64) / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1] closed on the right: bin b holds (b/n, (b+1)/n], bin 0 also 0."""
    return np.clip(np.ceil(values * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _binned_gap(scores: np.ndarray, hits: np.ndarray, n_bins: int) -> float:
    """`sum_b (n_b / N) |mean(hits in b) - mean(scores in b)|` over equal-width score bins."""
    bins = _bin_index(scores, n_bins)
    score_sum = np.bincount(bins, weights=scores, minlength=n_bins)
    hit_sum = np.bincount(bins, weights=hits.astype(np.float64), minlength=n_bins)
    # |sum hits - sum scores| / N is the same as (n_b / N) |acc_b - conf_b|; empty bins give 0.
    return float(np.sum(np.abs(hit_sum - score_sum)) / len(scores))


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Top-label expected calibration error with `n_bins` equal-width confidence bins.

    `ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|`, where the confidence of an example is
    its largest probability, its prediction is the argmax (the first one on ties), and bin b
    holds confidences in `(b / n_bins, (b + 1) / n_bins]`. Empty bins contribute 0.

    Args:
      probs: `[N, K]` probabilities (rows sum to 1), e.g. `softmax(logits / T)`.
      labels: `[N]` integer class ids in `[0, K)`.
      n_bins: number of equal-width bins on [0, 1].

    Returns:
      The ECE as a Python float in [0, 1].
    """
    probs, labels = _check_probs_labels(probs, labels)
    n_bins = _check_bins(n_bins)
    predictions = np.argmax(probs, axis=1)
    confidences = probs[np.arange(len(labels)), predictions]
    return _binned_gap(confidences, predictions == labels, n_bins)


def classwise_ece(probs, labels, n_bins: int = 15) -> float:
    """Class-wise ECE: the mean over classes k of the binned calibration error of `p_k`.

    For each class k, all N examples are binned by `probs[:, k]` (equal-width bins as in
    `expected_calibration_error`) and `ECE_k = sum_b (n_b / N) |freq_b(y == k) - mean_b(p_k)|`;
    the result is `mean_k ECE_k` (Kull et al., 2019).

    Args:
      probs: `[N, K]` predicted probabilities.
      labels: int `[N]`.
      n_bins: equal-width confidence bins.
    """
    probs, labels = _check_probs_labels(probs, labels)
    n_bins = _check_bins(n_bins)
    per_class = [_binned_gap(probs[:, k], labels == k, n_bins) for k in range(probs.shape[1])]
    return float(np.mean(per_class))


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood `-log softmax(logits / T)_y` (natural log), numpy float64.

    Defined on *logits* (so it stays finite for confident predictions): the temperature
    divides the logits.

    Args:
      logits: `[N, K]` raw logits.
      labels: `[N]` integer class ids.
      temperature: T > 0.
    """
    logits = _check_2d(logits, "logits")
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    t = check_temperature(temperature)
    log_probs = _log_softmax(logits, t)
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def brier_score(probs, labels) -> float:
    """Multi-class Brier score: the mean over examples of `sum_k (p_k - 1[y == k])^2`.

    This is Brier's original definition (range [0, 2]); divide by K for the per-class mean.
    """
    probs, labels = _check_probs_labels(probs, labels)
    targets = np.zeros_like(probs)
    targets[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - targets) ** 2, axis=1)))


def calibration_metrics(logits, labels, temperature: float = 1.0, n_bins: int = 15) -> dict:
    """Accuracy, mean confidence, ECE, class-wise ECE, NLL and Brier of `softmax(logits / T)`.

    Args:
      logits: `[N, K]` raw logits.
      labels: int `[N]`.
      temperature: T, which divides the logits.
      n_bins: equal-width confidence bins of the ECEs.
    """
    logits = _check_2d(logits, "logits")
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    probs = softmax(logits, temperature)
    return {
        "temperature": float(temperature),
        "accuracy": float(np.mean(np.argmax(logits, axis=1) == labels)),
        "mean_confidence": float(np.mean(np.max(probs, axis=1))),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "classwise_ece": classwise_ece(probs, labels, n_bins),
        "nll": negative_log_likelihood(logits, labels, temperature),
        "brier": brier_score(probs, labels),
        "count": int(len(labels)),
    }


# ------------------------------------------------------------------------- reliability diagram


def reliability_diagram(probs, labels, n_bins: int = 15, path=None, title=None):
    """Reliability diagram: per-bin accuracy against confidence, plus a confidence histogram.

    Uses matplotlib's object API with the Agg canvas (no display, no global pyplot state).

    Args:
      probs, labels, n_bins: as for `expected_calibration_error`.
      path: if given, the figure is saved there as a PNG.
      title: the figure title (the ECE is appended).

    Returns:
      The `matplotlib.figure.Figure`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    probs, labels = _check_probs_labels(probs, labels)
    n_bins = _check_bins(n_bins)
    predictions = np.argmax(probs, axis=1)
    confidences = probs[np.arange(len(labels)), predictions]
    correct = (predictions == labels).astype(np.float64)
    bins = _bin_index(confidences, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    nonempty = counts > 0
    accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / np.maximum(counts, 1)
    confidence = np.bincount(bins, weights=confidences, minlength=n_bins) / np.maximum(counts, 1)
    ece = expected_calibration_error(probs, labels, n_bins)

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    width = 1.0 / n_bins
    fig = Figure(figsize=(4.5, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(
        edges[:-1][nonempty],
        accuracy[nonempty],
        width=width,
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    top.bar(
        edges[:-1][nonempty],
        (confidence - accuracy)[nonempty],
        bottom=accuracy[nonempty],
        width=width,
        align="edge",
        edgecolor="tab:red",
        fill=False,
        hatch="//",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize="small")
    top.set_title(f"{title + ': ' if title else ''}ECE = {100 * ece:.2f}%", fontsize="medium")
    bottom.bar(edges[:-1], counts / counts.sum(), width=width, align="edge", edgecolor="black")
    bottom.set_xlabel("confidence (top-label probability)")
    bottom.set_ylabel("fraction")
    if path is not None:
        fig.savefig(str(path), dpi=100)
    return fig


# ------------------------------------------------------------------------ temperature scaling


def fit_temperature(logits, labels, bounds=(0.05, 20.0), xatol: float = 1e-6) -> float:
    """Post-hoc temperature scaling: the T minimising the NLL of `softmax(logits / T)`.

    The NLL is computed in numpy float64 and minimised over log T within `log(bounds)` with
    `scipy.optimize.minimize_scalar(method="bounded")`. The NLL is convex in 1/T (a log-sum-exp
    of functions linear in 1/T minus a linear term), hence unimodal in log T, so the bounded
    search finds the global minimum within the bounds. A warning is issued when the minimum is
    at a bound (widen `bounds`: e.g. the logits are constant or perfectly separable).

    Args:
      logits: `[N, K]` raw validation logits (of data the model was not trained on).
      labels: `[N]` integer class ids.
      bounds: (lower, upper) temperatures, `0 < lower < upper`.
      xatol: absolute tolerance on log T.

    Returns:
      The fitted temperature as a Python float; use it as `softmax(logits / T)`.
    """
    from scipy.optimize import minimize_scalar

    logits = _check_2d(logits, "logits")
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    try:
        low, high = (check_temperature(b, "bounds") for b in bounds)
    except TypeError:
        raise ValueError(f"`bounds` must be (lower, upper), received {bounds!r}") from None
    if not low < high:
        raise ValueError(f"`bounds` must satisfy lower < upper, received {bounds!r}")
    # Centre each row: softmax is shift invariant, and it keeps exp() in range.
    logits = logits - logits.max(axis=1, keepdims=True)
    target = logits[np.arange(len(labels)), labels]

    def nll(log_t):
        t = math.exp(log_t)
        z = logits / t
        zmax = z.max(axis=1)
        lse = zmax + np.log(np.sum(np.exp(z - zmax[:, None]), axis=1))
        return float(np.mean(lse - target / t))

    result = minimize_scalar(
        nll,
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": xatol, "maxiter": 500},
    )
    log_t = float(result.x)
    # The bounded method never evaluates the bounds themselves: compare against them.
    for edge in (math.log(low), math.log(high)):
        if nll(edge) <= result.fun:
            log_t = edge
    if min(abs(log_t - math.log(low)), abs(log_t - math.log(high))) < 1e-3:
        warnings.warn(
            f"fit_temperature: the NLL minimum is at the bound T={math.exp(log_t):.4g} of "
            f"{tuple(bounds)}; widen `bounds` (are the logits constant or separable?)",
            RuntimeWarning,
            stacklevel=2,
        )
    return math.exp(log_t)


def calibrated_model(model, temperature: float, name=None):
    """`model` followed by a fixed `TemperatureScaling(temperature)` layer: logits / T.

    The returned Keras model outputs the calibrated logits `logits / T` (so `softmax` of its
    output is the calibrated distribution); T is stored in the layer's config and weight, so it
    travels with `model.save(...)` and SavedModel exports. Functional models are extended in
    place of their output (same inputs); other models are wrapped in a `keras.Sequential`.

    Args:
      model: a Keras model that outputs logits.
      temperature: the fitted T > 0.
      name: the new model's name (default `<model name>_calibrated`).
    """
    import keras

    from tempscale_tf.layers import TemperatureScaling

    temperature = check_temperature(temperature)
    scaling = TemperatureScaling(temperature, learnable=False, name="temperature_scaling")
    name = name or f"{model.name}_calibrated"
    try:  # functional (and built Sequential) models expose symbolic inputs and outputs
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if inputs and outputs:
        if len(outputs) != 1:
            raise ValueError(
                f"calibrated_model needs a single-output model, {model.name!r} has "
                f"{len(outputs)} outputs"
            )
        return keras.Model(inputs, scaling(outputs[0]), name=name)
    return keras.Sequential([model, scaling], name=name)


# ------------------------------------------------------------------------ calibrating a run


def training_overlap(config, split: str) -> int:
    """How many examples of `split` the training run of `config` was trained on.

    Uses the run's `train_split` (and `train_subset`, sampled as `tempscale_tf.data.load` does).
    A clean temperature-scaling protocol fits T on examples the model never saw: this should be 0
    (e.g. train on `train[:-300]` and calibrate on `train[-300:]`).
    """
    from tempscale_tf import data as data_lib

    base_val, slice_val = data_lib.parse_split(split)
    base_train, slice_train = data_lib.parse_split(config.train_split)
    if base_val != base_train:
        return 0
    data_dir = config.data_dir or None
    n = len(data_lib.load_arrays(config.dataset, base_train, data_dir)[1])
    train_idx = np.arange(n)[slice_train]
    if config.train_subset:
        # Same seeded sample as tempscale_tf.data.load(subset=...).
        train_idx = train_idx[data_lib.subset_indices(len(train_idx), config.train_subset)]
    return int(np.intersect1d(train_idx, np.arange(n)[slice_val]).size)


def calibrate_run(
    workdir,
    output_dir=None,
    val_split: str = "train[-300:]",
    test_split=None,
    n_bins: int = 15,
    bounds=(0.05, 20.0),
    batch_size: int = 256,
    export: bool = True,
) -> dict:
    """Fit a temperature to a training run and evaluate it (the work of `launch/calibrate.py`).

    Loads the run (`training.load_run`), fits T by `fit_temperature` on the logits of
    `val_split`, and reports `calibration_metrics` on the validation and test splits before (at
    the run's training temperature, i.e. the probabilities its export serves) and after (at the
    fitted T, which divides the raw logits). Writes into `output_dir` (default
    `<workdir>/calibration`): `calibration.json`, reliability diagrams
    `reliability_{val,test}_{before,after}.png` and, with `export`, a SavedModel in `export/`
    of `calibrated_model(model, T)` (its `logits` output is already divided by T, so the
    export's own temperature is 1).

    Args:
      workdir: a `training.train` workdir.
      output_dir: where the results go (default `<workdir>/calibration`).
      val_split: the split T is fitted on (warns when it overlaps the training split).
      test_split: the evaluation split (default: the run's `test_split`).
      n_bins: confidence bins of the ECE and the diagrams.
      bounds: the search interval of T.
      batch_size: inference batch size.
      export: also export the calibrated model.

    Returns:
      The dict written to `calibration.json`.
    """
    import os

    from tempscale_tf import training
    from tempscale_tf.files import atomic_write_json

    workdir = str(workdir)
    output_dir = str(output_dir or os.path.join(workdir, "calibration"))
    os.makedirs(output_dir, exist_ok=True)
    model, config = training.load_run(workdir)
    test_split = test_split or config.test_split
    trained_temperature = check_temperature(config.temperature)
    overlap = _warn_overlap(config, val_split, workdir)
    splits = {
        "val": (val_split, *_split_logits(model, config, val_split, batch_size)),
        "test": (test_split, *_split_logits(model, config, test_split, batch_size)),
    }
    temperature = fit_temperature(splits["val"][1], splits["val"][2], bounds=bounds)
    results = {
        "workdir": workdir,
        "dataset": config.dataset,
        "model": config.model,
        "train_split": config.train_split,
        "trained_temperature": trained_temperature,
        "fitted_temperature": temperature,
        "val_split": val_split,
        "test_split": test_split,
        "val_examples_seen_in_training": overlap,
        "n_bins": int(n_bins),
        "metrics": {},
    }
    for key, (split, logits, labels) in splits.items():
        for stage, t in (("before", trained_temperature), ("after", temperature)):
            results["metrics"][f"{key}/{stage}"] = {
                "split": split,
                **calibration_metrics(logits, labels, t, n_bins),
            }
            reliability_diagram(
                softmax(logits, t),
                labels,
                n_bins,
                path=os.path.join(output_dir, f"reliability_{key}_{stage}.png"),
                title=f"{key} ({split}), T={t:.3g}",
            )
    if export:
        results["export"] = _export_calibrated(model, temperature, output_dir, workdir)
    atomic_write_json(os.path.join(output_dir, "calibration.json"), results)
    return results


def _split_logits(model, config, split, batch_size):
    """(logits, labels) of a run's model on `split` of its dataset, in order."""
    from tempscale_tf import data as data_lib
    from tempscale_tf import training

    ds = data_lib.load(
        config.dataset,
        split,
        config.data_dir or None,
        batch_size,
        shuffle=False,
        augment=False,
        drop_remainder=False,
    )
    return training.predict_logits(model, ds)


def _warn_overlap(config, val_split, workdir) -> int:
    """How many validation examples the run trained on (a warning when any)."""
    overlap = training_overlap(config, val_split)
    if overlap:
        warnings.warn(
            f"{overlap} examples of the validation split {val_split!r} were in the training "
            f"split {config.train_split!r} of {workdir}: the fitted temperature is biased "
            "(too low). Train on e.g. 'train[:-300]' and calibrate on 'train[-300:]'.",
            RuntimeWarning,
            stacklevel=3,
        )
    return overlap


def _export_calibrated(model, temperature, output_dir, workdir) -> str:
    import os

    from tempscale_tf.export import export_saved_model
    from tempscale_tf.files import atomic_write_json

    path = os.path.join(output_dir, "export")
    export_saved_model(calibrated_model(model, temperature), path, temperature=1.0)
    atomic_write_json(
        os.path.join(path, "calibration.json"),
        {"fitted_temperature": temperature, "source_workdir": workdir},
    )
    return path
