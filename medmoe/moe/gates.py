"""Gates: how a mixture of experts decides which experts see an input.

Explained in the book: *Chapter 0, the MoE primer* (soft vs noisy top-k vs hard routing), and used by
Chapter 1 (MLMoE, :class:`SoftGate`), Chapter 2 (MedMoE, :class:`HardRouter`) and Chapter 3 (SegMoTE,
:class:`NoisyTopKGate`).

Shape letters used in the docstrings:

* ``B`` -- samples (or any number of leading dimensions, e.g. batch x tokens),
* ``D`` -- input width,
* ``N`` -- number of experts,
* ``k`` -- experts selected per input.

Every gate returns a :class:`GateOutput`, so the dispatch helper, the losses and the statistics in
:mod:`medmoe.moe` work the same way for all three.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from medmoe.utils import check_rank

__all__ = ["GateOutput", "SoftGate", "NoisyTopKGate", "HardRouter"]


class GateOutput(NamedTuple):
    """What a gate decided.

    Attributes:
        weights: ``(..., N)`` combine weights; zero for experts that were not selected, so
            ``sum_i weights[..., i] * expert_i(x)`` is the mixture output.
        probs: ``(..., N)`` softmax over all N experts of the logits used for the decision (for the
            balance losses and the statistics).
        logits: ``(..., N)`` logits used for the decision (noisy ones for :class:`NoisyTopKGate` in training).
        indices: ``(..., k)`` selected experts, best first. For :class:`SoftGate`, which combines every
            expert, this is the top-1 expert, kept for routing statistics.
    """

    weights: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor
    indices: torch.Tensor


def _check_num_experts(num_experts: int) -> None:
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")


def _check_features(x: torch.Tensor, width: int, name: str) -> None:
    check_rank(x, tuple(range(2, 6)), name)
    if x.shape[-1] != width:
        raise ValueError(f"{name} must have width (last dimension) {width}, got shape {tuple(x.shape)}")


class SoftGate(nn.Module):
    """Dense softmax gate with a learnable temperature, conditioned on concatenated inputs.

    MLMoE, Eq. (3): ``s = Psi(f_t (+) f_v)`` with ``Psi`` a linear layer to N outputs and
    ``g_i = exp(s_i / tau) / sum_j exp(s_j / tau)``, ``tau`` a learnable scalar. The temperature is
    parameterised as ``tau = exp(log_tau)`` so it stays positive (an implementation choice; the paper only
    says "learnable"). With ``learn_temperature=False`` the gate is the paper's "w/o tau" ablation
    (Table II): ``tau`` is fixed to ``init_temperature`` (1 by default), i.e. plain ``softmax(s)``.

    Args:
        in_features: the width of each input, in the order they are passed to :meth:`forward`
            (e.g. ``(768, 384)`` for pooled text and pooled visual features). An ``int`` means one input.
        num_experts: N.
        learn_temperature: learn ``tau`` (default) or keep it fixed.
        init_temperature: initial ``tau``; must be positive.

    Shapes:
        inputs: each ``(B, D_i)`` (or ``(B, T, D_i)``; all with the same leading dimensions).
        output: :class:`GateOutput` with ``weights == probs``, both ``(B, N)``, summing to 1.

    Example:
        >>> gate = SoftGate(in_features=(8, 4), num_experts=3)
        >>> out = gate(torch.randn(2, 8), torch.randn(2, 4))
        >>> out.weights.shape, round(out.weights.sum(-1)[0].item(), 6)
        (torch.Size([2, 3]), 1.0)
    """

    def __init__(
        self,
        *,
        in_features: int | Sequence[int],
        num_experts: int,
        learn_temperature: bool = True,
        init_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        _check_num_experts(num_experts)
        widths = (in_features,) if isinstance(in_features, int) else tuple(in_features)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"in_features must be positive ints, got {in_features!r}")
        if not init_temperature > 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        self.in_widths = widths
        self.num_experts = num_experts
        self.proj = nn.Linear(sum(widths), num_experts)
        log_tau = torch.tensor(math.log(init_temperature))
        if learn_temperature:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    @property
    def temperature(self) -> torch.Tensor:
        """``tau = exp(log_tau)``, always positive."""
        return self.log_tau.exp()

    def forward(self, *inputs: torch.Tensor) -> GateOutput:
        if len(inputs) != len(self.in_widths):
            raise ValueError(
                f"SoftGate expects {len(self.in_widths)} input(s) of widths {self.in_widths}, got {len(inputs)}"
            )
        for i, (x, w) in enumerate(zip(inputs, self.in_widths)):
            _check_features(x, w, f"SoftGate input {i}")
        lead = inputs[0].shape[:-1]
        if any(x.shape[:-1] != lead for x in inputs):
            raise ValueError(f"SoftGate inputs must share leading dimensions, got {[tuple(x.shape) for x in inputs]}")
        s = self.proj(torch.cat(inputs, dim=-1))
        logits = s / self.temperature
        probs = logits.softmax(dim=-1)
        return GateOutput(weights=probs, probs=probs, logits=logits, indices=probs.argmax(dim=-1, keepdim=True))


class NoisyTopKGate(nn.Module):
    """Noisy top-k gating (Shazeer et al. 2017) as SegMoTE writes it.

    * Eq. (1): clean logits ``L = X W_g``.
    * Eq. (2): in training only, ``L~ = L + (softplus(X W_n) + eps) * Z`` with ``Z ~ N(0, 1)`` and
      ``eps = 1e-2``; in ``eval()`` mode ``L~ = L`` (deterministic routing).
    * Eq. (3)-(4): keep the top-k logits ``s`` of every input; the best one is the input's confidence.
    * Eq. (5): ``G = softmax(s)`` over the k selected logits (zero for the others).

    With ``k = 1``, Eq. (5) is ``softmax`` of a single number, exactly 1, whose derivative is 0: the router
    would never learn from the task loss (one public version of SegMoTE's code has this defect, see the
    book's SegMoTE chapter). ``straight_through=True`` keeps the forward value of the selected weight at 1
    but routes the gradient through ``p = softmax(L~)`` over all N experts at the selected index
    (``w = 1 + p - p.detach()``), so the router receives gradient. It applies when ``k == 1``.

    ``W_g`` and ``W_n`` are initialised to zero by default, as in SegMoTE's code (routing starts uniform:
    random under noise in training, expert 0 in eval until the router learns); ``init_std > 0`` draws
    ``W_g`` from ``N(0, init_std^2)`` instead, so routing starts input-dependent.

    Args:
        in_features: D.
        num_experts: N.
        k: experts selected per input, ``1 <= k <= N``.
        noise_epsilon: the ``eps`` of Eq. (2).
        noisy: add the Eq. (2) noise in training (``False`` gives plain top-k).
        straight_through: see above.
        init_std: standard deviation of the initial ``W_g`` (0 = zeros, SegMoTE's choice).

    Shapes:
        x: ``(B, D)`` or ``(B, T, D)``; output :class:`GateOutput` with ``(..., N)`` weights that are
        non-zero in exactly k places and ``(..., k)`` indices.

    Example:
        >>> gate = NoisyTopKGate(in_features=16, num_experts=4, k=2).eval()
        >>> out = gate(torch.randn(3, 5, 16))
        >>> out.indices.shape, int((out.weights > 0).sum(-1).max())
        (torch.Size([3, 5, 2]), 2)
    """

    def __init__(
        self,
        *,
        in_features: int,
        num_experts: int,
        k: int = 1,
        noise_epsilon: float = 1e-2,
        noisy: bool = True,
        straight_through: bool = False,
        init_std: float = 0.0,
    ) -> None:
        super().__init__()
        _check_num_experts(num_experts)
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive int, got {in_features!r}")
        if not isinstance(k, int) or not 1 <= k <= num_experts:
            raise ValueError(f"k must be an int in [1, num_experts={num_experts}], got {k!r}")
        if noise_epsilon < 0:
            raise ValueError(f"noise_epsilon must be >= 0, got {noise_epsilon}")
        self.in_features, self.num_experts, self.k = in_features, num_experts, k
        self.noise_epsilon, self.noisy, self.straight_through = noise_epsilon, noisy, straight_through
        self.w_gate = nn.Parameter(torch.randn(in_features, num_experts) * init_std)
        self.w_noise = nn.Parameter(torch.zeros(in_features, num_experts))

    def forward(self, x: torch.Tensor) -> GateOutput:
        _check_features(x, self.in_features, "NoisyTopKGate input")
        logits = x @ self.w_gate  # Eq. (1)
        if self.training and self.noisy:  # Eq. (2)
            noise_std = F.softplus(x @ self.w_noise) + self.noise_epsilon
            logits = logits + torch.randn_like(logits) * noise_std
        top_logits, indices = logits.topk(self.k, dim=-1)  # Eq. (3)-(4), sorted best first
        top_weights = top_logits.softmax(dim=-1)  # Eq. (5)
        probs = logits.softmax(dim=-1)
        if self.straight_through and self.k == 1:
            p = probs.gather(-1, indices)
            top_weights = top_weights + p - p.detach()
        weights = torch.zeros_like(logits).scatter(-1, indices, top_weights)
        return GateOutput(weights=weights, probs=probs, logits=logits, indices=indices)


class HardRouter(nn.Module):
    """MLP router with hard top-1 selection (MedMoE, Sec. 4.3 and Fig. 2; the released code's ``MoE``).

    ``p = softmax(W_2 ReLU(W_1 v))`` on a pooled image feature ``v`` (768 -> 128 -> K in the paper's
    configuration) and ``k* = argmax p``: every sample goes to exactly one expert. Pair it with
    :func:`medmoe.moe.dispatch.dispatch_combine` so only the selected expert is computed for each sample
    (MedMoE Sec. 6.2: the cost of one expert, whatever K is).

    What training does: the selection is hard in training too, as in the released code. That code computes
    all K experts and indexes the selected one, which gives exactly the same outputs and gradients as
    dispatching to the selected expert only, so :mod:`medmoe` always dispatches. The combine weight is a
    constant 1, so the task (contrastive) losses give the router **no gradient**: the router learns only from
    the auxiliary modality cross-entropy on its logits (:meth:`aux_loss`; MedMoE Sec. 4.5 writes ``L_aux``
    over the report embedding ``t_g``, the released code applies it to the router logits, as here).
    ``straight_through=True`` is an optional variant that lets the task loss reach the router
    (``w = 1 + p - p.detach()``); it is off by default because the paper's model does not have it.

    Args:
        in_features: width of the routing feature (768 for Swin-T).
        num_experts: K.
        hidden: width of the MLP's hidden layer (128 in the paper's code).
        straight_through: see above.

    Shapes:
        x: ``(B, D)``; output :class:`GateOutput` with one-hot ``(B, K)`` weights and ``(B, 1)`` indices.

    Example:
        >>> router = HardRouter(in_features=32, num_experts=6, hidden=16)
        >>> out = router(torch.randn(4, 32))
        >>> out.weights.sum(-1).tolist(), out.indices.shape
        ([1.0, 1.0, 1.0, 1.0], torch.Size([4, 1]))
    """

    def __init__(
        self, *, in_features: int, num_experts: int, hidden: int = 128, straight_through: bool = False
    ) -> None:
        super().__init__()
        _check_num_experts(num_experts)
        for name, v in (("in_features", in_features), ("hidden", hidden)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_features, self.num_experts, self.straight_through = in_features, num_experts, straight_through
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_experts))

    def forward(self, x: torch.Tensor) -> GateOutput:
        check_rank(x, 2, "HardRouter input")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"HardRouter input must have width {self.in_features}, got shape {tuple(x.shape)}")
        logits = self.mlp(x)
        probs = logits.softmax(dim=-1)
        indices = probs.argmax(dim=-1, keepdim=True)
        top = torch.ones_like(indices, dtype=probs.dtype)
        if self.straight_through:
            p = probs.gather(-1, indices)
            top = top + p - p.detach()
        weights = torch.zeros_like(probs).scatter(-1, indices, top)
        return GateOutput(weights=weights, probs=probs, logits=logits, indices=indices)

    @staticmethod
    def aux_loss(out: GateOutput, labels: torch.Tensor) -> torch.Tensor:
        """Auxiliary cross-entropy between the router's logits ``(B, K)`` and known labels ``(B,)``
        (MedMoE Sec. 4.5, ``L_aux``, as the released code applies it: to the router)."""
        check_rank(labels, 1, "labels")
        if labels.shape[0] != out.logits.shape[0]:
            raise ValueError(f"labels must have {out.logits.shape[0]} entries, got {labels.shape[0]}")
        k = out.logits.shape[-1]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"labels must lie in [0, {k}) (one class per expert), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return F.cross_entropy(out.logits, labels)
