"""Temperature cross-entropy: values and gradients against numpy, stability, Keras equivalence."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tempscale_tf.losses import TemperatureCrossEntropy, temperature_cross_entropy

TEMPERATURES = [0.1, 0.5, 1.0, 10.0, 100.0]


def np_log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def np_reference(labels_onehot, logits, t):
    """Loss and its gradient w.r.t. the logits, in float64: (softmax(z/T) - y) / T."""
    logp = np_log_softmax(logits / t)
    loss = -(labels_onehot * logp).sum(-1)
    grad = (np.exp(logp) - labels_onehot) / t
    return loss, grad


def make_logits(rng, scale):
    z = rng.normal(size=(16, 7)) * scale
    z[0] = [1e4, -1e4, 0, 0, 0, 0, 0]  # extreme logits
    z[1] = [-1e4, 1e4, 1e4, 0, 0, 0, 0]
    return z.astype(np.float32)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])
def test_value_and_gradient_match_numpy(temperature, scale):
    rng = np.random.default_rng(int(temperature * 10) + int(scale))
    logits = make_logits(rng, scale)
    labels = rng.integers(0, 7, size=16)
    onehot = np.eye(7)[labels]
    ref_loss, ref_grad = np_reference(onehot, logits.astype(np.float64), temperature)
    z = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = temperature_cross_entropy(labels, z, temperature)
    grad = tape.gradient(loss, z).numpy()
    assert np.all(np.isfinite(loss.numpy())) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6 / temperature)


@pytest.mark.parametrize("temperature", [0.01, 1000.0])
def test_stable_at_extreme_temperatures(temperature):
    logits = tf.constant([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4], [1e-3, 0.0, -1e-3]])
    labels = tf.constant([1, 2, 0])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = temperature_cross_entropy(labels, logits, temperature)
    grad = tape.gradient(loss, logits)
    assert np.all(np.isfinite(loss.numpy())) and np.all(np.isfinite(grad.numpy()))
    ref_loss, ref_grad = np_reference(np.eye(3)[[1, 2, 0]], logits.numpy(), temperature)
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-4, atol=1e-7)


def test_one_hot_and_integer_labels_agree():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 5)).astype("float32") * 5
    labels = rng.integers(0, 5, size=8)
    a = temperature_cross_entropy(labels, logits, 3.0)
    b = temperature_cross_entropy(np.eye(5, dtype="float32")[labels], logits, 3.0)
    c = temperature_cross_entropy(labels[:, None], logits, 3.0)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-6)


def test_equals_keras_sparse_cross_entropy_at_t1():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(32, 10)).astype("float32") * 4
    labels = rng.integers(0, 10, size=32)
    ours = TemperatureCrossEntropy(temperature=1.0)(labels, logits)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    np.testing.assert_allclose(float(ours), float(keras_loss), rtol=1e-6)


def test_label_smoothing_matches_keras_categorical():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(16, 6)).astype("float32") * 2
    onehot = np.eye(6, dtype="float32")[rng.integers(0, 6, size=16)]
    t = 4.0
    ours = TemperatureCrossEntropy(temperature=t, label_smoothing=0.1)(onehot, logits)
    ref = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(
        onehot, logits / t
    )
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)


def test_float16_logits_compute_in_float32():
    logits = tf.constant([[300.0, -300.0, 0.0]], tf.float16)
    loss = TemperatureCrossEntropy(temperature=0.5)([1], logits)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), 1200.0, rtol=1e-4)


def test_loss_serialization_round_trip():
    loss = TemperatureCrossEntropy(temperature=70.0, label_smoothing=0.05, name="tce")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, TemperatureCrossEntropy)
    assert restored.temperature == 70.0 and restored.label_smoothing == 0.05
    logits = np.random.default_rng(3).normal(size=(4, 3)).astype("float32")
    np.testing.assert_allclose(
        float(loss([0, 1, 2, 0], logits)), float(restored([0, 1, 2, 0], logits)), rtol=1e-7
    )


def test_loss_in_compiled_keras_model_trains():
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=TemperatureCrossEntropy(5.0))
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=20, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "hot", None, True])
def test_bad_temperature_is_rejected(bad):
    with pytest.raises(ValueError, match="temperature"):
        TemperatureCrossEntropy(temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        temperature_cross_entropy([0], [[1.0, 2.0]], bad)


def test_tensor_temperature_checked_at_run_time():
    @tf.function
    def f(t):
        return temperature_cross_entropy([0], [[1.0, 2.0]], t)

    np.testing.assert_allclose(
        f(tf.constant(2.0)).numpy(), temperature_cross_entropy([0], [[1.0, 2.0]], 2.0).numpy()
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature"):
        f(tf.constant(-1.0))


def test_bad_shapes_and_options_are_rejected():
    with pytest.raises(ValueError, match="labels"):
        temperature_cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 5), "float32"), 1.0)
    with pytest.raises(ValueError, match="logits"):
        temperature_cross_entropy([0], np.zeros((5,), "float32"), 1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        TemperatureCrossEntropy(1.0, label_smoothing=1.5)
    with pytest.raises(ValueError, match="from_logits"):
        TemperatureCrossEntropy(1.0, from_logits=False)
