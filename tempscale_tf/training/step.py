"""The compiled training and evaluation steps, and `make_train_step` for benchmarks and tests.

One training step on each replica (`TrainSteps`):

  1. adversarial training only: craft `x_adv` by L-inf PGD on the current weights, outside the
     gradient tape (`_craft_adversarial`);
  2. the per-example loss, CE of softmax(logits / T) or the adversarial objective
     (`_forward_loss`), summed and divided by the global batch, scaled for float16
     (`_scale_loss`);
  3. its gradients, times the per-layer learning-rate multipliers (`_apply_lr_multipliers`);
  4. coupled weight decay `g <- g + wd * w` on the decayed variables (`_add_weight_decay`);
  5. the optimizer update.

`train_step(batch)` runs that on every replica (`strategy.run`) and sums (loss sum, correct,
count) over the replicas; `eval_step(batch)` does the same for the test loss at T and accuracy.
"""

from __future__ import annotations

import dataclasses
import tempfile

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from tempscale_tf import distribute, models
from tempscale_tf.losses import temperature_cross_entropy
from tempscale_tf.training.config import effective_hparams, resolve_precision, validate_config
from tempscale_tf.training.state import TrainState, is_decayed, make_state
from tempscale_tf.validation import check_temperature


class TrainSteps:
    """Compiled per-replica train and eval steps for one model/optimizer/strategy.

    `train_step(batch)` and `eval_step(batch)` take a global batch `(images, labels)`
    (distributed by the strategy, or a plain batch under the default strategy) and return the
    sum of the per-example losses, the number of correct predictions and the number of examples,
    each summed over the replicas.

    Args:
      config: a training `ConfigDict` (`default_config()` fields).
      state: the `TrainState` whose model and optimizer the step trains.
      strategy: the `tf.distribute.Strategy` the state was built under.
      global_batch: examples per step over all replicas (the loss is divided by it).
    """

    def __init__(self, config, state: TrainState, strategy, global_batch: int):
        self.model, self.optimizer, self.strategy = state.model, state.optimizer, strategy
        self.temperature = check_temperature(config.temperature)
        self.label_smoothing = float(config.label_smoothing)
        self.weight_decay = effective_hparams(config)[1]
        self.global_batch = float(global_batch)
        self.config = config
        replicas = strategy.num_replicas_in_sync
        self.decayed = [is_decayed(v) for v in self.model.trainable_variables]
        # Per-layer learning-rate multipliers (models.fast: batch-norm offsets, the head), applied
        # to the data gradient only: with SGD (+ momentum) that scales the data term's step.
        multipliers = models.common.lr_multipliers(self.model)
        self.multipliers = [multipliers.get(id(v), 1.0) for v in self.model.trainable_variables]
        jit = self._jit = distribute.resolve_jit_compile(config.jit_compile)
        # XLA needs its own (nested) tf.function; in plain graph mode the replica step is traced
        # inside the outer function, which also allows synchronised batch norm (a merge_call).
        self._grads = (
            tf.function(self._loss_and_grads, jit_compile=True, autograph=False)
            if jit
            else self._loss_and_grads
        )
        self._replicas = float(replicas)
        # Without AutoGraph (as Keras' own steps): no Python control flow on tensors here, and
        # AutoGraph would read this file when the step is first traced, which for the eval step
        # is an epoch into a run; an edit of the file in between made it trace the wrong body.
        self.train_step = tf.function(
            self._distributed_train_step, reduce_retracing=True, autograph=False
        )
        self.eval_step = tf.function(
            self._distributed_eval_step, reduce_retracing=True, autograph=False
        )

    # -------------------------------------------------------------------- adversarial examples

    def _craft_adversarial(self, images, labels):
        """Adversarial images for adversarial training (outside the gradient tape)."""
        from tempscale_tf import adversarial

        c = self.config
        return adversarial.craft_linf_pgd(
            self.model,
            images,
            labels,
            c.adv_eps,
            c.adv_step_size,
            c.adv_steps,
            c.adv_loss,
            c.adv_temperature,
            c.adv_random_start,
            self._adversarial_seed(),
            separate_gradient=not self._jit,
        )

    def _adversarial_seed(self):
        """The attack's random-start seed: (config seed, step * 1024 + replica), so every step
        and replica draws its own start, the same in a resumed run."""
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.stack(
            [
                tf.cast(self.config.seed, tf.int64),
                tf.cast(self.optimizer.iterations, tf.int64) * 1024 + tf.cast(replica, tf.int64),
            ]
        )

    # ----------------------------------------------------------------------- loss and gradients

    def _forward_loss(self, images, labels, x_adv=None):
        """Per-example training loss and the logits whose accuracy the step reports."""
        if x_adv is not None:
            return self._adversarial_loss(images, labels, x_adv)
        logits = self.model(images, training=True)
        per_example = temperature_cross_entropy(
            labels, logits, self.temperature, label_smoothing=self.label_smoothing
        )
        return per_example, logits

    def _adversarial_loss(self, images, labels, x_adv):
        """`config.adv_objective` on the clean and adversarial batches (see `adversarial`)."""
        from tempscale_tf import adversarial

        c = self.config
        if c.adv_objective == "paper":
            both = self.model(tf.concat([images, x_adv], axis=0), training=True)
            logits, logits_adv = tf.split(both, 2, axis=0)
        else:  # "madry": the reported accuracy is on the adversarial batch
            logits = logits_adv = self.model(x_adv, training=True)
        per_example = adversarial.adversarial_objective(
            logits,
            logits_adv,
            labels,
            self.temperature,
            c.adv_objective,
            c.adv_weight,
            self.label_smoothing,
        )
        return per_example, logits

    def _loss_and_grads(self, images, labels):
        """(gradients with multipliers and weight decay, loss sum, correct) on one replica."""
        variables = self.model.trainable_variables
        x_adv = self._craft_adversarial(images, labels) if self.config.adv_train else None
        with tf.GradientTape() as tape:
            per_example, logits = self._forward_loss(images, labels, x_adv)
            loss = tf.reduce_sum(per_example) / self.global_batch
            scaled = self._scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        grads = self._apply_lr_multipliers(grads)
        grads = self._add_weight_decay(grads, variables)
        return grads, tf.reduce_sum(per_example), _count_correct(logits, labels)

    def _apply_lr_multipliers(self, grads):
        return [g if m == 1.0 else g * tf.cast(m, g.dtype) for g, m in zip(grads, self.multipliers)]

    # ----------------------------------------------------------- loss scaling and weight decay

    def _loss_scaling(self) -> bool:
        """Whether the optimizer scales the loss (mixed float16)."""
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    def _scale_loss(self, loss):
        return self.optimizer.scale_loss(loss) if self._loss_scaling() else loss

    def _add_weight_decay(self, grads, variables):
        """`g + wd * w` on the decayed variables, `g` elsewhere (coupled weight decay)."""
        if not self.weight_decay:
            return grads
        # Gradients are summed over replicas: add 1/replicas of the decay on each. Under loss
        # scaling the gradients are still scaled here (the optimizer unscales them), so the
        # decay is scaled alike.
        wd = self.weight_decay / self._replicas
        if self._loss_scaling():
            wd = wd * tf.cast(self.optimizer.dynamic_scale, tf.float32)
        return [
            g + tf.cast(wd, g.dtype) * tf.cast(v, g.dtype) if d else g
            for g, v, d in zip(grads, variables, self.decayed)
        ]

    # --------------------------------------------------------------------------------- replicas

    def _replica_train_step(self, images, labels):
        grads, loss_sum, correct = self._grads(images, labels)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss_sum, correct, tf.cast(tf.shape(labels)[0], tf.float32)

    def _replica_eval_step(self, images, labels):
        logits = self.model(images, training=False)
        per_example = temperature_cross_entropy(labels, logits, self.temperature)
        correct = _count_correct(logits, labels)
        return tf.reduce_sum(per_example), correct, tf.cast(tf.shape(labels)[0], tf.float32)

    def _sum_over_replicas(self, per_replica):
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in per_replica]

    def _distributed_train_step(self, batch):
        return self._sum_over_replicas(self.strategy.run(self._replica_train_step, args=batch))

    def _distributed_eval_step(self, batch):
        return self._sum_over_replicas(self.strategy.run(self._replica_eval_step, args=batch))


def _count_correct(logits, labels):
    """How many argmax predictions equal the labels (float32)."""
    return tf.reduce_sum(
        tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)),
            tf.float32,
        )
    )


def evaluate(steps: TrainSteps, dataset) -> dict:
    """Loss (at the training temperature) and accuracy over a distributed dataset."""
    totals = np.zeros(3)
    for batch in dataset:
        totals += np.array([float(t) for t in steps.eval_step(batch)])
    loss_sum, correct, count = totals
    return {
        "loss": loss_sum / max(count, 1),
        "accuracy": correct / max(count, 1),
        "count": int(count),
    }


def shard_by_data(dataset):
    """Multi-worker input: every worker builds the same pipeline and keeps its share of each
    global batch (DATA sharding), so a step sees exactly the single-process global batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def set_op_determinism(config):
    """Make TensorFlow's process-wide op determinism follow `config.deterministic`.

    XLA-compiled steps are left out: TF's determinism switch rejects XLA's max-pool gradient
    ("do not yet have a deterministic XLA implementation"), and XLA's CPU kernels are already
    run-to-run deterministic; on GPU, XLA reductions may not be, which the log says.
    """
    from tensorflow.python.framework import config as tf_config  # no public "disable"

    jit = distribute.resolve_jit_compile(config.jit_compile)
    want = bool(config.deterministic) and not jit
    if config.deterministic and jit:
        logging.warning(
            "deterministic=True is not applied to the XLA-compiled step (jit_compile=True); "
            "XLA on GPU may reorder reductions between runs."
        )
    if want:
        tf.config.experimental.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


# ----------------------------------------------------------------- the loop's step, stand-alone


@dataclasses.dataclass
class LoopStep:
    """The compiled training step of `train` for one config, outside the loop (see
    `make_train_step`): for benchmarks and tests."""

    config: ml_collections.ConfigDict
    strategy: tf.distribute.Strategy
    state: TrainState
    steps: TrainSteps
    workdir: tempfile.TemporaryDirectory  # the (unused) checkpoint folder, removed with this

    @property
    def model(self) -> keras.Model:
        return self.state.model

    def distribute(self, dataset):
        """`dataset` of global batches, distributed over the replicas as `train` does."""
        return distribute.distribute_dataset(self.strategy, shard_by_data(dataset))

    def run(self, dataset):
        """`train_step` on every batch of `dataset`, as in an epoch of `train` (without its
        logging and checkpoints); returns the last step's (loss sum, correct, count)."""
        out = None
        for batch in self.distribute(dataset):
            out = self.steps.train_step(batch)
        return out


def make_train_step(config, strategy=None, total_steps=10_000, steps_per_epoch=100) -> LoopStep:
    """The step `train(config, ...)` runs, built by the same functions in the same order:
    `validate_config`, `resolve_precision`, the strategy of `config.strategy` (unless one is
    given), `set_op_determinism`, `make_state` (the model seeded by `config.seed`, built under
    the strategy and the mixed-precision policy; SGD + momentum on the schedule; loss scaling for
    float16) and `TrainSteps` (coupled weight decay, its 1/replicas split, the nested XLA
    function with `jit_compile`, the sum over replicas).

    The checkpoint manager points to a temporary folder; nothing is written.

    Args:
      config: a training `ConfigDict` (`default_config()` fields); `batch_size` is the global
        batch the step expects.
      strategy: a `tf.distribute.Strategy`; default from `config.strategy`, as in `train`.
      total_steps: the schedule's length in steps (shapes the learning rate only).
      steps_per_epoch: steps per epoch (turns `warmup_epochs` into steps; the rate only).

    Returns:
      A `LoopStep`: `run(dataset)` trains on every batch of a dataset of global batches;
      `state` (model, optimizer, schedule, checkpoint) and `steps` are the loop's own objects.
    """
    validate_config(config)
    config = resolve_precision(config)
    strategy = strategy or distribute.make_strategy(config.strategy)
    set_op_determinism(config)
    workdir = tempfile.TemporaryDirectory(prefix="tempscale_step_")
    state = make_state(config, workdir.name, strategy, total_steps, steps_per_epoch)
    steps = TrainSteps(config, state, strategy, int(config.batch_size))
    return LoopStep(config, strategy, state, steps, workdir)
