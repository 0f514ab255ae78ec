"""`corrupt_dataset`: the corruptions over a `tf.data.Dataset` of `(images, labels)`.

TensorFlow is imported only when `corrupt_dataset` is called, so the numpy corruptions stay
importable without it.
"""

from __future__ import annotations

import numbers

from tempscale_tf.corruptions.registry import CORRUPTIONS, check_name, check_severity, corrupt


def corrupt_dataset(dataset, name: str, severity: int, seed: int = 0, batch_size=None):
    """Corrupt the images of a `tf.data.Dataset` of `(images, labels)` elements.

    Each element's images go through `corrupt` inside `tf.numpy_function`, with the seed
    `(seed, element_index)`, so the result is deterministic for a given dataset order and
    batching (and independent of `tf.data` parallelism). Labels pass through unchanged.

    Args:
      dataset: `tf.data.Dataset` yielding `(images, labels)` with images `[B, H, W, 3]` or
        `[H, W, 3]`, float in [0, 1] or uint8.
      name: one of `CORRUPTIONS`.
      severity: integer in 1..5.
      seed: non-negative int.
      batch_size: if given, the dataset is first (un)batched to batches of this size, so the
        corruption, and its noise, no longer depend on the input batching.

    Returns:
      `tf.data.Dataset` of `(float32 images [B, H, W, 3] in [0, 1], labels)`.
    """
    import tensorflow as tf

    from tempscale_tf.data import pipeline

    name = check_name(name, CORRUPTIONS)
    severity = check_severity(severity)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, received {seed!r}")
    seed = int(seed)
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"`dataset` must yield (images, labels) pairs, its element_spec is {spec}")
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise ValueError(f"`batch_size` must be a positive int, received {batch_size!r}")
        if batch_size <= 0:
            raise ValueError(f"`batch_size` must be a positive int, received {batch_size}")
        if spec[0].shape.rank == 4:
            dataset = dataset.unbatch()
        dataset = dataset.batch(int(batch_size))
        spec = dataset.element_spec
    shape = spec[0].shape
    if shape.rank not in (3, 4) or shape[-1] != 3:
        raise ValueError(
            f"`dataset` images must be [B, H, W, 3] or [H, W, 3], received shape {shape}"
        )

    def _corrupt_numpy(index, images):
        return corrupt(images, name, severity, seed=(seed, int(index)))

    @tf.autograph.experimental.do_not_convert  # no source read when traced
    def _map(index, element):
        images, labels = element
        out = tf.numpy_function(_corrupt_numpy, [index, images], tf.float32, stateful=False)
        out.set_shape(images.shape)
        return out, labels

    dataset = dataset.enumerate().map(
        _map, num_parallel_calls=pipeline.MAP_PARALLELISM, deterministic=True
    )
    return pipeline.finalize(dataset, prefetch=False)
