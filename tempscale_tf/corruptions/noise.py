"""Noise corruptions: Gaussian, shot (Poisson) and impulse (salt-and-pepper) noise.

Every corruption here and in `blur`, `weather` and `digital` has the signature
`op(x, c, rng, s)`: `x` float64 images `[N, H, W, 3]` in [0, 1], `c` the constants of one
severity (from the table in `registry`), `rng` the batch's `numpy.random.Generator`, `s` the
spatial scale `min(H, W) / 32`. It returns float64 `[N, H, W, 3]`, clipped to [0, 1] by
`registry.corrupt`. Each docstring states what the op draws from `rng`, in order.

Speckle noise, one of the four extra corruptions that the paper holds out for validation
(`EXTRA_CORRUPTIONS`), is not generated: it can only be loaded from the official files.
"""

from __future__ import annotations


def gaussian_noise(x, c, rng, s):
    """`x + normal(0, c)`; draws normals of shape `x.shape`.

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: the standard deviation of the noise.
      rng: the `numpy.random.Generator`.
      s: the spatial scale (unused).
    """
    return x + rng.normal(loc=0.0, scale=c, size=x.shape)


def shot_noise(x, c, rng, s):
    """`poisson(x * c) / c`; draws Poisson counts of shape `x.shape`.

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: the photon count of a pixel of value 1 (lower is noisier).
      rng: the `numpy.random.Generator`.
      s: the spatial scale (unused).
    """
    return rng.poisson(x * c) / c


def impulse_noise(x, c, rng, s):
    """Salt & pepper: draws `random(x.shape) <= c` (flip), then `random(x.shape) <= 0.5` (salt).

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: the probability that a channel value is replaced (by 0 or 1 with equal odds).
      rng: the `numpy.random.Generator`.
      s: the spatial scale (unused).
    """
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out
