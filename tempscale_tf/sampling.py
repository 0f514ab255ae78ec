"""Temperature sampling for generation: `softmax(logits / T)` with top-k and nucleus filtering.

Convention (as everywhere in this library): the temperature T *divides* the logits. This module
is the one place where `T == 0` is allowed: it means greedy decoding (argmax), the T -> 0 limit
of `softmax(logits / T)`. Negative, NaN and infinite temperatures are errors.

Randomness is stateless: the draws are a pure function of `(logits, settings, seed)`
(`tf.random.stateless_categorical`), so the same seed gives the same tokens, on any device
count and inside or outside `tf.function`. In a decoding loop pass a different seed per step,
e.g. `seed=(base_seed, step)`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf

from tempscale_tf.validation import check_positive_int

__all__ = ["filter_logits", "sample"]


def _check_sampling_temperature(temperature) -> float:
    """Like `validation.check_temperature`, but 0 (greedy) is allowed here."""
    if isinstance(temperature, np.ndarray):
        if temperature.shape != ():
            raise ValueError(f"`temperature` must be a scalar, received shape {temperature.shape}")
        temperature = temperature.item()
    if isinstance(temperature, bool):
        raise ValueError(f"`temperature` must be a number >= 0, received {temperature!r}")
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"`temperature` must be a number >= 0, received {temperature!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"`temperature` must be finite and >= 0, received {value}")
    if value < 0.0:
        raise ValueError(
            f"`temperature` must be >= 0 (it divides the logits; 0 means greedy), received {value}"
        )
    return value


def _check_top_k(top_k):
    if top_k is None:
        return None
    return check_positive_int(top_k, "top_k")


def _check_top_p(top_p):
    if top_p is None:
        return None
    if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real):
        raise ValueError(f"`top_p` must be a number in (0, 1], received {top_p!r}")
    value = float(top_p)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"`top_p` must be in (0, 1], received {top_p!r}")
    return value


def _seed_tensor(seed):
    """An int64 `[2]` stateless seed from an int, a pair, or a `[2]` tensor; None -> fresh."""
    if seed is None:
        return tf.constant(np.random.SeedSequence().generate_state(2).astype(np.int64))
    if isinstance(seed, (tf.Tensor, tf.Variable)):
        seed = tf.cast(seed, tf.int64)
        if seed.shape.rank == 0:
            return tf.stack([seed, tf.zeros_like(seed)])
        return tf.reshape(seed, [2])
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seed = int(seed)
        return tf.constant([seed % 2**63, seed // 2**63], tf.int64)
    try:
        pair = [int(s) for s in seed]
    except TypeError:
        pair = []
    if len(pair) != 2:
        raise ValueError(f"`seed` must be an int, a pair of ints or a [2] tensor, got {seed!r}")
    return tf.constant(pair, tf.int64)


def _prepare_logits(logits):
    logits = tf.convert_to_tensor(logits)
    if not logits.dtype.is_floating:
        logits = tf.cast(logits, tf.float32)
    elif logits.dtype not in (tf.float32, tf.float64):
        logits = tf.cast(logits, tf.float32)
    if logits.shape.rank is None or logits.shape.rank < 1:
        raise ValueError(f"`logits` must have shape [..., vocab], received {logits.shape}")
    if logits.shape[-1] is None:
        raise ValueError("the vocabulary size (last logits dimension) must be known statically")
    if logits.shape[-1] == 0:
        raise ValueError("`logits` has an empty last dimension")
    if tf.executing_eagerly():
        values = logits.numpy()
        if np.isnan(values).any():
            raise ValueError("`logits` contains NaN")
        if values.size and not np.isfinite(values).any(axis=-1).all():
            raise ValueError("every row of `logits` needs at least one finite logit")
        if np.isposinf(values).any():
            raise ValueError("`logits` contains +inf")
    return logits


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """Tempered, filtered logits in sorted order: `(sorted_logits, token_ids)`.

    `sorted_logits[..., j]` is the j-th largest of `logits / T` (ties: lower token id first),
    set to `-inf` when filtered out; `token_ids[..., j]` is its token. Top-k keeps exactly the
    `top_k` largest; top-p then keeps the smallest prefix (in that order) whose probability under
    `softmax(logits / T)` renormalised over the top-k tokens reaches `top_p`, i.e. a token is
    kept when the mass of the tokens before it is `< top_p` (the first token is always kept).
    `softmax(sorted_logits)` is the sampling distribution. `temperature` must be > 0 here.

    Args:
      logits: `[..., V]`.
      temperature: T > 0, which divides the logits.
      top_k: keep the `top_k` largest (None: all).
      top_p: nucleus mass in (0, 1] (None: no nucleus filtering).
    """
    t = _check_sampling_temperature(temperature)
    if t == 0.0:
        raise ValueError("filter_logits needs temperature > 0 (0 is greedy: use sample())")
    top_k, top_p = _check_top_k(top_k), _check_top_p(top_p)
    logits = _prepare_logits(logits)
    vocab = logits.shape[-1]
    k = vocab if top_k is None else min(top_k, vocab)
    # Shift by the row maximum first, so tiny temperatures give -inf/0, never inf - inf.
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
    values, ids = tf.math.top_k(shifted / tf.cast(t, logits.dtype), k=k, sorted=True)
    if top_p is not None and top_p < 1.0:
        probs = tf.nn.softmax(values, axis=-1)
        mass_before = tf.math.cumsum(probs, axis=-1, exclusive=True)
        values = tf.where(mass_before < top_p, values, tf.constant(-np.inf, values.dtype))
    return values, ids


def sample(logits, temperature=1.0, top_k=None, top_p=None, seed=None, num_samples: int = 1):
    """Sample token ids from `softmax(logits / temperature)` with optional top-k / top-p filters.

    Args:
      logits: `[vocab]` or `[..., vocab]` float logits (`-inf` marks a forbidden token; NaN and
        `+inf` are errors).
      temperature: T >= 0; divides the logits. `T == 0` is greedy decoding: every sample is the
        argmax (the lowest token id among ties) -- the only place in this library where T = 0
        is allowed. Negative, NaN or infinite T raise `ValueError`.
      top_k: keep only the `top_k` most likely tokens (None: no limit; larger than the
        vocabulary: no limit).
      top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability
        (after temperature and top-k) reaches `top_p`, in (0, 1]; None or 1: no limit.
      seed: an int, a pair of ints or an int `[2]` tensor for the stateless RNG; the same seed
        gives the same samples. None draws a fresh seed (not reproducible).
      num_samples: independent draws per row.

    Returns:
      int32 token ids of shape `logits.shape[:-1] + (num_samples,)`.
    """
    t = _check_sampling_temperature(temperature)
    top_k, top_p = _check_top_k(top_k), _check_top_p(top_p)
    num_samples = check_positive_int(num_samples, "num_samples")
    logits = _prepare_logits(logits)
    vocab = logits.shape[-1]
    batch_shape = tf.shape(logits)[:-1]
    flat = tf.reshape(logits, [-1, vocab])
    if t == 0.0:
        greedy = tf.argmax(flat, axis=-1, output_type=tf.int32)
        tokens = tf.tile(greedy[:, None], [1, num_samples])
    else:
        values, ids = filter_logits(flat, t, top_k, top_p)
        positions = tf.random.stateless_categorical(
            values, num_samples, seed=_seed_tensor(seed), dtype=tf.int32
        )
        tokens = tf.gather(ids, positions, batch_dims=1)
    return tf.reshape(tokens, tf.concat([batch_shape, [num_samples]], axis=0))
