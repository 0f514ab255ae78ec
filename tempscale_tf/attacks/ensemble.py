"""Worst case over several attacks (AutoAttack-style ensemble), per batch and over a dataset.

An example counts as robust only if it is classified correctly and *every* attack fails on
it. To save time, each attack only runs on the examples that are still robust: examples the
model already gets wrong are never attacked, and an example broken by one attack is not
attacked again (unless `individual=True` asks for every attack's own accuracy).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from tempscale_tf.attacks.common import (
    NORMS,
    check_choice,
    check_finite_number,
    check_images_and_labels,
    default_jit_compile,
    model_logits,
    predictions,
    without_label,
)
from tempscale_tf.attacks.pgd import pgd
from tempscale_tf.distribute import distribute_dataset
from tempscale_tf.progress import Progress
from tempscale_tf.validation import check_positive_int, check_temperature

__all__ = [
    "RobustnessReport",
    "WorstCaseResult",
    "default_attacks",
    "robust_accuracy_dataset",
    "targeted_top_k",
    "worst_case",
]

Attack = Callable[..., tf.Tensor]  # attack(model, x, y) -> x_adv


class WorstCaseResult(NamedTuple):
    """Result of `worst_case` on one batch of `batch` examples and `A` attacks.

    Attributes:
      adv: float32 `[batch, ...]`: per example, the adversarial image of the first attack
        that fooled the model; the clean image for examples that are misclassified already
        or that no attack fooled.
      robust: bool `[batch]`: correctly classified and not fooled by any attack.
      clean_correct: bool `[batch]`: correctly classified without attack.
      fooled_by: int32 `[batch]`: index of the first attack that fooled the example, -1 if
        none did (robust, or misclassified without attack).
      clean_accuracy: float, mean of `clean_correct`.
      robust_accuracy: float, mean of `robust`.
      cumulative_robust_accuracy: {attack name: robust accuracy after attacks 1..k}, in order.
      individual_robust_accuracy: {attack name: accuracy under that attack alone}, for the
        attacks that ran on every correctly classified example: always the first attack,
        all of them with `individual=True`.
    """

    adv: tf.Tensor
    robust: tf.Tensor
    clean_correct: tf.Tensor
    fooled_by: tf.Tensor
    clean_accuracy: float
    robust_accuracy: float
    cumulative_robust_accuracy: dict
    individual_robust_accuracy: dict


class RobustnessReport(NamedTuple):
    """Dataset-level numbers from `robust_accuracy_dataset` (fields as in `WorstCaseResult`)."""

    num_examples: int
    clean_accuracy: float
    robust_accuracy: float
    cumulative_robust_accuracy: dict
    individual_robust_accuracy: dict


# --------------------------------------------------------------------------- attacks


def targeted_top_k(model, x, y, num_targets=3, loss="margin", **pgd_kwargs):
    """Targeted PGD towards each of the `num_targets` most likely wrong classes.

    The targets are ranked by the clean logits. Target k only runs on the examples that
    targets 1..k-1 did not misclassify; an example counts as broken when *any* target run
    misclassifies it (into any wrong class).

    Args:
      model, x, y: as for `pgd`.
      num_targets: how many wrong classes to try (at most `num_classes - 1`).
      loss: "ce", "margin" or "dlr" (targeted variants, see `pgd`).
      **pgd_kwargs: further `pgd` arguments (eps, step_size, steps, norm, ...).

    Returns:
      float32 `[batch, ...]`: the first misclassified adversarial image per example, else
      the last attempt's image.
    """
    num_targets = check_positive_int(num_targets, "num_targets")
    x, y = check_images_and_labels(x, y)
    logits = model_logits(model, x)
    k = min(num_targets, logits.shape[-1] - 1)
    targets = tf.math.top_k(without_label(logits, y), k=k).indices.numpy()
    best = x.numpy()
    fooled = np.zeros(x.shape[0], bool)
    y_np = y.numpy()
    for i in range(k):
        todo = np.flatnonzero(~fooled)
        if todo.size == 0:
            break
        adv = pgd(
            model,
            tf.gather(x, todo),
            y_np[todo],
            loss=loss,
            targeted=True,
            target=targets[todo, i],
            **pgd_kwargs,
        )
        best[todo] = adv.numpy()
        fooled[todo] = predictions(model, adv).numpy() != y_np[todo]
    return tf.constant(best)


def default_attacks(
    eps,
    temperature,
    steps=20,
    *,
    norm="linf",
    step_size=None,
    random_start=True,
    num_targets=3,
    seed=None,
    jit_compile=None,
    early_stop=5,
) -> list[tuple[str, Attack]]:
    """The library's standard attack list for `worst_case`, cheapest and strongest first.

    1. "pgd_ce_t{T}": PGD on the cross-entropy at the training temperature T.
    2. "pgd_ce_t1": PGD on the plain (T = 1) cross-entropy; left out when T == 1.
    3. "pgd_margin": PGD on the C&W margin loss (`cw_linf` for norm="linf").
    4. "pgd_margin_targeted_top{k}": targeted margin PGD towards each of the k most likely
       wrong classes (`targeted_top_k`); broken if any target succeeds.
    5. "pgd_dlr": PGD on Croce & Hein's DLR loss (needs >= 3 classes).

    Margin and DLR do not depend on the logit scale, so they are immune to the vanishing
    softmax gradient that a large logit scale (a small effective temperature) causes.

    Args:
      eps: threat-model radius (>= 0).
      temperature: the model's training temperature T > 0 (divides the logits).
      steps: PGD iterations per attack.
      norm: "linf" or "l2".
      step_size: PGD step; None: eps / 4.
      random_start: PGD random start (False makes every attack deterministic).
      num_targets: k, the number of target classes of attack 4.
      seed: int seed of the random starts, or None.
      jit_compile: passed to `pgd`.
      early_stop: passed to `pgd`: every `early_stop` steps, examples already fooled stop
        being attacked (same successes as the full loop, less work); None runs every step on
        every example.

    Returns:
      list of (name, attack) pairs, `attack(model, x, y) -> x_adv`.
    """
    eps = check_finite_number(eps, "eps")
    temperature = check_temperature(temperature)
    steps = check_positive_int(steps, "steps")
    norm = check_choice(norm, NORMS, "norm")
    num_targets = check_positive_int(num_targets, "num_targets")
    if step_size is None:
        step_size = eps / 4 if eps > 0 else 1.0  # with eps = 0 the step is projected away
    step_size = check_finite_number(step_size, "step_size", positive=True)
    common = dict(
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm=norm,
        random_start=random_start,
        seed=seed,
        jit_compile=jit_compile,
        early_stop=early_stop,
    )
    ce_at_t = functools.partial(pgd, temperature=temperature, **common)
    attacks = [(f"pgd_ce_t{temperature:g}", ce_at_t)]
    if temperature != 1.0:
        attacks.append(("pgd_ce_t1", functools.partial(pgd, temperature=1.0, **common)))
    attacks.append(("pgd_margin", functools.partial(pgd, loss="margin", **common)))
    attacks.append(
        (
            f"pgd_margin_targeted_top{num_targets}",
            functools.partial(targeted_top_k, num_targets=num_targets, loss="margin", **common),
        )
    )
    attacks.append(("pgd_dlr", functools.partial(pgd, loss="dlr", **common)))
    return attacks


# --------------------------------------------------------------------------- worst case


def _check_attacks(attacks) -> list[tuple[str, Attack]]:
    attacks = list(attacks)
    if not attacks:
        raise ValueError("`attacks` must be a non-empty list of (name, callable) pairs")
    for item in attacks:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and callable(item[1])):
            raise ValueError(f"each attack must be a (name, callable) pair, received {item!r}")
    names = [str(name) for name, _ in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, received {names}")
    return [(str(name), fn) for name, fn in attacks]


def _bucket_size(n: int, full: int) -> int:
    """Next power of two >= n, at most `full`: bounds the number of XLA compilations."""
    return min(full, 1 << max(n - 1, 0).bit_length())


def _check_threat_model(name, x, x_adv, eps, norm):
    """Raise if an attack left [0, 1] or the eps-ball (a broken attack invalidates the table)."""
    delta = (x_adv - x).reshape(len(x), -1)
    if x_adv.min(initial=0.0) < -1e-6 or x_adv.max(initial=1.0) > 1.0 + 1e-6:
        raise RuntimeError(f"attack {name!r} returned images outside [0, 1]")
    size = np.abs(delta).max(axis=1) if norm == "linf" else np.sqrt((delta**2).sum(axis=1))
    if size.size and size.max() > eps * (1.0 + 1e-5) + 1e-6:
        raise RuntimeError(
            f"attack {name!r} left the {norm} ball of radius {eps}: perturbation {size.max()}"
        )


def _run_attacks(model, x, y, attacks, individual, eps, norm, pad_to_bucket):
    """The worst-case loop on one batch; NumPy in, NumPy out (see `worst_case`)."""
    batch = len(y)
    num_attacks = len(attacks)
    adv = x.copy()
    fooled_by = np.full(batch, -1, np.int32)
    individual_fooled = np.zeros((batch, num_attacks), bool)
    computed = np.array([individual or k == 0 for k in range(num_attacks)])
    if batch == 0:
        return dict(
            adv=adv,
            clean_correct=np.zeros(0, bool),
            fooled_by=fooled_by,
            individual_fooled=individual_fooled,
            computed=computed,
        )
    clean_correct = predictions(model, x).numpy() == y
    robust = clean_correct.copy()
    for k, (name, attack) in enumerate(attacks):
        run_on = np.flatnonzero(clean_correct if computed[k] else robust)
        if run_on.size == 0:
            continue
        padded = run_on
        if pad_to_bucket:
            extra = _bucket_size(run_on.size, batch) - run_on.size
            padded = np.concatenate([run_on, np.repeat(run_on[:1], extra)])
        x_adv = attack(model, tf.constant(x[padded]), tf.constant(y[padded]))
        x_adv = np.asarray(x_adv, np.float32)[: run_on.size]
        if x_adv.shape != x[run_on].shape:
            raise ValueError(
                f"attack {name!r} returned shape {x_adv.shape} for inputs of shape "
                f"{x[run_on].shape}"
            )
        if eps is not None:
            _check_threat_model(name, x[run_on], x_adv, eps, norm)
        fooled = predictions(model, x_adv).numpy() != y[run_on]
        individual_fooled[run_on, k] = fooled
        newly = fooled & robust[run_on]
        adv[run_on[newly]] = x_adv[newly]
        fooled_by[run_on[newly]] = k
        robust[run_on[newly]] = False
    return dict(
        adv=adv,
        clean_correct=clean_correct,
        fooled_by=fooled_by,
        individual_fooled=individual_fooled,
        computed=computed,
    )


def _survivor_counts(clean_correct, fooled_by, individual_fooled):
    """Per attack k: #robust after attacks 1..k; #correct examples attack k alone left correct."""
    k = np.arange(individual_fooled.shape[1])
    first = fooled_by[:, None]
    cumulative = (clean_correct[:, None] & ((first < 0) | (first > k))).sum(axis=0)
    single = (clean_correct[:, None] & ~individual_fooled).sum(axis=0)
    return cumulative, single


def _accuracy_dicts(names, computed, cumulative, single, n):
    """Counts -> ({name: cumulative accuracy}, {name: individual accuracy where computed})."""
    n = max(n, 1)
    return (
        {name: float(c) / n for name, c in zip(names, cumulative)},
        {name: float(c) / n for name, c, done in zip(names, single, computed) if done},
    )


def _check_common(attacks, eps, norm, pad_to_bucket):
    attacks = _check_attacks(attacks)
    norm = check_choice(norm, NORMS, "norm")
    if eps is not None:
        eps = check_finite_number(eps, "eps")
    if pad_to_bucket is None:
        pad_to_bucket = default_jit_compile()
    return attacks, eps, norm, bool(pad_to_bucket)


def worst_case(
    model,
    x,
    y,
    attacks: Sequence[tuple[str, Attack]],
    *,
    individual=False,
    eps=None,
    norm="linf",
    pad_to_bucket=None,
) -> WorstCaseResult:
    """Worst case over `attacks` on one batch: robust iff correct and no attack fools it.

    The clean predictions are computed first; attack k then runs only on the examples that
    are correct and survived attacks 1..k-1 (with `individual=True`: on every correct
    example, to also measure each attack alone). An attack's output is re-evaluated here:
    an example is fooled iff the model misclassifies the returned image.

    Args:
      model: a Keras model or callable, images `[batch, ...]` in [0, 1] -> logits.
      x: images `[batch, ...]` in [0, 1].
      y: true labels, int `[batch]`.
      attacks: (name, attack) pairs, `attack(model, x, y) -> x_adv` (e.g. from
        `default_attacks`), run in order; put cheap attacks first.
      individual: also run every attack on all correct examples and report its own accuracy.
      eps: if given, check that every attack stays in the `norm` ball of radius `eps` and
        in [0, 1] (raises `RuntimeError` otherwise).
      norm: "linf" or "l2", for the `eps` check.
      pad_to_bucket: pad each attack's sub-batch (by repeating an example) to a power of two,
        so XLA compiles O(log batch) shapes instead of one per sub-batch size. None: on iff
        a GPU is visible (XLA is only on by default there).

    Returns:
      `WorstCaseResult` (tensors for per-example values, floats for accuracies).
    """
    attacks, eps, norm, pad_to_bucket = _check_common(attacks, eps, norm, pad_to_bucket)
    x, y = check_images_and_labels(x, y)
    out = _run_attacks(model, x.numpy(), y.numpy(), attacks, individual, eps, norm, pad_to_bucket)
    n = len(out["fooled_by"])
    robust = out["clean_correct"] & (out["fooled_by"] < 0)
    counts = _survivor_counts(out["clean_correct"], out["fooled_by"], out["individual_fooled"])
    names = [name for name, _ in attacks]
    cumulative, single = _accuracy_dicts(names, out["computed"], *counts, n)
    return WorstCaseResult(
        adv=tf.constant(out["adv"]),
        robust=tf.constant(robust),
        clean_correct=tf.constant(out["clean_correct"]),
        fooled_by=tf.constant(out["fooled_by"]),
        clean_accuracy=float(out["clean_correct"].sum()) / max(n, 1),
        robust_accuracy=float(robust.sum()) / max(n, 1),
        cumulative_robust_accuracy=cumulative,
        individual_robust_accuracy=single,
    )


def robust_accuracy_dataset(
    model,
    dataset,
    attacks: Sequence[tuple[str, Attack]],
    strategy=None,
    progress=True,
    *,
    individual=False,
    eps=None,
    norm="linf",
    pad_to_bucket=None,
) -> RobustnessReport:
    """`worst_case` over every batch of a dataset, with a progress bar; aggregated numbers.

    With a `tf.distribute.Strategy`, the dataset is distributed with
    `distribute.distribute_dataset` (unchanged for one replica, which avoids the iterator
    teardown pause it describes) and every replica attacks its share of each global batch
    inside `strategy.run`, on its own device (for a model built under
    `strategy.scope()`, with that replica's copy of the variables). The attacks are
    per-example, so the numbers do not depend on the strategy, up to floating-point
    differences between devices.

    Args:
      model: a Keras model or callable, images in [0, 1] -> logits.
      dataset: a batched `tf.data.Dataset` of (images `[batch, ...]`, int labels `[batch]`).
      attacks: (name, attack) pairs, as for `worst_case`.
      strategy: optional `tf.distribute.Strategy`.
      progress: show a `keras.utils.Progbar` (clean and robust accuracy so far); else log
        the rate, ETA and accuracies about once a minute.
      individual, eps, norm, pad_to_bucket: as for `worst_case`.

    Returns:
      `RobustnessReport` with the example count and the accuracies over the whole dataset.
    """
    attacks, eps, norm, pad_to_bucket = _check_common(attacks, eps, norm, pad_to_bucket)
    names = [name for name, _ in attacks]

    def attack_batch(images, labels):
        images, labels = check_images_and_labels(images, labels)
        out = _run_attacks(
            model, images.numpy(), labels.numpy(), attacks, individual, eps, norm, pad_to_bucket
        )
        return {
            key: tf.constant(out[key])
            for key in ("clean_correct", "fooled_by", "individual_fooled")
        }

    cardinality = int(dataset.cardinality())
    bar = Progress(
        cardinality if cardinality > 0 else None,
        f"{len(attacks)} attacks, batches",
        bar=progress,
        stateful_metrics=["clean_acc", "robust_acc"],
    )
    num_attacks = len(attacks)
    n = clean = robust = 0
    cumulative = np.zeros(num_attacks, np.int64)
    single = np.zeros(num_attacks, np.int64)
    batches = dataset if strategy is None else distribute_dataset(strategy, dataset)
    for step, element in enumerate(batches, start=1):
        if not (isinstance(element, (tuple, list)) and len(element) == 2):
            raise ValueError("the dataset must yield (images, labels) pairs")
        if strategy is None:
            results = [attack_batch(*element)]
        else:
            per_replica = strategy.run(attack_batch, args=tuple(element))
            local = {k: strategy.experimental_local_results(v) for k, v in per_replica.items()}
            results = [{k: v[r] for k, v in local.items()} for r in range(len(local["fooled_by"]))]
        for result in results:
            correct, fooled_by = result["clean_correct"].numpy(), result["fooled_by"].numpy()
            n += len(correct)
            clean += int(correct.sum())
            robust += int((correct & (fooled_by < 0)).sum())
            counts = _survivor_counts(correct, fooled_by, result["individual_fooled"].numpy())
            cumulative += counts[0]
            single += counts[1]
        denominator = max(n, 1)
        bar.update(
            step, values=[("clean_acc", clean / denominator), ("robust_acc", robust / denominator)]
        )

    computed = [individual or k == 0 for k in range(num_attacks)]
    cumulative, single = _accuracy_dicts(names, computed, cumulative, single, n)
    return RobustnessReport(
        num_examples=n,
        clean_accuracy=clean / max(n, 1),
        robust_accuracy=robust / max(n, 1),
        cumulative_robust_accuracy=cumulative,
        individual_robust_accuracy=single,
    )
