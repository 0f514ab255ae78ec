"""Timing helpers shared by the benchmarks: medians over repeats with warm-up excluded,
variants timed in turns, and the row format of `tables/bench.csv`."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import tensorflow as tf

# The repository root (the folder of `benchmarks/` and `tempscale_tf/`): a fresh process gets it
# on PYTHONPATH, so that it imports this checkout's `benchmarks` and `tempscale_tf`.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_RESULT_MARKER = "BENCH_RESULT_JSON "


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


def run_in_fresh_process(name, timeout=1800, env=None, **kwargs):
    """`name(**kwargs)` in a new Python process: (its JSON-able result, its stderr).

    The process imports this checkout's `benchmarks` and `tempscale_tf` (the repository root
    is put first on its PYTHONPATH).

    Args:
      name: "<module>.<function>" of a module of the `benchmarks` package, e.g.
        "attacks.pgd_vs_cleverhans".
      timeout: seconds before the process is killed (`subprocess.TimeoutExpired`).
      env: environment variables to set in the process (on top of this one's).
      **kwargs: the function's arguments (JSON-serialisable).
    """
    code = "import sys; from benchmarks import timing; timing._child_main(sys.argv[1:])"
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-c", code, name, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(_RESULT_MARKER)]
    if result.returncode or not lines:
        raise RuntimeError(
            f"benchmark subprocess {name}({kwargs}) failed with exit code "
            f"{result.returncode}:\n{result.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(_RESULT_MARKER) :]), result.stderr


def _child_main(argv):
    name, kwargs = argv[0], json.loads(argv[1])
    module, function = name.rsplit(".", 1)
    result = getattr(importlib.import_module(f"benchmarks.{module}"), function)(**kwargs)
    print(_RESULT_MARKER + json.dumps(result), flush=True)
