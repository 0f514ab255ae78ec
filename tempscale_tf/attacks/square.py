"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, 2020): score-based random search.

Square Attack needs only the model's logits, never a gradient, so gradient masking does not
stop it. Each query changes the current perturbation on a random square window (one per
example) and keeps the change only if the loss improves. The window side follows a schedule
that shrinks it as the attack proceeds. L-inf: the window is set to +-eps per channel (a
vertex of the ball); the start is vertical stripes of +-eps. L2: mass is moved from a second
window into the first one with the "centred square" pattern of the paper, channel by channel
(Algorithm 3), and the whole perturbation is kept at norm eps.

Images must be `[batch, height, width, channels]` (channels last, as Keras).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tempscale_tf.attacks.common import (
    batch_spec,
    check_attack_settings,
    check_choice,
    check_finite_number,
    check_images_and_labels,
    check_seed,
    compile_loop,
    compiled_for,
    logit_margin,
    lp_norm,
    model_logits,
    model_reference,
    per_example,
    predictions,
    run_in_segments,
    scalar_spec,
)
from tempscale_tf.losses import temperature_cross_entropy
from tempscale_tf.validation import check_positive_int

__all__ = ["square_attack", "square_p_schedule"]

SQUARE_LOSSES = ("margin", "ce")
# The reference's schedule: p is halved after each of these iterations (of 10,000 queries).
P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_FIRST_SEGMENT, _MAX_SEGMENT = 20, 400  # query segments between drops of fooled examples
_L2_GRID = 5  # the L2 start: a 5 x 5 grid of centred squares
_INIT_STREAM = -1  # random stream of the start (the queries use streams 0, 1, ...)


def square_p_schedule(iteration, queries, p_init, rescale=True):
    """The fraction `p` of pixels a window covers at `iteration` (0-based).

    `p_init` is halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000;
    with `rescale` these thresholds are for 10,000 queries and scale with `queries`. Takes
    Python numbers (returns a float) or, inside the compiled loop, scalar tensors.

    Args:
      iteration: the 0-based query index.
      queries: the query budget.
      p_init: the initial fraction (AutoAttack: 0.8).
      rescale: scale the thresholds from 10,000 queries to `queries`.
    """
    if isinstance(iteration, tf.Tensor):
        iteration = tf.where(rescale, iteration * 10000 // queries, iteration)
        halvings = tf.add_n([tf.cast(iteration > t, tf.float32) for t in P_THRESHOLDS])
        return p_init * tf.pow(0.5, halvings)
    if rescale:
        iteration = iteration * 10000 // queries
    return p_init * 0.5 ** sum(iteration > t for t in P_THRESHOLDS)


def _window_side(p, height, width, minimum):
    """`round(sqrt(p * h * w))`, at least `minimum`, at most min(h, w): int32 scalar."""
    side = tf.cast(tf.round(tf.sqrt(p * float(height * width))), tf.int32)
    return tf.minimum(tf.maximum(side, minimum), min(height, width))


def _window_mask(top, left, side, height, width):
    """bool `[batch, h, w, 1]`: the side x side window at (`top`, `left`) of each example."""
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = tf.logical_and(rows >= top[:, None], rows < top[:, None] + side)
    in_cols = tf.logical_and(cols >= left[:, None], cols < left[:, None] + side)
    return tf.logical_and(in_rows[:, :, None], in_cols[:, None, :])[..., None]


def _random_corner(u, side, size):
    """Uniform window offsets in [0, size - side] from uniform noise `u` in [0, 1)."""
    span = size - side + 1
    return tf.minimum(tf.cast(u * tf.cast(span, tf.float32), tf.int32), span - 1)


def _centred_rectangle(rows, cols, n_rows, n_cols, inv_square_sums):
    """The paper's rectangle pattern: sum_{k >= m} 1 / (k + 1)^2 at Chebyshev distance m.

    Equals the reference's nested rectangles around (n_rows // 2, n_cols // 2) with weight
    1 / (k + 1)^2 on the k-th one, before normalisation.
    """
    m = tf.maximum(tf.abs(rows - n_rows // 2), tf.abs(cols - n_cols // 2))
    k = tf.maximum(n_rows // 2, n_cols // 2) + 1
    return tf.gather(inv_square_sums, k) - tf.gather(inv_square_sums, m)


def _square_pattern(side, size):
    """The L2 update of Square Attack: `[size, size]`, the pattern in the top-left side x side.

    A positive centred rectangle on the upper half of the square and a negative one on the
    lower half, each normalised, then normalised together (L2 norm 1); zero outside. The
    fixed `size` keeps the shapes static (XLA) while `side` changes with the schedule.
    """
    inv_square_sums = tf.concat(
        [[0.0], tf.cumsum(1.0 / tf.square(tf.range(1, size + 2, dtype=tf.float32)))], 0
    )
    rows = tf.range(size)[:, None]
    cols = tf.range(size)[None, :]
    inside = tf.logical_and(rows < side, cols < side)
    upper = side // 2
    is_top = tf.logical_and(inside, rows < upper)
    is_bottom = tf.logical_and(inside, rows >= upper)
    top = _centred_rectangle(rows, cols, upper, side, inv_square_sums)
    bottom = _centred_rectangle(rows - upper, cols, side - upper, side, inv_square_sums)
    unit = lambda v, mask: tf.math.divide_no_nan(
        tf.where(mask, v, 0.0), tf.sqrt(tf.reduce_sum(tf.where(mask, tf.square(v), 0.0)))
    )
    pattern = unit(top, is_top) - unit(bottom, is_bottom)
    return pattern / tf.sqrt(tf.reduce_sum(tf.square(pattern)))


def _place(pattern, top, left, transpose, side, height, width):
    """`pattern` (or its transpose, per example) at each window: float32 `[batch, h, w, 1]`."""
    patterns = tf.stack([pattern, tf.transpose(pattern)])
    rows = tf.clip_by_value(tf.range(height)[None, :] - top[:, None], 0, side - 1)
    cols = tf.clip_by_value(tf.range(width)[None, :] - left[:, None], 0, side - 1)
    shape = tf.stack([tf.shape(top)[0], height, width])
    index = tf.stack(
        [
            tf.broadcast_to(tf.cast(transpose, tf.int32)[:, None, None], shape),
            tf.broadcast_to(rows[:, :, None], shape),
            tf.broadcast_to(cols[:, None, :], shape),
        ],
        axis=-1,
    )
    mask = _window_mask(top, left, side, height, width)
    return tf.where(mask, tf.gather_nd(patterns, index)[..., None], 0.0)


def _l2_start(seed, index, item_shape):
    """The L2 start: a grid of centred squares (`_square_pattern`), unnormalised.

    As in the reference: squares of side `h // 5` tiled from offset `(h - 5 side) // 2` in
    both directions (`h // side` by `w // side` of them, cut at the border), each with a
    random sign per channel; here also a random orientation per square and example.
    Returns float32 `[batch, h, w, c]`.
    """
    height, width, channels = item_shape
    side = max(height // _L2_GRID, 1)
    first = (height - side * _L2_GRID) // 2
    blocks = (height // side, width // side)
    count = blocks[0] * blocks[1]
    u = _uniform(seed, _INIT_STREAM, index, count * (1 + channels))
    flips = tf.reshape(u[:, :count] < 0.5, [-1, *blocks])
    signs = tf.reshape(_sign(u[:, count:]), [-1, *blocks, channels])

    def grid(size, count):  # block index, offset inside the block, inside the grid
        position = tf.range(size) - first
        block = position // side
        inside = tf.logical_and(position >= 0, block < count)
        return tf.clip_by_value(block, 0, count - 1), position % side, inside

    block_r, offset_r, inside_r = grid(height, blocks[0])
    block_c, offset_c, inside_c = grid(width, blocks[1])
    per_pixel = lambda v: tf.gather(tf.gather(v, block_r, axis=1), block_c, axis=2)
    flip = tf.cast(per_pixel(flips), tf.int32)  # [batch, h, w]
    shape = tf.shape(flip)
    index_nd = tf.stack(
        [
            flip,
            tf.broadcast_to(offset_r[None, :, None], shape),
            tf.broadcast_to(offset_c[None, None, :], shape),
        ],
        axis=-1,
    )
    pattern = _square_pattern(tf.constant(side), side)
    values = tf.gather_nd(tf.stack([pattern, tf.transpose(pattern)]), index_nd)
    inside = tf.logical_and(inside_r[:, None], inside_c[None, :])[None, :, :, None]
    return tf.where(inside, values[..., None] * per_pixel(signs), 0.0)


def _l2_update(x, x_best, corners, side, direction, eps):
    """One L2 proposal of Square Attack (the paper's Algorithm 3), given its random draws.

    With `nu = x_best - x`, windows W1 (at `corners[0:2]`) and W2 (at `corners[2:4]`) of side
    `side`, and `eps_unused^2 = max(eps^2 - ||nu||^2, 0)`, each channel i is updated on its
    own: nu on W2 is set to 0, and nu on W1 becomes
    `t / ||t|| * sqrt(||nu_{W1 u W2, i}||^2 + eps_unused^2 / c)` where
    `t = direction_{W1, i} + nu_{W1, i} / ||nu_{W1, i}||`. All the norms are per channel, as
    in the paper; the window norm too, which the reference code (fra31/auto-attack) takes over
    all channels: that puts about sqrt(c) times the intended energy into W1 and leans on the
    final rescaling. Per channel, the new perturbation has norm eps already (the energy of
    W1 u W2 plus the unused budget); it is still rescaled to eps against float drift, as in
    the reference, and `x + nu` is clipped to [0, 1].

    Args:
      x, x_best: the clean images and the current best points, `[batch, h, w, c]`.
      corners: (top, left, top2, left2), int32 `[batch]` each: the windows' top-left pixels.
      side: the windows' side, int32 scalar.
      direction: `[batch, h, w, c]`, zero outside W1: the centred-square pattern (unit L2
        norm) times a random sign per channel.
      eps: the L2 radius.

    Returns:
      float32 `[batch, h, w, c]`, the proposal.
    """
    height, width = x.shape[1], x.shape[2]
    channels = x.shape[3]
    top, left, top2, left2 = corners
    window = _window_mask(top, left, side, height, width)
    window2 = _window_mask(top2, left2, side, height, width)
    delta = x_best - x
    in_window = lambda v, mask: tf.where(mask, v, 0.0)
    channel_norm = lambda v: tf.sqrt(tf.reduce_sum(tf.square(v), axis=[1, 2], keepdims=True))
    norm_image = per_example(lp_norm(delta, "l2"), 4)
    norm_windows = channel_norm(in_window(delta, tf.logical_or(window, window2)))
    old = in_window(delta, window)
    new = direction + old / (1e-12 + channel_norm(old))
    budget = tf.maximum(eps**2 - tf.square(norm_image), 0.0) / channels
    new = new / (1e-12 + channel_norm(new)) * tf.sqrt(budget + tf.square(norm_windows))
    delta = tf.where(window, new, tf.where(window2, 0.0, delta))
    delta = eps * delta / (1e-12 + per_example(lp_norm(delta, "l2"), 4))
    return tf.clip_by_value(x + delta, 0.0, 1.0)


def _mix(h):
    """The "lowbias32" integer hash (C. Wellons): a bijection of uint32 with good avalanche."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16)) * tf.constant(
        0x7FEB352D, tf.uint32
    )
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 15)) * tf.constant(
        0x846CA68B, tf.uint32
    )
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))


def _uniform(seed, stream, index, count):
    """Uniform [0, 1) noise `[batch, count]`: a counter-based hash of (seed, stream, index, k).

    Example `index` (its position in the caller's batch) gets the same numbers whichever other
    examples are still attacked, and integer hashing gives the same numbers with and without
    XLA (TensorFlow's stateless generators differ between the two).
    """
    u32 = lambda v: tf.cast(v, tf.uint32)
    key = _mix(tf.bitwise.bitwise_xor(_mix(u32(seed)), u32(stream)))
    key = _mix(tf.bitwise.bitwise_xor(key, u32(index)))[:, None]
    bits = _mix(tf.bitwise.bitwise_xor(key, u32(tf.range(count))[None, :]))
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))


def _sign(u):
    return tf.where(u < 0.5, -1.0, 1.0)


def _objective(logits, y, loss):
    """(margin `z_y - max_{j != y} z_j`, loss to minimise) per example."""
    margin = logit_margin(logits, y)
    if loss == "margin":
        return margin, margin
    return margin, -temperature_cross_entropy(y, logits, temperature=1.0)


def _build_square(model, item_shape, norm, loss, jit_compile):
    """Compiled (init, segment) of Square Attack for one model, image shape and settings.

    Long on purpose: `init`, the two proposals and `segment` are the pieces of one compiled
    loop and share the model, the loss and the image shape through this closure; the window
    geometry and the L2 update live in their own functions above.
    """
    get_model = model_reference(model)
    height, width, channels = item_shape

    def evaluate(images, y):
        logits = model_logits(get_model(), images)
        fooled = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
        return _objective(logits, y, loss) + (fooled,)

    def init(x, y, index, eps, seed):
        if norm == "linf":  # vertical stripes: one sign per column and channel
            stripes = _uniform(seed, _INIT_STREAM, index, width * channels)
            delta = eps * tf.reshape(_sign(stripes), [-1, 1, width, channels])
        else:
            delta = _l2_start(seed, index, item_shape)
            delta = eps * tf.math.divide_no_nan(delta, per_example(lp_norm(delta, norm), 4))
        x_best = tf.clip_by_value(x + delta, 0.0, 1.0)
        margin, objective, fooled = evaluate(x_best, y)
        return dict(x=x, y=y, index=index, x_best=x_best, loss=objective, fooled=fooled)

    # The per-query element-wise work runs on images flattened to [batch, h * w * c]: on CPU,
    # TensorFlow's 4-D broadcasting select / multiply measured 4-7x slower than the same op on
    # 2-D [batch, n] operands, and this loop is otherwise bound by them for small models.
    size = height * width * channels
    flat = lambda v: tf.reshape(v, [-1, size])
    pixel_index = np.arange(size, dtype=np.int32)[None, :]

    def linf_proposal(s, u, signs, side, eps):
        pixel_row = tf.constant(pixel_index // (width * channels))
        pixel_col = tf.constant((pixel_index // channels) % width)
        top = _random_corner(u[:, 0], side, height)[:, None]
        left = _random_corner(u[:, 1], side, width)[:, None]
        in_rows = tf.logical_and(pixel_row >= top, pixel_row < top + side)
        in_cols = tf.logical_and(pixel_col >= left, pixel_col < left + side)
        # The window moves to a vertex of the eps-ball: clip(x_best + 2 eps s, x - eps, x + eps)
        # is x + eps s for any x_best inside the ball, so it is computed from x directly.
        sign_per_value = tf.tile(tf.reshape(signs, [-1, channels]), [1, height * width])
        vertex = tf.clip_by_value(flat(s["x"]) + eps * sign_per_value, 0.0, 1.0)
        new = tf.where(tf.logical_and(in_rows, in_cols), vertex, flat(s["x_best"]))
        return tf.reshape(new, tf.shape(s["x"]))

    def l2_proposal(s, u, signs, side, eps):
        corners = [_random_corner(u[:, k], side, n) for k, n in enumerate(item_shape[:2] * 2)]
        pattern = _place(
            _square_pattern(side, min(height, width)),
            corners[0],
            corners[1],
            u[:, 4] < 0.5,
            side,
            height,
            width,
        )
        return _l2_update(s["x"], s["x_best"], corners, side, pattern * signs, eps)

    proposal = linf_proposal if norm == "linf" else l2_proposal
    minimum_side = 1 if norm == "linf" else 3

    def segment(state, eps, seed, first, length, p_init, queries, rescale):
        def body(i, s):
            iteration = first + i
            p = square_p_schedule(iteration, queries, p_init, rescale)
            side = _window_side(p, height, width, minimum_side)
            if norm == "l2":  # odd sides, so that the pattern has a centre
                side = tf.minimum(side + 1 - side % 2, min(height, width))
            u = _uniform(seed, iteration, s["index"], 5 + channels)
            u, signs = u[:, :5], _sign(u[:, 5:])[:, None, None, :]
            x_new = proposal(s, u, signs, side, eps)
            _, objective, fooled = evaluate(x_new, s["y"])
            running = tf.logical_not(s["fooled"])
            accept = tf.logical_and(running, tf.logical_or(objective < s["loss"], fooled))
            s = dict(s)
            s["x_best"] = tf.reshape(
                tf.where(accept[:, None], flat(x_new), flat(s["x_best"])), tf.shape(x_new)
            )
            s["loss"] = tf.where(accept, objective, s["loss"])
            s["fooled"] = tf.logical_or(s["fooled"], tf.logical_and(running, fooled))
            return i + 1, s

        _, state = tf.while_loop(lambda i, _: i < length, body, (tf.constant(0), dict(state)))
        return state

    image, labels = batch_spec(item_shape), batch_spec([], tf.int32)
    ints = [scalar_spec(tf.int32)]
    init_signature = [image, labels, labels, scalar_spec()] + ints
    state = dict(
        x=image,
        y=labels,
        index=labels,
        x_best=image,
        loss=batch_spec([]),
        fooled=batch_spec([], tf.bool),
    )
    segment_signature = [state, scalar_spec()] + ints * 3
    segment_signature += [scalar_spec(), scalar_spec(tf.int32), scalar_spec(tf.bool)]
    return (
        compile_loop(init, init_signature, jit_compile),
        compile_loop(segment, segment_signature, jit_compile),
    )


def _segments(queries):
    """Query segments of doubling length (20, 40, ... capped at 400), covering `queries`."""
    segments, first, length = [], 0, _FIRST_SEGMENT
    while first < queries:
        n = min(length, queries - first)
        segments.append((first, n))
        first += n
        length = min(2 * length, _MAX_SEGMENT)
    return segments


def square_attack(
    model,
    x,
    y,
    eps,
    norm="linf",
    queries=5000,
    p_init=0.8,
    seed=None,
    loss="margin",
    *,
    rescale_schedule=True,
    jit_compile=None,
):
    """Square Attack (untargeted), batched over examples, in the L-inf or L2 ball.

    The attack starts from vertical stripes of +-eps (L-inf) or a 5 x 5 grid of centred
    squares with random signs scaled to norm eps (L2), then makes `queries` proposals. Each
    proposal changes one random square window per example, with side
    `round(sqrt(p * height * width))` (L2: odd, >= 3) where `p = square_p_schedule(...)`:
    L-inf sets the window to `x +- eps` with a random sign per channel; L2 moves the
    perturbation of a second random window into the first, adds the centred-square pattern
    with random per-channel signs, and rescales the whole perturbation to norm eps. A
    proposal is kept only if it lowers the loss (or misclassifies the example), and an
    example stops as soon as it is misclassified: between segments of queries the fooled
    examples are dropped from the batch.

    Args:
      model: a Keras model or callable, images `[batch, h, w, c]` in [0, 1] -> logits.
      x: images `[batch, h, w, c]` in [0, 1].
      y: true labels, int `[batch]`.
      eps: radius of the threat model, finite, >= 0.
      norm: "linf" or "l2".
      queries: the number of proposals (model queries after the start), a positive int.
      p_init: the initial fraction of pixels a window covers, in (0, 1].
      seed: int seed (None: drawn from NumPy's global generator). Example i's random numbers
        depend only on the seed, the query and i.
      loss: "margin" (the logit margin `z_y - max_{j != y} z_j`, minimised) or "ce" (minus
        the cross-entropy at T = 1).
      rescale_schedule: the p schedule's thresholds refer to 10,000 queries and scale with
        `queries` (the reference's default); AutoAttack's standard version sets False (the
        thresholds apply to the 5000 queries as they are).
      jit_compile: compile with XLA; None: on iff a GPU is visible.

    Returns:
      float32 `[batch, h, w, c]`: the first misclassified proposal where one was found,
      otherwise the lowest-loss point; the clean image where `x` is misclassified already.

    Raises:
      ValueError: for bad settings, images that are not `[batch, h, w, c]`, or bad labels.
    """
    eps, norm, jit_compile = check_attack_settings(eps, norm, jit_compile)
    queries = check_positive_int(queries, "queries")
    p_init = check_finite_number(p_init, "p_init", positive=True)
    if p_init > 1.0:
        raise ValueError(f"`p_init` must be in (0, 1], received {p_init}")
    loss = check_choice(loss, SQUARE_LOSSES, "loss")
    x, y = check_images_and_labels(x, y)
    if x.shape.rank != 4:
        raise ValueError(f"square_attack needs images [batch, h, w, c], received shape {x.shape}")
    seed = check_seed(seed) % (2**31 - 1)
    todo = tf.where(tf.equal(predictions(model, x), y))[:, 0] if x.shape[0] else []
    if int(tf.size(todo)) == 0:
        return x

    settings = (tuple(x.shape[1:]), norm, loss, jit_compile)
    init, segment = compiled_for(
        model, ("square",) + settings, lambda: _build_square(model, *settings)
    )
    eps_t, seed_t = tf.constant(eps, tf.float32), tf.constant(seed, tf.int32)
    index = tf.cast(todo, tf.int32)
    state = init(tf.gather(x, todo), tf.gather(y, todo), index, eps_t, seed_t)
    schedule = (
        tf.constant(p_init, tf.float32),
        tf.constant(queries, tf.int32),
        tf.constant(bool(rescale_schedule)),
    )
    step = lambda s, seg: segment(
        s, eps_t, seed_t, *(tf.constant(v, tf.int32) for v in seg), *schedule
    )
    finished = lambda s: s["fooled"]
    state = run_in_segments(step, state, _segments(queries), finished, pad=jit_compile)
    return tf.tensor_scatter_nd_update(x, todo[:, None], state["x_best"])
