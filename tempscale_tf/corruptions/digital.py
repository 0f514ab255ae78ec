"""Digital corruptions: contrast, elastic transform, pixelate and JPEG compression.

The op signature `op(x, c, rng, s)` is described in `noise`. Saturate, one of the four extra
corruptions that the paper holds out for validation (`EXTRA_CORRUPTIONS`), is not generated: it
can only be loaded from the official files.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tempscale_tf.corruptions.kernels import (
    bilinear,
    gaussian_filter_hw,
    pil_box_matrix,
    separable,
)


def contrast(x, c, rng, s):
    """`(x - mean) * c + mean` with per-image, per-channel means.

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: the contrast factor (lower is flatter).
      rng: the `numpy.random.Generator` (unused).
      s: the spatial scale (unused).
    """
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def elastic_transform(x, c, rng, s):
    """Random affine warp then a smooth displacement field.

    Draws the affine jitter `uniform(-c2, c2, [N, 3, 2])`, then the column displacement noise
    `uniform(-1, 1, [N, H, W])`, then the row displacement noise (same shape).

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: `(alpha, sigma, affine range)` of the displacement, as fractions of `min(H, W)`
        (the official IMSIZE, 32 for CIFAR).
      rng: the `numpy.random.Generator`.
      s: the spatial scale (unused: `c` is relative to the image size).
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
    warped = bilinear(x, src_r, src_c, "mirror")

    dx = gaussian_filter_hw(rng.uniform(-1, 1, size=(n, h, w)), sigma, "reflect", 3.0) * alpha
    dy = gaussian_filter_hw(rng.uniform(-1, 1, size=(n, h, w)), sigma, "reflect", 3.0) * alpha
    return bilinear(warped, rows[None] + dy, cols[None] + dx, "reflect")


def pixelate(x, c, rng, s):
    """Pillow BOX down to `int(size * c)` and back up (deterministic).

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: the size ratio of the intermediate image.
      rng: the `numpy.random.Generator` (unused).
      s: the spatial scale (unused).
    """
    h, w = x.shape[1:3]
    mr = pil_box_matrix(max(1, int(h * c)), h) @ pil_box_matrix(h, max(1, int(h * c)))
    mc = pil_box_matrix(max(1, int(w * c)), w) @ pil_box_matrix(w, max(1, int(w * c)))
    return separable(x, mr, mc)


def jpeg_compression(x, c, rng, s):
    """Pillow JPEG round trip at quality `c`, image by image (deterministic).

    Args:
      x: float64 images `[N, H, W, 3]` in [0, 1].
      c: the JPEG quality.
      rng: the `numpy.random.Generator` (unused).
      s: the spatial scale (unused).
    """
    x8 = np.round(x * 255.0).astype(np.uint8)
    out = np.empty(x.shape, dtype=np.float64)
    for i, image in enumerate(x8):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(c))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"), dtype=np.float64) / 255.0
    return out
