"""Model registry. Every model maps images in [0, 1] to logits; the temperature is not in the model.

Use `build_model(name, num_classes, image_shape, ...)`; `MODELS` lists the names.
Per-channel normalisation happens inside the model (`mean`, `std` arguments), so attacks,
corruptions and exported models all work in pixel space. The pooled penultimate features are
the output of the layer named `"features"` (see `feature_extractor`).
"""

from __future__ import annotations

import keras

from tempscale_tf.models import fast
from tempscale_tf.models.common import feature_extractor
from tempscale_tf.models.resnet_cifar import resnet20_cifar, resnet50_cifar
from tempscale_tf.models.resnet_hub import resnet50_hub
from tempscale_tf.models.small import small_cnn
from tempscale_tf.models.vit import vit_s16, vit_tiny
from tempscale_tf.validation import check_image_shape, check_positive_int

MODELS = {
    "resnet50_cifar": resnet50_cifar,
    "resnet20_cifar": resnet20_cifar,
    "small_cnn": small_cnn,
    "vit_s16": vit_s16,
    "vit_tiny": vit_tiny,
    "resnet50_hub": resnet50_hub,
    "fast_cifar": fast.fast_cifar,
}

# Models whose builders leave a data-dependent initialisation to the training loop:
# `DATA_INIT[name](model, train_images)` runs once, before the first step of a new run.
DATA_INIT = {"fast_cifar": fast.initialize_from_data}

# Models whose builder takes `synchronized_bn` (synchronised batch norm across replicas).
SYNC_BN_MODELS = ("resnet50_cifar", "resnet20_cifar", "small_cnn", "fast_cifar")


def build_model(name: str, num_classes: int, image_shape=(32, 32, 3), **kwargs) -> keras.Model:
    """Build a registered model that outputs logits.

    Args:
      name: one of `MODELS` (`resnet50_cifar`, `resnet20_cifar`, `small_cnn`, `vit_s16`,
        `vit_tiny`, `resnet50_hub`).
      num_classes: number of output logits.
      image_shape: (height, width, channels) of the input images in [0, 1].
      **kwargs: model-specific options (e.g. `mean`, `std` for input normalisation,
        `synchronized_bn`, `weights_path`).

    Returns:
      An uncompiled `keras.Model` with float32 logits `[batch, num_classes]`.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Available models: {sorted(MODELS)}")
    num_classes = check_positive_int(num_classes, "num_classes")
    image_shape = check_image_shape(image_shape)
    return MODELS[name](num_classes=num_classes, image_shape=image_shape, **kwargs)


__all__ = ["DATA_INIT", "MODELS", "SYNC_BN_MODELS", "build_model", "feature_extractor"]
