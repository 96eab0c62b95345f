"""Dispatch and combine: run each expert on its share of the inputs only.

Explained in the book: *Chapter 0, the MoE primer* ("what sparse routing saves"); used by Chapter 2
(MedMoE's hard top-1 routing, where inference costs one expert whatever the number of experts) and
Chapter 3 (SegMoTE's token experts).

The inputs are grouped by expert with index operations -- a stable sort of the ``(input, slot)``
assignments by expert id and a split by per-expert counts -- never with a dense ``(inputs x experts)``
one-hot matrix, and the outputs are scattered back with ``index_add_``. No input is dropped (no capacity
limit): every assignment is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Union

import torch

from medmoe.utils import check_rank

__all__ = ["DispatchPlan", "plan_dispatch", "dispatch_combine"]

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


class DispatchPlan(NamedTuple):
    """Which inputs go to which expert.

    Attributes:
        input_index: ``(A,)`` the input (row) of each assignment, grouped by expert (A = inputs x k).
        slot: ``(A,)`` which of the k choices of that input the assignment is.
        counts: ``(N,)`` assignments per expert (int64); ``counts.sum() == A``.
    """

    input_index: torch.Tensor
    slot: torch.Tensor
    counts: torch.Tensor

    def split(self) -> list[torch.Tensor]:
        """``input_index`` split into one tensor per expert (possibly empty)."""
        return list(torch.split(self.input_index, self.counts.tolist()))


def plan_dispatch(indices: torch.Tensor, num_experts: int) -> DispatchPlan:
    """Group inputs by the experts they were routed to.

    Args:
        indices: ``(M, k)`` expert ids per input (``GateOutput.indices`` flattened to rows), or ``(M,)``.
        num_experts: N; every id must be in ``[0, N)``.

    Example:
        >>> plan = plan_dispatch(torch.tensor([[2], [0], [2]]), num_experts=3)
        >>> plan.counts.tolist(), [t.tolist() for t in plan.split()]
        ([1, 0, 2], [[1], [], [0, 2]])
    """
    if indices.ndim == 1:
        indices = indices[:, None]
    check_rank(indices, 2, "indices")
    if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_experts):
        raise ValueError(
            f"indices must lie in [0, {num_experts}), got values in [{int(indices.min())}, {int(indices.max())}]"
        )
    m, k = indices.shape
    flat = indices.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    return DispatchPlan(input_index=order // k, slot=order % k, counts=counts)


def dispatch_combine(
    x: Inputs,
    experts: Sequence[Callable[..., torch.Tensor]],
    indices: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run every input through the experts it was routed to and combine: ``y_m = sum_j w_mj * E_{i_mj}(x_m)``.

    Args:
        x: ``(M, ...)`` inputs, or a sequence of tensors that all have M rows (e.g. the four scales a
            MedMoE expert fuses); expert i is called as ``experts[i](*rows)`` on its rows only.
        experts: N callables (usually ``nn.Module``) with the same output shape per row.
        indices: ``(M, k)`` expert ids (``GateOutput.indices``).
        weights: ``(M, N)`` combine weights (``GateOutput.weights``) or ``None`` for weight 1. Gradients
            flow into them, so a gate with differentiable weights learns from the task loss.

    Returns:
        ``(y, counts)``: ``y`` of shape ``(M, *expert_output_shape)`` and per-expert assignment counts ``(N,)``.
        Experts that receive nothing are not called. Experts that return a tuple of tensors (e.g. MedMoE's fused
        features and scale weights) give a tuple ``y``, each element combined the same way.

    Example:
        >>> experts = [torch.nn.Linear(4, 2) for _ in range(3)]
        >>> y, counts = dispatch_combine(torch.randn(5, 4), experts, torch.tensor([[0], [2], [2], [0], [0]]))
        >>> y.shape, counts.tolist()
        (torch.Size([5, 2]), [3, 0, 2])
    """
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)
    if not xs:
        raise ValueError("dispatch_combine needs at least one input tensor")
    if indices.ndim == 1:
        indices = indices[:, None]
    m = indices.shape[0]
    for j, t in enumerate(xs):
        if t.shape[0] != m:
            raise ValueError(f"input {j} has {t.shape[0]} rows but indices has {m} rows (shape {tuple(indices.shape)})")
    if weights is not None and (weights.ndim != 2 or weights.shape != (m, len(experts))):
        raise ValueError(f"weights must have shape ({m}, {len(experts)}), got {tuple(weights.shape)}")
    plan = plan_dispatch(indices, len(experts))
    out: list[torch.Tensor] | None = None
    single = True
    for e, rows in enumerate(plan.split()):
        if rows.numel() == 0:
            continue
        ys = experts[e](*(t[rows] for t in xs))
        single = isinstance(ys, torch.Tensor)
        ys = (ys,) if single else tuple(ys)
        if weights is not None:
            ys = tuple(y * weights[rows, e].to(y.dtype).reshape(-1, *([1] * (y.ndim - 1))) for y in ys)
        if out is None:
            out = [y.new_zeros((m, *y.shape[1:])) for y in ys]
        out = [o.index_add(0, rows, y) for o, y in zip(out, ys)]
    if out is None:  # no inputs at all
        raise ValueError("dispatch_combine got zero inputs; nothing to compute")
    return (out[0] if single else tuple(out)), plan.counts
