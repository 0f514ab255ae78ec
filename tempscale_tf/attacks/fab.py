"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, 2020): minimum-norm adversarials.

FAB linearises the classifier around the current iterate and projects onto the linearised
decision boundary towards a class (the closest one, or a given target for FAB-T), in the
L-inf or L2 norm and inside the [0, 1] box. It combines that projection with the projection
of the *original* point, which biases the iterates towards small perturbations, overshoots
by `eta`, and after every adversarial iterate steps back towards the original point by
`beta`. The result is the smallest adversarial perturbation found.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tempscale_tf.attacks.common import (
    NORMS,
    batch_spec,
    check_choice,
    check_finite_number,
    check_images_and_labels,
    check_seed,
    compile_loop,
    compiled_for,
    default_jit_compile,
    gather_rows,
    lp_norm,
    model_logits,
    model_reference,
    per_example,
    predictions,
    run_in_segments,
    scalar_spec,
    scatter_rows,
    stateless_seed,
    top_k_targets,
    unit_start,
)
from tempscale_tf.validation import check_positive_int

__all__ = ["FABResult", "fab", "project_onto_hyperplane"]

# The reference's radius of the random restarts when no eps is given.
DEFAULT_RESTART_RADIUS = {"linf": 0.3, "l2": 1.0}
_NO_BOUNDARY = 1e10  # "distance" of the true class to itself, never the closest boundary
_MIN_STEP_NORM = 1e-8  # lower bound of the projection norms in the bias weight alpha
_SEGMENT = 10  # with early stopping, iterations between two drops of finished examples


class FABResult(NamedTuple):
    """Result of `fab`.

    Attributes:
      adv: float32 `[batch, ...]`: the smallest adversarial image found per example; the
        clean image where none was found or where `x` is misclassified already.
      distance: float32 `[batch]`: `||adv - x||` in the attack's norm; `+inf` where no
        adversarial image was found, 0 where `x` is misclassified already.
    """

    adv: tf.Tensor
    distance: tf.Tensor


# --------------------------------------------------------------------------- projection


def project_onto_hyperplane(points, w, r, norm) -> tf.Tensor:
    """Smallest `delta` with `w . delta = r` and `0 <= points + delta <= 1`, per example.

    The L-inf solution moves every coordinate with `w_i != 0` by `sign(w_i r) min(lam, c_i)`,
    the L2 solution by `w_i sign(r) min(lam, c_i / |w_i|)`, where `c_i` is the distance to the
    box face in that direction and `lam >= 0` solves the piecewise-linear, nondecreasing
    equation `psi(lam) = sum_i a_i min(lam, k_i) = |r|` (L-inf: `a_i = |w_i|`, `k_i = c_i`;
    L2: `a_i = w_i^2`, `k_i = c_i / |w_i|`). It is solved exactly: sort the breakpoints `k_i`,
    evaluate `psi` at each with cumulative sums, find the segment that contains `|r|` and
    solve the linear equation there. If the hyperplane cannot be reached inside the box,
    every coordinate goes to its box face (the point of the box closest to the hyperplane).

    Args:
      points: float32 `[batch, dim]` in [0, 1].
      w: float32 `[batch, dim]`, the hyperplane normals.
      r: float32 `[batch]`, the required change `w . delta`.
      norm: "linf" or "l2".

    Returns:
      float32 `[batch, dim]`.
    """
    sign_r = tf.sign(r)[:, None]
    direction = tf.sign(w) * sign_r  # the sign in which each coordinate has to move
    room = tf.where(direction > 0, 1.0 - points, points)  # distance to that box face
    abs_w = tf.abs(w)
    if norm == "linf":
        weight, knot = abs_w, room
    else:
        weight, knot = tf.square(w), tf.math.divide_no_nan(room, abs_w)
    knot = tf.where(weight > 0, knot, 0.0)  # w_i = 0 never moves; keep the knots finite
    target = tf.abs(r)[:, None]

    order = tf.argsort(knot, axis=1)
    knot_s = tf.gather(knot, order, batch_dims=1)
    weight_s = tf.gather(weight, order, batch_dims=1)
    below = tf.cumsum(weight_s * knot_s, axis=1, exclusive=True)  # sum_{j<k} a_j k_j
    above = tf.cumsum(weight_s, axis=1, reverse=True, exclusive=True)  # sum_{j>k} a_j
    psi = below + weight_s * knot_s + knot_s * above  # psi at each knot
    rest = above + weight_s  # sum_{j>=k} a_j: the slope of psi just below knot k
    m = tf.reduce_sum(tf.cast(psi < target, tf.int32), axis=1)  # knots below the solution
    dim = tf.shape(w)[1]
    at = tf.minimum(m, dim - 1)[:, None]
    lam = tf.math.divide_no_nan(
        target - tf.gather(below, at, batch_dims=1), tf.gather(rest, at, batch_dims=1)
    )
    previous = tf.gather(knot_s, tf.maximum(m - 1, 0)[:, None], batch_dims=1)
    lower = tf.where(m[:, None] > 0, previous, 0.0)
    lam = tf.clip_by_value(lam, lower, tf.gather(knot_s, at, batch_dims=1))
    lam = tf.where(m[:, None] >= dim, knot_s[:, -1:], lam)  # unreachable: all at the faces
    moved = tf.minimum(lam, knot)
    if norm == "l2":
        moved *= abs_w
    return tf.where(weight > 0, direction * moved, 0.0)


# --------------------------------------------------------------------------- FAB loop


def _boundary(net, x1, y, target, targeted):
    """Logit differences `f = z_j - z_y` and their gradients at `x1`, for the chosen class j.

    FAB-T uses the target; untargeted FAB the class whose linearised boundary is closest in
    the dual norm (needs the whole Jacobian). Returns (f `[batch]`, grad `[batch, ...]`,
    dual norms of all candidates for the caller to pick from).
    """
    with tf.GradientTape() as tape:
        tape.watch(x1)
        logits = model_logits(net, x1)
        if targeted:
            diff = tf.gather(logits, target, batch_dims=1) - tf.gather(logits, y, batch_dims=1)
    if targeted:
        grad = tape.gradient(diff, x1)
        if grad is None:
            raise ValueError("the model's logits do not depend on its input: no gradient")
        return diff[:, None], grad[:, None]
    jacobian = tape.batch_jacobian(logits, x1)  # [batch, classes, ...]
    if jacobian is None:
        raise ValueError("the model's logits do not depend on its input: no gradient")
    diff = logits - tf.gather(logits, y, batch_dims=1)[:, None]
    grad = jacobian - tf.gather(jacobian, y, batch_dims=1)[:, None]
    return diff, grad


def _build_fab(model, item_shape, norm, targeted, jit_compile):
    """Compiled: `length` FAB iterations on a state dict."""
    get_model = model_reference(model)
    if norm == "linf":
        dual = lambda g: tf.reduce_sum(tf.abs(g), axis=-1)  # L1, the dual of L-inf
    else:
        dual = lambda g: tf.sqrt(tf.reduce_sum(tf.square(g), axis=-1))

    def segment(state, alpha_max, eta, beta, length):
        net = get_model()
        x0, y, target = state["x"], state["y"], state["target"]
        rank = x0.shape.rank
        batch = tf.shape(x0)[0]
        flat = lambda v: tf.reshape(v, [batch, -1])
        x0_flat = flat(x0)

        def body(i, s):
            x1 = s["x1"]
            diff, grad = _boundary(net, x1, y, target, targeted)
            grad = tf.reshape(grad, [batch, tf.shape(diff)[1], -1])
            if not targeted:  # the closest linearised boundary (never the true class)
                is_y = tf.one_hot(y, tf.shape(diff)[1], on_value=True, off_value=False)
                distance = tf.where(is_y, _NO_BOUNDARY, tf.abs(diff) / (1e-12 + dual(grad)))
                closest = tf.argmin(distance, axis=1, output_type=tf.int32)
                diff = tf.gather(diff, closest, batch_dims=1)
                grad = tf.gather(grad, closest, batch_dims=1)
            else:
                diff, grad = diff[:, 0], grad[:, 0]
            x1_flat = flat(x1)
            # The linearisation g(p) = diff + grad . (p - x1); project x1 and x0 onto g = 0.
            d1 = project_onto_hyperplane(x1_flat, grad, -diff, norm)
            offset = tf.reduce_sum(grad * (x0_flat - x1_flat), axis=1)
            d2 = project_onto_hyperplane(x0_flat, grad, -(diff + offset), norm)
            a1 = tf.maximum(lp_norm(d1, norm), _MIN_STEP_NORM)
            a2 = tf.maximum(lp_norm(d2, norm), _MIN_STEP_NORM)
            alpha = tf.clip_by_value(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
            new = (x1_flat + eta * d1) * (1.0 - alpha) + (x0_flat + eta * d2) * alpha
            x1 = tf.reshape(tf.clip_by_value(new, 0.0, 1.0), tf.shape(x0))

            adversarial = tf.not_equal(
                tf.argmax(model_logits(net, x1), axis=-1, output_type=tf.int32), y
            )
            size = lp_norm(x1 - x0, norm)
            better = tf.logical_and(adversarial, size < s["distance"])
            s = dict(s)
            s["adv"] = tf.where(per_example(better, rank), x1, s["adv"])
            s["distance"] = tf.where(better, size, s["distance"])
            # Step back towards the original point from every adversarial iterate.
            s["x1"] = tf.where(per_example(adversarial, rank), x0 + beta * (x1 - x0), x1)
            return i + 1, s

        _, state = tf.while_loop(lambda i, _: i < length, body, (tf.constant(0), dict(state)))
        return state

    image, labels = batch_spec(item_shape), batch_spec([], tf.int32)
    state = dict(x=image, y=labels, target=labels, x1=image, adv=image, distance=batch_spec([]))
    signature = [state] + [scalar_spec()] * 3 + [scalar_spec(tf.int32)]
    return compile_loop(segment, signature, jit_compile)


def fab(
    model,
    x,
    y,
    eps=None,
    norm="linf",
    steps=100,
    n_restarts=1,
    targeted=True,
    num_target_classes=9,
    alpha_max=0.1,
    eta=1.05,
    beta=0.9,
    seed=None,
    *,
    early_stop=True,
    jit_compile=None,
) -> FABResult:
    """FAB / FAB-T (Croce & Hein, 2020): the smallest L-inf or L2 adversarial perturbation.

    Each iteration at the current point `x1` (the original point `x0` at first):
      1. linearises `f = z_j - z_y` at `x1`, for the target `j` (FAB-T) or the class whose
         linearised boundary `|f| / ||grad f||_dual` is closest (untargeted FAB);
      2. projects `x1` and `x0` onto the hyperplane `f = 0` inside the box [0, 1]
         (`project_onto_hyperplane`), giving steps `d1` and `d2`;
      3. moves to `(1 - a)(x1 + eta d1) + a (x0 + eta d2)`, clipped to [0, 1], with the bias
         `a = min(|d1| / (|d1| + |d2|), alpha_max)` towards the original point and the
         overshoot `eta`;
      4. if the new point is misclassified, records it when it is the closest so far and
         steps back to `x0 + beta (x1 - x0)`.
    FAB-T runs once per target, for the `num_target_classes` classes with the largest clean
    logits; restarts after the first start from a random point at radius `eps / 2`.

    Args:
      model: a Keras model or callable, images `[batch, ...]` in [0, 1] -> logits.
      x: images `[batch, ...]` in [0, 1].
      y: true labels, int `[batch]`.
      eps: the threat-model radius, or None. It sets the radius of the random restarts
        (None: the reference's 0.3 for L-inf, 1.0 for L2) and, with `early_stop`, the
        distance at which an example counts as broken and stops being attacked.
      norm: "linf" or "l2".
      steps: iterations per run, a positive int.
      n_restarts: runs per target (the first one from `x`, the others from random starts).
      targeted: FAB-T (default, as in AutoAttack's standard version) or untargeted FAB (which
        needs the Jacobian of all logits at every step).
      num_target_classes: FAB-T's number of targets, at most `num_classes - 1`.
      alpha_max: the largest bias towards the original point, in [0, 1].
      eta: the overshoot, >= 1.
      beta: the backward step after an adversarial iterate, in [0, 1].
      seed: int seed of the random restarts (None: drawn from NumPy's global generator).
      early_stop: with `eps` given, stop attacking an example once an adversarial image within
        `eps` was found (AutoAttack's use); without, every target and restart runs on every
        example and the smallest distance is kept (minimum-norm use).
      jit_compile: compile with XLA; None: on iff a GPU is visible.

    Returns:
      `FABResult(adv, distance)`.

    Raises:
      ValueError: for bad settings, images or labels, or too few classes for the targets.
    """
    norm = check_choice(norm, NORMS, "norm")
    if eps is not None:
        eps = check_finite_number(eps, "eps")
    steps = check_positive_int(steps, "steps")
    n_restarts = check_positive_int(n_restarts, "n_restarts")
    num_target_classes = check_positive_int(num_target_classes, "num_target_classes")
    alpha_max = check_finite_number(alpha_max, "alpha_max")
    beta = check_finite_number(beta, "beta")
    eta = check_finite_number(eta, "eta")
    if alpha_max > 1.0 or beta > 1.0:
        raise ValueError(f"`alpha_max` and `beta` must be in [0, 1], received {alpha_max}, {beta}")
    if eta < 1.0:
        raise ValueError(f"`eta` (the overshoot) must be >= 1, received {eta}")
    if jit_compile is None:
        jit_compile = default_jit_compile()
    x, y = check_images_and_labels(x, y)
    seed = check_seed(seed)
    batch = int(x.shape[0])
    if batch == 0:
        return FABResult(x, tf.zeros([0]))

    settings = (tuple(x.shape[1:]), norm, bool(targeted), bool(jit_compile))
    run = compiled_for(model, ("fab",) + settings, lambda: _build_fab(model, *settings))
    constants = [tf.constant(v, tf.float32) for v in (alpha_max, eta, beta)]
    step = lambda state, length: run(state, *constants, tf.constant(length, tf.int32))
    stop = early_stop and eps is not None
    segments = [_SEGMENT] * (steps // _SEGMENT) + ([steps % _SEGMENT] if steps % _SEGMENT else [])
    if not stop:
        segments = [steps]
    finished = (lambda state: state["distance"] <= eps) if stop else None
    radius = (eps if eps is not None else DEFAULT_RESTART_RADIUS[norm]) / 2.0

    correct = tf.equal(predictions(model, x), y)
    best = dict(adv=x, distance=tf.where(correct, np.inf, 0.0))
    target_sets = [y]
    if targeted:
        targets = top_k_targets(model, x, y, num_target_classes)
        target_sets = [targets[:, k] for k in range(num_target_classes)]
    run_index = 0
    for targets in target_sets:
        for restart in range(n_restarts):
            todo = correct if not stop else tf.logical_and(correct, best["distance"] > eps)
            todo = tf.where(todo)[:, 0]
            if int(tf.size(todo)) == 0:
                break
            xs = tf.gather(x, todo)
            x1 = xs
            if restart > 0:
                start = unit_start(tf.shape(x), norm, stateless_seed(seed, run_index))
                x1 = tf.clip_by_value(xs + radius * tf.gather(start, todo), 0.0, 1.0)
            state = dict(
                x=xs,
                y=tf.gather(y, todo),
                target=tf.gather(targets, todo),
                x1=x1,
                **gather_rows(best, todo),
            )
            state = run_in_segments(step, state, segments, finished, pad=jit_compile)
            best = scatter_rows(best, todo, {k: state[k] for k in ("adv", "distance")})
            run_index += 1
    return FABResult(best["adv"], best["distance"])
