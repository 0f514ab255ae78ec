r"""Evaluate a trained model: Clean, corruptions (-C), PGD-20, C&W, and gradient-masking checks.

  python launch/evaluate.py --workdir=runs/c10_r20_t50
  python launch/evaluate.py --workdir=runs/c10_r20_t50 --eval_config=configs/eval_cifar.py:quick
  python launch/evaluate.py --saved_model=runs/x/export --dataset=cifar10 --data_dir=../shared/data
  python launch/evaluate.py --keras_model=tables/models/cifar10_fast_t70/model.keras \
      --dataset=cifar10 --data_dir=../shared/data --output_dir=runs/eval_t70

Writes `eval.json` into the run (or export) folder, or --output_dir (for --keras_model default
runs/evaluate/<the file's folder name>), and appends a row (with every setting and this command)
to --csv. A killed evaluation, rerun with the same command, resumes after its last finished stage
(`eval_partial.json` in the same folder). With --keras_model the temperature comes from the
`tempscale_info.json` beside the file (or --temperature). Columns are explained in
`tempscale_tf/evaluation.py`.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from tempscale_tf import cli

cli.quiet_tensorflow()
from tempscale_tf import evaluation, tables, training  # noqa: E402
from tempscale_tf.files import atomic_write_json  # noqa: E402

config_flags.DEFINE_config_file(
    "eval_config", "configs/eval_cifar.py", "Evaluation settings.", lock_config=False
)
flags.DEFINE_string("workdir", None, "A training run's workdir (model rebuilt from checkpoint).")
flags.DEFINE_string("saved_model", None, "Or: a SavedModel export folder (needs --dataset).")
flags.DEFINE_string("keras_model", None, "Or: a `.keras` model file (needs --dataset).")
flags.DEFINE_float("temperature", None, "The model's training T (default: tempscale_info.json).")
flags.DEFINE_string("output_dir", None, "Where eval.json goes (default: the run/export folder).")
flags.DEFINE_string("dataset", None, "Dataset (default: the run's).")
flags.DEFINE_string("data_dir", None, "Data folder (default: the run's).")
flags.DEFINE_string("csv", None, "CSV to append the row to (default <workdir>/eval.csv).")
flags.DEFINE_bool("progress", True, "Progress bars.")
cli.define_config_overrides(evaluation.default_eval_config(), skip=("split",))
FLAGS = flags.FLAGS


def _load():
    sources = [f for f in ("workdir", "saved_model", "keras_model") if FLAGS[f].value]
    if len(sources) != 1:
        raise ValueError("give exactly one of --workdir, --saved_model or --keras_model")
    if FLAGS.keras_model:
        return _load_keras_file(FLAGS.keras_model)
    if FLAGS.workdir:
        model, config = training.load_run(FLAGS.workdir)
        meta = {
            "dataset": FLAGS.dataset or config.dataset,
            "model": config.model,
            "temperature": config.temperature,
            "epochs": config.epochs,
            "seed": config.seed,
            "train_subset": config.train_subset,
            "data_dir": FLAGS.data_dir or config.data_dir or None,
        }
        return model, meta, FLAGS.workdir
    import keras

    from tempscale_tf.export import load_saved_model

    _, info = load_saved_model(FLAGS.saved_model)
    if not FLAGS.dataset:
        raise ValueError("--saved_model needs --dataset")
    model = keras.saving.load_model(os.path.join(FLAGS.saved_model, "model.keras"))
    meta = {
        "dataset": FLAGS.dataset,
        "model": info["model"],
        "temperature": info["temperature"],
        "data_dir": FLAGS.data_dir,
    }
    return model, meta, FLAGS.saved_model


def _load_keras_file(path):
    from tempscale_tf.export import load_keras_model

    if not FLAGS.dataset:
        raise ValueError("--keras_model needs --dataset")
    try:
        model, info = load_keras_model(path, FLAGS.temperature)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--keras_model: {e}") from e
    temperature = info["temperature"]
    meta = {
        "dataset": FLAGS.dataset,
        "model": info.get("model", model.name),
        "temperature": float(temperature),
        "data_dir": FLAGS.data_dir,
    }
    # Not beside the file: a committed model's folder stays clean.
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return model, meta, os.path.join("runs", "evaluate", name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    eval_config = cli.apply_config_overrides(FLAGS.eval_config)
    model, meta, folder = _load()
    folder = FLAGS.output_dir or folder
    os.makedirs(folder, exist_ok=True)
    # A killed evaluation rerun with the same command resumes after its last finished stage.
    partial = os.path.join(folder, "eval_partial.json")
    row = evaluation.evaluate_model(
        model,
        meta["temperature"],
        meta["dataset"],
        eval_config,
        data_dir=meta.get("data_dir"),
        progress=FLAGS.progress,
        resume_path=partial,
    )
    row = {**meta, **row, "command": cli.command_line()}
    atomic_write_json(os.path.join(folder, "eval.json"), row)
    if os.path.exists(partial):  # not written for a model without weights
        os.remove(partial)
    csv = FLAGS.csv or os.path.join(folder, "eval.csv")
    tables.append_row(csv, row)
    main_cols = [c for c in evaluation.MAIN_COLUMNS + evaluation.DIAGNOSTIC_COLUMNS if c in row]
    print(json.dumps({c: row[c] for c in ["temperature", *main_cols]}, indent=2))
    print(f"Wrote {os.path.join(folder, 'eval.json')} and appended a row to {csv}")


if __name__ == "__main__":
    cli.run(main)
