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

Modules, in the order a run uses them:

  - `config`: `default_config` (every setting), `validate_config`, `check_resume_config` (what
    may change when a run resumes: `_RESUME_MAY_CHANGE`), `effective_hparams`,
    `resolve_precision`, `config_dict` (the `config.json` form);
  - `state`: `TrainState` and `make_state` (model, optimizer and schedule, checkpoint manager,
    epoch accumulators, lookahead), `build_model_from_config`, `restore_checkpoint`,
    `is_decayed` (which weights get weight decay);
  - `step`: `TrainSteps`, the compiled train/eval steps (adversarial crafting, loss scaling,
    learning-rate multipliers, weight decay, the sum over replicas), `evaluate`, and
    `make_train_step`, the loop's own step outside the loop (for benchmarks and tests);
  - `loop`: `train`, the epoch loop with its checkpoints, summaries, history and divergence
    checks;
  - `export`: `export_run` (SavedModel + `model.keras`), `load_run`, `predict_logits`.

Every name below is importable from `tempscale_tf.training` directly.
"""

from tempscale_tf.errors import CheckpointError, TrainingDivergedError
from tempscale_tf.training.config import (
    check_resume_config,
    config_dict,
    default_config,
    effective_hparams,
    validate_config,
)
from tempscale_tf.training.export import load_run, predict_logits
from tempscale_tf.training.loop import train
from tempscale_tf.training.state import (
    TrainState,
    build_model_from_config,
    is_decayed,
    make_state,
    restore_checkpoint,
)
from tempscale_tf.training.step import LoopStep, TrainSteps, make_train_step

__all__ = [
    "CheckpointError",
    "LoopStep",
    "TrainState",
    "TrainSteps",
    "TrainingDivergedError",
    "build_model_from_config",
    "check_resume_config",
    "config_dict",
    "default_config",
    "effective_hparams",
    "is_decayed",
    "load_run",
    "make_state",
    "make_train_step",
    "predict_logits",
    "restore_checkpoint",
    "train",
    "validate_config",
]
