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


TEARDOWN_VARIANTS = ("ours (autotuner off)", "autotuner on", "experimental_distribute_dataset")


def iterator_teardown_seconds(variant, dataset, data_dir, batch_size, num_batches, pause):
    """Seconds to destroy one iterator (see `bench_iterator_teardown`); run in a fresh process."""
    import gc
    import time

    import tensorflow as tf

    from tempscale_tf import distribute

    ds = data.load(dataset, "train", data_dir, batch_size).repeat()
    if variant == "autotuner on":
        options = tf.data.Options()
        options.autotune.enabled = True
        ds = ds.with_options(options)
    elif variant == "experimental_distribute_dataset":
        ds = distribute.mirrored(["/cpu:0"]).experimental_distribute_dataset(ds)
    iterator = iter(ds)
    for _ in range(num_batches):
        next(iterator)
        time.sleep(pause)
    start = time.perf_counter()
    del iterator
    gc.collect()
    return time.perf_counter() - start


def bench_iterator_teardown(
    dataset, data_dir, batch_size, num_batches=48, pause=1.7, trials=5, timeout=900
):
    """Seconds to destroy an epoch's iterator after reading `num_batches` batches with a
    `pause` after each (a training step's time), for three pipelines: ours (`data.load`:
    autotuner off), the same with tf.data's autotuner on, and ours through a one-replica
    `MirroredStrategy.experimental_distribute_dataset`.

    An autotuned iterator's destructor can wait for its autotuner thread, which sleeps up to
    60 s between runs (its period grows while the iterator lives): whether it waits depends on
    where that thread is in its sleep, so each variant runs `trials` times, every trial in its
    own process, all processes at once (they mostly sleep). Rows: the median, the maximum and
    the number of processes that waited (`teardown_rows`).

    Args:
      dataset: a `data` dataset name.
      data_dir: its folder (None: the default).
      batch_size: images per batch.
      num_batches: batches read before the iterator is destroyed.
      pause: seconds of sleep after each batch.
      trials: processes per variant.
      timeout: seconds before a process is killed.
    """
    import concurrent.futures

    from benchmarks import timing

    jobs = [(v, t) for v in TEARDOWN_VARIANTS for t in range(trials)]
    kwargs = dict(
        dataset=dataset,
        data_dir=data_dir,
        batch_size=batch_size,
        num_batches=num_batches,
        pause=pause,
    )
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = {
            job: pool.submit(
                timing.run_in_fresh_process,
                "pipeline.iterator_teardown_seconds",
                timeout,
                variant=job[0],
                **kwargs,
            )
            for job in jobs
        }
        seconds = {job: future.result()[0] for job, future in futures.items()}
    settings = dict(dataset=dataset, batch_size=batch_size, batches=num_batches, pause_s=pause)
    by_variant = {v: [seconds[(v, t)] for t in range(trials)] for v in TEARDOWN_VARIANTS}
    return teardown_rows(by_variant, **settings)


# A teardown slower than this waited for the autotuner thread (unwaited ones take about 1 s).
WAIT_THRESHOLD_S = 10.0


def teardown_rows(seconds_by_variant, **settings):
    """Rows of `bench_iterator_teardown`: per variant, the median and maximum seconds over its
    processes, and how many of them waited (took longer than `WAIT_THRESHOLD_S`)."""
    import statistics

    rows = []
    for variant, values in seconds_by_variant.items():
        waited = sum(v > WAIT_THRESHOLD_S for v in values)
        for stat, value, unit in (
            ("median", statistics.median(values), "s"),
            ("max", max(values), "s"),
            (f"waited (> {WAIT_THRESHOLD_S:g} s)", waited, "processes"),
        ):
            rows.append(
                row(
                    "iterator_teardown",
                    variant,
                    value,
                    unit,
                    statistic=stat,
                    trials=len(values),
                    **settings,
                )
            )
    return rows
