"""The shared MoE vocabulary every chapter is written in (book: Chapter 0, the MoE primer).

* :mod:`~medmoe.moe.gates` -- :class:`SoftGate` (MLMoE), :class:`NoisyTopKGate` (SegMoTE), :class:`HardRouter` (MedMoE)
* :mod:`~medmoe.moe.dispatch` -- group inputs by expert, run each expert on its share, combine
* :mod:`~medmoe.moe.losses` -- diversity, CV^2 importance/load, Switch balance, router z-loss
* :mod:`~medmoe.moe.stats` -- load, gate entropy, routing-vs-label mutual information and its permutation baseline
"""

from medmoe.moe.dispatch import DispatchPlan, dispatch_combine, plan_dispatch
from medmoe.moe.gates import GateOutput, HardRouter, NoisyTopKGate, SoftGate
from medmoe.moe.losses import (
    BalanceTerms,
    cv_squared,
    diversity_loss,
    entropy,
    importance_load_loss,
    router_z_loss,
    switch_balance_loss,
)
from medmoe.moe.stats import (
    PermutationBaseline,
    contingency,
    expert_load,
    gate_entropy,
    mutual_information,
    nmi_null,
    nmi_permutation_baseline,
    normalized_mutual_information,
)

__all__ = [
    "GateOutput", "SoftGate", "NoisyTopKGate", "HardRouter",
    "DispatchPlan", "plan_dispatch", "dispatch_combine",
    "entropy", "diversity_loss", "cv_squared", "BalanceTerms", "importance_load_loss",
    "switch_balance_loss", "router_z_loss",
    "expert_load", "gate_entropy", "contingency", "mutual_information", "normalized_mutual_information",
    "PermutationBaseline", "nmi_permutation_baseline", "nmi_null",
]
