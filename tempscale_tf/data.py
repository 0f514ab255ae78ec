"""Datasets as batched, prefetched `tf.data.Dataset`s of (image float32 in [0, 1], label int32).

Names (see `DATASETS`):
  - `digits`: scikit-learn's bundled 8x8 digits, upscaled to 32x32x3 (nearest neighbour), with a
    fixed seeded stratified split (1437 train / 360 test). The embedded default: no files needed.
  - `cifar10`, `cifar100`: the official "python version" archives or their extracted folders
    (`cifar-10-python.tar.gz` / `cifar-10-batches-py`, `cifar-100-python.tar.gz` /
    `cifar-100-python`), or a tensorflow-datasets build prepared in `data_dir`.
  - `tiny_imagenet`: the standard `tiny-imagenet-200` folder (its `val` split is used as `test`).
  - `npz:<path>`: arrays a user brings (`x_train`, `y_train`, `x_test`, `y_test`).

Nothing is ever downloaded: missing files raise `FileNotFoundError` naming the files and the folder
they go in. Splits are `train`, `test`, or a slice of either such as `train[:45000]` or
`train[45000:]` (slices index a fixed order, so `train[:n]` and `train[n:]` are disjoint).

Per-channel normalisation happens inside the model, not here. Training pipelines are
deterministic functions of (seed, epoch, batch index): the shuffle order comes from
`numpy.random.default_rng([seed, epoch])` and augmentation uses stateless random ops seeded by
(seed, epoch, batch), so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import pickle
import re
import tarfile

import numpy as np
import tensorflow as tf

DEFAULT_DATA_DIR_ENV = "TEMPSCALE_DATA_DIR"


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


_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_TINY_STATS = ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))


def default_data_dir() -> pathlib.Path:
    """`$TEMPSCALE_DATA_DIR`, else `~/tensorflow_datasets`."""
    return pathlib.Path(os.environ.get(DEFAULT_DATA_DIR_ENV, "~/tensorflow_datasets")).expanduser()


# --------------------------------------------------------------------------- raw array loaders


def _digits_arrays(split_name, data_dir):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")  # [1797, 8, 8] in [0, 1]
    images = np.kron(images, np.ones((1, 4, 4), "float32"))  # nearest-neighbour 8x8 -> 32x32
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=360, random_state=0, stratify=labels
    )
    return (x_train, y_train) if split_name == "train" else (x_test, y_test)


def _missing(name, data_dir, expected):
    return FileNotFoundError(
        f"{name} not found under data_dir={str(data_dir)!r}. Put one of these there: "
        + "; ".join(expected)
        + f". Pass data_dir=... (or set ${DEFAULT_DATA_DIR_ENV}); this library never downloads."
    )


def _find(data_dir: pathlib.Path, relative_paths):
    for rel in relative_paths:
        path = data_dir / rel
        if path.exists():
            return path
    return None


def _read_cifar_pickle(fileobj):
    batch = pickle.load(fileobj, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    key = b"labels" if b"labels" in batch else b"fine_labels"
    return data, np.asarray(batch[key], dtype=np.int64)


def _cifar_python(root: pathlib.Path, folder: str, members):
    """Read CIFAR pickles from an extracted folder or directly from the .tar.gz archive."""
    parts = []
    if root.is_dir():
        for member in members:
            path = root / member
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: the CIFAR folder {root} is incomplete")
            with open(path, "rb") as f:
                parts.append(_read_cifar_pickle(f))
    else:
        try:
            with tarfile.open(root, "r:gz") as tar:
                for member in members:
                    f = tar.extractfile(f"{folder}/{member}")
                    parts.append(_read_cifar_pickle(f))
        except (tarfile.TarError, KeyError, EOFError, OSError, pickle.UnpicklingError) as e:
            raise ValueError(f"{root} is not a readable CIFAR archive ({e})") from e
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _tfds_arrays(tfds_name, split_name, data_dir):
    import tensorflow_datasets as tfds

    ds = tfds.load(
        tfds_name,
        split=split_name,
        data_dir=str(data_dir),
        download=False,
        batch_size=-1,
        as_supervised=True,
    )
    images, labels = tfds.as_numpy(ds)
    return images.astype(np.uint8), labels.astype(np.int64)


def _tfds_prepared(data_dir: pathlib.Path, tfds_name: str) -> bool:
    return any((data_dir / tfds_name).glob("*/dataset_info.json"))


def _cifar_arrays(name, split_name, data_dir):
    if name == "cifar10":
        folder, archive = "cifar-10-batches-py", "cifar-10-python.tar.gz"
        members = (
            [f"data_batch_{i}" for i in range(1, 6)] if split_name == "train" else ["test_batch"]
        )
    else:
        folder, archive = "cifar-100-python", "cifar-100-python.tar.gz"
        members = ["train"] if split_name == "train" else ["test"]
    root = _find(data_dir, [folder, archive, f"{name}/{folder}", f"{name}/{archive}"])
    if root is not None:
        return _cifar_python(root, folder, members)
    if _tfds_prepared(data_dir, name):
        return _tfds_arrays(name, split_name, data_dir)
    raise _missing(
        name,
        data_dir,
        [
            f"the official python-version archive {archive} (or its extracted folder {folder}/) "
            f"in {data_dir} or {data_dir / name}",
            f"a tensorflow-datasets build prepared in {data_dir / name}/<version>/",
        ],
    )


def _tiny_imagenet_arrays(split_name, data_dir):
    from PIL import Image

    root = _find(data_dir, ["tiny-imagenet-200", "."])
    if root is None or not (root / "wnids.txt").exists():
        raise _missing(
            "tiny_imagenet",
            data_dir,
            [f"the folder tiny-imagenet-200/ (with wnids.txt, train/, val/) in {data_dir}"],
        )
    wnids = (root / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    if split_name == "train":
        for wnid in wnids:
            for path in sorted((root / "train" / wnid / "images").glob("*.JPEG")):
                files.append(path)
                labels.append(index[wnid])
    else:
        annotations = root / "val" / "val_annotations.txt"
        if not annotations.exists():
            raise FileNotFoundError(
                f"{annotations} is missing: tiny-imagenet-200/val is incomplete"
            )
        for line in annotations.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                files.append(root / "val" / "images" / fields[0])
                labels.append(index[fields[1]])
    if not files:
        raise FileNotFoundError(f"no images found for tiny_imagenet split {split_name!r} in {root}")
    images = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8) for f in files])
    return images, np.asarray(labels, dtype=np.int64)


def _npz_arrays(path, split_name):
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"npz dataset file not found: {path}")
    with np.load(path) as arrays:
        keys = (f"x_{split_name}", f"y_{split_name}")
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ValueError(
                f"{path} has no arrays {missing}; expected x_train, y_train, x_test, "
                f"y_test (found {sorted(arrays.keys())})"
            )
        images, labels = arrays[keys[0]], arrays[keys[1]]
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{path}: {keys[0]} must be [N, H, W] or [N, H, W, C], got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{path}: {keys[1]} must be [N] integer labels matching {keys[0]}, "
            f"got {labels.shape} for {len(images)} images"
        )
    if images.dtype != np.uint8:
        images = images.astype("float32")
    return images, labels


# ---------------------------------------------------------------------------------- registry

DATASETS = ("digits", "cifar10", "cifar100", "tiny_imagenet", "npz:<path>")
_SPLIT_RE = re.compile(r"^(train|test)(?:\[(-?\d*):(-?\d*)\])?$")


def _check_name(name):
    if not isinstance(name, str) or not (
        name in DATASETS[:-1] or (name.startswith("npz:") and len(name) > 4)
    ):
        raise ValueError(f"Unknown dataset {name!r}. Available: {list(DATASETS)}")


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


_NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "tiny_imagenet": 200}


def check_arrays(images, labels, source: str, num_classes=None):
    """Validate loaded arrays; return (images, labels int64) or raise ValueError naming `source`.

    Images must be uint8, or floating point, finite and in [0, 1]; labels must be integers in
    [0, num_classes) (only `>= 0` when `num_classes` is None). Nothing is clipped or cast
    silently: a file with NaN pixels or a label of -1 is refused, not trained on.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"{source}: images must be [N, H, W, C], got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{source}: labels must be [N] matching {len(images)} images, got {labels.shape}"
        )
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(
                f"{source}: images must be uint8 (0..255) or float in [0, 1], got {images.dtype}"
            )
        finite = np.isfinite(images)
        if not finite.all():
            raise ValueError(
                f"{source}: {int(images.size - finite.sum())} pixel values are NaN or infinite"
            )
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise ValueError(
                f"{source}: float images must lie in [0, 1] (got range "
                f"[{images.min()}, {images.max()}]); store uint8 0..255 otherwise"
            )
    if not np.issubdtype(labels.dtype, np.integer):
        if not (
            np.issubdtype(labels.dtype, np.floating)
            and np.all(np.isfinite(labels))
            and np.all(labels == np.round(labels))
        ):
            raise ValueError(f"{source}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise ValueError(f"{source}: labels must be in {bound}, found range [{low}, {high}]")
    return images, labels


@functools.lru_cache(maxsize=8)
def _cached_arrays(name, base_split, data_dir):
    data_dir = pathlib.Path(data_dir)
    if name == "digits":
        arrays = _digits_arrays(base_split, data_dir)
    elif name in ("cifar10", "cifar100"):
        arrays = _cifar_arrays(name, base_split, data_dir)
    elif name == "tiny_imagenet":
        arrays = _tiny_imagenet_arrays(base_split, data_dir)
    else:
        arrays = _npz_arrays(name[4:], base_split)
    return check_arrays(*arrays, f"{name} split {base_split!r}", _NUM_CLASSES.get(name))


def load_arrays(name: str, split: str = "train", data_dir=None):
    """Return (images, labels) as numpy arrays: images uint8 [N,H,W,C] (or float32 in [0, 1]).

    Arrays are cached per process, so repeated calls (one per epoch) are cheap.
    """
    _check_name(name)
    base, sl = parse_split(split)
    data_dir = str(pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir())
    images, labels = _cached_arrays(name, base, data_dir)
    return images[sl], labels[sl]


def info(name: str, data_dir=None) -> DatasetInfo:
    """Dataset facts; for `npz:` datasets they are read from the file."""
    _check_name(name)
    if name == "digits":
        x, _ = load_arrays("digits", "train")
        m = tuple(float(v) for v in x.mean(axis=(0, 1, 2)))
        s = tuple(float(v) for v in x.std(axis=(0, 1, 2)))
        return DatasetInfo("digits", 10, (32, 32, 3), m, s, flip=False, crop_padding=2)
    if name == "cifar10":
        return DatasetInfo("cifar10", 10, (32, 32, 3), *_CIFAR10_STATS)
    if name == "cifar100":
        return DatasetInfo("cifar100", 100, (32, 32, 3), *_CIFAR100_STATS)
    if name == "tiny_imagenet":
        return DatasetInfo("tiny_imagenet", 200, (64, 64, 3), *_TINY_STATS, crop_padding=8)
    x, y = load_arrays(name, "train", data_dir)
    _, y_test = load_arrays(name, "test", data_dir)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    xf = x.astype("float32") / scale
    return DatasetInfo(
        name,
        int(max(y.max(), y_test.max())) + 1,
        tuple(x.shape[1:]),
        tuple(float(v) for v in xf.mean(axis=(0, 1, 2))),
        tuple(float(v) for v in xf.std(axis=(0, 1, 2)) + 1e-8),
        flip=False,
        crop_padding=0,
    )


# ---------------------------------------------------------------------------------- pipeline


def augment_batch(images, seed, padding: int = 4, flip: bool = True, pad_mode="constant"):
    """Random crop after padding and random horizontal flip, per example, stateless.

    Args:
      images: float32 [B, H, W, C].
      seed: int32/int64 tensor of shape [2] (stateless RNG seed).
      padding: pixels of padding before the random crop (0 disables cropping).
      flip: whether to flip horizontally with probability 1/2.
      pad_mode: "constant" (zeros) or "reflect".
    """
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    if padding:
        mode = {"constant": "CONSTANT", "reflect": "REFLECT"}[pad_mode]
        padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]], mode)
        offsets = tf.random.stateless_uniform(
            [batch, 2], seed=seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32
        )
        rows = offsets[:, :1] + tf.range(height)[None, :]
        cols = offsets[:, 1:] + tf.range(width)[None, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    if flip:
        coin = tf.random.stateless_uniform([batch], seed=seed + 1) < 0.5
        images = tf.where(coin[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return images


def load(
    name: str,
    split: str = "train",
    data_dir=None,
    batch_size: int = 128,
    *,
    shuffle=None,
    augment=None,
    seed: int = 0,
    epoch: int = 0,
    skip_batches: int = 0,
    subset=None,
    drop_remainder=None,
    prefetch: bool = True,
    padding=None,
    pad_mode: str = "constant",
    flip="random",
) -> tf.data.Dataset:
    """A batched, prefetched dataset of (images float32 [B,H,W,C] in [0, 1], labels int32 [B]).

    Args:
      name: dataset name (see `DATASETS`).
      split: `train`, `test`, or a slice like `train[:45000]`.
      data_dir: where the files are (default `$TEMPSCALE_DATA_DIR` or `~/tensorflow_datasets`).
      batch_size: examples per batch.
      shuffle, augment, drop_remainder: default to True for training splits, False otherwise.
      seed, epoch: the shuffle order and the augmentation are functions of (seed, epoch).
      skip_batches: start the epoch after this many batches (to resume mid-epoch).
      subset: keep only this many examples (a fixed seeded, class-agnostic sample of the split).
      prefetch: add `prefetch(AUTOTUNE)`.
      padding: crop padding in pixels (None: the dataset's default; 0: no crop).
      pad_mode: "constant" (zeros) or "reflect" padding for the crop.
      flip: "random" (each image with probability 1/2, anew each epoch), "alternate" (a fixed
        random half of the images is flipped in even epochs and the other half in odd ones, so
        every image is seen both ways every two epochs; airbench's "alternating flip") or
        "none". Datasets without flips (digits) never flip.
    """
    from tempscale_tf.validation import check_positive_int

    batch_size = check_positive_int(batch_size, "batch_size")
    ds_info = info(name, data_dir)
    images, labels = load_arrays(name, split, data_dir)
    if subset is not None:
        subset = check_positive_int(subset, "subset")
        if subset > len(labels):
            raise ValueError(f"subset={subset} is larger than split {split!r} ({len(labels)})")
        keep = subset_indices(len(labels), subset)
        images, labels = images[keep], labels[keep]
    training = parse_split(split)[0] == "train"
    shuffle = training if shuffle is None else shuffle
    augment = training if augment is None else augment
    drop_remainder = training if drop_remainder is None else drop_remainder

    if flip not in ("random", "alternate", "none"):
        raise ValueError(f"flip must be 'random', 'alternate' or 'none', received {flip!r}")
    if pad_mode not in ("constant", "reflect"):
        raise ValueError(f"pad_mode must be 'constant' or 'reflect', received {pad_mode!r}")
    padding = ds_info.crop_padding if padding is None or padding < 0 else int(padding)
    flip = flip if ds_info.flip else "none"
    n = len(labels)
    flipped = None
    if flip == "alternate":  # per image: flipped in this epoch?
        first = np.random.default_rng([seed, 2**31 - 1]).random(n) < 0.5
        flipped = tf.constant(first ^ bool(epoch % 2))
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    images_t = tf.constant(images)
    labels_t = tf.constant(labels.astype(np.int32))

    def make_batch(batch_index, idx):
        x = tf.cast(tf.gather(images_t, idx), tf.float32) * scale
        y = tf.gather(labels_t, idx)
        if augment:
            batch_seed = tf.stack(
                [tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * 1_000_003 + batch_index]
            )
            x = augment_batch(x, batch_seed, padding, flip == "random", pad_mode)
            if flipped is not None:
                coin = tf.gather(flipped, idx)
                x = tf.where(coin[:, None, None, None], tf.reverse(x, axis=[2]), x)
        return x, y

    ds = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).enumerate()
    if skip_batches:
        ds = ds.skip(skip_batches)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds


def subset_indices(num_examples: int, subset: int) -> np.ndarray:
    """The sorted indices of the fixed seeded sample that `load(..., subset=subset)` keeps."""
    return np.sort(np.random.default_rng(12345).permutation(num_examples)[:subset])


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)
