"""Attack benchmarks against the test-only oracle cleverhans: PGD-20 throughput (in this process
and across fresh processes, see `bench_pgd_processes`), robust-accuracy evaluation with early
exit, and C&W-L2 time per image."""

from __future__ import annotations

import re
import statistics

import keras
import numpy as np
import tensorflow as tf

from benchmarks import timing
from benchmarks.timing import row, time_call, time_interleaved
from tempscale_tf import attacks, distribute, models


def _cleverhans_pgd(model, x, y, eps, step, steps):
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    return projected_gradient_descent(
        model,
        x,
        eps,
        step,
        steps,
        np.inf,
        y=y,
        rand_init=True,
        clip_min=0.0,
        clip_max=1.0,
        sanity_checks=False,
    )


def bench_pgd(model, x, y, eps=8 / 255, step=2 / 255, steps=20, repeats=3):
    """PGD-20 throughput (images x steps / s): ours (graph, and XLA on a GPU) vs cleverhans.

    Args:
      model: a Keras model returning logits of images in [0, 1].
      x: the images (a tensor).
      y: their integer labels (a tensor).
      eps: the L-inf radius.
      step: the step size.
      steps: PGD steps.
      repeats: timed rounds (medians reported).
    """
    n = int(x.shape[0])
    rows = []
    variants = {
        "ours_jit=False": lambda: attacks.pgd(
            model, x, y, eps, step, steps, jit_compile=False, seed=0
        ),
        "cleverhans": lambda: _cleverhans_pgd(model, x, y, eps, step, steps),
    }
    if distribute.gpu_available():
        variants["ours_jit=True"] = lambda: attacks.pgd(
            model, x, y, eps, step, steps, jit_compile=True, seed=0
        )
    for name, seconds in time_interleaved(variants, repeats=repeats).items():
        rows.append(row("pgd20", name, n * steps / seconds, "images*steps/s", batch_size=n))
    return rows


def pgd_vs_cleverhans(
    model_name="small_cnn", batch_size=256, steps=20, repeats=5, eps=8 / 255, step=2 / 255, seed=0
) -> dict:
    """One side-by-side timing, in this process, of our PGD (graph mode) and cleverhans' on
    `model_name` with random weights and random images (labels = its predictions).

    Args:
      model_name: a `models.MODELS` name (32x32x3 inputs, 10 classes).
      batch_size: images attacked at once.
      steps: PGD steps.
      repeats: timed rounds (medians reported).
      eps: the L-inf radius.
      step: the step size.
      seed: seeds the weights and the images.

    Returns:
      The median seconds (wall and process CPU) of each and the throughput ratios
      ours / cleverhans (`ratio` from wall time, `cpu_ratio` from CPU time), plus the number of
      max-pooling layers of the model (see `bench_pgd_processes`).
    """
    keras.utils.set_random_seed(seed)
    model = models.build_model(model_name, 10, (32, 32, 3))
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.uniform(size=(batch_size, 32, 32, 3)).astype("float32"))
    y = tf.constant(np.argmax(model(x), -1).astype("int32"))
    fns = {
        "ours": lambda: attacks.pgd(model, x, y, eps, step, steps, jit_compile=False, seed=0),
        "cleverhans": lambda: _cleverhans_pgd(model, x, y, eps, step, steps),
    }
    cpu = {}
    wall = time_interleaved(fns, repeats=repeats, cpu_seconds=cpu)
    return {
        "ours_s": wall["ours"],
        "cleverhans_s": wall["cleverhans"],
        "ours_cpu_s": cpu["ours"],
        "cleverhans_cpu_s": cpu["cleverhans"],
        "ratio": wall["cleverhans"] / wall["ours"],
        "cpu_ratio": cpu["cleverhans"] / cpu["ours"],
        "maxpool_layers": sum(isinstance(la, keras.layers.MaxPooling2D) for la in model.layers),
    }


# oneDNN's graph rewrite (TensorFlow's MklLayoutRewritePass), logged at VLOG level 1.
_ONEDNN_REWRITE_LOG = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "mkl_layout_pass=1"}
_REWROTE_LOOP_MAXPOOL_GRAD = re.compile(r"rewrote node \S*while/body\S*/MaxPoolGrad with op")


def onednn_loop_maxpool_grads(log: str):
    """How many `MaxPoolGrad` ops inside a while loop the oneDNN rewrite turned into oneDNN
    kernels, counted in a TensorFlow log written with `_ONEDNN_REWRITE_LOG`; None when the log
    has no rewrite lines (oneDNN off, a GPU, or another log format)."""
    if "MklLayoutRewritePass" not in log:
        return None
    return len(_REWROTE_LOOP_MAXPOOL_GRAD.findall(log))


def bench_pgd_processes(
    num_processes=5, model_name="small_cnn", batch_size=256, steps=20, repeats=5, timeout=1800
):
    """PGD ours / cleverhans throughput in `num_processes` fresh processes, one at a time.

    Within one process the ratio is stable, across processes it is not: a small CNN measured
    about 0.75x in some processes and about 1.0x in others. The cause is TensorFlow's oneDNN
    graph rewrite (MklLayoutRewritePass): it turns `MaxPoolGrad` into the oneDNN kernel only if
    it visits the matching forward `MaxPool` first (the oneDNN kernel needs its workspace). It
    visits nodes in "reverse post order", which is a topological order only for acyclic graphs;
    PGD's `tf.while_loop`, lowered to Switch/Merge/NextIteration, is a cycle, and the order
    there follows the iteration order of pointer-keyed edge sets, so it changes from process
    to process. Each max-pooling gradient left to TensorFlow's own kernel costs several times
    more (cleverhans runs one step per `tf.function` call, an acyclic graph, and always gets
    the oneDNN kernel). Each process's log of that rewrite is read to record, next to its
    ratio, how many of the loop's max-pooling gradients got the oneDNN kernel
    (`loop_maxpool_grads_onednn` of `maxpool_layers`).

    Args:
      num_processes: fresh processes, run one after the other.
      model_name: the model of `pgd_vs_cleverhans` in each.
      batch_size: images attacked at once.
      steps: PGD steps.
      repeats: timed rounds per process.
      timeout: seconds per process.

    Returns:
      Rows: one per process (`process_<i>`: the wall-time ratio, with the seconds, the
      CPU-time ratio, and that count), then the median, min and max of the wall-time and
      CPU-time ratios.
    """
    kwargs = dict(model_name=model_name, batch_size=batch_size, steps=steps, repeats=repeats)
    settings = dict(model=model_name, batch_size=batch_size, steps=steps, processes=num_processes)
    rows, ratios, cpu_ratios = [], [], []
    for i in range(num_processes):
        result, log = timing.run_in_fresh_process(
            "attacks.pgd_vs_cleverhans", timeout=timeout, env=_ONEDNN_REWRITE_LOG, **kwargs
        )
        onednn = onednn_loop_maxpool_grads(log)
        ratios.append(result["ratio"])
        cpu_ratios.append(result["cpu_ratio"])
        rows.append(
            row(
                "pgd20_processes",
                f"process_{i}",
                result["ratio"],
                "ratio",
                **settings,
                ours_s=result["ours_s"],
                cleverhans_s=result["cleverhans_s"],
                cpu_ratio=result["cpu_ratio"],
                maxpool_layers=result["maxpool_layers"],
                loop_maxpool_grads_onednn=np.nan if onednn is None else onednn,
            )
        )
    for label, values in (("ratio", ratios), ("cpu_ratio", cpu_ratios)):
        for stat, fn in (("median", statistics.median), ("min", min), ("max", max)):
            rows.append(row("pgd20_processes", f"{label}_{stat}", fn(values), "ratio", **settings))
    return rows


def bench_robust_eval(model, x, y, eps=8 / 255, step=2 / 255, steps=20, repeats=2):
    """Robust-accuracy evaluation: ours (worst case, early exit) vs cleverhans PGD on every example.

    Ours runs PGD-CE then margin PGD, each only on the examples still robust and with
    `early_stop=4` inside the attack; cleverhans runs PGD-CE on every example for every step.
    Both robust accuracies are reported (ours is never higher: it keeps any success).

    Args:
      model: the attacked model, as in `bench_pgd`; `x` and `y` its images and labels.
      eps: the L-inf radius; `step` and `steps`, the PGD step size and number of steps.
      repeats: timed rounds of each of the three evaluations (medians reported).
    """
    y_np = y.numpy()
    adv = {}

    def theirs():
        adv["cleverhans"] = _cleverhans_pgd(model, x, y, eps, step, steps)
        return adv["cleverhans"]

    def ours_list(names):
        return [
            a
            for a in attacks.default_attacks(eps, 1.0, steps, step_size=step, seed=0, early_stop=4)
            if a[0] in names
        ]

    result = {}

    def ours(names, key):
        result[key] = attacks.worst_case(model, x, y, ours_list(names))
        return result[key].adv

    seconds = time_interleaved(
        {
            "cleverhans": theirs,
            "one": lambda: ours(("pgd_ce_t1",), "one"),
            "two": lambda: ours(("pgd_ce_t1", "pgd_margin"), "two"),
        },
        repeats=repeats,
    )
    ch_seconds, one_seconds, two_seconds = seconds["cleverhans"], seconds["one"], seconds["two"]
    ch_acc = float(np.mean(np.argmax(model(adv["cleverhans"]), -1) == y_np))
    n = int(x.shape[0])
    return [
        row(
            "robust_eval",
            "cleverhans_pgd_all_examples",
            ch_seconds,
            "s",
            batch_size=n,
            robust_accuracy=ch_acc,
        ),
        row(
            "robust_eval",
            "ours_pgd_early_exit",
            one_seconds,
            "s",
            batch_size=n,
            robust_accuracy=result["one"].robust_accuracy,
        ),
        row(
            "robust_eval",
            "ours_pgd+margin_early_exit",
            two_seconds,
            "s",
            batch_size=n,
            robust_accuracy=result["two"].robust_accuracy,
        ),
        row(
            "robust_eval",
            "speedup_ours_vs_cleverhans",
            ch_seconds / one_seconds,
            "ratio",
            batch_size=n,
        ),
    ]


def bench_cw_l2(model, x, y, binary_search_steps=3, max_iterations=50):
    """Seconds per image of our Carlini-Wagner L2 attack (one timed run).

    Args:
      model: a Keras model returning logits of images in [0, 1].
      x: the images (a tensor).
      y: their integer labels (a tensor).
      binary_search_steps: the attack's searches over its constant.
      max_iterations: optimiser steps per search.
    """
    n = int(x.shape[0])
    seconds = time_call(
        lambda: attacks.carlini_wagner_l2(
            model, x, y, binary_search_steps=binary_search_steps, max_iterations=max_iterations
        ).adv,
        repeats=1,
    )
    return [
        row(
            "cw_l2",
            "ours",
            seconds / n,
            "s/image",
            batch_size=n,
            iterations=binary_search_steps * max_iterations,
        )
    ]
