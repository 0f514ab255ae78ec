"""What the attacks share: input checks, logits and margins, the objectives they maximise,
norms and projections, random starts and seeds, the per-model cache of compiled loops, and the
segment runner that drops finished examples between compiled segments.

Conventions (every attack in `tempscale_tf.attacks`):
  * images are float32 in [0, 1] with any shape `[batch, ...]`; the model (a Keras model or
    any callable) maps them to logits `[batch, num_classes]`;
  * labels are int class ids `[batch]` (or `[batch, 1]`);
  * the temperature divides the logits (`softmax(z / T)`), as everywhere in `tempscale_tf`.
"""

from __future__ import annotations

import math
import numbers
import threading
import weakref

import keras
import numpy as np
import tensorflow as tf

from tempscale_tf import distribute
from tempscale_tf.losses import temperature_cross_entropy

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin", "dlr")
DLR_DENOMINATOR_EPS = 1e-12  # Croce & Hein (2020), eq. (5)


# --------------------------------------------------------------------------- checks and logits


def default_jit_compile() -> bool:
    """XLA on when a GPU is visible, off on CPU (XLA's CPU convolutions are several x slower)."""
    return distribute.resolve_jit_compile(None)


def check_finite_number(value, name: str, *, positive: bool = False) -> float:
    """Return `value` as a float, or raise `ValueError` unless it is finite and >= 0 (> 0).

    Args:
      value: the setting to check (a number; a bool is refused).
      name: its name, for the error message.
      positive: require > 0 instead of >= 0.
    """
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a finite number, received a bool: {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a finite number, received {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, received {value}")
    if positive and value <= 0.0:
        raise ValueError(f"`{name}` must be > 0, received {value}")
    if value < 0.0:
        raise ValueError(f"`{name}` must be >= 0, received {value}")
    return value


def check_choice(value, choices, name: str) -> str:
    """Return `value` if it is one of `choices`, else raise a `ValueError` listing them.

    Args:
      value: the setting to check (a string).
      choices: the valid values.
      name: its name, for the error message.
    """
    if not isinstance(value, str) or value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown `{name}` {value!r}; valid values are {valid}")
    return value


def check_labels(labels, name: str = "y") -> tf.Tensor:
    """Integer class ids `[batch]` or `[batch, 1]` -> int32 `[batch]`."""
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2 and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, axis=-1)
    if labels.shape.rank != 1:
        raise ValueError(
            f"`{name}` must be integer class ids of shape [batch], received shape {labels.shape}"
        )
    if not (labels.dtype.is_integer or labels.dtype.is_floating):
        raise ValueError(f"`{name}` must hold integer class ids, received dtype {labels.dtype}")
    labels = tf.cast(labels, tf.int32)
    if tf.executing_eagerly() and labels.shape[0] and int(tf.reduce_min(labels)) < 0:
        raise ValueError(f"`{name}` must hold class ids >= 0, received {labels.numpy()}")
    return labels


def check_images_and_labels(x, y, name: str = "y"):
    """Validate a batch of images in [0, 1] and its labels; return (float32 x, int32 y).

    Args:
      x: float images `[batch, ...]` in [0, 1].
      y: int class ids `[batch]` or `[batch, 1]`.
      name: the labels' name, for error messages ("y", "target").

    Raises:
      ValueError: if `x` is not a float batch `[batch, ...]` in [0, 1] (checked when running
        eagerly), if the labels are not int ids `[batch]`, or if the batch sizes differ.
    """
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise ValueError(f"`x` must be float images in [0, 1], received dtype {x.dtype}")
    x = tf.cast(x, tf.float32)
    if x.shape.rank is None or x.shape.rank < 2:
        raise ValueError(f"`x` must have shape [batch, ...], received shape {x.shape}")
    y = check_labels(y, name)
    if tf.executing_eagerly():
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"`x` and `{name}` must have the same batch size, received {x.shape[0]} "
                f"images and {y.shape[0]} labels"
            )
        if x.shape[0] and not (float(tf.reduce_min(x)) >= 0.0 and float(tf.reduce_max(x)) <= 1.0):
            raise ValueError("`x` must hold images in [0, 1] (finite, no NaN)")
    return x, y


def check_attack_inputs(x, y, targeted, target):
    """Validated (x, y, target); `target` is `y` for untargeted attacks.

    Args:
      x: float images `[batch, ...]` in [0, 1].
      y: int true labels `[batch]`.
      targeted: whether the attack is targeted.
      target: int target labels `[batch]` (required iff `targeted`).
    """
    x, y = check_images_and_labels(x, y)
    if targeted:
        if target is None:
            raise ValueError("a targeted attack (`targeted=True`) needs `target` labels")
        _, target = check_images_and_labels(x, target, name="target")
    elif target is not None:
        raise ValueError("`target` was given but `targeted=False`; pass `targeted=True`")
    else:
        target = y
    return x, y, target


def model_logits(model, x) -> tf.Tensor:
    """`model(x)` as float32 logits `[batch, num_classes]` (Keras layers get `training=False`)."""
    if isinstance(model, keras.layers.Layer):
        logits = model(x, training=False)
    else:
        logits = model(x)
    logits = tf.convert_to_tensor(logits)
    if logits.shape.rank != 2:
        raise ValueError(f"the model must return logits [batch, num_classes], got {logits.shape}")
    return tf.cast(logits, tf.float32)


def without_label(logits, labels) -> tf.Tensor:
    """`logits` with each example's `label` entry set to -inf: `[batch, num_classes]`."""
    is_label = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    return tf.where(is_label, -np.inf, logits)


def max_other_logit(logits, labels) -> tf.Tensor:
    """`max_{j != label} z_j` per example: float32 `[batch]` (needs >= 2 classes)."""
    return tf.reduce_max(without_label(logits, labels), axis=-1)


def logit_margin(logits, labels) -> tf.Tensor:
    """C&W margin `z_label - max_{j != label} z_j`: float32 `[batch]`.

    Positive iff `label` is the unique arg-max, so for the true label a negative margin means
    misclassified; for a target label a positive margin means the target was reached.
    """
    label_logit = tf.gather(logits, labels, axis=-1, batch_dims=1)
    return label_logit - max_other_logit(logits, labels)


def per_example(mask, rank: int) -> tf.Tensor:
    """Reshape a `[batch]` tensor to `[batch, 1, ..., 1]` (rank `rank`) for broadcasting."""
    return tf.reshape(mask, [-1] + [1] * (rank - 1))


_CACHE_LOCK = threading.Lock()
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_reference(model):
    """A zero-argument callable returning `model`, holding it weakly when possible.

    Compiled attack loops are cached per model; holding the model weakly from inside them
    lets the cache entry disappear with the model.
    """
    try:
        ref = weakref.ref(model)
    except TypeError:
        return lambda: model
    return ref


def compiled_for(model, key, build):
    """Return the compiled function cached for (`model`, `key`), building it on first use.

    `build()` must return a `tf.function`. Callers put every graph-changing setting and the
    per-example input shape in `key` and give the function an `input_signature` with an
    unknown batch size, so it is traced exactly once: later calls with other images, batch
    sizes, or eps / step / temperature values (passed as tensors) reuse the same graph.
    Models that cannot be weakly referenced (rare) are not cached.

    Args:
      model: the model the function is compiled for (held weakly by the cache).
      key: a hashable tuple of every graph-changing setting and the per-example shape.
      build: `() -> tf.function`, called once per (model, key).
    """
    with _CACHE_LOCK:
        try:
            per_model = _COMPILED.setdefault(model, {})
        except TypeError:
            return build()
        fn = per_model.get(key)
        if fn is None:
            fn = per_model[key] = build()
            # Each (model, settings) pair has its own tf.function, traced once; TensorFlow's
            # "frequent retracing" heuristic counts traces per Python code object and would
            # warn about these legitimate first traces.
            if hasattr(fn, "_omit_frequent_tracing_warning"):
                fn._omit_frequent_tracing_warning = True
        return fn


def batch_spec(shape, dtype=tf.float32) -> tf.TensorSpec:
    """`TensorSpec([None, *shape])`: a batch of any size of `shape`-shaped items."""
    return tf.TensorSpec([None, *shape], dtype)


def scalar_spec(dtype=tf.float32) -> tf.TensorSpec:
    """`TensorSpec([])`: a scalar (an eps, step size or temperature passed as a tensor)."""
    return tf.TensorSpec([], dtype)


# ------------------------------------------------------------------ objectives and geometry


def attack_objective(logits, y, target, loss, temperature, targeted):
    """Per-example objective that the gradient attacks *maximise*: float32 `[batch]`.

    Args:
      logits: float32 `[batch, K]`.
      y: int32 `[batch]` true labels.
      target: int32 `[batch]` target labels (ignored unless `targeted`).
      loss: "ce" (cross-entropy at `temperature`), "margin" (C&W, `z_y - max_{j != y} z_j`)
        or "dlr" (Croce & Hein's difference of logits ratio, scale-invariant).
      temperature: the CE temperature (T divides the logits); unused by margin and DLR.
      targeted: maximise towards `target` (minus the loss w.r.t. `target`) instead of away
        from `y`.
    """
    if loss == "ce":
        # Scale here and call with T=1: `temperature` was validated in Python already, and this
        # keeps run-time assert ops (a host sync per step on GPU) out of the loop.
        scaled = logits / temperature
        if targeted:
            return -temperature_cross_entropy(target, scaled, temperature=1.0)
        return temperature_cross_entropy(y, scaled, temperature=1.0)
    if loss == "margin":
        return logit_margin(logits, target) if targeted else -logit_margin(logits, y)
    # DLR (Croce & Hein, 2020): scale-invariant in the logits.
    k = 4 if targeted else 3
    if logits.shape[-1] is not None and logits.shape[-1] < k:
        kind = "targeted" if targeted else "untargeted"
        raise ValueError(f"the {kind} DLR loss needs >= {k} classes, got {logits.shape[-1]}")
    top = tf.math.top_k(logits, k=k, sorted=True).values
    if targeted:
        z_y = tf.gather(logits, y, axis=-1, batch_dims=1)
        z_t = tf.gather(logits, target, axis=-1, batch_dims=1)
        denominator = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_DENOMINATOR_EPS
        return -(z_y - z_t) / denominator
    return -logit_margin(logits, y) / (top[:, 0] - top[:, 2] + DLR_DENOMINATOR_EPS)


def is_success(logits, y, target, targeted):
    """bool `[batch]`: the prediction is `target` (targeted) or is not `y` (untargeted).

    Args:
      logits: `[batch, K]`.
      y: int32 `[batch]` true labels.
      target: int32 `[batch]` target labels.
      targeted: which success to test.
    """
    prediction = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.equal(prediction, target) if targeted else tf.not_equal(prediction, y)


def l2_norm(v, keepdims=True):
    """Per-example L2 norm of `v` `[batch, ...]` (kept as `[batch, 1, ..., 1]` by default)."""
    axes = list(range(1, v.shape.rank))
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=keepdims))


def normalize_l2(g):
    """`g / ||g||_2` per example (0 where g == 0); rescaled first so tiny g does not underflow."""
    axes = list(range(1, g.shape.rank))
    g = tf.math.divide_no_nan(g, tf.reduce_max(tf.abs(g), axis=axes, keepdims=True))
    return tf.math.divide_no_nan(g, l2_norm(g))


def project_l2(x_adv, x, eps):
    """Project `x_adv` onto the L2 ball of radius `eps` around `x`, then clip to [0, 1].

    Args:
      x_adv: float32 `[batch, ...]`.
      x: the clean images, same shape.
      eps: the radius.
    """
    delta = x_adv - x
    norm = l2_norm(delta)
    factor = tf.minimum(1.0, eps / tf.maximum(norm, 1e-30))
    return tf.clip_by_value(x + delta * factor, 0.0, 1.0)


def random_start_point(x, eps, norm, seed):
    """A uniform point of the L-inf ball, or uniform direction x radius eps*u^(1/d) (L2).

    Args:
      x: the images `[batch, ...]` (for the shape).
      eps: the radius.
      norm: "linf" or "l2".
      seed: a stateless seed (int32/int64 `[2]`).
    """
    if norm == "linf":
        return tf.random.stateless_uniform(tf.shape(x), seed, minval=-1.0, maxval=1.0) * eps
    direction = normalize_l2(tf.random.stateless_normal(tf.shape(x), seed))
    dim = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
    u = tf.random.stateless_uniform(tf.shape(x)[:1], seed + 1)
    return direction * per_example(eps * tf.pow(u, 1.0 / dim), x.shape.rank)


# --------------------------------------------------------------- seeds, starts and segments


def check_seed(seed) -> int:
    """An int seed, or a fresh one from NumPy's global generator for `None`."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`seed` must be an int or None, received {seed!r}")
    return int(seed)


def stateless_seed(seed: int, *stream: int) -> tf.Tensor:
    """A `tf.random.stateless_*` seed for the sub-stream `stream` of `seed` (int32 `[2]`)."""
    key = 0
    for part in stream:
        key = (key * 1_000_003 + int(part)) % (2**31 - 1)
    return tf.constant([int(seed) % (2**31 - 1), key], tf.int32)


def lp_norm(delta, norm) -> tf.Tensor:
    """Per-example L-inf or L2 norm of `delta` `[batch, ...]`: float32 `[batch]`."""
    flat = tf.reshape(delta, [tf.shape(delta)[0], -1])
    if norm == "linf":
        return tf.reduce_max(tf.abs(flat), axis=1)
    return tf.sqrt(tf.reduce_sum(tf.square(flat), axis=1))


def project_ball(z, x, eps, norm) -> tf.Tensor:
    """Project `z` onto the `norm` ball of radius `eps` around `x`, then clip to [0, 1].

    Args:
      z: float32 `[batch, ...]`.
      x: the clean images, same shape.
      eps: the radius.
      norm: "linf" or "l2".
    """
    if norm == "linf":
        return tf.clip_by_value(z, tf.maximum(x - eps, 0.0), tf.minimum(x + eps, 1.0))
    return project_l2(z, x, eps)


def unit_start(shape, norm, seed) -> tf.Tensor:
    """Random directions of norm exactly 1 per example (the APGD / FAB random start).

    L-inf: uniform noise in [-1, 1] divided by its largest entry; L2: Gaussian noise divided
    by its L2 norm (as in the reference implementation).

    Args:
      shape: the batch shape `[batch, ...]`.
      norm: "linf" or "l2".
      seed: a stateless seed (int32 `[2]`, e.g. `stateless_seed(...)`).
    """
    if norm == "linf":
        t = tf.random.stateless_uniform(shape, seed, minval=-1.0, maxval=1.0, alg="philox")
    else:
        t = tf.random.stateless_normal(shape, seed, alg="philox")
    size = per_example(lp_norm(t, norm), len(shape))
    return tf.math.divide_no_nan(t, size)


def predictions(model, x) -> tf.Tensor:
    """Arg-max class ids `[batch]` (int32)."""
    return tf.argmax(model_logits(model, x), axis=-1, output_type=tf.int32)


def top_k_targets(model, x, y, k: int) -> tf.Tensor:
    """The `k` classes other than `y` with the largest clean logits, best first: `[batch, k]`.

    Args:
      model: the classifier.
      x: the clean images `[batch, ...]`.
      y: int32 `[batch]` true labels.
      k: how many target classes.

    Raises:
      ValueError: if the model has fewer than `k + 1` classes.
    """
    logits = model_logits(model, x)
    num_classes = int(logits.shape[-1])
    if k > num_classes - 1:
        raise ValueError(
            f"`num_target_classes`={k} needs at least {k + 1} classes; the model has {num_classes}"
        )
    return tf.math.top_k(without_label(logits, y), k=k).indices


def gather_rows(state: dict, index) -> dict:
    """`{key: tf.gather(value, index)}` for a dict of per-example tensors."""
    return {key: tf.gather(value, index) for key, value in state.items()}


def scatter_rows(state: dict, index, rows: dict) -> dict:
    """`state` with the rows at `index` replaced by `rows`.

    Args:
      state: a dict of per-example tensors (batch first).
      index: int `[n]` rows to replace.
      rows: a dict with the same keys, each `[n, ...]`.
    """
    index = tf.reshape(index, [-1, 1])
    return {
        key: tf.tensor_scatter_nd_update(value, index, rows[key]) for key, value in state.items()
    }


def _bucket(n: int) -> int:
    """Next power of two >= n (pads sub-batches so XLA compiles O(log n) shapes)."""
    return 1 << max(n - 1, 0).bit_length()


def run_in_segments(step, state: dict, segments, finished=None, pad=False) -> dict:
    """Run a compiled loop segment by segment, dropping the finished examples in between.

    Args:
      step: `step(state, segment) -> state`, one compiled segment of the attack loop on a
        dict of per-example tensors (all with the batch as leading axis).
      state: the initial state of every example.
      segments: an iterable of segment arguments, passed to `step` in turn.
      finished: `finished(state) -> bool [batch]`, or None to never drop examples. After each
        segment the finished examples keep their state and are not run again: the work
        shrinks as examples are done, and the others run exactly as without dropping (the
        examples of a batch are independent).
      pad: pad each sub-batch to a power of two by repeating its first example (for XLA).

    Returns:
      the final state of every example, in the original order.
    """
    final = dict(state)
    active = tf.range(tf.shape(next(iter(state.values())))[0])
    current = state
    for segment in segments:
        n = int(tf.size(active))
        if n == 0:
            break
        if pad and _bucket(n) != n:
            padded = tf.concat([tf.range(n), tf.zeros([_bucket(n) - n], tf.int32)], 0)
            current = {k: v[:n] for k, v in step(gather_rows(current, padded), segment).items()}
        else:
            current = step(current, segment)
        if finished is None:
            continue
        done = finished(current)
        if bool(tf.reduce_any(done)):
            final = scatter_rows(
                final, tf.boolean_mask(active, done), gather_rows(current, tf.where(done)[:, 0])
            )
            keep = tf.where(tf.logical_not(done))[:, 0]
            current = gather_rows(current, keep)
            active = tf.gather(active, keep)
    if int(tf.size(active)):
        final = scatter_rows(final, active, current)
    return final


def compile_loop(fn, signature, jit_compile):
    """`tf.function` with a fixed signature and without AutoGraph.

    The attack loops use explicit `tf.while_loop`s; skipping AutoGraph's source conversion
    (of the loop and of the model's code) makes tracing several times faster. The model is
    called as Keras' own `predict` / `fit` steps call it: without AutoGraph. It also keeps a
    running job correct while its source files are edited: AutoGraph reads a function's source
    from disk when it first traces it, so a traced function could otherwise get the code of
    whatever now stands at its old line numbers.

    Args:
      fn: the loop function.
      signature: its `input_signature` (unknown batch size, so it is traced once).
      jit_compile: compile with XLA.
    """
    return tf.function(fn, input_signature=signature, jit_compile=jit_compile, autograph=False)


def check_attack_settings(eps, norm, jit_compile):
    """Validated (eps, norm, jit_compile) shared by the AutoAttack-family attacks.

    Args:
      eps: the radius (finite, >= 0).
      norm: "linf" or "l2".
      jit_compile: bool, or None for `default_jit_compile()`.
    """
    eps = check_finite_number(eps, "eps")
    norm = check_choice(norm, NORMS, "norm")
    if jit_compile is None:
        jit_compile = default_jit_compile()
    return eps, norm, bool(jit_compile)
