"""Blur corruptions: defocus, (frosted) glass, motion and zoom blur.

The op signature `op(x, c, rng, s)` is described in `noise`. Blur radii, sigmas, motion-blur
lengths and glass-blur displacements are in pixels of a 32x32 image and are multiplied by `s`.
Gaussian blur, one of the four extra corruptions that the paper holds out for validation
(`EXTRA_CORRUPTIONS`), is not generated: it can only be loaded from the official files.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage

from tempscale_tf.corruptions.kernels import (
    clipped_zoom,
    clipped_zoom_matrix,
    gaussian_filter_hw,
    motion_blur_batch,
)


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


def defocus_blur(x, c, rng, s):
    """Disk blur (deterministic).

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: `(disk radius, anti-aliasing sigma)` in pixels at 32x32.
      rng: the `numpy.random.Generator` (unused).
      s: the spatial scale `min(H, W) / 32`.
    """
    kernel = _defocus_kernel(c[0] * s, c[1] * s)
    return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")


def _glass_shuffle(x: np.ndarray, offsets: np.ndarray, d: int) -> np.ndarray:
    """One pass of the official local pixel shuffle, vectorised (see note 4 of the package
    docstring, `tempscale_tf.corruptions`).

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


def glass_blur(x, c, rng, s):
    """Blur, local shuffle, blur. Draws, per iteration, offsets `[N, H - 2d, W - 2d, 2]`.

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: `(blur sigma, maximum displacement d, shuffle iterations)`, sigma and d in pixels at
        32x32.
      rng: the `numpy.random.Generator`.
      s: the spatial scale `min(H, W) / 32`.
    """
    sigma, d, iterations = c[0] * s, max(1, int(round(c[1] * s))), c[2]
    n, h, w = x.shape[:3]
    x = gaussian_filter_hw(x, sigma, "nearest")
    for _ in range(iterations):
        shape = (n, max(h - 2 * d, 0), max(w - 2 * d, 0), 2)
        x = _glass_shuffle(x, rng.integers(-d, d, size=shape), d)
    return gaussian_filter_hw(x, sigma, "nearest")


def motion_blur(x, c, rng, s):
    """ImageMagick-style motion blur; draws angles `uniform(-45, 45, N)`.

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: `(radius, sigma)` of the line kernel in pixels at 32x32.
      rng: the `numpy.random.Generator`.
      s: the spatial scale `min(H, W) / 32`.
    """
    angles = rng.uniform(-45.0, 45.0, size=x.shape[0])
    return motion_blur_batch(x, c[0] * s, c[1] * s, angles)


def _zoom_factors(severity: int) -> np.ndarray:
    stop = (1.06, 1.11, 1.16, 1.21, 1.26)[severity - 1]
    return np.arange(1, stop, 0.01)  # keeps the official float end-point quirk


@functools.lru_cache(maxsize=16)
def _zoom_blur_operator(h: int, w: int, severity: int) -> np.ndarray:
    """`[H * W, H * W]` matrix of the whole zoom blur (identity plus all zooms, averaged)."""
    zooms = _zoom_factors(severity)
    k = np.eye(h * w)
    for zoom in zooms:
        k += np.kron(clipped_zoom_matrix(h, float(zoom)), clipped_zoom_matrix(w, float(zoom)))
    k /= len(zooms) + 1
    k.flags.writeable = False
    return k


def zoom_blur(x, c, rng, s):
    """Average of the image and its central zooms (deterministic); `c` is the severity.

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: the severity 1..5, which selects the zoom factors (`_zoom_factors`).
      rng: the `numpy.random.Generator` (unused).
      s: the spatial scale (unused: zoom factors are relative).
    """
    n, h, w, ch = x.shape
    if h * w <= 32 * 32:  # one matrix product with the precomputed linear operator
        flat = np.moveaxis(x.reshape(n, h * w, ch), 1, 0).reshape(h * w, n * ch)
        out = _zoom_blur_operator(h, w, c) @ flat
        return np.moveaxis(out.reshape(h * w, n, ch), 0, 1).reshape(x.shape)
    out = x.copy()
    for zoom in _zoom_factors(c):
        out += clipped_zoom(x, float(zoom))
    return out / (len(_zoom_factors(c)) + 1)
