"""A run's outputs for others: the export (SavedModel + `model.keras`), `load_run` to rebuild a
run's model from its workdir, and `predict_logits`."""

from __future__ import annotations

import os
import pathlib

import ml_collections
import numpy as np
import tensorflow as tf

from tempscale_tf.export import export_saved_model
from tempscale_tf.files import read_json
from tempscale_tf.training.config import default_config
from tempscale_tf.training.state import build_model_from_config, restore_checkpoint


def export_run(model, workdir, temperature) -> str:
    """Export `model` to `workdir/export`: a SavedModel whose serving signature returns `logits`
    and `probabilities` (softmax at `temperature`), plus `model.keras`.

    Args:
      model: the trained Keras model.
      workdir: the run's folder.
      temperature: the training temperature (the probabilities' softmax temperature).

    Returns:
      The export folder.
    """
    path = os.path.join(workdir, "export")
    export_saved_model(model, path, temperature)
    return path


def load_run(workdir, checkpoint=None):
    """Rebuild the model of a finished (or running) training run from its workdir.

    Returns:
      (model, config): the Keras model with the latest (or the given) checkpoint's weights, and
      the run's `ConfigDict`.
    """
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a tempscale_tf workdir?")
    config = default_config()
    config.unlock()
    saved = read_json(config_path)
    for key, value in saved.items():
        if key == "model_kwargs":
            config.model_kwargs = ml_collections.ConfigDict(value)
        elif key in config:
            config[key] = tuple(value) if isinstance(config[key], tuple) else value
    strategy = tf.distribute.get_strategy()
    model = build_model_from_config(config, strategy)
    path = checkpoint or tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    restore_checkpoint(tf.train.Checkpoint(model=model), path, partial=True)
    return model, config


def predict_logits(model, dataset, max_examples=None):
    """Concatenated logits and labels of a (non-distributed) dataset.

    Args:
      model: a Keras model returning logits (called with `training=False`).
      dataset: batches of `(images, labels)`.
      max_examples: stop after this many examples (None: the whole dataset).

    Returns:
      (logits, labels) as numpy arrays.
    """
    logits, labels, n = [], [], 0
    for images, y in dataset:
        logits.append(model(images, training=False).numpy())
        labels.append(y.numpy())
        n += len(y)
        if max_examples and n >= max_examples:
            break
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    return (logits[:max_examples], labels[:max_examples]) if max_examples else (logits, labels)
