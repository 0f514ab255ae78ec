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

from absl import flags  # noqa: E402

from tempscale_tf import cli  # noqa: E402

cli.quiet_tensorflow()

from benchmarks.sections import SECTIONS  # noqa: E402 (imports no TensorFlow)

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
flags.DEFINE_list(
    "sections",
    list(SECTIONS),
    f"Which benchmark groups to run (all by default): {', '.join(SECTIONS)}.",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import pandas as pd

    from benchmarks import suite
    from tempscale_tf import machine, tables

    options = suite.Options(
        quick=FLAGS.quick,
        models=tuple(FLAGS.models),
        batch_sizes=tuple(int(b) for b in FLAGS.batch_sizes),
        fast_batch_size=FLAGS.fast_batch_size,
        attack_batch=FLAGS.attack_batch,
        data_dir=FLAGS.data_dir,
        attack_workdir=FLAGS.attack_workdir,
        autoattack_examples=FLAGS.autoattack_examples,
        pgd_processes=FLAGS.pgd_processes,
        sections=tuple(FLAGS.sections),
    )
    rows, settings = suite.run(options)
    cpu = machine.cpu_description()
    frame = pd.DataFrame([{**r, "cpu": cpu} for r in rows])
    settings = {"machine": machine.machine_description(), **settings}
    notes = suite.headline_notes(frame)
    text = tables.write_table(
        frame.to_dict("records"), FLAGS.out, cli.command_line(), settings, notes
    )
    print(text)


if __name__ == "__main__":
    cli.run(main)
