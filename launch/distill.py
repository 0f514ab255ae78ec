r"""Knowledge distillation on digits: student accuracy against the distillation temperature.

  python launch/distill.py                     # the committed table (a few CPU minutes)
  python launch/distill.py --config=configs/distill_digits.py:smoke --workdir=/tmp/distill \
      --table=/tmp/distill/table
  python launch/distill.py --config.teacher_workdir=runs/digits_t1   # reuse a trained teacher

Trains the teacher (`config.teacher`, a launch/train.py config) into <workdir>/teacher unless
`config.teacher_workdir` names a finished run (or <workdir>/teacher is already finished), then
trains one student per (temperature, alpha) of the config, plus a no-teacher baseline, with the
loss alpha * CE(student, y) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))
(T divides the logits). Writes <workdir>/results.json and the table --table.{csv,md}.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from tempscale_tf import cli

cli.quiet_tensorflow()
from tempscale_tf import distillation, tables  # noqa: E402

config_flags.DEFINE_config_file(
    "config", "configs/distill_digits.py", "Distillation config file.", lock_config=False
)
flags.DEFINE_string("workdir", "runs/distill_digits", "Teacher run and results.json go here.")
flags.DEFINE_string("table", "tables/distill_digits", "Output table path (without extension).")
flags.DEFINE_bool("progress", False, "Show Keras progress bars.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    logging.info("Config:\n%s", config)
    results = distillation.run_distillation(config, FLAGS.workdir, progress=FLAGS.progress)
    teacher = results["teacher"]
    columns = ["student", "temperature", "alpha", "seed", "test_accuracy", "test_nll"]
    columns += ["agreement_with_teacher", "train_accuracy", "seconds"]
    rows = [{c: r.get(c, float("nan")) for c in columns} for r in results["rows"]]
    student_kwargs = json.dumps(config.student_model_kwargs.to_dict())
    settings = {
        "dataset": f"{config.dataset} (train split {config.train_split!r}, test "
        f"{config.test_split!r}, train_subset {config.train_subset or 'all'})",
        "teacher": f"{teacher['model']} {json.dumps(teacher['model_kwargs'])}, "
        f"{teacher['num_parameters']} parameters, trained at T={teacher['trained_temperature']}"
        f", test accuracy {teacher['test_accuracy']:.4f}",
        "student": f"{config.student_model} {student_kwargs}",
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "optimizer": f"SGD nesterov momentum {config.momentum}, lr {config.lr} cosine, "
        f"weight decay {config.weight_decay}",
        "augment": config.augment,
        "seeds": list(config.seeds),
    }
    command = cli.command_line()
    table = tables.write_table(
        rows,
        FLAGS.table,
        command=command,
        settings=settings,
        notes=[
            "loss = alpha * CE(softmax(z_s), y) + (1 - alpha) * T^2 * "
            "KL(softmax(z_t / T) || softmax(z_s / T)); T divides the logits; the baseline "
            "is alpha = 1 (plain cross-entropy, no teacher).",
            "Every student of a seed starts from the same initialisation and sees the same "
            "batches. One seed and 360 test images: differences of ~2 points are noise.",
        ],
    )
    print(table)
    print(f"Wrote {os.path.join(FLAGS.workdir, 'results.json')} and {FLAGS.table}.{{csv,md}}")


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    cli.run(main)
