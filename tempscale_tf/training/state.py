"""The training state: the model, its optimizer and schedule, checkpointing, and which weights
are decayed.

`make_state` builds everything a run checkpoints (model, optimizer, host-side epoch
accumulators, the optional lookahead average) under a strategy and the mixed-precision policy;
`restore_checkpoint` restores a checkpoint into it with a readable error.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf

from tempscale_tf import data as data_lib
from tempscale_tf import distribute, models
from tempscale_tf.errors import CheckpointError
from tempscale_tf.lookahead import Lookahead
from tempscale_tf.schedules import WarmupSchedule
from tempscale_tf.training.config import effective_hparams, resolved_data_dir


@dataclasses.dataclass
class TrainState:
    """What a run trains and checkpoints (see `make_state`)."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    accumulators: dict
    schedule: WarmupSchedule
    lookahead: Lookahead | None = None


def build_model_from_config(config, strategy=None) -> keras.Model:
    """The model of a training config, with the dataset's normalisation, under `strategy`."""
    info = data_lib.info(config.dataset, resolved_data_dir(config))
    kwargs = dict(
        config.model_kwargs.to_dict()
        if hasattr(config.model_kwargs, "to_dict")
        else config.model_kwargs
    )
    if config.normalize:
        kwargs.setdefault("mean", info.mean)
        kwargs.setdefault("std", info.std)
    if config.model in models.SYNC_BN_MODELS:
        # Synchronised BN makes a multi-replica step equal to the single-device step; it needs
        # the replica step outside XLA (a cross-replica merge_call), so it is off with jit.
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        kwargs.setdefault(
            "synchronized_bn",
            bool(config.sync_batch_norm)
            and replicas > 1
            and not distribute.resolve_jit_compile(config.jit_compile),
        )
    return models.build_model(config.model, info.num_classes, info.image_shape, **kwargs)


def is_decayed(variable) -> bool:
    """Whether coupled weight decay applies to `variable`.

    Every weight matrix, filter bank or embedding table (rank >= 2) is decayed, whatever the
    layer calls it. Never decayed: scalars and rank-1 variables (biases, normalisation scales
    and offsets), multi-head attention biases (rank 2, named `bias`) and a ViT's class token.
    """
    name = variable.path.rsplit("/", 1)[-1]
    return len(variable.shape) >= 2 and name != "bias" and name != "class_token"


def make_state(config, workdir, strategy, total_steps, steps_per_epoch) -> TrainState:
    """Everything a run trains and checkpoints, built under `strategy`.

    The model is seeded by `config.seed` and built under the mixed-precision policy (when
    `config.mixed_precision`; the global policy is restored after); SGD + momentum follows the
    warm-up + cosine/step/triangle schedule, wrapped in a `LossScaleOptimizer` for float16.
    Models with a data-dependent initialisation (`models.DATA_INIT`) read the training images.

    Args:
      config: a training `ConfigDict` (`default_config()` fields).
      workdir: the folder whose `checkpoints/` the checkpoint manager writes.
      strategy: the `tf.distribute.Strategy` whose scope holds the variables.
      total_steps: optimizer steps of the whole run (the schedule's length).
      steps_per_epoch: optimizer steps per epoch (turns `warmup_epochs` into steps).

    Returns:
      A `TrainState`; nothing is restored or written yet.
    """
    policy = distribute.mixed_policy_name() if config.mixed_precision else None
    with strategy.scope():
        model = _build_model_under_policy(config, strategy, policy)
        schedule = WarmupSchedule(
            effective_hparams(config)[0],
            total_steps,
            int(round(config.warmup_epochs * steps_per_epoch)),
            config.schedule,
            tuple(config.step_milestones),
            config.step_gamma,
            tuple(config.triangle),
        )
        optimizer = keras.optimizers.SGD(
            learning_rate=schedule, momentum=config.momentum, nesterov=config.nesterov
        )
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        lookahead = Lookahead(model.variables) if config.lookahead_start_epoch >= 0 else None
    if config.model in models.DATA_INIT:  # e.g. the whitening kernel (a resume restores it)
        _initialise_from_data(config, model)
    # Epoch accumulators live on the host (outside the strategy) and are checkpointed, so a run
    # resumed mid-epoch reports the same epoch metrics as an uninterrupted one.
    accumulators = {
        k: tf.Variable(0.0, trainable=False, dtype=tf.float64, name=k)
        for k in ("loss_sum", "correct", "count", "seconds")
    }
    extra = {"lookahead": lookahead} if lookahead is not None else {}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **accumulators, **extra)
    manager = tf.train.CheckpointManager(
        checkpoint,
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.keep_checkpoints,
        step_counter=optimizer.iterations,
    )
    return TrainState(model, optimizer, checkpoint, manager, accumulators, schedule, lookahead)


def _build_model_under_policy(config, strategy, policy) -> keras.Model:
    """The seeded model built with the Keras dtype `policy` (None: the current one), leaving
    the global policy as it was."""
    previous = keras.config.dtype_policy()
    if policy:
        keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(int(config.seed))
        return build_model_from_config(config, strategy)
    finally:
        keras.config.set_dtype_policy(previous)


def _initialise_from_data(config, model) -> None:
    """`models.DATA_INIT[config.model]` on the run's training images (its subset, if any)."""
    images, _ = data_lib.load_arrays(config.dataset, config.train_split, resolved_data_dir(config))
    if config.train_subset:
        images = images[data_lib.subset_indices(len(images), config.train_subset)]
    models.DATA_INIT[config.model](model, images)


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str, partial=False) -> None:
    """Restore `path` into `checkpoint`, raising `CheckpointError` with the path on any failure.

    Args:
      checkpoint: the `tf.train.Checkpoint` to restore into (e.g. `TrainState.checkpoint`).
      path: the checkpoint's prefix, e.g. `tf.train.latest_checkpoint(...)`.
      partial: ignore objects in the file that `checkpoint` does not track (the optimizer,
        when only the model is wanted).
    """
    try:
        status = checkpoint.restore(path)
        if partial:
            status = status.expect_partial()
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, KeyError, IndexError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path!r} could not be restored ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). It is corrupted, truncated or was "
            "written by a different model/optimizer. Delete it (the previous checkpoint in the "
            "same folder will be used) or train into a new --workdir."
        ) from e
