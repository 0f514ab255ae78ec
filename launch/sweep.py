r"""Train and evaluate a grid of temperatures x datasets x seeds; assemble the Table I/II CSVs.

  python launch/sweep.py --config=configs/sweep_cifar10_cpu.py --workdir=runs/sweep_c10_cpu
  python launch/sweep.py --config=configs/sweep_digits.py:tiny --workdir=/tmp/sweep
  python launch/sweep.py --config=configs/sweep_cifar10_fast_at.py --workdir=runs/c10_at \
      --only='*_madry_eps12' --max_cells=1   # one chosen cell, out of the sweep's order
  python launch/sweep.py --config=configs/sweep_cifar10_fast_at.py --workdir=runs/c10_at \
      --train_only --max_cells=1   # train the next cell and carry it; evaluate it later

Resumable: a cell whose `eval.json` exists (with the same evaluation settings) is skipped, a cell
whose training was interrupted resumes from its checkpoint. After every finished cell the tables
`<table_dir>/table1_<dataset>_<model>.{csv,md}` are rewritten with mean ± std over seeds, in the
paper's column order (Clean, -C, PGD-20, C&W), then the gradient-masking diagnostics.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from tempscale_tf import cli

cli.quiet_tensorflow()
from tempscale_tf import sweep  # noqa: E402

config_flags.DEFINE_config_file(
    "config", None, "Sweep config (configs/sweep_*.py).", lock_config=False
)
flags.DEFINE_string("workdir", None, "Root folder of the sweep's runs.")
flags.DEFINE_bool("progress", False, "Per-epoch progress bars.")
flags.DEFINE_integer("max_cells", 0, "Run at most this many new cells (0: all).")
flags.DEFINE_list(
    "only",
    [],
    "Run only the unfinished cells whose folder name matches one of these fnmatch patterns "
    "(e.g. '*_t70_s1,*_madry_eps12'), in the sweep's order; the tables hold every finished cell.",
)
flags.DEFINE_bool(
    "assemble_only", False, "Train and evaluate nothing: rebuild the tables from finished cells."
)
flags.DEFINE_bool(
    "train_only",
    False,
    "Train the chosen unfinished cells and carry them in the results_dir, without evaluating "
    "them (a later run without the flag evaluates them, on any machine). No tables are written.",
)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.assemble_only and FLAGS.train_only:
        raise app.UsageError("--assemble_only and --train_only exclude each other")
    # An --assemble_only rebuild records the command that trains and evaluates the cells it
    # assembles (the same command without the flag), not the rebuild.
    command = cli.command_line(drop=("assemble_only", "only") if FLAGS.assemble_only else ())
    paths = sweep.run_sweep(
        FLAGS.config,
        FLAGS.workdir,
        command=command,
        progress=FLAGS.progress,
        max_cells=0 if FLAGS.assemble_only else (FLAGS.max_cells or None),
        only=FLAGS.only,
        train_only=FLAGS.train_only,
    )
    for path in paths:
        print(f"Wrote {path}")
        if path.endswith(".md") and os.path.exists(path):
            print(open(path).read())


if __name__ == "__main__":
    cli.run(main)
