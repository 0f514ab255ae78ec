"""ViT-S/16 through keras-hub's `ViTBackbone`, with an optional attention-logit temperature.

The backbone runs at `resolution` (224 for ViT-S/16); smaller inputs (32x32 CIFAR images) are
resized inside the model with bilinear interpolation, so the model still takes images in [0, 1]
at the dataset's size. The logits head reads the class token after the final layer norm.

Pretrained weights: nothing is downloaded. keras-hub ships no ViT-S preset, so the documented path
is the big_vision / AugReg checkpoint layout (`.npz`, e.g. the ImageNet-21k->1k
`S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-...-res_224.npz`),
downloaded by the user and passed as `weights_path=...npz` (converted by
`load_big_vision_npz`), or a `.weights.h5` file previously saved from a `ViTBackbone` of the same
shape (`backbone.save_weights(...)`). See the README's "Pretrained ViT" section.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np

from tempscale_tf.models.common import logits_head, normalized_input
from tempscale_tf.validation import check_temperature

BACKBONE_NAME = "vit_backbone"


@keras.saving.register_keras_serializable(package="tempscale_tf")
class ClassToken(keras.layers.Layer):
    """Selects the class token: `[batch, tokens, width] -> [batch, width]`."""

    def call(self, tokens):
        return tokens[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="tempscale_tf")
class ViTClassifier(keras.Model):
    """A functional ViT classifier that keeps its attention temperature through saving.

    The attention temperature is not a weight: it lives in each attention layer's query scale
    (see `set_attention_temperature`). This model records it in `get_config()` and applies it
    again in `from_config()`, so `.keras` files and the SavedModel export (traced from the
    model) keep it.

    Args:
      *args, **kwargs: `keras.Model`'s functional arguments (`inputs`, `outputs`, `name`).
      attention_temperature: divides the attention logits; 1.0 is the standard ViT.
    """

    def __init__(self, *args, attention_temperature=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.attention_temperature = check_temperature(
            attention_temperature, "attention_temperature"
        )
        set_attention_temperature(self.get_layer(BACKBONE_NAME), self.attention_temperature)

    def get_config(self):
        config = super().get_config()
        config["attention_temperature"] = self.attention_temperature
        return config


def set_attention_temperature(backbone, temperature: float) -> None:
    """Scale every attention layer's logits by `1 / (temperature * sqrt(d_head))`.

    keras-hub's ViT uses `keras.layers.MultiHeadAttention`, which multiplies queries by
    `_inverse_sqrt_key_dim`; changing that one attribute sets the attention temperature without
    forking keras-hub. `temperature=1` is the standard transformer.
    """
    temperature = check_temperature(temperature, "attention_temperature")
    found = 0
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.MultiHeadAttention):
            layer._inverse_sqrt_key_dim = 1.0 / (temperature * math.sqrt(float(layer._key_dim)))
            found += 1
    if not found:
        raise ValueError(f"no MultiHeadAttention layers found in {backbone.name!r}")


def load_big_vision_npz(backbone, path: str) -> None:
    """Load a big_vision/AugReg ViT checkpoint (`.npz`) into a keras-hub `ViTBackbone`.

    Shapes must match the backbone (patch size, width, depth, heads and number of positions).
    The classification head of the checkpoint, if any, is ignored.
    """
    params = dict(np.load(path))
    prefix = "Transformer/"
    mapping = {
        "vit_patching_and_embedding/class_token": "cls",
        "vit_patching_and_embedding/patch_embedding/kernel": "embedding/kernel",
        "vit_patching_and_embedding/patch_embedding/bias": "embedding/bias",
        "vit_patching_and_embedding/position_embedding/embeddings": prefix
        + "posembed_input/pos_embedding",
        "vit_encoder/ln/gamma": prefix + "encoder_norm/scale",
        "vit_encoder/ln/beta": prefix + "encoder_norm/bias",
    }
    for i in range(backbone.num_layers):
        ours, theirs = f"vit_encoder/transformer_block_{i + 1}/", f"{prefix}encoderblock_{i}/"
        attn = theirs + "MultiHeadDotProductAttention_1/"
        for a, b in [
            ("query", "query"),
            ("key", "key"),
            ("value", "value"),
            ("attention_output", "out"),
        ]:
            mapping[f"{ours}mha/{a}/kernel"] = f"{attn}{b}/kernel"
            mapping[f"{ours}mha/{a}/bias"] = f"{attn}{b}/bias"
        for a, b in [("ln_1", "LayerNorm_0"), ("ln_2", "LayerNorm_2")]:
            mapping[f"{ours}{a}/gamma"] = f"{theirs}{b}/scale"
            mapping[f"{ours}{a}/beta"] = f"{theirs}{b}/bias"
        for a, b in [("dense_1", "Dense_0"), ("dense_2", "Dense_1")]:
            mapping[f"{ours}mlp/{a}/kernel"] = f"{theirs}MlpBlock_3/{b}/kernel"
            mapping[f"{ours}mlp/{a}/bias"] = f"{theirs}MlpBlock_3/{b}/bias"
    for variable in backbone.weights:
        key = mapping.get(variable.path.split(BACKBONE_NAME + "/", 1)[-1])
        if key is None:
            raise ValueError(f"no big_vision parameter is mapped to variable {variable.path!r}")
        if key not in params:
            raise ValueError(f"{path}: missing parameter {key!r} (is this a ViT checkpoint?)")
        value = (
            params[key].reshape(tuple(variable.shape))
            if key.endswith("pos_embedding")
            else params[key]
        )
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{path}: parameter {key!r} has shape {value.shape}, the model's {variable.path!r}"
                f" has {tuple(variable.shape)}: the checkpoint is for a different ViT size"
            )
        variable.assign(value.astype("float32"))


def _vit(
    num_classes,
    image_shape,
    patch_size,
    num_layers,
    num_heads,
    hidden_dim,
    mlp_dim,
    resolution,
    mean,
    std,
    attention_temperature,
    dropout_rate,
    weights_path,
    name,
):
    import keras_hub

    inputs, x = normalized_input(image_shape, mean, std)
    if tuple(image_shape[:2]) != (resolution, resolution):
        x = keras.layers.Resizing(resolution, resolution, interpolation="bilinear", name="resize")(
            x
        )
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(resolution, resolution, image_shape[-1]),
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        dropout_rate=dropout_rate,
        name=BACKBONE_NAME,
    )
    if weights_path:
        if not os.path.exists(weights_path):
            raise FileNotFoundError(f"ViT weights file not found: {weights_path}")
        if weights_path.endswith(".npz"):
            load_big_vision_npz(backbone, weights_path)
        else:
            backbone.load_weights(weights_path)
    tokens = backbone(x)
    features = ClassToken(name="features")(tokens)
    return ViTClassifier(
        inputs,
        logits_head(features, num_classes),
        name=name,
        attention_temperature=attention_temperature,
    )


def vit_s16(
    num_classes=10,
    image_shape=(32, 32, 3),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    resolution=224,
    attention_temperature=1.0,
    dropout_rate=0.0,
    weights_path=None,
):
    """ViT-S/16: 12 layers, 6 heads, width 384, MLP 1536, at 224x224 (about 21.7M parameters).

    Args:
      attention_temperature: divides the scaled dot-product attention logits
        (`q.k / (tau_attn * sqrt(d))`); 1.0 is the standard ViT.
      weights_path: optional local `.npz` (big_vision layout) or `.weights.h5` backbone weights.
    """
    return _vit(
        num_classes,
        image_shape,
        16,
        12,
        6,
        384,
        1536,
        resolution,
        mean,
        std,
        attention_temperature,
        dropout_rate,
        weights_path,
        "vit_s16",
    )


def vit_tiny(
    num_classes=10,
    image_shape=(32, 32, 3),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    patch_size=8,
    num_layers=2,
    num_heads=2,
    hidden_dim=32,
    mlp_dim=64,
    attention_temperature=1.0,
    dropout_rate=0.0,
    weights_path=None,
):
    """A tiny ViT (same code path as `vit_s16`) for CPU tests, at the input's own resolution.

    Args: as `vit_s16` (`patch_size`, `num_layers`, `num_heads`, `hidden_dim` and `mlp_dim` set
    the size; `attention_temperature` divides the attention logits).
    """
    if image_shape[0] != image_shape[1]:
        raise ValueError(f"vit_tiny needs square images, received {image_shape}")
    return _vit(
        num_classes,
        image_shape,
        patch_size,
        num_layers,
        num_heads,
        hidden_dim,
        mlp_dim,
        image_shape[0],
        mean,
        std,
        attention_temperature,
        dropout_rate,
        weights_path,
        "vit_tiny",
    )
