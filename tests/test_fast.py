"""The fast CIFAR recipe: whitening, identity init, lookahead/EMA, learning-rate multipliers,
triangular schedule, alternating flips, bfloat16 vs float32 steps, and its smoke config."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tempscale_tf import data, distribute, models, training
from tempscale_tf.lookahead import Lookahead, lookahead_decay
from tempscale_tf.models import fast
from tempscale_tf.schedules import WarmupSchedule


def test_whitening_layer_whitens_its_patches():
    """On the patches it was fitted to, the second moment of the first half of the outputs is
    the identity (up to eps), and the second half is their negation."""
    rng = np.random.default_rng(0)
    # Correlated colour images: a smooth field plus channel mixing.
    base = rng.normal(size=(40, 12, 12, 3))
    images = base @ np.array([[1.0, 0.8, 0.2], [0.0, 0.6, 0.5], [0.0, 0.0, 0.3]])
    layer = fast.PatchWhitening(2, eps=1e-6)
    layer.build((None, 12, 12, 3))
    patches = fast.image_patches(images, 2)
    assert patches.shape == (40 * 11 * 11, 2, 2, 3)
    layer.fit(patches)
    out = keras.ops.convert_to_numpy(layer(images.astype("float32"))) - layer.bias.numpy()
    flat = out.reshape(-1, out.shape[-1]).astype(np.float64)
    half = flat.shape[1] // 2
    moment = flat[:, :half].T @ flat[:, :half] / len(flat)
    np.testing.assert_allclose(moment, np.eye(half), atol=2e-3)
    np.testing.assert_allclose(flat[:, half:], -flat[:, :half], atol=1e-5)
    # The raw patches were far from white.
    raw = patches.reshape(len(patches), -1)
    assert np.abs(raw.T @ raw / len(raw) - np.eye(12)).max() > 0.5


def test_image_patches_matches_a_loop():
    x = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
    patches = fast.image_patches(x, 2)
    expected = [x[n, i : i + 2, j : j + 2] for n in range(2) for i in range(3) for j in range(4)]
    np.testing.assert_array_equal(patches, np.stack(expected))


def test_partial_dirac_is_identity_on_the_first_filters():
    kernel = keras.ops.convert_to_numpy(fast.PartialDirac(seed=1)((3, 3, 4, 6)))
    x = np.random.default_rng(1).normal(size=(1, 5, 5, 4)).astype("float32")
    y = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # identity channels
    bound = 1 / np.sqrt(3 * 3 * 4)
    rest = kernel[..., 4:]
    assert np.abs(rest).max() <= bound and rest.std() > bound / 3  # PyTorch's default init


def test_fast_cifar_initialises_from_data_and_round_trips(tmp_path):
    x, _ = data.load_arrays("digits", "train")
    info = data.info("digits")
    model = models.build_model(
        "fast_cifar", 10, (32, 32, 3), widths=(8, 16, 16), mean=info.mean, std=info.std
    )
    before = model.get_layer("whiten").kernel.numpy().copy()
    models.DATA_INIT["fast_cifar"](model, x)
    after = model.get_layer("whiten").kernel.numpy()
    assert not np.allclose(before, after)
    assert not model.get_layer("whiten").kernel.trainable
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again(x[:4]).numpy(), model(x[:4]).numpy(), rtol=1e-5, atol=1e-5)


def test_lookahead_matches_numpy():
    rng = np.random.default_rng(0)
    variables = [tf.Variable(rng.normal(size=(3, 2)).astype("float32")), tf.Variable(1.5)]
    look = Lookahead(variables)
    ema = None
    for step in range(1, 8):
        new_values = [rng.normal(size=(3, 2)).astype("float32"), np.float32(rng.normal())]
        for v, value in zip(variables, new_values):
            v.assign(value)  # "a training step"
        decay = lookahead_decay(step, 10, 5, 0.95, 3.0)
        look.update(decay)
        if ema is None:  # the first update only copies the weights
            ema = [np.array(v) for v in new_values]
        else:
            ema = [decay * e + (1 - decay) * np.array(v) for e, v in zip(ema, new_values)]
        for i, (v, e) in enumerate(zip(variables, ema)):  # the weights are set to the average
            np.testing.assert_allclose(v.numpy(), e, rtol=1e-6)
            np.testing.assert_allclose(look.average[i].numpy(), e, rtol=1e-6)
    assert lookahead_decay(10, 10, 5, 0.95, 3.0) == pytest.approx(0.95**5)
    assert lookahead_decay(5, 10, 5, 0.95, 3.0) == pytest.approx(0.95**5 / 8)


def _fast_config(**overrides):
    c = training.default_config()
    c.mixed_precision = False
    c.dataset, c.model = "digits", "fast_cifar"
    c.model_kwargs.widths = (8, 8, 8)
    c.train_subset, c.test_subset, c.batch_size, c.epochs = 64, 32, 64, 1
    c.lr, c.momentum, c.weight_decay, c.schedule = 0.1, 0.0, 0.0, "constant"
    c.histogram_examples, c.export, c.deterministic = 0, False, True
    c.augment_padding, c.augment_flip = 0, "none"
    for k, v in overrides.items():
        c[k] = v
    return c


def _loop_step(config):
    """The training loop's own step for `config` (default strategy, a one-step schedule)."""
    return training.make_train_step(
        config, tf.distribute.get_strategy(), total_steps=1, steps_per_epoch=1
    )


def _step_once(step):
    """One training step on the first 64 digits images: (loss sum, {path: weight change})."""
    variables = step.model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    batch = next(iter(data.load("digits", "train", batch_size=64, subset=64, augment=False)))
    loss_sum = float(step.steps.train_step(batch)[0])
    return loss_sum, {v.path: v.numpy() - b for v, b in zip(variables, before)}


def _one_step(**model_kwargs):
    config = _fast_config()
    config.model_kwargs.update(model_kwargs)
    return _step_once(_loop_step(config))[1]


def test_bias_lr_scale_applies_only_to_batch_norm_offsets():
    """With plain SGD one step moves each weight by -lr * multiplier * gradient: the batch-norm
    offsets move 64x as far, every other weight exactly as far, as with no multiplier."""
    plain = _one_step(bn_bias_lr_scale=1.0, head_scale=1.0)
    scaled = _one_step(bn_bias_lr_scale=64.0, head_scale=1.0)
    assert plain.keys() == scaled.keys()
    offsets = [p for p in plain if p.endswith("beta")]
    assert len(offsets) == 6 and not any("gamma" in p for p in plain)  # no BN scale
    for path in plain:
        factor = 64.0 if path in offsets else 1.0
        np.testing.assert_allclose(scaled[path], factor * plain[path], rtol=2e-3, atol=1e-7)


def test_head_scale_is_the_logit_scale_reparametrised():
    """head_scale s: the head starts s times smaller and its step is s^2 times smaller, so s*W
    (the effective logit weights of airbench's `logits * s`) move by s^2 * lr * grad."""
    plain = _one_step(head_scale=1.0)
    scaled = _one_step(head_scale=1.0 / 9.0)
    # Same body init (seeded), head init 9x smaller: the head's own gradient is unchanged at
    # the first step only if the logits' dependence on it is; compare the ratio of updates.
    ratio = np.abs(scaled["logits/kernel"]).sum() / np.abs(plain["logits/kernel"]).sum()
    assert 1 / 81 / 3 < ratio < 3 / 81
    model = models.build_model("fast_cifar", 10, (32, 32, 3), widths=(8, 8, 8), head_scale=0.5)
    assert fast.lr_multipliers(model)[id(model.get_layer("logits").kernel)] == 0.25


def test_triangle_schedule():
    schedule = WarmupSchedule(2.0, 100, 0, "triangle", triangle=(0.2, 0.25, 0.05))
    xp, fp = [0, 25, 100], [0.4, 2.0, 0.1]
    for step in (0, 10, 25, 26, 60, 100, 120):
        expected = np.interp(min(step, 100), xp, fp)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step


def _fake_cifar10(folder, n=64):
    import pickle

    rng = np.random.default_rng(0)
    (folder / "cifar-10-batches-py").mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=n).tolist(),
        }
        with open(folder / "cifar-10-batches-py" / name, "wb") as f:
            pickle.dump(batch, f, protocol=4)
    return folder


def test_alternating_flips(tmp_path):
    """Every image is flipped in exactly one of two consecutive epochs, and about half per
    epoch (no crop, so the flip is the only change)."""
    folder = _fake_cifar10(tmp_path)
    images, _ = data.load_arrays("cifar10", "train[:64]", folder)
    plain = images / 255.0
    flips = []
    for epoch in (0, 1, 2):
        ds = data.load(
            "cifar10",
            "train[:64]",
            folder,
            batch_size=64,
            shuffle=False,
            epoch=epoch,
            padding=0,
            flip="alternate",
        )
        got = next(iter(ds))[0].numpy()
        same = np.all(np.isclose(got, plain), axis=(1, 2, 3))
        mirrored = np.all(np.isclose(got, plain[:, :, ::-1]), axis=(1, 2, 3))
        assert np.all(same | mirrored)
        flips.append(mirrored & ~same)
    assert np.all(flips[0] ^ flips[1]) and np.array_equal(flips[0], flips[2])
    assert 16 < flips[0].sum() < 48


def test_reflect_padding_crop():
    images = np.random.default_rng(0).random((4, 6, 6, 1)).astype("float32")
    seed = tf.constant([1, 2], tf.int64)
    out = data.augment_batch(tf.constant(images), seed, 2, False, "reflect").numpy()
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    offsets = tf.random.stateless_uniform([4, 2], seed=seed, minval=0, maxval=5, dtype=tf.int32)
    for i, (r, c) in enumerate(offsets.numpy()):
        np.testing.assert_array_equal(out[i], padded[i, r : r + 6, c : c + 6])


def test_bfloat16_and_float32_steps_agree():
    """One training step of a small model in mixed bfloat16 and in float32 from the same
    weights: the updates agree to bfloat16 precision (and the body computes in bfloat16)."""
    updates = {}
    for precision in (False, True):
        config = _fast_config(model="small_cnn", mixed_precision=precision, lr=0.5)
        config.model_kwargs = type(config.model_kwargs)({"width": 8})
        step = _loop_step(config)
        if precision:
            assert step.model.get_layer("conv1").compute_dtype == "bfloat16"
            assert step.model.get_layer("logits").compute_dtype == "float32"
        loss_sum, moves = _step_once(step)
        updates[precision] = (loss_sum / 64, np.concatenate([m.ravel() for m in moves.values()]))
    (loss32, u32), (loss16, u16) = updates[False], updates[True]
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    cosine = u32 @ u16 / np.linalg.norm(u32) / np.linalg.norm(u16)
    assert cosine > 0.98
    assert np.linalg.norm(u16 - u32) < 0.2 * np.linalg.norm(u32)


def test_mixed_precision_auto_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(distribute, "gpu_available", lambda: False)
    monkeypatch.setattr(distribute, "cpu_bf16_features", lambda: ("avx512_bf16",))
    assert distribute.resolve_mixed_precision("auto")[0] is True
    monkeypatch.setattr(distribute, "cpu_bf16_features", lambda: ())
    use, why = distribute.resolve_mixed_precision("auto")
    assert use is False and "float32" in why
    assert distribute.resolve_mixed_precision(True)[0] is True
    with pytest.raises(ValueError, match="mixed_precision"):
        distribute.resolve_mixed_precision("fast")


def test_float16_loss_scaling_keeps_the_weight_decay():
    """Under a LossScaleOptimizer the decay is added to scaled gradients; it must be scaled too
    (one step with mixed float16 equals the float32 step up to float16 precision)."""
    moves = {}
    for policy in (None, "mixed_float16"):
        config = _fast_config(model="small_cnn", weight_decay=0.5, lr=0.1)
        config.model_kwargs = type(config.model_kwargs)({"width": 4})
        if policy:
            import unittest.mock

            with unittest.mock.patch.object(
                distribute, "mixed_policy_name", lambda: "mixed_float16"
            ):
                config.mixed_precision = True
                step = _loop_step(config)
        else:
            step = _loop_step(config)
        kernel = step.model.get_layer("conv1").kernel
        before = kernel.numpy().copy()
        moves[policy] = _step_once(step)[1][kernel.path]
        decay_part = -0.1 * 0.5 * before
    # The decay dominates this step; without scaling it, the float16 step would be ~0.
    np.testing.assert_allclose(moves["mixed_float16"], moves[None], rtol=0.1, atol=2e-3)
    assert np.abs(decay_part).mean() > 3 * np.abs(moves[None] - decay_part).mean()


@pytest.mark.parametrize("precision", ["auto", "bfloat16"])
def test_smoke_config_trains_on_digits(tmp_path, run_script, precision):
    # bfloat16 forced: with the patch whitening in bfloat16 the loss stayed at ln 10 (digits'
    # nearly collinear patches); the whitening now computes in float32.
    extra = ["--config.mixed_precision=True"] if precision == "bfloat16" else []
    result = run_script(
        "train",
        "--config=configs/cifar10_fast.py:smoke",
        f"--workdir={tmp_path}",
        "--progress=false",
        *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    history = json.loads((tmp_path / "history.json").read_text())
    assert history[-1]["train/loss"] < history[0]["train/loss"] - 0.2
    assert history[-1]["test/accuracy"] > 0.5
