"""Logits before and after a PGD attack (paper Fig. 5).

The attack is `tempscale_tf.attacks.pgd` (L-inf, untargeted) on the cross-entropy of
`softmax(z / T)` at the model's training temperature T (the temperature divides the logits). For
each sample the analysis looks at the true-class logit `z_y` and the largest other logit
`max_{j != y} z_j`, clean and adversarial.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tempscale_tf.analysis.gradients import logit_margin


def true_and_other_logits(logits, labels):
    """(`z_y` [N], `max_{j != y} z_j` [N]) as float64."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    true = logits[np.arange(len(labels)), labels]
    return true, true - logit_margin(logits, labels)


def adversarial_logits(
    model,
    images,
    labels,
    temperature=1.0,
    eps=8 / 255,
    steps=10,
    step_size=None,
    loss="ce",
    batch_size=256,
    seed=0,
):
    """Clean and PGD-adversarial logits of `images`.

    Args:
      model: the Keras model (images in [0, 1] -> logits).
      images: float32 [N, H, W, C] in [0, 1]; labels: int [N].
      temperature: T of the CE attack loss (divides the logits); use the training temperature.
      eps: L-inf radius. steps: PGD iterations. step_size: default eps / 4.
      loss: PGD loss ("ce", "margin" or "dlr"; see `tempscale_tf.attacks.pgd`).
      batch_size: images attacked at once.
      seed: random-start seed (batch b uses seed + b).

    Returns:
      (clean logits float32 [N, K], adversarial logits float32 [N, K]).
    """
    from tempscale_tf.attacks import pgd

    step_size = eps / 4 if step_size is None else step_size
    clean, adv = [], []
    for b, start in enumerate(range(0, len(images), batch_size)):
        x = tf.convert_to_tensor(images[start : start + batch_size], tf.float32)
        y = tf.convert_to_tensor(np.asarray(labels[start : start + batch_size], np.int32))
        clean.append(model(x, training=False).numpy())
        if eps > 0:
            x_adv = pgd(
                model,
                x,
                y,
                eps=eps,
                step_size=step_size,
                steps=steps,
                loss=loss,
                temperature=temperature,
                seed=seed + b,
            )
            adv.append(model(x_adv, training=False).numpy())
        else:
            adv.append(clean[-1])
    return np.concatenate(clean).astype(np.float32), np.concatenate(adv).astype(np.float32)
