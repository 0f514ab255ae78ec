"""Projected gradient descent (PGD): L-inf and L2 threat models, CE / margin / DLR losses.

Also holds the small helpers that the other attacks share (input checks, the logit margin,
the per-model cache of compiled attack loops), so that `cw.py` and `ensemble.py` do not
repeat them.

Conventions:
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

from tempscale_tf.losses import temperature_cross_entropy
from tempscale_tf.validation import check_positive_int, check_temperature

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin", "dlr")
DLR_DENOMINATOR_EPS = 1e-12  # Croce & Hein (2020), eq. (5)

__all__ = ["LOSSES", "NORMS", "cw_linf", "logit_margin", "pgd"]


# --------------------------------------------------------------------------- shared helpers


def default_jit_compile() -> bool:
    """XLA on when a GPU is visible, off on CPU (XLA's CPU convolutions are several x slower)."""
    return bool(tf.config.list_logical_devices("GPU"))


def check_finite_number(value, name: str, *, positive: bool = False) -> float:
    """Return `value` as a float, or raise `ValueError` unless it is finite and >= 0 (> 0)."""
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
    """Return `value` if it is one of `choices`, else raise a `ValueError` listing them."""
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
    """Validated (x, y, target); `target` is `y` for untargeted attacks."""
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
    return tf.TensorSpec([], dtype)


# --------------------------------------------------------------------------- PGD


def attack_objective(logits, y, target, loss, temperature, targeted):
    """Per-example objective that PGD *maximises*: float32 `[batch]`."""
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


def _is_success(logits, y, target, targeted):
    prediction = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.equal(prediction, target) if targeted else tf.not_equal(prediction, y)


def _l2_norm(v, keepdims=True):
    axes = list(range(1, v.shape.rank))
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=keepdims))


def _normalize_l2(g):
    """`g / ||g||_2` per example (0 where g == 0); rescaled first so tiny g does not underflow."""
    axes = list(range(1, g.shape.rank))
    g = tf.math.divide_no_nan(g, tf.reduce_max(tf.abs(g), axis=axes, keepdims=True))
    return tf.math.divide_no_nan(g, _l2_norm(g))


def project_l2(x_adv, x, eps):
    delta = x_adv - x
    norm = _l2_norm(delta)
    factor = tf.minimum(1.0, eps / tf.maximum(norm, 1e-30))
    return tf.clip_by_value(x + delta * factor, 0.0, 1.0)


def random_start_point(x, eps, norm, seed):
    """A uniform point of the L-inf ball, or uniform direction x radius eps*u^(1/d) (L2)."""
    if norm == "linf":
        return tf.random.stateless_uniform(tf.shape(x), seed, minval=-1.0, maxval=1.0) * eps
    direction = _normalize_l2(tf.random.stateless_normal(tf.shape(x), seed))
    dim = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
    u = tf.random.stateless_uniform(tf.shape(x)[:1], seed + 1)
    return direction * per_example(eps * tf.pow(u, 1.0 / dim), x.shape.rank)


def _build_pgd(model, item_shape, norm, loss, targeted, keep_best, jit_compile):
    """The compiled PGD loop for one model, image shape and set of graph-changing settings."""
    get_model = model_reference(model)
    labels = batch_spec([], tf.int32)

    def logits_and_grad(x_adv, y, target, temperature):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = model_logits(get_model(), x_adv)
            objective = attack_objective(logits, y, target, loss, temperature, targeted)
        grad = tape.gradient(objective, x_adv)  # d(sum)/dx: examples are independent
        if grad is None:
            raise ValueError("the model's logits do not depend on its input: no gradient")
        return logits, grad

    if not jit_compile:
        # The model's forward and backward pass as a separate, never-inlined function: an
        # acyclic graph. Inlined into the lowered while loop (a cycle), TensorFlow's oneDNN
        # rewrite visits its nodes in an order that changes from process to process and may
        # leave MaxPoolGrad on the slow Eigen kernel (it needs the forward MaxPool rewritten
        # first): PGD then ran at 0.75x or 1.0x of cleverhans depending on the process.
        logits_and_grad = tf.function(
            logits_and_grad,
            input_signature=[batch_spec(item_shape), labels, labels, scalar_spec()],
            experimental_attributes={"_noinline": True},
        )

    def run(x, start, y, target, eps, step_size, temperature, steps):
        net = get_model()
        rank = x.shape.rank
        if norm == "linf":
            lower = tf.maximum(x - eps, 0.0)
            upper = tf.minimum(x + eps, 1.0)
            project = lambda z: tf.clip_by_value(z, lower, upper)
        else:
            project = lambda z: project_l2(z, x, eps)

        x_adv = project(x + start)

        def body(i, x_adv, best, found):
            logits, grad = logits_and_grad(x_adv, y, target, temperature)
            if keep_best:  # the iterate whose logits we just computed
                success = _is_success(logits, y, target, targeted)
                best = tf.where(per_example(success, rank), x_adv, best)
                found = tf.logical_or(found, success)
            step = tf.sign(grad) if norm == "linf" else _normalize_l2(grad)
            return i + 1, project(x_adv + step_size * step), best, found

        found = tf.zeros(tf.shape(x)[:1], tf.bool)
        _, x_adv, best, found = tf.while_loop(
            lambda i, *_: i < steps, body, (tf.constant(0), x_adv, x_adv, found)
        )
        if keep_best:
            final = _is_success(model_logits(net, x_adv), y, target, targeted)
            use_best = tf.logical_and(found, tf.logical_not(final))
            x_adv = tf.where(per_example(use_best, rank), best, x_adv)
        return x_adv

    signature = [batch_spec(item_shape)] * 2 + [labels, labels] + [scalar_spec()] * 3
    signature += [scalar_spec(tf.int32)]
    return tf.function(run, input_signature=signature, jit_compile=jit_compile)


def pgd(
    model,
    x,
    y,
    eps=8 / 255,
    step_size=2 / 255,
    steps=20,
    norm="linf",
    loss="ce",
    temperature=1.0,
    random_start=True,
    targeted=False,
    target=None,
    seed=None,
    keep_best=True,
    jit_compile=None,
    early_stop=None,
):
    """Projected gradient descent (Madry et al., 2018) in the L-inf or L2 ball, in [0, 1].

    Each of the `steps` iterations takes an ascent step on the attack objective (L-inf: the
    sign of the gradient times `step_size`; L2: the gradient normalised per example times
    `step_size`), then projects onto the `eps`-ball around `x` and clips to [0, 1]. The whole
    loop is one `tf.function` (a `tf.while_loop`), compiled once per model and settings and
    cached: later calls with other images, batch sizes, eps, step sizes, step counts or
    temperatures reuse it.

    Losses (`z` = logits, `y` = true label, `t` = target, `pi_k` = k-th largest logit):
      * "ce": cross-entropy of `softmax(z / temperature)`. Untargeted: maximise CE(y);
        targeted: minimise CE(t). The paper attacks at the training temperature; with large
        logit scales the CE gradient vanishes in float32 (gradient masking), see "margin"/"dlr".
      * "margin": the C&W margin. Untargeted: maximise `max_{j!=y} z_j - z_y`; targeted:
        maximise `z_t - max_{j!=t} z_j`.
      * "dlr": Croce & Hein's (2020) difference-of-logits ratio. Untargeted: maximise
        `-(z_y - max_{j!=y} z_j) / (pi_1 - pi_3 + 1e-12)` (needs >= 3 classes); targeted:
        maximise `-(z_y - z_t) / (pi_1 - (pi_3 + pi_4) / 2 + 1e-12)` (needs >= 4 classes).
      "margin" and "dlr" ignore `temperature`: scaling the logits does not change the sign
      (L-inf) or direction (L2) of their gradients.

    Args:
      model: a Keras model (called with `training=False`) or any callable mapping float32
        images `[batch, ...]` in [0, 1] to logits `[batch, num_classes]`.
      x: images `[batch, ...]`, float, in [0, 1].
      y: true labels, int `[batch]` (or `[batch, 1]`).
      eps: radius of the threat model (L-inf or L2), finite, >= 0.
      step_size: step length, finite, > 0.
      steps: number of iterations, a positive int.
      norm: "linf" or "l2".
      loss: "ce", "margin" or "dlr".
      temperature: T > 0 for the "ce" loss (divides the logits).
      random_start: start from a uniform point of the L-inf ball, or from a point with a
        uniformly random direction and radius `eps * u^(1/d)` in the L2 ball.
      targeted: if True, push every example towards `target` instead of away from `y`.
      target: int target labels `[batch]`; required iff `targeted`.
      seed: int seed for the random start (None: drawn from NumPy's global generator, which
        `keras.utils.set_random_seed` seeds). The start is drawn outside the compiled loop,
        so a seed gives the same start with and without `jit_compile`.
      keep_best: if True (default), return per example the last iterate that succeeded (was
        misclassified; for targeted attacks: classified as `target`) when the final iterate
        did not, so the result is never weaker than the last iterate. If False, return the
        last iterate.
      jit_compile: compile the loop with XLA. None: on if a GPU is visible, off on CPU.
      early_stop: None, or a chunk length k: run the loop k steps at a time and stop attacking
        the examples that already succeeded (they keep their successful iterate). The examples
        still running follow exactly the iterates of the uninterrupted loop, so the set of
        successful examples equals the `keep_best=True` result; the work shrinks as examples
        fall. Requires `keep_best=True`.

    Returns:
      float32 tensor shaped like `x`: adversarial images with `|x_adv - x| <= eps`
      (L-inf, per pixel) or `||x_adv - x||_2 <= eps` (L2, per example) and values in [0, 1].

    Raises:
      ValueError: for a negative or non-finite eps, a non-positive step size, a bad step
        count, an unknown norm or loss (the message lists the valid names), a bad
        temperature, `targeted` without `target` (or `target` without `targeted`), labels
        whose batch size differs from `x`, or images outside [0, 1].
    """
    eps = check_finite_number(eps, "eps")
    step_size = check_finite_number(step_size, "step_size", positive=True)
    steps = check_positive_int(steps, "steps")
    norm = check_choice(norm, NORMS, "norm")
    loss = check_choice(loss, LOSSES, "loss")
    temperature = check_temperature(temperature)
    x, y, target = check_attack_inputs(x, y, targeted, target)
    if jit_compile is None:
        jit_compile = default_jit_compile()
    if seed is None:
        seed = np.random.randint(0, 2**31 - 1)
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`seed` must be an int or None, received {seed!r}")

    settings = (tuple(x.shape[1:]), norm, loss, bool(targeted), bool(keep_best), bool(jit_compile))
    run = compiled_for(model, ("pgd",) + settings, lambda: _build_pgd(model, *settings))
    eps = tf.constant(eps, tf.float32)
    # Drawn outside the compiled loop: XLA's random kernels differ from TensorFlow's, and this
    # way a seed gives the same start with and without `jit_compile`.
    if random_start:
        start = random_start_point(x, eps, norm, tf.constant([int(seed), 0], tf.int32))
    else:
        start = tf.zeros_like(x)
    args = (
        tf.constant(step_size, tf.float32),
        tf.constant(temperature, tf.float32),
    )
    if early_stop is None:
        return run(x, start, y, target, eps, *args, tf.constant(steps, tf.int32))
    early_stop = check_positive_int(early_stop, "early_stop")
    if not keep_best:
        raise ValueError("early_stop needs keep_best=True (finished examples keep their success)")
    return _run_in_chunks(model, run, x, start, y, target, eps, args, steps, early_stop, targeted)


def _run_in_chunks(model, run, x, start, y, target, eps, args, steps, chunk, targeted):
    """Run the compiled loop `chunk` steps at a time on the examples not yet successful."""
    result = x + start  # overwritten for every example below
    active = tf.range(tf.shape(x)[0])
    done = 0
    while done < steps and int(tf.size(active)) > 0:
        n = min(chunk, steps - done)
        xa, ya, ta = (tf.gather(t, active) for t in (x, y, target))
        adv = run(xa, tf.gather(start, active), ya, ta, eps, *args, tf.constant(n, tf.int32))
        result = tf.tensor_scatter_nd_update(result, active[:, None], adv)
        done += n
        # keep_best: an example returned successful is finished; the others returned their
        # last iterate, from which the next chunk continues (no new random start).
        success = _is_success(model_logits(model, adv), ya, ta, targeted)
        start = tf.tensor_scatter_nd_update(start, active[:, None], adv - xa)
        active = tf.boolean_mask(active, tf.logical_not(success))
    return result


def cw_linf(model, x, y, eps=8 / 255, step_size=2 / 255, steps=20, **kwargs):
    """ "C&W-style" L-inf attack: `pgd(..., loss="margin")` (PGD on the C&W margin loss).

    This is the attack usually reported as "CW-inf" at an L-inf budget (Madry et al., 2018;
    Croce & Hein, 2020). All other keyword arguments are passed to `pgd`.

    Returns:
      float32 adversarial images shaped like `x` (see `pgd`).
    """
    if "loss" in kwargs:
        raise ValueError("cw_linf always uses loss='margin'; call pgd() for another loss")
    return pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, loss="margin", **kwargs)
