"""Weather corruptions: snow, frost, fog and brightness.

The op signature `op(x, c, rng, s)` is described in `noise`. Brightness is a weather corruption
in Hendrycks & Dietterich's grouping (their Figure 1: noise, blur, weather, digital), so it is
here. Spatter, one of the four extra corruptions that the paper holds out for validation
(`EXTRA_CORRUPTIONS`), is not generated: it can only be loaded from the official files.
"""

from __future__ import annotations

import numpy as np

from tempscale_tf.corruptions.kernels import (
    clipped_zoom,
    gaussian_filter_hw,
    line_gather,
    motion_blur_batch,
    plasma_fractal,
)


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
    haze = _standardise(gaussian_filter_hw(rng.standard_normal((n, h, w)), 4.0 * s, "wrap"))
    seeds = (rng.random((n, h, w)) < 0.03) * rng.uniform(0.5, 1.0, (n, h, w))
    family = rng.integers(0, 3, size=(n, h, w))
    base_angle = rng.uniform(0.0, np.pi, size=n)
    grain = _standardise(gaussian_filter_hw(rng.standard_normal((n, h, w)), 0.7 * s, "wrap"))

    half = max(2, int(round(6 * s)))
    t = np.arange(-half, half + 1, dtype=np.float64)
    weights = 1.0 - np.abs(t) / (half + 1)  # tapered needle
    needles = np.zeros((n, h, w, 1))
    for k in range(3):
        a = base_angle[:, None] + k * np.pi / 3
        off_rows = np.rint(t[None, :] * np.sin(a)).astype(np.int64)
        off_cols = np.rint(t[None, :] * np.cos(a)).astype(np.int64)
        seeds_k = (seeds * (family == k))[..., None]
        needles = needles + line_gather(seeds_k, weights, off_rows, off_cols)
    needles = 1.0 - np.exp(-2.0 * needles[..., 0])

    intensity = np.clip(0.42 + 0.12 * haze + 0.5 * needles + 0.03 * grain, 0.0, 1.0)
    tint = np.array([0.82, 0.9, 1.0])
    return np.clip(intensity[..., None] * tint + 0.08 * (1.0 - tint), 0.0, 1.0)


def snow(x, c, rng, s):
    """Snow. Draws flake normals `[N, H, W]`, then streak angles `uniform(-135, -45, N)`.

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: `(flake mean, flake std, flake zoom, flake threshold, streak radius, streak sigma,
        image weight)`; the streak radius and sigma are in pixels at 32x32.
      rng: the `numpy.random.Generator`.
      s: the spatial scale `min(H, W) / 32`.
    """
    n = x.shape[0]
    flakes = rng.normal(loc=c[0], scale=c[1], size=x.shape[:3])[..., None]
    flakes = clipped_zoom(flakes, c[2] * max(s, 1.0))
    flakes[flakes < c[3]] = 0.0
    flakes = np.clip(flakes, 0.0, 1.0)
    angles = rng.uniform(-135.0, -45.0, size=n)
    flakes = motion_blur_batch(flakes, c[4] * s, c[5] * s, angles)
    gray = x @ np.array([0.299, 0.587, 0.114])
    x = c[6] * x + (1.0 - c[6]) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
    return x + flakes + flakes[:, ::-1, ::-1]


def frost(x, c, rng, s):
    """`c0 * x + c1 * frost` with a synthetic frost texture (note 3 of the package docstring).

    Draws what `_frost_texture` draws.

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: `(image weight c0, frost weight c1)`.
      rng: the `numpy.random.Generator`.
      s: the spatial scale `min(H, W) / 32` (of the texture's haze, grain and needles).
    """
    n, h, w = x.shape[:3]
    return c[0] * x + c[1] * _frost_texture(rng, n, h, w, s)


def fog(x, c, rng, s):
    """Plasma-fractal fog; draws the fractal's uniforms (see `plasma_fractal`).

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: `(fog strength, wibble decay)`; a larger decay gives a smoother fractal.
      rng: the `numpy.random.Generator`.
      s: the spatial scale (unused).
    """
    n, h, w = x.shape[:3]
    mapsize = max(2, 1 << (max(h, w) - 1).bit_length())
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    fog = plasma_fractal(rng, n, mapsize, c[1])[:, :h, :w, None]
    return (x + c[0] * fog) * max_val / (max_val + c[0])


def brightness(x, c, rng, s):
    """HSV value `+ c` (closed form of skimage's rgb2hsv / hsv2rgb round trip).

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: the increase of the HSV value channel.
      rng: the `numpy.random.Generator` (unused).
      s: the spatial scale (unused).
    """
    v = x.max(axis=-1, keepdims=True)
    v_new = np.minimum(v + c, 1.0)
    ratio = np.divide(v_new, v, out=np.zeros_like(v), where=v > 0)
    return np.where(v > 0, x * ratio, v_new)
