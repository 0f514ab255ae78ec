"""Keras layers that carry a softmax temperature. The temperature always divides the logits."""

from __future__ import annotations

import keras
import tensorflow as tf

from tempscale_tf.validation import check_temperature


@keras.saving.register_keras_serializable(package="tempscale_tf")
class TemperatureSoftmax(keras.layers.Layer):
    """`softmax(logits / temperature)` along the last axis, computed in float32.

    Args:
      temperature: float > 0 (finite). Readable as `layer.temperature`, saved in `get_config()`.
      **kwargs: standard `keras.layers.Layer` arguments. The layer's dtype defaults to
        float32 so the head stays in full precision under a mixed-precision policy.

    Example:
      >>> probs = TemperatureSoftmax(temperature=50.0)(logits)
    """

    def __init__(self, temperature=1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = check_temperature(temperature)

    def call(self, logits):
        logits = tf.cast(logits, tf.float32)
        return tf.nn.softmax(logits / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config


@keras.saving.register_keras_serializable(package="tempscale_tf")
class TemperatureScaling(keras.layers.Layer):
    """Divides logits by a temperature: `logits / temperature` (float32).

    With `trainable=True` the temperature is a weight (stored as log T so it stays positive),
    as used by post-hoc calibration; otherwise it is a fixed float.

    Args:
      temperature: float > 0, the initial (or fixed) temperature.
      learnable: if True, the temperature is a trainable scalar weight.
    """

    def __init__(self, temperature=1.0, learnable=False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.initial_temperature = check_temperature(temperature)
        self.learnable = bool(learnable)
        self.log_temperature = self.add_weight(
            name="log_temperature",
            shape=(),
            initializer=keras.initializers.Constant(float(tf.math.log(self.initial_temperature))),
            trainable=self.learnable,
        )

    @property
    def temperature(self) -> float:
        return float(tf.exp(self.log_temperature))

    def call(self, logits):
        logits = tf.cast(logits, tf.float32)
        return logits * tf.exp(-tf.cast(self.log_temperature, tf.float32))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.initial_temperature, learnable=self.learnable)
        return config
