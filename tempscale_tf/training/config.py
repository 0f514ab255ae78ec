"""The training config: its defaults, validation, the resume check, and its JSON form.

`default_config()` lists every setting. `validate_config` refuses a bad one by name.
`check_resume_config` compares a config with the `config.json` of a workdir being resumed
(only the settings in `_RESUME_MAY_CHANGE` may differ). `resolve_precision` turns
`mixed_precision="auto"` into the True/False that `config.json` records.
"""

from __future__ import annotations

import math
import pathlib

import ml_collections
import numpy as np
from absl import logging

from tempscale_tf import data as data_lib
from tempscale_tf import distribute, models
from tempscale_tf.files import read_json
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
    """Every training setting with its default. Experiment configs override fields of this.

    Long on purpose: one flat, commented list of settings, read top to bottom like a config file.
    """
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


def validate_config(config) -> None:
    """Raise ValueError naming the first bad setting."""
    check_temperature(config.temperature)
    check_positive_int(config.epochs, "epochs")
    check_positive_int(config.batch_size, "batch_size")
    if config.model not in models.MODELS:
        raise ValueError(
            f"Unknown model {config.model!r}. Available models: {sorted(models.MODELS)}"
        )
    data_lib.check_name(config.dataset)
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


def resolved_data_dir(config):
    """The config's `data_dir`, or None for the default ($TEMPSCALE_DATA_DIR or
    ~/tensorflow_datasets)."""
    return config.data_dir or None


def effective_hparams(config) -> tuple[float, float]:
    """(learning rate, weight decay) after `scale_lr_with_temperature`."""
    factor = float(config.temperature) if config.scale_lr_with_temperature else 1.0
    return float(config.lr) * factor, float(config.weight_decay) / factor


def check_resume_config(workdir, config, finished=False):
    """Refuse to resume `workdir` with settings that would change the run's trajectory.

    Every field of the config is compared with the run's `config.json` except those in
    `_RESUME_MAY_CHANGE` (execution, logging and checkpoint cadence). A field missing from an
    older `config.json` must equal its default.

    `mixed_precision="auto"` is compared as what it resolves to on this machine: a run half-way
    in bfloat16 is not continued in float32. With `finished=True` (reusing a finished run's
    results, e.g. a sweep's committed cell) "auto" accepts whichever precision the run's
    machine chose, since that is what "auto" asked for; an explicit True/False must match.
    """
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        return
    old = read_json(path)
    new = config_dict(config)
    defaults = config_dict(default_config())
    any_precision = finished and new.get("mixed_precision") == "auto"
    for d in (new, defaults):
        d["mixed_precision"] = distribute.resolve_mixed_precision(d["mixed_precision"])[0]
    if any_precision:
        new["mixed_precision"] = old.get("mixed_precision", new["mixed_precision"])
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


def config_dict(config) -> dict:
    """`config` as a JSON-ready dict (tuples as lists, numpy scalars as Python numbers): the
    form of `config.json`."""
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


def resolve_precision(config):
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
