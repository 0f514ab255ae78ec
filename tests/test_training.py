"""Training loop: distribution equivalence, resume after a stop or a kill, export, summaries."""

import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT, launcher_command, launcher_env, run_launcher

from tempscale_tf import distribute, training
from tempscale_tf.export import load_saved_model
from tempscale_tf.files import atomic_write_json, read_json
from tempscale_tf.training.loop import check_finite_losses


def tiny_config(**overrides):
    c = training.default_config()
    c.mixed_precision = False  # float32 on every machine (the tests compare exact numbers)
    c.dataset, c.model = "digits", "small_cnn"
    c.model_kwargs.width = 4
    c.train_subset, c.test_subset = 256, 64
    c.batch_size, c.epochs, c.lr = 64, 3, 0.05
    c.temperature = 2.0
    c.deterministic = True
    c.histogram_examples = 64
    c.export = False
    for k, v in overrides.items():
        c[k] = v
    return c


def _with_width(config, width):
    config.model_kwargs.width = width
    return config


def _weights(workdir):
    model, _ = training.load_run(workdir)
    return [w.numpy() for w in model.weights]


def test_two_replicas_match_one_device(tmp_path):
    one = distribute.mirrored(["/cpu:0"])
    two = distribute.mirrored(["/cpu:0", "/cpu:1"])
    assert two.num_replicas_in_sync == 2
    training.train(tiny_config(), tmp_path / "one", strategy=one, progress=False)
    training.train(tiny_config(), tmp_path / "two", strategy=two, progress=False)
    h1 = read_json(tmp_path / "one" / "history.json")
    h2 = read_json(tmp_path / "two" / "history.json")
    for a, b in zip(h1, h2):
        np.testing.assert_allclose(a["train/loss"], b["train/loss"], rtol=2e-4)
        np.testing.assert_allclose(a["test/loss"], b["test/loss"], rtol=2e-4)
    for a, b in zip(_weights(tmp_path / "one"), _weights(tmp_path / "two")):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)


def test_stop_mid_epoch_and_resume_ends_at_same_weights(tmp_path):
    strategy = tf.distribute.get_strategy()
    config = tiny_config(checkpoint_every_steps=2)
    full = training.train(config, tmp_path / "full", strategy=strategy, progress=False)
    stopped = training.train(
        config, tmp_path / "split", strategy=strategy, progress=False, max_steps=5
    )
    assert stopped == {"stopped_at_step": 5}  # 4 steps per epoch: stopped inside epoch 2
    resumed = training.train(config, tmp_path / "split", strategy=strategy, progress=False)
    assert resumed["steps"] == full["steps"] == 12
    for a, b in zip(_weights(tmp_path / "full"), _weights(tmp_path / "split")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    h_full = read_json(tmp_path / "full" / "history.json")
    h_split = read_json(tmp_path / "split" / "history.json")
    assert [h["epoch"] for h in h_split] == [0, 1, 2]
    for a, b in zip(h_full, h_split):
        np.testing.assert_allclose(a["train/loss"], b["train/loss"], rtol=1e-5)


def test_killed_process_resumes_and_matches(tmp_path):
    """SIGKILL the launcher after its second checkpoint; rerunning finishes the same run."""
    args = launcher_command(
        "train",
        "--config=configs/digits_small.py",
        "--epochs=4",
        "--train_subset=512",
        "--test_subset=64",
        "--batch_size=64",
        "--checkpoint_every_steps=3",
        "--config.model_kwargs.width=4",
        "--deterministic",
        "--noexport",
        "--histogram_examples=0",
        "--progress=false",
        "--strategy=default",
    )
    env = launcher_env()
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        args + [f"--workdir={killed}"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    ckpt_dir = killed / "checkpoints"
    while time.time() < deadline:
        ckpts = sorted(ckpt_dir.glob("ckpt-*.index")) if ckpt_dir.exists() else []
        if len(ckpts) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"
    subprocess.run(
        args + [f"--workdir={killed}"], cwd=REPO_ROOT, env=env, check=True, capture_output=True
    )
    subprocess.run(
        args + [f"--workdir={tmp_path / 'clean'}"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    for a, b in zip(_weights(killed), _weights(tmp_path / "clean")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
    config = tiny_config(epochs=2)
    training.train(
        config, tmp_path, strategy=tf.distribute.get_strategy(), progress=False, max_steps=4
    )
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    data_file = pathlib.Path(latest + ".data-00000-of-00001")
    data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(training.CheckpointError, match="ckpt-4"):
        training.train(config, tmp_path, strategy=tf.distribute.get_strategy(), progress=False)
    pathlib.Path(latest + ".index").write_bytes(b"garbage")
    with pytest.raises(training.CheckpointError, match="corrupted"):
        training.train(config, tmp_path, strategy=tf.distribute.get_strategy(), progress=False)


def test_export_summaries_and_metrics(tmp_path):
    config = tiny_config(epochs=1, export=True, temperature=5.0)
    metrics = training.train(
        config, tmp_path, strategy=tf.distribute.get_strategy(), progress=False
    )
    assert metrics["temperature"] == 5.0
    serve, info = load_saved_model(tmp_path / "export")
    assert info["temperature"] == 5.0
    model, _ = training.load_run(tmp_path)
    # The reported test accuracy and loss are those of the final weights on the test subset.
    from tempscale_tf import data

    test = data.load("digits", "test", batch_size=64, subset=64)
    logits, labels = training.predict_logits(model, test)
    assert metrics["test/accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))
    log_p = tf.nn.log_softmax(logits / 5.0).numpy()
    nll = -np.mean(log_p[np.arange(len(labels)), labels])
    assert metrics["test/loss"] == pytest.approx(nll, rel=1e-4)
    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype("float32")
    out = serve(images=tf.constant(x))
    logits = model(x, training=False).numpy()
    np.testing.assert_allclose(out["logits"].numpy(), logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        out["probabilities"].numpy(), tf.nn.softmax(logits / 5.0).numpy(), rtol=1e-4, atol=1e-6
    )
    import keras

    keras_model = keras.saving.load_model(tmp_path / "export" / "model.keras")
    np.testing.assert_allclose(keras_model(x).numpy(), logits, rtol=1e-4, atol=1e-5)
    tags = set()
    for event_file in (tmp_path / "tensorboard").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    assert {
        "loss",
        "accuracy",
        "learning_rate",
        "logits",
        "logits_over_temperature",
        "max_softmax_probability",
    } <= tags


def test_bad_config_and_resume_mismatch(tmp_path):
    strategy = tf.distribute.get_strategy()
    for field, value, pattern in [
        ("temperature", 0.0, "temperature"),
        ("temperature", float("nan"), "NaN"),
        ("model", "resnet9000", "Unknown model"),
        ("dataset", "svhn", "Unknown dataset"),
        ("batch_size", 0, "batch_size"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            training.train(tiny_config(**{field: value}), tmp_path / "bad", strategy=strategy)
    config = tiny_config(epochs=1)
    training.train(config, tmp_path / "run", strategy=strategy, progress=False, max_steps=1)
    with pytest.raises(ValueError, match="temperature: 2.0 -> 7.0"):
        training.train(tiny_config(temperature=7.0), tmp_path / "run", strategy=strategy)
    with pytest.raises(FileNotFoundError, match="cifar10 not found"):
        training.train(
            tiny_config(dataset="cifar10", data_dir=str(tmp_path)),
            tmp_path / "c10",
            strategy=strategy,
        )


def test_launcher_reports_bad_temperature(tmp_path):
    result = run_launcher(
        "train",
        "--config=configs/digits_small.py:smoke",
        "--temperature=-1",
        f"--workdir={tmp_path}",
    )
    assert result.returncode == 2
    assert "temperature" in result.stderr and "-1" in result.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        dict(jit_compile=True, deterministic=False),  # XLA has no deterministic MaxPoolGrad
        dict(mixed_precision=True),
        dict(model="vit_tiny", normalize=False),
    ],
    ids=["xla", "mixed_bfloat16", "vit_tiny"],
)
def test_other_step_variants_train(tmp_path, overrides):
    """XLA, mixed precision and a ViT all go through the same loop and learn."""
    config = tiny_config(epochs=3, lr=0.05, temperature=1.0, train_subset=0, **overrides)
    config.model_kwargs.width = 8
    if config.model == "vit_tiny":
        config.model_kwargs = type(config.model_kwargs)({"patch_size": 8})
    strategy = tf.distribute.get_strategy()
    metrics = training.train(config, tmp_path / "run", strategy=strategy, progress=False)
    history = read_json(tmp_path / "run" / "history.json")
    # It learns: the loss falls by a margin and the test accuracy beats chance (0.1).
    assert history[-1]["train/loss"] < history[0]["train/loss"] - 0.05
    assert metrics["test/accuracy"] > 0.2  # chance: 0.1 +- 0.04 on 64 images
    if overrides.get("jit_compile"):
        reference = training.train(
            _with_width(tiny_config(epochs=3, lr=0.05, temperature=1.0, train_subset=0), 8),
            tmp_path / "graph",
            strategy=strategy,
            progress=False,
        )
        assert metrics["train/loss"] == pytest.approx(reference["train/loss"], rel=1e-3)
    if overrides.get("mixed_precision"):
        model, _ = training.load_run(tmp_path / "run")
        assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"


# ------------------------------------------------------------------------------------------------
# A diverging run stops; nothing bad is saved or exported
# ------------------------------------------------------------------------------------------------


def test_diverging_run_stops_and_exports_nothing(tmp_path):
    config = tiny_config(lr=1e12, momentum=0.0, epochs=2, export=True, checkpoint_every_steps=1)
    config.log_every_steps = 1
    with pytest.raises(training.TrainingDivergedError, match=r"step \d+") as err:
        training.train(config, tmp_path, strategy=tf.distribute.get_strategy(), progress=False)
    assert "nothing was exported" in str(err.value)
    assert not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "export").exists()
    # Every checkpoint that was kept holds finite weights.
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    if latest:
        model, _ = training.load_run(tmp_path)
        assert all(np.isfinite(w.numpy()).all() for w in model.weights)
        assert latest in str(err.value)


def test_non_finite_loss_names_its_step(tmp_path):
    losses = np.array([2.3, 2.2, np.nan, np.inf])
    with pytest.raises(training.TrainingDivergedError, match="nan at step 12"):
        check_finite_losses(losses, 10, str(tmp_path), _FakeState())
    check_finite_losses(np.array([1.0, 2.0]), 10, str(tmp_path), _FakeState())


class _FakeState:
    class manager:  # noqa: N801 (mimics CheckpointManager)
        latest_checkpoint = None


# ------------------------------------------------------------------------------------------------
# Resuming refuses settings that change the trajectory
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        dict(scale_lr_with_temperature=True),
        dict(warmup_epochs=2.0),
        dict(step_milestones=(0.3, 0.6)),
        dict(adv_train=True),
        dict(adv_eps=4 / 255),
        dict(adv_steps=3),
        dict(mixed_precision=True),
        dict(nesterov=True),
        dict(momentum=0.8),
        dict(step_gamma=0.2),
        dict(epochs=5),
        dict(label_smoothing=0.1),
        dict(normalize=False),
        dict(test_subset=32),
    ],
    ids=lambda d: next(iter(d)),
)
def test_resume_refuses_a_changed_setting(tmp_path, change):
    atomic_write_json(tmp_path / "config.json", training.config_dict(tiny_config()))
    training.check_resume_config(tmp_path, tiny_config())  # the same settings resume
    key = next(iter(change))
    with pytest.raises(ValueError, match=key):
        training.check_resume_config(tmp_path, tiny_config(**change))


@pytest.mark.parametrize("recorded", [True, False])
def test_finished_run_accepts_any_precision_that_auto_chose(tmp_path, recorded, monkeypatch):
    # "auto" resolves per machine: a finished run (a sweep's committed cell) made where it chose
    # bfloat16 is reused on a machine where it chooses float32 and vice versa; a run half-way
    # is not continued in the other precision, and an explicit setting must match.
    atomic_write_json(
        tmp_path / "config.json", training.config_dict(tiny_config(mixed_precision=recorded))
    )
    monkeypatch.setattr(
        distribute,
        "resolve_mixed_precision",
        lambda s: (not recorded, "test") if s == "auto" else (bool(s), "set"),
    )
    training.check_resume_config(tmp_path, tiny_config(mixed_precision="auto"), finished=True)
    with pytest.raises(ValueError, match="mixed_precision"):
        training.check_resume_config(tmp_path, tiny_config(mixed_precision="auto"))
    with pytest.raises(ValueError, match="mixed_precision"):
        training.check_resume_config(
            tmp_path, tiny_config(mixed_precision=not recorded), finished=True
        )


def test_resume_allows_execution_and_logging_changes(tmp_path):
    atomic_write_json(tmp_path / "config.json", training.config_dict(tiny_config()))
    training.check_resume_config(
        tmp_path,
        tiny_config(
            checkpoint_every_steps=7,
            log_every_steps=3,
            keep_checkpoints=9,
            histogram_examples=0,
            export=True,
            data_dir="/elsewhere",
            strategy="mirrored",
            deterministic=False,
        ),
    )
    # A field that an older config.json lacks must equal its default.
    old = training.config_dict(tiny_config())
    del old["nesterov"]
    atomic_write_json(tmp_path / "config.json", old)
    training.check_resume_config(tmp_path, tiny_config())
    with pytest.raises(ValueError, match="nesterov"):
        training.check_resume_config(tmp_path, tiny_config(nesterov=True))


def test_resume_with_changed_lr_schedule_is_refused_end_to_end(tmp_path):
    """The case the review saw: --scale_lr_with_temperature --warmup_epochs=2 on resume."""
    strategy = tf.distribute.get_strategy()
    training.train(tiny_config(), tmp_path, strategy=strategy, progress=False, max_steps=2)
    with pytest.raises(ValueError, match="scale_lr_with_temperature.*warmup_epochs"):
        training.train(
            tiny_config(scale_lr_with_temperature=True, warmup_epochs=2.0),
            tmp_path,
            strategy=strategy,
            progress=False,
        )


# ------------------------------------------------------------------------------------------------
# Weight decay: which variables, and its split across replicas
# ------------------------------------------------------------------------------------------------


def test_decay_selects_weights_not_biases_or_norms():
    import keras

    class Odd(keras.layers.Layer):  # a weight matrix that is not called "kernel"
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 3), name="w")
            self.offset = self.add_weight(shape=(3,), name="offset")

        def call(self, x):
            return x @ self.w + self.offset

    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = Odd()(x)
    x = keras.layers.MultiHeadAttention(2, 4)(x[:, None], x[:, None])
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    decayed = {v.path for v in model.trainable_variables if training.is_decayed(v)}
    expected = {
        v.path
        for v in model.trainable_variables
        if v.path.endswith(("/kernel", "/w")) and "normalization" not in v.path
    }
    assert decayed == expected
    assert any(p.endswith("/w") for p in decayed)  # the odd layer's matrix is decayed
    assert len([p for p in expected if "attention" in p]) == 4  # query, key, value, output


def _one_step_weights(tmp_path, strategy, weight_decay):
    config = tiny_config(
        epochs=1, train_subset=64, lr=0.1, weight_decay=weight_decay, schedule="constant"
    )
    training.train(config, tmp_path, strategy=strategy, progress=False)
    model, _ = training.load_run(tmp_path)
    return {v.path: v.numpy() for v in model.trainable_variables}, model


@pytest.mark.parametrize("replicas", [1, 2])
def test_weight_decay_is_added_once_across_replicas(tmp_path, replicas):
    """After one SGD step from w0, w(wd) - w(0) = -lr * wd * w0 on decayed variables exactly,
    also with 2 replicas (each adds 1/2 of the decay before the gradients are summed)."""
    strategy = distribute.mirrored([f"/cpu:{i}" for i in range(replicas)])
    with_wd, model = _one_step_weights(tmp_path / "wd", strategy, 0.3)
    without, _ = _one_step_weights(tmp_path / "no_wd", strategy, 0.0)
    import keras

    keras.utils.set_random_seed(0)
    initial = training.build_model_from_config(tiny_config(), strategy)
    w0 = {v.path: v.numpy() for v in initial.trainable_variables}
    checked = 0
    for v in model.trainable_variables:
        expected = -0.1 * 0.3 * w0[v.path] if training.is_decayed(v) else 0.0
        np.testing.assert_allclose(
            with_wd[v.path] - without[v.path], expected, atol=2e-6, err_msg=v.path
        )
        checked += training.is_decayed(v)
    assert checked >= 3
