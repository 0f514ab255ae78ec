"""Carlini & Wagner's (2017) minimum-norm L2 attack.

Which attack is the paper's "C&W" column? The paper does not say. The library reports both:

  * `carlini_wagner_l2` (this module): the original C&W-L2 attack. It searches for the
    *smallest* L2 perturbation that flips the decision and has no budget; report its success
    rate and the distances (`CWResult.l2`), or the accuracy at an L2 budget `eps` as
    `~(result.success & (result.l2 <= eps))`.
  * `tempscale_tf.attacks.cw_linf`: PGD in an L-inf ball with the C&W margin loss, the
    "CW-inf" attack of Madry et al. (2018) and Croce & Hein (2020). A "C&W" accuracy reported
    at an L-inf budget such as eps = 8/255 can only be this one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tempscale_tf.attacks.common import (
    batch_spec,
    check_attack_inputs,
    check_finite_number,
    compile_loop,
    compiled_for,
    default_jit_compile,
    logit_margin,
    model_logits,
    model_reference,
    per_example,
    scalar_spec,
)
from tempscale_tf.validation import check_positive_int

__all__ = ["CWResult", "carlini_wagner_l2"]

_C_UNBOUNDED = 1e10  # "no successful c yet" sentinel for the binary search, as in the reference
_TANH_SCALE = 1.0 - 1e-6  # keeps atanh finite for pixels at exactly 0 or 1
_ADAM_BETA_1, _ADAM_BETA_2, _ADAM_EPSILON = 0.9, 0.999, 1e-8


class CWResult(NamedTuple):
    """Result of `carlini_wagner_l2`.

    Attributes:
      adv: float32 `[batch, ...]`, the smallest-L2 adversarial image found per example; the
        original image where the attack failed.
      l2: float32 `[batch]`, `||adv - x||_2`; `+inf` where the attack failed.
      success: bool `[batch]`, whether an adversarial image was found.
    """

    adv: tf.Tensor
    l2: tf.Tensor
    success: tf.Tensor


def _to_image(w):
    """The tanh box reparametrisation: any real `w` -> `(tanh(w) + 1) / 2` in [0, 1]."""
    return (tf.tanh(w) + 1.0) / 2.0


def _build_cw_inner(model, item_shape, targeted, abort_early, jit_compile):
    """Compiled inner loop: Adam on w for one value of c per example.

    Returns, per example, the smallest squared L2 distance of a successful iterate (`inf` if
    none) and that iterate.
    """
    get_model = model_reference(model)
    # f(x') = max(sign * margin(z, label), -kappa): untargeted pushes the true label's margin
    # below -kappa, targeted pushes the target's margin above kappa.
    sign = -1.0 if targeted else 1.0

    def run(x, labels, c, confidence, learning_rate, max_iterations):
        net = get_model()
        rank = x.shape.rank
        axes = list(range(1, rank))
        w0 = tf.atanh((2.0 * x - 1.0) * _TANH_SCALE)
        check_every = tf.maximum(max_iterations // 10, 1)

        def body(i, w, m, v, best_l2sq, best_adv, previous_loss, stop):
            with tf.GradientTape() as tape:
                tape.watch(w)
                x_adv = _to_image(w)
                l2sq = tf.reduce_sum(tf.square(x_adv - x), axis=axes)
                signed_margin = sign * logit_margin(model_logits(net, x_adv), labels)
                f = tf.maximum(signed_margin, -confidence)
                loss = tf.reduce_sum(l2sq + c * f)
            grad = tape.gradient(loss, w)

            improved = tf.logical_and(signed_margin < -confidence, l2sq < best_l2sq)
            best_l2sq = tf.where(improved, l2sq, best_l2sq)
            best_adv = tf.where(per_example(improved, rank), x_adv, best_adv)

            t = tf.cast(i + 1, tf.float32)
            m = _ADAM_BETA_1 * m + (1.0 - _ADAM_BETA_1) * grad
            v = _ADAM_BETA_2 * v + (1.0 - _ADAM_BETA_2) * tf.square(grad)
            m_hat = m / (1.0 - _ADAM_BETA_1**t)
            v_hat = v / (1.0 - _ADAM_BETA_2**t)
            w = w - learning_rate * m_hat / (tf.sqrt(v_hat) + _ADAM_EPSILON)

            if abort_early:  # as in the reference: stop when the total loss stalls
                check = tf.equal(i % check_every, 0)
                stop = tf.logical_and(check, loss > previous_loss * 0.9999)
                previous_loss = tf.where(check, loss, previous_loss)
            return i + 1, w, m, v, best_l2sq, best_adv, previous_loss, stop

        zeros = tf.zeros_like(x)
        state = (
            tf.constant(0),
            w0,
            zeros,
            zeros,
            tf.fill(tf.shape(x)[:1], np.float32(np.inf)),
            x,
            tf.constant(np.inf, tf.float32),
            tf.constant(False),
        )
        state = tf.while_loop(
            lambda i, *rest: tf.logical_and(i < max_iterations, tf.logical_not(rest[-1])),
            body,
            state,
        )
        return state[4], state[5]

    signature = [batch_spec(item_shape), batch_spec([], tf.int32), batch_spec([])]
    signature += [scalar_spec(), scalar_spec(), scalar_spec(tf.int32)]
    return compile_loop(run, signature, jit_compile)


def carlini_wagner_l2(
    model,
    x,
    y,
    confidence=0.0,
    c_init=1e-2,
    binary_search_steps=9,
    max_iterations=1000,
    learning_rate=1e-2,
    targeted=False,
    target=None,
    abort_early=True,
    jit_compile=None,
) -> CWResult:
    """Carlini & Wagner's L2 attack: the smallest L2 perturbation that changes the decision.

    Box constraint by the tanh reparametrisation `x' = (tanh(w) + 1) / 2` (so `x'` is always
    in [0, 1]); Adam on `w` minimises, per example,

        ||x' - x||_2^2 + c * f(x'),   f(x') = max(z_y - max_{j != y} z_j, -confidence)

    (targeted: `f(x') = max(max_{j != t} z_j - z_t, -confidence)`), starting from `x' = x`
    for every value of `c`. An iterate succeeds when `f` reaches `-confidence` strictly,
    i.e. it is misclassified (classified as the target) with a logit margin above
    `confidence`. The constant `c` is searched per example: multiplied by 10 while no success
    was found, bisected between the largest failing and the smallest succeeding value
    afterwards. The smallest-L2 successful iterate over the whole search is returned.

    The Adam loop is one `tf.function`, compiled once per model and settings and cached;
    the binary search runs in Python (`binary_search_steps` calls of the compiled loop).
    See the module docstring for how this relates to the paper's "C&W" column.

    Args:
      model: a Keras model or callable mapping float32 images `[batch, ...]` in [0, 1] to
        logits `[batch, num_classes]`.
      x: images `[batch, ...]` in [0, 1].
      y: true labels, int `[batch]`.
      confidence: kappa >= 0, the logit margin required for success.
      c_init: initial trade-off constant c > 0.
      binary_search_steps: number of values of c tried (positive int).
      max_iterations: Adam steps per value of c (positive int).
      learning_rate: Adam learning rate (> 0). The reference's 1e-2 converges fast, but
        Adam's per-coordinate step makes the first boundary crossing follow the gradient's
        sign, and the result can stay well above the minimal distance (1.5-1.8x on some
        examples of a random linear model); 1e-3 with more iterations gives tighter distances.
      targeted: if True, look for the smallest perturbation classified as `target`.
      target: int target labels `[batch]`; required iff `targeted`.
      abort_early: stop the Adam loop for a value of c when the total loss has not
        decreased by 0.01% over the last `max_iterations // 10` steps (as in the reference).
      jit_compile: XLA for the Adam loop; None: on if a GPU is visible, off on CPU.

    Returns:
      `CWResult(adv, l2, success)`: adversarial images (the original image where the attack
      failed), float32 L2 distances `[batch]` (`+inf` where it failed) and bool success
      `[batch]`.

    Raises:
      ValueError: for bad numbers, `targeted` without `target` (or the reverse), labels
        whose batch size differs from `x`, or images outside [0, 1].

    Runs eagerly (the binary search is NumPy bookkeeping between compiled inner loops).
    """
    confidence = check_finite_number(confidence, "confidence")
    c_init = check_finite_number(c_init, "c_init", positive=True)
    binary_search_steps = check_positive_int(binary_search_steps, "binary_search_steps")
    max_iterations = check_positive_int(max_iterations, "max_iterations")
    learning_rate = check_finite_number(learning_rate, "learning_rate", positive=True)
    x, y, labels = check_attack_inputs(x, y, targeted, target)
    if jit_compile is None:
        jit_compile = default_jit_compile()

    settings = (tuple(x.shape[1:]), bool(targeted), bool(abort_early), bool(jit_compile))
    inner = compiled_for(model, ("cw_l2",) + settings, lambda: _build_cw_inner(model, *settings))

    batch = x.shape[0]
    lower = np.zeros(batch, np.float32)
    upper = np.full(batch, _C_UNBOUNDED, np.float32)
    c = np.full(batch, c_init, np.float32)
    best_l2sq = np.full(batch, np.inf, np.float32)
    best_adv = x.numpy()
    for _ in range(binary_search_steps):
        l2sq, adv = inner(
            x,
            labels,
            tf.constant(c),
            tf.constant(confidence, tf.float32),
            tf.constant(learning_rate, tf.float32),
            tf.constant(max_iterations, tf.int32),
        )
        l2sq = l2sq.numpy()
        success = np.isfinite(l2sq)
        improved = l2sq < best_l2sq
        best_l2sq = np.where(improved, l2sq, best_l2sq)
        best_adv[improved] = adv.numpy()[improved]

        upper = np.where(success, np.minimum(upper, c), upper)
        lower = np.where(success, lower, np.maximum(lower, c))
        bounded = upper < _C_UNBOUNDED
        c = np.where(bounded, (lower + upper) / 2.0, c * 10.0).astype(np.float32)

    success = np.isfinite(best_l2sq)
    return CWResult(
        adv=tf.constant(best_adv),
        l2=tf.constant(np.sqrt(best_l2sq)),
        success=tf.constant(success),
    )
