"""The benchmark suite behind `launch/bench.py`: which benchmarks run, in which order, with which
sizes, and the headline ratios written under the table. The script only parses flags.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from benchmarks import attacks as attack_bench
from benchmarks import autoattack, flops, pipeline, train_step
from benchmarks.sections import SECTIONS


@dataclasses.dataclass
class Options:
    """What to run. `quick` shrinks every benchmark to a smoke test."""

    quick: bool = False
    models: tuple = ("small_cnn", "resnet20_cifar", "resnet50_cifar", "fast_cifar")
    batch_sizes: tuple = (32, 128, 256)
    fast_batch_size: int = 1024
    attack_batch: int = 128
    data_dir: str = "../shared/data"
    attack_workdir: str = ""
    autoattack_examples: int = 128
    pgd_processes: int = 5
    sections: tuple = SECTIONS


def run(options: Options) -> tuple[list, dict]:
    """Run every benchmark; return (rows, settings for the table)."""
    unknown = set(options.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown benchmark sections {sorted(unknown)}; choose from {SECTIONS}")
    q, rows, settings = options.quick, [], {"quick": options.quick}
    if "train_step" in options.sections:
        rows += train_step_rows(options)
    if "input_pipeline" in options.sections:
        rows += input_pipeline_rows(options)
    if "attacks" in options.sections:
        model, x, y, attack_model = attack_target(options)
        rows += attack_rows(options, model, x, y)
        settings.update({"attack model": attack_model, "attack batch": int(len(y))})
    if "autoattack" in options.sections:
        rows += autoattack_rows(options)
    if "corruptions" in options.sections:
        logging.info("corruptions")
        names = ["gaussian_noise", "fog"] if q else None
        rows += pipeline.bench_corruptions(32 if q else 256, names)
    if "iterator_teardown" in options.sections:
        logging.info("iterator teardown (about 2 minutes, mostly idle)" if not q else "teardown")
        # The fast recipe's epoch: 48 CIFAR-10 batches of 1024 (digits when CIFAR-10 is absent).
        name, data_dir, batch = "cifar10", options.data_dir, 1024
        if q or not os.path.isdir(os.path.join(options.data_dir, "cifar10")):
            name, data_dir, batch = "digits", None, 64
        rows += pipeline.bench_iterator_teardown(
            name,
            data_dir,
            batch,
            num_batches=3 if q else 48,
            pause=0.0 if q else 1.7,
            trials=1 if q else 5,
        )
    if "onednn" in options.sections:
        logging.info("float32 training step with oneDNN off / on (fresh processes)")
        names = ["small_cnn"] if q else [m for m in options.models if m != "resnet50_cifar"]
        batch = 32 if q else options.fast_batch_size
        rows += train_step.bench_onednn(
            names,
            batch,
            rounds=1 if q else 2,
            steps=2 if q else 3,
            repeats=1 if q else 2,
            min_seconds=0.2 if q else 2.0,
            data_dir=options.data_dir,
        )
    return rows, settings


def train_step_rows(options: Options) -> list:
    """The loop's own step per model and batch size, and its achieved FLOP/s."""
    quick = options.quick
    rows = []
    for name in ["small_cnn"] if quick else options.models:
        sizes = [32] if quick else list(options.batch_sizes)
        if name == "resnet50_cifar":
            sizes = sizes[:1]
        fast = name == "fast_cifar"  # its whitening reads training images; XLA skipped (slow)
        if fast and not quick:
            sizes = [options.fast_batch_size]
        logging.info("training step (the loop's own step): %s %s", name, sizes)
        step_rows = train_step.bench_train_step(
            name,
            sizes,
            steps=2 if quick else 5,
            repeats=2 if quick else 3,
            min_seconds=0.2 if quick else 2.0,
            jit_options=(False,) if fast else (False, True),
            config_overrides={"data_dir": options.data_dir} if fast else None,
        )
        rows += step_rows
        largest = max(r["batch_size"] for r in step_rows if r.get("batch_size"))
        variants = {"ours_jit=False": "float32", "ours_mixed_bfloat16_jit=False": "mixed_bfloat16"}
        rates = {
            variants[r["variant"]]: r["value"]
            for r in step_rows
            if r["variant"] in variants and r.get("batch_size") == largest
        }
        rows += flops.bench_flops_ratio(name, largest, rates)
    return rows


def input_pipeline_rows(options: Options) -> list:
    logging.info("input pipeline")
    quick = options.quick
    rows = pipeline.bench_input_pipeline("digits", None, 128, num_batches=5 if quick else 50)
    try:
        rows += pipeline.bench_input_pipeline(
            "cifar10", options.data_dir, 128, num_batches=5 if quick else 100
        )
    except FileNotFoundError as e:
        logging.warning("cifar10 input pipeline skipped: %s", e)
    return rows


def attack_target(options: Options):
    """(model, x, y, description): a trained run's test images, or a random-weight model."""
    import tensorflow as tf

    from tempscale_tf import data, models, training

    n = 16 if options.quick else options.attack_batch
    if not options.quick and options.attack_workdir:
        if not os.path.exists(os.path.join(options.attack_workdir, "metrics.json")):
            raise ValueError(f"--attack_workdir={options.attack_workdir} is not a finished run")
        model, run_config = training.load_run(options.attack_workdir)
        x, y = next(iter(data.load(run_config.dataset, "test", run_config.data_dir, n)))
        return model, x, y, f"trained run {options.attack_workdir} on {n} test images"
    model = models.build_model(
        "resnet20_cifar" if not options.quick else "small_cnn", 10, (32, 32, 3)
    )
    x = tf.constant(np.random.default_rng(0).uniform(size=(n, 32, 32, 3)).astype("float32"))
    y = tf.constant(np.argmax(model(x), -1).astype("int32"))  # clean accuracy 100%
    return model, x, y, f"{model.name} (random weights) on random images"


def attack_rows(options: Options, model, x, y) -> list:
    """PGD vs cleverhans (here and in fresh processes), robust evaluation, C&W-L2.

    Args:
      options: what to run.
      model: the attacked model.
      x: its images `[n, 32, 32, 3]` in [0, 1].
      y: their labels `[n]`.
    """
    quick = options.quick
    logging.info("PGD-20")
    rows = attack_bench.bench_pgd(model, x, y, steps=3 if quick else 20, repeats=1 if quick else 5)
    logging.info("PGD-20 vs cleverhans in fresh processes")
    rows += attack_bench.bench_pgd_processes(
        2 if quick else options.pgd_processes,
        "small_cnn",
        batch_size=32 if quick else 256,
        steps=3 if quick else 20,
        repeats=1 if quick else 5,
    )
    logging.info("robust evaluation")
    rows += attack_bench.bench_robust_eval(
        model, x, y, steps=3 if quick else 20, repeats=1 if quick else 3
    )
    logging.info("C&W-L2")
    rows += attack_bench.bench_cw_l2(model, x[:8], y[:8], 1 if quick else 3, 5 if quick else 50)
    return rows


def autoattack_rows(options: Options) -> list:
    """Ours vs ART's AutoAttack on digits models (eps chosen for a robust accuracy near 0.5)."""
    from tempscale_tf import data

    logging.info("AutoAttack: ours vs ART")
    quick = options.quick
    x_test, y_test = data.load_arrays("digits", "test")
    k = 16 if quick else options.autoattack_examples
    rows = []
    for build, eps in [
        (autoattack.digits_linear_model, 0.075),
        (autoattack.digits_attack_model, 0.015),
    ]:
        model = build(epochs=1) if quick else build()
        rows += autoattack.bench_autoattack(
            model,
            x_test[:k],
            y_test[:k],
            eps=0.1 if quick else eps,
            steps=5 if quick else 100,
            queries=20 if quick else 5000,
        )
    return rows


def headline_notes(frame) -> list[str]:
    """Headline ratios measured side by side in this run (of the sections that ran)."""
    # Columns that only some sections' rows have (a run of a few sections lacks them).
    optional = ("model", "batch_size", "loop_maxpool_grads_onednn")
    frame = frame.reindex(columns=[*frame.columns, *(c for c in optional if c not in frame)])
    value = _value_lookup(frame)
    return [
        *_autoattack_notes(frame),
        *_pgd_notes(frame, value),
        *_train_step_notes(frame, value),
        *_flops_notes(frame, value),
        *_teardown_notes(frame),
        *_onednn_notes(frame),
    ]


def _onednn_notes(frame) -> list[str]:
    rows = frame[(frame.benchmark == "onednn") & (frame.variant == "onednn_on_over_off")]
    return [
        f"{r.model} batch {int(r.batch_size)}, float32 step, oneDNN on / off: {r.value:.2f}x "
        f"(median of {int(r.processes)} fresh processes each)"
        for r in rows.itertuples()
    ]


def _teardown_notes(frame) -> list[str]:
    rows = frame[frame.benchmark == "iterator_teardown"]
    if not len(rows):
        return []
    first = rows.iloc[0]
    stats = rows.set_index(["variant", "statistic"])["value"]
    waited = f"waited (> {pipeline.WAIT_THRESHOLD_S:g} s)"
    times = ", ".join(
        f"{v} {stats[(v, 'median')]:.1f} s (max {stats[(v, 'max')]:.1f} s; "
        f"{int(stats[(v, waited)])} of {int(first.trials)} waited)"
        for v in pipeline.TEARDOWN_VARIANTS
    )
    return [
        f"Destroying an iterator after {int(first.batches)} batches read {first.pause_s:g} s "
        f"apart, median over {int(first.trials)} processes: {times}. An autotuned iterator "
        f"can wait for its autotuner thread (up to 60 s); whether it does is random, so the "
        f"count of processes that waited matters more than the median."
    ]


def _value_lookup(frame):
    def value(benchmark, variant, **where):
        sel = frame[(frame.benchmark == benchmark) & (frame.variant == variant)]
        for k, v in where.items():
            sel = sel[sel[k] == v]
        return float(sel["value"].iloc[-1]) if len(sel) else float("nan")

    return value


def _autoattack_notes(frame) -> list[str]:
    notes = []
    aa = frame[frame.benchmark == "autoattack"]
    for model in aa["model"].unique():
        sub = aa[aa.model == model].set_index("variant")
        if "art" not in sub.index:
            continue
        notes.append(
            f"AutoAttack (APGD-CE, APGD-DLR, Square {int(sub.loc['ours', 'queries'])} queries) "
            f"on {int(sub.loc['ours', 'batch_size'])} digits images, {model}, "
            f"eps={sub.loc['ours', 'eps']:g}: ours {sub.loc['ours', 'value']:.1f} s vs ART "
            f"{sub.loc['art', 'value']:.1f} s ({sub.loc['speedup_ours_vs_art', 'value']:.1f}x; "
            f"ours on its first call, tracing included: "
            f"{sub.loc['ours_first_call', 'value']:.1f} s), "
            f"robust accuracy {sub.loc['ours', 'robust_accuracy']:.3f} vs "
            f"{sub.loc['art', 'robust_accuracy']:.3f}"
        )
    return notes


def _pgd_notes(frame, value) -> list[str]:
    import pandas as pd

    if not (frame.benchmark == "pgd20").any():  # the attack section did not run
        return []
    ours, theirs = value("pgd20", "ours_jit=False"), value("pgd20", "cleverhans")
    notes = [f"PGD-20 ours / cleverhans throughput (this process): {ours / theirs:.2f}x"]
    spread = frame[frame.benchmark == "pgd20_processes"].set_index("variant")
    if len(spread):
        stat = lambda name: spread.loc[name, "value"]
        per_process = spread[spread.index.str.startswith("process_")]
        onednn = [
            "?" if pd.isna(v) else str(int(v)) for v in per_process["loop_maxpool_grads_onednn"]
        ]
        notes.append(
            f"PGD-20 ours / cleverhans throughput across {len(per_process)} fresh processes "
            f"({spread['model'].iloc[0]}, batch {int(spread['batch_size'].iloc[0])}): "
            f"median {stat('ratio_median'):.2f}x (min {stat('ratio_min'):.2f}, "
            f"max {stat('ratio_max'):.2f}); from CPU time {stat('cpu_ratio_median'):.2f}x "
            f"({stat('cpu_ratio_min'):.2f}-{stat('cpu_ratio_max'):.2f}); max-pool gradients of "
            f"the PGD loop on oneDNN kernels, per process: {', '.join(onednn)} of "
            f"{int(per_process['maxpool_layers'].iloc[0])}"
        )
    notes.append(
        f"Robust-accuracy evaluation speed-up over cleverhans PGD on every example: "
        f"{value('robust_eval', 'speedup_ours_vs_cleverhans'):.2f}x"
    )
    return notes


def _train_step_notes(frame, value) -> list[str]:
    notes = []
    for model in frame[frame.benchmark == "train_step"]["model"].unique():
        sub = frame[(frame.benchmark == "train_step") & (frame.model == model)]
        b = int(sub["batch_size"].max())
        graph = value("train_step", "ours_jit=False", model=model, batch_size=b)
        xla = value("train_step", "ours_jit=True", model=model, batch_size=b)
        fit_ratio = value("train_step", "ours_over_keras_fit", model=model, batch_size=b)
        mixed = [v for v in sub["variant"].unique() if v.endswith("_over_float32")]
        mixed_text = "".join(
            f", {v.removesuffix('_over_float32')}/float32 "
            f"{value('train_step', v, model=model, batch_size=b):.2f}x"
            for v in mixed
        )
        notes.append(
            f"{model} batch {b}, the training loop's step (weight decay, strategy, schedule): "
            f"{graph:.0f} img/s (graph, float32), "
            + (f"XLA/graph {xla / graph:.2f}x, " if xla == xla else "")
            + f"ours/keras-fit {fit_ratio:.2f}x{mixed_text}"
        )
    pipeline_rows = frame[frame.benchmark == "input_pipeline"]
    step = frame[(frame.benchmark == "train_step") & (frame.variant == "ours_jit=False")]
    if len(pipeline_rows) and len(step):
        notes.append(
            f"Input pipeline / fastest training step: "
            f"{pipeline_rows['value'].min() / step['value'].max():.1f}x"
        )
    return notes


def _flops_notes(frame, value) -> list[str]:
    notes = []
    flops_rows = frame[frame.benchmark == "flops"]
    peak = lambda name: value("flops", f"matmul_peak_{name}") / 1e9
    if len(flops_rows):
        notes.append(
            f"Measured matmul peaks (2048^2): float32 {peak('float32'):.0f} GFLOP/s, bfloat16 "
            f"{peak('bfloat16'):.0f} GFLOP/s"
        )
    for model in flops_rows["model"].dropna().unique():
        parts = []
        for precision in ("float32", "mixed_bfloat16"):
            achieved = value("flops", f"train_achieved_{precision}", model=model)
            if achieved != achieved:  # NaN: not measured
                continue
            parts.append(
                f"{precision} step {achieved / 1e9:.0f} GFLOP/s = "
                f"{value('flops', f'{precision}_step_over_float32_peak', model=model):.0%} of "
                f"the float32 peak, "
                f"{value('flops', f'{precision}_step_over_bfloat16_peak', model=model):.0%} of "
                f"the bfloat16 peak"
            )
        notes.append(f"{model}: " + "; ".join(parts))
    return notes
