"""Analyses of trained temperature-scaled runs: gradients, geometry, rank, attacks, OOD, figures.

Convention (as everywhere in `tempscale_tf`): the temperature T *divides* the logits, the loss
is `CE(softmax(z / T), y)`, and the per-sample gradient w.r.t. the logits is
`(softmax(z / T) - y) / T`.

Modules:
  * `features`: test arrays of a run, penultimate features + logits, the final Dense layer.
  * `gradients`: per-sample gradient norms w.r.t. logits and features, hard-sample share.
  * `geometry`: class prototypes, distance / cosine statistics, descent-direction cosines, t-SNE.
  * `rank`: effective rank, numerical rank, accuracy under PCA truncation.
  * `adversarial`: logits before / after PGD.
  * `attack_probe`: one model under several PGD settings and APGD, bfloat16 and float32.
  * `ood`: MSP / max-logit / energy scores, tie-aware AUROC, FPR@95%TPR, OOD sets.
  * `history`: convergence curves from `history.json` (no retraining).
  * `runs`: `analyze_run(workdir)`, everything for one run.
  * `plots`: the figures (Agg).

`launch/analyze.py` runs all of it over several workdirs and writes the figures and a table.
"""

from tempscale_tf.analysis.adversarial import adversarial_logits, true_and_other_logits
from tempscale_tf.analysis.features import (
    evaluation_arrays,
    extract_features,
    head_parameters,
)
from tempscale_tf.analysis.geometry import (
    class_prototypes,
    prototype_direction_cosines,
    prototype_statistics,
    summarize_prototype_statistics,
    tsne_embedding,
)
from tempscale_tf.analysis.gradients import (
    feature_gradients,
    feature_gradients_autodiff,
    gradient_share,
    gradient_statistics,
    hard_mask,
    logit_gradient_norms,
    logit_gradients,
    logit_margin,
    temperature_sweep,
    two_level_gradient_norm,
)
from tempscale_tf.analysis.history import RunKey, convergence_curves, run_key
from tempscale_tf.analysis.ood import (
    auroc,
    energy_score,
    fpr_at_tpr,
    max_logit_score,
    msp_score,
    ood_metrics,
    ood_scores,
    ood_sets,
)
from tempscale_tf.analysis.rank import (
    effective_rank,
    effective_rank_from_singular_values,
    numerical_rank,
    projected_accuracies,
    singular_values,
    smallest_k_within,
)
from tempscale_tf.analysis.runs import RunAnalysis, analyze_run, representatives

__all__ = [
    "RunAnalysis",
    "RunKey",
    "adversarial_logits",
    "analyze_run",
    "auroc",
    "class_prototypes",
    "convergence_curves",
    "effective_rank",
    "effective_rank_from_singular_values",
    "energy_score",
    "evaluation_arrays",
    "extract_features",
    "feature_gradients",
    "feature_gradients_autodiff",
    "fpr_at_tpr",
    "gradient_share",
    "gradient_statistics",
    "hard_mask",
    "head_parameters",
    "logit_gradient_norms",
    "logit_gradients",
    "logit_margin",
    "max_logit_score",
    "msp_score",
    "numerical_rank",
    "ood_metrics",
    "ood_scores",
    "ood_sets",
    "projected_accuracies",
    "prototype_direction_cosines",
    "prototype_statistics",
    "representatives",
    "run_key",
    "singular_values",
    "smallest_k_within",
    "summarize_prototype_statistics",
    "temperature_sweep",
    "true_and_other_logits",
    "tsne_embedding",
    "two_level_gradient_norm",
]
