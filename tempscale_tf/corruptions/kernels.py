"""Shared numerical kernels of the corruptions, all batched over the leading (image) axis.

Filters (`gaussian_filter_hw`), per-image line kernels applied as gathers (`line_gather`,
`motion_blur_taps`, `motion_blur_batch`: ImageMagick's motion blur, used by motion blur and by
snow's flake streaks), resampling as matrices (`clipped_zoom_matrix`, `separable`,
`clipped_zoom`: scipy's `zoom(order=1)` crops, used by zoom blur and snow; `pil_box_matrix`:
Pillow's BOX filter, used by pixelate), bilinear sampling with reflected borders (`bilinear`,
`reflect_index`: elastic transform) and the diamond-square fractal (`plasma_fractal`: fog).

These are building blocks of the family modules (`noise`, `blur`, `weather`, `digital`), not part
of the public API of `tempscale_tf.corruptions`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def gaussian_filter_hw(x: np.ndarray, sigma: float, mode: str, truncate: float = 4.0):
    """Gaussian blur of the two spatial axes of `[N, H, W]` or `[N, H, W, C]` arrays.

    Args:
      x: `[N, H, W]` or `[N, H, W, C]`; axis 0 (and the channel axis) is not blurred.
      sigma: the standard deviation in pixels; `<= 0` returns `x` itself.
      mode: the border mode of `scipy.ndimage.gaussian_filter` ("nearest", "reflect", "wrap").
      truncate: the kernel radius in standard deviations.
    """
    if sigma <= 0:
        return x
    sig = (0.0, sigma, sigma) + (0.0,) * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def line_gather(x: np.ndarray, weights, off_rows: np.ndarray, off_cols: np.ndarray):
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


def motion_blur_taps(radius: float, sigma: float, angles_deg: np.ndarray):
    """ImageMagick `MotionBlurImage` taps: weights `[K]` and integer offsets `[N, K]` x 2.

    `K = 2 * ceil(radius) + 1`; tap `i` has weight proportional to `exp(-i^2 / (2 sigma^2))`
    and sits at column offset `ceil(i cos(a) - 0.5)`, row offset `ceil(i sin(a) - 0.5)`.

    Args:
      radius: the blur radius in pixels.
      sigma: the Gaussian fall-off of the tap weights, in pixels.
      angles_deg: `[N]` blur directions in degrees, one per image.

    Returns:
      `(weights [K], off_rows [N, K], off_cols [N, K])`, the arguments of `line_gather`.
    """
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    weights = np.exp(-(i**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))[:, None]
    off_cols = np.ceil(i[None, :] * np.cos(a) - 0.5).astype(np.int64)
    off_rows = np.ceil(i[None, :] * np.sin(a) - 0.5).astype(np.int64)
    return weights, off_rows, off_cols


def motion_blur_batch(x, radius, sigma, angles_deg):
    """ImageMagick-style motion blur of each image of `x [N, H, W, C]` in its own direction.

    Args:
      x: `[N, H, W, C]`.
      radius, sigma, angles_deg: as for `motion_blur_taps`.

    Returns:
      `[N, H, W, C]` float64, edge-replicated borders.
    """
    weights, off_rows, off_cols = motion_blur_taps(radius, sigma, angles_deg)
    return line_gather(x, weights, off_rows, off_cols)


def clipped_zoom_matrix(n: int, zoom: float) -> np.ndarray:
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


def separable(x: np.ndarray, mr: np.ndarray, mc: np.ndarray) -> np.ndarray:
    """`out[n, i, l, c] = sum_jk mr[i, j] * x[n, j, k, c] * mc[l, k]` for `x [N, H, W, C]`.

    Args:
      x: `[N, H, W, C]`.
      mr: `[H', H]` matrix applied along the rows.
      mc: `[W', W]` matrix applied along the columns.

    Returns:
      `[N, H', W', C]`.
    """
    n, h, w, ch = x.shape
    y = np.matmul(mr, x.reshape(n, h, w * ch)).reshape(n * mr.shape[0], w, ch)
    return np.matmul(mc, y).reshape(n, mr.shape[0], mc.shape[0], ch)


def clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
    """Batched official `clipped_zoom` of the spatial axes of `[N, H, W, C]`."""
    return separable(
        x, clipped_zoom_matrix(x.shape[1], zoom), clipped_zoom_matrix(x.shape[2], zoom)
    )


def pil_box_matrix(in_size: int, out_size: int) -> np.ndarray:
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


def reflect_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map integer indices into `[0, n)`: 'mirror' = `d c b | a b c d | c b a` (OpenCV
    BORDER_REFLECT_101, scipy 'mirror'); 'reflect' = `c b a | a b c | c b a` (scipy 'reflect').

    Args:
      i: integer indices, any shape.
      n: the length of the axis.
      mode: "mirror" or "reflect" (anything else is treated as "reflect").
    """
    if n == 1:
        return np.zeros_like(i)
    if mode == "mirror":
        period = 2 * n - 2
        i = np.mod(i, period)
        return np.where(i >= n, period - i, i)
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i >= n, period - 1 - i, i)


def bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """Bilinear samples of `x [N, H, W, C]` at real positions `rows, cols [N, H, W]`.

    Args:
      x: `[N, H, W, C]`.
      rows, cols: `[N, H, W]` (or broadcastable) real sampling positions, in pixels.
      mode: the border handling of `reflect_index`, "mirror" or "reflect".

    Returns:
      `[N, H, W, C]` float64.
    """
    n, h, w = x.shape[:3]
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    fr = (rows - r0)[..., None]
    fc = (cols - c0)[..., None]
    r0 = r0.astype(np.int64)
    c0 = c0.astype(np.int64)
    ra, rb = reflect_index(r0, h, mode), reflect_index(r0 + 1, h, mode)
    ca, cb = reflect_index(c0, w, mode), reflect_index(c0 + 1, w, mode)
    b = np.arange(n)[:, None, None]
    top = x[b, ra, ca] * (1.0 - fc) + x[b, ra, cb] * fc
    bottom = x[b, rb, ca] * (1.0 - fc) + x[b, rb, cb] * fc
    return top * (1.0 - fr) + bottom * fr


def plasma_fractal(rng: np.random.Generator, n: int, mapsize: int, wibbledecay: float):
    """Batched diamond-square heightmaps `[n, mapsize, mapsize]` in [0, 1] (official algorithm).

    Draws, per level, `uniform(-wibble, wibble)` for the square step, then the two diamond
    steps, each of shape `[n, ...]`.

    Args:
      rng: the `numpy.random.Generator` to draw from.
      n: the number of heightmaps.
      mapsize: their side, a power of two.
      wibbledecay: the factor by which the noise amplitude shrinks at each level.
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
