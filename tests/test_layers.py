"""Temperature layers: values, serialization through keras.saving and SavedModel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tempscale_tf.layers import TemperatureScaling, TemperatureSoftmax


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("t", [0.1, 1.0, 50.0])
def test_softmax_matches_numpy(t):
    z = np.random.default_rng(0).normal(size=(5, 4)).astype("float32") * 10
    layer = TemperatureSoftmax(temperature=t)
    assert layer.temperature == t
    np.testing.assert_allclose(
        layer(z).numpy(), np_softmax(z.astype(np.float64) / t), rtol=1e-5, atol=1e-7
    )


def test_softmax_float32_under_mixed_precision():
    layer = TemperatureSoftmax(2.0)
    out = layer(tf.constant([[1.0, 2.0]], tf.float16))
    assert out.dtype == tf.float32


def _model(temperature):
    inputs = keras.Input((6,))
    logits = keras.layers.Dense(3, name="dense")(inputs)
    scaled = TemperatureScaling(temperature, name="scale")(logits)
    probs = TemperatureSoftmax(temperature, name="probs")(logits)
    return keras.Model(inputs, [scaled, probs])


def test_keras_saving_round_trip(tmp_path):
    model = _model(7.0)
    x = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.get_layer("probs").temperature == 7.0
    assert restored.get_layer("scale").temperature == pytest.approx(7.0)
    for a, b in zip(model(x), restored(x)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    config = TemperatureSoftmax(3.0).get_config()
    assert config["temperature"] == 3.0
    assert TemperatureSoftmax.from_config(config).temperature == 3.0


def test_saved_model_round_trip(tmp_path):
    model = _model(0.5)
    x = np.random.default_rng(2).normal(size=(3, 6)).astype("float32")
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "sm"))
    out = restored.serve(tf.constant(x))
    for a, b in zip(model(x), out):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_learnable_temperature_is_positive_and_trains():
    layer = TemperatureScaling(1.0, learnable=True)
    z = tf.constant([[4.0, 0.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits([1], layer(z)))
    grads = tape.gradient(loss, layer.trainable_weights)
    assert len(grads) == 1 and float(grads[0]) < 0  # raising T lowers the loss of a wrong label


@pytest.mark.parametrize("bad", [0, -2.0, float("nan"), float("inf")])
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        TemperatureSoftmax(bad)
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaling(bad)


def test_loss_round_trip_through_saved_model(tmp_path):
    """The loss inside a SavedModel (a tf.Module) computes the same values after reloading."""
    from tempscale_tf.losses import TemperatureCrossEntropy

    class LossModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.loss = TemperatureCrossEntropy(temperature=20.0)

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 4], tf.float32)]
        )
        def __call__(self, labels, logits):
            return self.loss(labels, logits)

    module = LossModule()
    tf.saved_model.save(module, str(tmp_path / "loss"))
    restored = tf.saved_model.load(str(tmp_path / "loss"))
    logits = np.random.default_rng(4).normal(size=(6, 4)).astype("float32") * 30
    labels = np.arange(6, dtype="int32") % 4
    np.testing.assert_allclose(
        restored(labels, logits).numpy(), module(labels, logits).numpy(), rtol=1e-6
    )
