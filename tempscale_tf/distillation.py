"""Knowledge distillation with a softmax temperature (Hinton, Vinyals & Dean, 2015).

Convention (as everywhere in this library): the temperature T *divides* the logits. The loss is

    L = alpha * CE(softmax(z_s), y) + (1 - alpha) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

with student logits z_s and teacher logits z_t. The KL divergence goes from the teacher's
(target) distribution to the student's: `sum_k p_t,k (log p_t,k - log p_s,k)`, i.e. the
cross-entropy of the student against the teacher's soft targets minus the (constant) teacher
entropy. Its gradient w.r.t. the student logits is `(softmax(z_s / T) - softmax(z_t / T)) / T`,
of order `1 / T^2` for large T (the soft targets flatten towards uniform as `1 / T`); the `T^2`
factor keeps the soft term's gradient scale independent of T, so `alpha` means the same thing
at every temperature. The hard term is at T = 1. The teacher gets no gradient.

  - `distillation_loss(...)`: the loss above (per example or reduced), float32.
  - `Distiller(student, teacher, temperature, alpha)`: a `keras.Model` whose `train_step` /
    `test_step` implement it, so `fit()`, callbacks and progress bars work as usual.
  - `run_distillation(config, workdir)`: the digits experiment of `launch/distill.py`.

Note: the teacher's logits are used as they are. A teacher trained at temperature T_train
produces logits about T_train times larger than one trained at 1, so its distillation
temperature is relative to that scale.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

from tempscale_tf.losses import reduce_per_example, temperature_cross_entropy
from tempscale_tf.validation import check_positive_int, check_temperature

__all__ = ["Distiller", "distillation_loss", "distillation_terms", "run_distillation"]


def _check_alpha(alpha) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"`alpha` must be a number in [0, 1], received {alpha!r}") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(
            f"`alpha` (the weight of the hard-label loss) must be in [0, 1], received {alpha!r}"
        )
    return value


def distillation_terms(student_logits, teacher_logits, labels, temperature):
    """Per-example `(hard, soft)` float32 terms of the distillation loss.

    hard = `CE(softmax(student_logits), labels)` (None when `labels` is None);
    soft = `T^2 * KL(softmax(teacher_logits / T) || softmax(student_logits / T))`, with the
    teacher logits behind `tf.stop_gradient`.

    Args:
      student_logits: `[batch, K]`.
      teacher_logits: `[batch, K]`.
      labels: int `[batch]`, or None (no hard term).
      temperature: T of the soft term.
    """
    t = check_temperature(temperature)
    student = tf.cast(tf.convert_to_tensor(student_logits), tf.float32)
    teacher = tf.stop_gradient(tf.cast(tf.convert_to_tensor(teacher_logits), tf.float32))
    if student.shape.rank != 2:
        raise ValueError(
            f"student logits must have shape [batch, num_classes], received {student.shape}"
        )
    if not student.shape.is_compatible_with(teacher.shape):
        raise ValueError(
            f"student logits {student.shape} and teacher logits {teacher.shape} must have the "
            "same shape [batch, num_classes]"
        )
    log_p_student = tf.nn.log_softmax(student / t, axis=-1)
    log_p_teacher = tf.nn.log_softmax(teacher / t, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    soft = (t * t) * kl
    hard = None if labels is None else temperature_cross_entropy(labels, student, 1.0)
    return hard, soft


def distillation_loss(
    student_logits, teacher_logits, labels, temperature, alpha, reduction: str | None = None
):
    """`alpha * CE(student, y) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))`.

    Args:
      student_logits: `[batch, num_classes]` logits of the model being trained.
      teacher_logits: `[batch, num_classes]` logits of the (frozen) teacher; no gradient flows
        into them.
      labels: integer class ids `[batch]` or one-hot `[batch, num_classes]`; may be None when
        `alpha == 0`.
      temperature: T > 0; divides both students' and teacher's logits in the soft term.
      alpha: weight in [0, 1] of the hard-label cross-entropy (at T = 1).
      reduction: None (per-example `[batch]`, the default as for `temperature_cross_entropy`),
        "mean" or "sum".

    Returns:
      float32 per-example losses, or their mean/sum.
    """
    alpha = _check_alpha(alpha)
    if labels is None and alpha > 0:
        raise ValueError("`labels` are needed when alpha > 0 (the hard-label term)")
    hard, soft = distillation_terms(student_logits, teacher_logits, labels, temperature)
    per_example = (1.0 - alpha) * soft if hard is None else alpha * hard + (1.0 - alpha) * soft
    return reduce_per_example(per_example, reduction)


def _weighted_mean(per_example, sample_weight):
    """Keras' "sum_over_batch_size": `sum(w * l) / batch` (plain mean without weights)."""
    if sample_weight is None:
        return tf.reduce_mean(per_example)
    w = tf.reshape(tf.cast(sample_weight, per_example.dtype), tf.shape(per_example))
    return tf.reduce_sum(per_example * w) / tf.cast(tf.size(per_example), per_example.dtype)


class Distiller(keras.Model):
    """Trains `student` to match a frozen `teacher` with `distillation_loss` (TF backend).

    `train_step` runs the teacher in inference mode (`training=False`: batch-norm statistics and
    dropout frozen), the student in training mode, and updates only the student's trainable
    variables; `teacher.trainable` is set to False. `call` (and so `predict`) returns the
    student's logits. The tracked metrics are `loss` (the distillation loss, plus the student's
    regularisation losses), `student_loss` (hard-label CE) and `distillation_loss` (the soft
    term `T^2 KL`), plus any `metrics` given to `compile` (computed on the student's logits,
    e.g. `keras.metrics.SparseCategoricalAccuracy()`). Save `distiller.student` for later use;
    the Distiller itself is a training wrapper.

    Args:
      student: a Keras model mapping inputs to logits.
      teacher: a Keras model mapping the same inputs to logits of the same shape, or None for
        the no-teacher baseline (then `alpha` must be 1: plain cross-entropy).
      temperature: distillation temperature T > 0 (divides both models' logits).
      alpha: weight of the hard-label cross-entropy, in [0, 1].

    Example:
      >>> distiller = Distiller(student, teacher, temperature=4.0, alpha=0.1)
      >>> distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9), metrics=["accuracy"])
      >>> distiller.fit(train_ds, epochs=10, validation_data=test_ds)
    """

    def __init__(self, student, teacher=None, temperature=4.0, alpha=0.1, **kwargs):
        super().__init__(**kwargs)
        self.temperature = check_temperature(temperature)
        self.alpha = _check_alpha(alpha)
        if teacher is None and self.alpha != 1.0:
            raise ValueError("without a teacher, alpha must be 1 (plain cross-entropy)")
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compile(self, optimizer="sgd", metrics=None, **kwargs):
        if kwargs.get("loss") is not None:
            raise ValueError("Distiller computes its own loss: do not pass `loss` to compile()")
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def _compute_distillation(self, x, y, sample_weight, training):
        student_logits = self.student(x, training=training)
        if self.teacher is not None:
            teacher_logits = self.teacher(x, training=False)
        else:
            teacher_logits = tf.stop_gradient(student_logits)  # soft term has weight 0
        if y is None and self.alpha > 0:
            raise ValueError("Distiller with alpha > 0 needs labels: fit on (x, y) data")
        hard, soft = distillation_terms(student_logits, teacher_logits, y, self.temperature)
        hard = _weighted_mean(tf.zeros_like(soft) if hard is None else hard, sample_weight)
        soft = _weighted_mean(soft, sample_weight)
        loss = self.alpha * hard + (1.0 - self.alpha) * soft
        if self.student.losses:  # regularisation losses of the student (kernel_regularizer ...)
            loss = loss + tf.add_n([tf.cast(r, tf.float32) for r in self.student.losses])
        return student_logits, loss, hard, soft

    def _update_trackers(self, x, loss, hard, soft):
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        self.loss_tracker.update_state(loss, sample_weight=batch)
        self.student_loss_tracker.update_state(hard, sample_weight=batch)
        self.distillation_loss_tracker.update_state(soft, sample_weight=batch)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.student.trainable_variables
        with tf.GradientTape() as tape:
            student_logits, loss, hard, soft = self._compute_distillation(
                x, y, sample_weight, training=True
            )
            # Gradients are summed over replicas: each replica contributes 1/replicas.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        self._update_trackers(x, loss, hard, soft)
        return self.compute_metrics(x, y, student_logits, sample_weight=sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        student_logits, loss, hard, soft = self._compute_distillation(
            x, y, sample_weight, training=False
        )
        self._update_trackers(x, loss, hard, soft)
        return self.compute_metrics(x, y, student_logits, sample_weight=sample_weight)


# --------------------------------------------------------------------------- the experiment


def training_dataset(
    name, split, batch_size, seed=0, data_dir=None, subset=None, augment=True
) -> tf.data.Dataset:
    """A training `tf.data.Dataset` for `keras.Model.fit`: reshuffled and re-augmented each epoch.

    Same images, subset sample and augmentation (`tempscale_tf.data.augment_batch`) as
    `tempscale_tf.data.load`, but every iteration over the dataset (every `fit` epoch) draws a
    new order and new augmentations from `seed`, so one dataset serves all epochs.

    Args:
      name: the dataset name.
      split: the training split.
      batch_size: examples per batch.
      seed: the seed of the order and the augmentations.
      data_dir: where the dataset files are.
      subset: keep the fixed seeded sample of this many examples (None: all).
      augment: random crops and flips.
    """
    from tempscale_tf import data as data_lib
    from tempscale_tf.data import pipeline

    batch_size = check_positive_int(batch_size, "batch_size")
    info = data_lib.info(name, data_dir)
    images, labels = data_lib.load_arrays(name, split, data_dir)
    if subset:
        subset = check_positive_int(subset, "subset")
        if subset > len(labels):
            raise ValueError(f"subset={subset} is larger than split {split!r} ({len(labels)})")
        keep = data_lib.subset_indices(len(labels), subset)
        images, labels = images[keep], labels[keep]
    n = len(labels)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples")
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    images_t, labels_t = tf.constant(images), tf.constant(labels.astype(np.int32))
    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    order = order.batch(batch_size, drop_remainder=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    @tf.autograph.experimental.do_not_convert  # no source read when traced
    def make_batch(idx, batch_seed):
        x = tf.cast(tf.gather(images_t, idx), tf.float32) * scale
        if augment:
            x = data_lib.augment_batch(x, batch_seed, info.crop_padding, info.flip)
        return x, tf.gather(labels_t, idx)

    ds = tf.data.Dataset.zip((order, seeds)).map(
        make_batch, num_parallel_calls=pipeline.MAP_PARALLELISM
    )
    return pipeline.finalize(ds)


def _student_config(config):
    from tempscale_tf import training

    c = training.default_config()
    c.dataset, c.data_dir = config.dataset, config.data_dir
    c.model = config.student_model
    c.model_kwargs = config.student_model_kwargs
    return c


def _load_teacher(config, workdir, progress):
    from tempscale_tf import training

    teacher_dir = config.teacher_workdir or os.path.join(workdir, "teacher")
    if config.teacher_workdir and not os.path.exists(os.path.join(teacher_dir, "config.json")):
        raise FileNotFoundError(f"teacher_workdir {teacher_dir} is not a training run")
    if not os.path.exists(os.path.join(teacher_dir, "metrics.json")):
        training.train(config.teacher, teacher_dir, progress=progress)
    teacher, teacher_config = training.load_run(teacher_dir)
    return teacher, teacher_config, teacher_dir


def train_student(
    config, teacher, temperature, alpha, seed, test_ds, train_ds=None, progress=False
) -> dict:
    """Train one student of `config` with a `Distiller` and return its test metrics.

    Args:
      config: the distillation config (`configs/distill_digits.py`).
      teacher: the trained teacher model.
      temperature: T of the soft term.
      alpha: weight of the hard-label CE in [0, 1] (1: the no-teacher baseline).
      seed: the student's initialisation and data-order seed.
      test_ds: the test dataset.
      train_ds: the training dataset (default `training_dataset(...)` from the config).
      progress: show Keras progress bars.
    """
    import time

    from tempscale_tf import calibration, distribute, training

    keras.utils.set_random_seed(int(seed))
    student = training.build_model_from_config(_student_config(config))
    train_ds = train_ds or training_dataset(
        config.dataset,
        config.train_split,
        config.batch_size,
        seed=int(seed),
        data_dir=config.data_dir or None,
        subset=config.train_subset or None,
        augment=config.augment,
    )
    steps = int(train_ds.cardinality()) * config.epochs
    schedule = keras.optimizers.schedules.CosineDecay(config.lr, max(steps, 1))
    optimizer = keras.optimizers.SGD(
        schedule, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    distiller = Distiller(student, teacher if alpha < 1 else None, temperature, alpha)
    distiller.compile(
        optimizer,
        metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
        # XLA is slower than plain graph mode for these small CPU models: on for GPUs only.
        jit_compile=distribute.resolve_jit_compile(config.get("jit_compile")),
    )
    start = time.time()
    history = distiller.fit(train_ds, epochs=config.epochs, verbose=1 if progress else 0)
    seconds = time.time() - start
    logits, labels = training.predict_logits(student, test_ds)
    metrics = calibration.calibration_metrics(logits, labels)
    row = {
        "temperature": float(temperature) if alpha < 1 else float("nan"),
        "alpha": float(alpha),
        "seed": int(seed),
        "test_accuracy": metrics["accuracy"],
        "test_nll": metrics["nll"],
        "test_ece": metrics["ece"],
        "train_loss": float(history.history["loss"][-1]),
        "train_accuracy": float(history.history["accuracy"][-1]),
        "seconds": seconds,
    }
    if teacher is not None:
        teacher_pred = np.concatenate(
            [np.argmax(teacher(x, training=False).numpy(), axis=1) for x, _ in test_ds]
        )
        row["agreement_with_teacher"] = float(np.mean(np.argmax(logits, 1) == teacher_pred))
    return row


def run_distillation(config, workdir, progress: bool = False) -> dict:
    """The distillation sweep of `launch/distill.py` (see `configs/distill_digits.py`).

    Trains (or loads, from `config.teacher_workdir` or `<workdir>/teacher` when finished) the
    teacher, then for each seed a no-teacher baseline student (alpha = 1, plain CE) and one
    student per (temperature, alpha) in `config.temperatures x config.alphas`, all from the
    same initialisation per seed. Writes `<workdir>/results.json` and returns
    `{"teacher": {...}, "rows": [...]}`.

    Args:
      config: the distillation config.
      workdir: where the teacher (unless `teacher_workdir`) and `results.json` go.
      progress: show progress bars.
    """
    from tempscale_tf import calibration, training
    from tempscale_tf import data as data_lib
    from tempscale_tf.files import atomic_write_json

    for t in config.temperatures:
        check_temperature(t, "temperatures")
    for a in config.alphas:
        _check_alpha(a)
    check_positive_int(config.epochs, "epochs")
    os.makedirs(workdir, exist_ok=True)
    teacher, teacher_config, teacher_dir = _load_teacher(config, workdir, progress)
    if teacher_config.dataset != config.dataset:
        raise ValueError(
            f"the teacher was trained on {teacher_config.dataset!r}, not {config.dataset!r}"
        )
    test_ds = data_lib.load(
        config.dataset,
        config.test_split,
        config.data_dir or None,
        256,
        shuffle=False,
        augment=False,
        drop_remainder=False,
    )
    logits, labels = training.predict_logits(teacher, test_ds)
    teacher_metrics = calibration.calibration_metrics(logits, labels)
    results = {
        "teacher": {
            "workdir": teacher_dir,
            "model": teacher_config.model,
            "model_kwargs": teacher_config.model_kwargs.to_dict(),
            "trained_temperature": teacher_config.temperature,
            "num_parameters": int(teacher.count_params()),
            "test_accuracy": teacher_metrics["accuracy"],
            "test_nll": teacher_metrics["nll"],
        },
        "rows": [],
    }
    runs = [(None, 1.0)] + [(t, a) for t in config.temperatures for a in config.alphas]
    for seed in config.seeds:
        for temperature, alpha in runs:
            row = train_student(
                config, teacher, temperature or 1.0, alpha, seed, test_ds, progress=progress
            )
            row["student"] = "baseline (no teacher)" if temperature is None else "distilled"
            results["rows"].append(row)
            atomic_write_json(os.path.join(workdir, "results.json"), results)
    return results
