"""Data-side throughput: the training input pipeline and the CIFAR-10-C corruptions."""

from __future__ import annotations

import numpy as np

from benchmarks.timing import row, time_call
from tempscale_tf import corruptions, data


def bench_input_pipeline(dataset, data_dir, batch_size, num_batches=50):
    """Images/s the training input pipeline delivers (augmentation included).

    Args:
      dataset: a `data` dataset name.
      data_dir: its folder (None: the default).
      batch_size: images per batch.
      num_batches: batches per timed call.
    """
    ds = data.load(dataset, "train", data_dir, batch_size)
    iterator = iter(ds.repeat())
    next(iterator)

    def pull():
        for _ in range(num_batches):
            batch = next(iterator)
        return batch

    seconds = time_call(pull, repeats=3)
    return [
        row(
            "input_pipeline",
            dataset,
            batch_size * num_batches / seconds,
            "images/s",
            batch_size=batch_size,
        )
    ]


def bench_corruptions(num_images=256, names=None):
    """Images/s of each CIFAR-10-C corruption at severity 3 on random 32x32 images."""
    images = np.random.default_rng(0).uniform(size=(num_images, 32, 32, 3)).astype("float32")
    rows = []
    for name in names or corruptions.CORRUPTIONS:
        seconds = time_call(
            lambda name=name: corruptions.corrupt(images, name, 3, seed=0), repeats=2
        )
        rows.append(
            row(
                "corruption",
                name,
                num_images / seconds,
                "images/s",
                batch_size=num_images,
                severity=3,
            )
        )
    return rows
