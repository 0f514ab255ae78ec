r"""Train a classifier at a softmax temperature.

  python launch/train.py --config=configs/digits_small.py --workdir=runs/digits_t1
  python launch/train.py --config=configs/cifar10_resnet50.py --temperature=70 \
      --data_dir=../shared/data --workdir=runs/c10_r50_t70

Every field of the config is a flag (`--temperature=70`, `--epochs=5`); nested fields use the
ml_collections form (`--config.model_kwargs.width=32`). Rerunning the same command resumes from the
latest checkpoint in --workdir. TensorBoard: `tensorboard --logdir=<workdir>/tensorboard`.
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from tempscale_tf import cli

cli.quiet_tensorflow()
from tempscale_tf import training  # noqa: E402

config_flags.DEFINE_config_file(
    "config",
    "configs/digits_small.py",
    "Experiment config file (configs/*.py).",
    lock_config=False,
)
flags.DEFINE_string("workdir", None, "Output folder (checkpoints, TensorBoard, export).")
flags.DEFINE_integer(
    "cpu_devices",
    1,
    "Split the CPU into this many logical devices "
    "(to run MirroredStrategy with several replicas without GPUs).",
)
flags.DEFINE_bool("progress", True, "Show a progress bar per epoch.")
flags.DEFINE_list(
    "cluster",
    None,
    "Multi-worker training without TF_CONFIG: the workers' "
    "host:port list (the same on every worker), e.g. 10.0.0.1:2222,10.0.0.2:2222.",
)
flags.DEFINE_integer(
    "max_steps",
    0,
    "Stop (with a checkpoint) after this many steps in this "
    "call; rerun the same command to continue. 0: train to the end.",
)
flags.DEFINE_integer("task_index", 0, "With --cluster: this worker's index in the list.")
flags.mark_flag_as_required("workdir")
cli.define_config_overrides(training.default_config(), skip=("cpu_devices",))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from tempscale_tf import distribute

    if flags.FLAGS.cluster:
        os.environ["TF_CONFIG"] = distribute.tf_config(flags.FLAGS.cluster, flags.FLAGS.task_index)
    distribute.split_cpu(flags.FLAGS.cpu_devices)
    config = cli.apply_config_overrides(flags.FLAGS.config)
    logging.info("Config:\n%s", config)
    metrics = training.train(
        config,
        flags.FLAGS.workdir,
        progress=flags.FLAGS.progress,
        max_steps=flags.FLAGS.max_steps or None,
    )
    if "stopped_at_step" in metrics:  # --max_steps: no metrics.json until the run finishes
        print(
            f"Stopped at step {metrics['stopped_at_step']} with a checkpoint in "
            f"{flags.FLAGS.workdir}; rerun the same command to continue."
        )
        return
    print(json.dumps(metrics, indent=2, default=str))
    print(f"Wrote {os.path.join(flags.FLAGS.workdir, 'metrics.json')}")


if __name__ == "__main__":
    cli.run(main)
