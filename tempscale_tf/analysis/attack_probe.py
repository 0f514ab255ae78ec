"""Is a robust-accuracy number an artefact of the attack's settings or of the model's precision?

A model whose robustness is real gives about the same robust accuracy under every reasonable
first-order attack: PGD with small or large steps, few or many iterations, with or without a
random start, and APGD (Croce & Hein, 2020), whose step-size schedule and momentum are made to
get past bad local gradients. When plain PGD leaves many more examples robust than APGD, the
gradient at the clean point misleads PGD (gradient masking, e.g. after training with few-step
attacks). When a bfloat16 model is attacked, its gradients are also computed in bfloat16; the
same weights in float32 tell whether the precision weakens the attack.

`probe` runs a list of attack settings on one batch of examples, for the model and (optionally)
its float32 copy, and returns one row per (precision, setting); `launch/attack_probe.py` writes
them as a table.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from tempscale_tf.attacks.apgd import apgd
from tempscale_tf.attacks.common import check_finite_number, check_images_and_labels
from tempscale_tf.attacks.pgd import pgd
from tempscale_tf.evaluation import predict_labels
from tempscale_tf.validation import check_positive_int

KINDS = ("pgd", "apgd")


class ProbeSetting(NamedTuple):
    """One attack setting: `kind` ("pgd" or "apgd") and its keyword arguments (besides eps)."""

    name: str
    kind: str
    kwargs: dict


def default_settings(eps: float, steps: int = 20) -> list[ProbeSetting]:
    """PGD-CE with the evaluation's step (eps / 4), with 5x the iterations at eps / 8, without a
    random start and with large steps (eps), then APGD-CE and APGD-DLR (100 iterations)."""
    eps = check_finite_number(eps, "eps", positive=True)
    steps = check_positive_int(steps, "steps")
    return [
        ProbeSetting(f"pgd{steps} step eps/4", "pgd", {"steps": steps, "step_size": eps / 4}),
        ProbeSetting(
            f"pgd{5 * steps} step eps/8", "pgd", {"steps": 5 * steps, "step_size": eps / 8}
        ),
        ProbeSetting(
            f"pgd{steps} step eps/4, no random start",
            "pgd",
            {"steps": steps, "step_size": eps / 4, "random_start": False},
        ),
        ProbeSetting("pgd10 step eps", "pgd", {"steps": 10, "step_size": eps}),
        ProbeSetting("apgd-ce 100", "apgd", {"steps": 100, "loss": "ce"}),
        ProbeSetting("apgd-dlr 100", "apgd", {"steps": 100, "loss": "dlr"}),
    ]


def float32_copy(model: keras.Model) -> keras.Model:
    """The same functional or sequential model with every layer in float32, same weights."""

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except ValueError as e:  # subclassed models cannot be cloned layer by layer
        raise ValueError(f"cannot make a float32 copy of {model.name!r}: {e}") from e
    copy.set_weights(model.get_weights())
    return copy


def compute_dtype(model) -> str:
    """The dtype the model's layers compute in: a lower precision if any layer with weights uses
    one (a functional model loaded from a file keeps a float32 policy of its own while its
    layers compute in bfloat16), else "float32"."""
    dtypes = {layer.compute_dtype for layer in model.layers if layer.weights}
    lower = sorted(dtypes - {"float32"})
    return lower[0] if lower else "float32"


def _accuracy(model, x, y) -> float:
    return float(np.mean(predict_labels(model, x) == y))


def probe(
    model,
    x,
    y,
    eps: float,
    settings: Sequence[ProbeSetting] | None = None,
    *,
    temperature: float = 1.0,
    with_float32: bool = True,
    seed: int = 0,
) -> list[dict]:
    """Robust accuracy of `model` on (x, y) under each setting, in its own precision and in float32.

    Args:
      model: a Keras model, images in [0, 1] -> logits.
      x: images `[n, ...]` in [0, 1].
      y: int labels `[n]`.
      eps: the L-inf radius.
      settings: `ProbeSetting`s (default: `default_settings(eps)`).
      temperature: the CE temperature of the attacks (the model's training T or 1).
      with_float32: also attack a float32 copy when the model computes in another precision.
      seed: the attacks' seed.

    Returns:
      rows `{"precision", "attack", "kind", "clean", "robust", "seconds"}`, the model's own
      precision first.
    """
    x, y = check_images_and_labels(x, y)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    eps = check_finite_number(eps, "eps", positive=True)
    settings = list(default_settings(eps) if settings is None else settings)
    if not settings:
        raise ValueError("probe needs at least one attack setting")
    for s in settings:
        if s.kind not in KINDS:
            raise ValueError(f"unknown probe attack kind {s.kind!r} in {s.name!r}; use {KINDS}")
    models = [(compute_dtype(model), model)]
    if with_float32 and models[0][0] != "float32":
        models.append(("float32", float32_copy(model)))
    rows = []
    for precision, m in models:
        clean = _accuracy(m, x, y)
        for s in settings:
            start = time.perf_counter()
            kwargs = {"temperature": temperature, "seed": seed, **s.kwargs}
            if s.kind == "pgd":
                adv = pgd(m, x, y, eps=eps, **kwargs)
            else:
                adv = apgd(m, tf.constant(x), tf.constant(y), eps, **kwargs)
            rows.append(
                {
                    "precision": precision,
                    "attack": s.name,
                    "kind": s.kind,
                    "clean": clean,
                    "robust": _accuracy(m, np.asarray(adv), y),
                    "seconds": time.perf_counter() - start,
                }
            )
    return rows


def summary(rows: Sequence[dict]) -> list[str]:
    """One line per precision: the weakest and strongest setting, and the gap between them."""
    lines = []
    for precision in dict.fromkeys(r["precision"] for r in rows):
        mine = [r for r in rows if r["precision"] == precision]
        weak = max(mine, key=lambda r: r["robust"])
        strong = min(mine, key=lambda r: r["robust"])
        lines.append(
            f"{precision}: robust accuracy from {strong['robust']:.3f} ({strong['attack']}) to "
            f"{weak['robust']:.3f} ({weak['attack']}), a spread of "
            f"{weak['robust'] - strong['robust']:.3f}"
        )
    return lines
