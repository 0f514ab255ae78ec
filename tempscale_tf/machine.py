"""What machine a result was measured on: CPU model, its bfloat16 instructions, GPUs and the
TensorFlow / Keras versions (recorded in the settings of benchmark and time-to-accuracy tables)."""

from __future__ import annotations

import os
import platform

import keras
import tensorflow as tf

from tempscale_tf import distribute

# The CPU flags that decide what mixed bfloat16 costs (read by `distribute.cpu_bf16_features`).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_description() -> str:
    """The CPU's bfloat16 instructions among `BF16_CPU_FLAGS`, e.g. "avx512_bf16, no amx_bf16"
    (read by `distribute.cpu_bf16_features`); "unknown" where /proc/cpuinfo cannot be read.

    They decide what mixed bfloat16 costs: with AMX (Sapphire Rapids and later) oneDNN runs bf16
    convolutions on tile units; with AVX512-BF16 only (e.g. AMD Zen 4) the dot products are
    native but the rest is not; with neither, bf16 is emulated and usually slower than float32.
    """
    if not os.path.exists("/proc/cpuinfo"):
        return "unknown"
    present = distribute.cpu_bf16_features()
    return ", ".join(f if f in present else f"no {f}" for f in BF16_CPU_FLAGS[::-1])


def cpu_description() -> str:
    """CPU model and bfloat16 features, e.g. "AMD EPYC (avx512_bf16, no amx_bf16)": recorded
    in every benchmark row (`launch/bench.py` adds it as the `cpu` column)."""
    return f"{cpu_model()} ({cpu_bf16_description()})"


def onednn_enabled() -> bool:
    """Whether TensorFlow's oneDNN kernels are on in this process (`TF_ENABLE_ONEDNN_OPTS`,
    read when TensorFlow loads; `tempscale_tf` turns it on unless it is set)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def machine_description() -> str:
    """Cores, CPU model and bfloat16 features, GPUs (or "no GPU"), the TensorFlow version (and
    whether its oneDNN kernels are on) and the Keras version, in one line."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [
            tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
        ]
        accel = ", ".join(names)
    else:
        accel = "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu_model()}; bf16: {cpu_bf16_description()}), {accel}; "
        f"TensorFlow {tf.__version__} (oneDNN {'on' if onednn_enabled() else 'off'}), "
        f"Keras {keras.__version__}"
    )
