r"""Time-to-accuracy curves of finished training runs (from their `config.json` and
`history.json`), side by side: test accuracy against cumulative training time.

  python launch/time_to_accuracy.py --workdirs=runs/c10_fast_t1,runs/c10_r20_t1 \
      --out=tables/time_to_accuracy

Training time is the wall time of the training steps (`train/seconds` per epoch; older runs:
their examples over `train/images_per_sec`), without the per-epoch evaluation.
"""

import os

from absl import app, flags

from tempscale_tf import cli

cli.quiet_tensorflow()
from tempscale_tf import tables  # noqa: E402
from tempscale_tf.files import read_json  # noqa: E402

flags.DEFINE_list("workdirs", None, "Training workdirs (or folders with the two JSON files).")
flags.DEFINE_list("thresholds", ["0.8", "0.9", "0.92", "0.93"], "Accuracies to time.")
flags.DEFINE_string("out", "tables/time_to_accuracy", "Output table (without extension).")
flags.DEFINE_multi_string("note", [], "Notes written under the table (e.g. machine load).")
flags.mark_flag_as_required("workdirs")
FLAGS = flags.FLAGS


def curve(workdir):
    config = read_json(os.path.join(workdir, "config.json"))
    history = read_json(os.path.join(workdir, "history.json"))
    steps_per_epoch = history[0]["step"] if history else 0
    total, rows = 0.0, []
    for h in history:
        seconds = h.get("train/seconds")
        if seconds is None:
            seconds = steps_per_epoch * config["batch_size"] / h["train/images_per_sec"]
        total += seconds
        rows.append((h["epoch"] + 1, total, h["test/accuracy"], h["train/images_per_sec"]))
    return config, rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    thresholds = [float(t) for t in FLAGS.thresholds]
    records, notes = [], list(FLAGS.note)
    for workdir in FLAGS.workdirs:
        config, rows = curve(workdir)
        precision = "bfloat16" if config.get("mixed_precision") else "float32"
        seed = f" s{config['seed']}" if "seed" in config else ""
        name = f"{config['model']} T={config['temperature']:g}{seed} {precision}"
        subset = config.get("train_subset") or "all"
        record = {
            "run": name,
            "train_images": subset,
            "epochs": len(rows),
            "final_test_accuracy": rows[-1][2] if rows else float("nan"),
            "training_minutes": rows[-1][1] / 60 if rows else float("nan"),
        }
        for t in thresholds:
            hit = next((r for r in rows if r[2] >= t), None)
            record[f"minutes_to_{t:g}"] = hit[1] / 60 if hit else float("nan")
        records.append(record)
        notes.append(
            f"{name} ({workdir}): "
            + ", ".join(
                f"epoch {e}: {m / 60:.1f} min, {a:.4f} ({r:.0f} img/s)" for e, m, a, r in rows
            )
        )
    from tempscale_tf import machine

    settings = {"machine": machine.machine_description()}
    tables.write_table(
        records, FLAGS.out, command=cli.command_line(), settings=settings, notes=notes
    )
    print(open(FLAGS.out + ".md").read())


if __name__ == "__main__":
    cli.run(main)
