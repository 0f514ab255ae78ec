"""Temperature sampling: chi-square against softmax(z / T), greedy T=0, top-k, top-p, seeds."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import chisquare

from tempscale_tf.sampling import filter_logits, sample

LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 1.5])


def _softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def _counts(tokens, vocab):
    return np.bincount(np.asarray(tokens).ravel(), minlength=vocab)


@pytest.mark.parametrize("t", [0.5, 1.0, 3.0])
def test_frequencies_match_the_tempered_distribution(t):
    n = 20_000
    tokens = sample(LOGITS, t, seed=7, num_samples=n).numpy()
    assert tokens.shape == (n,) and tokens.dtype == np.int32
    expected = _softmax(LOGITS / t) * n  # the temperature divides the logits
    assert expected.min() > 5  # chi-square validity
    assert chisquare(_counts(tokens, len(LOGITS)), expected).pvalue > 0.001
    # Not the distribution at another temperature.
    other = _softmax(LOGITS / (2 * t)) * n
    assert chisquare(_counts(tokens, len(LOGITS)), other).pvalue < 1e-6


def test_temperature_zero_is_greedy():
    logits = np.array([[0.1, 3.0, 2.9], [5.0, 5.0, -1.0], [-np.inf, -2.0, -3.0]])
    tokens = sample(logits, 0.0, num_samples=4).numpy()
    # argmax per row; ties go to the lowest token id; top-k/top-p never change the argmax.
    np.testing.assert_array_equal(tokens, [[1] * 4, [0] * 4, [1] * 4])
    np.testing.assert_array_equal(sample(logits, 0, top_k=2, top_p=0.1).numpy(), [[1], [0], [1]])
    # A tiny positive temperature agrees with greedy decoding where the maximum is unique.
    tiny = sample(logits[[0, 2]], 1e-30, seed=0, num_samples=50).numpy()
    np.testing.assert_array_equal(tiny, [[1] * 50, [1] * 50])


def test_top_k_never_samples_outside_the_top_k():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50))
    k = 5
    tokens = sample(logits, 2.0, top_k=k, seed=1, num_samples=4000).numpy()
    for row, toks in zip(logits, tokens):
        top = set(np.argsort(-row)[:k])
        assert set(np.unique(toks)) == top
    # Within the top k, the frequencies follow the renormalised tempered distribution.
    row, toks = logits[0], tokens[0]
    top = np.argsort(-row)[:k]
    expected = _softmax(row[top] / 2.0) * len(toks)
    assert chisquare(_counts(toks, 50)[top], expected).pvalue > 0.001
    # top_k=1 is greedy; top_k >= vocab is no filter.
    np.testing.assert_array_equal(
        sample(logits, 5.0, top_k=1, seed=3, num_samples=20).numpy(),
        np.repeat(np.argmax(logits, 1)[:, None], 20, axis=1),
    )
    np.testing.assert_array_equal(
        sample(logits, 1.0, top_k=500, seed=3).numpy(), sample(logits, 1.0, seed=3).numpy()
    )


def _ref_nucleus(probs, p):
    """Smallest set of most likely tokens whose total probability is >= p."""
    order = np.argsort(-probs, kind="stable")
    n_keep = int(np.argmax(np.cumsum(probs[order]) >= p)) + 1
    return set(order[:n_keep].tolist())


def test_top_p_hand_computed():
    logits = np.log(np.array([0.05, 0.5, 0.15, 0.3]))  # sorted: 1 (.5), 3 (.3), 2 (.15), 0
    for p, kept in [(0.45, {1}), (0.75, {1, 3}), (0.9, {1, 3, 2}), (0.97, {0, 1, 2, 3})]:
        values, ids = filter_logits(logits, 1.0, top_p=p)
        got = {int(i) for v, i in zip(values.numpy(), ids.numpy()) if np.isfinite(v)}
        assert got == kept, p
        tokens = sample(logits, 1.0, top_p=p, seed=0, num_samples=3000).numpy()
        assert set(np.unique(tokens)) == kept
    # The temperature is applied before the nucleus: at T=0.25 token 1 alone has mass .88.
    values, _ = filter_logits(logits, 0.25, top_p=0.8)
    assert np.isfinite(values.numpy()).sum() == 1


def test_top_p_matches_a_numpy_reference_and_its_distribution():
    rng = np.random.default_rng(3)
    for trial in range(20):
        logits = 2 * rng.normal(size=30)
        t = float(rng.choice([0.5, 1.0, 2.0]))
        p = float(rng.uniform(0.1, 0.99))
        probs = _softmax(logits / t)
        cum = np.cumsum(np.sort(probs)[::-1])
        if np.min(np.abs(cum - p)) < 1e-4:  # too close to a boundary for float32
            continue
        values, ids = filter_logits(logits, t, top_p=p)
        kept = {int(i) for v, i in zip(values.numpy(), ids.numpy()) if np.isfinite(v)}
        assert kept == _ref_nucleus(probs, p), trial
    # Frequencies follow the renormalised nucleus distribution.
    logits = np.array([1.0, 0.8, 0.3, 0.0, -0.5, -3.0])
    kept = sorted(_ref_nucleus(_softmax(logits), 0.7))
    assert len(kept) == 3
    tokens = sample(logits, 1.0, top_p=0.7, seed=11, num_samples=20_000).numpy()
    assert set(np.unique(tokens)) == set(kept)
    expected = _softmax(logits[kept]) * len(tokens)
    assert chisquare(_counts(tokens, 6)[kept], expected).pvalue > 0.001
    # top-k then top-p: the nucleus is computed on the renormalised top-k distribution.
    values, ids = filter_logits(logits, 1.0, top_k=2, top_p=0.55)
    assert values.shape == (2,) and np.isfinite(values.numpy()).sum() == 2


def test_seeds_make_samples_reproducible():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 100))
    a = sample(logits, 1.0, top_p=0.9, seed=123, num_samples=16).numpy()
    b = sample(logits, 1.0, top_p=0.9, seed=123, num_samples=16).numpy()
    c = sample(logits, 1.0, top_p=0.9, seed=124, num_samples=16).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    # Pairs, tensors and tf.function give the same draws.
    d = sample(logits, 1.0, top_p=0.9, seed=(123, 0), num_samples=16).numpy()
    e = sample(logits, 1.0, top_p=0.9, seed=tf.constant([123, 0]), num_samples=16).numpy()
    np.testing.assert_array_equal(a, d)
    np.testing.assert_array_equal(a, e)
    traced = tf.function(lambda z, s: sample(z, 1.0, top_p=0.9, seed=s, num_samples=16))
    np.testing.assert_array_equal(a, traced(tf.constant(logits), tf.constant([123, 0])).numpy())


def test_shapes_and_forbidden_tokens():
    rng = np.random.default_rng(0)
    assert sample(rng.normal(size=(7,)), 1.0, seed=0).shape == (1,)
    assert sample(rng.normal(size=(2, 7)), 1.0, seed=0, num_samples=3).shape == (2, 3)
    assert sample(rng.normal(size=(2, 3, 7)), 1.0, seed=0, num_samples=5).shape == (2, 3, 5)
    logits = np.array([0.0, -np.inf, 0.0, -np.inf])
    tokens = sample(logits, 10.0, seed=0, num_samples=2000).numpy()
    assert set(np.unique(tokens)) == {0, 2}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), ">= 0"),
        (dict(temperature=float("nan")), "finite"),
        (dict(temperature=float("inf")), "finite"),
        (dict(temperature=True), "number"),
        (dict(temperature="hot"), "number"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0.0), r"\(0, 1\]"),
        (dict(top_p=1.5), r"\(0, 1\]"),
        (dict(num_samples=0), "num_samples"),
        (dict(seed=(1, 2, 3)), "seed"),
        (dict(logits=np.array([np.nan, 1.0])), "NaN"),
        (dict(logits=np.array([-np.inf, -np.inf])), "finite logit"),
        (dict(logits=np.float32(1.0)), "vocab"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(logits=np.array([1.0, 2.0]), temperature=1.0, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sample(**args)
