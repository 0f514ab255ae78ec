"""A small CNN for CPU demos and tests."""

from __future__ import annotations

import keras

from tempscale_tf.models.common import logits_head, normalized_input


def small_cnn(
    num_classes=10,
    image_shape=(32, 32, 3),
    mean=None,
    std=None,
    width=16,
    batch_norm=True,
    synchronized_bn=False,
):
    """Conv(w)-Conv(w)-pool-Conv(2w)-Conv(2w)-pool-GAP-Dense: a few thousand parameters at w=8.

    Args:
      width: channels of the first two convolutions.
      batch_norm: add batch normalisation after each convolution.
    """
    inputs, x = normalized_input(image_shape, mean, std)
    for i, filters in enumerate((width, width, 2 * width, 2 * width)):
        x = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            name=f"conv{i + 1}",
        )(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(
                synchronized=synchronized_bn, momentum=0.9, name=f"bn{i + 1}"
            )(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
        if i in (1, 3):
            x = keras.layers.MaxPooling2D(2, name=f"pool{i // 2 + 1}")(x)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, logits_head(features, num_classes), name="small_cnn")
