"""CIFAR-stem ResNets (He et al. 2016): 3x3 stride-1 stem, no max-pool, for 32x32 inputs.

`resnet50_cifar`: bottleneck v1 blocks [3, 4, 6, 3] with widths 64-128-256-512 (x4 expansion),
about 23.5M parameters for 10 classes (the common "ResNet50 for CIFAR" of the paper's setting).
`resnet20_cifar`: the original CIFAR ResNet-20 (basic blocks, 3x3 stages of 16-32-64, 0.27M
parameters), small enough to train on a CPU.
"""

from __future__ import annotations

import keras

from tempscale_tf.models.common import logits_head, normalized_input

_BN = dict(momentum=0.9, epsilon=1e-5)


def _bn(x, name, synchronized):
    return keras.layers.BatchNormalization(synchronized=synchronized, name=name, **_BN)(x)


def _conv(x, filters, kernel, stride, name, weight_init="he_normal"):
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer=weight_init,
        name=name,
    )(x)


def _bottleneck(x, filters, stride, name, synchronized):
    shortcut = x
    out_channels = 4 * filters
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv(x, out_channels, 1, stride, f"{name}_proj")
        shortcut = _bn(shortcut, f"{name}_proj_bn", synchronized)
    y = _conv(x, filters, 1, 1, f"{name}_conv1")
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(y, f"{name}_bn1", synchronized))
    y = _conv(y, filters, 3, stride, f"{name}_conv2")
    y = keras.layers.ReLU(name=f"{name}_relu2")(_bn(y, f"{name}_bn2", synchronized))
    y = _conv(y, out_channels, 1, 1, f"{name}_conv3")
    y = _bn(y, f"{name}_bn3", synchronized)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _basic(x, filters, stride, name, synchronized):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride, f"{name}_proj")
        shortcut = _bn(shortcut, f"{name}_proj_bn", synchronized)
    y = _conv(x, filters, 3, stride, f"{name}_conv1")
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(y, f"{name}_bn1", synchronized))
    y = _conv(y, filters, 3, 1, f"{name}_conv2")
    y = _bn(y, f"{name}_bn2", synchronized)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _cifar_resnet(
    num_classes,
    image_shape,
    block,
    stage_blocks,
    stage_filters,
    stem_filters,
    mean,
    std,
    synchronized_bn,
    name,
):
    inputs, x = normalized_input(image_shape, mean, std)
    x = _conv(x, stem_filters, 3, 1, "stem_conv")  # CIFAR stem: 3x3, stride 1, no max-pool
    x = keras.layers.ReLU(name="stem_relu")(_bn(x, "stem_bn", synchronized_bn))
    for stage, (blocks, filters) in enumerate(zip(stage_blocks, stage_filters)):
        for i in range(blocks):
            stride = 2 if (stage > 0 and i == 0) else 1
            x = block(x, filters, stride, f"stage{stage + 1}_block{i + 1}", synchronized_bn)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    logits = logits_head(features, num_classes)
    return keras.Model(inputs, logits, name=name)


def resnet50_cifar(
    num_classes=10, image_shape=(32, 32, 3), mean=None, std=None, synchronized_bn=False
):
    """ResNet50 (bottleneck v1) with the CIFAR stem. About 23.5M parameters for 10 classes.

    Args:
      num_classes: number of logits.
      image_shape: input shape; images in [0, 1].
      mean, std: per-channel normalisation applied inside the model (in [0, 1] units).
      synchronized_bn: synchronise batch-norm statistics across replicas.
    """
    return _cifar_resnet(
        num_classes,
        image_shape,
        _bottleneck,
        (3, 4, 6, 3),
        (64, 128, 256, 512),
        64,
        mean,
        std,
        synchronized_bn,
        "resnet50_cifar",
    )


def resnet20_cifar(
    num_classes=10, image_shape=(32, 32, 3), mean=None, std=None, synchronized_bn=False, width=16
):
    """ResNet-20 for CIFAR (basic blocks, 3 stages of 3 blocks, widths w-2w-4w with w=16).

    Args:
      num_classes: number of logits.
      image_shape: input shape; images in [0, 1].
      mean: per-channel normalisation mean applied inside the model (in [0, 1] units).
      std: per-channel normalisation standard deviation.
      synchronized_bn: synchronise batch-norm statistics across replicas.
      width: w, the first stage's width.
    """
    return _cifar_resnet(
        num_classes,
        image_shape,
        _basic,
        (3, 3, 3),
        (width, 2 * width, 4 * width),
        width,
        mean,
        std,
        synchronized_bn,
        "resnet20_cifar",
    )
