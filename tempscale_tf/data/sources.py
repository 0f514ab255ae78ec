"""Where dataset files are read from: the raw array loaders and `check_arrays`.

Each loader returns `(images, labels)` for the base split `train` or `test` of one dataset:
scikit-learn's digits (`digits_arrays`), the CIFAR python-version archives or folders or a
tensorflow-datasets build (`cifar_arrays`), the `tiny-imagenet-200` folder
(`tiny_imagenet_arrays`) and user `.npz` files (`npz_arrays`). `registry` registers the named
ones; `check_arrays` validates what any of them returns. Nothing is ever downloaded: missing
files raise `FileNotFoundError` naming the files and the folder they go in.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import tarfile

import numpy as np

DEFAULT_DATA_DIR_ENV = "TEMPSCALE_DATA_DIR"


def default_data_dir() -> pathlib.Path:
    """`$TEMPSCALE_DATA_DIR`, else `~/tensorflow_datasets`."""
    return pathlib.Path(os.environ.get(DEFAULT_DATA_DIR_ENV, "~/tensorflow_datasets")).expanduser()


def digits_arrays(split_name, data_dir):
    """scikit-learn's digits as float32 `[N, 32, 32, 3]` in [0, 1] (`data_dir` is not used)."""
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


def tfds_prepared(data_dir: pathlib.Path, tfds_name: str) -> bool:
    """Whether `data_dir/<tfds_name>/<version>/dataset_info.json` exists (a prepared build).

    `tfds_name` may name a config, like `cifar10_corrupted/fog_3`.
    """
    return any((data_dir / tfds_name).glob("*/dataset_info.json"))


def cifar_arrays(name, split_name, data_dir):
    """CIFAR-10 or CIFAR-100 arrays: uint8 `[N, 32, 32, 3]` and int64 labels (fine for 100).

    Args:
      name: "cifar10" or "cifar100".
      split_name: "train" or "test".
      data_dir: `pathlib.Path` holding the python-version archive or its extracted folder
        (directly or under `<name>/`), or a tensorflow-datasets build of `<name>`.

    Raises:
      FileNotFoundError: none of these is present; the message says where the files go.
    """
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
    if tfds_prepared(data_dir, name):
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


def tiny_imagenet_arrays(split_name, data_dir):
    """Tiny-ImageNet from `data_dir/tiny-imagenet-200` (or `data_dir` itself); `test` is `val`."""
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


def npz_arrays(path, split_name):
    """`x_<split_name>` and `y_<split_name>` of the `.npz` file `path` (non-uint8 -> float32)."""
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


def check_arrays(images, labels, source: str, num_classes=None):
    """Validate loaded arrays; return (images, labels int64) or raise ValueError naming `source`.

    Images must be uint8, or floating point, finite and in [0, 1]; labels must be integers in
    [0, num_classes) (only `>= 0` when `num_classes` is None). Nothing is clipped or cast
    silently: a file with NaN pixels or a label of -1 is refused, not trained on.

    Args:
      images: `[N, H, W, C]` array-like.
      labels: `[N]` array-like of integer (or integral float) labels.
      source: what the arrays are, for the error messages (e.g. "cifar10 split 'test'").
      num_classes: the number of classes, or None to check only `labels >= 0`.
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
