"""Learning-rate schedules (per optimizer step), serialisable."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

SCHEDULES = ("cosine", "step", "constant", "triangle")


@keras.saving.register_keras_serializable(package="tempscale_tf")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `base_lr`, then cosine decay to 0, step decay, constant, or triangle.

    Why not Keras' schedules: `keras.optimizers.schedules.CosineDecay` equals the "cosine" kind
    without warm-up, and `PiecewiseConstantDecay` the "step" kind with boundaries one step
    earlier (tests/test_schedules.py checks both on the whole curve). But Keras' warm-up starts
    at `initial_learning_rate` (a first step at lr 0, or a different ramp), it has no triangle,
    and warm-up cannot be combined with piecewise decay. One class keeps every shape of
    `training.default_config` a function of the optimizer step (so a resumed run continues the
    same curve) that serialises with its settings as fractions of training.

    Args:
      base_lr: peak learning rate.
      total_steps: length of training in optimizer steps.
      warmup_steps: linear warm-up steps (from base_lr / warmup_steps).
      kind: "cosine", "step" or "constant".
      milestones: for "step", fractions of `total_steps` at which the rate is multiplied by
        `gamma` (e.g. (0.5, 0.75)).
      gamma: step-decay factor.
      triangle: for "triangle", `(start, peak, end)`: the rate rises linearly from
        `start * base_lr` at step 0 to `base_lr` at step `peak * total_steps`, then falls
        linearly to `end * base_lr` at `total_steps` (airbench's schedule: (0.2, 0.23, 0.07)).
    """

    def __init__(
        self,
        base_lr,
        total_steps,
        warmup_steps=0,
        kind="cosine",
        milestones=(0.5, 0.75),
        gamma=0.1,
        triangle=(0.2, 0.23, 0.07),
    ):
        if kind not in SCHEDULES:
            raise ValueError(f"Unknown schedule {kind!r}; choose one of {SCHEDULES}")
        if not (math.isfinite(base_lr) and base_lr > 0):
            raise ValueError(f"learning rate must be positive and finite, received {base_lr}")
        milestones = tuple(float(m) for m in milestones)
        if kind == "step" and not all(0.0 < m < 1.0 for m in milestones):
            raise ValueError(
                f"step milestones are fractions of training in (0, 1), received {milestones}"
            )
        if kind == "step" and not (0.0 < gamma <= 1.0):
            raise ValueError(f"step gamma must be in (0, 1], received {gamma}")
        if not (0 <= int(warmup_steps) <= max(int(total_steps), 1)):
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={total_steps}], received {warmup_steps}"
            )
        triangle = tuple(float(t) for t in triangle)
        if kind == "triangle" and not (
            len(triangle) == 3 and 0 < triangle[1] < 1 and min(triangle[0], triangle[2]) >= 0
        ):
            raise ValueError(
                f"triangle must be (start >= 0, peak in (0, 1), end >= 0), received {triangle}"
            )
        self.triangle = triangle
        self.base_lr = float(base_lr)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.milestones = milestones
        self.gamma = float(gamma)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.base_lr, tf.float32)
        if self.kind == "cosine":
            span = float(max(self.total_steps - self.warmup_steps, 1))
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.kind == "triangle":
            start, peak, end = self.triangle
            top = peak * self.total_steps
            rising = start + (1.0 - start) * step / top
            last = tf.minimum(step, float(self.total_steps))
            falling = 1.0 + (end - 1.0) * (last - top) / (self.total_steps - top)
            lr = lr * tf.where(step <= top, rising, falling)
        elif self.kind == "step":
            for m in self.milestones:
                lr = tf.where(step >= m * self.total_steps, lr * self.gamma, lr)
        if self.warmup_steps > 0:
            lr = tf.where(
                step < self.warmup_steps, self.base_lr * (step + 1.0) / self.warmup_steps, lr
            )
        return lr

    def get_config(self):
        return dict(
            base_lr=self.base_lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            kind=self.kind,
            milestones=self.milestones,
            gamma=self.gamma,
            triangle=self.triangle,
        )
