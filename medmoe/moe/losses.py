"""Auxiliary losses that shape how a mixture of experts uses its experts.

Explained in the book: *Chapter 0, the MoE primer* ("what the balance and diversity losses do to expert
load"). Used by Chapter 1 (MLMoE: :func:`diversity_loss`) and Chapter 3 (SegMoTE: :func:`cv_squared`,
:func:`importance_load_loss`). :func:`switch_balance_loss` and :func:`router_z_loss` are the
Switch-Transformer / ST-MoE losses, kept for the primer's comparison.

All functions take gate outputs shaped ``(..., N)`` (N experts); every leading position counts as one
routed input ("sample" for MLMoE's per-image gate, "token" for SegMoTE's per-token gate).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from medmoe.utils import check_rank

__all__ = [
    "entropy",
    "diversity_loss",
    "cv_squared",
    "BalanceTerms",
    "importance_load_loss",
    "switch_balance_loss",
    "router_z_loss",
]


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    check_rank(x, tuple(range(1, 6)), name)
    if x.ndim == 1:
        raise ValueError(f"{name} must be (..., N) with at least one routed input, got shape {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1])


def entropy(p: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Shannon entropy in nats, ``H(p) = -sum_i p_i log p_i`` along ``dim`` (``0 log 0 = 0``)."""
    return -(p * p.clamp_min(eps).log()).sum(dim)


def diversity_loss(probs: torch.Tensor) -> torch.Tensor:
    """MLMoE's diversity loss ``L_div = E_x[H(g)] - H(E_x[g])`` (MLMoE Sec. II-B, after Eq. (5)).

    The first term is low when each sample concentrates its gate on few experts; the second rewards a
    batch-average gate spread over all experts. The minimum, ``-log N``, is reached by one-hot gates
    that use every expert equally often; a gate that sends everything to one expert scores 0, and so
    does a uniform gate.

    Args:
        probs: ``(B, N)`` (or ``(..., N)``) gate probabilities that sum to 1 over the last dimension.

    Returns:
        A scalar. The expectation ``E_x`` is the mean over all leading positions (the mini-batch).

    Example:
        >>> float(diversity_loss(torch.eye(2)))  # one-hot, both experts used: -log 2
        -0.6931...
    """
    g = _rows(probs, "probs")
    return entropy(g).mean() - entropy(g.mean(0))


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``CV^2 = var(x) / (mean(x)^2 + eps)`` (SegMoTE Eq. (9)).

    The variance is the unbiased one (``torch.var``'s default), as in SegMoTE's and Shazeer's code; the
    paper's ``std(x)^2`` does not say which. A single value has no spread: returns 0.

    Example:
        >>> float(cv_squared(torch.tensor([1.0, 3.0])))  # var 2, mean 2 -> 0.5
        0.5
    """
    check_rank(x, 1, "x")
    if x.numel() <= 1:
        return x.new_zeros(())
    x = x.float()
    return x.var() / (x.mean() ** 2 + eps)


class BalanceTerms(NamedTuple):
    """The SegMoTE load-balancing loss and its parts.

    Attributes:
        loss: ``CV^2(importance) + CV^2(load)`` (scalar).
        importance: ``(N,)`` summed gate weight per expert.
        load: ``(N,)`` number of routed inputs with a non-zero gate per expert (no gradient).
    """

    loss: torch.Tensor
    importance: torch.Tensor
    load: torch.Tensor


def importance_load_loss(weights: torch.Tensor) -> BalanceTerms:
    """SegMoTE's load-balancing loss, Eq. (7)-(8): ``L = CV^2(imp) + CV^2(load)``.

    Eq. (7): ``imp_e = sum_{b,t} G_{b,t,e}`` and ``load_e = sum_{b,t} 1(G_{b,t,e} > 0)`` -- summed over the
    batch **and** the tokens, as the paper writes it (one public version of the code sums importance over
    the batch only; see the SegMoTE chapter). The load term is a count, so it carries no gradient; the
    importance term does (through the gate weights).

    Args:
        weights: ``(B, T, N)`` or ``(B, N)`` combine weights (``GateOutput.weights``), zero where an expert
            was not selected.

    Example:
        >>> w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> t = importance_load_loss(w)
        >>> t.importance.tolist(), t.load.tolist(), round(float(t.loss), 4)
        ([2.0, 1.0], [2.0, 1.0], 0.4444)
    """
    g = _rows(weights, "weights")
    importance = g.sum(0)
    load = (g > 0).to(g.dtype).sum(0)
    return BalanceTerms(cv_squared(importance) + cv_squared(load), importance, load)


def switch_balance_loss(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Switch Transformer balance loss ``N * sum_i f_i * P_i`` (Fedus et al. 2022, Eq. (4)).

    ``f_i`` is the fraction of routed inputs whose first choice is expert i, ``P_i`` the mean router
    probability of expert i (full softmax). Equals 1 for perfectly balanced routing, N when one expert takes
    everything with certainty. Gradient flows through ``P`` only.

    Args:
        probs: ``(..., N)`` full softmax router probabilities (``GateOutput.probs``).
        indices: ``(..., k)`` or ``(...)`` chosen experts; the first choice is used.

    Example:
        >>> p = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
        >>> float(switch_balance_loss(p, torch.tensor([0, 1])))
        1.0
    """
    p = _rows(probs, "probs")
    n = p.shape[-1]
    first = indices[..., 0] if indices.ndim == probs.ndim else indices
    first = first.reshape(-1)
    if first.shape[0] != p.shape[0]:
        raise ValueError(f"indices {tuple(indices.shape)} do not match probs {tuple(probs.shape)}")
    f = torch.bincount(first.long(), minlength=n).to(p.dtype) / first.shape[0]
    return n * (f * p.mean(0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss ``mean_x (log sum_i exp(l_i))^2`` (Zoph et al. 2022, ST-MoE Eq. (5)).

    Penalises large router logits, which keeps the softmax numerically stable.

    Example:
        >>> float(router_z_loss(torch.zeros(3, 2)))  # logsumexp = log 2
        0.4804...
    """
    z = _rows(logits, "logits")
    return (torch.logsumexp(z.float(), dim=-1) ** 2).mean()
