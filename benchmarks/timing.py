"""Timing helpers shared by the benchmarks: medians over repeats with warm-up excluded,
variants timed in turns, and the row format of `tables/bench.csv`."""

from __future__ import annotations

import statistics
import time

import tensorflow as tf


def row(benchmark, variant, value, unit, **settings) -> dict:
    """One row of the benchmark table: `{"benchmark", "variant", "value", "unit", **settings}`.

    Args:
      benchmark: the benchmark's name, e.g. "train_step".
      variant: what was measured, e.g. "ours_jit=False" or a ratio's name.
      value: the measured number.
      unit: its unit, e.g. "images/s", "s" or "ratio".
      **settings: further columns (model, batch size, ...).
    """
    return {
        "benchmark": benchmark,
        "variant": variant,
        "value": float(value),
        "unit": unit,
        **settings,
    }


def block(result) -> None:
    """Fetch every tensor of `result`, so that the work that made it has really finished."""
    for t in tf.nest.flatten(result):
        if hasattr(t, "numpy"):
            t.numpy()


def time_call(fn, repeats=5, warmup=1) -> float:
    """Median wall time of `fn()` in seconds (results fetched, so the work really finished).

    Args:
      fn: the work to time, called without arguments.
      repeats: timed calls (the median is returned).
      warmup: untimed calls first (tracing, caches).
    """
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_interleaved(fns: dict, repeats=5, warmup=1, cpu_seconds: dict | None = None) -> dict:
    """Median wall time of each `fns[name]()`, timed in turns (A, B, A, B, ...) so that a slow
    drift of the machine (another process, clocks) affects every variant alike.

    Args:
      fns: `{name: fn}`, each called without arguments.
      repeats: timed rounds (the median of each variant is returned).
      warmup: untimed calls of each variant first.
      cpu_seconds: a dict that, if given, receives each variant's median CPU time of this
        process (all threads): less sensitive than wall time to other processes taking the
        cores.
    """
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    times = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            block(fn())
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    if cpu_seconds is not None:
        cpu_seconds.update({name: statistics.median(t) for name, t in cpu.items()})
    return {name: statistics.median(t) for name, t in times.items()}
