"""Evaluation arrays of a trained run: images, penultimate features, logits, the final Dense layer.

Every model of `tempscale_tf.models` ends in `features` (the pooled penultimate layer) followed by
the Dense layer `logits`, so `logits = features @ kernel + bias` exactly; the analyses use this to
compute feature-space gradients analytically and to re-apply the model's own head to projected
features. The temperature is not part of the model: it divides the logits (`softmax(z / T)`) in
the loss and in every score computed from the logits.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tempscale_tf import data as data_lib
from tempscale_tf.models import feature_extractor


def to_float_images(images) -> np.ndarray:
    """uint8 images (0..255) -> float32 in [0, 1]; float images are returned as float32."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32, copy=False)


def evaluation_arrays(config, split=None, max_examples=None, seed: int = 0, data_dir=None):
    """(images float32 [N,H,W,C] in [0, 1], labels int64 [N]) of a run's evaluation split.

    Args:
      config: the run's config (`training.load_run`); uses `dataset`, `test_split`, `data_dir`.
      split: defaults to `config.test_split`.
      max_examples: keep a fixed seeded sample of this many examples (None/0: all).
      seed: the sample's seed.
      data_dir: overrides `config.data_dir`.
    """
    split = split or config.test_split
    data_dir = data_dir or config.data_dir or None
    images, labels = data_lib.load_arrays(config.dataset, split, data_dir)
    keep = data_lib.subset_indices(len(labels), max_examples, seed=seed)
    return to_float_images(images[keep]), np.asarray(labels[keep], dtype=np.int64)


def extract_features(model, images, batch_size: int = 256, layer_name: str = "features"):
    """Penultimate features and logits of `images` (inference mode).

    Args:
      model: a model built by `tempscale_tf.models.build_model`.
      images: float images `[N, H, W, C]` in [0, 1].
      batch_size: images per forward pass.
      layer_name: the penultimate layer's name.

    Returns:
      (features float32 [N, D], logits float32 [N, K]).
    """
    extractor = feature_extractor(model, layer_name)
    call = tf.function(
        lambda x: extractor(x, training=False), reduce_retracing=True, autograph=False
    )
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        f, z = call(tf.convert_to_tensor(images[start : start + batch_size], tf.float32))
        features.append(tf.cast(f, tf.float32).numpy())
        logits.append(tf.cast(z, tf.float32).numpy())
    if not features:
        raise ValueError("no images to extract features from")
    return np.concatenate(features), np.concatenate(logits)


def head_parameters(model, layer_name: str = "logits"):
    """(kernel float32 [D, K], bias float32 [K]) of the model's final Dense layer.

    `logits = features @ kernel + bias`; the class weight vectors (the rows of the `W` of the
    paper, `z = W f + b`) are the columns of `kernel`.
    """
    layer = model.get_layer(layer_name)
    kernel = np.asarray(layer.kernel.numpy(), np.float32)
    bias = np.asarray(layer.bias.numpy(), np.float32) if layer.use_bias else None
    if bias is None:
        bias = np.zeros(kernel.shape[1], np.float32)
    return kernel, bias


def accuracy(logits, labels) -> float:
    """Top-1 accuracy of logits [N, K] against int labels [N]."""
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))
