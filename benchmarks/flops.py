"""FLOP counts and measured matmul peaks: how much of the machine the training step uses."""

from __future__ import annotations

import tensorflow as tf

from benchmarks.timing import row, time_call
from tempscale_tf import models


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


def matmul_peak_flops(n=2048, repeats=5, dtype=tf.float32) -> float:
    """Measured FLOP/s of an n x n matmul in `dtype` on the default device.

    Args:
      n: the matrices' size.
      repeats: timed calls (the median is used).
      dtype: the matmul's dtype, e.g. `tf.bfloat16`.
    """
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    fn = tf.function(lambda: tf.matmul(a, b))
    seconds = time_call(fn, repeats=repeats)
    return 2.0 * n**3 / seconds


def bench_flops_ratio(model_name, batch_size, images_per_sec: dict):
    """Achieved training FLOP/s (3x forward FLOPs x images/s) of each precision's step, over the
    measured float32 and bfloat16 matmul peaks.

    Args:
      model_name: a `models.MODELS` name (32x32x3 inputs, 10 classes).
      batch_size: the batch at which the forward FLOPs are counted (the timed step's).
      images_per_sec: `{"float32": ..., "mixed_bfloat16": ...}` (either may be missing).
    """
    model = models.build_model(model_name, 10, (32, 32, 3))
    per_image = forward_flops(model, batch_size) / batch_size
    peaks = {
        "float32": matmul_peak_flops(),
        "bfloat16": matmul_peak_flops(dtype=tf.bfloat16),
    }
    rows = [row("flops", "forward_flops_per_image", per_image, "FLOP", model=model_name)]
    rows += [row("flops", f"matmul_peak_{k}", v, "FLOP/s") for k, v in peaks.items()]
    for precision, rate in images_per_sec.items():
        achieved = 3.0 * per_image * rate
        settings = dict(model=model_name, batch_size=batch_size)
        rows.append(row("flops", f"train_achieved_{precision}", achieved, "FLOP/s", **settings))
        for peak_name, peak in peaks.items():
            rows.append(
                row(
                    "flops",
                    f"{precision}_step_over_{peak_name}_peak",
                    achieved / peak,
                    "ratio",
                    **settings,
                )
            )
    return rows
