"""CIFAR-10-C common corruptions, vectorised in numpy, plus loaders for the official release.

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

Randomness: every call builds its own `numpy.random.default_rng(seed)`; no global state is read
or written. One generator stream serves the whole batch, so the images of a batch get
independent noise, and the same (images, seed) always gives the same output. Batches are
processed in chunks of `_CHUNK` images (memory bound); the stream simply continues across
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

from __future__ import annotations

import functools
import io
import math
import numbers
import os
import pathlib

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "STOCHASTIC_CORRUPTIONS",
    "corrupt",
    "corrupt_dataset",
    "load_cifar10_c",
]

CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
"""The 15 CIFAR-10-C benchmark corruptions, in the standard order."""

EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The 4 extra corruptions of the official release; `load_cifar10_c` can load them only."""

SEVERITIES = (1, 2, 3, 4, 5)

STOCHASTIC_CORRUPTIONS = frozenset(
    {
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "glass_blur",
        "motion_blur",
        "snow",
        "frost",
        "fog",
        "elastic_transform",
    }
)
"""Corruptions whose output depends on the seed (the others are deterministic)."""

_CHUNK = 512  # images processed at once; bounds the memory of the gathers

_MIN_SIZE = 4

_ZENODO = "https://zenodo.org/record/2535967"

# TFDS `cifar10_corrupted` config names differ from the file names for two corruptions.
_TFDS_NAMES = {"glass_blur": "frosted_glass_blur", "elastic_transform": "elastic"}


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _check_name(name, valid) -> str:
    if not isinstance(name, str) or name not in valid:
        raise ValueError(f"Unknown corruption {name!r}; valid names are: {', '.join(valid)}")
    return name


def _check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral):
        raise ValueError(
            f"`severity` must be an integer in {SEVERITIES[0]}..{SEVERITIES[-1]}, "
            f"received {severity!r}"
        )
    severity = int(severity)
    if severity not in SEVERITIES:
        raise ValueError(
            f"`severity` must be an integer in {SEVERITIES[0]}..{SEVERITIES[-1]}, "
            f"received {severity}"
        )
    return severity


def _as_image_batch(images) -> tuple[np.ndarray, bool]:
    """Validate `images` and return (array [N, H, W, 3] in its own dtype, was_single_image).

    uint8 arrays are scaled later (per chunk); float arrays must be finite and in [0, 1].
    """
    x = np.asarray(images)
    if x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise ValueError(
            "`images` must have shape [N, H, W, 3] or [H, W, 3] (RGB, channels last), "
            f"received shape {x.shape}"
        )
    single = x.ndim == 3
    if single:
        x = x[None]
    h, w = x.shape[1:3]
    if h < _MIN_SIZE or w < _MIN_SIZE:
        raise ValueError(
            f"images must be at least {_MIN_SIZE}x{_MIN_SIZE} pixels, received shape "
            f"{np.asarray(images).shape}"
        )
    if x.dtype == np.uint8:
        return x, single
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            "`images` must be floating point in [0, 1] or uint8 in [0, 255], "
            f"received dtype {x.dtype}"
        )
    if x.size:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("`images` contains NaN or infinite values")
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                "float `images` must lie in [0, 1] (they are not clipped), received values "
                f"in [{lo:.6g}, {hi:.6g}]; pass uint8 for 0..255 data"
            )
    return x, single


# --------------------------------------------------------------------------------------------
# Shared building blocks (all batched over the leading axis)
# --------------------------------------------------------------------------------------------


def _gaussian_filter_hw(x: np.ndarray, sigma: float, mode: str, truncate: float = 4.0):
    """Gaussian blur of the two spatial axes of `[N, H, W]` or `[N, H, W, C]` arrays."""
    if sigma <= 0:
        return x
    sig = (0.0, sigma, sigma) + (0.0,) * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def _line_gather(x: np.ndarray, weights, off_rows: np.ndarray, off_cols: np.ndarray):
    """Weighted sum of shifted copies with edge-replicated borders (a per-image line kernel).

    Args:
      x: `[N, H, W, C]`.
      weights: `[K]` tap weights.
      off_rows, off_cols: `[N, K]` integer offsets; tap `k` of image `n` reads
        `x[n, clip(i + off_rows[n, k]), clip(j + off_cols[n, k])]`.

    Returns:
      `[N, H, W, C]` float64: `sum_k weights[k] * shifted_k`, i.e. `scipy.ndimage.correlate`
      with a kernel holding `weights[k]` at `(off_rows[n, k], off_cols[n, k])` and
      `mode="nearest"`.
    """
    n, h, w = x.shape[:3]
    batch = np.arange(n)[:, None, None]
    rows, cols = np.arange(h), np.arange(w)
    out = np.zeros(x.shape, dtype=np.float64)
    for k, weight in enumerate(weights):
        r = np.clip(rows[None, :] + off_rows[:, k, None], 0, h - 1)
        c = np.clip(cols[None, :] + off_cols[:, k, None], 0, w - 1)
        out += weight * x[batch, r[:, :, None], c[:, None, :]]
    return out


def _motion_blur_taps(radius: float, sigma: float, angles_deg: np.ndarray):
    """ImageMagick `MotionBlurImage` taps: weights `[K]` and integer offsets `[N, K]` x 2.

    `K = 2 * ceil(radius) + 1`; tap `i` has weight proportional to `exp(-i^2 / (2 sigma^2))`
    and sits at column offset `ceil(i cos(a) - 0.5)`, row offset `ceil(i sin(a) - 0.5)`.
    """
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    weights = np.exp(-(i**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))[:, None]
    off_cols = np.ceil(i[None, :] * np.cos(a) - 0.5).astype(np.int64)
    off_rows = np.ceil(i[None, :] * np.sin(a) - 0.5).astype(np.int64)
    return weights, off_rows, off_cols


def _motion_blur_batch(x, radius, sigma, angles_deg):
    weights, off_rows, off_cols = _motion_blur_taps(radius, sigma, angles_deg)
    return _line_gather(x, weights, off_rows, off_cols)


def _clipped_zoom_matrix(n: int, zoom: float) -> np.ndarray:
    """`[n, n]` matrix `M` with `M @ v == clipped_zoom(v, zoom)` along one axis.

    `clipped_zoom` (official helper) crops the central `ceil(n / zoom)` pixels, resizes them
    with `scipy.ndimage.zoom(order=1)` (output length `round(ch * zoom)`, output pixel `j`
    sampling input coordinate `j * (ch - 1) / (out - 1)`) and keeps the central `n`.
    """
    ch = int(math.ceil(n / zoom))
    top = (n - ch) // 2
    out_n = int(round(ch * zoom))
    step = (ch - 1) / (out_n - 1) if out_n > 1 else 0.0
    coords = np.arange(out_n) * step
    trim = (out_n - n) // 2
    coords = np.clip(coords[trim : trim + n], 0.0, ch - 1)
    i0 = np.floor(coords).astype(np.int64)
    frac = coords - i0
    i1 = np.minimum(i0 + 1, ch - 1)
    m = np.zeros((n, n), dtype=np.float64)
    np.add.at(m, (np.arange(n), top + i0), 1.0 - frac)
    np.add.at(m, (np.arange(n), top + i1), frac)
    return m


def _separable(x: np.ndarray, mr: np.ndarray, mc: np.ndarray) -> np.ndarray:
    """`out[n, i, l, c] = sum_jk mr[i, j] * x[n, j, k, c] * mc[l, k]` for `x [N, H, W, C]`."""
    n, h, w, ch = x.shape
    y = np.matmul(mr, x.reshape(n, h, w * ch)).reshape(n * mr.shape[0], w, ch)
    return np.matmul(mc, y).reshape(n, mr.shape[0], mc.shape[0], ch)


def _clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
    """Batched official `clipped_zoom` of the spatial axes of `[N, H, W, C]`."""
    return _separable(
        x, _clipped_zoom_matrix(x.shape[1], zoom), _clipped_zoom_matrix(x.shape[2], zoom)
    )


@functools.lru_cache(maxsize=16)
def _zoom_blur_operator(h: int, w: int, severity: int) -> np.ndarray:
    """`[H * W, H * W]` matrix of the whole zoom blur (identity plus all zooms, averaged)."""
    zooms = _zoom_factors(severity)
    k = np.eye(h * w)
    for zoom in zooms:
        k += np.kron(_clipped_zoom_matrix(h, float(zoom)), _clipped_zoom_matrix(w, float(zoom)))
    k /= len(zooms) + 1
    k.flags.writeable = False
    return k


def _pil_box_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`[out, in]` matrix of Pillow's BOX resampling coefficients (`Resample.c`)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        t = (np.arange(xmin, xmax) - center + 0.5) / filterscale
        w = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
        if w.sum() > 0:
            w /= w.sum()
        m[xx, xmin:xmax] = w
    return m


def _reflect_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map integer indices into `[0, n)`: 'mirror' = `d c b | a b c d | c b a` (OpenCV
    BORDER_REFLECT_101, scipy 'mirror'); 'reflect' = `c b a | a b c | c b a` (scipy 'reflect')."""
    if n == 1:
        return np.zeros_like(i)
    if mode == "mirror":
        period = 2 * n - 2
        i = np.mod(i, period)
        return np.where(i >= n, period - i, i)
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i >= n, period - 1 - i, i)


def _bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """Bilinear samples of `x [N, H, W, C]` at real positions `rows, cols [N, H, W]`."""
    n, h, w = x.shape[:3]
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    fr = (rows - r0)[..., None]
    fc = (cols - c0)[..., None]
    r0 = r0.astype(np.int64)
    c0 = c0.astype(np.int64)
    ra, rb = _reflect_index(r0, h, mode), _reflect_index(r0 + 1, h, mode)
    ca, cb = _reflect_index(c0, w, mode), _reflect_index(c0 + 1, w, mode)
    b = np.arange(n)[:, None, None]
    top = x[b, ra, ca] * (1.0 - fc) + x[b, ra, cb] * fc
    bottom = x[b, rb, ca] * (1.0 - fc) + x[b, rb, cb] * fc
    return top * (1.0 - fr) + bottom * fr


def _plasma_fractal(rng: np.random.Generator, n: int, mapsize: int, wibbledecay: float):
    """Batched diamond-square heightmaps `[n, mapsize, mapsize]` in [0, 1] (official algorithm).

    Draws, per level, `uniform(-wibble, wibble)` for the square step, then the two diamond
    steps, each of shape `[n, ...]`.
    """
    maparray = np.zeros((n, mapsize, mapsize), dtype=np.float64)
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        # Squares: the centre of each square gets the mean of its corners plus noise.
        corners = maparray[:, 0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = corners + np.roll(corners, shift=-1, axis=1)
        squareaccum += np.roll(squareaccum, shift=-1, axis=2)
        maparray[:, half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squareaccum)
        # Diamonds: edge midpoints get the mean of their four neighbours plus noise.
        drgrid = maparray[:, half:mapsize:stepsize, half:mapsize:stepsize]
        ulgrid = maparray[:, 0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = (drgrid + np.roll(drgrid, 1, axis=1)) + (ulgrid + np.roll(ulgrid, -1, axis=2))
        maparray[:, 0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = (drgrid + np.roll(drgrid, 1, axis=2)) + (ulgrid + np.roll(ulgrid, -1, axis=1))
        maparray[:, half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min(axis=(1, 2), keepdims=True)
    return maparray / maparray.max(axis=(1, 2), keepdims=True)


def _standardise(a: np.ndarray) -> np.ndarray:
    mean = a.mean(axis=(1, 2), keepdims=True)
    std = a.std(axis=(1, 2), keepdims=True)
    return (a - mean) / np.maximum(std, 1e-12)


def _frost_texture(rng: np.random.Generator, n: int, h: int, w: int, s: float) -> np.ndarray:
    """Procedural frost layer `[n, h, w, 3]` in [0, 1] (stands in for the frost photographs).

    A low-frequency haze, fine grain and crystalline needles: sparse seeds smeared into tapered
    line segments at three orientations 60 degrees apart (hexagonal ice), with a random base
    orientation per image; tinted bluish-white. Draws: haze normals `[n, h, w]`, seed
    uniforms `[n, h, w]`, seed brightness uniforms `[n, h, w]`, base angles `[n]`, grain normals
    `[n, h, w]`.
    """
    haze = _standardise(_gaussian_filter_hw(rng.standard_normal((n, h, w)), 4.0 * s, "wrap"))
    seeds = (rng.random((n, h, w)) < 0.03) * rng.uniform(0.5, 1.0, (n, h, w))
    family = rng.integers(0, 3, size=(n, h, w))
    base_angle = rng.uniform(0.0, np.pi, size=n)
    grain = _standardise(_gaussian_filter_hw(rng.standard_normal((n, h, w)), 0.7 * s, "wrap"))

    half = max(2, int(round(6 * s)))
    t = np.arange(-half, half + 1, dtype=np.float64)
    weights = 1.0 - np.abs(t) / (half + 1)  # tapered needle
    needles = np.zeros((n, h, w, 1))
    for k in range(3):
        a = base_angle[:, None] + k * np.pi / 3
        off_rows = np.rint(t[None, :] * np.sin(a)).astype(np.int64)
        off_cols = np.rint(t[None, :] * np.cos(a)).astype(np.int64)
        seeds_k = (seeds * (family == k))[..., None]
        needles = needles + _line_gather(seeds_k, weights, off_rows, off_cols)
    needles = 1.0 - np.exp(-2.0 * needles[..., 0])

    intensity = np.clip(0.42 + 0.12 * haze + 0.5 * needles + 0.03 * grain, 0.0, 1.0)
    tint = np.array([0.82, 0.9, 1.0])
    return np.clip(intensity[..., None] * tint + 0.08 * (1.0 - tint), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# The corruptions. Each takes x float64 [N, H, W, 3] in [0, 1], the severity's constants `c`,
# the generator and the spatial scale `s`, and returns float64 [N, H, W, 3] (clipped later).
# --------------------------------------------------------------------------------------------


def _gaussian_noise(x, c, rng, s):
    """`x + normal(0, c)`; draws normals of shape `x.shape`."""
    return x + rng.normal(loc=0.0, scale=c, size=x.shape)


def _shot_noise(x, c, rng, s):
    """`poisson(x * c) / c`; draws Poisson counts of shape `x.shape`."""
    return rng.poisson(x * c) / c


def _impulse_noise(x, c, rng, s):
    """Salt & pepper: draws `random(x.shape) <= c` (flip), then `random(x.shape) <= 0.5` (salt)."""
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def _defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The official anti-aliased disk, cropped to its non-zero support `[k, k]`."""
    gk = 3 if radius <= 8 else 5  # the official GaussianBlur ksize
    half = int(math.ceil(radius)) + gk // 2
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    i = np.arange(-(gk // 2), gk // 2 + 1, dtype=np.float64)
    g = np.exp(-(i**2) / (2.0 * alias_blur**2))
    g /= g.sum()
    disk = ndimage.correlate1d(disk, g, axis=0, mode="constant")
    return ndimage.correlate1d(disk, g, axis=1, mode="constant")


def _defocus_blur(x, c, rng, s):
    """Disk blur (deterministic)."""
    kernel = _defocus_kernel(c[0] * s, c[1] * s)
    return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")


def _glass_shuffle(x: np.ndarray, offsets: np.ndarray, d: int) -> np.ndarray:
    """One pass of the official local pixel shuffle, vectorised (see module note 4).

    Args:
      x: `[N, H, W, C]`.
      offsets: `[N, H - 2d, W - 2d, 2]` integers in `[-d, d - 1]` as `(dx, dy)` for the pixels
        `h, w` in `d + 1 .. H - d` (row-major).
      d: the maximum displacement.

    Returns:
      `[N, H, W, C]` with `out[:, h, w] = x[:, h + dy, w + dx]` in that window, else `x`.
    """
    n, h, w = x.shape[:3]
    rows = np.arange(d + 1, h - d + 1)
    cols = np.arange(d + 1, w - d + 1)
    out = x.copy()
    if rows.size == 0 or cols.size == 0:
        return out
    src_r = rows[None, :, None] + offsets[..., 1]
    src_c = cols[None, None, :] + offsets[..., 0]
    out[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = x[
        np.arange(n)[:, None, None], src_r, src_c
    ]
    return out


def _glass_blur(x, c, rng, s):
    """Blur, local shuffle, blur. Draws, per iteration, offsets `[N, H - 2d, W - 2d, 2]`."""
    sigma, d, iterations = c[0] * s, max(1, int(round(c[1] * s))), c[2]
    n, h, w = x.shape[:3]
    x = _gaussian_filter_hw(x, sigma, "nearest")
    for _ in range(iterations):
        shape = (n, max(h - 2 * d, 0), max(w - 2 * d, 0), 2)
        x = _glass_shuffle(x, rng.integers(-d, d, size=shape), d)
    return _gaussian_filter_hw(x, sigma, "nearest")


def _motion_blur(x, c, rng, s):
    """ImageMagick-style motion blur; draws angles `uniform(-45, 45, N)`."""
    angles = rng.uniform(-45.0, 45.0, size=x.shape[0])
    return _motion_blur_batch(x, c[0] * s, c[1] * s, angles)


def _zoom_factors(severity: int) -> np.ndarray:
    stop = (1.06, 1.11, 1.16, 1.21, 1.26)[severity - 1]
    return np.arange(1, stop, 0.01)  # keeps the official float end-point quirk


def _zoom_blur(x, c, rng, s):
    """Average of the image and its central zooms (deterministic); `c` is the severity."""
    n, h, w, ch = x.shape
    if h * w <= 32 * 32:  # one matrix product with the precomputed linear operator
        flat = np.moveaxis(x.reshape(n, h * w, ch), 1, 0).reshape(h * w, n * ch)
        out = _zoom_blur_operator(h, w, c) @ flat
        return np.moveaxis(out.reshape(h * w, n, ch), 0, 1).reshape(x.shape)
    out = x.copy()
    for zoom in _zoom_factors(c):
        out += _clipped_zoom(x, float(zoom))
    return out / (len(_zoom_factors(c)) + 1)


def _snow(x, c, rng, s):
    """Snow. Draws flake normals `[N, H, W]`, then streak angles `uniform(-135, -45, N)`."""
    n = x.shape[0]
    flakes = rng.normal(loc=c[0], scale=c[1], size=x.shape[:3])[..., None]
    flakes = _clipped_zoom(flakes, c[2] * max(s, 1.0))
    flakes[flakes < c[3]] = 0.0
    flakes = np.clip(flakes, 0.0, 1.0)
    angles = rng.uniform(-135.0, -45.0, size=n)
    flakes = _motion_blur_batch(flakes, c[4] * s, c[5] * s, angles)
    gray = x @ np.array([0.299, 0.587, 0.114])
    x = c[6] * x + (1.0 - c[6]) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
    return x + flakes + flakes[:, ::-1, ::-1]


def _frost(x, c, rng, s):
    """`c0 * x + c1 * frost` with a synthetic frost texture (module note 3)."""
    n, h, w = x.shape[:3]
    return c[0] * x + c[1] * _frost_texture(rng, n, h, w, s)


def _fog(x, c, rng, s):
    """Plasma-fractal fog; draws the fractal's uniforms (see `_plasma_fractal`)."""
    n, h, w = x.shape[:3]
    mapsize = max(2, 1 << (max(h, w) - 1).bit_length())
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    fog = _plasma_fractal(rng, n, mapsize, c[1])[:, :h, :w, None]
    return (x + c[0] * fog) * max_val / (max_val + c[0])


def _brightness(x, c, rng, s):
    """HSV value `+ c` (closed form of skimage's rgb2hsv / hsv2rgb round trip)."""
    v = x.max(axis=-1, keepdims=True)
    v_new = np.minimum(v + c, 1.0)
    ratio = np.divide(v_new, v, out=np.zeros_like(v), where=v > 0)
    return np.where(v > 0, x * ratio, v_new)


def _contrast(x, c, rng, s):
    """`(x - mean) * c + mean` with per-image, per-channel means."""
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def _elastic_transform(x, c, rng, s):
    """Random affine warp then a smooth displacement field.

    Draws the affine jitter `uniform(-c2, c2, [N, 3, 2])`, then the column displacement noise
    `uniform(-1, 1, [N, H, W])`, then the row displacement noise (same shape).
    """
    n, h, w = x.shape[:3]
    size = min(h, w)  # the official IMSIZE
    alpha, sigma, affine = c[0] * size, c[1] * size, c[2] * size
    centre = np.array([w // 2, h // 2], dtype=np.float64)  # (x, y)
    sq = size // 3
    pts1 = np.array([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])
    pts2 = pts1[None] + rng.uniform(-affine, affine, size=(n, 3, 2))
    # Forward affine M (pts1 -> pts2): [x', y'] = A [x, y] + b; warpAffine samples at M^-1.
    p = np.concatenate([pts1, np.ones((3, 1))], axis=1)
    mt = np.linalg.solve(np.broadcast_to(p, (n, 3, 3)), pts2)  # [n, 3, 2] = M^T
    a = np.transpose(mt[:, :2, :], (0, 2, 1))
    b = mt[:, 2, :]
    a_inv = np.linalg.inv(a)
    b_inv = -np.einsum("nij,nj->ni", a_inv, b)
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    src_c = (a_inv[:, 0, 0, None, None] * cols + a_inv[:, 0, 1, None, None] * rows) + b_inv[
        :, 0, None, None
    ]
    src_r = (a_inv[:, 1, 0, None, None] * cols + a_inv[:, 1, 1, None, None] * rows) + b_inv[
        :, 1, None, None
    ]
    warped = _bilinear(x, src_r, src_c, "mirror")

    dx = _gaussian_filter_hw(rng.uniform(-1, 1, size=(n, h, w)), sigma, "reflect", 3.0) * alpha
    dy = _gaussian_filter_hw(rng.uniform(-1, 1, size=(n, h, w)), sigma, "reflect", 3.0) * alpha
    return _bilinear(warped, rows[None] + dy, cols[None] + dx, "reflect")


def _pixelate(x, c, rng, s):
    """Pillow BOX down to `int(size * c)` and back up (deterministic)."""
    h, w = x.shape[1:3]
    mr = _pil_box_matrix(max(1, int(h * c)), h) @ _pil_box_matrix(h, max(1, int(h * c)))
    mc = _pil_box_matrix(max(1, int(w * c)), w) @ _pil_box_matrix(w, max(1, int(w * c)))
    return _separable(x, mr, mc)


def _jpeg_compression(x, c, rng, s):
    """Pillow JPEG round trip at quality `c`, image by image (deterministic)."""
    x8 = np.round(x * 255.0).astype(np.uint8)
    out = np.empty(x.shape, dtype=np.float64)
    for i, image in enumerate(x8):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(c))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"), dtype=np.float64) / 255.0
    return out


_OPS = {
    "gaussian_noise": (_gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": (_shot_noise, (500, 250, 100, 75, 50)),
    "impulse_noise": (_impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "defocus_blur": (_defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    "glass_blur": (
        _glass_blur,
        ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    ),
    "motion_blur": (_motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))),
    "zoom_blur": (_zoom_blur, SEVERITIES),  # factors: `_zoom_factors(severity)`
    "snow": (
        _snow,
        (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
    ),
    "frost": (_frost, ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))),
    "fog": (_fog, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    "brightness": (_brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "contrast": (_contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    # (alpha, sigma, affine range) as fractions of the image size (IMSIZE = 32 for CIFAR).
    "elastic_transform": (
        _elastic_transform,
        ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    ),
    "pixelate": (_pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg_compression": (_jpeg_compression, (80, 65, 58, 50, 40)),
}
assert tuple(_OPS) == CORRUPTIONS


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def corrupt(images, name: str, severity: int, seed=0) -> np.ndarray:
    """Apply one CIFAR-10-C corruption at one severity.

    Args:
      images: `[N, H, W, 3]` or `[H, W, 3]` RGB images (numpy array or eager tensor), either
        floating point in [0, 1] (values outside raise; nothing is clipped) or uint8 in
        0..255. `H, W >= 4`; constants are exact for 32x32 and scaled otherwise (see module
        docstring).
      name: one of `CORRUPTIONS`.
      severity: integer in 1..5.
      seed: anything `numpy.random.default_rng` accepts (int, sequence of ints,
        `SeedSequence`). The same images and seed always give the same output; images within
        a batch get independent noise. Ignored by the deterministic corruptions (those not in
        `STOCHASTIC_CORRUPTIONS`).

    Returns:
      float32 array of the input's shape with values in [0, 1].

    Raises:
      ValueError: unknown `name`, `severity` not in 1..5, a shape other than `[N, H, W, 3]` /
        `[H, W, 3]`, images smaller than 4x4, an unsupported dtype, or float values outside
        [0, 1] (or NaN).
    """
    name = _check_name(name, CORRUPTIONS)
    severity = _check_severity(severity)
    x, single = _as_image_batch(images)
    n, h, w = x.shape[:3]
    op, constants = _OPS[name]
    c = constants[severity - 1]
    scale = min(h, w) / 32.0
    rng = np.random.default_rng(seed)
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, n, _CHUNK):
        chunk = x[start : start + _CHUNK].astype(np.float64)
        if x.dtype == np.uint8:
            chunk /= 255.0
        out[start : start + _CHUNK] = np.clip(op(chunk, c, rng, scale), 0.0, 1.0)
    return out[0] if single else out


def corrupt_dataset(dataset, name: str, severity: int, seed: int = 0, batch_size=None):
    """Corrupt the images of a `tf.data.Dataset` of `(images, labels)` elements.

    Each element's images go through `corrupt` inside `tf.numpy_function`, with the seed
    `(seed, element_index)`, so the result is deterministic for a given dataset order and
    batching (and independent of `tf.data` parallelism). Labels pass through unchanged.

    Args:
      dataset: `tf.data.Dataset` yielding `(images, labels)` with images `[B, H, W, 3]` or
        `[H, W, 3]`, float in [0, 1] or uint8.
      name: one of `CORRUPTIONS`.
      severity: integer in 1..5.
      seed: non-negative int.
      batch_size: if given, the dataset is first (un)batched to batches of this size, so the
        corruption, and its noise, no longer depend on the input batching.

    Returns:
      `tf.data.Dataset` of `(float32 images [B, H, W, 3] in [0, 1], labels)`.
    """
    import tensorflow as tf

    name = _check_name(name, CORRUPTIONS)
    severity = _check_severity(severity)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, received {seed!r}")
    seed = int(seed)
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"`dataset` must yield (images, labels) pairs, its element_spec is {spec}")
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise ValueError(f"`batch_size` must be a positive int, received {batch_size!r}")
        if batch_size <= 0:
            raise ValueError(f"`batch_size` must be a positive int, received {batch_size}")
        if spec[0].shape.rank == 4:
            dataset = dataset.unbatch()
        dataset = dataset.batch(int(batch_size))
        spec = dataset.element_spec
    shape = spec[0].shape
    if shape.rank not in (3, 4) or shape[-1] != 3:
        raise ValueError(
            f"`dataset` images must be [B, H, W, 3] or [H, W, 3], received shape {shape}"
        )

    def _corrupt_numpy(index, images):
        return corrupt(images, name, severity, seed=(seed, int(index)))

    def _map(index, element):
        images, labels = element
        out = tf.numpy_function(_corrupt_numpy, [index, images], tf.float32, stateful=False)
        out.set_shape(images.shape)
        return out, labels

    return dataset.enumerate().map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _cifar10_c_folder(data_dir: pathlib.Path, name: str):
    """The folder holding `<name>.npy` and `labels.npy`, or None."""
    for folder in (data_dir / "CIFAR-10-C", data_dir):
        if (folder / f"{name}.npy").is_file() and (folder / "labels.npy").is_file():
            return folder
    return None


def _tfds_prepared(data_dir: pathlib.Path, config: str) -> bool:
    folder = data_dir / "cifar10_corrupted" / config
    return folder.is_dir() and any(folder.glob("*/dataset_info.json"))


def load_cifar10_c(data_dir, name: str, severity: int):
    """Load one (corruption, severity) block of the official CIFAR-10-C release. Never downloads.

    Looks for, in order:

    1. `<data_dir>/CIFAR-10-C/<name>.npy` and `<data_dir>/CIFAR-10-C/labels.npy` (the release
       layout; `data_dir` may also be the `CIFAR-10-C` folder itself). `<name>.npy` is uint8
       `[50000, 32, 32, 3]`: severities 1..5 stacked in blocks of 10,000; `labels.npy` holds
       the 10,000 test labels repeated 5 times (or just 10,000).
    2. A tensorflow-datasets build of `cifar10_corrupted/<config>_<severity>` in `data_dir`
       (configs are named like the files except `frosted_glass_blur` for glass_blur and
       `elastic` for elastic_transform), loaded with `download=False`.

    Args:
      data_dir: folder (str or path-like).
      name: one of `CORRUPTIONS` or `EXTRA_CORRUPTIONS`.
      severity: integer in 1..5.

    Returns:
      `(images, labels)`: float32 `[n, 32, 32, 3]` in [0, 1] (n = 10,000 for the release) and
      int64 `[n]`. From the `.npy` files the order is the CIFAR-10 test order; a TFDS build
      stores its examples shuffled, so that route returns TFDS's order (pairs stay matched).

    Raises:
      ValueError: bad `name` / `severity`, or files whose shapes do not match the layout.
      FileNotFoundError: neither source is present; the message names the expected files.
    """
    name = _check_name(name, CORRUPTIONS + EXTRA_CORRUPTIONS)
    severity = _check_severity(severity)
    data_dir = pathlib.Path(os.fspath(data_dir)).expanduser()

    folder = _cifar10_c_folder(data_dir, name)
    if folder is not None:
        return _load_npy_block(folder, name, severity)

    config = f"{_TFDS_NAMES.get(name, name)}_{severity}"
    if _tfds_prepared(data_dir, config):
        import tensorflow_datasets as tfds

        images, labels = tfds.as_numpy(
            tfds.load(
                f"cifar10_corrupted/{config}",
                split="test",
                data_dir=os.fspath(data_dir),
                download=False,
                as_supervised=True,
                batch_size=-1,
            )
        )
        return images.astype(np.float32) / 255.0, labels.astype(np.int64)

    folder = data_dir if data_dir.name == "CIFAR-10-C" else data_dir / "CIFAR-10-C"
    expected = [folder / f"{name}.npy", folder / "labels.npy"]
    missing = [str(p) for p in expected if not p.is_file()]
    raise FileNotFoundError(
        f"CIFAR-10-C files for {name!r} not found. Expected {expected[0].name} and "
        f"{expected[1].name} in the folder {folder} (missing: {', '.join(missing)}). "
        "Get them from Hendrycks & Dietterich's CIFAR-10-C release (Zenodo record 2535967, "
        f"{_ZENODO}, file CIFAR-10-C.tar) and extract it into {data_dir}, so that "
        f"{folder / (name + '.npy')} exists. Alternatively prepare the tensorflow-datasets "
        f"config 'cifar10_corrupted/{config}' with data_dir={data_dir}. Nothing is downloaded "
        "automatically."
    )


def _load_npy_block(folder: pathlib.Path, name: str, severity: int):
    images_path, labels_path = folder / f"{name}.npy", folder / "labels.npy"
    images = np.load(images_path, mmap_mode="r")
    labels = np.load(labels_path)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] % len(SEVERITIES):
        raise ValueError(
            f"{images_path} must hold [5 * n, H, W, 3] images (five severity blocks), "
            f"found shape {images.shape}"
        )
    n = images.shape[0] // len(SEVERITIES)
    if labels.ndim != 1 or labels.shape[0] not in (n, images.shape[0]):
        raise ValueError(
            f"{labels_path} must hold {n} or {images.shape[0]} labels to match {images_path}, "
            f"found shape {labels.shape}"
        )
    block = np.asarray(images[(severity - 1) * n : severity * n])
    if block.dtype == np.uint8:
        block = block.astype(np.float32) / 255.0
    else:
        block = block.astype(np.float32)
    return block, labels[:n].astype(np.int64)
