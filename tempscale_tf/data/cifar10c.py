"""The official CIFAR-10-C release: `load_cifar10_c` (never downloads).

Hendrycks & Dietterich's pre-computed CIFAR-10-C images, read from the release's `.npy` files
(Zenodo record 2535967, file `CIFAR-10-C.tar`) or from a prepared tensorflow-datasets build of
`cifar10_corrupted`. The corruptions themselves (generated, not loaded) are in
`tempscale_tf.corruptions`, which also re-exports `load_cifar10_c`.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from tempscale_tf.corruptions.registry import (
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    check_name,
    check_severity,
)
from tempscale_tf.data.sources import tfds_prepared

_ZENODO = "https://zenodo.org/record/2535967"

# TFDS `cifar10_corrupted` config names differ from the file names for two corruptions.
_TFDS_NAMES = {"glass_blur": "frosted_glass_blur", "elastic_transform": "elastic"}


def _cifar10_c_folder(data_dir: pathlib.Path, name: str):
    """The folder holding `<name>.npy` and `labels.npy`, or None."""
    for folder in (data_dir / "CIFAR-10-C", data_dir):
        if (folder / f"{name}.npy").is_file() and (folder / "labels.npy").is_file():
            return folder
    return None


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
    name = check_name(name, CORRUPTIONS + EXTRA_CORRUPTIONS)
    severity = check_severity(severity)
    data_dir = pathlib.Path(os.fspath(data_dir)).expanduser()

    folder = _cifar10_c_folder(data_dir, name)
    if folder is not None:
        return _load_npy_block(folder, name, severity)

    config = f"{_TFDS_NAMES.get(name, name)}_{severity}"
    if tfds_prepared(data_dir, f"cifar10_corrupted/{config}"):
        return _load_tfds_block(data_dir, config)
    raise _not_found(data_dir, name, config)


def _load_tfds_block(data_dir: pathlib.Path, config: str):
    """The test split of the prepared TFDS build `cifar10_corrupted/<config>` (never downloads)."""
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


def _not_found(data_dir: pathlib.Path, name: str, config: str) -> FileNotFoundError:
    """The error naming the expected files, where they go and where to get them."""
    folder = data_dir if data_dir.name == "CIFAR-10-C" else data_dir / "CIFAR-10-C"
    expected = [folder / f"{name}.npy", folder / "labels.npy"]
    missing = [str(p) for p in expected if not p.is_file()]
    return FileNotFoundError(
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
