"""The training-step benchmark: the training loop's own step (`training.make_train_step`:
weight decay, the distribution strategy, the optimizer's schedule, mixed precision), in float32,
with XLA and in mixed precision, timed side by side with `model.fit` on the same model, loss and
optimizer."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from benchmarks.timing import block, row, time_call, time_interleaved
from tempscale_tf import distribute, training
from tempscale_tf.losses import temperature_cross_entropy


def train_config(
    model_name,
    batch_size,
    *,
    jit_compile=None,
    mixed_precision=False,
    temperature=10.0,
    dataset="cifar10",
    **overrides,
):
    """`training.default_config()` with the model, global batch, jit and precision set: every
    other setting (weight decay 5e-4 on kernels, SGD + momentum 0.9, cosine schedule, strategy
    "auto", synchronised BN when there are several replicas) is the training default.

    `dataset` only sets the image shape, class count and normalisation (cifar10: 32x32x3, 10
    classes; nothing is read from disk). `jit_compile=None` is the loop's default (XLA on GPU
    only); `mixed_precision=True` selects mixed_bfloat16 on CPU, mixed_float16 on GPU.

    Args:
      model_name: a `models.MODELS` name.
      batch_size: the global batch.
      jit_compile: the step's XLA setting (None: the loop's default).
      mixed_precision: compute the body in the mixed policy.
      temperature: the training temperature.
      dataset: the dataset whose shape, classes and normalisation the model gets.
      **overrides: any other `default_config()` fields.
    """
    config = training.default_config()
    config.dataset = dataset
    config.model = model_name
    config.batch_size = int(batch_size)
    config.temperature = float(temperature)
    config.jit_compile = jit_compile
    config.mixed_precision = bool(mixed_precision)
    for key, value in overrides.items():
        config[key] = value
    return config


def keras_fit_model(config, learning_rate) -> keras.Model:
    """The config's model compiled for `model.fit` with the loop's loss and optimizer.

    Same model (seeded alike), CE of softmax(logits / T), SGD with the same momentum and
    `learning_rate` schedule, weight decay on the same variables (Keras' decoupled form,
    `w -= lr * wd * w`, for the loop's coupled `g += wd * w`: the same work per step). No
    distribution strategy and no XLA unless the config asks for it: a plain `model.fit`.
    """
    keras.utils.set_random_seed(int(config.seed))
    model = training.build_model_from_config(config)
    temperature = float(config.temperature)
    optimizer = keras.optimizers.SGD(
        learning_rate=learning_rate,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=training.effective_hparams(config)[1] or None,
    )
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in model.trainable_variables if not training.is_decayed(v)]
    )
    model.compile(
        optimizer,
        lambda labels, logits: temperature_cross_entropy(labels, logits, temperature),
        jit_compile=distribute.resolve_jit_compile(config.jit_compile),
    )
    return model


def bench_train_step(
    model_name,
    batch_sizes,
    steps=5,
    repeats=3,
    jit_options=(False, True),
    mixed_precision=True,
    include_fit=True,
    temperature=10.0,
    min_seconds=1.0,
    strategy=None,
    config_overrides=None,
):
    """Images/s of the training loop's own step (`training.make_train_step`), timed side by
    side with `model.fit` (same model, loss and optimizer; `keras_fit_model`) and, with
    `mixed_precision`, the same loop step under the mixed policy (bfloat16 on CPU) at the
    loop's default jit.

    Every timed call is one short epoch for each variant: ours distributes a dataset of `n`
    batches (random images) with the strategy and runs `train_step` on each, as `train` does
    per epoch; `model.fit` runs one epoch on the same dataset. `n` is `steps`, raised so that a
    call of our graph-mode float32 step lasts about `min_seconds`: each loop's per-epoch setup
    (ours: distributing the dataset, tens of ms with MirroredStrategy; fit: its epoch iterator
    and callbacks) is then a small part of the time, as in a real epoch. All variants of a
    batch size are timed in turns (`time_interleaved`).

    Args:
      model_name: a `models.MODELS` name (32x32x3 inputs, 10 classes).
      batch_sizes: global batch sizes to time, one after the other.
      steps: the least number of steps per timed call.
      repeats: timed calls per variant (the median is reported).
      jit_options: `jit_compile` values of the float32 loop step (the default one is always in).
      mixed_precision: also time the loop step under the mixed policy.
      include_fit: also time `model.fit`.
      temperature: the training temperature.
      min_seconds: about how long a timed call of the float32 graph-mode step should last.
      strategy: the distribution strategy (default: `"auto"`, as `train`).
      config_overrides: further training settings (e.g. `data_dir` for a model whose
        initialisation reads training images).

    Returns:
      Rows per batch size: one per variant (images/s), then `ours_over_keras_fit` and
      `<policy>_over_float32` (ratios).
    """
    strategy = strategy or distribute.make_strategy("auto")
    policy = distribute.mixed_policy_name()
    default_jit = distribute.resolve_jit_compile(None)
    graph = f"ours_jit={default_jit}"
    rows = []
    for batch in batch_sizes:
        x = tf.random.uniform([batch, 32, 32, 3])
        y = tf.random.uniform([batch], 0, 10, tf.int32)
        loops, info = {}, {}
        combos = [(jit, False) for jit in dict.fromkeys((default_jit, *jit_options))]
        if mixed_precision:
            combos.append((default_jit, True))
        for jit, mixed in combos:
            config = train_config(
                model_name,
                batch,
                jit_compile=jit,
                mixed_precision=mixed,
                temperature=temperature,
                **(config_overrides or {}),
            )
            name = f"ours_{policy}_jit={jit}" if mixed else f"ours_jit={jit}"
            loops[name] = training.make_train_step(config, strategy)
            info[name] = dict(
                precision=policy if mixed else "float32",
                jit_compile=jit,
                weight_decay=config.weight_decay,
            )
        n = _steps_for(loops[graph], x, y, steps, min_seconds)
        dataset = tf.data.Dataset.from_tensors((x, y)).repeat(n)
        variants = {name: (lambda s=loop, d=dataset: s.run(d)) for name, loop in loops.items()}
        if include_fit:
            config = train_config(model_name, batch, jit_compile=False, temperature=temperature)
            model = keras_fit_model(config, loops[graph].state.schedule)
            variants["keras_fit"] = lambda m=model, d=dataset: m.fit(
                d, epochs=1, verbose=0, shuffle=False
            )
            info["keras_fit"] = dict(
                precision="float32", jit_compile=False, weight_decay=config.weight_decay
            )
        seconds = time_interleaved(variants, repeats=repeats)
        settings = dict(
            model=model_name,
            batch_size=batch,
            steps_per_timing=n,
            replicas=strategy.num_replicas_in_sync,
        )
        throughput = {name: batch * n / s for name, s in seconds.items()}
        for name, value in throughput.items():
            rows.append(row("train_step", name, value, "images/s", **settings, **info[name]))
        if include_fit:
            ratio = throughput[graph] / throughput["keras_fit"]
            rows.append(row("train_step", "ours_over_keras_fit", ratio, "ratio", **settings))
        mixed_name = f"ours_{policy}_jit={default_jit}"
        if mixed_name in throughput:
            ratio = throughput[mixed_name] / throughput[graph]
            rows.append(
                row(
                    "train_step",
                    f"{policy}_over_float32",
                    ratio,
                    "ratio",
                    **settings,
                    jit_compile=default_jit,
                )
            )
    return rows


def _steps_for(loop, x, y, steps, min_seconds) -> int:
    """`steps`, or more so that `steps` loop steps take about `min_seconds` (a warm-up)."""
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat(steps)
    block(loop.run(dataset))  # tracing
    seconds = time_call(lambda: loop.run(dataset), repeats=1, warmup=0)
    return max(int(steps), int(np.ceil(min_seconds / max(seconds / steps, 1e-6))))


def onednn_step_rate(model_name, batch_size, steps, repeats, min_seconds, data_dir=None):
    """In a fresh process (`bench_onednn` sets its `TF_ENABLE_ONEDNN_OPTS`): the float32 graph
    step's images/s of `model_name` and whether oneDNN is on in the process."""
    from tempscale_tf import machine

    rows = bench_train_step(
        model_name,
        [batch_size],
        steps=steps,
        repeats=repeats,
        jit_options=(False,),
        mixed_precision=False,
        include_fit=False,
        min_seconds=min_seconds,
        config_overrides={"data_dir": data_dir} if data_dir else None,
    )
    rate = next(r["value"] for r in rows if r["variant"] == "ours_jit=False")
    return {"images_per_s": rate, "onednn": machine.onednn_enabled()}


def bench_onednn(
    model_names, batch_size, rounds=2, steps=3, repeats=2, min_seconds=2.0, data_dir=None
):
    """The float32 training step with TensorFlow's oneDNN kernels off and on, side by side.

    The switch (`TF_ENABLE_ONEDNN_OPTS`) is read when TensorFlow loads, so each measurement is a
    fresh process; the two settings alternate, `rounds` processes each, and the medians are
    compared. TensorFlow turns oneDNN on by default only on CPUs with AVX512-VNNI/BF16 or AMX;
    `import tempscale_tf` turns it on everywhere unless the variable is set.

    Args:
      model_names: `models.MODELS` names (32x32x3 inputs).
      batch_size: the global batch.
      rounds: processes per setting.
      steps, repeats, min_seconds: as `bench_train_step`, within each process.
      data_dir: for `fast_cifar`'s whitening initialisation (random images when None).

    Returns:
      Rows per model: `onednn_off` and `onednn_on` (median images/s; `onednn_active`, "on" or
      "off", is what the processes really had), then `onednn_on_over_off` (ratio).
    """
    from benchmarks.timing import run_in_fresh_process

    rows = []
    for name in model_names:
        rates = {"0": [], "1": []}
        active = {"0": set(), "1": set()}
        kwargs = dict(
            model_name=name,
            batch_size=int(batch_size),
            steps=steps,
            repeats=repeats,
            min_seconds=min_seconds,
            data_dir=data_dir if name == "fast_cifar" else None,
        )
        for _ in range(rounds):
            for setting in ("0", "1"):
                result, _ = run_in_fresh_process(
                    "train_step.onednn_step_rate", env={"TF_ENABLE_ONEDNN_OPTS": setting}, **kwargs
                )
                rates[setting].append(result["images_per_s"])
                active[setting].add(bool(result["onednn"]))
        settings = dict(
            model=name, batch_size=int(batch_size), processes=rounds, precision="float32"
        )
        medians = {}
        for setting, label in (("0", "onednn_off"), ("1", "onednn_on")):
            medians[setting] = float(np.median(rates[setting]))
            rows.append(
                row(
                    "onednn",
                    label,
                    medians[setting],
                    "images/s",
                    **settings,
                    onednn_active="+".join("on" if a else "off" for a in sorted(active[setting])),
                )
            )
        rows.append(
            row("onednn", "onednn_on_over_off", medians["1"] / medians["0"], "ratio", **settings)
        )
    return rows
