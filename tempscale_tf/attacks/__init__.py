"""Adversarial attacks: PGD (L-inf / L2; CE, margin, DLR), C&W-L2, and a worst-case ensemble.

Note: `tempscale_tf.attacks.pgd` is the `pgd` *function*; the module that defines it is
`sys.modules["tempscale_tf.attacks.pgd"]` (`from tempscale_tf.attacks.pgd import ...` works).
"""

from tempscale_tf.attacks.cw import CWResult, carlini_wagner_l2
from tempscale_tf.attacks.ensemble import (
    RobustnessReport,
    WorstCaseResult,
    default_attacks,
    robust_accuracy_dataset,
    targeted_top_k,
    worst_case,
)
from tempscale_tf.attacks.pgd import cw_linf, pgd

__all__ = [
    "CWResult",
    "RobustnessReport",
    "WorstCaseResult",
    "carlini_wagner_l2",
    "cw_linf",
    "default_attacks",
    "pgd",
    "robust_accuracy_dataset",
    "targeted_top_k",
    "worst_case",
]
