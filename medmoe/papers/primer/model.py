"""The primer's toy mixture-of-experts segmenter: one stem, N expert heads, a choice of gate.

Explained in the book: *Chapter 0, the MoE primer* (``chapters/00_moe_primer``), section 4 "One experiment, six
routers". Small enough to train in seconds on a CPU, so the
chapter can compare soft, noisy top-k and hard routing, and the balance and diversity losses, on the same
phantom data with everything else fixed.

    image (B, C, H, W) -> stem -> features (B, W, H/2, W/2) -> pooled (B, W) -> gate -> GateOutput
                                         \\-> expert_i (conv head) -> mask logits, combined by the gate weights
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from medmoe.moe import GateOutput, HardRouter, NoisyTopKGate, SoftGate, dispatch_combine
from medmoe.utils import check_rank, resolve_config

__all__ = ["ToyMoESegmenter", "ToyOutput", "ToyConfig", "GATES", "CONFIGS", "build_model", "example_inputs"]

GATES = ("soft", "noisy_topk", "hard")


@dataclass(frozen=True)
class ToyConfig:
    """A toy MoE segmenter as data (see :data:`CONFIGS`); the fields are :class:`ToyMoESegmenter`'s arguments.

    Explained in the book: Chapter 0, section 4 "One experiment, six routers".
    """

    in_channels: int = 1
    width: int = 16
    num_experts: int = 4
    gate: str = "soft"
    k: int = 1
    router_init_std: float = 0.0


CONFIGS: dict[str, ToyConfig] = {
    # The primer has no paper: "primer_quick" is the chapter's model, "primer_test" the contract test's.
    "primer_quick": ToyConfig(),
    "primer_test": ToyConfig(width=8, num_experts=3, gate="noisy_topk"),
}


class ToyOutput(NamedTuple):
    """``logits``: ``(B, 1, H, W)`` mask logits; ``gate``: the gate's decision; ``counts``: ``(N,)`` per-expert inputs.

    Explained in the book: Chapter 0, section 2 "Three gates, one output type".
    """

    logits: torch.Tensor
    gate: GateOutput
    counts: torch.Tensor


class ToyMoESegmenter(nn.Module):
    """A tiny CNN whose mask head is a mixture of N experts routed per image.

    Explained in the book: Chapter 0, sections 2 "Three gates, one output type" and 4 "One experiment, six routers".

    Args:
        in_channels: image channels.
        width: feature width of the stem and the experts.
        num_experts: N.
        gate: ``"soft"`` (:class:`~medmoe.moe.SoftGate`, every expert weighted), ``"noisy_topk"``
            (:class:`~medmoe.moe.NoisyTopKGate` with ``k`` and the straight-through estimator), or
            ``"hard"`` (:class:`~medmoe.moe.HardRouter`, top-1; learns only from an auxiliary loss).
        k: experts per image for ``"noisy_topk"``.
        router_init_std: initial spread of the noisy gate's ``W_g`` (0 = SegMoTE's zero init).

    Shapes:
        x: ``(B, C, H, W)`` with even H, W; returns :class:`ToyOutput`.

    Example:
        >>> m = ToyMoESegmenter(in_channels=1, width=8, num_experts=3, gate="noisy_topk")
        >>> out = m(torch.randn(2, 1, 32, 32))
        >>> out.logits.shape, out.gate.weights.shape
        (torch.Size([2, 1, 32, 32]), torch.Size([2, 3]))
    """

    def __init__(self, *, in_channels: int = 1, width: int = 16, num_experts: int = 4, gate: str = "soft", k: int = 1,
                 router_init_std: float = 0.0) -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.in_channels, self.num_experts, self.gate_kind = in_channels, num_experts, gate
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.BatchNorm2d(width), nn.ReLU(),
        )
        # The router sees the pooled mean and spread of the features (enough to tell the modalities apart),
        # layer-normalised so the gate's logits keep their scale while the stem trains.
        route_dim = 2 * width
        self.route_norm = nn.LayerNorm(route_dim, elementwise_affine=False)
        if gate == "soft":
            self.gate = SoftGate(in_features=route_dim, num_experts=num_experts)
        elif gate == "noisy_topk":
            self.gate = NoisyTopKGate(in_features=route_dim, num_experts=num_experts, k=k, straight_through=True,
                                      init_std=router_init_std)
        else:
            self.gate = HardRouter(in_features=route_dim, num_experts=num_experts, hidden=32)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1))
            for _ in range(num_experts)
        )

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stem features ``(B, W, H/2, W/2)`` and the routing feature ``(B, 2W)``."""
        check_rank(x, 4, "image")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"image must have {self.in_channels} channel(s), got shape {tuple(x.shape)}")
        f = self.stem(x)
        return f, self.route_norm(torch.cat([f.mean((2, 3)), f.std((2, 3))], dim=1))

    def forward_head(self, f: torch.Tensor, route: torch.Tensor, out_size: tuple[int, int]) -> ToyOutput:
        g = self.gate(route)
        if self.gate_kind == "soft":  # a dense mixture: every expert runs on every image
            idx = torch.arange(self.num_experts, device=f.device).expand(f.shape[0], -1)
        else:
            idx = g.indices
        y, counts = dispatch_combine(f, self.experts, idx, g.weights)
        return ToyOutput(F.interpolate(y, size=out_size, mode="bilinear", align_corners=False), g, counts)

    def forward(self, x: torch.Tensor) -> ToyOutput:
        f, route = self.forward_features(x)
        return self.forward_head(f, route, x.shape[-2:])


def build_model(name: str | ToyConfig = "primer_quick", *, backbone: nn.Module | None = None,
                **overrides) -> ToyMoESegmenter:
    """A :class:`ToyMoESegmenter` from a configuration name in :data:`CONFIGS` (or a :class:`ToyConfig`) with
    fields overridden, e.g. ``build_model("primer_quick", gate="hard", num_experts=6)``.

    ``backbone`` is accepted for the common signature of every paper's ``build_model``; the toy model has no
    pretrained backbone, so anything but ``None`` is an error.

    Raises:
        ValueError: an unknown name or field, an invalid value, or a ``backbone``.

    Example:
        >>> build_model("primer_test").num_experts
        3
    """
    if backbone is not None:
        raise ValueError("the primer's toy model has no pretrained backbone; pass backbone=None")
    cfg = resolve_config(name, CONFIGS, overrides, what="primer")
    return ToyMoESegmenter(in_channels=cfg.in_channels, width=cfg.width, num_experts=cfg.num_experts, gate=cfg.gate,
                           k=cfg.k, router_init_std=cfg.router_init_std)


def example_inputs(name: str | ToyConfig = "primer_test", *, batch_size: int = 2
                   ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """A random batch for ``build_model(name)`` and the output shapes it must give (the contract test,
    ``tests/test_contract.py``, runs every paper's ``_test`` configuration through this).

    Returns:
        ``(kwargs for forward, {output field: expected shape})``; the first field is the one to backpropagate.

    Example:
        >>> kwargs, shapes = example_inputs("primer_test")
        >>> build_model("primer_test")(**kwargs).logits.shape == shapes["logits"]
        True
    """
    cfg = resolve_config(name, CONFIGS, {}, what="primer")
    size = 32
    kwargs = {"x": torch.randn(batch_size, cfg.in_channels, size, size)}
    return kwargs, {"logits": (batch_size, 1, size, size), "counts": (cfg.num_experts,)}
