"""Routing statistics: what did the experts actually do?

Explained in the book: *Chapter 0, the MoE primer* ("expert specialisation measured as mutual
information"). Every chapter uses them to report per-expert load and whether routing follows a known
label (MedMoE: the router's choice vs the modality; SegMoTE: the selected expert token vs the dataset).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from medmoe.moe.losses import entropy
from medmoe.utils import check_rank

__all__ = [
    "PermutationBaseline",
    "nmi_permutation_baseline",
    "nmi_null",
    "expert_load",
    "gate_entropy",
    "contingency",
    "mutual_information",
    "normalized_mutual_information",
]


def expert_load(indices: torch.Tensor, num_experts: int, *, normalize: bool = True) -> torch.Tensor:
    """Per-expert load: how many routed inputs chose each expert (first choice).

    Args:
        indices: ``(...,)`` or ``(..., k)`` chosen experts (``GateOutput.indices``); with ``k > 1`` every
            choice counts.
        num_experts: N.
        normalize: return fractions summing to 1 instead of counts.

    Example:
        >>> expert_load(torch.tensor([0, 0, 2, 0]), 3).tolist()
        [0.75, 0.0, 0.25]
    """
    flat = indices.reshape(-1).long()
    if flat.numel() == 0:
        raise ValueError("indices is empty: no routing decisions to count")
    if int(flat.min()) < 0 or int(flat.max()) >= num_experts:
        raise ValueError(f"indices must lie in [0, {num_experts}), got [{int(flat.min())}, {int(flat.max())}]")
    counts = torch.bincount(flat, minlength=num_experts).double()
    return counts / counts.sum() if normalize else counts


def gate_entropy(probs: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
    """Mean per-input entropy of the gate distribution ``(..., N)`` in nats.

    0 for a gate that always picks one expert with certainty, ``log N`` for a uniform gate;
    ``normalize=True`` divides by ``log N`` (so 1 = uniform).
    """
    check_rank(probs, tuple(range(1, 6)), "probs")
    h = entropy(probs.reshape(-1, probs.shape[-1]).double()).mean()
    n = probs.shape[-1]
    return h / math.log(n) if normalize and n > 1 else h


def contingency(
    a: torch.Tensor, b: torch.Tensor, *, num_a: int | None = None, num_b: int | None = None
) -> torch.Tensor:
    """Count table ``C[i, j] = #{x : a(x) = i, b(x) = j}`` for two integer labelings of the same inputs."""
    a, b = a.reshape(-1).long(), b.reshape(-1).long()
    if a.shape != b.shape:
        raise ValueError(f"a and b must label the same inputs, got {a.numel()} and {b.numel()} values")
    if a.numel() == 0:
        raise ValueError("a and b are empty")
    if int(a.min()) < 0 or int(b.min()) < 0:
        raise ValueError("labels must be non-negative integers")
    na = num_a or int(a.max()) + 1
    nb = num_b or int(b.max()) + 1
    return torch.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).double()


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plug-in mutual information ``I(A; B)`` in nats between two discrete labelings.

    ``I = sum_ij p_ij log(p_ij / (p_i. p_.j))`` from the empirical joint distribution. Use it between the
    routing decision and a known label (modality, source dataset): 0 means routing ignores the label,
    ``H(label)`` means the label can be read off the routing. The plug-in estimate is biased upwards on
    small samples; compare against a random-routing baseline of the same size.

    Example:
        >>> float(mutual_information(torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 0, 0])))  # log 2
        0.6931...
    """
    joint = contingency(a, b)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    return (p[nz] * (p[nz] / (pa @ pb)[nz]).log()).sum()


def normalized_mutual_information(routing: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``I(routing; label) / H(label)`` in [0, 1]: the fraction of the label's information the routing carries.

    Returns 0 when the label is constant (nothing to explain).
    """
    h = entropy(contingency(label, label).diagonal() / label.numel())
    if float(h) == 0.0:
        return h.new_zeros(())
    return mutual_information(routing, label) / h


class PermutationBaseline(NamedTuple):
    """NMI of a routing against its chance level (:func:`nmi_permutation_baseline`)."""

    nmi: float
    """``normalized_mutual_information(routing, label)`` of the real routing."""
    chance_mean: float
    """Mean NMI of the same routing decisions shuffled over the inputs."""
    chance_p95: float
    """95th percentile of the shuffled NMIs: a real NMI above it is unlikely to be chance (one-sided, 5 %)."""
    null: tuple[float, ...] = ()
    """The shuffled NMIs themselves (:func:`nmi_null`), e.g. for :func:`medmoe.claims.chance_from_null`."""


def nmi_null(routing: torch.Tensor, label: torch.Tensor, *, n_perm: int = 100, seed: int = 0) -> list[float]:
    """The permutation null of :func:`normalized_mutual_information`: the same routing decisions (same expert
    counts) shuffled over the inputs ``n_perm`` times with a ``torch.Generator`` seeded by ``seed``.

    The one implementation of the book's NMI chance level: :func:`nmi_permutation_baseline` summarises these
    values, and the chapters average them over seeds (the null of a mean NMI).

    Raises:
        ValueError: ``n_perm < 1``, or ``routing`` and ``label`` label different numbers of inputs.

    Example:
        >>> r = torch.tensor([0, 1] * 16)
        >>> null = nmi_null(r, r, n_perm=20)
        >>> len(null), max(null) < 1.0
        (20, True)
    """
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    routing, label = routing.reshape(-1), label.reshape(-1)
    if routing.numel() != label.numel():
        raise ValueError(f"routing and label must label the same inputs, got {routing.numel()} and {label.numel()}")
    g = torch.Generator().manual_seed(seed)
    return [float(normalized_mutual_information(routing[torch.randperm(routing.numel(), generator=g)], label))
            for _ in range(n_perm)]


def nmi_permutation_baseline(routing: torch.Tensor, label: torch.Tensor, *, n_perm: int = 100,
                             seed: int = 0) -> PermutationBaseline:
    """:func:`normalized_mutual_information` against a permutation baseline: the same routing decisions (same
    expert counts) shuffled over the inputs ``n_perm`` times with a ``torch.Generator`` seeded by ``seed``.

    The plug-in NMI is biased upwards on small samples; the baseline has the same bias, so only the gap means
    specialisation.

    Raises:
        ValueError: ``n_perm < 1``, or ``routing`` and ``label`` label different numbers of inputs.

    Example:
        >>> r = torch.tensor([0, 0, 1, 1] * 8)
        >>> b = nmi_permutation_baseline(r, r, n_perm=50)
        >>> b.nmi, b.chance_mean < 0.2
        (1.0, True)
    """
    shuffled = nmi_null(routing, label, n_perm=n_perm, seed=seed)  # validates n_perm and the sizes
    real = float(normalized_mutual_information(routing.reshape(-1), label.reshape(-1)))
    return PermutationBaseline(real, float(np.mean(shuffled)), float(np.percentile(shuffled, 95)), tuple(shuffled))
