"""Adversarial training with the temperature objective (the paper's Eq. 12) or Madry's objective.

Objectives (`config.adv_objective`), per example, with F the logits and T the training
temperature (T divides the logits):

  - "paper" (Eq. 12): `CE(F(x) / T, y) + w * CE(F(x_adv), y)`, `w = config.adv_weight` (1 in the
    paper): the clean term is tempered, the adversarial term is plain cross-entropy;
  - "madry": `CE(F(x_adv) / T, y)`: the standard adversarial-training objective, tempered.

`x_adv` is crafted inside the compiled training step by L-inf PGD (`adv_steps` steps of size
`adv_step_size` in the `adv_eps` ball, random start, loss `adv_loss` at `adv_temperature`,
default CE at T=1 on the current weights).

Batch normalisation: the attack runs the model in inference mode (`training=False`), so crafting
neither uses nor updates the batch statistics. For the "paper" objective the clean and adversarial
halves then go through the model as one concatenated batch (`training=True`), so BN normalises
both with the statistics of the mixed batch and its moving averages track the mixture; "madry"
forwards the adversarial batch only. (Separate BN statistics for clean and adversarial batches,
as in AdvProp, are not implemented.)
"""

from __future__ import annotations

import tensorflow as tf

from tempscale_tf.attacks.common import attack_objective, model_logits, random_start_point
from tempscale_tf.attacks.pgd import pgd_loop
from tempscale_tf.losses import temperature_cross_entropy

ADV_OBJECTIVES = ("paper", "madry")
ADV_LOSSES = ("ce", "margin", "dlr")


def adversarial_objective(
    logits_clean,
    logits_adv,
    labels,
    temperature,
    objective="paper",
    adv_weight=1.0,
    label_smoothing=0.0,
):
    """Per-example adversarial-training loss (float32 `[batch]`); see the module docstring.

    Args:
      logits_clean: `[batch, K]` logits of the clean images (unused, may be None, for "madry").
      logits_adv: `[batch, K]` logits of the adversarial images.
      labels: int `[batch]`.
      temperature: training temperature T > 0.
      objective: "paper" or "madry".
      adv_weight: w, the weight of the adversarial term of the "paper" objective. The two terms
        are not normalised, so the loss and its gradient grow with 1 + w and, with SGD, the step at
        a given learning rate: at w = 3 the fast CIFAR-10 recipe's rates (peak 1.47) held the
        test accuracy at 0.11-0.22 for six epochs and 0.36 at the end (Table III v2); scale the
        SGD rate by 2 / (1 + w) to compare weights at w = 1's step size.
    """
    if objective == "paper":
        clean = temperature_cross_entropy(
            labels, logits_clean, temperature, label_smoothing=label_smoothing
        )
        adv = temperature_cross_entropy(labels, logits_adv, 1.0, label_smoothing=label_smoothing)
        return clean + adv_weight * adv
    if objective == "madry":
        return temperature_cross_entropy(
            labels, logits_adv, temperature, label_smoothing=label_smoothing
        )
    raise ValueError(f"Unknown adversarial objective {objective!r}; choose one of {ADV_OBJECTIVES}")


def craft_linf_pgd(
    model,
    images,
    labels,
    eps,
    step_size,
    steps,
    loss="ce",
    temperature=1.0,
    random_start=True,
    seed=None,
    separate_gradient=False,
):
    """L-inf PGD for use *inside* a compiled training step (no caching; `attacks.pgd.pgd_loop`).

    Args:
      model: the Keras model; it runs with `training=False` (see the module docstring).
      images: float `[batch, ...]` in [0, 1].
      labels: int `[batch]`.
      eps: radius of the L-inf ball.
      step_size: size of each signed-gradient step.
      steps: number of steps (a Python int or a scalar tensor).
      loss: the attack's loss, one of `ADV_LOSSES`.
      temperature: the CE temperature of the attack's loss.
      random_start: start from a uniform point of the ball (else from `images`).
      seed: a stateless seed (int32/int64 `[2]`) for the random start.
      separate_gradient: run the model's forward and backward pass as a never-inlined
        `tf.function` (plain graph mode only, not under XLA). Inlined into the loop, a cyclic
        graph, TensorFlow's oneDNN rewrite may leave `MaxPoolGrad` on its slow kernel depending
        on the process (see `attacks.pgd`); the training loop sets it when not compiling.

    Returns:
      Adversarial images in the eps-ball around `images` and in [0, 1], without gradient.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    labels = tf.cast(labels, tf.int32)

    def logits_and_grad(x_adv, y, target, temperature):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = model_logits(model, x_adv)
            objective = attack_objective(logits, y, target, loss, temperature, False)
        return logits, tape.gradient(objective, x_adv)

    if separate_gradient:
        logits_and_grad = tf.function(
            logits_and_grad, experimental_attributes={"_noinline": True}, autograph=False
        )
    lower, upper = tf.maximum(images - eps, 0.0), tf.minimum(images + eps, 1.0)

    def project(z):
        return tf.clip_by_value(z, lower, upper)

    if random_start:
        x_adv = project(images + random_start_point(images, eps, "linf", seed))
    else:
        x_adv = images
    x_adv, _, _ = pgd_loop(
        logits_and_grad, x_adv, labels, labels, temperature, step_size, steps, project
    )
    return tf.stop_gradient(x_adv)
