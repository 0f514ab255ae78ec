"""Pieces shared by the model builders: input normalisation and the logits head."""

from __future__ import annotations

import keras
import numpy as np


def normalized_input(image_shape, mean=None, std=None, name="images"):
    """Input layer for images in [0, 1] followed by per-channel `(x - mean) / std`.

    Args:
      image_shape: `(H, W, C)`.
      mean: per-channel mean in [0, 1] units, or None.
      std: per-channel standard deviation, or None.
      name: the input's name.

    Returns (inputs, normalised tensor). With `mean`/`std` None, no normalisation is applied.
    """
    inputs = keras.Input(shape=tuple(image_shape), name=name)
    if mean is None and std is None:
        return inputs, inputs
    channels = image_shape[-1]
    mean = np.broadcast_to(np.asarray(0.0 if mean is None else mean, "float32"), (channels,))
    std = np.broadcast_to(np.asarray(1.0 if std is None else std, "float32"), (channels,))
    if np.any(std <= 0):
        raise ValueError(f"`std` must be positive per channel, received {std.tolist()}")
    x = keras.layers.Normalization(
        mean=mean.tolist(), variance=(std**2).tolist(), axis=-1, name="normalize"
    )(inputs)
    return inputs, x


def logits_head(features, num_classes, name="logits"):
    """Dense logits layer, always float32 (also under a mixed-precision policy).

    Args:
      features: the penultimate features `[batch, D]`.
      num_classes: number of logits.
      name: the layer's name (`training` and the analyses look the head up by "logits").
    """
    return keras.layers.Dense(num_classes, dtype="float32", name=name)(features)


def feature_extractor(model: keras.Model, layer_name: str = "features") -> keras.Model:
    """A model mapping the same inputs to (features, logits).

    Every model built by `build_model` names its pooled penultimate layer `"features"`.
    """
    try:
        features = model.get_layer(layer_name).output
    except ValueError:
        raise ValueError(
            f"model {model.name!r} has no layer named {layer_name!r}; models from "
            "`tempscale_tf.models.build_model` name their penultimate layer 'features'"
        ) from None
    return keras.Model(model.inputs[0], [features, model.outputs[0]], name=f"{model.name}_features")


def lr_multipliers(model: keras.Model) -> dict:
    """`{id(variable): multiplier}` for the trainable variables of layers that set an
    `lr_multiplier` attribute (the training step scales their data gradients; see
    `models.fast`)."""
    out = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        factor = getattr(layer, "lr_multiplier", None)
        if factor is not None and factor != 1.0:
            for v in layer.trainable_weights:
                out[id(v)] = float(factor)
    return out
