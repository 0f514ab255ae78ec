"""CIFAR-10-C common corruptions, vectorised in numpy.

The 15 benchmark corruptions of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness
to Common Corruptions and Perturbations" (ICLR 2019), at the five severities of the **CIFAR**
generator (`ImageNet-C/create_c/make_cifar_c.py` in github.com/hendrycks/robustness; the
ImageNet-C constants are different and are not used here).

Public API:

* `CORRUPTIONS`, `SEVERITIES`, `STOCHASTIC_CORRUPTIONS`: names and levels.
* `corrupt(images, name, severity, seed=0)`: corrupt a batch `[N, H, W, 3]` (or one image
  `[H, W, 3]`) of float images in [0, 1] (or uint8 0..255); returns float32 in [0, 1].
* `corrupt_dataset(dataset, name, severity, seed=0, batch_size=None)`: the same over a
  `tf.data.Dataset` of `(images, labels)`.
* `load_cifar10_c(data_dir, name, severity)`: the official pre-computed CIFAR-10-C images.
  It lives in the data layer (`tempscale_tf.data.load_cifar10_c`, module
  `tempscale_tf/data/cifar10c.py`) and is re-exported here for compatibility.

Modules, by Hendrycks & Dietterich's four families (their Figure 1):

* `noise`: gaussian_noise, shot_noise, impulse_noise.
* `blur`: defocus_blur, glass_blur, motion_blur, zoom_blur.
* `weather`: snow, frost, fog, brightness.
* `digital`: contrast, elastic_transform, pixelate, jpeg_compression.
* `kernels`: the numerical building blocks the families share (Gaussian filtering, line
  kernels applied as gathers, zoom and box-resampling matrices, bilinear sampling, the plasma
  fractal).
* `registry`: `CORRUPTIONS`, `EXTRA_CORRUPTIONS`, `SEVERITIES`, `STOCHASTIC_CORRUPTIONS`, the
  name -> (op, per-severity constants) table `OPS`, validation of names, severities and image
  batches, and `corrupt`.
* `tfdata`: `corrupt_dataset`.

The four extra corruptions of the official release (`EXTRA_CORRUPTIONS`: speckle_noise,
gaussian_blur, spatter, saturate), which the paper holds out for validation, are not generated
here; `load_cifar10_c` loads them from the official files.

Randomness: every call builds its own `numpy.random.default_rng(seed)`; no global state is read
or written. One generator stream serves the whole batch, so the images of a batch get
independent noise, and the same (images, seed) always gives the same output. Batches are
processed in chunks of `registry._CHUNK` images (memory bound); the stream simply continues across
chunks. Corrupting a sub-batch therefore does not reproduce the corresponding slice of a
corrupted batch (the stream positions differ), by design. Each corruption function documents
the order in which it draws from the generator.

Image size: every corruption works for any `H, W >= 4` (square or not). The official constants
are for 32x32 images. Constants measured in pixels (blur radii and sigmas, motion-blur length,
glass-blur displacement, elastic displacements, synthetic frost texture scale, and the
snow-flake zoom when s > 1) are multiplied by `s = min(H, W) / 32`, so 32x32 images (including
8x8 digits upscaled to 32x32) use the published constants exactly. Relative constants (zoom
factors, pixelate ratio, noise levels, JPEG quality, contrast, brightness, fog) are used
unchanged. The fog fractal is generated on the next power of two `>= max(H, W)` and cropped,
as the original does for 32.

Differences from the official CIFAR-10-C generator (read these before comparing numbers with
published CIFAR-10-C results; for those, use `load_cifar10_c` on the official files):

1. Output precision. The official generator stores `np.uint8(...)` of each corrupted image,
   i.e. it *truncates* to 8 bits, and some corruptions round-trip through 8-bit PNG/uint8
   internally (glass blur after its first blur, snow's flake layer, motion blur). Here
   everything stays in floating point and the output is float32 in [0, 1]. To mimic the
   released files, quantise afterwards with `np.floor(out * 255) / 255`.
2. Motion blur (and snow's flake streaks) used ImageMagick's `MotionBlurImage` through Wand.
   It is re-implemented from its definition: a one-sided line kernel of
   `width = 2 * ceil(radius) + 1` taps, tap `i` weighted by `exp(-i^2 / (2 sigma^2))`
   (normalised) and placed at the pixel offset `(round(i cos a), round(i sin a))` (column,
   row; ImageMagick rounds with `ceil(v - 0.5)`), at an angle `a` drawn uniformly from
   [-45, 45) degrees (snow: [-135, -45)), with edge-replicated borders (ImageMagick's default
   virtual-pixel method). It is applied as a gather, equivalent to `scipy.ndimage.correlate`
   with that line kernel and `mode="nearest"`.
3. Frost blended the image with crops of six frost *photographs* that are not available
   here. A frost-like texture is synthesised procedurally instead (seeded; bluish-white
   low-frequency haze plus crystalline needle streaks at three orientations 60 degrees
   apart; mean about 0.47, bluer than red), and blended with the official CIFAR constants
   `clip(c0 * x + c1 * frost)`. Frost results are therefore *not* comparable with official
   CIFAR-10-C frost numbers.
4. Glass blur's pixel "swap" loop is vectorised exactly. In the original the swap
   `x[h, w], x[h', w'] = x[h', w'], x[h, w]` acts on numpy views, so it is in fact a copy
   `x[h, w] = x[h', w']` (the source pixel is not changed), and `np.random.randint(-d, d)`
   draws offsets from `[-d, d - 1]`, i.e. only up/left neighbours for the CIFAR `d = 1`.
   Because the loop visits pixels bottom-right to top-left, every source is still unmodified
   when it is read, so one loop iteration is exactly the gather
   `x_new[h, w] = x_old[h + dy, w + dx]` over `h, w` in `d + 1 .. H - d`. That gather is what
   is implemented (tested against the literal loop). For `d > 1` (only when images are larger
   than 32 px) the original would read some already-updated pixels; the gather reads the
   original ones (a documented approximation).
5. Defocus blur used `cv2.filter2D` with a disk kernel anti-aliased by `cv2.GaussianBlur`;
   here the same kernel is built in numpy (cropped to its non-zero support) and applied with
   `scipy.ndimage.correlate(mode="mirror")`, which is OpenCV's default `BORDER_REFLECT_101`.
   The disk grid is integer for any radius (the original uses `arange(-r, r + 1)` for r > 8,
   which only matters for images larger than about 170 px).
6. Elastic transform used `cv2.warpAffine` (bilinear, `BORDER_REFLECT_101`) followed by
   `scipy.ndimage.map_coordinates(order=1, mode="reflect")`. Both passes are done by one
   batched bilinear sampler; OpenCV quantises sampling positions to 1/32 pixel, this does not.
   For non-square images the affine anchor points use (x=column, y=row) consistently.
7. Zoom blur and snow use `scipy.ndimage.zoom(order=1)` crops; here the identical linear
   interpolation is applied as separable matrices (same coordinate mapping and output size).
   The zoom-factor lists keep the original `np.arange` float quirk: severities 1 and 2 use 7
   and 12 factors (1.00..1.06 and 1.00..1.11, end points included), severities 3-5 use 16,
   21 and 26 (1.00..1.15, 1.20, 1.25).
8. Pixelate used Pillow's BOX resize on uint8 images (down to `int(32 c)`, back up). The
   identical Pillow BOX filter coefficients are applied in floating point (no 8-bit rounding
   between the two resizes).
9. Impulse noise used `skimage.util.random_noise(mode="s&p")`; this is the same per-element
   Bernoulli model (each channel value independently flipped with probability `amount`, to 1
   or 0 with equal odds). Only the random source differs (scikit-image of that era used
   `np.random.choice`); given the same generator this reproduces today's
   `random_noise(..., rng=seed)` exactly (tested).
10. JPEG compression still uses Pillow (quality 80, 65, 58, 50, 40, Pillow's default chroma
    subsampling); float inputs are rounded to uint8 first. Results can differ by a grey level
    between libjpeg builds.
11. Brightness is done in closed form: adding `c` to the HSV value channel and converting back
    is `x * min(V + c, 1) / V` with `V = max(R, G, B)` (and grey `min(c, 1)` where `V = 0`),
    which is what `skimage.color` computes, up to float rounding (tested).
12. Fog keeps the original formula, including `x.max()` over the whole image: a completely
    black image stays black. The diamond-square fractal is the original algorithm (including
    its `wibble * uniform(-wibble, wibble)` amplitude), batched.
"""

from tempscale_tf.corruptions.registry import (
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    STOCHASTIC_CORRUPTIONS,
    corrupt,
)
from tempscale_tf.corruptions.tfdata import corrupt_dataset

__all__ = [
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "STOCHASTIC_CORRUPTIONS",
    "corrupt",
    "corrupt_dataset",
    "load_cifar10_c",
]


def __getattr__(name):
    # `load_cifar10_c` is imported on first use: `tempscale_tf.data` imports this package's
    # registry (and TensorFlow), so an eager import here would be circular.
    if name == "load_cifar10_c":
        from tempscale_tf.data.cifar10c import load_cifar10_c

        return load_cifar10_c
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"load_cifar10_c"})
