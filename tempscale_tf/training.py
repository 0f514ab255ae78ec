"""Training with a temperature-scaled cross-entropy: a compiled, distributed, resumable loop.

`train(config, workdir)` trains `config.model` on `config.dataset` minimising
`CE(softmax(logits / config.temperature), y)` with SGD + momentum, coupled weight decay and a
warm-up + cosine/step schedule, under a `tf.distribute` strategy. The workdir receives:

  - `config.json`: the settings (a rerun with a different model/dataset/temperature is refused);
  - `checkpoints/`: `tf.train.Checkpoint`s (model, optimizer, epoch accumulators) every epoch and,
    optionally, every `checkpoint_every_steps`; rerunning the same command resumes from the
    latest one and ends at the same weights as an uninterrupted run (the data pipeline is a
    function of seed, epoch and batch index);
  - `tensorboard/{train,test}`: loss, accuracy, learning rate, throughput, and histograms of the
    test logits, logits / T and max softmax probability at T;
  - `history.json` (per-epoch metrics) and `metrics.json` (final metrics and settings);
  - `export/`: a SavedModel whose serving signature returns `logits` and `probabilities`
    (softmax at the training temperature), plus `model.keras`.

Weight decay is coupled (added to the gradient, as in PyTorch's SGD): `g <- g + wd * w` for
convolution and dense kernels (not biases or normalisation parameters). Note the 1/T factor of the
loss gradient also shrinks the effective learning rate of the data term relative to weight decay:
short schedules at high T can underfit (the paper trains 200 epochs).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import shutil
import time

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from tempscale_tf import data as data_lib
from tempscale_tf import distribute, models
from tempscale_tf.errors import CheckpointError, TrainingDivergedError  # noqa: F401 (re-exported)
from tempscale_tf.files import atomic_write_json, read_json
from tempscale_tf.lookahead import Lookahead, lookahead_decay
from tempscale_tf.losses import temperature_cross_entropy
from tempscale_tf.schedules import WarmupSchedule
from tempscale_tf.validation import check_positive_int, check_temperature

# Settings that may differ when a run resumes in the same workdir: they change how the run is
# executed, logged or checkpointed, never its trajectory (the weights after every step are the
# same up to floating-point reassociation). Every other setting is compared on resume.
_RESUME_MAY_CHANGE = (
    "data_dir",  # the same files on another machine
    "strategy",  # a step on N replicas equals the single-device step (synchronised BN)
    "jit_compile",
    "deterministic",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "log_every_steps",
    "histogram_examples",
    "export",
)


def default_config() -> ml_collections.ConfigDict:
    """Every training setting with its default. Experiment configs override fields of this."""
    c = ml_collections.ConfigDict()
    c.dataset = "digits"
    c.data_dir = ""  # "" -> $TEMPSCALE_DATA_DIR or ~/tensorflow_datasets
    c.train_split = "train"
    c.test_split = "test"
    c.train_subset = 0  # 0 -> the whole split; n -> a fixed seeded sample of n examples
    c.test_subset = 0
    c.model = "small_cnn"
    c.model_kwargs = ml_collections.ConfigDict()
    c.normalize = True  # per-channel (x - mean) / std inside the model, from the dataset's stats

    c.temperature = 1.0
    c.label_smoothing = 0.0

    c.epochs = 10
    c.batch_size = 128  # global batch (split across replicas)
    c.lr = 0.1
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.warmup_epochs = 0.0
    c.step_milestones = (0.5, 0.75)
    c.step_gamma = 0.1
    c.seed = 0
    # Compensate the 1/T gradient scale: lr -> lr * T and weight_decay -> weight_decay / T (so
    # lr * weight_decay is unchanged). Off by default (the paper uses the same lr at every T).
    c.scale_lr_with_temperature = False

    # Triangular schedule (schedule="triangle"): lr x (start, 1 at peak fraction, end).
    c.triangle = (0.2, 0.23, 0.07)
    # Lookahead / EMA of the weights (airbench): from epoch `lookahead_start_epoch` (-1: off),
    # every `lookahead_every` steps, ema <- rho ema + (1 - rho) w and w <- ema, with
    # rho = decay_base**every * (step / total_steps)**decay_power; w <- ema at each epoch end.
    c.lookahead_start_epoch = -1
    c.lookahead_every = 5
    c.lookahead_decay_base = 0.95
    c.lookahead_decay_power = 3.0

    # Augmentation of the training split: random crop after padding by `augment_padding` pixels
    # (-1: the dataset's default) with `augment_pad_mode` ("constant" zeros or "reflect"), and
    # horizontal flips: "random" (each image, each epoch), "alternate" (a random flip in epoch
    # 0, then every image flips each epoch) or "none" (also for datasets without flips).
    c.augment_padding = -1
    c.augment_pad_mode = "constant"
    c.augment_flip = "random"

    c.strategy = "auto"
    c.sync_batch_norm = True  # synchronise BN statistics across replicas
    c.jit_compile = ml_collections.config_dict.placeholder(bool)  # None -> on for GPU only
    # bfloat16 (CPU) / float16 (GPU) compute for the body; the head and loss stay float32.
    # "auto": bfloat16 on a CPU with AVX512-BF16 or AMX, float16 on a GPU, else float32. The
    # resolved choice is what config.json records (a resume elsewhere must resolve the same).
    c.mixed_precision = ml_collections.FieldReference("auto", field_type=object)
    c.deterministic = False  # tf.config.experimental.enable_op_determinism()

    c.checkpoint_every_steps = 0  # 0 -> once per epoch
    c.keep_checkpoints = 3
    c.log_every_steps = 20
    c.histogram_examples = 1024
    c.export = True

    # Adversarial training (tempscale_tf.adversarial); off by default.
    c.adv_train = False
    c.adv_objective = (
        "paper"  # "paper": CE(F(x)/T, y) + w CE(F(x_adv), y); "madry": CE(F(x_adv)/T, y)
    )
    c.adv_weight = 1.0  # w
    c.adv_eps = 8 / 255
    c.adv_step_size = 2 / 255
    c.adv_steps = 7
    c.adv_loss = "ce"  # the attack's loss: "ce", "margin" or "dlr"
    c.adv_temperature = 1.0  # the attack's CE temperature
    c.adv_random_start = True
    return c


@dataclasses.dataclass
class TrainState:
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    accumulators: dict
    schedule: WarmupSchedule
    lookahead: Lookahead | None = None


def validate_config(config) -> None:
    """Raise ValueError naming the first bad setting."""
    check_temperature(config.temperature)
    check_positive_int(config.epochs, "epochs")
    check_positive_int(config.batch_size, "batch_size")
    if config.model not in models.MODELS:
        raise ValueError(
            f"Unknown model {config.model!r}. Available models: {sorted(models.MODELS)}"
        )
    data_lib._check_name(config.dataset)
    for name in ("lr",):
        value = config[name]
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive finite number, received {value!r}")
    if not (0 <= config.weight_decay < 1):
        raise ValueError(f"`weight_decay` must be in [0, 1), received {config.weight_decay}")
    if not (0 <= config.momentum < 1):
        raise ValueError(f"`momentum` must be in [0, 1), received {config.momentum}")
    distribute.resolve_mixed_precision(config.mixed_precision)
    if config.augment_flip not in ("random", "alternate", "none"):
        raise ValueError(
            "augment_flip must be 'random', 'alternate' or 'none', received "
            f"{config.augment_flip!r}"
        )
    if config.augment_pad_mode not in ("constant", "reflect"):
        raise ValueError(
            "augment_pad_mode must be 'constant' or 'reflect', received "
            f"{config.augment_pad_mode!r}"
        )
    if config.lookahead_start_epoch >= 0:
        check_positive_int(config.lookahead_every, "lookahead_every")
        if not (0 < config.lookahead_decay_base < 1 and config.lookahead_decay_power >= 0):
            raise ValueError(
                "lookahead_decay_base must be in (0, 1) and lookahead_decay_power >= 0, received "
                f"{config.lookahead_decay_base}, {config.lookahead_decay_power}"
            )
    if config.adv_train:
        from tempscale_tf.adversarial import ADV_LOSSES, ADV_OBJECTIVES

        if config.adv_objective not in ADV_OBJECTIVES:
            raise ValueError(
                f"Unknown adv_objective {config.adv_objective!r}; choose one of "
                f"{ADV_OBJECTIVES}"
            )
        if config.adv_loss not in ADV_LOSSES:
            raise ValueError(f"Unknown adv_loss {config.adv_loss!r}; choose one of {ADV_LOSSES}")
        check_temperature(config.adv_temperature, "adv_temperature")
        check_positive_int(config.adv_steps, "adv_steps")
        for name in ("adv_eps", "adv_step_size", "adv_weight"):
            value = config[name]
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, received {value!r}")


def _data_dir(config):
    return config.data_dir or None


def build_model_from_config(config, strategy=None) -> keras.Model:
    """The model of a training config, with the dataset's normalisation, under `strategy`."""
    info = data_lib.info(config.dataset, _data_dir(config))
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


def effective_hparams(config) -> tuple[float, float]:
    """(learning rate, weight decay) after `scale_lr_with_temperature`."""
    factor = float(config.temperature) if config.scale_lr_with_temperature else 1.0
    return float(config.lr) * factor, float(config.weight_decay) / factor


def _decayed(variable) -> bool:
    """Whether coupled weight decay applies to `variable`.

    Every weight matrix, filter bank or embedding table (rank >= 2) is decayed, whatever the
    layer calls it. Never decayed: scalars and rank-1 variables (biases, normalisation scales
    and offsets), multi-head attention biases (rank 2, named `bias`) and a ViT's class token.
    """
    name = variable.path.rsplit("/", 1)[-1]
    return len(variable.shape) >= 2 and name != "bias" and name != "class_token"


def _make_state(config, workdir, strategy, total_steps, steps_per_epoch) -> TrainState:
    policy = distribute.mixed_policy_name() if config.mixed_precision else None
    previous = keras.config.dtype_policy()
    with strategy.scope():
        if policy:
            keras.config.set_dtype_policy(policy)
        try:
            keras.utils.set_random_seed(int(config.seed))
            model = build_model_from_config(config, strategy)
        finally:
            keras.config.set_dtype_policy(previous)
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
        images, _ = data_lib.load_arrays(config.dataset, config.train_split, _data_dir(config))
        if config.train_subset:
            images = images[data_lib.subset_indices(len(images), config.train_subset)]
        models.DATA_INIT[config.model](model, images)
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


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str, partial=False) -> None:
    """Restore `path` into `checkpoint`, raising `CheckpointError` with the path on any failure.

    With `partial`, objects in the file that `checkpoint` does not track (the optimizer, when
    only the model is wanted) are ignored.
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


def check_resume_config(workdir, config):
    """Refuse to resume `workdir` with settings that would change the run's trajectory.

    Every field of the config is compared with the run's `config.json` except those in
    `_RESUME_MAY_CHANGE` (execution, logging and checkpoint cadence). A field missing from an
    older `config.json` must equal its default.
    """
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        return
    old = read_json(path)
    new = _config_dict(config)
    defaults = _config_dict(default_config())
    # A "mixed_precision: auto" is compared as what it resolves to on this machine.
    for d in (new, defaults):
        d["mixed_precision"] = distribute.resolve_mixed_precision(d["mixed_precision"])[0]
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in _RESUME_MAY_CHANGE:
            continue
        before = old.get(key, defaults.get(key))
        after = new.get(key, defaults.get(key))
        if before != after:
            diffs.append(f"{key}: {before!r} -> {after!r}")
    if diffs:
        raise ValueError(
            f"workdir {workdir} holds a run with different settings ("
            + "; ".join(diffs)
            + "). Resuming would change the run half-way: use a new --workdir, or the run's "
            "original settings (see its config.json)."
        )


def _config_dict(config):
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return _jsonable(d)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


class _Steps:
    """Compiled per-replica train and eval steps for one model/optimizer/strategy."""

    def __init__(self, config, state: TrainState, strategy, global_batch: int):
        self.model, self.optimizer, self.strategy = state.model, state.optimizer, strategy
        self.temperature = check_temperature(config.temperature)
        self.label_smoothing = float(config.label_smoothing)
        self.weight_decay = effective_hparams(config)[1]
        self.global_batch = float(global_batch)
        self.config = config
        replicas = strategy.num_replicas_in_sync
        self.decayed = [_decayed(v) for v in self.model.trainable_variables]
        # Per-layer learning-rate multipliers (models.fast: batch-norm offsets, the head), applied
        # to the data gradient only: with SGD (+ momentum) that scales the data term's step.
        multipliers = models.common.lr_multipliers(self.model)
        self.multipliers = [multipliers.get(id(v), 1.0) for v in self.model.trainable_variables]
        jit = self._jit = distribute.resolve_jit_compile(config.jit_compile)
        # XLA needs its own (nested) tf.function; in plain graph mode the replica step is traced
        # inside the outer function, which also allows synchronised batch norm (a merge_call).
        self._grads = (
            tf.function(self._loss_and_grads, jit_compile=True) if jit else self._loss_and_grads
        )
        self._replicas = float(replicas)
        self.train_step = tf.function(self._distributed_train_step, reduce_retracing=True)
        self.eval_step = tf.function(self._distributed_eval_step, reduce_retracing=True)

    def _craft(self, images, labels):
        """Adversarial images for adversarial training (outside the gradient tape)."""
        from tempscale_tf import adversarial

        c = self.config
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.stack(
            [
                tf.cast(c.seed, tf.int64),
                tf.cast(self.optimizer.iterations, tf.int64) * 1024 + tf.cast(replica, tf.int64),
            ]
        )
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
            seed,
            separate_gradient=not self._jit,
        )

    def _forward_loss(self, images, labels, x_adv=None):
        """Per-example training loss and the logits whose accuracy the step reports."""
        c = self.config
        if x_adv is None:
            logits = self.model(images, training=True)
            per_example = temperature_cross_entropy(
                labels, logits, self.temperature, label_smoothing=self.label_smoothing
            )
            return per_example, logits
        from tempscale_tf import adversarial

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
        variables = self.model.trainable_variables
        x_adv = self._craft(images, labels) if self.config.adv_train else None
        with tf.GradientTape() as tape:
            per_example, logits = self._forward_loss(images, labels, x_adv)
            loss = tf.reduce_sum(per_example) / self.global_batch
            scaled = (
                self.optimizer.scale_loss(loss)
                if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
                else loss
            )
        grads = tape.gradient(scaled, variables)
        grads = [
            g if m == 1.0 else g * tf.cast(m, g.dtype) for g, m in zip(grads, self.multipliers)
        ]
        if self.weight_decay:
            # Gradients are summed over replicas: add 1/replicas of the decay on each. Under loss
            # scaling the gradients are still scaled here (the optimizer unscales them), so the
            # decay is scaled alike.
            wd = self.weight_decay / self._replicas
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                wd = wd * tf.cast(self.optimizer.dynamic_scale, tf.float32)
            grads = [
                g + tf.cast(wd, g.dtype) * tf.cast(v, g.dtype) if d else g
                for g, v, d in zip(grads, variables, self.decayed)
            ]
        correct = tf.reduce_sum(
            tf.cast(
                tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)),
                tf.float32,
            )
        )
        return grads, tf.reduce_sum(per_example), correct

    def _replica_train_step(self, images, labels):
        grads, loss_sum, correct = self._grads(images, labels)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss_sum, correct, tf.cast(tf.shape(labels)[0], tf.float32)

    def _replica_eval_step(self, images, labels):
        logits = self.model(images, training=False)
        per_example = temperature_cross_entropy(labels, logits, self.temperature)
        correct = tf.reduce_sum(
            tf.cast(
                tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)),
                tf.float32,
            )
        )
        return tf.reduce_sum(per_example), correct, tf.cast(tf.shape(labels)[0], tf.float32)

    def _reduce(self, per_replica):
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in per_replica]

    def _distributed_train_step(self, batch):
        return self._reduce(self.strategy.run(self._replica_train_step, args=batch))

    def _distributed_eval_step(self, batch):
        return self._reduce(self.strategy.run(self._replica_eval_step, args=batch))


def evaluate(steps: _Steps, dataset) -> dict:
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


def predict_logits(model, dataset, max_examples=None):
    """Concatenated logits and labels of a (non-distributed) dataset."""
    logits, labels, n = [], [], 0
    for images, y in dataset:
        logits.append(model(images, training=False).numpy())
        labels.append(y.numpy())
        n += len(y)
        if max_examples and n >= max_examples:
            break
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    return (logits[:max_examples], labels[:max_examples]) if max_examples else (logits, labels)


def _write_histograms(writer, model, test_ds, temperature, step, max_examples):
    logits, _ = predict_logits(model, test_ds, max_examples)
    scaled = logits / temperature
    probs = tf.nn.softmax(scaled).numpy()
    with writer.as_default(step=step):
        tf.summary.histogram("logits", logits)
        tf.summary.histogram("logits_over_temperature", scaled)
        tf.summary.histogram("max_softmax_probability", probs.max(axis=-1))


def _eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _set_op_determinism(config):
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


def _resolve_precision(config):
    """A copy of `config` whose `mixed_precision` is resolved to True/False (logged)."""
    use, why = distribute.resolve_mixed_precision(config.mixed_precision)
    # A fresh ConfigDict: a copy whose `mixed_precision` field was typed str ("auto", e.g. after
    # `copy_and_resolve_references`) would refuse a bool.
    config = ml_collections.ConfigDict({**config.to_dict(), "mixed_precision": use})
    logging.info(
        "Precision: %s (%s)",
        distribute.mixed_policy_name() if use else "float32",
        why,
    )
    return config


def train(config, workdir, strategy=None, progress: bool = True, max_steps=None) -> dict:
    """Train (or resume) a run in `workdir` and return its final metrics.

    Args:
      config: a `ConfigDict` with the fields of `default_config()`.
      workdir: output folder; an existing run there is resumed from its latest checkpoint.
      strategy: a `tf.distribute.Strategy`; default from `config.strategy`.
      progress: show a Keras progress bar per epoch (absl logs per epoch either way).
      max_steps: stop after this many optimizer steps in this call, with a checkpoint, as a
        pre-emption would (to split a long run across sessions); rerun to continue.

    Returns:
      The dict written to `workdir/metrics.json`.
    """
    validate_config(config)
    config = _resolve_precision(config)
    workdir = str(workdir)
    strategy = strategy or distribute.make_strategy(config.strategy)
    # In a multi-worker cluster only the chief writes the run's files; the other workers save
    # their (identical) checkpoints to a scratch folder, as tf.distribute requires all to save.
    chief = distribute.is_chief(strategy)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} is a file, not a folder: choose another --workdir")
    os.makedirs(workdir, exist_ok=True)
    check_resume_config(workdir, config)
    if chief:
        atomic_write_json(os.path.join(workdir, "config.json"), _config_dict(config))
    _set_op_determinism(config)

    data_dir = _data_dir(config)
    info = data_lib.info(config.dataset, data_dir)
    train_subset = config.train_subset or None
    n_train = (
        train_subset
        if train_subset
        else len(data_lib.load_arrays(config.dataset, config.train_split, data_dir)[1])
    )
    global_batch = int(config.batch_size)
    if global_batch % strategy.num_replicas_in_sync:
        raise ValueError(
            f"batch_size={global_batch} is not divisible by the "
            f"{strategy.num_replicas_in_sync} replicas"
        )
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={global_batch} exceeds the {n_train} training examples")
    total_steps = steps_per_epoch * config.epochs

    task_type, task_id = distribute.worker_info(strategy)
    scratch = None if chief else os.path.join(workdir, ".workers", f"{task_type}_{task_id}")
    state = _make_state(config, scratch or workdir, strategy, total_steps, steps_per_epoch)
    model_shape = tuple(state.model.input_shape[1:])
    if model_shape != tuple(info.image_shape):
        raise ValueError(
            f"dataset {config.dataset!r} has images of shape {info.image_shape} but "
            f"model {config.model!r} expects {model_shape}"
        )
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if latest:  # every worker resumes from the chief's latest checkpoint
        restore_checkpoint(state.checkpoint, latest)
        logging.info("Resumed from %s at step %d", latest, int(state.optimizer.iterations.numpy()))
    steps = _Steps(config, state, strategy, global_batch)

    history_path = os.path.join(workdir, "history.json")
    global_step = int(state.optimizer.iterations.numpy())
    start_epoch, skip = divmod(global_step, steps_per_epoch)
    history = read_json(history_path) if os.path.exists(history_path) else []
    history = [h for h in history if h["epoch"] < start_epoch]
    if skip == 0:
        for v in state.accumulators.values():
            v.assign(0.0)

    test_ds = data_lib.load(
        config.dataset, config.test_split, data_dir, global_batch, subset=config.test_subset or None
    )
    dist_test = strategy.experimental_distribute_dataset(_shard_by_data(test_ds))
    tb = os.path.join(workdir, "tensorboard")
    if chief:
        train_writer = tf.summary.create_file_writer(os.path.join(tb, "train"))
        test_writer = tf.summary.create_file_writer(os.path.join(tb, "test"))
    else:
        train_writer = test_writer = tf.summary.create_noop_writer()

    logging.info(
        "Training %s on %s at temperature %g: %d epochs x %d steps, global batch %d, "
        "%d replica(s), jit_compile=%s",
        config.model,
        config.dataset,
        config.temperature,
        config.epochs,
        steps_per_epoch,
        global_batch,
        strategy.num_replicas_in_sync,
        distribute.resolve_jit_compile(config.jit_compile),
    )
    run_start = time.time()
    steps_done_here = 0
    acc = state.accumulators
    for epoch in range(start_epoch, config.epochs):
        train_ds = data_lib.load(
            config.dataset,
            config.train_split,
            data_dir,
            global_batch,
            seed=config.seed,
            epoch=epoch,
            skip_batches=skip,
            subset=train_subset,
            drop_remainder=True,
            padding=config.augment_padding,
            pad_mode=config.augment_pad_mode,
            flip=config.augment_flip,
        )
        bar = keras.utils.Progbar(
            steps_per_epoch, stateful_metrics=["loss", "accuracy"], verbose=1 if progress else 0
        )
        epoch_start = time.time()
        pending = []
        dist_train = strategy.experimental_distribute_dataset(_shard_by_data(train_ds))
        for i, batch in enumerate(dist_train, start=skip):
            pending.append(steps.train_step(batch))
            steps_done_here += 1
            step = epoch * steps_per_epoch + i + 1
            if (
                state.lookahead is not None
                and epoch >= config.lookahead_start_epoch
                and step % config.lookahead_every == 0
            ):
                state.lookahead.update(
                    lookahead_decay(
                        step,
                        total_steps,
                        config.lookahead_every,
                        config.lookahead_decay_base,
                        config.lookahead_decay_power,
                    )
                )
            last = i + 1 == steps_per_epoch
            save_now = (
                not last
                and bool(config.checkpoint_every_steps)
                and (step % config.checkpoint_every_steps == 0)
            )
            stop_now = not last and bool(max_steps) and steps_done_here >= max_steps
            if len(pending) >= config.log_every_steps or last or save_now or stop_now:
                values = np.array([[float(t) for t in p] for p in pending])
                _check_finite_losses(values[:, 0], step - len(pending) + 1, workdir, state)
                sums = values.sum(axis=0)
                pending = []
                acc["loss_sum"].assign_add(sums[0])
                acc["correct"].assign_add(sums[1])
                acc["count"].assign_add(sums[2])
                count = max(float(acc["count"]), 1.0)
                bar.update(
                    i + 1,
                    [
                        ("loss", float(acc["loss_sum"]) / count),
                        ("accuracy", float(acc["correct"]) / count),
                    ],
                )
            if save_now or stop_now:
                acc["seconds"].assign_add(time.time() - epoch_start)
                epoch_start = time.time()
                _check_finite_weights(state, step, workdir)
                state.manager.save(checkpoint_number=step)
            if stop_now:
                logging.info("Stopped at step %d (max_steps=%d); rerun to resume.", step, max_steps)
                return {"stopped_at_step": step}
        skip = 0
        if state.lookahead is not None:
            state.lookahead.copy_to_weights()
        acc["seconds"].assign_add(time.time() - epoch_start)
        count = max(float(acc["count"]), 1.0)
        train_metrics = {
            "loss": float(acc["loss_sum"]) / count,
            "accuracy": float(acc["correct"]) / count,
        }
        test_metrics = evaluate(steps, dist_test)
        step = (epoch + 1) * steps_per_epoch
        lr = float(state.schedule(step - 1))
        images_per_sec = count / max(float(acc["seconds"]), 1e-9)
        record = {
            "epoch": epoch,
            "step": step,
            "train/loss": train_metrics["loss"],
            "train/accuracy": train_metrics["accuracy"],
            "test/loss": test_metrics["loss"],
            "test/accuracy": test_metrics["accuracy"],
            "learning_rate": lr,
            "train/images_per_sec": images_per_sec,
            "train/seconds": float(acc["seconds"]),
        }
        with train_writer.as_default(step=step):
            tf.summary.scalar("loss", train_metrics["loss"])
            tf.summary.scalar("accuracy", train_metrics["accuracy"])
            tf.summary.scalar("learning_rate", lr)
            tf.summary.scalar("images_per_sec", images_per_sec)
        with test_writer.as_default(step=step):
            tf.summary.scalar("loss", test_metrics["loss"])
            tf.summary.scalar("accuracy", test_metrics["accuracy"])
        if config.histogram_examples and chief:
            _write_histograms(
                test_writer,
                state.model,
                test_ds,
                config.temperature,
                step,
                config.histogram_examples,
            )
        train_writer.flush()
        test_writer.flush()
        history.append(record)
        if chief:  # the history is written before the checkpoint: see the module docstring
            atomic_write_json(history_path, history)
        for v in acc.values():
            v.assign(0.0)
        _check_finite_weights(state, step, workdir)
        state.manager.save(checkpoint_number=step)
        elapsed = time.time() - run_start
        remaining = (config.epochs - epoch - 1) * steps_per_epoch
        eta = elapsed / max(steps_done_here, 1) * remaining
        logging.info(
            "epoch %d/%d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | "
            "lr %.4g | %.0f img/s | ETA %s",
            epoch + 1,
            config.epochs,
            train_metrics["loss"],
            train_metrics["accuracy"],
            test_metrics["loss"],
            test_metrics["accuracy"],
            lr,
            images_per_sec,
            _eta(eta),
        )
        if max_steps and steps_done_here >= max_steps and epoch + 1 < config.epochs:
            return {"stopped_at_step": step}

    final = history[-1] if history else {}
    metrics = {
        "dataset": config.dataset,
        "model": config.model,
        "temperature": config.temperature,
        "epochs": config.epochs,
        "seed": config.seed,
        "batch_size": global_batch,
        "steps": int(state.optimizer.iterations.numpy()),
        "replicas": strategy.num_replicas_in_sync,
        "train_examples": n_train,
        **{k: v for k, v in final.items() if "/" in k},
        # Wall time of the training steps over all epochs (resumed runs included).
        "train/total_seconds": float(sum(h.get("train/seconds", 0.0) for h in history)),
        "num_parameters": int(state.model.count_params()),
    }
    if not chief:
        shutil.rmtree(scratch, ignore_errors=True)
        return metrics
    if config.export:
        from tempscale_tf.export import export_saved_model

        export_saved_model(state.model, os.path.join(workdir, "export"), config.temperature)
        metrics["export"] = os.path.join(workdir, "export")
    atomic_write_json(os.path.join(workdir, "metrics.json"), metrics)
    return metrics


def _last_checkpoint_note(state, workdir) -> str:
    latest = state.manager.latest_checkpoint
    if latest:
        return f"The last good checkpoint, {latest}, is kept; nothing was exported."
    return f"No checkpoint was written to {workdir}; nothing was exported."


def _check_finite_losses(losses, first_step, workdir, state) -> None:
    """Raise `TrainingDivergedError` naming the first step whose summed loss is not finite."""
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = first_step + int(bad[0])
        raise TrainingDivergedError(
            f"the training loss is {losses[bad[0]]} at step {step}: training diverged "
            "(learning rate too high?) or the data hold non-finite values. "
            + _last_checkpoint_note(state, workdir)
        )


def _check_finite_weights(state, step, workdir) -> None:
    """Refuse to checkpoint weights that hold NaN or infinity (e.g. from an infinite gradient
    whose loss was still finite)."""
    for v in state.model.trainable_variables:
        if not np.all(np.isfinite(np.asarray(v.numpy(), dtype=np.float32))):
            raise TrainingDivergedError(
                f"weight {v.path} is not finite after step {step}: training diverged. "
                + _last_checkpoint_note(state, workdir)
            )


def _shard_by_data(dataset):
    """Multi-worker input: every worker builds the same pipeline and keeps its share of each
    global batch (DATA sharding), so a step sees exactly the single-process global batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def load_run(workdir, checkpoint=None):
    """Rebuild the model of a finished (or running) training run from its workdir.

    Returns:
      (model, config): the Keras model with the latest (or the given) checkpoint's weights, and
      the run's `ConfigDict`.
    """
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a tempscale_tf workdir?")
    config = default_config()
    config.unlock()
    saved = read_json(config_path)
    for key, value in saved.items():
        if key == "model_kwargs":
            config.model_kwargs = ml_collections.ConfigDict(value)
        elif key in config:
            config[key] = tuple(value) if isinstance(config[key], tuple) else value
    strategy = tf.distribute.get_strategy()
    model = build_model_from_config(config, strategy)
    path = checkpoint or tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    restore_checkpoint(tf.train.Checkpoint(model=model), path, partial=True)
    return model, config
