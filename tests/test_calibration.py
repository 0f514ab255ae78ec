"""Calibration metrics against numpy references, temperature scaling, and launch/calibrate.py."""

import json

import numpy as np
import pytest
from conftest import run_launcher

from tempscale_tf import calibration
from tempscale_tf.calibration import (
    brier_score,
    classwise_ece,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _random_case(rng, n=500, k=5, scale=2.0):
    probs = _softmax(scale * rng.normal(size=(n, k)))
    labels = rng.integers(0, k, size=n)
    return probs, labels


# ----------------------------------------------------------------- straightforward references


def _ref_ece(probs, labels, n_bins):
    """Loop over bins (lo, hi]; confidence 0 would go to the first bin (it cannot occur)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def _ref_classwise(probs, labels, n_bins):
    eces = []
    for k in range(probs.shape[1]):
        p = probs[:, k]
        hit = labels == k
        total = 0.0
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            in_bin = (p > lo) & (p <= hi) if b else (p <= hi)
            if in_bin.any():
                total += in_bin.mean() * abs(hit[in_bin].mean() - p[in_bin].mean())
        eces.append(total)
    return np.mean(eces)


def _ref_nll(logits, labels, t):
    p = _softmax(logits / t)
    return -np.mean([np.log(p[i, y]) for i, y in enumerate(labels)])


def _ref_brier(probs, labels):
    return np.mean(
        [
            sum((probs[i, k] - (k == y)) ** 2 for k in range(probs.shape[1]))
            for i, y in enumerate(labels)
        ]
    )


# ---------------------------------------------------------------------- hand-computed cases

HAND_PROBS = np.array([[0.95, 0.05], [0.70, 0.30], [0.35, 0.65], [0.45, 0.55]])
HAND_LABELS = np.array([0, 1, 1, 0])


def test_ece_hand_computed():
    # predictions 0, 0, 1, 1; confidences .95, .70, .65, .55; correct 1, 0, 1, 0.
    # 4 bins of width .25: .95 -> (.75, 1]; .70, .65, .55 -> (.5, .75].
    #   (.75, 1]:  1 example,  acc 1,   conf .95        -> 1/4 * .05 = .0125
    #   (.5, .75]: 3 examples, acc 1/3, conf 1.9/3=.633 -> 3/4 * .30 = .2250
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=4) == pytest.approx(0.2375)
    # One bin: |mean accuracy - mean confidence| = |.5 - .7125|.
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=1) == pytest.approx(0.2125)


def test_classwise_ece_hand_computed():
    # class 0: p = .95, .70, .35, .45; y == 0: 1, 0, 0, 1
    #   (.75, 1]: freq 1, mean .95 -> 1/4 * .05 = .0125;  (.5, .75]: freq 0, mean .7 -> .175
    #   (.25, .5]: freq 1/2, mean .40 -> 2/4 * .1 = .05;   total .2375
    # class 1: p = .05, .30, .65, .55; y == 1: 0, 1, 1, 0
    #   [0, .25]: freq 0, mean .05 -> .0125;  (.25, .5]: freq 1, mean .3 -> .175
    #   (.5, .75]: freq 1/2, mean .60 -> .05;   total .2375
    assert classwise_ece(HAND_PROBS, HAND_LABELS, n_bins=4) == pytest.approx(0.2375)
    # Three classes, one bin: mean_k |freq(y == k) - mean p_k|.
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    labels = np.array([0, 0])
    # class 0: |1 - .4| = .6; class 1: |0 - .4| = .4; class 2: |0 - .2| = .2 -> mean .4
    assert classwise_ece(probs, labels, n_bins=1) == pytest.approx(0.4)


def test_nll_and_brier_hand_computed():
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    labels = np.array([0, 1])
    # T=1: log(1 + e^-2) = .126928 and log 2 = .693147 -> mean .410038
    assert negative_log_likelihood(logits, labels) == pytest.approx(0.4100378, abs=1e-6)
    # T=2 divides the logits: log(1 + e^-1) = .313262 and log 2 -> mean .503204
    assert negative_log_likelihood(logits, labels, 2.0) == pytest.approx(0.5032045, abs=1e-6)
    # Brier: (.9-1)^2 + .1^2 = .02 and (.2-1)^2 + .8^2 = 1.28 -> mean .65
    assert brier_score(np.array([[0.9, 0.1], [0.2, 0.8]]), [0, 0]) == pytest.approx(0.65)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_metrics_match_numpy_references_on_random_cases(seed, n_bins):
    rng = np.random.default_rng(seed)
    probs, labels = _random_case(rng, n=400, k=3 + seed)
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(
        _ref_ece(probs, labels, n_bins), abs=1e-12
    )
    assert classwise_ece(probs, labels, n_bins) == pytest.approx(
        _ref_classwise(probs, labels, n_bins), abs=1e-12
    )
    assert brier_score(probs, labels) == pytest.approx(_ref_brier(probs, labels), abs=1e-12)
    logits = 3 * rng.normal(size=(50, 4))
    y = rng.integers(0, 4, 50)
    for t in (0.3, 1.0, 7.0):
        assert negative_log_likelihood(logits, y, t) == pytest.approx(
            _ref_nll(logits, y, t), rel=1e-10
        )


def test_metrics_accept_float32_tensors_and_column_labels():
    import tensorflow as tf

    rng = np.random.default_rng(3)
    probs, labels = _random_case(rng, n=100, k=4)
    ref = expected_calibration_error(probs, labels)
    got = expected_calibration_error(tf.constant(probs, tf.float32), labels[:, None].astype("i4"))
    assert got == pytest.approx(ref, abs=1e-6)


def test_ece_zero_for_a_calibrated_model():
    rng = np.random.default_rng(0)
    n, k = 200_000, 5
    probs = _softmax(2.0 * rng.normal(size=(n, k)))
    # Labels drawn from the predicted distribution: calibrated by construction.
    labels = (rng.uniform(size=(n, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    labels = np.minimum(labels, k - 1)
    assert expected_calibration_error(probs, labels) < 0.006
    assert classwise_ece(probs, labels) < 0.006
    # ... and a clearly over-confident version of it is not.
    sharp = _softmax(np.log(probs) * 3.0)
    assert expected_calibration_error(sharp, labels) > 0.1


def test_tfp_expected_calibration_error_agrees():
    try:
        import tensorflow_probability as tfp
    except Exception as e:  # tfp needs tf_keras; it is a test-only oracle
        pytest.skip(f"tensorflow_probability does not import here ({type(e).__name__}: {e})")
    rng = np.random.default_rng(5)
    logits = 2.0 * rng.normal(size=(2000, 6))
    labels = rng.integers(0, 6, 2000)
    theirs = tfp.stats.expected_calibration_error(
        15, logits=logits.astype("float32"), labels_true=labels.astype("int32")
    )
    ours = expected_calibration_error(_softmax(logits), labels, 15)
    # tfp bins [lo, hi) instead of (lo, hi]: identical for continuous confidences.
    assert ours == pytest.approx(float(theirs), abs=1e-5)


# ---------------------------------------------------------------------- temperature scaling


@pytest.mark.parametrize("t_true", [0.5, 2.0, 5.0])
def test_fit_temperature_recovers_a_known_temperature(t_true):
    rng = np.random.default_rng(42)
    n, k = 20_000, 10
    z = 3.0 * rng.normal(size=(n, k))
    p = _softmax(z)
    labels = np.minimum((rng.uniform(size=(n, 1)) > p.cumsum(axis=1)).sum(axis=1), k - 1)
    # z is calibrated; the model reports z * T_true, so softmax(logits / T_true) is calibrated.
    t_fit = fit_temperature(z * t_true, labels)
    assert t_fit == pytest.approx(t_true, rel=0.02)
    before = negative_log_likelihood(z * t_true, labels)
    after = negative_log_likelihood(z * t_true, labels, t_fit)
    assert after <= before + 1e-12


def test_fit_temperature_is_the_nll_minimum():
    rng = np.random.default_rng(1)
    logits = 4 * rng.normal(size=(300, 4))
    p = _softmax(logits / 3.0)  # labels drawn at T=3: the optimum is near 3
    labels = np.minimum((rng.uniform(size=(300, 1)) > p.cumsum(axis=1)).sum(axis=1), 3)
    t = fit_temperature(logits, labels)
    assert 1.5 < t < 6.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    best = grid[np.argmin([_ref_nll(logits, labels, g) for g in grid])]
    assert t == pytest.approx(best, rel=0.01)


def test_fit_temperature_warns_at_the_bound():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    labels = np.array([0, 1] * 10)  # perfectly separable: NLL keeps falling as T -> 0
    with pytest.warns(RuntimeWarning, match="bound"):
        t = fit_temperature(logits, labels, bounds=(0.1, 10))
    assert t == pytest.approx(0.1, rel=1e-3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: expected_calibration_error(np.array([0.2, 0.8]), [1]), r"\[N, num_classes\]"),
        (lambda: expected_calibration_error(np.array([[1.2, -0.2]]), [0]), r"\[0, 1\]"),
        (lambda: expected_calibration_error(np.array([[0.5, 0.2]]), [0]), "sum to 1"),
        (lambda: expected_calibration_error(np.array([[np.nan, 1.0]]), [0]), "NaN"),
        (lambda: expected_calibration_error(np.array([[0.5, 0.5]]), [2]), r"\[0, 2\)"),
        (lambda: expected_calibration_error(np.array([[0.5, 0.5]]), [-1]), r"\[0, 2\)"),
        (lambda: expected_calibration_error(np.array([[0.5, 0.5]]), [0, 1]), "2 entries"),
        (lambda: expected_calibration_error(np.array([[0.5, 0.5]]), [0.5]), "integer"),
        (lambda: expected_calibration_error(np.array([[0.5, 0.5]]), [0], n_bins=0), "n_bins"),
        (lambda: classwise_ece(np.zeros((0, 3)), []), "empty"),
        (lambda: brier_score(np.array([[1.0]]), [0]), "at least 2 classes"),
        (lambda: negative_log_likelihood(np.zeros((2, 3)), [0, 3]), r"\[0, 3\)"),
        (lambda: negative_log_likelihood(np.zeros((2, 3)), [0, 1], 0.0), "temperature"),
        (lambda: negative_log_likelihood(np.zeros((2, 3)), [0, 1], float("nan")), "NaN"),
        (lambda: fit_temperature(np.zeros((2, 3)), [0, 1], bounds=(2.0, 1.0)), "lower < upper"),
        (lambda: fit_temperature(np.zeros((2, 3)), [0, 1], bounds=(0.0, 1.0)), "> 0"),
        (lambda: fit_temperature(np.zeros((2, 3)), [[0, 1]]), r"shape \[N\]"),
    ],
)
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_reliability_diagram_png(tmp_path):
    import matplotlib.figure

    rng = np.random.default_rng(0)
    probs, labels = _random_case(rng)
    fig = calibration.reliability_diagram(probs, labels, 10, path=tmp_path / "r.png", title="x")
    assert isinstance(fig, matplotlib.figure.Figure)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrated_model_divides_by_t_and_saves_it(tmp_path):
    import keras

    from tempscale_tf.models import build_model

    model = build_model("small_cnn", 10, (32, 32, 3), width=4)
    cal = calibration.calibrated_model(model, 2.5)
    x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(cal(x).numpy(), model(x).numpy() / 2.5, rtol=1e-5, atol=1e-6)
    cal.save(tmp_path / "cal.keras")
    loaded = keras.saving.load_model(tmp_path / "cal.keras")
    np.testing.assert_allclose(loaded(x).numpy(), cal(x).numpy(), rtol=1e-5, atol=1e-6)
    assert loaded.get_layer("temperature_scaling").temperature == pytest.approx(2.5)
    # A subclassed (non-functional) model is wrapped instead.

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    sub = Sub()
    v = np.ones((2, 4), "float32")
    np.testing.assert_allclose(
        calibration.calibrated_model(sub, 4.0)(v).numpy(), sub(v).numpy() / 4.0, rtol=1e-6
    )


# ---------------------------------------------------------------------- launch/calibrate.py


def test_calibrate_launcher_end_to_end(tmp_path):
    from tempscale_tf import training
    from tempscale_tf.export import load_saved_model

    config = training.default_config()
    config.mixed_precision = False
    config.model_kwargs.width = 8
    config.train_split = "train[:-300]"  # the calibration split is held out
    # 8 short epochs: about 55% accurate and clearly under-confident (fitted T < 1).
    config.batch_size, config.epochs, config.lr = 64, 8, 0.05
    config.histogram_examples = 0
    config.export = False
    run = tmp_path / "run"
    training.train(config, run, progress=False)
    out = tmp_path / "cal"
    result = run_launcher(
        "calibrate",
        f"--workdir={run}",
        f"--output_dir={out}",
        f"--table={tmp_path / 'table'}",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "calibration.json").read_text())
    assert results["val_examples_seen_in_training"] == 0
    assert results["metrics"]["val/before"]["count"] == 300  # every example, no batch dropped
    assert results["metrics"]["test/before"]["count"] == 360
    t = results["fitted_temperature"]
    m = results["metrics"]
    # T minimises the validation NLL, so the NLL on the fit set cannot get worse. ECE is not
    # what is minimised (a run that is already ECE-calibrated can get slightly worse), but for
    # this clearly miscalibrated run it must improve on the fit set.
    assert t < 0.8
    assert m["val/after"]["nll"] <= m["val/before"]["nll"] + 1e-9
    assert m["val/after"]["ece"] <= m["val/before"]["ece"]
    assert m["test/after"]["accuracy"] == m["test/before"]["accuracy"]
    for name in ("val_before", "val_after", "test_before", "test_after"):
        assert (out / f"reliability_{name}.png").stat().st_size > 1000
    assert "fitted_temperature" in (tmp_path / "table.md").read_text()
    # The export serves softmax(logits / T) of the original model.
    serve, info = load_saved_model(out / "export")
    assert info["temperature"] == 1.0
    model, _ = training.load_run(run)
    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype("float32")
    out_logits = serve(images=x)["logits"].numpy()
    np.testing.assert_allclose(out_logits, model(x).numpy() / t, rtol=1e-4, atol=1e-5)
    # The run trained on the validation split: calibrating on it is flagged.
    with pytest.warns(RuntimeWarning, match="biased"):
        assert calibration.training_overlap(config, "train[-1000:]") == 700
        calibration.calibrate_run(run, tmp_path / "cal2", val_split="train[-1000:]", export=False)
