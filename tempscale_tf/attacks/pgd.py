"""Projected gradient descent (PGD): L-inf and L2 threat models, CE / margin / DLR losses.

One loop, `pgd_loop`, serves both users: `pgd`, the evaluation attack (a compiled loop cached
per model, best iterate, early stop, L-inf or L2), and `adversarial.craft_linf_pgd`, the lean
L-inf attack inside a compiled training step (adversarial training). Both maximise
`common.attack_objective`. Conventions: see `tempscale_tf.attacks.common`.
"""

from __future__ import annotations

import tensorflow as tf

from tempscale_tf.attacks.common import (
    LOSSES,
    NORMS,
    attack_objective,
    batch_spec,
    check_attack_inputs,
    check_choice,
    check_finite_number,
    check_seed,
    compile_loop,
    compiled_for,
    default_jit_compile,
    is_success,
    model_logits,
    model_reference,
    normalize_l2,
    per_example,
    project_l2,
    random_start_point,
    run_in_segments,
    scalar_spec,
)
from tempscale_tf.validation import check_positive_int, check_temperature

__all__ = ["LOSSES", "NORMS", "cw_linf", "pgd", "pgd_loop"]


def pgd_loop(
    logits_and_grad,
    x_adv,
    y,
    target,
    temperature,
    step_size,
    steps,
    project,
    norm="linf",
    keep_best=False,
    targeted=False,
):
    """The PGD iterations as one `tf.while_loop` (for use inside a `tf.function`).

    Args:
      logits_and_grad: `(x_adv, y, target, temperature) -> (logits, d objective / d x_adv)`.
      x_adv: the starting point, already in the threat model.
      y: int32 `[batch]` true labels.
      target: int32 `[batch]` target labels (`y` for an untargeted attack).
      temperature: the CE temperature of the objective.
      step_size: size of each step.
      steps: number of iterations (int or int32 scalar tensor).
      project: `z -> z` projection onto the threat model (ball and [0, 1] box).
      norm: "linf" (signed-gradient steps) or "l2" (normalised-gradient steps).
      keep_best: also track, per example, the last iterate at which the attack succeeded.
      targeted: success means predicting `target` (else: not predicting `y`).

    Returns:
      `(x_adv, best, found)`: the last iterate, the last successful iterate (`x_adv`'s start
      where none), and bool `[batch]` whether any iterate succeeded (all False without
      `keep_best`).
    """
    rank = x_adv.shape.rank

    def body(i, x_adv, best, found):
        logits, grad = logits_and_grad(x_adv, y, target, temperature)
        if keep_best:  # the iterate whose logits we just computed
            success = is_success(logits, y, target, targeted)
            best = tf.where(per_example(success, rank), x_adv, best)
            found = tf.logical_or(found, success)
        step = tf.sign(grad) if norm == "linf" else normalize_l2(grad)
        return i + 1, project(x_adv + step_size * step), best, found

    found = tf.zeros(tf.shape(x_adv)[:1], tf.bool)
    _, x_adv, best, found = tf.while_loop(
        lambda i, *_: i < steps, body, (tf.constant(0), x_adv, x_adv, found)
    )
    return x_adv, best, found


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
            autograph=False,
        )

    def run(x, start, y, target, eps, step_size, temperature, steps):
        net = get_model()
        if norm == "linf":
            lower = tf.maximum(x - eps, 0.0)
            upper = tf.minimum(x + eps, 1.0)
            project = lambda z: tf.clip_by_value(z, lower, upper)
        else:
            project = lambda z: project_l2(z, x, eps)

        x_adv, best, found = pgd_loop(
            logits_and_grad, project(x + start), y, target, temperature, step_size, steps,
            project, norm, keep_best, targeted,
        )  # fmt: skip
        if keep_best:
            final = is_success(model_logits(net, x_adv), y, target, targeted)
            use_best = tf.logical_and(found, tf.logical_not(final))
            x_adv = tf.where(per_example(use_best, x.shape.rank), best, x_adv)
        return x_adv

    signature = [batch_spec(item_shape)] * 2 + [labels, labels] + [scalar_spec()] * 3
    signature += [scalar_spec(tf.int32)]
    return compile_loop(run, signature, jit_compile)


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
    seed = check_seed(seed)

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
    """Run the compiled loop `chunk` steps at a time on the examples not yet successful.

    With keep_best, an example returned successful is finished; the others returned their last
    iterate, from which the next chunk continues (no new random start).
    """

    def step(state, n):
        adv = run(
            state["x"], state["start"], state["y"], state["target"], eps, *args,
            tf.constant(n, tf.int32),
        )  # fmt: skip
        return {**state, "adv": adv, "start": adv - state["x"]}

    def finished(state):
        return is_success(model_logits(model, state["adv"]), state["y"], state["target"], targeted)

    segments = [min(chunk, steps - done) for done in range(0, steps, chunk)]
    state = {"x": x, "y": y, "target": target, "start": start, "adv": x + start}
    return run_in_segments(step, state, segments, finished)["adv"]


def cw_linf(model, x, y, eps=8 / 255, step_size=2 / 255, steps=20, **kwargs):
    """ "C&W-style" L-inf attack: `pgd(..., loss="margin")` (PGD on the C&W margin loss).

    This is the attack usually reported as "CW-inf" at an L-inf budget (Madry et al., 2018;
    Croce & Hein, 2020).

    Args:
      model: the classifier (images in [0, 1] -> logits).
      x: float images `[batch, ...]` in [0, 1].
      y: int labels `[batch]`.
      eps: the L-inf radius.
      step_size: the step size.
      steps: the number of iterations.
      **kwargs: any other `pgd` argument except `loss`.

    Returns:
      float32 adversarial images shaped like `x` (see `pgd`).
    """
    if "loss" in kwargs:
        raise ValueError("cw_linf always uses loss='margin'; call pgd() for another loss")
    return pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, loss="margin", **kwargs)
