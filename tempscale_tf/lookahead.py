"""Lookahead / exponential moving average of the weights, as airbench94 uses it.

Every `every` steps from a starting epoch, the average moves towards the weights and the
weights are set to the average:

    ema <- rho * ema + (1 - rho) * w;   w <- ema;   rho = decay_base**every * (step / total)**power

so the decay warms up from 0 (follow the weights) to `decay_base**every` at the end (average
strongly). At each epoch end `w <- ema` once more. The first update only copies the weights
into the average. All floating-point model variables take part, batch-norm statistics included.
"""

from __future__ import annotations

import tensorflow as tf


def lookahead_decay(step, total_steps, every: int, decay_base: float, power: float) -> float:
    """`rho` at optimizer step `step` of `total_steps`.

    Args:
      step: the optimizer step.
      total_steps: the length of training.
      every: steps between lookahead updates.
      decay_base: the per-step decay at the end of training (airbench: 0.95).
      power: how the decay warms up with training progress (airbench: 3).
    """
    return decay_base**every * (step / total_steps) ** power


class Lookahead(tf.Module):
    """EMA copies of `variables` (create under the training strategy's scope).

    Args:
      variables: the model's variables; the floating-point ones are averaged.
    """

    def __init__(self, variables, name="lookahead"):
        super().__init__(name=name)
        targets = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
        # Held through a closure, not an attribute: the checkpoint tracks the average only (the
        # model's own variables are checkpointed with the model).
        self._get_targets = lambda: targets
        self.average = [
            tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=f"ema_{i}")
            for i, v in enumerate(targets)
        ]
        self.started = tf.Variable(False, trainable=False, name="started")
        # autograph=False: an explicit tf.cond, and no source read at trace time.
        self._update = tf.function(self._update_fn, autograph=False)

    def update(self, decay: float) -> None:
        """One lookahead step with decay `rho` (the first call only initialises the average)."""
        self._update(tf.constant(decay, tf.float32))

    def _update_fn(self, decay):
        def step():
            for ema, v in zip(self.average, self._get_targets()):
                value = tf.convert_to_tensor(v)
                new = tf.cast(decay, ema.dtype) * ema + tf.cast(1.0 - decay, ema.dtype) * value
                ema.assign(new)
                v.assign(new)
            return tf.constant(True)

        def start():
            for ema, v in zip(self.average, self._get_targets()):
                ema.assign(tf.convert_to_tensor(v))
            self.started.assign(True)
            return tf.constant(True)

        tf.cond(self.started, step, start)

    def copy_to_weights(self) -> None:
        """`w <- ema` (when the average has started), as at each epoch end."""
        if bool(self.started.numpy()):
            self.update(1.0)
