r"""Benchmarks: the training loop's step (float32, XLA, mixed bfloat16) vs model.fit, input
pipeline, PGD vs cleverhans (in one process and across fresh processes), robust evaluation, C&W,
corruptions, and achieved FLOP/s vs the measured matmul peak. One run; every row records the CPU
and its bfloat16 features (`cpu` column).

  python launch/bench.py                # full (CPU: ~15 minutes); writes tables/bench.{csv,md}
  python launch/bench.py --quick --out=/tmp/bench   # a smoke test of every benchmark (CI)

Medians over repeats, warm-up excluded, variants timed in turns. Ratios are reported, never
asserted.
"""

import os
import sys

# `python launch/bench.py` puts only launch/ on sys.path: add the repository root for the
# `benchmarks` package (not installed with the library).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from tempscale_tf import cli  # noqa: E402

cli.quiet_tensorflow()

flags.DEFINE_bool("quick", False, "Tiny sizes (a smoke test of every benchmark).")
flags.DEFINE_string("out", "tables/bench", "Output path without extension (.csv and .md).")
flags.DEFINE_list(
    "models", ["small_cnn", "resnet20_cifar", "resnet50_cifar", "fast_cifar"], "Models to time."
)
flags.DEFINE_list("batch_sizes", ["32", "128", "256"], "Training batch sizes.")
flags.DEFINE_integer("fast_batch_size", 1024, "fast_cifar's batch size (its recipe's).")
flags.DEFINE_integer("attack_batch", 128, "Images per attack benchmark.")
flags.DEFINE_string(
    "data_dir", "../shared/data", "For the CIFAR-10 input pipeline (skipped if " "absent)."
)
flags.DEFINE_string(
    "attack_workdir",
    "",
    "A trained run to attack in the PGD / robust-evaluation benchmarks (default: a ResNet-20 "
    "with random weights on random images).",
)
flags.DEFINE_integer("autoattack_examples", 128, "Digits test images for the AutoAttack timing.")
flags.DEFINE_integer(
    "pgd_processes", 5, "Fresh processes for the PGD-vs-cleverhans spread (2 with --quick)."
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from benchmarks import attacks as attack_bench
    from benchmarks import autoattack, flops, pipeline, train_step
    from tempscale_tf import machine, models, tables

    quick = FLAGS.quick
    model_names = ["small_cnn"] if quick else FLAGS.models
    batch_sizes = [32] if quick else [int(b) for b in FLAGS.batch_sizes]
    rows = []
    for name in model_names:
        sizes = batch_sizes if name != "resnet50_cifar" else batch_sizes[:1]
        if name == "fast_cifar":
            sizes = [FLAGS.fast_batch_size] if not quick else [32]
        logging.info("training step (the loop's own step): %s %s", name, sizes)
        fast = name == "fast_cifar"  # its whitening reads training images; XLA skipped (slow)
        step_rows = train_step.bench_train_step(
            name,
            sizes,
            steps=2 if quick else 5,
            repeats=2 if quick else 3,
            min_seconds=0.2 if quick else 2.0,
            jit_options=(False,) if fast else (False, True),
            config_overrides={"data_dir": FLAGS.data_dir} if fast else None,
        )
        rows += step_rows
        largest = max(r["batch_size"] for r in step_rows if r.get("batch_size"))
        rates = {
            precision: r["value"]
            for r in step_rows
            for variant, precision in (
                ("ours_jit=False", "float32"),
                ("ours_mixed_bfloat16_jit=False", "mixed_bfloat16"),
            )
            if r["variant"] == variant and r.get("batch_size") == largest
        }
        rows += flops.bench_flops_ratio(name, largest, rates)
    logging.info("input pipeline")
    rows += pipeline.bench_input_pipeline("digits", None, 128, num_batches=5 if quick else 50)
    try:
        rows += pipeline.bench_input_pipeline(
            "cifar10", FLAGS.data_dir, 128, num_batches=5 if quick else 100
        )
    except FileNotFoundError as e:
        logging.warning("cifar10 input pipeline skipped: %s", e)

    n = 16 if quick else FLAGS.attack_batch
    from tempscale_tf import data, training

    if not quick and FLAGS.attack_workdir:
        if not os.path.exists(os.path.join(FLAGS.attack_workdir, "metrics.json")):
            raise app.UsageError(f"--attack_workdir={FLAGS.attack_workdir} is not a finished run")
        model, run_config = training.load_run(FLAGS.attack_workdir)
        x, y = next(iter(data.load(run_config.dataset, "test", run_config.data_dir, n)))
        attack_model = f"trained run {FLAGS.attack_workdir} on {n} test images"
    else:
        model = models.build_model("resnet20_cifar" if not quick else "small_cnn", 10, (32, 32, 3))
        rng = np.random.default_rng(0)
        x = tf.constant(rng.uniform(size=(n, 32, 32, 3)).astype("float32"))
        y = tf.constant(np.argmax(model(x), -1).astype("int32"))  # clean accuracy 100%
        attack_model = f"{model.name} (random weights) on random images"
    logging.info("PGD-20")
    rows += attack_bench.bench_pgd(model, x, y, steps=3 if quick else 20, repeats=1 if quick else 5)
    logging.info("PGD-20 vs cleverhans in fresh processes")
    rows += attack_bench.bench_pgd_processes(
        2 if quick else FLAGS.pgd_processes,
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
    logging.info("AutoAttack: ours vs ART")
    x_test, y_test = data.load_arrays("digits", "test")
    k = 16 if quick else FLAGS.autoattack_examples
    # eps chosen so that the robust accuracy is informative (near 0.5) for each model.
    for build, eps in [
        (autoattack.digits_linear_model, 0.075),
        (autoattack.digits_attack_model, 0.015),
    ]:
        attack_model_k = build(epochs=1) if quick else build()
        rows += autoattack.bench_autoattack(
            attack_model_k,
            x_test[:k],
            y_test[:k],
            eps=0.1 if quick else eps,
            steps=5 if quick else 100,
            queries=20 if quick else 5000,
        )
    logging.info("corruptions")
    rows += pipeline.bench_corruptions(
        32 if quick else 256, ["gaussian_noise", "fog"] if quick else None
    )

    cpu = machine.cpu_description()
    rows = [{**r, "cpu": cpu} for r in rows]
    frame = pd.DataFrame(rows)
    command = cli.command_line()
    settings = {
        "machine": machine.machine_description(),
        "quick": quick,
        "attack model": attack_model,
        "attack batch": n,
    }
    notes = _ratios(frame)
    text = tables.write_table(frame.to_dict("records"), FLAGS.out, command, settings, notes)
    print(text)


def _ratios(frame):
    """Headline ratios measured side by side in this run."""
    import pandas as pd

    def value(benchmark, variant, **where):
        sel = frame[(frame.benchmark == benchmark) & (frame.variant == variant)]
        for k, v in where.items():
            sel = sel[sel[k] == v]
        return float(sel["value"].iloc[-1]) if len(sel) else float("nan")

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
    ours = value("pgd20", "ours_jit=False")
    theirs = value("pgd20", "cleverhans")
    notes.append(f"PGD-20 ours / cleverhans throughput (this process): {ours / theirs:.2f}x")
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
    pipeline = frame[frame.benchmark == "input_pipeline"]
    step = frame[(frame.benchmark == "train_step") & (frame.variant == "ours_jit=False")]
    if len(pipeline) and len(step):
        notes.append(
            f"Input pipeline / fastest training step: "
            f"{pipeline['value'].min() / step['value'].max():.1f}x"
        )
    flops = frame[frame.benchmark == "flops"]
    peak = lambda name: value("flops", f"matmul_peak_{name}") / 1e9
    if len(flops):
        notes.append(
            f"Measured matmul peaks (2048^2): float32 {peak('float32'):.0f} GFLOP/s, bfloat16 "
            f"{peak('bfloat16'):.0f} GFLOP/s"
        )
    for model in flops["model"].dropna().unique():
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


if __name__ == "__main__":
    cli.run(main)
