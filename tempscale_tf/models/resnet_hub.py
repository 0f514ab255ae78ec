"""ResNet50 from keras-hub's `ResNetBackbone` (ImageNet stem: 7x7 stride-2 conv + max-pool)."""

from __future__ import annotations

import keras

from tempscale_tf.models.common import logits_head, normalized_input


def resnet50_hub(
    num_classes=1000, image_shape=(224, 224, 3), mean=None, std=None, weights_path=None
):
    """keras-hub's ResNet50 (v1, bottleneck) backbone with a logits head.

    The architecture matches keras-hub's `resnet_50_imagenet` preset, so weights converted from
    that preset (saved with `backbone.save_weights("resnet50.weights.h5")`) load through
    `weights_path` (backbone weights only). Nothing is downloaded.

    Args:
      num_classes: number of logits.
      image_shape: input shape; images in [0, 1].
      mean: per-channel normalisation mean applied inside the model (in [0, 1] units).
      std: per-channel normalisation standard deviation.
      weights_path: backbone weights (`.weights.h5`), or None for random initialisation.
    """
    import keras_hub

    inputs, x = normalized_input(image_shape, mean, std)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
        use_pre_activation=False,
        image_shape=tuple(image_shape),
        name="resnet50_backbone",
    )
    if weights_path:
        backbone.load_weights(weights_path)
    x = backbone(x)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, logits_head(features, num_classes), name="resnet50_hub")
