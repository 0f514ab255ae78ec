"""Benchmarks measured side by side in one process: medians over repeats, warm-up excluded.

Each `bench_*` function returns a list of row dicts `{"benchmark", "variant", "value", "unit",
...settings}`; `launch/bench.py` runs them and writes `tables/bench.csv` and a Markdown summary.
Nothing here asserts a speed: ratios are reported, never tested.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tempscale_tf import attacks, corruptions, data, distribute, models
from tempscale_tf.losses import temperature_cross_entropy


def machine_description() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [
            tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
        ]
        accel = ", ".join(names)
    else:
        accel = "no GPU"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {accel}; TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}"
    )


def time_call(fn, repeats=5, warmup=1) -> float:
    """Median wall time of `fn()` in seconds (results fetched, so the work really finished)."""
    for _ in range(warmup):
        _block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_interleaved(fns: dict, repeats=5, warmup=1) -> dict:
    """Median wall time of each `fns[name]()`, timed in turns (A, B, A, B, ...) so that a slow
    drift of the machine (another process, clocks) affects every variant alike."""
    for fn in fns.values():
        for _ in range(warmup):
            _block(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            _block(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _block(result):
    for t in tf.nest.flatten(result):
        if hasattr(t, "numpy"):
            t.numpy()


def _row(benchmark, variant, value, unit, **settings):
    return {
        "benchmark": benchmark,
        "variant": variant,
        "value": float(value),
        "unit": unit,
        **settings,
    }


# ------------------------------------------------------------------------------ training step


def make_train_step(model, optimizer, temperature, jit_compile):
    """Our compiled training step (the loop's step without the distribution wrapper)."""

    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(temperature_cross_entropy(y, logits, temperature))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return tf.function(step, jit_compile=jit_compile)


def forward_flops(model, batch_size) -> float:
    """FLOPs of one forward pass at `batch_size`, counted by TensorFlow's graph profiler."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(
        tf.TensorSpec([batch_size, *model.input_shape[1:]], tf.float32)
    )
    frozen = convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options)
    return float(info.total_float_ops)


def matmul_peak_flops(n=2048, repeats=5) -> float:
    """Measured float32 FLOP/s of an n x n matmul on the default device."""
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    fn = tf.function(lambda: tf.matmul(a, b))
    seconds = time_call(fn, repeats=repeats)
    return 2.0 * n**3 / seconds


def bench_train_step(
    model_name,
    batch_sizes,
    steps=5,
    repeats=3,
    jit_options=(False, True),
    include_fit=True,
    temperature=10.0,
):
    """Images/s of our step (with/without XLA) and of `model.fit` with Keras' stock loss."""
    rows = []
    for batch in batch_sizes:
        x = tf.random.uniform([batch, 32, 32, 3])
        y = tf.random.uniform([batch], 0, 10, tf.int32)
        settings = dict(model=model_name, batch_size=batch, steps_per_timing=steps)
        for jit in jit_options:
            keras.utils.set_random_seed(0)
            model = models.build_model(model_name, 10, (32, 32, 3))
            optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
            step = make_train_step(model, optimizer, temperature, jit)
            seconds = time_call(
                lambda step=step, x=x, y=y: [step(x, y) for _ in range(steps)][-1], repeats
            )
            rows.append(
                _row(
                    "train_step", f"ours_jit={jit}", batch * steps / seconds, "images/s", **settings
                )
            )
        if include_fit:
            keras.utils.set_random_seed(0)
            model = models.build_model(model_name, 10, (32, 32, 3))
            model.compile(
                keras.optimizers.SGD(0.01, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=False,
            )
            ds = tf.data.Dataset.from_tensors((x, y)).repeat(steps)
            seconds = time_call(lambda m=model, d=ds: m.fit(d, epochs=1, verbose=0), repeats)
            rows.append(
                _row(
                    "train_step",
                    "keras_fit_stock_loss",
                    batch * steps / seconds,
                    "images/s",
                    **settings,
                )
            )
    return rows


def bench_flops_ratio(model_name, batch_size, images_per_sec):
    """Achieved training FLOP/s (3x forward FLOPs x images/s) over the measured matmul peak."""
    model = models.build_model(model_name, 10, (32, 32, 3))
    per_image = forward_flops(model, batch_size) / batch_size
    achieved = 3.0 * per_image * images_per_sec
    peak = matmul_peak_flops()
    return [
        _row("flops", "forward_flops_per_image", per_image, "FLOP", model=model_name),
        _row(
            "flops", "train_achieved", achieved, "FLOP/s", model=model_name, batch_size=batch_size
        ),
        _row("flops", "matmul_peak_float32", peak, "FLOP/s"),
        _row(
            "flops",
            "achieved_over_peak",
            achieved / peak,
            "ratio",
            model=model_name,
            batch_size=batch_size,
        ),
    ]


# ---------------------------------------------------------------------------------- pipeline


def bench_input_pipeline(dataset, data_dir, batch_size, num_batches=50):
    """Images/s the training input pipeline delivers (augmentation included)."""
    ds = data.load(dataset, "train", data_dir, batch_size)
    iterator = iter(ds.repeat())
    next(iterator)

    def pull():
        for _ in range(num_batches):
            batch = next(iterator)
        return batch

    seconds = time_call(pull, repeats=3)
    return [
        _row(
            "input_pipeline",
            dataset,
            batch_size * num_batches / seconds,
            "images/s",
            batch_size=batch_size,
        )
    ]


# ----------------------------------------------------------------------------------- attacks


def _cleverhans_pgd(model, x, y, eps, step, steps):
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    return projected_gradient_descent(
        model,
        x,
        eps,
        step,
        steps,
        np.inf,
        y=y,
        rand_init=True,
        clip_min=0.0,
        clip_max=1.0,
        sanity_checks=False,
    )


def bench_pgd(model, x, y, eps=8 / 255, step=2 / 255, steps=20, repeats=3):
    """PGD-20 throughput (images x steps / s): ours (graph, and XLA) vs cleverhans."""
    n = int(x.shape[0])
    rows = []
    variants = {
        "ours_jit=False": lambda: attacks.pgd(
            model, x, y, eps, step, steps, jit_compile=False, seed=0
        ),
        "cleverhans": lambda: _cleverhans_pgd(model, x, y, eps, step, steps),
    }
    if distribute.gpu_available():
        variants["ours_jit=True"] = lambda: attacks.pgd(
            model, x, y, eps, step, steps, jit_compile=True, seed=0
        )
    for name, seconds in time_interleaved(variants, repeats=repeats).items():
        rows.append(_row("pgd20", name, n * steps / seconds, "images*steps/s", batch_size=n))
    return rows


def bench_robust_eval(model, x, y, eps=8 / 255, step=2 / 255, steps=20, repeats=2):
    """Robust-accuracy evaluation: ours (worst case, early exit) vs cleverhans PGD on every example.

    Ours runs PGD-CE then margin PGD, each only on the examples still robust and with
    `early_stop=4` inside the attack; cleverhans runs PGD-CE on every example for every step.
    Both robust accuracies are reported (ours is never higher: it keeps any success).
    """
    y_np = y.numpy()
    adv = {}

    def theirs():
        adv["cleverhans"] = _cleverhans_pgd(model, x, y, eps, step, steps)
        return adv["cleverhans"]

    def ours_list(names):
        return [
            a
            for a in attacks.default_attacks(eps, 1.0, steps, step_size=step, seed=0, early_stop=4)
            if a[0] in names
        ]

    result = {}

    def ours(names, key):
        result[key] = attacks.worst_case(model, x, y, ours_list(names))
        return result[key].adv

    seconds = time_interleaved(
        {
            "cleverhans": theirs,
            "one": lambda: ours(("pgd_ce_t1",), "one"),
            "two": lambda: ours(("pgd_ce_t1", "pgd_margin"), "two"),
        },
        repeats=repeats,
    )
    ch_seconds, one_seconds, two_seconds = seconds["cleverhans"], seconds["one"], seconds["two"]
    ch_acc = float(np.mean(np.argmax(model(adv["cleverhans"]), -1) == y_np))
    n = int(x.shape[0])
    return [
        _row(
            "robust_eval",
            "cleverhans_pgd_all_examples",
            ch_seconds,
            "s",
            batch_size=n,
            robust_accuracy=ch_acc,
        ),
        _row(
            "robust_eval",
            "ours_pgd_early_exit",
            one_seconds,
            "s",
            batch_size=n,
            robust_accuracy=result["one"].robust_accuracy,
        ),
        _row(
            "robust_eval",
            "ours_pgd+margin_early_exit",
            two_seconds,
            "s",
            batch_size=n,
            robust_accuracy=result["two"].robust_accuracy,
        ),
        _row(
            "robust_eval",
            "speedup_ours_vs_cleverhans",
            ch_seconds / one_seconds,
            "ratio",
            batch_size=n,
        ),
    ]


def bench_cw_l2(model, x, y, binary_search_steps=3, max_iterations=50):
    n = int(x.shape[0])
    seconds = time_call(
        lambda: attacks.carlini_wagner_l2(
            model, x, y, binary_search_steps=binary_search_steps, max_iterations=max_iterations
        ).adv,
        repeats=1,
    )
    return [
        _row(
            "cw_l2",
            "ours",
            seconds / n,
            "s/image",
            batch_size=n,
            iterations=binary_search_steps * max_iterations,
        )
    ]


def bench_corruptions(num_images=256, names=None):
    images = np.random.default_rng(0).uniform(size=(num_images, 32, 32, 3)).astype("float32")
    rows = []
    for name in names or corruptions.CORRUPTIONS:
        seconds = time_call(
            lambda name=name: corruptions.corrupt(images, name, 3, seed=0), repeats=2
        )
        rows.append(
            _row(
                "corruption",
                name,
                num_images / seconds,
                "images/s",
                batch_size=num_images,
                severity=3,
            )
        )
    return rows


# ------------------------------------------------------------------------------ AutoAttack


def _fit_on_digits(build, epochs, seed):
    """`build(image_shape)`, seeded, fit on the digits train split with SGD."""
    keras.utils.set_random_seed(seed)
    x, y = data.load_arrays("digits", "train")
    model = build(x.shape[1:])
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return model


def digits_attack_model(epochs=20, width=16, seed=0):
    """A small CNN fit on the embedded digits data (seconds on a CPU), for attack benchmarks
    that need a model with an informative robust accuracy (neither 0 nor 1)."""
    build = lambda shape: models.build_model("small_cnn", 10, shape, width=width)
    return _fit_on_digits(build, epochs, seed)


def digits_linear_model(epochs=20, seed=0):
    """A linear classifier (flatten + dense) fit on the embedded digits data: the model of the
    issue's ART reference figure, where the attack's own overhead, not the model, sets the time."""
    layers = keras.layers
    build = lambda shape: keras.Sequential(
        [keras.Input(shape), layers.Flatten(), layers.Dense(10, name="logits")], name="linear"
    )
    return _fit_on_digits(build, epochs, seed)


def _art_autoattack(model, x, y, eps, steps, queries, num_classes):
    """IBM ART's AutoAttack with the same attacks as ours below (APGD-CE, APGD-DLR, Square)."""
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack
    from art.estimators.classification import TensorFlowV2Classifier

    classifier = TensorFlowV2Classifier(
        model=model,
        nb_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )
    apgd = [
        AutoProjectedGradientDescent(
            classifier,
            norm=np.inf,
            eps=eps,
            eps_step=2 * eps,
            max_iter=steps,
            nb_random_init=1,
            batch_size=len(y),
            loss_type=loss,
            verbose=False,
        )
        for loss in ("cross_entropy", "difference_logits_ratio")
    ]
    square = SquareAttack(
        classifier, norm=np.inf, eps=eps, max_iter=queries, p_init=0.8, nb_restarts=1, verbose=False
    )
    attack = AutoAttack(classifier, norm=np.inf, eps=eps, eps_step=2 * eps, attacks=[*apgd, square])
    return attack.generate(np.array(x, copy=True), y=np.eye(num_classes)[y])


def bench_autoattack(model, x, y, eps, steps=100, queries=5000, num_classes=10):
    """AutoAttack (APGD-CE, APGD-DLR, Square; L-inf) wall time: ours vs IBM ART, same inputs.

    One timed run each: ours twice, first cold (`ours_first_call`, tracing and compilation
    included: what a user waits for the first time), then warm (`ours`, the figure the ratio
    uses, as everywhere in this benchmark); ART once (its run is minutes and has no tracing).
    Both robust accuracies are reported next to the times.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    n = len(y)
    names = ["apgd-ce", "apgd-dlr", "square"]
    settings = dict(model=model.name, batch_size=n, eps=eps, steps=steps, queries=queries)
    rows = []
    for variant in ("ours_first_call", "ours"):
        start = time.perf_counter()
        ours = attacks.autoattack(
            model, x, y, eps, version=names, steps=steps, queries=queries, progress=False
        )
        ours_seconds = time.perf_counter() - start
        rows.append(
            _row(
                "autoattack",
                variant,
                ours_seconds,
                "s",
                robust_accuracy=ours.robust_accuracy,
                **settings,
            )
        )
    try:
        import art  # noqa: F401
        import multiprocess  # noqa: F401  (ART's AutoAttack imports it)
    except ImportError as e:
        logging.warning("ART AutoAttack timing skipped: %s is not installed", e.name)
        return rows
    start = time.perf_counter()
    adv = _art_autoattack(model, x, y, eps, steps, queries, num_classes)
    art_seconds = time.perf_counter() - start
    art_acc = float(np.mean(np.argmax(model(adv), -1) == y))
    rows.append(_row("autoattack", "art", art_seconds, "s", robust_accuracy=art_acc, **settings))
    rows.append(
        _row("autoattack", "speedup_ours_vs_art", art_seconds / ours_seconds, "ratio", **settings)
    )
    return rows
