"""Distillation loss against numpy, the T^2 factor, the Distiller, and launch/distill.py."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_launcher

from tempscale_tf import distribute
from tempscale_tf.distillation import Distiller, distillation_loss, distillation_terms


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _ref_loss(zs, zt, y, t, alpha):
    """Per-example loss and its gradient w.r.t. the student logits, in float64 numpy."""
    onehot = np.eye(zs.shape[1])[y]
    p1 = _softmax(zs)
    ps, pt = _softmax(zs / t), _softmax(zt / t)
    hard = -np.sum(onehot * np.log(p1), axis=1)
    kl = np.sum(pt * (np.log(pt) - np.log(ps)), axis=1)  # KL(teacher || student)
    loss = alpha * hard + (1 - alpha) * t**2 * kl
    # d hard / d zs = p1 - y;  d (T^2 KL) / d zs = T^2 * (ps - pt) / T = T (ps - pt)
    grad = alpha * (p1 - onehot) + (1 - alpha) * t * (ps - pt)
    return loss, grad


def _grad(fn, zs):
    zs = tf.constant(zs, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(zs)
        loss = fn(zs)
    return loss.numpy(), tape.gradient(loss, zs).numpy()


@pytest.mark.parametrize("t", [1.0, 2.5, 8.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_value_and_gradient_match_numpy(t, alpha):
    rng = np.random.default_rng(0)
    zs, zt = 3 * rng.normal(size=(6, 5)), 3 * rng.normal(size=(6, 5))
    y = rng.integers(0, 5, 6)
    ref_loss, ref_grad = _ref_loss(zs, zt, y, t, alpha)
    per_example, grad = _grad(lambda z: distillation_loss(z, zt, y, t, alpha), zs)
    assert per_example.dtype == np.float32 and per_example.shape == (6,)
    np.testing.assert_allclose(per_example, ref_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)
    mean, grad_mean = _grad(lambda z: distillation_loss(z, zt, y, t, alpha, reduction="mean"), zs)
    np.testing.assert_allclose(mean, ref_loss.mean(), rtol=1e-5)
    np.testing.assert_allclose(grad_mean, ref_grad / 6, rtol=1e-4, atol=1e-6)


def test_direction_of_the_kl_and_one_hot_labels():
    """KL(teacher || student), not KL(student || teacher): swapping the arguments changes it."""
    zs = np.array([[2.0, 0.0, -1.0]])
    zt = np.array([[0.0, 3.0, 0.0]])
    y = np.array([1])
    soft = distillation_loss(zs, zt, y, 2.0, 0.0).numpy()[0]
    pt, ps = _softmax(zt / 2.0)[0], _softmax(zs / 2.0)[0]
    assert soft == pytest.approx(4.0 * np.sum(pt * np.log(pt / ps)), rel=1e-5)
    assert soft != pytest.approx(4.0 * np.sum(ps * np.log(ps / pt)), rel=1e-2)
    # One-hot labels give the same hard term as integer labels.
    np.testing.assert_allclose(
        distillation_loss(zs, zt, np.eye(3)[y], 2.0, 0.5).numpy(),
        distillation_loss(zs, zt, y, 2.0, 0.5).numpy(),
        rtol=1e-6,
    )
    # Identical logits: the soft term is 0 at every temperature.
    assert float(distillation_loss(zt, zt, None, 7.0, 0.0)[0]) == pytest.approx(0.0, abs=1e-6)


def test_t_squared_keeps_the_soft_gradient_scale_independent_of_t():
    rng = np.random.default_rng(1)
    zs, zt = rng.normal(size=(64, 10)), rng.normal(size=(64, 10))
    norms, norms_without = {}, {}
    for t in (4.0, 20.0):
        _, g = _grad(lambda z, t=t: distillation_loss(z, zt, None, t, 0.0, reduction="sum"), zs)
        norms[t] = np.linalg.norm(g)
        norms_without[t] = norms[t] / t**2  # the same loss without the T^2 factor
    # With T^2: ~ ||centred (zs - zt)|| / K at large T, the same at T = 4 and T = 20.
    assert norms[20.0] / norms[4.0] == pytest.approx(1.0, abs=0.05)
    # Without it the gradient falls as 1 / T^2: (20 / 4)^2 = 25 times smaller.
    assert norms_without[4.0] / norms_without[20.0] == pytest.approx(25.0, rel=0.05)
    # And the large-T limit of the soft gradient: (centred zs - centred zt) / (K T^0).
    centred = (zs - zs.mean(1, keepdims=True)) - (zt - zt.mean(1, keepdims=True))
    _, g = _grad(lambda z: distillation_loss(z, zt, None, 1000.0, 0.0, reduction="sum"), zs)
    np.testing.assert_allclose(g, centred / 10, rtol=2e-2, atol=1e-3)


def test_teacher_gets_no_gradient():
    rng = np.random.default_rng(2)
    zs = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    zt = tf.Variable(rng.normal(size=(4, 3)), dtype=tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        loss = distillation_loss(zs, zt, [0, 1, 2, 0], 3.0, 0.5, reduction="mean")
    assert tape.gradient(loss, zt) is None
    _, soft = distillation_terms(zs, zt, None, 3.0)
    assert soft.shape == (4,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "NaN"),
        (dict(alpha=1.5), r"\[0, 1\]"),
        (dict(alpha=-0.1), r"\[0, 1\]"),
        (dict(labels=None), "labels"),
        (dict(teacher_logits=np.zeros((2, 4))), "same shape"),
        (dict(reduction="max"), "reduction"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(
        student_logits=np.zeros((2, 3)),
        teacher_logits=np.zeros((2, 3)),
        labels=[0, 1],
        temperature=2.0,
        alpha=0.5,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        distillation_loss(**args)


# ------------------------------------------------------------------------------ Distiller


def _mlp(width, seed, batch_norm=True):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(width, activation="relu")(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def _blobs(n=256, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 8)) + 2.0 * np.eye(3, 8)[y]
    return x.astype("float32"), y.astype("int32")


def test_distiller_fit_trains_the_student_and_freezes_the_teacher():
    x, y = _blobs()
    teacher = _mlp(32, 0)
    teacher.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    teacher.fit(x, y, epochs=5, batch_size=32, verbose=0)
    teacher_weights = [w.numpy().copy() for w in teacher.weights]  # incl. BN moving statistics
    student = _mlp(4, 1)
    student_before = [w.numpy().copy() for w in student.trainable_weights]
    distiller = Distiller(student, teacher, temperature=4.0, alpha=0.3)
    distiller.compile(keras.optimizers.Adam(0.01), metrics=["accuracy"])
    first = distiller.evaluate(x, y, verbose=0, return_dict=True)
    history = distiller.fit(x, y, epochs=8, batch_size=32, verbose=0)
    last = distiller.evaluate(x, y, verbose=0, return_dict=True)
    h = history.history
    assert set(h) >= {"loss", "student_loss", "distillation_loss", "accuracy"}
    assert h["loss"][-1] < 0.7 * h["loss"][0]
    assert last["loss"] < first["loss"] and last["accuracy"] > first["accuracy"]
    # The reported loss is alpha * student_loss + (1 - alpha) * distillation_loss.
    assert last["loss"] == pytest.approx(
        0.3 * last["student_loss"] + 0.7 * last["distillation_loss"], rel=1e-4
    )
    for before, w in zip(teacher_weights, teacher.weights):
        np.testing.assert_array_equal(before, w.numpy())
    assert not teacher.trainable
    assert any(
        not np.allclose(b, w.numpy()) for b, w in zip(student_before, student.trainable_weights)
    )
    # predict() returns the student's logits.
    np.testing.assert_allclose(
        distiller.predict(x[:5], verbose=0), student(x[:5]).numpy(), rtol=1e-5, atol=1e-6
    )


def test_distiller_two_replicas_match_one_device():
    x, y = _blobs(64)
    weights = {}
    for name, devices in [("one", ["/cpu:0"]), ("two", ["/cpu:0", "/cpu:1"])]:
        strategy = distribute.mirrored(devices)
        with strategy.scope():
            teacher, student = _mlp(16, 0, False), _mlp(4, 1, False)
            distiller = Distiller(student, teacher, temperature=3.0, alpha=0.5)
            distiller.compile(keras.optimizers.SGD(0.5))
        distiller.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
        weights[name] = [w.numpy() for w in student.weights]
    for a, b in zip(weights["one"], weights["two"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_distiller_rejects_bad_setups():
    with pytest.raises(ValueError, match="alpha must be 1"):
        Distiller(_mlp(4, 0), None, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        Distiller(_mlp(4, 0), _mlp(4, 1), temperature=-1.0)
    with pytest.raises(ValueError, match="own loss"):
        Distiller(_mlp(4, 0), _mlp(4, 1)).compile("sgd", loss="mse")
    # The no-teacher baseline is plain cross-entropy.
    x, y = _blobs(64)
    baseline = Distiller(_mlp(4, 0, False), None, temperature=5.0, alpha=1.0)
    baseline.compile("sgd")
    result = baseline.evaluate(x, y, verbose=0, return_dict=True)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, baseline.student(x))
    assert result["loss"] == pytest.approx(float(ce), rel=1e-5)
    assert result["distillation_loss"] == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- launch script


def test_distill_launcher_smoke(tmp_path):
    result = run_launcher(
        "distill",
        "--config=configs/distill_digits.py:smoke",
        f"--workdir={tmp_path / 'work'}",
        f"--table={tmp_path / 'table'}",
        "--config.teacher.model_kwargs.width=4",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert (tmp_path / "work" / "teacher" / "metrics.json").exists()
    rows = results["rows"]
    assert [r["student"] for r in rows] == ["baseline (no teacher)"] + ["distilled"] * 2
    assert [r["temperature"] for r in rows[1:]] == [1.0, 4.0]
    # Accuracies are fractions of the 360 digits test images, and the teacher row matches the
    # teacher run's own metrics.
    for r in rows:
        assert r["test_accuracy"] * 360 == pytest.approx(round(r["test_accuracy"] * 360), abs=1e-6)
    teacher_metrics = json.loads((tmp_path / "work" / "teacher" / "metrics.json").read_text())
    assert results["teacher"]["test_accuracy"] == pytest.approx(teacher_metrics["test/accuracy"])
    md = (tmp_path / "table.md").read_text()
    assert "baseline (no teacher)" in md and "test_accuracy" in md
    assert (tmp_path / "table.csv").exists()


def test_training_dataset_redraws_each_epoch_without_the_autotuner():
    from tempscale_tf import data as data_lib
    from tempscale_tf.distillation import training_dataset

    ds = training_dataset("digits", "train", 64, seed=1, augment=False)
    assert ds.options().autotune.enabled is False
    first = np.concatenate([y.numpy() for _, y in ds])
    second = np.concatenate([y.numpy() for _, y in ds])
    _, labels = data_lib.load_arrays("digits", "train")
    n = len(labels) // 64 * 64  # drop_remainder
    assert len(first) == len(second) == n
    assert not np.array_equal(first, second)  # a new order every iteration
    # Each epoch is a sample without replacement of the training labels.
    assert np.all(np.bincount(first, minlength=10) <= np.bincount(labels, minlength=10))
