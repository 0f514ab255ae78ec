"""SavedModel export with a serving signature returning logits and tempered probabilities."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tempscale_tf.files import atomic_replace_dir, atomic_write_json, read_json
from tempscale_tf.validation import check_temperature

INFO_FILE = "tempscale_info.json"


def export_saved_model(model: keras.Model, path, temperature: float, save_keras: bool = True):
    """Export `model` as a SavedModel at `path` (atomically replacing an older export).

    The `serving_default` signature takes `images` (float32 [batch, H, W, C] in [0, 1]) and returns
    `logits` and `probabilities = softmax(logits / temperature)`. The temperature and input shape
    are also written to `tempscale_info.json` in the folder; with `save_keras`, the Keras model is
    saved beside it as `model.keras` (for gradient-based evaluation).

    Args:
      model: the trained Keras model (images in [0, 1] -> logits).
      path: the export folder.
      temperature: the training temperature, used by the `probabilities` output.
      save_keras: also save `model.keras`.
    """
    temperature = check_temperature(temperature)
    image_shape = tuple(model.input_shape[1:])

    def serve(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits / temperature, axis=-1)}

    def write(tmp):
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serving_default",
            serve,
            input_signature=[tf.TensorSpec((None, *image_shape), tf.float32, name="images")],
        )
        archive.write_out(tmp, verbose=False)
        atomic_write_json(
            os.path.join(tmp, INFO_FILE),
            {
                "temperature": temperature,
                "image_shape": list(image_shape),
                "num_classes": int(model.output_shape[-1]),
                "model": model.name,
            },
        )
        if save_keras:
            model.save(os.path.join(tmp, "model.keras"))

    atomic_replace_dir(write, path)
    return str(path)


def load_saved_model(path):
    """Load an export: returns (serving function images -> dict, info dict)."""
    info_path = os.path.join(path, INFO_FILE)
    if not os.path.exists(info_path):
        raise FileNotFoundError(f"{info_path} not found: {path} is not a tempscale_tf export")
    loaded = tf.saved_model.load(str(path))
    return loaded.signatures["serving_default"], read_json(info_path)


def load_keras_model(path, temperature=None):
    """Load a `model.keras` file and the `tempscale_info.json` beside it (if any).

    Args:
      path: the `.keras` file.
      temperature: the model's training temperature; None: the info file's.

    Returns:
      (model, info): `info["temperature"]` is set.
    """
    import tempscale_tf.models  # noqa: F401 (registers the custom layers the file names)

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Keras model file {str(path)!r} not found")
    info_path = os.path.join(os.path.dirname(path), INFO_FILE)
    info = read_json(info_path) if os.path.exists(info_path) else {}
    if temperature is None:
        temperature = info.get("temperature")
    if temperature is None:
        raise ValueError(f"{path}: give the model's temperature (no {INFO_FILE} beside it)")
    info["temperature"] = check_temperature(temperature)
    return keras.saving.load_model(path), info
