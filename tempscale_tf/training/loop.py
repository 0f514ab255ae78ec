"""The training loop: `train(config, workdir)`.

`train` reads as the outline of a run: prepare the workdir, build (or resume) the state, then
for each epoch run its steps (`_train_epoch`: accumulators, progress bar, lookahead, mid-epoch
checkpoints, `max_steps` pre-emption) and close it (`_end_epoch`: metrics, summaries, history,
checkpoint); at the end, the final metrics and the export. What the workdir holds is described
in the package docstring (`tempscale_tf.training`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tempscale_tf import data as data_lib
from tempscale_tf import distribute, machine
from tempscale_tf.errors import TrainingDivergedError
from tempscale_tf.files import atomic_write_json, read_json
from tempscale_tf.lookahead import lookahead_decay
from tempscale_tf.training.config import (
    check_resume_config,
    config_dict,
    resolve_precision,
    resolved_data_dir,
    validate_config,
)
from tempscale_tf.training.export import export_run, predict_logits
from tempscale_tf.training.state import TrainState, make_state, restore_checkpoint
from tempscale_tf.training.step import TrainSteps, evaluate, set_op_determinism, shard_by_data


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
      The dict written to `workdir/metrics.json`, or `{"stopped_at_step": step}` when
      `max_steps` stopped the run.
    """
    validate_config(config)
    config = resolve_precision(config)
    workdir = str(workdir)
    strategy = strategy or distribute.make_strategy(config.strategy)
    # In a multi-worker cluster only the chief writes the run's files; the other workers save
    # their (identical) checkpoints to a scratch folder, as tf.distribute requires all to save.
    chief = distribute.is_chief(strategy)
    _prepare_workdir(config, workdir, chief)
    set_op_determinism(config)
    plan = _plan(config, strategy)
    state, scratch = _build_state(config, workdir, strategy, chief, plan)
    steps = TrainSteps(config, state, strategy, plan.global_batch)
    start_epoch, skip = divmod(int(state.optimizer.iterations.numpy()), plan.steps_per_epoch)
    history = _load_history(workdir, start_epoch)
    if skip == 0:
        _reset(state.accumulators)
    run = _Run(config, workdir, strategy, chief, scratch, plan, state, steps, history)
    run.test_ds, run.dist_test = _test_data(config, strategy, plan.global_batch)
    run.writers = _summary_writers(workdir, chief)
    run.progress, run.max_steps = progress, max_steps
    _log_start(run)
    run.run_start = time.time()
    for epoch in range(start_epoch, config.epochs):
        stopped_at = _train_epoch(run, epoch, skip)
        if stopped_at is not None:
            return {"stopped_at_step": stopped_at}
        skip = 0
        step = _end_epoch(run, epoch)
        if max_steps and run.steps_done_here >= max_steps and epoch + 1 < config.epochs:
            return {"stopped_at_step": step}
    return _finish(run)


# ----------------------------------------------------------------------------------- the run


@dataclasses.dataclass
class _Plan:
    """The run's sizes, fixed by its config and data."""

    image_shape: tuple
    n_train: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int


@dataclasses.dataclass
class _Run:
    """What the epoch loop of one `train` call reads and updates."""

    config: object
    workdir: str
    strategy: tf.distribute.Strategy
    chief: bool
    scratch: str | None  # a non-chief worker's checkpoint folder (None on the chief)
    plan: _Plan
    state: TrainState
    steps: TrainSteps
    history: list  # one record per finished epoch
    test_ds: object = None
    dist_test: object = None
    writers: tuple = ()  # (train, test) summary writers
    progress: bool = True
    max_steps: int | None = None
    steps_done_here: int = 0  # optimizer steps taken by this call (not by a resumed run)
    run_start: float = 0.0

    @property
    def history_path(self) -> str:
        return os.path.join(self.workdir, "history.json")


def _prepare_workdir(config, workdir, chief) -> None:
    """Create `workdir`, refuse to resume it with other settings, record `config.json`."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} is a file, not a folder: choose another --workdir")
    os.makedirs(workdir, exist_ok=True)
    check_resume_config(workdir, config)
    if chief:
        atomic_write_json(os.path.join(workdir, "config.json"), config_dict(config))


def _plan(config, strategy) -> _Plan:
    """The dataset's image shape, the training examples, the global batch and the steps."""
    data_dir = resolved_data_dir(config)
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
    return _Plan(info.image_shape, n_train, global_batch, steps_per_epoch, total_steps)


def _build_state(config, workdir, strategy, chief, plan) -> tuple[TrainState, str | None]:
    """The run's state, restored from the latest checkpoint in `workdir` if there is one, and
    the scratch folder of a non-chief worker (None on the chief)."""
    task_type, task_id = distribute.worker_info(strategy)
    scratch = None if chief else os.path.join(workdir, ".workers", f"{task_type}_{task_id}")
    state = make_state(config, scratch or workdir, strategy, plan.total_steps, plan.steps_per_epoch)
    model_shape = tuple(state.model.input_shape[1:])
    if model_shape != tuple(plan.image_shape):
        raise ValueError(
            f"dataset {config.dataset!r} has images of shape {plan.image_shape} but "
            f"model {config.model!r} expects {model_shape}"
        )
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if latest:  # every worker resumes from the chief's latest checkpoint
        restore_checkpoint(state.checkpoint, latest)
        logging.info("Resumed from %s at step %d", latest, int(state.optimizer.iterations.numpy()))
    return state, scratch


def _load_history(workdir, start_epoch) -> list:
    """The records of the epochs before `start_epoch` (a later one, written before a crash
    that came before its checkpoint, is dropped: the epoch is trained again)."""
    path = os.path.join(workdir, "history.json")
    history = read_json(path) if os.path.exists(path) else []
    return [h for h in history if h["epoch"] < start_epoch]


def _test_data(config, strategy, global_batch):
    """The test split (subset) in global batches: (dataset, the same distributed)."""
    test_ds = data_lib.load(
        config.dataset,
        config.test_split,
        resolved_data_dir(config),
        global_batch,
        subset=config.test_subset or None,
    )
    return test_ds, distribute.distribute_dataset(strategy, shard_by_data(test_ds))


def _summary_writers(workdir, chief) -> tuple:
    """TensorBoard writers for `tensorboard/train` and `tensorboard/test` (no-ops off the chief)."""
    if not chief:
        noop = tf.summary.create_noop_writer()
        return noop, noop
    tb = os.path.join(workdir, "tensorboard")
    return (
        tf.summary.create_file_writer(os.path.join(tb, "train")),
        tf.summary.create_file_writer(os.path.join(tb, "test")),
    )


def _log_start(run) -> None:
    config, plan = run.config, run.plan
    logging.info(
        "Training %s on %s at temperature %g: %d epochs x %d steps, global batch %d, "
        "%d replica(s), jit_compile=%s",
        config.model,
        config.dataset,
        config.temperature,
        config.epochs,
        plan.steps_per_epoch,
        plan.global_batch,
        run.strategy.num_replicas_in_sync,
        distribute.resolve_jit_compile(config.jit_compile),
    )


# --------------------------------------------------------------------------------- an epoch


def _train_epoch(run, epoch, skip) -> int | None:
    """The steps of `epoch` from its batch `skip` (a resumed run skips what it did).

    Losses are fetched every `log_every_steps` steps into the epoch accumulators (and checked);
    a checkpoint is saved every `checkpoint_every_steps`. Returns the step at which `max_steps`
    stopped the run (with a checkpoint), else None.
    """
    config, state, plan = run.config, run.state, run.plan
    train_ds = _train_data(config, epoch, skip, plan.global_batch)
    bar = keras.utils.Progbar(
        plan.steps_per_epoch,
        stateful_metrics=["loss", "accuracy"],
        verbose=1 if run.progress else 0,
    )
    epoch_start = time.time()
    pending = []
    dist_train = distribute.distribute_dataset(run.strategy, shard_by_data(train_ds))
    for i, batch in enumerate(dist_train, start=skip):
        pending.append(run.steps.train_step(batch))
        run.steps_done_here += 1
        step = epoch * plan.steps_per_epoch + i + 1
        _maybe_update_lookahead(run, epoch, step)
        last = i + 1 == plan.steps_per_epoch
        save_now = (
            not last
            and bool(config.checkpoint_every_steps)
            and (step % config.checkpoint_every_steps == 0)
        )
        stop_now = not last and bool(run.max_steps) and run.steps_done_here >= run.max_steps
        if len(pending) >= config.log_every_steps or last or save_now or stop_now:
            _accumulate(run, pending, step)
            pending = []
            _, averages = _epoch_averages(state.accumulators)
            bar.update(i + 1, [("loss", averages["loss"]), ("accuracy", averages["accuracy"])])
        if save_now or stop_now:
            state.accumulators["seconds"].assign_add(time.time() - epoch_start)
            epoch_start = time.time()
            _save_checkpoint(run, step)
        if stop_now:
            logging.info("Stopped at step %d (max_steps=%d); rerun to resume.", step, run.max_steps)
            return step
    if state.lookahead is not None:
        state.lookahead.copy_to_weights()
    state.accumulators["seconds"].assign_add(time.time() - epoch_start)
    return None


def _train_data(config, epoch, skip, global_batch):
    """The augmented training batches of `epoch` from batch `skip` (a function of the seed,
    the epoch and the batch index, so a resumed run sees the same batches)."""
    return data_lib.load(
        config.dataset,
        config.train_split,
        resolved_data_dir(config),
        global_batch,
        seed=config.seed,
        epoch=epoch,
        skip_batches=skip,
        subset=config.train_subset or None,
        drop_remainder=True,
        padding=config.augment_padding,
        pad_mode=config.augment_pad_mode,
        flip=config.augment_flip,
    )


def _maybe_update_lookahead(run, epoch, step) -> None:
    """Every `lookahead_every` steps from `lookahead_start_epoch`: the lookahead/EMA update."""
    c, lookahead = run.config, run.state.lookahead
    if lookahead is None or epoch < c.lookahead_start_epoch or step % c.lookahead_every != 0:
        return
    lookahead.update(
        lookahead_decay(
            step,
            run.plan.total_steps,
            c.lookahead_every,
            c.lookahead_decay_base,
            c.lookahead_decay_power,
        )
    )


def _accumulate(run, pending, step) -> None:
    """Add the fetched (loss sum, correct, count) of the `pending` steps, which end at `step`,
    to the epoch accumulators, after checking that every loss is finite."""
    values = np.array([[float(t) for t in p] for p in pending])
    check_finite_losses(values[:, 0], step - len(pending) + 1, run.workdir, run.state)
    sums = values.sum(axis=0)
    acc = run.state.accumulators
    acc["loss_sum"].assign_add(sums[0])
    acc["correct"].assign_add(sums[1])
    acc["count"].assign_add(sums[2])


def _epoch_averages(accumulators) -> tuple[float, dict]:
    """(examples so far, at least 1; their mean loss and accuracy)."""
    count = max(float(accumulators["count"]), 1.0)
    return count, {
        "loss": float(accumulators["loss_sum"]) / count,
        "accuracy": float(accumulators["correct"]) / count,
    }


def _reset(accumulators) -> None:
    for v in accumulators.values():
        v.assign(0.0)


def _save_checkpoint(run, step) -> None:
    _check_finite_weights(run.state, step, run.workdir)
    run.state.manager.save(checkpoint_number=step)


def _end_epoch(run, epoch) -> int:
    """Metrics, summaries, history and checkpoint at the end of `epoch`; returns its last step."""
    record = _epoch_record(run, epoch)
    _write_summaries(run, record)
    run.history.append(record)
    # The history is written before the checkpoint: a run killed between the two trains the
    # epoch again and `_load_history` drops its record; the other order would lose the record.
    if run.chief:
        atomic_write_json(run.history_path, run.history)
    _reset(run.state.accumulators)
    _save_checkpoint(run, record["step"])
    _log_epoch(run, epoch, record)
    return record["step"]


def _epoch_record(run, epoch) -> dict:
    """The epoch's `history.json` record: train metrics from the accumulators, test metrics."""
    acc = run.state.accumulators
    count, train_metrics = _epoch_averages(acc)
    test_metrics = evaluate(run.steps, run.dist_test)
    step = (epoch + 1) * run.plan.steps_per_epoch
    return {
        "epoch": epoch,
        "step": step,
        "train/loss": train_metrics["loss"],
        "train/accuracy": train_metrics["accuracy"],
        "test/loss": test_metrics["loss"],
        "test/accuracy": test_metrics["accuracy"],
        "learning_rate": float(run.state.schedule(step - 1)),
        "train/images_per_sec": count / max(float(acc["seconds"]), 1e-9),
        "train/seconds": float(acc["seconds"]),
    }


def _write_summaries(run, record) -> None:
    """The epoch's scalars to TensorBoard and, on the chief, the test-logit histograms."""
    train_writer, test_writer = run.writers
    step = record["step"]
    with train_writer.as_default(step=step):
        tf.summary.scalar("loss", record["train/loss"])
        tf.summary.scalar("accuracy", record["train/accuracy"])
        tf.summary.scalar("learning_rate", record["learning_rate"])
        tf.summary.scalar("images_per_sec", record["train/images_per_sec"])
    with test_writer.as_default(step=step):
        tf.summary.scalar("loss", record["test/loss"])
        tf.summary.scalar("accuracy", record["test/accuracy"])
    config = run.config
    if config.histogram_examples and run.chief:
        _write_histograms(
            test_writer,
            run.state.model,
            run.test_ds,
            config.temperature,
            step,
            config.histogram_examples,
        )
    train_writer.flush()
    test_writer.flush()


def _write_histograms(writer, model, test_ds, temperature, step, max_examples):
    logits, _ = predict_logits(model, test_ds, max_examples)
    scaled = logits / temperature
    probs = tf.nn.softmax(scaled).numpy()
    with writer.as_default(step=step):
        tf.summary.histogram("logits", logits)
        tf.summary.histogram("logits_over_temperature", scaled)
        tf.summary.histogram("max_softmax_probability", probs.max(axis=-1))


def _log_epoch(run, epoch, record) -> None:
    elapsed = time.time() - run.run_start
    remaining = (run.config.epochs - epoch - 1) * run.plan.steps_per_epoch
    eta = elapsed / max(run.steps_done_here, 1) * remaining
    logging.info(
        "epoch %d/%d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | "
        "lr %.4g | %.0f img/s | ETA %s",
        epoch + 1,
        run.config.epochs,
        record["train/loss"],
        record["train/accuracy"],
        record["test/loss"],
        record["test/accuracy"],
        record["learning_rate"],
        record["train/images_per_sec"],
        _eta(eta),
    )


def _eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ------------------------------------------------------------------------------- the end


def _finish(run) -> dict:
    """The final metrics; on the chief also the export and `metrics.json`, elsewhere the
    scratch checkpoints are removed."""
    metrics = _final_metrics(run)
    if not run.chief:
        shutil.rmtree(run.scratch, ignore_errors=True)
        return metrics
    if run.config.export:
        metrics["export"] = export_run(run.state.model, run.workdir, run.config.temperature)
    atomic_write_json(os.path.join(run.workdir, "metrics.json"), metrics)
    return metrics


def _final_metrics(run) -> dict:
    config, history = run.config, run.history
    final = history[-1] if history else {}
    return {
        "dataset": config.dataset,
        "model": config.model,
        "temperature": config.temperature,
        "epochs": config.epochs,
        "seed": config.seed,
        "batch_size": run.plan.global_batch,
        "steps": int(run.state.optimizer.iterations.numpy()),
        "replicas": run.strategy.num_replicas_in_sync,
        "train_examples": run.plan.n_train,
        **{k: v for k, v in final.items() if "/" in k},
        # Wall time of the training steps over all epochs (resumed runs included).
        "train/total_seconds": float(sum(h.get("train/seconds", 0.0) for h in history)),
        "num_parameters": int(run.state.model.count_params()),
        "precision": distribute.mixed_policy_name() if config.mixed_precision else "float32",
        "machine": machine.machine_description(),
    }


# ------------------------------------------------------------------------- divergence checks


def _last_checkpoint_note(state, workdir) -> str:
    latest = state.manager.latest_checkpoint
    if latest:
        return f"The last good checkpoint, {latest}, is kept; nothing was exported."
    return f"No checkpoint was written to {workdir}; nothing was exported."


def check_finite_losses(losses, first_step, workdir, state) -> None:
    """Raise `TrainingDivergedError` naming the first step whose summed loss is not finite.

    Args:
      losses: the summed loss of consecutive steps (a 1-D array).
      first_step: the step number of `losses[0]`.
      workdir: the run's folder (named in the error when no checkpoint was written).
      state: the run's `TrainState` (its manager names the last good checkpoint).
    """
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
