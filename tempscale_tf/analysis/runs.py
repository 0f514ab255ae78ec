"""Every analysis of one trained run, from its workdir (checkpoint + config), on its test split.

`analyze_run(workdir)` loads the run with `training.load_run` (nothing is retrained), extracts the
penultimate features and logits of (a seeded sample of) the test split, and computes the gradient,
geometry, rank, PGD and OOD analyses of `tempscale_tf.analysis`. The result keeps the arrays the
figures need and a flat dict of scalar metrics (one table row). The temperature T is the run's
training temperature and always divides the logits (`softmax(z / T)`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
from absl import logging

from tempscale_tf.analysis import adversarial, features, geometry, gradients, history, ood, rank

DEFAULT_SWEEP_TEMPERATURES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclasses.dataclass
class RunAnalysis:
    """Arrays and scalar metrics of one run (see `analyze_run`)."""

    workdir: str
    key: history.RunKey
    seed: int
    labels: np.ndarray
    features: np.ndarray
    logits: np.ndarray
    margins: np.ndarray
    logit_grad_norms: np.ndarray
    feature_grad_norms: np.ndarray
    direction_cosines: np.ndarray
    sweep: dict
    prototype_stats: dict
    rank_ks: np.ndarray
    rank_accuracies: np.ndarray
    clean_logits: np.ndarray | None
    adversarial_logits: np.ndarray | None
    ood_scores: dict  # {set name or "in": {score name: [n] scores}}
    ood_skipped: dict
    tsne: tuple | str | None  # (embedding [n, 2], indices [n]), or why not (str), or None
    metrics: dict

    @property
    def name(self) -> str:
        return pathlib.Path(self.workdir).name

    @property
    def temperature(self) -> float:
        return self.key.temperature


def analyze_run(
    workdir,
    *,
    max_examples=None,
    seed: int = 0,
    eps: float = 8 / 255,
    pgd_steps: int = 10,
    pgd_step_size=None,
    pgd_loss: str = "ce",
    tsne_examples: int = 1000,
    sweep_temperatures=DEFAULT_SWEEP_TEMPERATURES,
    ood_set_names=None,
    data_dir=None,
    batch_size: int = 256,
    quantile: float = 0.25,
    model_and_config=None,
) -> RunAnalysis:
    """Compute every analysis of the run in `workdir`.

    An outline on purpose: one pass over the run's arrays, one short block per analysis (each a
    call into `gradients`, `geometry`, `rank`, `adversarial`, `ood`), in the metrics' order.

    Args:
      workdir: a `training.train` workdir (config.json, checkpoints/, history.json).
      max_examples: analyse a fixed seeded sample of this many test examples (None: all).
      seed: seed of the sample, the t-SNE, the PGD random start and the noise OOD set.
      eps, pgd_steps, pgd_step_size, pgd_loss: L-inf PGD at the training temperature
        (`eps=0` skips the attack). step size default eps / 4.
      tsne_examples: examples embedded by t-SNE (0 skips it).
      sweep_temperatures: loss temperatures of the fixed-logits gradient sweep (the training
        temperature is added).
      ood_set_names: OOD sets (default `ood.default_ood_sets(dataset)`); sets whose files are
        missing are skipped and logged.
      data_dir: overrides the run's `data_dir`.
      batch_size: inference / attack batch size.
      quantile: fraction of lowest-margin samples called hard.
      model_and_config: an already loaded `(model, config)` (default `training.load_run`).
    """
    from tempscale_tf import training

    model, config = model_and_config or training.load_run(workdir)
    key = history.run_key(config)
    t = key.temperature
    images, labels = features.evaluation_arrays(config, None, max_examples, seed, data_dir)
    feats, logits = features.extract_features(model, images, batch_size)
    kernel, bias = features.head_parameters(model)
    acc = features.accuracy(logits, labels)
    num_classes = logits.shape[1]

    # Gradients at the training temperature.
    margins = gradients.logit_margin(logits, labels)
    logit_norms = gradients.logit_gradient_norms(logits, labels, t)
    feat_grads = gradients.feature_gradients(logits, labels, kernel, t)
    feat_norms = np.linalg.norm(feat_grads, axis=-1)
    autodiff_error = _autodiff_error(model, feats, labels, t, feat_grads)
    grad_stats = gradients.gradient_statistics(logits, labels, t, kernel, quantile)
    sweep_temperatures = sorted({float(x) for x in sweep_temperatures} | {t})
    sweep = gradients.temperature_sweep(logits, labels, sweep_temperatures, quantile)

    # Geometry around the class prototypes (class means of this evaluation set).
    prototypes = geometry.class_prototypes(feats, labels, num_classes)
    proto_stats = geometry.prototype_statistics(feats, labels, prototypes)
    proto_summary = geometry.summarize_prototype_statistics(proto_stats)
    cosines = geometry.prototype_direction_cosines(feats, labels, feat_grads, prototypes)
    tsne = _tsne(feats, tsne_examples, seed, workdir) if tsne_examples else None

    # Rank.
    ks, accs = rank.projected_accuracies(feats, labels, kernel, bias)
    k_within = rank.smallest_k_within(ks, accs, acc, 0.01)

    # PGD.
    clean = adv = None
    adv_acc = math.nan
    if eps > 0 and pgd_steps > 0:
        clean, adv = adversarial.adversarial_logits(
            model, images, labels, t, eps, pgd_steps, pgd_step_size, pgd_loss, batch_size, seed
        )
        adv_acc = features.accuracy(adv, labels)

    # OOD.
    names = tuple(ood_set_names or ood.default_ood_sets(config.dataset))
    data_dir = data_dir or config.data_dir or None
    scores, skipped, ood_rows = _ood(model, images, logits, t, names, data_dir, batch_size, seed)
    for name, reason in skipped.items():
        logging.warning("%s: OOD set %s skipped (%s)", workdir, name, reason)

    metrics = {
        "run": pathlib.Path(workdir).name,
        **_settings(config, key, workdir),
        "examples": len(labels),
        "accuracy": acc,
        "pgd_accuracy": adv_acc,
        **_rank_metrics(feats, logits, k_within),
        **_geometry_metrics(proto_summary, cosines, margins, quantile),
        **_gradient_metrics(grad_stats, autodiff_error),
        **ood_rows,
    }
    return RunAnalysis(
        workdir=str(workdir),
        key=key,
        seed=int(config.seed),
        labels=labels,
        features=feats,
        logits=logits,
        margins=margins,
        logit_grad_norms=logit_norms,
        feature_grad_norms=feat_norms,
        direction_cosines=cosines,
        sweep=sweep,
        prototype_stats=proto_stats,
        rank_ks=ks,
        rank_accuracies=accs,
        clean_logits=clean,
        adversarial_logits=adv,
        ood_scores=scores,
        ood_skipped=skipped,
        tsne=tsne,
        metrics=metrics,
    )


def _autodiff_error(model, feats, labels, temperature, feature_grads) -> float:
    """Relative max error of the closed-form feature gradients against autodiff."""
    head = model.get_layer("logits")
    autodiff = gradients.feature_gradients_autodiff(head, feats, labels, temperature)
    scale = max(np.max(np.abs(feature_grads)), 1e-30)
    return float(np.max(np.abs(autodiff - feature_grads)) / scale)


def _tsne(feats, examples, seed, workdir):
    """The t-SNE embedding, or the reason as a string when the features collapsed."""
    try:
        return geometry.tsne_embedding(feats, examples, seed)
    except ValueError as e:
        logging.warning("%s: no t-SNE (%s)", workdir, e)
        return str(e)


def _ood(model, images, logits, temperature, names, data_dir, batch_size, seed):
    """(scores per set, skipped sets with the reason, AUROC / FPR@95 columns)."""
    sets, skipped = ood.ood_sets(names, images, data_dir, None, seed)
    scores = {"in": ood.ood_scores(logits, temperature)}
    rows = {}
    for name, ood_images in sets.items():
        _, ood_logits = features.extract_features(model, ood_images, batch_size)
        scores[name] = ood.ood_scores(ood_logits, temperature)
        for score in ood.SCORES:
            inside, outside = scores["in"][score], scores[name][score]
            rows[f"ood_{name}_{score}_auroc"] = ood.auroc(inside, outside)
            rows[f"ood_{name}_{score}_fpr95"] = ood.fpr_at_tpr(inside, outside)
    return scores, skipped, rows


def _settings(config, key, workdir) -> dict:
    from tempscale_tf import training

    lr, weight_decay = training.effective_hparams(config)
    return {
        "dataset": key.dataset,
        "model": key.model,
        "temperature": key.temperature,
        "lr": key.lr,
        "lr_x_T": key.scaled_lr,
        "effective_lr": lr,
        "weight_decay": weight_decay,
        "seed": int(config.seed),
        "epochs_trained": len(history.read_run(workdir)[1]),
    }


def _rank_metrics(feats, logits, k_within) -> dict:
    return {
        "feature_dim": feats.shape[1],
        "erank_features": rank.effective_rank(feats),
        "erank_logits": rank.effective_rank(logits),
        "nrank_features": rank.numerical_rank(feats),
        "nrank_logits": rank.numerical_rank(logits),
        "k_within_1pt": k_within if k_within is not None else math.nan,
    }


def _geometry_metrics(proto_summary, cosines, margins, quantile) -> dict:
    hard = gradients.hard_mask(margins, "quartile", quantile)
    return {
        "proto_dist_mean": proto_summary["distance_mean"],
        "proto_dist_var": proto_summary["distance_var"],
        "proto_rel_dist_mean": proto_summary["relative_distance_mean"],
        "proto_cos_mean": proto_summary["cosine_mean"],
        "proto_cos_var": proto_summary["cosine_var"],
        "dir_cos_mean": float(cosines.mean()),
        "dir_cos_hard_mean": float(cosines[hard].mean()),
    }


def _gradient_metrics(grad_stats, autodiff_error) -> dict:
    names = (
        "logit_norm_mean",
        "logit_norm_median",
        "logit_norm_hard_median",
        "logit_norm_easy_median",
        "feature_norm_mean",
    )
    row = {f"grad_{name}": grad_stats[name] for name in names}
    for name in ("hard_share", "feature_hard_share", "misclassified_share"):
        row[name] = grad_stats[name]
    row["grad_autodiff_rel_err"] = autodiff_error
    return row


def representatives(analyses):
    """One analysis per `RunKey` (the lowest seed), sorted by key: the runs shown in per-run
    figures (the metrics table lists every run)."""
    best = {}
    for a in analyses:
        if a.key not in best or a.seed < best[a.key].seed:
            best[a.key] = a
    return [best[k] for k in sorted(best)]
