"""Datasets as batched, prefetched `tf.data.Dataset`s of (image float32 in [0, 1], label int32).

Names (registered in `registry`; see `DATASETS`, `names()`):
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

Modules:

* `registry`: the dataset registry (`register`, `lookup`, `names`, `check_name`, `DATASETS`,
  `DatasetSpec`, `DatasetInfo`), `parse_split`, and the name -> arrays and facts lookups
  `load_arrays` (cached per process) and `info`.
* `sources`: the file readers of each dataset (digits, CIFAR python archives or folders or a
  TFDS build, Tiny-ImageNet, npz), `check_arrays`, `default_data_dir`.
* `pipeline`: `load` (the batched `tf.data` pipeline), `augment_batch`, `subset_indices` (the
  one seeded subsampling helper of the library), `num_batches`.
* `cifar10c`: `load_cifar10_c`, the official CIFAR-10-C release files.
"""

from tempscale_tf.data.cifar10c import load_cifar10_c
from tempscale_tf.data.pipeline import augment_batch, load, num_batches, subset_indices
from tempscale_tf.data.registry import (
    DATASETS,
    DatasetInfo,
    DatasetSpec,
    check_name,
    info,
    load_arrays,
    lookup,
    names,
    parse_split,
    register,
)

# The former private name, until `tempscale_tf.training` calls `check_name`.
from tempscale_tf.data.sources import DEFAULT_DATA_DIR_ENV, check_arrays, default_data_dir

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR_ENV",
    "DatasetInfo",
    "DatasetSpec",
    "augment_batch",
    "check_arrays",
    "check_name",
    "default_data_dir",
    "info",
    "load",
    "load_arrays",
    "load_cifar10_c",
    "lookup",
    "names",
    "num_batches",
    "parse_split",
    "register",
    "subset_indices",
]
