"""WarmupSchedule against a numpy transcription of its definition."""

import math

import keras
import numpy as np
import pytest

from tempscale_tf.schedules import WarmupSchedule


def reference_lr(step, base, total, warmup, kind, milestones=(0.5, 0.75), gamma=0.1):
    """Linear warm-up from base/warmup to base over `warmup` steps, then the decay."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if kind == "cosine":
        progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
        return base * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "step":
        return base * gamma ** sum(step >= m * total for m in milestones)
    return base


@pytest.mark.parametrize(
    "kind, warmup", [("cosine", 0), ("cosine", 10), ("step", 0), ("step", 5), ("constant", 3)]
)
def test_schedule_matches_reference(kind, warmup):
    schedule = WarmupSchedule(0.4, 100, warmup, kind, (0.3, 0.6), 0.2)
    steps = np.arange(0, 101)
    ours = np.array([float(schedule(s)) for s in steps])
    ref = np.array([reference_lr(s, 0.4, 100, warmup, kind, (0.3, 0.6), 0.2) for s in steps])
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


def test_schedule_landmarks():
    cosine = WarmupSchedule(1.0, 100, 10, "cosine")
    assert float(cosine(0)) == pytest.approx(0.1)  # first warm-up step: base / warmup
    assert float(cosine(9)) == pytest.approx(1.0)  # end of warm-up: the peak
    assert float(cosine(10)) == pytest.approx(1.0)  # cosine starts at the peak
    assert float(cosine(55)) == pytest.approx(0.5)  # half-way through the cosine part
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-7)  # ends at 0
    step = WarmupSchedule(1.0, 100, 0, "step", (0.5, 0.75), 0.1)
    assert [float(step(s)) for s in (49, 50, 74, 75)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_schedule_config_round_trip():
    schedule = WarmupSchedule(0.3, 200, 7, "step", (0.25, 0.9), 0.5)
    config = keras.optimizers.schedules.serialize(schedule)
    again = keras.optimizers.schedules.deserialize(config)
    assert isinstance(again, WarmupSchedule) and again.get_config() == schedule.get_config()
    assert [float(again(s)) for s in range(0, 200, 13)] == [
        float(schedule(s)) for s in range(0, 200, 13)
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="sawtooth"), "Unknown schedule"),
        (dict(base_lr=0.0), "learning rate"),
        (dict(base_lr=float("nan")), "learning rate"),
        (dict(kind="step", milestones=(50, 75)), "fractions"),
        (dict(kind="step", gamma=0.0), "gamma"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(warmup_steps=101), "warmup_steps"),
    ],
)
def test_schedule_rejects_bad_settings(kwargs, match):
    args = dict(base_lr=0.1, total_steps=100, warmup_steps=0, kind="cosine")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        WarmupSchedule(**args)


def test_keras_equivalents_where_they_exist():
    """The docstring's claim: without warm-up, "cosine" is Keras' CosineDecay and "step" is
    PiecewiseConstantDecay with each boundary one step earlier (ours switches at the milestone
    step, Keras after its boundary). Checked over the whole curve."""
    total, lr = 200, 0.4
    steps = np.arange(total + 5)
    ours = WarmupSchedule(lr, total, 0, "cosine")
    theirs = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    np.testing.assert_allclose(
        [float(ours(s)) for s in steps], [float(theirs(s)) for s in steps], rtol=1e-5, atol=1e-7
    )
    ours = WarmupSchedule(lr, total, 0, "step", milestones=(0.5, 0.75), gamma=0.1)
    theirs = keras.optimizers.schedules.PiecewiseConstantDecay(
        [0.5 * total - 1, 0.75 * total - 1], [lr, lr * 0.1, lr * 0.01]
    )
    np.testing.assert_allclose(
        [float(ours(s)) for s in steps], [float(theirs(s)) for s in steps], rtol=1e-6
    )
    # Warm-up is where they differ: ours starts at lr / warmup_steps, Keras' at its initial rate.
    warm = WarmupSchedule(lr, total, 10, "cosine")
    keras_warm = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total - 10, warmup_target=lr, warmup_steps=10
    )
    assert float(warm(0)) == pytest.approx(lr / 10) and float(keras_warm(0)) == 0.0
    np.testing.assert_allclose(
        [float(warm(s)) for s in range(10, total)],
        [float(keras_warm(s)) for s in range(10, total)],
        rtol=1e-5,
        atol=1e-7,
    )
