r"""Benchmarks: training step, input pipeline, PGD vs cleverhans, robust evaluation, C&W,
corruptions, and achieved FLOP/s vs the measured matmul peak. All in one process, one run.

  python launch/bench.py                # full (CPU: ~10 minutes); writes tables/bench.{csv,md}
  python launch/bench.py --quick --out=/tmp/bench   # under a minute (CI)

Medians over repeats, warm-up excluded. Ratios are reported, never asserted.
"""

from absl import app, flags, logging

from tempscale_tf import cli

cli.quiet_tensorflow()

flags.DEFINE_bool("quick", False, "Tiny sizes (a smoke test of every benchmark).")
flags.DEFINE_string("out", "tables/bench", "Output path without extension (.csv and .md).")
flags.DEFINE_list("models", ["small_cnn", "resnet20_cifar", "resnet50_cifar"], "Models to time.")
flags.DEFINE_list("batch_sizes", ["32", "128", "256"], "Training batch sizes.")
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
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from tempscale_tf import bench, models, tables

    quick = FLAGS.quick
    model_names = ["small_cnn"] if quick else FLAGS.models
    batch_sizes = [32] if quick else [int(b) for b in FLAGS.batch_sizes]
    rows = []
    for name in model_names:
        sizes = batch_sizes if name != "resnet50_cifar" else batch_sizes[:1]
        logging.info("training step: %s %s", name, sizes)
        step_rows = bench.bench_train_step(
            name, sizes, steps=2 if quick else 5, repeats=2 if quick else 3
        )
        rows += step_rows
        graph = [r for r in step_rows if r["variant"] == "ours_jit=False"][-1]
        rows += bench.bench_flops_ratio(name, graph["batch_size"], graph["value"])
    logging.info("input pipeline")
    rows += bench.bench_input_pipeline("digits", None, 128, num_batches=5 if quick else 50)
    try:
        rows += bench.bench_input_pipeline(
            "cifar10", FLAGS.data_dir, 128, num_batches=5 if quick else 100
        )
    except FileNotFoundError as e:
        logging.warning("cifar10 input pipeline skipped: %s", e)

    n = 16 if quick else FLAGS.attack_batch
    import os

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
    rows += bench.bench_pgd(model, x, y, steps=3 if quick else 20, repeats=1 if quick else 5)
    logging.info("robust evaluation")
    rows += bench.bench_robust_eval(
        model, x, y, steps=3 if quick else 20, repeats=1 if quick else 3
    )
    logging.info("C&W-L2")
    rows += bench.bench_cw_l2(model, x[:8], y[:8], 1 if quick else 3, 5 if quick else 50)
    logging.info("AutoAttack: ours vs ART")
    x_test, y_test = data.load_arrays("digits", "test")
    k = 16 if quick else FLAGS.autoattack_examples
    # eps chosen so that the robust accuracy is informative (near 0.5) for each model.
    for build, eps in [
        (bench.digits_linear_model, 0.075),
        (bench.digits_attack_model, 0.015),
    ]:
        attack_model_k = build(epochs=1) if quick else build()
        rows += bench.bench_autoattack(
            attack_model_k,
            x_test[:k],
            y_test[:k],
            eps=0.1 if quick else eps,
            steps=5 if quick else 100,
            queries=20 if quick else 5000,
        )
    logging.info("corruptions")
    rows += bench.bench_corruptions(
        32 if quick else 256, ["gaussian_noise", "fog"] if quick else None
    )

    frame = pd.DataFrame(rows)
    command = cli.command_line()
    settings = {
        "machine": bench.machine_description(),
        "quick": quick,
        "attack model": attack_model,
        "attack batch": n,
    }
    notes = _ratios(frame)
    text = tables.write_table(frame.to_dict("records"), FLAGS.out, command, settings, notes)
    print(text)


def _ratios(frame):
    """Headline ratios measured side by side in this run."""

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
    notes.append(f"PGD-20 ours / cleverhans throughput: {ours / theirs:.2f}x")
    notes.append(
        f"Robust-accuracy evaluation speed-up over cleverhans PGD on every example: "
        f"{value('robust_eval', 'speedup_ours_vs_cleverhans'):.2f}x"
    )
    for model in frame[frame.benchmark == "train_step"]["model"].unique():
        sub = frame[(frame.benchmark == "train_step") & (frame.model == model)]
        b = int(sub["batch_size"].max())
        graph = value("train_step", "ours_jit=False", model=model, batch_size=b)
        xla = value("train_step", "ours_jit=True", model=model, batch_size=b)
        fit = value("train_step", "keras_fit_stock_loss", model=model, batch_size=b)
        notes.append(
            f"{model} batch {b}: ours (graph) {graph:.0f} img/s, XLA/graph "
            f"{xla / graph:.2f}x, ours/keras-fit {graph / fit:.2f}x"
        )
    pipeline = frame[frame.benchmark == "input_pipeline"]
    step = frame[(frame.benchmark == "train_step") & (frame.variant == "ours_jit=False")]
    if len(pipeline) and len(step):
        notes.append(
            f"Input pipeline / fastest training step: "
            f"{pipeline['value'].min() / step['value'].max():.1f}x"
        )
    ratio = frame[(frame.benchmark == "flops") & (frame.variant == "achieved_over_peak")]
    for _, r in ratio.iterrows():
        notes.append(
            f"{r['model']}: achieved training FLOP/s = {r['value']:.1%} of the "
            "measured float32 matmul peak"
        )
    return notes


if __name__ == "__main__":
    cli.run(main)
