"""Choosing a `tf.distribute` strategy."""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


def make_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    """Create a distribution strategy.

    Args:
      kind: "auto" (MultiWorkerMirroredStrategy when `TF_CONFIG` names a cluster, else
        MirroredStrategy over all GPUs, or over all logical CPU devices when there is no GPU),
        "mirrored", "multiworker", or "default" (no distribution).
    """
    if kind not in STRATEGIES:
        raise ValueError(f"Unknown strategy {kind!r}; choose one of {STRATEGIES}")
    if kind == "auto":
        kind = "multiworker" if _tf_config_has_cluster() else "mirrored"
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return mirrored(devices)


def mirrored(devices) -> tf.distribute.MirroredStrategy:
    """`MirroredStrategy` over `devices`; CPU-only replicas reduce through one device.

    On GPUs the default cross-device ops (NCCL / collectives) are kept. On CPU-only device lists
    the gradients are summed with `ReductionToOneDevice` instead of collective ops: every new
    collective `MirroredStrategy` in a process restarts its collective group and instance keys,
    so a second one over the same devices (a sweep, a test session) can collide with the first
    ("Shape mismatch in the collective instance 100") and abort all later collectives.
    """
    devices = list(devices)
    if not devices:
        raise ValueError("mirrored() needs at least one device name, e.g. ['/cpu:0']")
    if all("GPU" not in tf.DeviceSpec.from_string(d).device_type.upper() for d in devices):
        return tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice(devices[0])
        )
    return tf.distribute.MirroredStrategy(devices=devices)


def _tf_config_has_cluster() -> bool:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return False
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from e
    return sum(len(v) for v in cluster.values()) > 1


def distribute_dataset(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """`dataset` ready for `strategy.run`: distributed over the replicas, or unchanged when the
    strategy has a single replica.

    `experimental_distribute_dataset` iterates through an extra tf.data iterator whose autotuner
    is on whatever `dataset.options()` say, and in TF 2.21 destroying that iterator (the
    training and test loops make one per epoch) waits for the autotuner's thread, which sleeps
    up to 60 s between its runs: measured, a 60 s pause with the process idle, in about half of
    the fast recipe's epochs. With one replica there is nothing to distribute, so the dataset is
    returned as it is (`strategy.run` takes its plain tensors). With several replicas the pause
    remains (see the README, "Performance").

    Args:
      strategy: the `tf.distribute.Strategy` the steps run under.
      dataset: batched global batches; multi-worker pipelines should already be sharded
        (`training.step.shard_by_data`).
    """
    if strategy.num_replicas_in_sync == 1:
        return dataset
    return strategy.experimental_distribute_dataset(dataset)


def gpu_available() -> bool:
    """Whether TensorFlow will run on a GPU: a visible GPU (`CUDA_VISIBLE_DEVICES` and
    `tf.config.set_visible_devices` respected). The one GPU check of the library: it does not
    initialise the runtime, so logical CPU devices can still be configured after it."""
    return bool(tf.config.get_visible_devices("GPU"))


def resolve_jit_compile(jit_compile):
    """`None` -> XLA on GPU, plain graph mode on CPU (XLA's CPU convolutions measured slower)."""
    return gpu_available() if jit_compile is None else bool(jit_compile)


def split_cpu(num_devices: int) -> None:
    """Split the host CPU into `num_devices` logical devices (before TensorFlow initialises)."""
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
    except RuntimeError as e:
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing != num_devices:
            raise RuntimeError(
                f"cannot split the CPU into {num_devices} devices: TensorFlow is already "
                f"initialised with {existing}"
            ) from e


def worker_info(strategy) -> tuple[str | None, int]:
    """(task type, task id) of this process in a multi-worker cluster; (None, 0) otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy) -> bool:
    """True for the process that writes checkpoints, summaries and exports.

    That is the `chief` task, or worker 0 when the cluster has no chief; single-process
    strategies are always chief.
    """
    task_type, task_id = worker_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type != "worker":
        return False
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return "chief" not in spec and task_id == 0


def tf_config(workers, task_index: int) -> str:
    """The `TF_CONFIG` JSON for a cluster of `workers` ("host:port" strings), worker 0 = chief."""
    workers = [w.strip() for w in workers if w.strip()]
    if not workers or any(":" not in w for w in workers):
        raise ValueError(f"cluster must be a list of host:port entries, received {workers!r}")
    if not 0 <= task_index < len(workers):
        raise ValueError(f"task_index={task_index} is outside the {len(workers)}-worker cluster")
    return json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": int(task_index)}}
    )


def cpu_bf16_features() -> tuple[str, ...]:
    """The CPU's bfloat16 features among `avx512_bf16` and `amx_bf16` (from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return tuple(x for x in ("avx512_bf16", "amx_bf16") if x in flags)
    except OSError:
        pass
    return ()


def resolve_mixed_precision(setting) -> tuple[bool, str]:
    """(use mixed precision, why) for a config's `mixed_precision` (True, False or "auto").

    "auto" uses bfloat16 on a CPU with native bfloat16 instructions (AVX512-BF16 or AMX, where
    bfloat16 convolutions and matmuls measured 2-4.5x float32 on the same cores) and float16 on
    a GPU; a CPU without them keeps float32 (emulated bfloat16 is slower there).
    """
    if isinstance(setting, str):
        if setting != "auto":
            raise ValueError(f"mixed_precision must be true, false or 'auto', received {setting!r}")
        if gpu_available():
            return True, "auto: float16 on GPU"
        features = cpu_bf16_features()
        if features:
            return True, f"auto: bfloat16, the CPU has {'+'.join(features)}"
        return False, "auto: float32, the CPU has no native bfloat16 (avx512_bf16/amx_bf16)"
    if not isinstance(setting, (bool, int)):
        raise ValueError(f"mixed_precision must be true, false or 'auto', received {setting!r}")
    return bool(setting), "set in the config"


def mixed_policy_name() -> str:
    """The Keras mixed policy for this device: float16 on GPU, bfloat16 on CPU."""
    return "mixed_float16" if gpu_available() else "mixed_bfloat16"
