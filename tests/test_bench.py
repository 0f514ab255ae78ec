"""Benchmarks: `launch/bench.py --quick` writes a well-formed table, and the benchmarked training
step is the training loop's own step (no timings are asserted anywhere)."""

import math
import os
import pathlib
import subprocess
import sys

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_launcher

from benchmarks import attacks as attack_bench
from benchmarks import pipeline as pipeline_bench
from benchmarks import train_step as step_bench
from tempscale_tf import data, distribute, machine, tables, training

BATCH, SUBSET = 16, 32  # two steps per epoch


def _tiny_config(**overrides):
    """A small_cnn (width 4) on 32 digits images, batch 16, with a visible weight decay."""
    settings = dict(
        dataset="digits",
        jit_compile=False,
        temperature=2.0,
        weight_decay=0.05,
        train_subset=SUBSET,
        test_subset=SUBSET,
        epochs=1,
        export=False,
        histogram_examples=0,
        log_every_steps=1,
        model_kwargs=ml_collections.ConfigDict({"width": 4}),
    )
    settings.update(overrides)
    return step_bench.train_config("small_cnn", BATCH, **settings)


def _first_training_batch(config):
    """The first global batch `training.train` feeds its step (epoch 0, same seed)."""
    ds = data.load(
        config.dataset,
        config.train_split,
        None,
        BATCH,
        seed=config.seed,
        epoch=0,
        subset=config.train_subset,
        drop_remainder=True,
    )
    return next(iter(ds))


def _values(variables):
    return [v.numpy() for v in variables]


def test_benchmarked_step_is_the_training_loops_step(tmp_path):
    config = _tiny_config()
    steps_per_epoch = SUBSET // BATCH
    # One optimizer step of the training loop itself, from its seeded initial weights.
    run = tmp_path / "run"
    assert training.train(config, run, progress=False, max_steps=1) == {"stopped_at_step": 1}
    checkpoint = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert checkpoint and checkpoint.endswith("-1")

    # The benchmarked step, built from the same config, on the same first batch.
    step = training.make_train_step(
        config, total_steps=steps_per_epoch, steps_per_epoch=steps_per_epoch
    )
    initial = _values(step.model.weights)
    batch = tf.data.Dataset.from_tensors(_first_training_batch(config))
    loss_sum, correct, count = (float(t) for t in step.run(batch))
    assert count == BATCH and math.isfinite(loss_sum) and 0 <= correct <= BATCH
    assert int(step.state.optimizer.iterations.numpy()) == 1
    assert any(not np.array_equal(a, b) for a, b in zip(initial, _values(step.model.weights)))

    # The loop's weights after its step, restored into an identically built state.
    reference = training.make_train_step(
        config, total_steps=steps_per_epoch, steps_per_epoch=steps_per_epoch
    )
    training.restore_checkpoint(reference.state.checkpoint, checkpoint)
    names = [v.path for v in step.model.weights]
    assert names == [v.path for v in reference.model.weights]
    for name, ours, loops in zip(
        names, _values(step.model.weights), _values(reference.model.weights)
    ):
        np.testing.assert_array_equal(ours, loops, err_msg=name)  # bit for bit
    for ours, loops in zip(
        _values(step.state.optimizer.variables), _values(reference.state.optimizer.variables)
    ):
        np.testing.assert_array_equal(ours, loops)

    # The weight decay is part of the benchmarked step: without it the kernels end elsewhere.
    plain = training.make_train_step(
        _tiny_config(weight_decay=0.0),
        total_steps=steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
    )
    plain.run(batch)
    kernels = [i for i, v in enumerate(step.model.weights) if "kernel" in v.path]
    assert kernels
    for i in kernels:
        assert not np.array_equal(
            step.model.weights[i].numpy(), plain.model.weights[i].numpy()
        ), names[i]


def test_mixed_precision_step_computes_in_bfloat16():
    assert distribute.mixed_policy_name() == "mixed_bfloat16"  # tests run on CPU
    images, labels = _first_training_batch(_tiny_config())
    conv1 = {}
    for mixed in (False, True):
        step = training.make_train_step(_tiny_config(mixed_precision=mixed))
        layer = step.model.get_layer("conv1")
        conv1[mixed] = layer
        assert layer.variable_dtype == "float32"
        features = keras.Model(step.model.inputs, layer.output)(images)
        assert features.dtype == (tf.bfloat16 if mixed else tf.float32)
        loss_sum, _, count = (
            float(t) for t in step.run(tf.data.Dataset.from_tensors((images, labels)))
        )
        assert count == BATCH and math.isfinite(loss_sum)
    assert conv1[True].compute_dtype == "bfloat16"
    assert conv1[False].compute_dtype == "float32"
    # Building the mixed model leaves the global policy alone, as `training` does.
    assert keras.config.dtype_policy().name == "float32"


def test_cpu_description_records_bf16_features():
    features = machine.cpu_bf16_description()
    assert "bf16:" in machine.machine_description()
    assert machine.cpu_description() == f"{machine.cpu_model()} ({features})"
    if not os.path.exists("/proc/cpuinfo"):
        assert features == "unknown"
        return
    flags = set()
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    for flag in machine.BF16_CPU_FLAGS:
        assert (f"no {flag}" in features) == (flag not in flags)
        assert flag in features


@pytest.mark.parametrize("setting", [None, "0", "1"])
def test_importing_tempscale_tf_first_turns_onednn_on_unless_told_not_to(setting):
    # In a fresh process: the switch is read when TensorFlow loads.
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = (
        "import tempscale_tf\nfrom tempscale_tf import machine\n"
        "print('onednn', machine.onednn_enabled(), machine.machine_description())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("onednn"))
    expected = setting != "0"
    assert line.startswith(f"onednn {expected}")
    assert f"(oneDNN {'on' if expected else 'off'})" in line


def test_onednn_loop_maxpool_grads_reads_the_rewrite_log():
    log = "\n".join(
        [
            "I mkl_layout_pass.cc] MklLayoutRewritePass: rewrote node while/body/_1/while/"
            "m/pool2/MaxPool2d with op MaxPool for Mkl layout optimization.",
            "I mkl_layout_pass.cc] MklLayoutRewritePass: rewrote node while/body/_1/gradient_tape"
            "/while/m/pool2/MaxPool2d/MaxPoolGrad with op MaxPoolGrad for Mkl layout optimization.",
            "I mkl_layout_pass.cc] MklLayoutRewritePass: rewrote node gradient_tape/m/pool1/"
            "MaxPool2d/MaxPoolGrad with op MaxPoolGrad for Mkl layout optimization.",
        ]
    )
    assert attack_bench.onednn_loop_maxpool_grads(log) == 1  # only the one inside the loop
    assert attack_bench.onednn_loop_maxpool_grads("no rewrite pass logged") is None


@pytest.mark.timeout(1500)
def test_bench_quick_writes_table(tmp_path):
    out = tmp_path / "bench"
    result = run_launcher("bench", "--quick", f"--out={out}", timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    frame = tables.read_table(out.with_suffix(".csv"))
    assert {"benchmark", "variant", "value", "unit", "cpu"} <= set(frame.columns)
    assert frame["cpu"].nunique() == 1
    assert frame["cpu"].iloc[0] == machine.cpu_description()
    assert {
        "train_step",
        "flops",
        "input_pipeline",
        "pgd20",
        "pgd20_processes",
        "robust_eval",
        "cw_l2",
        "corruption",
        "autoattack",
        "iterator_teardown",
        "onednn",
    } <= set(frame["benchmark"])
    # oneDNN off / on in fresh processes: each process really had the setting it was given.
    onednn = frame[frame.benchmark == "onednn"].set_index("variant")
    assert onednn.loc["onednn_off", "onednn_active"] == "off"
    assert onednn.loc["onednn_on", "onednn_active"] == "on"
    assert onednn.loc["onednn_on_over_off", "value"] == pytest.approx(
        onednn.loc["onednn_on", "value"] / onednn.loc["onednn_off", "value"], rel=1e-9
    )
    teardown = frame[frame.benchmark == "iterator_teardown"]
    assert set(teardown["variant"]) == {
        "ours (autotuner off)",
        "autotuner on",
        "experimental_distribute_dataset",
    }
    aa = frame[frame.benchmark == "autoattack"]
    assert sorted(aa["model"].unique()) == ["linear", "small_cnn"]
    aa = aa.set_index("variant")
    # ART is a test extra, so its rows are there.
    assert {"ours_first_call", "ours", "art", "speedup_ours_vs_art"} <= set(aa.index)
    assert aa.loc[["ours", "art"], "robust_accuracy"].between(0, 1).all()
    counts = frame.unit == "processes"  # iterator_teardown's waited counts may be 0
    assert all(math.isfinite(v) and v > 0 for v in frame.loc[~counts, "value"])
    assert frame.loc[counts, "value"].between(0, frame.loc[counts, "trials"]).all()
    step = frame[frame.benchmark == "train_step"]
    assert set(step["variant"]) == {
        "ours_jit=False",
        "ours_jit=True",
        "ours_mixed_bfloat16_jit=False",
        "keras_fit",
        "ours_over_keras_fit",
        "mixed_bfloat16_over_float32",
    }
    timed = step[step.unit == "images/s"].set_index("variant")
    assert timed.loc["ours_mixed_bfloat16_jit=False", "precision"] == "mixed_bfloat16"
    assert (timed["weight_decay"] > 0).all()
    spread = frame[frame.benchmark == "pgd20_processes"].set_index("variant")
    assert {"process_0", "process_1"} <= set(spread.index)
    assert {f"{r}_{s}" for r in ("ratio", "cpu_ratio") for s in ("median", "min", "max")} <= set(
        spread.index
    )
    assert spread.loc["ratio_min", "value"] <= spread.loc["ratio_median", "value"]
    assert spread.loc["ratio_median", "value"] <= spread.loc["ratio_max", "value"]
    text = out.with_suffix(".md").read_text()
    assert "--quick" in text and "CPU cores" in text and "cleverhans" in text and "vs ART" in text
    assert "fresh processes" in text and "bf16:" in text
    # FLOP/s of both precisions' steps against both measured matmul peaks, consistently.
    flops = frame[frame.benchmark == "flops"].set_index("variant")["value"]
    for precision in ("float32", "mixed_bfloat16"):
        for peak in ("float32", "bfloat16"):
            ratio = flops[f"{precision}_step_over_{peak}_peak"]
            expected = flops[f"train_achieved_{precision}"] / flops[f"matmul_peak_{peak}"]
            assert ratio == pytest.approx(expected, rel=1e-9)
    assert "bfloat16 peak" in text
    assert "oneDNN on / off" in text


def test_bench_sections_select_what_runs():
    from benchmarks import suite

    rows, settings = suite.run(suite.Options(quick=True, sections=("iterator_teardown",)))
    assert {r["benchmark"] for r in rows} == {"iterator_teardown"}
    assert len(rows) == 9 and all(r["value"] >= 0 for r in rows)
    assert {(r["variant"], r["statistic"]) for r in rows} == {
        (v, s)
        for v in pipeline_bench.TEARDOWN_VARIANTS
        for s in ("median", "max", "waited (> 10 s)")
    }
    assert settings == {"quick": True}
    with pytest.raises(ValueError, match="unknown benchmark sections.*nope"):
        suite.run(suite.Options(quick=True, sections=("nope",)))


def test_teardown_rows_count_the_processes_that_waited():
    rows = pipeline_bench.teardown_rows(
        {"a": [1.2, 60.4, 0.9, 31.0, 1.0], "b": [0.5, 0.7, 0.6, 0.4, 0.8]}, dataset="digits"
    )
    got = {(r["variant"], r["statistic"]): (r["value"], r["unit"]) for r in rows}
    assert got[("a", "median")] == (1.2, "s")
    assert got[("a", "max")] == (60.4, "s")
    assert got[("a", "waited (> 10 s)")] == (2, "processes")
    assert got[("b", "waited (> 10 s)")] == (0, "processes")
    assert got[("b", "median")] == (0.6, "s")
    assert all(r["trials"] == 5 and r["dataset"] == "digits" for r in rows)
