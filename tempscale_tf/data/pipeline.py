"""The training and evaluation pipeline: `load`, its augmentation and its subset sample.

Per-channel normalisation happens inside the model, not here. Training pipelines are
deterministic functions of (seed, epoch, batch index): the shuffle order comes from
`numpy.random.default_rng([seed, epoch])` and augmentation uses stateless random ops seeded by
(seed, epoch, batch), so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tempscale_tf.data.registry import info, load_arrays, parse_split

# Our pipelines run with a fixed parallelism and tf.data's autotuner switched off. Destroying an
# autotuned iterator (the training and the test pass each make one per epoch) waits for the
# autotuner's thread, which sleeps up to 60 s between runs: on these 2-core machines a one-minute
# pause with the process idle in about half of the fast recipe's epochs. The batches are
# deterministic either way. (`distribute.distribute_dataset` avoids the autotuned iterator that
# `experimental_distribute_dataset` adds.)
MAP_PARALLELISM = 2
PREFETCH_BATCHES = 2


def finalize(dataset: tf.data.Dataset, prefetch: bool = True) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuner off and (if `prefetch`) `PREFETCH_BATCHES` prefetched.

    Args:
      dataset: a pipeline whose maps use a fixed `num_parallel_calls` (`MAP_PARALLELISM`).
      prefetch: add a fixed-size prefetch buffer.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = dataset.with_options(options)
    return dataset.prefetch(PREFETCH_BATCHES) if prefetch else dataset


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
      prefetch: prefetch `PREFETCH_BATCHES` batches (the autotuner is off: see `finalize`).
      padding: crop padding in pixels (None: the dataset's default; 0: no crop).
      pad_mode: "constant" (zeros) or "reflect" padding for the crop.
      flip: "random" (each image with probability 1/2, anew each epoch), "alternate" (a fixed
        random half of the images is flipped in even epochs and the other half in odd ones, so
        every image is seen both ways every two epochs; airbench's "alternating flip") or
        "none". Datasets without flips (digits) never flip.
    """
    from tempscale_tf.validation import check_positive_int

    # The signature and the Args make up most of this function's length; the batches are built
    # by `_batch_maker`.
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
    make_batch = _batch_maker(images, labels, seed, epoch, augment, padding, pad_mode, flip)
    n = len(labels)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    ds = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).enumerate()
    if skip_batches:
        ds = ds.skip(skip_batches)
    ds = ds.map(make_batch, num_parallel_calls=MAP_PARALLELISM, deterministic=True)
    return finalize(ds, prefetch)


def _batch_maker(images, labels, seed, epoch, augment, padding, pad_mode, flip):
    """`make_batch(batch_index, indices) -> (images float32 in [0, 1], labels int32)`.

    The function `load` maps over the enumerated batches of indices; the arguments are `load`'s
    after its defaults are resolved (`flip` is "random", "alternate" or "none").
    """
    flipped = None
    if flip == "alternate":  # per image: flipped in this epoch?
        first = np.random.default_rng([seed, 2**31 - 1]).random(len(labels)) < 0.5
        flipped = tf.constant(first ^ bool(epoch % 2))
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    images_t = tf.constant(images)
    labels_t = tf.constant(labels.astype(np.int32))

    @tf.autograph.experimental.do_not_convert  # no source read when traced
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

    return make_batch


def subset_indices(num_examples: int, subset=None, seed: int = 12345) -> np.ndarray:
    """The sorted indices of a fixed seeded sample of `subset` of `num_examples` examples.

    The one subsampling helper of the library: `load(..., subset=n)` keeps
    `subset_indices(len(split), n)` (seed 12345); the analyses sample with their own seeds.

    Args:
      num_examples: the number of examples to sample from.
      subset: how many to keep; None, 0 or `>= num_examples` keeps all of them.
      seed: the seed of `numpy.random.default_rng` whose permutation is truncated.

    Returns:
      int64 indices in increasing order (`np.arange(num_examples)` when all are kept).
    """
    if not subset or subset >= num_examples:
        return np.arange(num_examples)
    return np.sort(np.random.default_rng(seed).permutation(num_examples)[: int(subset)])


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    """The number of batches of `load` over `num_examples` examples.

    Args:
      num_examples: the number of examples.
      batch_size: examples per batch.
      drop_remainder: whether a last, partial batch is dropped.
    """
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)
