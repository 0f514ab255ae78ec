"""A fast CIFAR network: the ~94% in ten epochs recipe of Keller Jordan's airbench94, in Keras.

Architecture (channels last), widths `(64, 256, 256)` by default:

    normalise -> PatchWhitening(2x2, frozen kernel from the data, 24 channels) -> GELU
    -> 3 x [Conv3x3 -> MaxPool2 -> BN -> GELU -> Conv3x3 -> BN -> GELU]
    -> MaxPool3 -> "features" -> Dense(num_classes, no bias) = logits

The recipe's pieces, as this library implements them:

  - **Patch whitening.** The first convolution's kernel is not trained: `initialize_from_data`
    sets it from the eigen-decomposition of the (uncentred) second moment of the 2x2 patches of
    training images, `W = [U / sqrt(lambda + eps), -U / sqrt(lambda + eps)]`, so its outputs are
    decorrelated with unit variance (and their negations). Its bias is trained.
  - **Identity initialisation.** Each 3x3 convolution's first `min(in, out)` filters start as
    the identity (a dirac at the centre), the rest from PyTorch's default uniform init.
  - **Batch norm without scale**, momentum 0.6, in float32; its offsets (`beta`) train with a
    64x learning rate (`bn_bias_lr_scale`, applied by the training step to the data gradient).
    Epsilon 1e-5 instead of airbench's 1e-12 (see `bn_epsilon`).
  - **No hidden temperature.** airbench multiplies the logits by 1/9. Here the logits are the
    plain output of the last layer and only `--temperature` divides them. The 1/9 is folded into
    the head's parametrisation instead: its kernel starts 9x smaller and trains with a 1/81
    learning rate (`head_scale=1/9`), which gives exactly the same function and training
    trajectory as `logits = (W h) / 9` for the data term (see the README).

The lookahead/EMA of the weights, alternating flips, the triangular learning rate and Nesterov
SGD are training and data features (`training.default_config`: `lookahead_*`,
`augment_flip="alternate"`, `schedule="triangle"`), see `configs/cifar10_fast.py`.

Reference: K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU" (2024), arXiv:2404.00498,
and github.com/KellerJordan/cifar10-airbench (airbench94).
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tempscale_tf.models.common import lr_multipliers, normalized_input  # noqa: F401


@keras.saving.register_keras_serializable(package="tempscale_tf")
class PartialDirac(keras.initializers.Initializer):
    """A conv kernel `[kh, kw, in, out]` whose first `min(in, out)` filters are the identity.

    The remaining filters are drawn from `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's
    default convolution init), so the layer starts as an implicit residual connection.

    Args:
      seed: seed of the uniform part.
    """

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        base = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform", seed=self.seed)
        kernel = keras.ops.convert_to_numpy(base(shape, dtype="float32"))
        n = min(cin, cout)
        kernel[:, :, :, :n] = 0.0
        kernel[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        return keras.ops.cast(kernel, dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="tempscale_tf")
class PatchWhitening(keras.layers.Layer):
    """A `kernel_size` x `kernel_size` valid convolution whose kernel whitens image patches.

    The kernel is a non-trainable weight set by `fit(patches)` (see `initialize_from_data`);
    the bias is trainable. Output channels: `2 * kernel_size**2 * in_channels` (the whitened
    patch and its negation).

    Args:
      kernel_size: patch side.
      eps: added to the eigenvalues before the inverse square root.
    """

    def __init__(self, kernel_size=2, eps=5e-4, **kwargs):
        super().__init__(**kwargs)
        if int(kernel_size) < 1:
            raise ValueError(f"kernel_size must be >= 1, received {kernel_size}")
        self.kernel_size = int(kernel_size)
        self.eps = float(eps)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        dim = self.kernel_size**2 * channels
        self.kernel = self.add_weight(
            shape=(self.kernel_size, self.kernel_size, channels, 2 * dim),
            initializer="glorot_uniform",
            trainable=False,
            name="kernel",
        )
        self.bias = self.add_weight(shape=(2 * dim,), initializer="zeros", name="bias")

    def call(self, x):
        kernel = keras.ops.cast(self.kernel, x.dtype)
        out = keras.ops.conv(x, kernel, strides=1, padding="valid")
        return out + keras.ops.cast(self.bias, x.dtype)

    def fit(self, patches: np.ndarray) -> None:
        """Set the kernel from `patches` `[n, kernel_size, kernel_size, channels]`."""
        patches = np.asarray(patches, np.float64)
        n = len(patches)
        flat = patches.reshape(n, -1)
        moment = flat.T @ flat / n
        eigenvalues, eigenvectors = np.linalg.eigh(moment)
        scaled = eigenvectors / np.sqrt(eigenvalues + self.eps)  # columns: whitening filters
        filters = np.concatenate([scaled, -scaled], axis=1)
        self.kernel.assign(filters.reshape(self.kernel.shape).astype("float32"))

    def compute_output_shape(self, input_shape):
        k = self.kernel_size
        h = None if input_shape[1] is None else input_shape[1] - k + 1
        w = None if input_shape[2] is None else input_shape[2] - k + 1
        return (input_shape[0], h, w, 2 * k * k * input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "eps": self.eps}


def image_patches(images, kernel_size: int) -> np.ndarray:
    """Every `kernel_size` x `kernel_size` patch (stride 1) of `images` `[n, h, w, c]`, as
    `[n * (h - k + 1) * (w - k + 1), k, k, c]`."""
    images = np.asarray(images, np.float32)
    view = np.lib.stride_tricks.sliding_window_view(images, (kernel_size, kernel_size), (1, 2))
    # view: [n, h-k+1, w-k+1, c, k, k] -> [.., k, k, c]
    return view.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kernel_size, kernel_size, images.shape[-1])


def initialize_from_data(model: keras.Model, images, max_images: int = 5000) -> None:
    """Fit the `PatchWhitening` layer of `model` to the first `max_images` of `images`,
    after the model's own normalisation.

    Args:
      model: a `fast_cifar` model.
      images: floats in [0, 1], `[n, h, w, c]` (the training images).
      max_images: how many images the patch statistics use.
    """
    layer = model.get_layer("whiten")
    images = np.asarray(images[:max_images])
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    before = keras.Model(model.inputs[0], layer.input)
    normalised = np.concatenate(
        [
            keras.ops.convert_to_numpy(before(images[i : i + 1000], training=False))
            for i in range(0, len(images), 1000)
        ]
    ).astype(np.float32)
    layer.fit(image_patches(normalised, layer.kernel_size))


def _conv(filters, name, seed):
    return keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=False,
        kernel_initializer=PartialDirac(seed=seed),
        name=name,
    )


def _bn(name, synchronized_bn, bn_bias_lr_scale, epsilon):
    # Always float32, as airbench keeps its batch norms (the statistics of bfloat16 activations).
    layer = keras.layers.BatchNormalization(
        momentum=0.6,
        epsilon=epsilon,
        scale=False,
        synchronized=synchronized_bn,
        dtype="float32",
        name=name,
    )
    layer.lr_multiplier = float(bn_bias_lr_scale)
    return layer


@keras.saving.register_keras_serializable(package="tempscale_tf")
def gelu_tanh(x):
    """GELU with the tanh approximation (cheaper than erf on CPU)."""
    return keras.activations.gelu(x, approximate=True)


def _gelu(x, name):
    return keras.layers.Activation(gelu_tanh, name=name)(x)


def fast_cifar(
    num_classes=10,
    image_shape=(32, 32, 3),
    mean=None,
    std=None,
    widths=(64, 256, 256),
    whitening_kernel_size=2,
    bn_bias_lr_scale=64.0,
    head_scale=1.0 / 9.0,
    bn_epsilon=1e-5,
    synchronized_bn=False,
):
    """The airbench94 network (see the module docstring).

    Args:
      widths: channels of the three conv groups.
      whitening_kernel_size: patch side of the frozen whitening convolution.
      bn_bias_lr_scale: learning-rate multiplier of the batch-norm offsets.
      head_scale: the head's kernel starts `head_scale` times PyTorch's default and trains with
        `head_scale**2` times the learning rate (equivalent to multiplying the logits by
        `head_scale`, without changing what the logits are).
      bn_epsilon: batch-norm epsilon. airbench uses 1e-12; with bfloat16 convolutions before it
        that let near-constant channels (digits) produce non-finite gradients within 3 steps,
        so the default is 1e-5 (PyTorch's).
      synchronized_bn: synchronise batch statistics across replicas.

    Example:
      >>> model = fast_cifar(10, (32, 32, 3))
      >>> initialize_from_data(model, train_images)  # sets the whitening kernel
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) != 3 or min(widths) < 1:
        raise ValueError(f"widths must be three positive integers, received {widths}")
    if not (math.isfinite(head_scale) and head_scale > 0):
        raise ValueError(f"head_scale must be positive, received {head_scale}")
    if min(image_shape[:2]) < 2 * 2 * 2 * 3 + whitening_kernel_size - 1:
        raise ValueError(f"fast_cifar needs images of at least 25x25, received {image_shape}")
    inputs, x = normalized_input(image_shape, mean, std)
    # Always float32: the whitening kernel scales by 1 / sqrt(eigenvalue + eps), and where patches
    # are nearly collinear (upscaled digits) bfloat16 inputs and kernels cancel into noise; the
    # smoke recipe then did not train at all in bfloat16 (loss stuck at ln 10). Cheap: 2x2, 24
    # channels.
    x = PatchWhitening(whitening_kernel_size, name="whiten", dtype="float32")(x)
    x = _gelu(x, "whiten_gelu")
    for g, width in enumerate(widths, start=1):
        x = _conv(width, f"group{g}_conv1", seed=2 * g)(x)
        x = keras.layers.MaxPooling2D(2, name=f"group{g}_pool")(x)
        x = _bn(f"group{g}_bn1", synchronized_bn, bn_bias_lr_scale, bn_epsilon)(x)
        x = _gelu(x, f"group{g}_gelu1")
        x = _conv(width, f"group{g}_conv2", seed=2 * g + 1)(x)
        x = _bn(f"group{g}_bn2", synchronized_bn, bn_bias_lr_scale, bn_epsilon)(x)
        x = _gelu(x, f"group{g}_gelu2")
    x = keras.layers.MaxPooling2D(3, name="final_pool")(x)
    features = keras.layers.Flatten(name="features")(x)
    bound = head_scale / math.sqrt(widths[-1] * int(np.prod(x.shape[1:3])))
    head = keras.layers.Dense(
        num_classes,
        use_bias=False,
        dtype="float32",
        kernel_initializer=keras.initializers.RandomUniform(-bound, bound, seed=99),
        name="logits",
    )
    head.lr_multiplier = float(head_scale) ** 2
    return keras.Model(inputs, head(features), name="fast_cifar")
