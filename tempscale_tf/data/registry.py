"""The dataset registry: datasets looked up by name, their arrays and their `DatasetInfo`.

Each named dataset is registered once with `register(name, loader, num_classes=...,
image_shape=..., stats=..., flip=..., crop_padding=...)`: the loader reads the base split
`train` or `test` (see `sources`), the rest is what `info` reports. `npz:<path>` is not
registered: it is a form that names a user file, and its facts are read from the file.
For example:

    register("my_set", my_loader, num_classes=10, image_shape=(32, 32, 3),
             stats=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    images, labels = load_arrays("my_set", "train[:100]")

`lookup(name)` returns a registered `DatasetSpec`; `check_name`, `lookup`, `load_arrays` and
`info` raise a ValueError listing the registered names and the npz form for an unknown name.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
from typing import Callable

import numpy as np

from tempscale_tf.data import sources

NPZ_FORM = "npz:<path>"
_SPLIT_RE = re.compile(r"^(train|test)(?:\[(-?\d*):(-?\d*)\])?$")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes:
      name: registry name.
      num_classes: number of classes.
      image_shape: (height, width, channels) of the images.
      mean, std: per-channel training-set statistics in [0, 1] units (for the model's
        normalisation layer).
      flip: whether horizontal flips are a valid augmentation.
      crop_padding: zero padding (pixels) for the random-crop augmentation.
    """

    name: str
    num_classes: int
    image_shape: tuple
    mean: tuple
    std: tuple
    flip: bool = True
    crop_padding: int = 4


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    Attributes:
      name: the registry name.
      loader: `loader(split_name, data_dir) -> (images, labels)` for `split_name` "train" or
        "test" and a `pathlib.Path` `data_dir`; images uint8 `[N, H, W, C]` or float in [0, 1].
      num_classes: number of classes (labels are checked to lie in `[0, num_classes)`).
      image_shape: (height, width, channels).
      stats: `(mean, std)` per-channel tuples in [0, 1] units, or None to compute them from the
        training split when `info` is called.
      flip: whether horizontal flips are a valid augmentation.
      crop_padding: padding (pixels) for the random-crop augmentation.
    """

    name: str
    loader: Callable
    num_classes: int
    image_shape: tuple
    stats: tuple | None = None
    flip: bool = True
    crop_padding: int = 4


_REGISTRY: dict[str, DatasetSpec] = {}


def register(
    name: str,
    loader: Callable,
    *,
    num_classes: int,
    image_shape: tuple,
    stats=None,
    flip: bool = True,
    crop_padding: int = 4,
) -> DatasetSpec:
    """Register a dataset under `name` so that `load`, `load_arrays` and `info` find it.

    Args:
      name: the registry name; not already registered, and not of the `npz:` form.
      loader: `loader(split_name, data_dir) -> (images, labels)`, see `DatasetSpec`.
      num_classes: number of classes.
      image_shape: (height, width, channels).
      stats: `(mean, std)` per-channel tuples in [0, 1] units, or None to compute them from
        the training split.
      flip: whether horizontal flips are a valid augmentation.
      crop_padding: padding (pixels) for the random-crop augmentation.

    Returns:
      The registered `DatasetSpec`.

    Raises:
      ValueError: a bad or already registered name.
    """
    if not isinstance(name, str) or not name or name.startswith("npz:"):
        raise ValueError(
            f"A dataset name must be a non-empty string not starting with 'npz:', received {name!r}"
        )
    if name in _REGISTRY:
        raise ValueError(f"Dataset {name!r} is already registered")
    spec = DatasetSpec(name, loader, num_classes, tuple(image_shape), stats, flip, crop_padding)
    _REGISTRY[name] = spec
    return spec


def names() -> tuple:
    """The registered dataset names, in registration order (without the `npz:` form)."""
    return tuple(_REGISTRY)


def _unknown(name) -> ValueError:
    return ValueError(f"Unknown dataset {name!r}. Available: {[*names(), NPZ_FORM]}")


def check_name(name) -> str:
    """`name` if it is a registered dataset or `npz:<path>`, else ValueError listing them."""
    if not isinstance(name, str) or not (
        name in _REGISTRY or (name.startswith("npz:") and len(name) > 4)
    ):
        raise _unknown(name)
    return name


def lookup(name) -> DatasetSpec:
    """The `DatasetSpec` registered as `name`; ValueError listing the names otherwise."""
    if isinstance(name, str) and name.startswith("npz:"):
        raise ValueError(f"{name!r} names a file, not a registered dataset (see `info`)")
    if not isinstance(name, str) or name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name]


def parse_split(split):
    """`'train[:45000]'` -> ('train', slice(None, 45000)); raises ValueError for bad splits."""
    match = _SPLIT_RE.match(str(split))
    if not match:
        raise ValueError(
            f"Unknown split {split!r}: use 'train', 'test' or a slice such as 'train[:45000]'"
        )
    base, start, stop = match.groups()
    to_int = lambda s: int(s) if s not in (None, "") else None
    return base, slice(to_int(start), to_int(stop))


@functools.lru_cache(maxsize=8)
def _cached_arrays(name, base_split, data_dir):
    if name.startswith("npz:"):
        arrays, num_classes = sources.npz_arrays(name[4:], base_split), None
    else:
        entry = lookup(name)
        arrays, num_classes = entry.loader(base_split, pathlib.Path(data_dir)), entry.num_classes
    return sources.check_arrays(*arrays, f"{name} split {base_split!r}", num_classes)


def load_arrays(name: str, split: str = "train", data_dir=None):
    """Return (images, labels) as numpy arrays: images uint8 [N,H,W,C] (or float32 in [0, 1]).

    Arrays are cached per process, so repeated calls (one per epoch) are cheap.

    Args:
      name: a registered dataset name or `npz:<path>`.
      split: `train`, `test`, or a slice like `train[:45000]`.
      data_dir: where the files are (default `$TEMPSCALE_DATA_DIR` or `~/tensorflow_datasets`).

    Returns:
      (images, labels int64 [N]), validated by `check_arrays`.
    """
    check_name(name)
    base, sl = parse_split(split)
    data_dir = str(pathlib.Path(data_dir).expanduser() if data_dir else sources.default_data_dir())
    images, labels = _cached_arrays(name, base, data_dir)
    return images[sl], labels[sl]


def _channel_stats(images):
    """Per-channel mean and std (float32 arrays) of images, in [0, 1] units."""
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    return images.mean(axis=(0, 1, 2)), images.std(axis=(0, 1, 2))


def info(name: str, data_dir=None) -> DatasetInfo:
    """Dataset facts; for `npz:` datasets (and registered ones without stats) read from files."""
    check_name(name)
    if name.startswith("npz:"):
        x, y = load_arrays(name, "train", data_dir)
        _, y_test = load_arrays(name, "test", data_dir)
        mean, std = _channel_stats(x)
        return DatasetInfo(
            name,
            int(max(y.max(), y_test.max())) + 1,
            tuple(x.shape[1:]),
            tuple(float(v) for v in mean),
            tuple(float(v) for v in std + 1e-8),
            flip=False,
            crop_padding=0,
        )
    entry = lookup(name)
    if entry.stats is None:
        mean, std = _channel_stats(load_arrays(name, "train", data_dir)[0])
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    else:
        mean, std = entry.stats
    return DatasetInfo(
        name, entry.num_classes, entry.image_shape, mean, std, entry.flip, entry.crop_padding
    )


# --------------------------------------------------------------------------- built-in datasets

register(
    "digits",
    sources.digits_arrays,
    num_classes=10,
    image_shape=(32, 32, 3),
    stats=None,  # computed from the training split
    flip=False,
    crop_padding=2,
)
register(
    "cifar10",
    functools.partial(sources.cifar_arrays, "cifar10"),
    num_classes=10,
    image_shape=(32, 32, 3),
    stats=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
)
register(
    "cifar100",
    functools.partial(sources.cifar_arrays, "cifar100"),
    num_classes=100,
    image_shape=(32, 32, 3),
    stats=((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
)
register(
    "tiny_imagenet",
    sources.tiny_imagenet_arrays,
    num_classes=200,
    image_shape=(64, 64, 3),
    stats=((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    crop_padding=8,
)

DATASETS = (*names(), NPZ_FORM)
"""The built-in dataset names and the npz form (`names()` also lists later registrations)."""
