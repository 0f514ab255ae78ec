"""The Gaussian-cluster experiment: the Bayes posterior is a softmax at temperature T = 2 sigma^2.

Data: K classes with equal priors, class k drawn from an isotropic Gaussian N(mu_k, sigma^2 I).
Bayes' rule gives

    p(k | x) = softmax_k( -||x - mu_k||^2 / (2 sigma^2) ),

i.e. with *squared-distance logits* `l_k(x) = -||x - mu_k||^2` the posterior is `softmax(l / T)`
at temperature `T = 2 sigma^2`. Convention (as everywhere in this library): the temperature T
*divides* the logits; equivalently the inverse temperature (scale) `1 / (2 sigma^2)` multiplies
`-||x - mu||^2`.

The model (`build_gaussian_model`) has exactly that form: a `SquaredDistanceLogits` layer with
learnable centres c_k (`l_k = -||x - c_k||^2`) followed by the library's
`TemperatureScaling(learnable=True)` layer (T = exp(log T): log-parametrised, always > 0), trained
with cross-entropy (`fit_gaussian_model`).

Identifiability. Cross-entropy alone fits the posterior, and with two classes (more generally
with K <= d + 1 classes in d dimensions) different (centres, T) give the same posterior: scaling
the centres about their mean by a and T by a leaves every logit difference unchanged. So CE
with learnable centres *and* T determines only `T / spread(centres)`, not T itself. Two
well-posed versions recover T = 2 sigma^2:

  - `centres="class_means"`: the centres are fixed at the class sample means (the maximum
    likelihood estimates of mu_k) and CE fits T alone;
  - `centres="learned"` with `anchor_weight > 0`: CE plus `anchor_weight * mean ||x - c_y||^2`
    (the class-conditional Gaussian log-likelihood of the centres, a "centre loss"); both terms
    are minimised by (mu, 2 sigma^2) in the population, so the anchor removes the degeneracy
    without biasing it.

With `anchor_weight=0` (CE only) the fitted T depends on the initialisation; the identifiable
combination is reported by `rescaled_temperature` (T rescaled to the class means' spread).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tempscale_tf.layers import TemperatureScaling
from tempscale_tf.validation import check_positive_int, check_temperature

__all__ = [
    "SquaredDistanceLogits",
    "bayes_logits",
    "bayes_temperature",
    "build_gaussian_model",
    "fit_gaussian_model",
    "make_gaussian_clusters",
    "rescaled_temperature",
    "run_gaussian_experiment",
    "two_cluster_means",
]


def bayes_temperature(sigma: float) -> float:
    """`2 sigma^2`: the temperature of the Bayes posterior over squared-distance logits."""
    sigma = check_temperature(sigma, "sigma")
    return 2.0 * sigma * sigma


def two_cluster_means(dim: int = 2, separation: float = 2.0) -> np.ndarray:
    """Means `+-separation/2 * e_1` of two classes in `dim` dimensions, shape `[2, dim]`."""
    dim = check_positive_int(dim, "dim")
    separation = check_temperature(separation, "separation")
    means = np.zeros((2, dim))
    means[0, 0], means[1, 0] = -separation / 2, separation / 2
    return means


def make_gaussian_clusters(num_examples: int, means, sigma: float, seed: int = 0):
    """Samples of the mixture `sum_k (1/K) N(mu_k, sigma^2 I)` (equal priors, balanced labels).

    Args:
      num_examples: n.
      means: `[K, d]` class means.
      sigma: the standard deviation of every class.
      seed: the seed of the samples and the label order.

    Returns:
      (x float32 `[n, d]`, y int32 `[n]`); the labels are a seeded permutation of
      `0..K-1` repeated, so each class has n/K examples (up to one).
    """
    num_examples = check_positive_int(num_examples, "num_examples")
    sigma = check_temperature(sigma, "sigma")
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or means.shape[0] < 2:
        raise ValueError(f"`means` must have shape [num_classes >= 2, dim], got {means.shape}")
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(num_examples) % means.shape[0])
    x = means[y] + sigma * rng.normal(size=(num_examples, means.shape[1]))
    return x.astype(np.float32), y.astype(np.int32)


def bayes_logits(x, means, sigma: float) -> np.ndarray:
    """`-||x - mu_k||^2 / (2 sigma^2)`: `softmax` of these is the Bayes posterior (float64).

    Args:
      x: `[n, d]`.
      means: `[K, d]`.
      sigma: the classes' standard deviation.
    """
    x = np.asarray(x, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    sq = np.sum((x[:, None, :] - means[None]) ** 2, axis=-1)
    return -sq / bayes_temperature(sigma)


@keras.saving.register_keras_serializable(package="tempscale_tf")
class SquaredDistanceLogits(keras.layers.Layer):
    """Logits `l_k(x) = -||x - c_k||^2` with learnable centres `c_k` (`[num_classes, dim]`).

    Divide by a temperature (e.g. `TemperatureScaling`) to get `softmax(l / T)`.

    Args:
      num_classes: number of centres.
      centres_initializer: Keras initializer (or an array `[num_classes, dim]`) for the centres.
      trainable_centres: set False to keep the centres fixed.
    """

    def __init__(
        self, num_classes, centres_initializer="random_normal", trainable_centres=True, **kwargs
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes")
        if isinstance(centres_initializer, np.ndarray):
            centres_initializer = keras.initializers.Constant(centres_initializer.tolist())
        self.centres_initializer = keras.initializers.get(centres_initializer)
        self.trainable_centres = bool(trainable_centres)

    def build(self, input_shape):
        self.centres = self.add_weight(
            name="centres",
            shape=(self.num_classes, input_shape[-1]),
            initializer=self.centres_initializer,
            trainable=self.trainable_centres,
        )

    def call(self, x):
        x = tf.cast(x, tf.float32)
        diff = x[:, None, :] - self.centres[None, :, :]
        return -tf.reduce_sum(tf.square(diff), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            centres_initializer=keras.initializers.serialize(self.centres_initializer),
            trainable_centres=self.trainable_centres,
        )
        return config


def build_gaussian_model(
    num_classes: int,
    dim: int,
    initial_temperature: float = 1.0,
    centres=None,
    learn_centres: bool = True,
    seed: int = 0,
) -> keras.Model:
    """`x -> -||x - c_k||^2 / T`: squared-distance logits divided by a learnable temperature.

    Layers: `squared_distance` (`SquaredDistanceLogits`) and `temperature`
    (`TemperatureScaling(learnable=True)`, stores log T). The output is the tempered logits
    `l / T`; `softmax` of it is the model's posterior.

    Args:
      num_classes: K.
      dim: d.
      initial_temperature: T at initialisation.
      centres: `[K, d]` initial centres (None: random).
      learn_centres: train the centres (else they stay fixed).
      seed: the seed of random centres.
    """
    dim = check_positive_int(dim, "dim")
    initializer = (
        keras.initializers.RandomNormal(stddev=0.5, seed=seed)
        if centres is None
        else np.asarray(centres, dtype=np.float32)
    )
    inputs = keras.Input((dim,), name="x")
    logits = SquaredDistanceLogits(
        num_classes, initializer, trainable_centres=learn_centres, name="squared_distance"
    )(inputs)
    outputs = TemperatureScaling(initial_temperature, learnable=True, name="temperature")(logits)
    return keras.Model(inputs, outputs, name="gaussian_clusters")


def class_means(x, y, num_classes: int) -> np.ndarray:
    """Sample mean of each class, `[num_classes, dim]`.

    Args:
      x: `[n, d]`.
      y: int `[n]`.
      num_classes: K.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    return np.stack([x[y == k].mean(axis=0) for k in range(num_classes)])


def rescaled_temperature(temperature: float, centres, reference_centres) -> float:
    """`T * spread(reference) / spread(centres)`: T expressed at the reference centres' scale.

    Scaling the centres about their mean by a and T by a leaves the posterior unchanged, so this
    is the part of T that cross-entropy determines (spread: Frobenius norm of the centred
    centres). With the class means as reference it estimates `2 sigma^2`.

    Args:
      temperature: the fitted T.
      centres: the fitted centres `[K, d]`.
      reference_centres: the reference centres `[K, d]` (e.g. the class means).
    """
    c = np.asarray(centres, dtype=np.float64)
    r = np.asarray(reference_centres, dtype=np.float64)
    spread = lambda m: np.linalg.norm(m - m.mean(axis=0))
    return float(temperature) * spread(r) / spread(c)


def fit_gaussian_model(
    x,
    y,
    num_classes: int = 2,
    centres: str = "learned",
    anchor_weight: float = 1.0,
    steps: int = 1500,
    learning_rate: float = 0.05,
    initial_temperature: float = 1.0,
    seed: int = 0,
) -> dict:
    """Fit `build_gaussian_model` by full-batch Adam on cross-entropy (see the module docstring).

    Args:
      x, y: data `[n, d]` and integer labels `[n]`.
      centres: "learned" (centres trained) or "class_means" (fixed at the class sample means;
        only T is trained).
      anchor_weight: weight of `mean ||x - c_y||^2` added to the CE for learned centres (0: CE
        only, where T is not identifiable).
      steps, learning_rate: Adam steps (learning rate with cosine decay).
      initial_temperature: the starting T.

    Returns:
      dict with `temperature` (the fitted T), `centres` `[K, d]`, `rescaled_temperature` (T at
      the class means' spread), `class_means`, `train_nll`, and `model`.
    """
    if centres not in ("learned", "class_means"):
        raise ValueError(f"`centres` must be 'learned' or 'class_means', received {centres!r}")
    if not (anchor_weight >= 0):
        raise ValueError(f"`anchor_weight` must be >= 0, received {anchor_weight!r}")
    steps = check_positive_int(steps, "steps")
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int32)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be [n, d] and y [n], received {x.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    means = class_means(x, y, num_classes)
    keras.utils.set_random_seed(seed)
    model = build_gaussian_model(
        num_classes,
        x.shape[1],
        initial_temperature,
        centres=means if centres == "class_means" else None,
        learn_centres=centres == "learned",
        seed=seed,
    )
    anchor = float(anchor_weight) if centres == "learned" else 0.0
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.01)
    optimizer = keras.optimizers.Adam(schedule)
    variables = model.trainable_variables
    optimizer.build(variables)
    distance = model.get_layer("squared_distance")
    xt, yt = tf.constant(x), tf.constant(y)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            squared = distance(xt)  # -||x - c_k||^2
            tempered = model(xt)
            ce = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yt, logits=tempered)
            )
            own = -tf.gather(squared, yt, axis=1, batch_dims=1)  # ||x - c_y||^2
            loss = ce + anchor * tf.reduce_mean(own)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return ce

    for _ in range(steps):
        ce = step()
    fitted_centres = distance.centres.numpy().astype(np.float64)
    temperature = float(model.get_layer("temperature").temperature)
    return {
        "temperature": temperature,
        "centres": fitted_centres,
        "class_means": means,
        "rescaled_temperature": rescaled_temperature(temperature, fitted_centres, means),
        "train_nll": float(ce),
        "model": model,
    }


def _nll(logits, y):
    logits = np.asarray(logits, dtype=np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(y)), y]))


def run_gaussian_experiment(
    sigmas=(0.5, 1.0, 2.0),
    num_train: int = 20_000,
    num_test: int = 20_000,
    dim: int = 2,
    separation: float = 2.0,
    steps: int = 1500,
    anchor_weight: float = 1.0,
    seed: int = 0,
) -> list:
    """For each sigma: fit the three variants and compare T with `2 sigma^2` (one row each).

    Variants: `class_means` (centres fixed at the class means, T by CE), `learned+anchor`
    (centres and T by CE + anchor), `learned, CE only` (not identifiable: raw T and the rescaled
    one). Test NLLs are compared with the Bayes posterior's.

    Args:
      sigmas: the class standard deviations, one row set each.
      num_train: training samples.
      num_test: test samples.
      dim: d.
      separation: the distance between the two class means.
      steps: optimiser steps per fit.
      anchor_weight: weight of the anchor term of "learned+anchor".
      seed: the seed of the data and the fits.
    """
    means = two_cluster_means(dim, separation)
    rows = []
    for i, sigma in enumerate(sigmas):
        x, y = make_gaussian_clusters(num_train, means, sigma, seed=seed + 2 * i)
        x_test, y_test = make_gaussian_clusters(num_test, means, sigma, seed=seed + 2 * i + 1)
        t_true = bayes_temperature(sigma)
        bayes_nll = _nll(bayes_logits(x_test, means, sigma), y_test)
        variants = [
            ("class_means", dict(centres="class_means")),
            ("learned+anchor", dict(centres="learned", anchor_weight=anchor_weight)),
            ("learned, CE only", dict(centres="learned", anchor_weight=0.0)),
        ]
        for name, kwargs in variants:
            fit = fit_gaussian_model(x, y, 2, steps=steps, seed=seed, **kwargs)
            test_logits = fit["model"](x_test).numpy()
            rows.append(
                {
                    "sigma": float(sigma),
                    "T_bayes": t_true,
                    "variant": name,
                    "T_fitted": fit["temperature"],
                    "T_rel_error": fit["temperature"] / t_true - 1.0,
                    "T_rescaled": fit["rescaled_temperature"],
                    "centre_error": float(np.max(np.linalg.norm(fit["centres"] - means, axis=1))),
                    "test_nll": _nll(test_logits, y_test),
                    "bayes_test_nll": bayes_nll,
                }
            )
    return rows
