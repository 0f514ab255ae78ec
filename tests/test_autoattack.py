"""Tests of AutoAttack: APGD / APGD-T, FAB-T, Square Attack and the ensemble.

Oracles: the exact minimal L-inf / L2 distances of a linear classifier, a model with masked
gradients, an independent solver for FAB's box-constrained projection, and IBM ART's
AutoAttack. Tiny models and reduced step / query budgets keep the file fast on 2 CPUs.
"""

import functools
import inspect
import math
from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import exact_linear_model, predicted_labels, small_conv_model

from tempscale_tf import distribute
from tempscale_tf.attacks import (
    apgd,
    apgd_checkpoints,
    apgd_targeted,
    autoattack,
    autoattack_attacks,
    fab,
    per_attack_accuracy,
    pgd,
    square_attack,
    worst_case,
)
from tempscale_tf.attacks.apgd import _apgd_segments, _build_apgd_init, _build_apgd_segment
from tempscale_tf.attacks.fab import project_onto_hyperplane
from tempscale_tf.attacks.square import _l2_update, square_p_schedule

NUM_CLASSES = 10
TOL = 1e-6


def _size(adv, x, norm):
    delta = (np.asarray(adv) - np.asarray(x)).reshape(len(x), -1)
    return np.abs(delta).max(axis=1) if norm == "linf" else np.sqrt((delta**2).sum(axis=1))


def _assert_in_threat_model(adv, x, eps, norm):
    adv = np.asarray(adv)
    assert adv.shape == np.shape(x) and adv.dtype == np.float32
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert _size(adv, x, norm).max() <= eps * (1 + TOL) + TOL


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def linear():
    """The exact-distance linear model (conftest.exact_linear_model) with its logits scaled like
    a trained network's (weights ~ N(0, 2)): with ~N(0, 0.2) weights the softmax is nearly
    uniform, and maximising the cross-entropy (APGD-CE, like PGD-CE) then fools only half of
    the examples it could. The scale changes no distance."""
    return exact_linear_model(n=100, weight_std=2.0, bias_std=1.0, num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def conv():
    """A small random conv net and 64 random images it classifies as `y`."""
    return small_conv_model(64, NUM_CLASSES)


def _exact(linear, norm):
    """(eps, can be fooled, cannot be fooled) at the median minimal distance."""
    d, x = linear[norm], linear["x"]
    eps = float(np.median(d))
    # The box never binds (L2 included: |delta_i| <= ||delta||_2 <= eps).
    assert x.min() - eps >= 0.0 and x.max() + eps <= 1.0
    return eps, d <= eps, d > eps * (1 + 1e-4)  # float slack at the boundary


def _check_rate(name, fooled, exact, beyond, slack=2):
    assert not (fooled & beyond).any(), f"{name} beat the exact minimal distance"
    assert abs(int(fooled.sum()) - int(exact.sum())) <= slack, (name, fooled.sum(), exact.sum())


# --------------------------------------------------------------------------- APGD


def test_apgd_checkpoints_follow_the_paper():
    def paper(steps):  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
        p = [0.0, 0.22]
        while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
            p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        return [round(q * steps) for q in p[1:]]

    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for steps in (100, 200, 500, 1000):
        assert apgd_checkpoints(steps) == paper(steps), steps
    for steps in (1, 2, 7, 37, 63):  # integer rounding: the reference's segment lengths
        points = apgd_checkpoints(steps)
        lengths = np.diff([0] + points)
        assert points[-1] <= steps and lengths[0] == max(int(0.22 * steps), 1)
        assert np.all(np.diff(lengths) <= 0) and lengths.min() >= max(int(0.06 * steps), 1)
        assert steps - points[-1] < lengths[-1]  # no room for another segment


def _paper_checkpoints(steps):
    """Croce & Hein's w_j = ceil(p_j * steps), in exact fractions: [w_0 = 0, w_1, ...]."""
    p = [Fraction(0), Fraction(22, 100)]
    while True:
        following = p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100))
        if math.ceil(following * steps) > steps:
            return [math.ceil(q * steps) for q in p]
        p.append(following)


def _paper_step_sizes(losses, eps, w, rho=0.75, condition_1=True, condition_2=True, restart=True):
    """Numpy transcription of APGD's step-size rule (Croce & Hein, 2020, Sec. 3.2).

    `losses[k]`: the loss at the k-th iterate x^(k) (x^(0) the start), `[steps + 1, batch]`;
    iteration k moves x^(k) to x^(k+1). Returns (the step size of each iteration
    `[steps, batch]`, per checkpoint j >= 1: (condition 1, condition 2, halved)).
    At the checkpoint w_j (once x^(w_j) is known) the step is halved if
      1. #{i in [w_{j-1}, w_j): f(x^(i+1)) > f(x^(i))} < rho (w_j - w_{j-1}), or
      2. it was not halved at w_{j-1} and f_max(w_{j-1}) == f_max(w_j),
    and a halved example restarts from its best point: x^(w_j) <- x_max, whose loss f_max
    is then the one the next step is compared with. Condition 2 needs a previous checkpoint
    (j >= 2), as in the reference implementation.
    """
    f = losses.astype(np.float64)
    steps, batch = f.shape[0] - 1, f.shape[1]
    eta = np.full(batch, 2.0 * eps)
    f_max, current = f[0].copy(), f[0].copy()
    increases = np.zeros(batch)
    halved_last = f_max_last = None
    per_iteration, checks = np.empty((steps, batch)), []
    for k in range(steps):
        per_iteration[k] = eta
        increases += f[k + 1] > current
        current = f[k + 1]
        f_max = np.maximum(f_max, current)
        if k + 1 in w[1:]:
            j = w.index(k + 1)
            c1 = increases < rho * (w[j] - w[j - 1])
            c2 = np.zeros(batch, bool) if j == 1 else ~halved_last & (f_max == f_max_last)
            halve = (condition_1 & c1) | (condition_2 & c2)
            eta = np.where(halve, eta / 2.0, eta)
            if restart:
                current = np.where(halve, f_max, current)
            halved_last, f_max_last, increases = halve, f_max.copy(), np.zeros(batch)
            checks.append((c1, c2, halve))
    return per_iteration, checks


def _scripted_model(losses):
    """A callable whose i-th call returns, for every example e, logits (0, losses[i, e]).

    For label 0 the untargeted margin loss max_{j != y} z_j - z_y is then exactly
    losses[i, e] (float32), whatever the input; the input enters with weight 0, so the
    gradient exists (and is 0: the iterates stay put, only the losses are scripted).
    """
    table = tf.constant(np.stack([np.zeros_like(losses), losses], axis=-1), tf.float32)
    calls = tf.Variable(0)

    def model(images):
        i = calls.assign_add(1) - 1
        return tf.gather(table, i) + 0.0 * tf.reduce_sum(images, axis=[1, 2, 3])[:, None]

    return model


def test_apgd_step_size_schedule_follows_the_paper():
    """The compiled APGD loop's step sizes for scripted losses, against the paper's rule.

    The losses are random walks with varied up/down statistics, so the checkpoints exercise
    both halving conditions alone, the restart from the best point, and counts exactly at
    rho * segment length (the strict "<"); the checks below verify that the paper's rule
    with either condition off, rho = 0, no restart or shifted checkpoints would differ.
    """
    steps, batch, eps = 100, 48, 0.1
    rng = np.random.default_rng(0)
    up = rng.uniform(0.0, 0.1, (steps, batch))
    down = rng.uniform(0.0, 1.0, (steps, batch)) * rng.choice([0.05, 0.3, 1.0], batch)
    rises = rng.uniform(size=(steps, batch)) < rng.uniform(0.5, 1.0, batch)
    walk = np.cumsum(np.where(rises, up, -down), axis=0) + rng.normal(size=batch)
    losses = np.concatenate([rng.normal(size=(1, batch)), walk]).astype(np.float32)

    w = _paper_checkpoints(steps)
    assert w == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    rho = inspect.signature(apgd).parameters["rho"].default
    assert inspect.signature(apgd_targeted).parameters["rho"].default == rho
    expected, checks = _paper_step_sizes(losses, eps, w)
    c1, c2, halved = (np.array(c) for c in zip(*checks))
    assert (c1 & ~c2).any() and (c2 & ~c1).any() and (~halved).any()
    differs = lambda other: np.any(other[0] != expected)
    assert differs(_paper_step_sizes(losses, eps, w, rho=0.0))
    assert differs(_paper_step_sizes(losses, eps, w, rho=0.75 + 1e-6))  # "<=" instead of "<"
    assert differs(_paper_step_sizes(losses, eps, w, condition_1=False))
    assert differs(_paper_step_sizes(losses, eps, w, condition_2=False))
    assert differs(_paper_step_sizes(losses, eps, w, restart=False))
    assert differs(_paper_step_sizes(losses, eps, [0] + [v + 1 for v in w[1:]]))

    # The library's loop: the compiled start and segments of `apgd`, on the scripted model.
    model = _scripted_model(losses)
    key = ((1, 1, 1), "linf", "margin", False, False, False)
    init, segment = _build_apgd_init(model, *key), _build_apgd_segment(model, *key)
    x, y = tf.fill([batch, 1, 1, 1], 0.5), tf.zeros([batch], tf.int32)
    scalars = [tf.constant(v, tf.float32) for v in (eps, rho, 1.0)] + [tf.constant(1)]
    state = init(x, tf.zeros_like(x), y, y, scalars[0], scalars[2], scalars[3])
    ours, ours_halved = [], []
    for length, first, check in _apgd_segments(steps):
        ours += [state["step"].numpy()] * length
        state = segment(state, *scalars, *(tf.constant(v) for v in (length, first, check)))
        if check:
            ours_halved.append(state["reduced_last"].numpy())
    np.testing.assert_allclose(np.array(ours), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.array(ours_halved), halved)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_on_linear_model_matches_exact_rate(linear, norm):
    model, x, y = linear["model"], linear["x"], linear["y"]
    eps, exact, beyond = _exact(linear, norm)
    kwargs = dict(eps=eps, norm=norm, steps=50, seed=0)
    for loss in ("ce", "dlr"):
        adv = apgd(model, x, y, loss=loss, **kwargs)
        _assert_in_threat_model(adv, x, eps, norm)
        _check_rate(f"apgd-{loss}", predicted_labels(model, adv) != y, exact, beyond)
    adv = apgd_targeted(model, x, y, num_target_classes=9, **kwargs)
    _assert_in_threat_model(adv, x, eps, norm)
    _check_rate("apgd-t", predicted_labels(model, adv) != y, exact, beyond, slack=0)


def test_apgd_early_stop_restarts_and_eot(conv):
    model, x, y = conv["model"], conv["x"], conv["y"]
    kwargs = dict(eps=0.02, steps=20, seed=3)
    full = apgd(model, x, y, early_stop=False, **kwargs).numpy()
    dropped = apgd(model, x, y, **kwargs).numpy()  # fooled examples leave between segments
    fooled = predicted_labels(model, full) != y
    assert 0 < fooled.sum() < len(y)
    np.testing.assert_array_equal(predicted_labels(model, dropped) != y, fooled)
    np.testing.assert_allclose(dropped[~fooled], full[~fooled], atol=1e-6)
    # A restart only adds successes; the first run's points are kept where it succeeded.
    restarted = apgd(model, x, y, n_restarts=3, **kwargs).numpy()
    assert np.all((predicted_labels(model, restarted) != y) >= fooled)
    # EOT on a deterministic model: the averaged gradient has the sign of the gradient.
    eot = apgd(model, x, y, eot_iter=3, **kwargs).numpy()
    np.testing.assert_array_equal(predicted_labels(model, eot) != y, fooled)


# --------------------------------------------------------------------------- FAB


def _bisection_projection(p, w, r, norm):
    """Independent oracle: bisection on the multiplier (float64), one example at a time."""
    w, r = w * (np.sign(r) or 1.0), abs(r)  # w' . delta = |r|  <=>  w . delta = r
    lo, hi = -p, 1.0 - p
    if norm == "linf":
        move = lambda lam: np.clip(np.sign(w) * lam, lo, hi) * (w != 0)
    else:
        move = lambda lam: np.clip(w * lam, lo, hi)
    a, b = 0.0, 1.0
    while w @ move(b) < r and b < 1e12:
        b *= 2
    for _ in range(200):
        a, b = (a, (a + b) / 2) if w @ move((a + b) / 2) >= r else ((a + b) / 2, b)
    return move(b)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_projection_matches_bisection(norm):
    rng = np.random.default_rng(7)
    n, dim = 40, 16
    p = rng.uniform(0.0, 1.0, (n, dim))
    p[:, :3] = rng.choice([0.0, 1.0], (n, 3))  # points on the box faces
    w = rng.normal(size=(n, dim))
    w[:, 3:5] = 0.0  # coordinates that cannot help
    r = rng.normal(0.0, 1.5, n)  # some hyperplanes out of reach of the box
    r[:3] = 0.0
    ours = project_onto_hyperplane(
        tf.constant(p, tf.float32), tf.constant(w, tf.float32), tf.constant(r, tf.float32), norm
    ).numpy()
    oracle = np.stack([_bisection_projection(p[i], w[i], r[i], norm) for i in range(n)])
    np.testing.assert_allclose(ours, oracle, atol=2e-5)
    assert np.all(p + ours >= -1e-6) and np.all(p + ours <= 1 + 1e-6)
    reachable = np.abs((w * oracle).sum(1) - r) < 1e-6
    assert 0 < reachable.sum() < n  # both cases were tested
    np.testing.assert_allclose((w * ours).sum(1)[reachable], r[reachable], atol=1e-4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_on_linear_model_finds_near_minimal_distances(linear, norm):
    model, x, y, d = linear["model"], linear["x"], linear["y"], linear[norm]
    result = fab(model, x, y, norm=norm, steps=20, num_target_classes=9, early_stop=False)
    distance = result.distance.numpy()
    assert np.all(np.isfinite(distance))
    np.testing.assert_allclose(_size(result.adv, x, norm), distance, rtol=1e-5, atol=1e-7)
    assert np.all(predicted_labels(model, result.adv) != y)
    ratio = distance / d
    assert ratio.min() >= 1 - 1e-4  # never below the exact minimum
    assert ratio.max() <= 1.5 and np.median(ratio) <= 1.05
    # Untargeted FAB (closest linearised boundary, via the Jacobian) on a few examples.
    untargeted = fab(model, x[:16], y[:16], norm=norm, steps=20, targeted=False)
    ratio = untargeted.distance.numpy() / d[:16]
    assert ratio.min() >= 1 - 1e-4 and ratio.max() <= 1.5
    # With eps: stops once within eps; success within eps is the exact rate.
    eps, exact, beyond = _exact(linear, norm)
    within = fab(model, x, y, eps=eps, norm=norm, steps=20, seed=0).distance.numpy() <= eps
    _check_rate("fab-t", within, exact, beyond)


# --------------------------------------------------------------------------- Square


def test_square_p_schedule():
    assert square_p_schedule(0, 10000, 0.8) == 0.8
    assert square_p_schedule(10, 10000, 0.8) == 0.8
    assert square_p_schedule(11, 10000, 0.8) == 0.4
    assert square_p_schedule(8001, 10000, 0.8) == pytest.approx(0.8 / 512)
    assert square_p_schedule(1, 1000, 0.8) == 0.8  # thresholds scaled by 1000 / 10000
    assert square_p_schedule(2, 1000, 0.8) == 0.4
    assert square_p_schedule(6, 1000, 0.8) == 0.2
    assert square_p_schedule(6, 1000, 0.8, rescale=False) == 0.8
    for it in (0, 5, 11, 60, 4500):
        tensor = square_p_schedule(
            tf.constant(it), tf.constant(1000), tf.constant(0.8), tf.constant(True)
        )
        assert float(tensor) == pytest.approx(square_p_schedule(it, 1000, 0.8))


def _paper_square_l2_update(x, x_hat, corners, side, eta_rho, eps):
    """Numpy transcription of Square Attack's L2 proposal (Andriushchenko et al., 2020, Alg. 3).

    x, x_hat: the clean image and the current iterate `[n, h, w, c]`; corners: `[n, 4]`, the
    top-left pixels (r1, s1, r2, s2) of the windows W1 and W2 of side `side`; eta_rho:
    `[n, side, side, c]`, rho[i] * eta* for each channel i. For each channel i on its own:
    nu_temp = rho[i] eta* + nu_{W1,i} / ||nu_{W1,i}||,
    eps_avail^i = sqrt(||nu_{W1 u W2, i}||^2 + eps_unused^2 / c) with
    eps_unused^2 = eps^2 - ||nu||^2, then nu_{W2,i} <- 0 and
    nu_{W1,i} <- nu_temp / ||nu_temp|| * eps_avail^i. Returns x + nu clipped to [0, 1]
    (the attack's projection; the new nu has norm eps).
    """
    x = x.astype(np.float64)
    nu = x_hat.astype(np.float64) - x
    channels = x.shape[-1]
    new = nu.copy()
    for e in range(len(x)):
        r1, s1, r2, s2 = corners[e]
        w1 = (slice(r1, r1 + side), slice(s1, s1 + side))
        w2 = (slice(r2, r2 + side), slice(s2, s2 + side))
        union = np.zeros(x.shape[1:3], bool)
        union[w1] = union[w2] = True
        unused = max(eps**2 - np.sum(nu[e] ** 2), 0.0)  # >= 0 but for float32 rounding
        for i in range(channels):
            old = nu[e][w1][..., i]
            size = np.sqrt(np.sum(old**2))
            temp = eta_rho[e, ..., i] + (old / size if size > 0 else 0.0)
            available = np.sqrt(np.sum(nu[e][..., i][union] ** 2) + unused / channels)
            new[e][w2 + (i,)] = 0.0
            new[e][w1 + (i,)] = temp / np.sqrt(np.sum(temp**2)) * available
    np.testing.assert_allclose(np.sqrt((new**2).sum(axis=(1, 2, 3))), eps, rtol=1e-6)
    return np.clip(x + new, 0.0, 1.0)


@pytest.mark.parametrize("channels", [3, 1])
def test_square_l2_update_matches_the_paper(channels):
    """Square's L2 proposal, given its random draws, against the paper's per-channel rule.

    The window norm ||nu_{W1 u W2, i}|| is per channel: a norm over all channels puts about
    sqrt(c) times the intended energy into W1 for RGB images (grayscale is the same).
    """
    rng = np.random.default_rng(0)
    n, height, width, side, eps = 6, 9, 11, 5, 1.0
    x = rng.uniform(0.2, 0.8, (n, height, width, channels))
    x[5] = rng.uniform(0.0, 0.03, (height, width, channels))  # the final clip binds
    nu = rng.normal(size=x.shape)
    corners = rng.integers(0, [height - side + 1, width - side + 1] * 2, (n, 4))
    corners[0, 2:] = corners[0, :2]  # W2 = W1
    corners[1, 2:] = corners[1, :2] + 1  # overlapping windows
    r1, s1 = corners[2, :2]
    nu[2, r1 : r1 + side, s1 : s1 + side, 0] = 0.0  # nothing in W1 on one channel
    nu *= eps / np.sqrt((nu**2).sum(axis=(1, 2, 3), keepdims=True))
    nu[3] *= 0.5  # an unused budget
    x = x.astype(np.float32)
    x_hat = np.clip(x + nu, 0.0, 1.0).astype(np.float32)
    pattern = rng.normal(size=(n, side, side, 1))
    pattern /= np.sqrt((pattern**2).sum(axis=(1, 2, 3), keepdims=True))
    eta_rho = pattern * rng.choice([-1.0, 1.0], (n, 1, 1, channels))
    direction = np.zeros(x.shape, np.float32)
    for e, (r, c) in enumerate(corners[:, :2]):
        direction[e, r : r + side, c : c + side] = eta_rho[e]

    expected = _paper_square_l2_update(x, x_hat, corners, side, eta_rho, eps)
    ours = _l2_update(
        tf.constant(x),
        tf.constant(x_hat),
        [tf.constant(corners[:, k], tf.int32) for k in range(4)],
        tf.constant(side),
        tf.constant(direction),
        tf.constant(eps, tf.float32),
    ).numpy()
    np.testing.assert_allclose(ours, expected, atol=2e-6)
    assert np.any(expected[5] == 0.0)  # the clip was active


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_on_linear_model(linear, norm):
    model, x, y = linear["model"], linear["x"], linear["y"]
    eps, exact, beyond = _exact(linear, norm)
    adv = square_attack(model, x, y, eps, norm=norm, queries=1000, seed=0)
    _assert_in_threat_model(adv, x, eps, norm)
    fooled = predicted_labels(model, adv) != y
    if norm == "linf":
        # The minimiser is a vertex of the ball, which Square's +-eps windows search.
        _check_rate("square", fooled, exact, beyond)
    else:
        # L2: the minimal perturbation is the dense random direction w_y - w_j, which a
        # random search over square patterns approaches slowly (1000 queries: ~1/3 of the
        # exact successes; the paper's L2 attack targets natural-image models).
        assert not (fooled & beyond).any()
        assert fooled.sum() >= 0.2 * exact.sum()


def test_square_is_per_example_and_deterministic(conv):
    model, x, y = conv["model"], conv["x"], conv["y"]
    kwargs = dict(eps=0.02, queries=200, seed=5)
    a = square_attack(model, x, y, **kwargs).numpy()
    np.testing.assert_array_equal(a, square_attack(model, x, y, **kwargs).numpy())
    assert not np.array_equal(a, square_attack(model, x, y, eps=0.02, queries=200, seed=6))
    # Each example's random numbers depend on its position only: a prefix gives the same.
    np.testing.assert_array_equal(a[:20], square_attack(model, x[:20], y[:20], **kwargs).numpy())
    assert 0 < np.sum(predicted_labels(model, a) != y) < len(y)


# --------------------------------------------------------------------------- masking


def test_gradient_masking_does_not_stop_apgd_dlr_targeted_and_square(conv):
    model, x, y = conv["model"], conv["x"], conv["y"]
    masked = lambda images: 1e4 * model(images)  # softmax saturates: CE gradients underflow
    eps = 0.02

    def fooled(adv):
        return int(np.sum(predicted_labels(model, adv) != y))

    pgd_ce = fooled(pgd(masked, x, y, eps=eps, step_size=eps / 4, steps=20, random_start=False))
    unmasked_dlr = fooled(apgd(model, x, y, eps, loss="dlr", steps=30, seed=0))
    assert unmasked_dlr >= 0.4 * len(y)
    assert pgd_ce <= 0.2 * unmasked_dlr  # PGD-CE at T = 1 is fooled by the masking
    for name, adv in (
        ("apgd-dlr", apgd(masked, x, y, eps, loss="dlr", steps=30, seed=0)),
        ("apgd-t", apgd_targeted(masked, x, y, eps, steps=30, num_target_classes=3, seed=0)),
        ("square", square_attack(masked, x, y, eps, queries=500, seed=0)),
    ):
        assert fooled(adv) >= max(0.85 * unmasked_dlr, 3 * pgd_ce), name
    distance = fab(masked, x, y, eps, steps=30, num_target_classes=3, seed=0).distance
    assert int(np.sum(distance.numpy() <= eps)) >= 0.85 * unmasked_dlr


def test_xla_gives_the_same_attacks(linear):
    # XLA pads the shrinking sub-batches to powers of two; Square's random numbers are an
    # integer hash, identical under XLA (TensorFlow's stateless generators are not).
    model, x, y = linear["model"], linear["x"][:40], linear["y"][:40]
    eps = float(np.median(linear["linf"]))
    for attack in (
        functools.partial(apgd, model, x, y, eps, steps=10, seed=0),
        functools.partial(square_attack, model, x, y, eps, queries=100, seed=0),
        lambda jit_compile: fab(
            model, x, y, eps, steps=10, num_target_classes=2, jit_compile=jit_compile
        ).adv,
    ):
        np.testing.assert_allclose(attack(jit_compile=True), attack(jit_compile=False), atol=1e-6)


# --------------------------------------------------------------------------- AutoAttack


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.2)])
def test_autoattack_threat_model_and_bookkeeping(conv, norm, eps):
    model = conv["model"]
    x = conv["x"][:24].copy()
    x[:, :2] = 0.0  # pixels on the box faces, where clipping is active
    x[:, -2:] = 1.0
    y = predicted_labels(model, x)
    y[:4] = (y[:4] + 1) % NUM_CLASSES  # misclassified: never attacked
    kwargs = dict(norm=norm, steps=10, queries=100, num_target_classes=3, progress=False)
    result = autoattack(model, x, y, eps, **kwargs)
    _assert_in_threat_model(result.adv, x, eps, norm)
    robust, correct = result.robust.numpy(), result.clean_correct.numpy()
    np.testing.assert_array_equal(correct, predicted_labels(model, x) == y)
    assert result.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    accuracies = list(result.per_attack.values())
    assert result.clean_accuracy == pytest.approx(correct.mean())
    assert np.all(np.diff([result.clean_accuracy] + accuracies) <= 0)
    assert accuracies[-1] == result.robust_accuracy == pytest.approx(robust.mean())
    assert 0 < result.robust_accuracy < result.clean_accuracy
    prediction = predicted_labels(model, result.adv)
    assert np.all(prediction[robust] == y[robust]) and np.all(prediction[~robust] != y[~robust])
    np.testing.assert_array_equal(result.adv.numpy()[~correct], x[~correct])
    assert set(result.seconds) == set(result.attacks)
    # The same attacks through worst_case (the evaluation pipeline's route), and the same
    # seed again: the same result.
    attacks = autoattack_attacks(eps, norm, steps=10, queries=100, num_target_classes=3)
    through_worst_case = worst_case(model, x, y, attacks, eps=eps, norm=norm)
    np.testing.assert_array_equal(through_worst_case.robust.numpy(), robust)
    again = autoattack(model, x, y, eps, **kwargs)
    np.testing.assert_array_equal(again.adv.numpy(), result.adv.numpy())
    # per_attack from the bookkeeping arrays alone (what a resumed evaluation recomputes).
    fooled = result.fooled_by.numpy()
    for k, name in enumerate(result.attacks):
        expected = np.mean(correct & ((fooled == -1) | (fooled > k)))
        assert result.per_attack[name] == pytest.approx(expected)
    assert per_attack_accuracy(correct, fooled, result.attacks) == result.per_attack


def test_per_attack_accuracy_checks_its_arrays():
    assert per_attack_accuracy([True, True, False], [-1, 1, -1], ("a", "b")) == {
        "a": 2 / 3,
        "b": 1 / 3,
    }
    with pytest.raises(ValueError, match="1-D of one length"):
        per_attack_accuracy([True, False], [-1], ("a",))
    with pytest.raises(ValueError, match=r"lie in \[-1, 0\]"):
        per_attack_accuracy([True], [1], ("a",))


def test_autoattack_batches_strategy_and_versions(conv):
    model, x, y = conv["model"], conv["x"][:40], conv["y"][:40]
    kwargs = dict(steps=10, queries=100, num_target_classes=3, progress=False)
    whole = autoattack(model, x, y, 0.02, **kwargs)
    batched = autoattack(model, x, y, 0.02, batch_size=16, **kwargs)
    # Random draws are per position in the attacked sub-batch, so batching may change a
    # borderline example or two.
    assert np.sum(whole.robust.numpy() != batched.robust.numpy()) <= 2
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    if len(devices) == 2:
        strategy = distribute.mirrored(devices)
        mirrored = autoattack(model, x, y, 0.02, strategy=strategy, **kwargs)
        assert np.sum(whole.robust.numpy() != mirrored.robust.numpy()) <= 2
    # "rand": APGD-CE and APGD-DLR with EOT, here on a model with random input noise.
    noise = keras.layers.GaussianNoise(0.01)
    randomised = lambda images: model(noise(images, training=True))
    rand = autoattack(randomised, x, y, 0.02, version="rand", eot_iter=4, **kwargs)
    assert rand.attacks == ("apgd-ce", "apgd-dlr")
    assert rand.robust_accuracy <= rand.clean_accuracy
    custom = autoattack(model, x, y, 0.02, version=["apgd-dlr", "fab"], **kwargs)
    assert custom.attacks == ("apgd-dlr", "fab")


def test_autoattack_matches_art(conv):
    art = pytest.importorskip(
        "art", reason="IBM ART (adversarial-robustness-toolbox) is not installed"
    )
    pytest.importorskip("multiprocess", reason="ART's AutoAttack imports `multiprocess`")
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack
    from art.estimators.classification import TensorFlowV2Classifier

    model, x, y = conv["model"], conv["x"], conv["y"]
    eps, steps, queries = 0.02, 50, 300
    classifier = TensorFlowV2Classifier(
        model=model,
        nb_classes=NUM_CLASSES,
        input_shape=x.shape[1:],
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )
    apgd_art = functools.partial(
        AutoProjectedGradientDescent,
        classifier,
        norm=np.inf,
        eps=eps,
        eps_step=2 * eps,  # APGD's initial step size
        max_iter=steps,
        nb_random_init=1,
        batch_size=len(y),
        verbose=False,
    )
    attacks = [
        apgd_art(loss_type="cross_entropy"),
        apgd_art(loss_type="difference_logits_ratio"),
        SquareAttack(
            classifier,
            norm=np.inf,
            eps=eps,
            max_iter=queries,
            p_init=0.8,
            nb_restarts=1,
            verbose=False,
        ),
    ]
    theirs = AutoAttack(classifier, norm=np.inf, eps=eps, eps_step=2 * eps, attacks=attacks)
    adv = theirs.generate(x.copy(), y=np.eye(NUM_CLASSES)[y])
    assert _size(adv, x, "linf").max() <= eps * (1 + 1e-4)
    robust_theirs = int(np.sum(predicted_labels(model, adv) == y))
    ours = autoattack(
        model,
        x,
        y,
        eps,
        version=["apgd-ce", "apgd-dlr", "square"],
        steps=steps,
        queries=queries,
        progress=False,
    )
    robust_ours = int(ours.robust.numpy().sum())
    assert 0.2 * len(y) < robust_ours < 0.8 * len(y), art.__version__  # informative point
    assert abs(robust_ours - robust_theirs) <= 2


# --------------------------------------------------------------------------- bad inputs


def _zeros_model(images):
    return tf.zeros([tf.shape(images)[0], NUM_CLASSES]) + tf.reduce_sum(images) * 0.0


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda m, x, y: apgd(m, x, y, eps=-0.1), "eps"),
        (lambda m, x, y: apgd(m, x, y, eps=float("nan")), "eps"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, norm="l1"), "'linf', 'l2'"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, loss="hinge"), "'ce', 'margin', 'dlr'"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, steps=0), "steps"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, n_restarts=0), "n_restarts"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, rho=1.5), "rho"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, eot_iter=0), "eot_iter"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, temperature=0.0), "temperature"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, seed="a"), "seed"),
        (lambda m, x, y: apgd(m, x, y, eps=0.1, targeted=True), "target"),
        (lambda m, x, y: apgd(m, x, y[:3], eps=0.1), "batch size"),
        (lambda m, x, y: apgd(m, x * 3, y, eps=0.1), r"\[0, 1\]"),
        (lambda m, x, y: apgd_targeted(m, x, y, eps=0.1, num_target_classes=10), "classes"),
        (lambda m, x, y: fab(m, x, y, eps=0.1, eta=0.5), "eta"),
        (lambda m, x, y: fab(m, x, y, eps=0.1, alpha_max=2.0), "alpha_max"),
        (lambda m, x, y: fab(m, x, y, eps=0.1, norm="l0"), "norm"),
        (lambda m, x, y: square_attack(m, x, y, eps=0.1, p_init=0.0), "p_init"),
        (lambda m, x, y: square_attack(m, x, y, eps=0.1, queries=0), "queries"),
        (lambda m, x, y: square_attack(m, x, y, eps=0.1, loss="dlr"), "'margin', 'ce'"),
        (lambda m, x, y: square_attack(m, x.reshape(4, -1), y, eps=0.1), r"\[batch, h, w, c\]"),
        (lambda m, x, y: autoattack(m, x, y, 0.1, version="fast"), "'standard', 'plus'"),
        (lambda m, x, y: autoattack(m, x, y, 0.1, version=["apgd", "fab"]), "names"),
        (lambda m, x, y: autoattack(m, x, y, 0.1, version=[]), "non-empty"),
        (lambda m, x, y: autoattack(m, x, y, 0.1, batch_size=0), "batch_size"),
        (lambda m, x, y: autoattack_attacks(-1.0), "eps"),
    ],
)
def test_bad_arguments_raise(call, message):
    x, y = np.full((4, 2, 2, 1), 0.5, "float32"), np.zeros(4, int)
    with pytest.raises(ValueError, match=message):
        call(_zeros_model, x, y)


def test_constant_model_has_no_gradient():
    model = lambda images: tf.zeros([tf.shape(images)[0], NUM_CLASSES])
    x, y = np.full((4, 2, 2, 1), 0.5, "float32"), np.zeros(4, int)  # "correct": attacked
    with pytest.raises(ValueError, match="no gradient"):
        apgd(model, x, y, eps=0.1)
