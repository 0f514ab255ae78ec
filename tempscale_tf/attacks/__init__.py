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

# AutoAttack (Croce & Hein, 2020): APGD, FAB, Square Attack and the ensemble.
from tempscale_tf.attacks.apgd import apgd, apgd_checkpoints, apgd_targeted  # noqa: E402
from tempscale_tf.attacks.autoattack import (  # noqa: E402
    AutoAttackResult,
    autoattack,
    autoattack_attacks,
    per_attack_accuracy,
)
from tempscale_tf.attacks.fab import FABResult, fab  # noqa: E402
from tempscale_tf.attacks.square import square_attack  # noqa: E402

__all__ += [
    "AutoAttackResult",
    "FABResult",
    "apgd",
    "apgd_checkpoints",
    "apgd_targeted",
    "autoattack",
    "autoattack_attacks",
    "fab",
    "per_attack_accuracy",
    "square_attack",
]
