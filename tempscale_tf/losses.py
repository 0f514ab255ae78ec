"""Temperature-scaled cross-entropy.

Convention (used everywhere in this library): the temperature T *divides* the logits,

    CE_T(z, y) = -log softmax(z / T)_y = logsumexp(z / T) - (z / T)_y,

and its gradient with respect to the logits is `(softmax(z / T) - y) / T`.
The loss always computes in float32, also when the model runs in mixed precision.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tempscale_tf.validation import check_temperature


def _to_float32(x):
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def _one_hot_targets(labels, num_classes: int, logits_rank: int):
    """Integer labels ([B] or [B, 1]) or one-hot/probability labels ([B, K]) -> float32 [B, K]."""
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == logits_rank and labels.shape[-1] == num_classes and num_classes != 1:
        return _to_float32(labels)
    if labels.shape.rank == logits_rank and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, axis=-1)
    if labels.shape.rank != logits_rank - 1:
        raise ValueError(
            f"labels must be integer class ids of shape [batch] or one-hot of shape "
            f"[batch, {num_classes}], received shape {labels.shape} "
            f"for logits of rank {logits_rank}"
        )
    if labels.dtype.is_floating:
        labels = tf.cast(labels, tf.int32)
    return tf.one_hot(labels, num_classes, dtype=tf.float32)


def _check_tensor_temperature(temperature):
    """Accept a Python/numpy number (checked now) or a float tensor (checked at run time)."""
    if isinstance(temperature, (tf.Tensor, tf.Variable)) and not (
        tf.executing_eagerly() and temperature.shape.rank == 0
    ):
        t = _to_float32(temperature)
        with tf.control_dependencies(
            [
                tf.debugging.assert_all_finite(t, "temperature must be finite"),
                tf.debugging.assert_positive(t, message="temperature must be > 0"),
            ]
        ):
            return tf.identity(t)
    return tf.constant(check_temperature(temperature), tf.float32)


def temperature_cross_entropy(
    labels, logits, temperature=1.0, label_smoothing: float = 0.0, reduction: str | None = None
):
    """Cross-entropy of `softmax(logits / temperature)` against `labels`.

    Args:
      labels: int class ids `[batch]` (or `[batch, 1]`), or one-hot / probability
        targets `[batch, num_classes]`.
      logits: `[batch, num_classes]` raw logits (any float dtype; computed in float32).
      temperature: T > 0, divides the logits. A Python number is validated at once;
        a tensor is validated at run time.
      label_smoothing: in [0, 1); targets become `y * (1 - ls) + ls / K`.
      reduction: None (per-example losses `[batch]`), "mean" or "sum".

    Returns:
      float32 per-example losses, or their mean/sum.
    """
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), received {label_smoothing}")
    logits = _to_float32(logits)
    if logits.shape.rank is not None and logits.shape.rank < 2:
        raise ValueError(f"logits must have shape [batch, num_classes], received {logits.shape}")
    num_classes = logits.shape[-1]
    if num_classes is None:
        raise ValueError("the number of classes (last logits dimension) must be known statically")
    t = _check_tensor_temperature(temperature)
    scaled = logits / t
    targets = _one_hot_targets(labels, num_classes, logits.shape.rank)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    # softmax_cross_entropy_with_logits subtracts the max: stable for |z / T| up to ~1e37.
    per_example = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=scaled)
    return reduce_per_example(per_example, reduction)


def reduce_per_example(per_example, reduction):
    """`per_example` as is (None / "none"), or its "mean" or "sum"."""
    if reduction is None or reduction == "none":
        return per_example
    if reduction == "mean":
        return tf.reduce_mean(per_example)
    if reduction == "sum":
        return tf.reduce_sum(per_example)
    raise ValueError(f"reduction must be None, 'none', 'mean' or 'sum', received {reduction!r}")


@keras.saving.register_keras_serializable(package="tempscale_tf")
class TemperatureCrossEntropy(keras.losses.Loss):
    """Keras loss `CE(softmax(y_pred / temperature), y_true)`.

    The temperature divides the logits. Works with integer labels (`[batch]` or `[batch, 1]`)
    and with one-hot labels (`[batch, num_classes]`); always computes in float32.

    Args:
      temperature: float > 0 (finite). Divides the logits.
      from_logits: must be True: the loss is defined on logits (a softmax output
        cannot be re-tempered). Kept for signature compatibility with Keras losses.
      label_smoothing: float in [0, 1).
      reduction, name: as for `keras.losses.Loss`.

    Example:
      >>> loss = TemperatureCrossEntropy(temperature=70.0)
      >>> model.compile(optimizer="sgd", loss=loss)

    Reference: the gradient w.r.t. the logits is `(softmax(z / T) - y) / T`.
    """

    def __init__(
        self,
        temperature=1.0,
        from_logits=True,
        label_smoothing=0.0,
        reduction="sum_over_batch_size",
        name="temperature_cross_entropy",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, dtype="float32", **kwargs)
        self.temperature = check_temperature(temperature)
        if not from_logits:
            raise ValueError(
                "TemperatureCrossEntropy needs logits (from_logits=True): probabilities "
                "cannot be re-tempered. Remove the softmax from the model's output."
            )
        self.from_logits = True
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), received {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        return temperature_cross_entropy(
            y_true, y_pred, self.temperature, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
        )
        config.pop("dtype", None)
        return config
