r"""The demo: train the small CNN on the embedded digits data at T=1 and T=50, compare accuracy.

  python launch/demo.py                      # what `make demo` runs (about 2 CPU minutes)
  python launch/demo.py --update_committed   # writes the committed tables/demo_digits instead

Writes the runs and the table (`demo_digits.{csv,md}`) under --workdir (default runs/demo), so a
fresh checkout stays clean; `--update_committed` writes the table to tables/demo_digits instead.
"""

import os
import sys

from absl import flags, logging

from tempscale_tf import cli

cli.quiet_tensorflow()
from tempscale_tf import tables, training  # noqa: E402

flags.DEFINE_string("workdir", "runs/demo", "Where the two runs go.")
flags.DEFINE_list(
    "temperatures",
    ["1", "50", "50*"],
    "Training temperatures; a trailing * also sets "
    "scale_lr_with_temperature (lr x T, weight decay / T).",
)
flags.DEFINE_integer("epochs", 30, "Epochs per run.")
flags.DEFINE_string(
    "table", "", "Output table path (without extension); default <workdir>/demo_digits."
)
flags.DEFINE_bool("update_committed", False, "Write the table to the committed tables/demo_digits.")
COMMITTED_TABLE = "tables/demo_digits"
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.update_committed and FLAGS.table:
        raise ValueError("--update_committed writes tables/demo_digits: do not also set --table")
    import configs.digits_small as digits_small  # noqa: F401  (scripts run from the repo root)

    rows = []
    for t in FLAGS.temperatures:
        config = digits_small.get_config()
        config.scale_lr_with_temperature = t.endswith("*")
        t = t.rstrip("*")
        config.temperature = float(t)
        config.epochs = FLAGS.epochs
        suffix = "_lrxT" if config.scale_lr_with_temperature else ""
        workdir = os.path.join(FLAGS.workdir, f"digits_small_cnn_t{t}{suffix}")
        logging.info("Training at temperature %s into %s", t, workdir)
        metrics = training.train(config, workdir, progress=False)
        lr, weight_decay = training.effective_hparams(config)
        rows.append(
            {
                "temperature": float(t),
                "lr": lr,
                "weight_decay": weight_decay,
                "clean_accuracy": metrics["test/accuracy"],
                "train_loss": metrics["train/loss"],
                "train_accuracy": metrics["train/accuracy"],
                "test_loss_at_T": metrics["test/loss"],
            }
        )
    settings = {
        "dataset": "digits (1437 train / 360 test, 32x32x3)",
        "model": "small_cnn width 16",
        "epochs": FLAGS.epochs,
        "batch_size": 128,
        "schedule": "cosine",
        "seed": 0,
    }
    command = cli.command_line()
    if FLAGS.update_committed:
        path = COMMITTED_TABLE
    else:
        path = FLAGS.table or os.path.join(FLAGS.workdir, "demo_digits")
    table = tables.write_table(
        rows,
        path,
        command=command,
        settings=settings,
        notes=[
            "Same optimiser settings at every temperature: the loss gradient is scaled by 1/T, "
            "so a high temperature lowers the effective learning rate and a short schedule "
            "underfits (see train_loss). The row with lr x T and weight_decay / T "
            "(scale_lr_with_temperature) restores the T=1 gradient scale and trains normally: "
            "the failure at T=50 is the effective learning rate, not the temperature itself.",
        ],
    )
    print(table)
    logging.info("Wrote %s.{csv,md}", path)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    cli.run(main)
