"""Test configuration: quiet TensorFlow, fixed seeds, and two logical CPU devices.

The environment variables must be set before TensorFlow is imported anywhere.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

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


def run_launcher(script, *flags, timeout=600, env=None):
    """Run `launch/<script>.py` with `flags` from the repository root; return the
    `subprocess.CompletedProcess` (text stdout/stderr)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "launch" / f"{script}.py"), *map(str, flags)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {})),
    )


@pytest.fixture
def run_script():
    """`run_script("train", "--epochs=1", ...)`: a launcher run as a user would (see
    `run_launcher`)."""
    return run_launcher


@pytest.fixture
def repo_root():
    return REPO_ROOT
