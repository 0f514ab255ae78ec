"""Two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy) equal single-process training,
also across a restart of the whole job from the chief's checkpoint."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT

from tempscale_tf import distribute, training

ARGS = [
    "launch/train.py",
    "--config=configs/digits_small.py",
    "--epochs=2",
    "--train_subset=256",
    "--test_subset=64",
    "--batch_size=64",
    "--config.model_kwargs.width=4",
    "--deterministic",
    "--noexport",
    "--histogram_examples=0",
    "--progress=false",
    "--temperature=3",
]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run_cluster(workdir, extra=()):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, *ARGS, f"--workdir={workdir}", *extra],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_env(TF_CONFIG=distribute.tf_config(workers, i)),
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def test_two_workers_equal_one_process_and_survive_restart(tmp_path):
    single = subprocess.run(
        [sys.executable, *ARGS, f"--workdir={tmp_path / 'single'}", "--strategy=default"],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    # The job is stopped after 5 of its 8 steps (as a pre-emption would), then restarted.
    _run_cluster(tmp_path / "multi", ["--max_steps=5", "--checkpoint_every_steps=5"])
    assert not (tmp_path / "multi" / "metrics.json").exists()
    _run_cluster(tmp_path / "multi")
    metrics = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["steps"] == 8
    assert not (tmp_path / "multi" / ".workers" / "worker_1").exists()
    a, _ = training.load_run(tmp_path / "single")
    b, _ = training.load_run(tmp_path / "multi")
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(wa.numpy(), wb.numpy(), rtol=1e-3, atol=1e-4)
    h1 = json.loads((tmp_path / "single" / "history.json").read_text())
    h2 = json.loads((tmp_path / "multi" / "history.json").read_text())
    for x, y in zip(h1, h2):
        assert x["train/loss"] == pytest.approx(y["train/loss"], rel=1e-4)


def test_tf_config_builder():
    config = json.loads(distribute.tf_config(["a:1", "b:2"], 1))
    assert config == {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError, match="task_index"):
        distribute.tf_config(["a:1"], 3)
    with pytest.raises(ValueError, match="host:port"):
        distribute.tf_config(["a"], 0)


def test_mirrored_cpu_strategy_reduces_through_one_device():
    strategy = distribute.mirrored(["/cpu:0"])
    assert isinstance(strategy.extended._cross_device_ops, tf.distribute.ReductionToOneDevice)
    with pytest.raises(ValueError, match="at least one device"):
        distribute.mirrored([])


def test_distribute_dataset_passes_one_replica_datasets_through():
    # One replica: the plain dataset (no extra autotuned iterator whose destruction waits up to
    # a minute); two replicas: each replica gets its half of every global batch.
    ds = tf.data.Dataset.range(8).batch(4)
    assert distribute.distribute_dataset(distribute.mirrored(["/cpu:0"]), ds) is ds
    two = distribute.mirrored(["/cpu:0", "/cpu:1"])
    batches = list(distribute.distribute_dataset(two, ds))
    assert len(batches) == 2
    halves = [[t.numpy().tolist() for t in two.experimental_local_results(b)] for b in batches]
    assert halves == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
