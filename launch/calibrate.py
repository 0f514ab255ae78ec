r"""Post-hoc temperature scaling of a training run: fit T on a validation split, report, export.

  python launch/train.py --config=configs/digits_small.py --train_split='train[:-300]' \
      --workdir=runs/digits_cal
  python launch/calibrate.py --workdir=runs/digits_cal --table=tables/calibration_digits

T is fitted by minimising the NLL of softmax(logits / T) on --val_split (default
`train[-300:]`, the last 300 training images). For a clean protocol the run must not have been
trained on that split: train on `train[:-300]` as above (the script warns and records the
overlap in the JSON otherwise), or pass another --val_split. The temperature divides the raw
logits. Writes into --output_dir (default <workdir>/calibration): calibration.json (ECE,
class-wise ECE, NLL, Brier, accuracy before/after on the validation and test splits),
reliability_{val,test}_{before,after}.png, and export/ (SavedModel + model.keras of the model
followed by a TemperatureScaling(T) layer: its `logits` output is already divided by T). The
table goes to --table (default <output_dir>/calibration).{csv,md}.
"""

import os

from absl import app, flags

from tempscale_tf import cli

cli.quiet_tensorflow()
from tempscale_tf import calibration, tables  # noqa: E402

flags.DEFINE_string("workdir", None, "The training run (a launch/train.py --workdir).")
flags.DEFINE_string(
    "val_split",
    "train[-300:]",
    "Split the temperature is fitted on (must not have been trained on).",
)
flags.DEFINE_string("test_split", "", "Split to evaluate on ('' -> the run's test split).")
flags.DEFINE_integer("n_bins", 15, "Equal-width confidence bins for ECE and the diagrams.")
flags.DEFINE_string("output_dir", "", "Output folder ('' -> <workdir>/calibration).")
flags.DEFINE_string("table", "", "Table path without extension ('' -> <output_dir>/calibration).")
flags.DEFINE_bool("export", True, "Export the calibrated SavedModel into <output_dir>/export.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, "calibration")
    results = calibration.calibrate_run(
        FLAGS.workdir,
        output_dir,
        val_split=FLAGS.val_split,
        test_split=FLAGS.test_split or None,
        n_bins=FLAGS.n_bins,
        export=FLAGS.export,
    )
    columns = ["temperature", "accuracy", "mean_confidence", "ece", "classwise_ece", "nll"]
    columns += ["brier", "count"]
    rows = []
    for key, m in results["metrics"].items():
        split, stage = key.split("/")
        rows.append(
            {"split": f"{split} {m['split']}", "stage": stage, **{c: m[c] for c in columns}}
        )
    settings = {
        "workdir": FLAGS.workdir,
        "dataset": results["dataset"],
        "model": results["model"],
        "train_split": results["train_split"],
        "trained_temperature": results["trained_temperature"],
        "fitted_temperature": round(results["fitted_temperature"], 4),
        "val_split": FLAGS.val_split,
        "val_examples_seen_in_training": results["val_examples_seen_in_training"],
        "n_bins": FLAGS.n_bins,
    }
    command = cli.command_line()
    table = tables.write_table(
        rows,
        FLAGS.table or os.path.join(output_dir, "calibration"),
        command=command,
        settings=settings,
        notes=[
            "before: softmax(logits / trained_temperature) (what the run's export serves); "
            "after: softmax(logits / fitted_temperature), T fitted by minimising the NLL on "
            "the val split. ECE: top-label, equal-width bins; Brier: sum over classes (0..2).",
        ],
    )
    print(table)
    print(f"Fitted temperature {results['fitted_temperature']:.4f}; wrote {output_dir}")


if __name__ == "__main__":
    cli.run(main)
