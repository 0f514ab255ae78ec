"""Test configuration: quiet TensorFlow, fixed seeds, and two logical CPU devices.

The environment variables must be set before TensorFlow is imported anywhere.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# What `import tempscale_tf` sets when it comes first (oneDNN on; TensorFlow is imported here).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Split the CPU into two logical devices once, so MirroredStrategy tests can use 2 replicas.
# This must happen before any op initialises the runtime.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
except RuntimeError:  # runtime already initialised (e.g. by a plugin)
    pass

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data_dir():
    """`../shared/data`, or skip with the reason when this machine does not have it."""
    if not (SHARED_DATA / "cifar10" / "cifar-10-python.tar.gz").exists():
        pytest.skip(f"shared data not present at {SHARED_DATA} (see the README's Data section)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield


def launcher_command(script, *flags) -> list:
    """`[python, launch/<script>.py, *flags]` (for `subprocess`; run it from `REPO_ROOT`)."""
    import sys

    return [sys.executable, str(REPO_ROOT / "launch" / f"{script}.py"), *map(str, flags)]


def launcher_env(**extra) -> dict:
    """The environment of a launcher run: quiet TensorFlow, plus `extra`."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)


def run_launcher(script, *flags, timeout=600, env=None):
    """Run `launch/<script>.py` with `flags` from the repository root; return the
    `subprocess.CompletedProcess` (text stdout/stderr)."""
    import subprocess

    return subprocess.run(
        launcher_command(script, *flags),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=launcher_env(**(env or {})),
    )


@pytest.fixture
def run_script():
    """`run_script("train", "--epochs=1", ...)`: a launcher run as a user would (see
    `run_launcher`)."""
    return run_launcher


@pytest.fixture
def repo_root():
    return REPO_ROOT


# ------------------------------------------------------------------------ shared test models


def exact_linear_model(n=200, weight_std=0.2, bias_std=0.1, num_classes=10, seed=1234):
    """f(x) = W x + b on flattened 8x8x1 images in [0.4, 0.6], with its exact minimal distances.

    For a linear model, x is misclassified iff some z_j >= z_y, so the minimal distance in a
    norm is min_{j != y} (z_y - z_j) / ||w_y - w_j||_dual (L-inf: dual L1; L2: dual L2), as long
    as the [0, 1] box does not bind (the tests check that it cannot). Every example is correctly
    classified (y is the model's prediction), so every distance is > 0.

    Returns:
      dict with `model`, `x`, `y`, the exact distances `linf` and `l2` `[n]`, and `delta_2`
      `[n, 64]`, the exact minimal L2 perturbation.
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    dim = 64
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(num_classes)]
    )
    w = rng.normal(0.0, weight_std, (dim, num_classes)).astype("float32")
    b = rng.normal(0.0, bias_std, num_classes).astype("float32")
    model.layers[-1].set_weights([w, b])
    x = rng.uniform(0.4, 0.6, (n, 8, 8, 1)).astype("float32")
    z = x.reshape(n, dim).astype("float64") @ w + b
    y = z.argmax(axis=1)
    w_diff = w[:, y].T[:, :, None] - w[None, :, :]  # [n, dim, K]: w_y - w_j
    gap = z[np.arange(n), y][:, None] - z  # [n, K]: z_y - z_j
    wrong = np.arange(num_classes)[None] != y[:, None]
    l1 = np.abs(w_diff).sum(axis=1)
    l2 = np.sqrt((w_diff**2).sum(axis=1))
    d_inf = np.where(wrong, gap / np.where(wrong, l1, 1.0), np.inf).min(axis=1)
    d_2_all = np.where(wrong, gap / np.where(wrong, l2, 1.0), np.inf)
    d_2 = d_2_all.min(axis=1)
    j = d_2_all.argmin(axis=1)
    direction = w_diff[np.arange(n), :, j] / l2[np.arange(n), j][:, None]
    delta_2 = -d_2[:, None] * direction
    return dict(model=model, x=x, y=y, linf=d_inf, l2=d_2, delta_2=delta_2)


def predicted_labels(model, x):
    """The model's arg-max classes of `x` (numpy)."""
    import numpy as np

    return np.argmax(np.asarray(model(x)), axis=-1)


def small_conv_model(n, num_classes=10):
    """A small random conv net (seed 0) and `n` random 8x8x3 images, labelled with its own
    predictions: `dict(model, x, y)`."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes),
        ]
    )
    x = np.random.default_rng(0).uniform(0.0, 1.0, (n, 8, 8, 3)).astype("float32")
    return dict(model=model, x=x, y=predicted_labels(model, x))
