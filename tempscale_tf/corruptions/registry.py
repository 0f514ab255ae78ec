"""The corruption registry: names, severities, input validation and `corrupt`.

`OPS` maps each of the 15 `CORRUPTIONS` to its op (in `noise`, `blur`, `weather` or `digital`)
and the official CIFAR constants of its five severities. `corrupt` validates the name, the
severity and the image batch, and applies the op chunk by chunk with one generator stream.
"""

from __future__ import annotations

import numbers

import numpy as np

from tempscale_tf.corruptions import blur, digital, noise, weather

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


def check_name(name, valid) -> str:
    """`name` if it is one of `valid`, else ValueError listing the valid corruption names."""
    if not isinstance(name, str) or name not in valid:
        raise ValueError(f"Unknown corruption {name!r}; valid names are: {', '.join(valid)}")
    return name


def check_severity(severity) -> int:
    """`severity` as an int if it is an integer in `SEVERITIES`, else ValueError."""
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


def as_image_batch(images) -> tuple[np.ndarray, bool]:
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


# name -> (op, the constants of severities 1..5); `op(x, c, rng, s)` is described in `noise`.
# The constants are the official CIFAR ones (`make_cifar_c.py`).
OPS = {
    "gaussian_noise": (noise.gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": (noise.shot_noise, (500, 250, 100, 75, 50)),
    "impulse_noise": (noise.impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "defocus_blur": (blur.defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    "glass_blur": (
        blur.glass_blur,
        ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    ),
    "motion_blur": (blur.motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))),
    "zoom_blur": (blur.zoom_blur, SEVERITIES),  # factors: `blur._zoom_factors(severity)`
    "snow": (
        weather.snow,
        (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
    ),
    "frost": (weather.frost, ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))),
    "fog": (weather.fog, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    "brightness": (weather.brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "contrast": (digital.contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    # (alpha, sigma, affine range) as fractions of the image size (IMSIZE = 32 for CIFAR).
    "elastic_transform": (
        digital.elastic_transform,
        ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    ),
    "pixelate": (digital.pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg_compression": (digital.jpeg_compression, (80, 65, 58, 50, 40)),
}
assert tuple(OPS) == CORRUPTIONS


def corrupt(images, name: str, severity: int, seed=0) -> np.ndarray:
    """Apply one CIFAR-10-C corruption at one severity.

    Args:
      images: `[N, H, W, 3]` or `[H, W, 3]` RGB images (numpy array or eager tensor), either
        floating point in [0, 1] (values outside raise; nothing is clipped) or uint8 in
        0..255. `H, W >= 4`; constants are exact for 32x32 and scaled otherwise (see the
        package docstring).
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
    name = check_name(name, CORRUPTIONS)
    severity = check_severity(severity)
    x, single = as_image_batch(images)
    n, h, w = x.shape[:3]
    op, constants = OPS[name]
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
