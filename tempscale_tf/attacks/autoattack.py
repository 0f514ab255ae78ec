"""AutoAttack (Croce & Hein, 2020): a fixed, parameter-free ensemble of complementary attacks.

Versions (as in the reference implementation):
  * "standard": APGD-CE (no restarts), APGD-T (targeted DLR, 9 target classes, one run each),
    FAB-T (9 target classes), Square Attack (5000 queries);
  * "plus": APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square, APGD-T, FAB-T;
  * "rand", for randomised defences: APGD-CE and APGD-DLR with expectation over
    transformation (gradients averaged over 20 forward passes);
  * or a list of attack names out of `ATTACK_NAMES`, with the standard settings.
Every attack only runs on the examples that are still robust (correctly classified and not
broken by an earlier attack); the robust accuracy is the fraction of examples that survive
all of them. The attacks are plain `(name, attack(model, x, y) -> x_adv)` pairs
(`autoattack_attacks`), so they also plug into `worst_case` and `robust_accuracy_dataset`.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tempscale_tf.attacks.apgd import apgd, apgd_targeted
from tempscale_tf.attacks.common import (
    check_attack_settings,
    check_images_and_labels,
    model_logits,
    project_ball,
)
from tempscale_tf.attacks.ensemble import worst_case
from tempscale_tf.attacks.fab import fab
from tempscale_tf.attacks.square import square_attack
from tempscale_tf.progress import Progress
from tempscale_tf.validation import check_positive_int

__all__ = [
    "ATTACK_NAMES",
    "AutoAttackResult",
    "autoattack",
    "autoattack_attacks",
    "per_attack_accuracy",
]

ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
PLUS_RESTARTS = 5  # restarts of APGD-CE, APGD-DLR and untargeted FAB in the "plus" version
RAND_EOT_ITER = 20  # gradient samples per step in the "rand" version
SQUARE_P_INIT = 0.8


class AutoAttackResult(NamedTuple):
    """Result of `autoattack` on `n` examples.

    Attributes:
      adv: float32 `[n, ...]`: the adversarial image of the first attack that broke each
        example; the clean image for robust and for initially misclassified examples.
      robust: bool `[n]`: correctly classified and not broken by any attack.
      clean_correct: bool `[n]`: correctly classified without attack.
      fooled_by: int32 `[n]`: index (into `attacks`) of the attack that broke the example,
        -1 if none did.
      clean_accuracy: float.
      robust_accuracy: float, the AutoAttack robust accuracy.
      per_attack: {attack name: robust accuracy after that attack and all before it}.
      seconds: {attack name: seconds spent in that attack, summed over batches / replicas}.
      attacks: the attack names, in the order they ran.
    """

    adv: tf.Tensor
    robust: tf.Tensor
    clean_correct: tf.Tensor
    fooled_by: tf.Tensor
    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict
    seconds: dict
    attacks: tuple


def _version_names(version) -> tuple[str, ...]:
    if isinstance(version, str):
        if version not in VERSIONS:
            valid = ", ".join(repr(v) for v in VERSIONS)
            raise ValueError(
                f"unknown `version` {version!r}; valid values are {valid} or a list of attack "
                f"names out of {ATTACK_NAMES}"
            )
        return VERSIONS[version]
    try:
        names = tuple(version)
    except TypeError:
        raise ValueError(
            f"`version` must be a string or a list of names, got {version!r}"
        ) from None
    unknown = [name for name in names if name not in ATTACK_NAMES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"a custom `version` must be a non-empty list of distinct names out of "
            f"{ATTACK_NAMES}; received {list(names)}"
        )
    return names


def _num_targets(model, x, wanted: int) -> int:
    """`wanted`, capped at `num_classes - 1` (one forward pass on one example)."""
    return min(wanted, int(model_logits(model, x[:1]).shape[-1]) - 1)


def autoattack_attacks(
    eps,
    norm="linf",
    version="standard",
    seed=0,
    *,
    steps=100,
    queries=5000,
    num_target_classes=9,
    eot_iter=RAND_EOT_ITER,
    jit_compile=None,
) -> list[tuple[str, object]]:
    """AutoAttack's attacks as `(name, attack(model, x, y) -> x_adv)` pairs, in order.

    Use them with `worst_case` / `robust_accuracy_dataset` (which run each attack only on
    the examples still robust), or through `autoattack`. FAB returns the clean image where
    its smallest adversarial perturbation is larger than `eps`. APGD-T and FAB-T use
    `min(num_target_classes, num_classes - 1)` targets.

    Args:
      eps: the threat-model radius, finite, >= 0.
      norm: "linf" or "l2".
      version: "standard", "plus", "rand", or a list of names out of `ATTACK_NAMES`
        ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square") run with the standard
        settings.
      seed: int seed shared by every attack (as the reference implementation does).
      steps: APGD and FAB iterations (100 in AutoAttack; lower only for quick checks).
      queries: Square Attack queries (5000 in AutoAttack).
      num_target_classes: targets of APGD-T and FAB-T (9 in AutoAttack).
      eot_iter: gradient samples per APGD step in the "rand" version (20 in AutoAttack).
      jit_compile: passed to every attack; None: XLA on iff a GPU is visible.

    Returns:
      list of (name, callable) pairs.

    Raises:
      ValueError: for a bad eps, norm, version, seed or count.
    """
    eps, norm, _ = check_attack_settings(eps, norm, jit_compile)
    names = _version_names(version)
    steps = check_positive_int(steps, "steps")
    queries = check_positive_int(queries, "queries")
    num_target_classes = check_positive_int(num_target_classes, "num_target_classes")
    eot_iter = check_positive_int(eot_iter, "eot_iter")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an int, received {seed!r}")
    plus = version == "plus"
    eot = eot_iter if version == "rand" else 1
    restarts = PLUS_RESTARTS if plus else 1
    common = dict(eps=eps, norm=norm, steps=steps, seed=seed, jit_compile=jit_compile)

    def apgd_untargeted(loss):
        return lambda model, x, y: apgd(
            model, x, y, loss=loss, n_restarts=restarts, eot_iter=eot, **common
        )

    def apgd_t(model, x, y):
        k = _num_targets(model, x, num_target_classes)
        return apgd_targeted(model, x, y, num_target_classes=k, **common)

    def fab_attack(targeted):
        def run(model, x, y):
            x = tf.convert_to_tensor(x, tf.float32)
            k = _num_targets(model, x, num_target_classes) if targeted else 1
            result = fab(
                model,
                x,
                y,
                targeted=targeted,
                num_target_classes=k,
                n_restarts=1 if targeted else restarts,
                **common,
            )
            within = tf.reshape(result.distance <= eps, [-1] + [1] * (x.shape.rank - 1))
            return project_ball(tf.where(within, result.adv, x), x, eps, norm)

        return run

    def square(model, x, y):
        return square_attack(
            model,
            x,
            y,
            eps=eps,
            norm=norm,
            queries=queries,
            p_init=SQUARE_P_INIT,
            seed=seed,
            rescale_schedule=False,
            jit_compile=jit_compile,
        )

    builders = {
        "apgd-ce": lambda: apgd_untargeted("ce"),
        "apgd-dlr": lambda: apgd_untargeted("dlr"),
        "apgd-t": lambda: apgd_t,
        "fab": lambda: fab_attack(False),
        "fab-t": lambda: fab_attack(True),
        "square": lambda: square,
    }
    return [(name, builders[name]()) for name in names]


def _timed(name, attack, seconds, lock):
    def run(model, x, y):
        start = time.perf_counter()
        try:
            return attack(model, x, y)
        finally:
            with lock:
                seconds[name] += time.perf_counter() - start

    return run


def autoattack(
    model,
    x,
    y,
    eps,
    norm="linf",
    version="standard",
    seed=0,
    batch_size=None,
    progress=True,
    strategy=None,
    *,
    steps=100,
    queries=5000,
    num_target_classes=9,
    eot_iter=RAND_EOT_ITER,
    jit_compile=None,
) -> AutoAttackResult:
    """AutoAttack robust accuracy of `model` on `(x, y)` at radius `eps`.

    The examples are processed in batches of `batch_size` with a progress bar. In each
    batch the clean predictions come first; then every attack of the version runs, in
    order, only on the examples that are still robust (`worst_case`), and every returned
    image is checked to lie in the `eps` ball and in [0, 1].

    Args:
      model: a Keras model or callable, images `[batch, ...]` in [0, 1] -> logits.
      x: images `[n, ...]` in [0, 1] (Square Attack needs `[n, h, w, c]`).
      y: true labels, int `[n]`.
      eps: the threat-model radius, finite, >= 0.
      norm: "linf" or "l2".
      version: "standard", "plus", "rand" or a list of attack names (see
        `autoattack_attacks`).
      seed: int seed shared by all attacks.
      batch_size: examples per batch; None: all at once.
      progress: show a `keras.utils.Progbar` over the batches; False: log the rate and ETA;
        None: report nothing (a caller that reports its own progress).
      strategy: optional `tf.distribute.Strategy`: each batch is split between its replicas,
        which attack their share on their own device (each example is attacked on its own,
        so the numbers do not depend on the strategy up to floating-point differences).
      steps, queries, num_target_classes, eot_iter, jit_compile: see `autoattack_attacks`;
        the defaults are AutoAttack's.

    Returns:
      `AutoAttackResult`.

    Raises:
      ValueError: for bad arguments, images or labels.
      RuntimeError: if an attack left the threat model (a bug, never expected).
    """
    attacks = autoattack_attacks(
        eps,
        norm,
        version,
        seed,
        steps=steps,
        queries=queries,
        num_target_classes=num_target_classes,
        eot_iter=eot_iter,
        jit_compile=jit_compile,
    )
    names = tuple(name for name, _ in attacks)
    seconds = {name: 0.0 for name in names}
    lock = threading.Lock()
    timed = [(name, _timed(name, fn, seconds, lock)) for name, fn in attacks]
    x, y = check_images_and_labels(x, y)
    x, y = x.numpy(), y.numpy()
    n = len(y)
    batch_size = n if batch_size is None else check_positive_int(batch_size, "batch_size")
    batch_size = max(min(batch_size, n), 1)

    adv = x.copy()
    clean_correct = np.zeros(n, bool)
    fooled_by = np.full(n, -1, np.int32)
    num_batches = -(-n // batch_size)
    bar = Progress(
        num_batches,
        f"AutoAttack {version} batches",
        bar=progress,
        stateful_metrics=["clean_acc", "robust_acc"],
    )
    for b in range(num_batches):
        part = slice(b * batch_size, min((b + 1) * batch_size, n))
        for rows, out in _attack_batch(model, x[part], y[part], timed, eps, norm, strategy):
            index = np.arange(part.start, part.stop)[rows]
            adv[index] = out.adv.numpy()
            clean_correct[index] = out.clean_correct.numpy()
            fooled_by[index] = out.fooled_by.numpy()
        done = part.stop
        robust_so_far = clean_correct[:done] & (fooled_by[:done] < 0)
        bar.update(
            b + 1,
            values=[
                ("clean_acc", float(clean_correct[:done].mean())),
                ("robust_acc", float(robust_so_far.mean())),
            ],
        )
    robust = clean_correct & (fooled_by < 0)
    denominator = max(n, 1)
    per_attack = per_attack_accuracy(clean_correct, fooled_by, names)
    return AutoAttackResult(
        adv=tf.constant(adv),
        robust=tf.constant(robust),
        clean_correct=tf.constant(clean_correct),
        fooled_by=tf.constant(fooled_by),
        clean_accuracy=float(clean_correct.sum()) / denominator,
        robust_accuracy=float(robust.sum()) / denominator,
        per_attack=per_attack,
        seconds=dict(seconds),
        attacks=names,
    )


def per_attack_accuracy(clean_correct, fooled_by, names) -> dict:
    """{attack name: robust accuracy after that attack and every one before it}.

    Args:
      clean_correct: bool `[n]`, correctly classified without attack.
      fooled_by: int `[n]`, the index into `names` of the attack that broke each example, -1
        for none (as in `AutoAttackResult`).
      names: the attack names in the order they ran.
    """
    clean_correct = np.asarray(clean_correct, bool)
    fooled_by = np.asarray(fooled_by)
    if clean_correct.shape != fooled_by.shape or clean_correct.ndim != 1:
        raise ValueError(
            f"`clean_correct` and `fooled_by` must be 1-D of one length, got shapes "
            f"{clean_correct.shape} and {fooled_by.shape}"
        )
    if fooled_by.size and (fooled_by.min() < -1 or fooled_by.max() >= len(names)):
        raise ValueError(f"`fooled_by` must lie in [-1, {len(names) - 1}] for {len(names)} attacks")
    denominator = max(len(fooled_by), 1)
    return {
        name: float((clean_correct & ((fooled_by < 0) | (fooled_by > k))).sum()) / denominator
        for k, name in enumerate(names)
    }


def _attack_batch(model, x, y, attacks, eps, norm, strategy):
    """`worst_case` on one batch, split between the strategy's replicas if there is one.

    Returns:
      list of (row slice or index array into the batch, `WorstCaseResult`).
    """
    if strategy is None:
        return [(slice(None), worst_case(model, x, y, attacks, eps=eps, norm=norm))]
    replicas = strategy.num_replicas_in_sync
    bounds = np.linspace(0, len(y), replicas + 1).astype(int)
    shares = [np.arange(bounds[r], bounds[r + 1]) for r in range(replicas)]

    def share(ctx):
        rows = shares[ctx.replica_id_in_sync_group]
        return tf.constant(x[rows]), tf.constant(y[rows])

    values = strategy.experimental_distribute_values_from_function(share)

    def run(pair):
        images, labels = pair
        result = worst_case(model, images, labels, attacks, eps=eps, norm=norm)
        return dict(adv=result.adv, clean_correct=result.clean_correct, fooled_by=result.fooled_by)

    per_replica = strategy.run(run, args=(values,))
    local = {k: strategy.experimental_local_results(v) for k, v in per_replica.items()}
    outputs = []
    for r, rows in enumerate(shares):
        fields = {k: v[r] for k, v in local.items()}
        outputs.append((rows, _Batch(**fields)))
    return outputs


class _Batch(NamedTuple):
    adv: tf.Tensor
    clean_correct: tf.Tensor
    fooled_by: tf.Tensor
