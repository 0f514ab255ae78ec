"""Auto-PGD (APGD) of Croce & Hein (2020): step-size-free PGD with momentum and restarts.

APGD replaces PGD's fixed step size by a schedule that adapts to the progress of the attack:
it starts with step 2 * eps, uses a heavy-ball momentum of 0.75, and at checkpoints halves
the step (and jumps back to the best point so far) where the loss stopped improving. This
module holds `apgd` (untargeted, or targeted at given labels) and `apgd_targeted` (APGD-T:
the targeted DLR loss towards each of the k most likely wrong classes). The helpers it shares
with FAB and Square (seeds, norms, projections, top-k targets, `run_in_segments`) live in
`common.py`.

Conventions as in `common.py`: images float32 `[batch, ...]` in [0, 1], int labels `[batch]`,
and the temperature divides the logits.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from tempscale_tf.attacks.common import (
    LOSSES,
    attack_objective,
    batch_spec,
    check_attack_inputs,
    check_attack_settings,
    check_choice,
    check_finite_number,
    check_images_and_labels,
    check_seed,
    compile_loop,
    compiled_for,
    model_logits,
    model_reference,
    normalize_l2,
    per_example,
    predictions,
    project_ball,
    run_in_segments,
    scalar_spec,
    stateless_seed,
    top_k_targets,
    unit_start,
)
from tempscale_tf.validation import check_positive_int, check_temperature

__all__ = ["apgd", "apgd_checkpoints", "apgd_targeted"]

# Croce & Hein (2020), Sec. 3.2: checkpoints w_j = ceil(p_j * N) with p_0 = 0, p_1 = 0.22 and
# p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); the reference code counts them in whole
# iterations (first segment int(0.22 N), each next one int(0.03 N) shorter, >= int(0.06 N)).
CHECKPOINT_FIRST, CHECKPOINT_DECREASE, CHECKPOINT_MIN = 0.22, 0.03, 0.06
MOMENTUM = 0.75  # alpha: weight of the new step; 1 - alpha on the previous update
INITIAL_STEP = 2.0  # the step size starts at 2 * eps


# --------------------------------------------------------------------------- APGD


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD may halve its step size.

    The reference implementation's integer version of Croce & Hein's (2020) checkpoints
    `w_j = ceil(p_j * steps)`, `p_0 = 0`, `p_1 = 0.22`,
    `p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`: the first segment has
    `int(0.22 * steps)` iterations and each next one `int(0.03 * steps)` fewer, but at least
    `int(0.06 * steps)` (every length at least 1). For `steps=100`: 22, 41, 57, 70, 80, 87, 93, 99.

    Args:
      steps: the number of APGD iterations, a positive int.

    Returns:
      increasing list of iteration counts (each <= `steps`).
    """
    steps = check_positive_int(steps, "steps")
    length = max(int(CHECKPOINT_FIRST * steps), 1)
    decrease = max(int(CHECKPOINT_DECREASE * steps), 1)
    minimum = max(int(CHECKPOINT_MIN * steps), 1)
    points, position = [], 0
    while position + length <= steps:
        position += length
        points.append(position)
        length = max(length - decrease, minimum)
    return points


def _apgd_segments(steps):
    """(length, first iteration, check at the end) per segment of the APGD loop.

    The segments end at the checkpoints of `apgd_checkpoints(steps)` (where the step-size
    rule is applied) and at `steps`.
    """
    checkpoints = apgd_checkpoints(steps)
    bounds = list(checkpoints) + ([steps] if not checkpoints or checkpoints[-1] < steps else [])
    segments, start = [], 0
    for end in bounds:
        segments.append((end - start, start, end in checkpoints))
        start = end
    return segments


_APGD_KEYS = (
    "x",  # clean images
    "y",  # true labels
    "target",  # target labels (= y when untargeted)
    "x_adv",  # current iterate
    "x_prev",  # previous iterate (momentum)
    "grad",  # gradient of the loss at x_adv (EOT average)
    "loss",  # loss at x_adv
    "step",  # step size per example
    "x_best",  # highest-loss point so far
    "grad_best",
    "loss_best",
    "loss_best_last",  # loss_best at the previous checkpoint
    "reduced_last",  # whether the step was halved at the previous checkpoint
    "increases",  # #steps since the last checkpoint that increased the loss
    "x_found",  # last misclassified iterate
    "fooled",  # whether any iterate was misclassified
)


def _state_signature(item_shape):
    image, labels, values = batch_spec(item_shape), batch_spec([], tf.int32), batch_spec([])
    kinds = dict(y=labels, target=labels, reduced_last=batch_spec([], tf.bool))
    kinds.update(fooled=batch_spec([], tf.bool))
    for key in ("loss", "step", "loss_best", "loss_best_last", "increases"):
        kinds[key] = values
    return {key: kinds.get(key, image) for key in _APGD_KEYS}


def _loss_and_gradient(loss, targeted, eot, get_model, item_shape, jit_compile):
    """`f(net, x_adv, y, target, temperature, eot_iter) -> (logits, loss [batch], gradient)`.

    With `eot` the gradient is averaged over `eot_iter` forward passes (expectation over
    transformation, for models with random outputs); logits and loss are the last pass's.
    Outside XLA the forward/backward pass is a separate, never-inlined function (see
    `attacks.pgd._build_pgd`: inlined into a while loop, oneDNN may leave max-pool gradients on
    the slow kernel, differently in each process).
    """

    def one_pass_of(x_adv, y, target, temperature):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = model_logits(get_model(), x_adv)
            objective = attack_objective(logits, y, target, loss, temperature, targeted)
        grad = tape.gradient(objective, x_adv)  # examples are independent: d(sum) = per example
        if grad is None:
            raise ValueError("the model's logits do not depend on its input: no gradient")
        return logits, objective, grad

    if not jit_compile:
        labels = batch_spec([], tf.int32)
        one_pass_of = tf.function(
            one_pass_of,
            input_signature=[batch_spec(item_shape), labels, labels, scalar_spec()],
            experimental_attributes={"_noinline": True},
            autograph=False,
        )

    def one_pass(net, x_adv, y, target, temperature):
        del net  # the model comes from `get_model` (the same object)
        return one_pass_of(x_adv, y, target, temperature)

    def evaluate(net, x_adv, y, target, temperature, eot_iter):
        logits, objective, grad = one_pass(net, x_adv, y, target, temperature)
        if not eot:
            return logits, objective, grad

        def body(i, logits, objective, total):
            logits, objective, grad = one_pass(net, x_adv, y, target, temperature)
            return i + 1, logits, objective, total + grad

        _, logits, objective, total = tf.while_loop(
            lambda i, *_: i < eot_iter, body, (tf.constant(1), logits, objective, grad)
        )
        return logits, objective, total / tf.cast(eot_iter, tf.float32)

    return evaluate


def _build_apgd_init(model, item_shape, norm, loss, targeted, eot, jit_compile):
    """Compiled: the APGD state at the random start (one loss and gradient evaluation)."""
    get_model = model_reference(model)
    evaluate = _loss_and_gradient(loss, targeted, eot, get_model, item_shape, jit_compile)

    def init(x, start, y, target, eps, temperature, eot_iter):
        x_adv = tf.clip_by_value(x + eps * start, 0.0, 1.0)
        logits, objective, grad = evaluate(get_model(), x_adv, y, target, temperature, eot_iter)
        batch = tf.shape(x)[:1]
        fooled = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
        return dict(
            x=x,
            y=y,
            target=target,
            x_adv=x_adv,
            x_prev=x_adv,
            grad=grad,
            loss=objective,
            step=tf.fill(batch, INITIAL_STEP * eps),
            x_best=x_adv,
            grad_best=grad,
            loss_best=objective,
            loss_best_last=objective,
            reduced_last=tf.ones(batch, tf.bool),  # no "unchanged step" test at checkpoint 1
            increases=tf.zeros(batch),
            x_found=x_adv,
            fooled=fooled,
        )

    image, labels = batch_spec(item_shape), batch_spec([], tf.int32)
    signature = [image, image, labels, labels] + [scalar_spec()] * 2 + [scalar_spec(tf.int32)]
    return compile_loop(init, signature, jit_compile)


def _build_apgd_segment(model, item_shape, norm, loss, targeted, eot, jit_compile):
    """Compiled: `length` APGD iterations, then (if `check`) the step-size checkpoint."""
    get_model = model_reference(model)
    evaluate = _loss_and_gradient(loss, targeted, eot, get_model, item_shape, jit_compile)

    def segment(state, eps, rho, temperature, eot_iter, length, first, check):
        net = get_model()
        x, y, target = state["x"], state["y"], state["target"]
        rank = x.shape.rank
        project = lambda z: project_ball(z, x, eps, norm)
        direction = tf.sign if norm == "linf" else normalize_l2

        def body(i, s):
            # No momentum on the very first step (alpha = 1), then alpha = 0.75.
            alpha = tf.where(first + i == 0, 1.0, MOMENTUM)
            x_adv = s["x_adv"]
            z = project(x_adv + per_example(s["step"], rank) * direction(s["grad"]))
            x_new = project(x_adv + alpha * (z - x_adv) + (1.0 - alpha) * (x_adv - s["x_prev"]))
            logits, objective, grad = evaluate(net, x_new, y, target, temperature, eot_iter)
            misclassified = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
            improved = objective > s["loss_best"]
            s = dict(s)
            s["x_found"] = tf.where(per_example(misclassified, rank), x_new, s["x_found"])
            s["fooled"] = tf.logical_or(s["fooled"], misclassified)
            s["increases"] += tf.cast(objective > s["loss"], tf.float32)
            s["x_prev"], s["x_adv"], s["grad"], s["loss"] = x_adv, x_new, grad, objective
            s["x_best"] = tf.where(per_example(improved, rank), x_new, s["x_best"])
            s["grad_best"] = tf.where(per_example(improved, rank), grad, s["grad_best"])
            s["loss_best"] = tf.where(improved, objective, s["loss_best"])
            return i + 1, s

        _, s = tf.while_loop(lambda i, _: i < length, body, (tf.constant(0), dict(state)))

        # Checkpoint: halve the step where (1) fewer than a fraction rho of the segment's steps
        # increased the loss (the paper's strict "<"; the reference code has "<="), or (2) the
        # step was not halved at the previous checkpoint and the best loss did not improve
        # since; those examples restart from their best point (their loss becomes the best).
        oscillating = s["increases"] < rho * tf.cast(length, tf.float32)
        stalled = tf.logical_and(
            tf.logical_not(s["reduced_last"]), s["loss_best_last"] >= s["loss_best"]
        )
        reduce = tf.logical_and(check, tf.logical_or(oscillating, stalled))
        wide = per_example(reduce, rank)
        out = dict(s)
        out["step"] = tf.where(reduce, s["step"] / 2.0, s["step"])
        out["x_adv"] = tf.where(wide, s["x_best"], s["x_adv"])
        out["grad"] = tf.where(wide, s["grad_best"], s["grad"])
        out["loss"] = tf.where(reduce, s["loss_best"], s["loss"])
        out["reduced_last"] = tf.where(check, reduce, s["reduced_last"])
        out["loss_best_last"] = tf.where(check, s["loss_best"], s["loss_best_last"])
        out["increases"] = tf.where(check, tf.zeros_like(s["increases"]), s["increases"])
        return out

    signature = [_state_signature(item_shape)] + [scalar_spec()] * 3
    signature += [scalar_spec(tf.int32)] * 3 + [scalar_spec(tf.bool)]
    return compile_loop(segment, signature, jit_compile)


class _APGDSettings(NamedTuple):
    eps: float
    norm: str
    loss: str
    steps: int
    n_restarts: int
    rho: float
    eot_iter: int
    temperature: float
    jit_compile: bool


def _check_apgd_settings(eps, norm, loss, steps, n_restarts, rho, eot_iter, temperature, jit):
    eps, norm, jit = check_attack_settings(eps, norm, jit)
    rho = check_finite_number(rho, "rho")
    if rho > 1.0:
        raise ValueError(f"`rho` must be in [0, 1], received {rho}")
    return _APGDSettings(
        eps=eps,
        norm=norm,
        loss=check_choice(loss, LOSSES, "loss"),
        steps=check_positive_int(steps, "steps"),
        n_restarts=check_positive_int(n_restarts, "n_restarts"),
        rho=rho,
        eot_iter=check_positive_int(eot_iter, "eot_iter"),
        temperature=check_temperature(temperature),
        jit_compile=jit,
    )


def _apgd_runs(model, x, y, target_sets, settings: _APGDSettings, seed: int, early_stop: bool):
    """APGD for each target set (None: untargeted) and restart, on the examples not yet fooled.

    Returns:
      (adv `[batch, ...]`, fooled bool `[batch]`): per example the misclassified point of the
      first run that fooled it; else the highest-loss point of its first run; the clean image
      for examples misclassified without attack (never attacked).
    """
    s = settings
    key = (tuple(x.shape[1:]), s.norm, s.loss, target_sets[0] is not None, s.eot_iter > 1)
    key += (s.jit_compile,)
    init = compiled_for(model, ("apgd-init",) + key, lambda: _build_apgd_init(model, *key))
    segment = compiled_for(model, ("apgd-segment",) + key, lambda: _build_apgd_segment(model, *key))
    eps, rho, temperature = (tf.constant(v, tf.float32) for v in (s.eps, s.rho, s.temperature))
    eot_iter = tf.constant(s.eot_iter, tf.int32)
    segments = [
        tuple(tf.constant(v, dtype) for v, dtype in zip(seg, (tf.int32, tf.int32, tf.bool)))
        for seg in _apgd_segments(s.steps)
    ]
    step = lambda state, seg: segment(state, eps, rho, temperature, eot_iter, *seg)
    finished = (lambda state: state["fooled"]) if early_stop else None

    adv = x
    fooled = tf.not_equal(predictions(model, x), y)  # misclassified already: not attacked
    run = 0
    for targets in target_sets:
        for _ in range(s.n_restarts):
            todo = tf.where(tf.logical_not(fooled))[:, 0]
            if int(tf.size(todo)) == 0:
                return adv, fooled
            start = unit_start(tf.shape(x), s.norm, stateless_seed(seed, run))
            xs, ys = tf.gather(x, todo), tf.gather(y, todo)
            ts = ys if targets is None else tf.gather(targets, todo)
            state = init(xs, tf.gather(start, todo), ys, ts, eps, temperature, eot_iter)
            state = run_in_segments(step, state, segments, finished, pad=s.jit_compile)
            success = state["fooled"]
            found = tf.where(per_example(success, x.shape.rank), state["x_found"], state["x_best"])
            keep = tf.logical_or(success, tf.constant(run == 0))  # first run: also best-loss point
            update = tf.boolean_mask(todo, keep)
            adv = tf.tensor_scatter_nd_update(adv, update[:, None], tf.boolean_mask(found, keep))
            fooled = tf.tensor_scatter_nd_update(fooled, todo[:, None], success)
            run += 1
    return adv, fooled


def apgd(
    model,
    x,
    y,
    eps,
    norm="linf",
    loss="ce",
    steps=100,
    targeted=False,
    target=None,
    n_restarts=1,
    seed=None,
    rho=0.75,
    jit_compile=None,
    early_stop=True,
    *,
    eot_iter=1,
    temperature=1.0,
):
    """APGD (Croce & Hein, 2020) in the L-inf or L2 ball of radius `eps`, inside [0, 1].

    Each run starts from a random point on the sphere of radius `eps` (L-inf: scaled uniform
    noise; L2: a Gaussian direction), with step size `2 * eps`. Every iteration takes a
    projected step along the sign (L-inf) or the normalised (L2) gradient and combines it
    with the previous update, `x_{k+1} = P(x_k + 0.75 (z_{k+1} - x_k) + 0.25 (x_k - x_{k-1}))`
    (no momentum on the first step). At the checkpoints of `apgd_checkpoints(steps)` the step
    size of an example is halved, and the example restarts from its highest-loss point, if
    fewer than a fraction `rho` of the steps since the last checkpoint increased the loss, or
    if its step was not halved at the last checkpoint and its best loss did not improve.
    The iterations are one compiled `tf.while_loop` per segment between checkpoints; with
    `early_stop`, examples already misclassified are dropped between segments.

    An example counts as fooled as soon as an iterate is misclassified (any wrong class, also
    for targeted attacks, as in the reference implementation). Examples misclassified
    without attack are returned unchanged.

    Args:
      model: a Keras model or a callable, images `[batch, ...]` in [0, 1] -> logits.
      x: images `[batch, ...]`, float, in [0, 1].
      y: true labels, int `[batch]`.
      eps: radius of the threat model, finite, >= 0.
      norm: "linf" or "l2".
      loss: "ce" (cross-entropy of `softmax(z / temperature)`), "dlr" (Croce & Hein's
        scale-invariant difference-of-logits ratio; >= 3 classes, >= 4 when targeted) or
        "margin" (C&W margin). See `tempscale_tf.attacks.pgd` for the formulas.
      steps: iterations per run, a positive int.
      targeted: minimise the loss towards `target` instead (targeted CE / DLR / margin).
      target: int target labels `[batch]`, required iff `targeted`.
      n_restarts: runs from new random starts, each only on the examples not yet fooled.
      seed: int seed of the random starts (None: drawn from NumPy's global generator). The
        start of example i depends only on the seed, the run and i, so the result does not
        depend on `early_stop` or on which other examples are in the batch.
      rho: the fraction of loss-increasing steps below which the step size is halved.
      jit_compile: compile with XLA; None: on iff a GPU is visible.
      early_stop: drop fooled examples between checkpoint segments (same result, less work).
      eot_iter: forward/backward passes whose gradients are averaged per step (expectation
        over transformation, for randomised models; 1 = plain APGD).
      temperature: T > 0 dividing the logits in the "ce" loss.

    Returns:
      float32 tensor shaped like `x`: per example a misclassified point if one was found,
      otherwise the highest-loss point of the first run; within the ball and [0, 1].

    Raises:
      ValueError: for a bad eps, norm, loss, step count, restart count, rho, eot_iter,
        temperature or seed, bad images or labels, or `target` / `targeted` mismatches.
    """
    settings = _check_apgd_settings(
        eps, norm, loss, steps, n_restarts, rho, eot_iter, temperature, jit_compile
    )
    x, y, target = check_attack_inputs(x, y, targeted, target)
    seed = check_seed(seed)
    if x.shape[0] == 0:
        return x
    targets = [target] if targeted else [None]
    adv, _ = _apgd_runs(model, x, y, targets, settings, seed, early_stop)
    return adv


def apgd_targeted(
    model,
    x,
    y,
    eps,
    norm="linf",
    loss="dlr",
    steps=100,
    num_target_classes=9,
    n_restarts=1,
    seed=None,
    rho=0.75,
    jit_compile=None,
    early_stop=True,
    *,
    eot_iter=1,
    temperature=1.0,
):
    """APGD-T: targeted APGD towards each of the `num_target_classes` most likely wrong classes.

    The targets are ranked by the clean logits; target k (with `n_restarts` runs each) only
    runs on the examples that targets 1..k-1 did not fool. The default loss is the targeted
    DLR loss `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)` (`pi_k`: the k-th largest
    logit), which needs >= 4 classes. AutoAttack's standard version uses 9 targets with one
    run each.

    Args:
      model, x, y, eps, norm, steps, n_restarts, seed, rho, jit_compile, early_stop, eot_iter,
      temperature: as for `apgd`.
      loss: "dlr" (default), "ce" or "margin", in their targeted form.
      num_target_classes: how many target classes to try, at most `num_classes - 1`.

    Returns:
      float32 tensor shaped like `x`: a misclassified point where any target run found one,
      otherwise the highest-loss point of the first target's first run.

    Raises:
      ValueError: as for `apgd`, and if the model has too few classes.
    """
    settings = _check_apgd_settings(
        eps, norm, loss, steps, n_restarts, rho, eot_iter, temperature, jit_compile
    )
    num_target_classes = check_positive_int(num_target_classes, "num_target_classes")
    x, y = check_images_and_labels(x, y)
    seed = check_seed(seed)
    if x.shape[0] == 0:
        return x
    targets = top_k_targets(model, x, y, num_target_classes)
    target_sets = [targets[:, k] for k in range(num_target_classes)]
    adv, _ = _apgd_runs(model, x, y, target_sets, settings, seed, early_stop)
    return adv
