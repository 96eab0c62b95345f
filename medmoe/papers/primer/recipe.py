"""The primer's recipe: the six routing variants, their losses, training and evaluation on the phantoms.

Explained in the book: *Chapter 0, the MoE primer* (``chapters/00_moe_primer``), sections 4 "One experiment, six
routers" and 5 "Did the experts specialise?". The same four verbs as every paper's recipe:

* :func:`build` -- the model (:func:`medmoe.papers.primer.model.build_model`);
* :func:`train` -- one variant with :func:`medmoe.engine.train_loop` (Dice + BCE plus the variant's extra loss);
* :func:`evaluate` -- per-image Dice (LViT convention) and every routing decision on a test set;
* :func:`count` -- parameter counts.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import nn

from medmoe.data.phantoms import MODALITIES
from medmoe.engine import FitResult, TrainConfig, make_loader, train_loop
from medmoe.metrics import per_image_dice
from medmoe.moe import HardRouter, diversity_loss, importance_load_loss, switch_balance_loss
from medmoe.papers.primer.model import build_model
from medmoe.utils import count_parameters

__all__ = ["VARIANTS", "EXTRA_LOSSES", "build", "make_step", "train", "evaluate", "count"]

VARIANTS: dict[str, tuple[str, str | None]] = {
    "soft": ("soft", None),
    "soft + L_div": ("soft", "diversity"),
    "top-1": ("noisy_topk", None),
    "top-1 + CV²": ("noisy_topk", "cv2"),
    "top-1 + Switch": ("noisy_topk", "switch"),
    "hard + L_aux": ("hard", "aux"),
}
"""The six variants of the primer: name -> (gate, extra loss)."""

EXTRA_LOSSES = (None, "diversity", "cv2", "switch", "aux")

build = build_model


def make_step(extra: str | None, *, modalities: tuple[str, ...] | list[str], num_experts: int,
              diversity_weight: float = 1.0, balance_weight: float = 0.1, aux_weight: float = 1.0):
    """The step function of one variant: Dice + BCE (MONAI ``DiceCELoss``) plus the variant's extra loss.

    ``extra`` is ``None`` or one of ``"diversity"`` (:func:`~medmoe.moe.diversity_loss` of the gate's
    probabilities), ``"cv2"`` (:func:`~medmoe.moe.importance_load_loss`), ``"switch"``
    (:func:`~medmoe.moe.switch_balance_loss`) or ``"aux"`` (:meth:`~medmoe.moe.HardRouter.aux_loss` towards the
    modality: with fewer experts than modalities, modality m is asked to use expert ``m mod N``).

    Raises:
        ValueError: an unknown ``extra`` or modality.
    """
    if extra not in EXTRA_LOSSES:
        raise ValueError(f"unknown extra loss {extra!r}; use one of {EXTRA_LOSSES}")
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {MODALITIES}")
    seg_loss = DiceCELoss(sigmoid=True)
    local_modality = torch.full((len(MODALITIES),), -1, dtype=torch.long)  # global modality id -> position
    local_modality[[MODALITIES.index(m) for m in modalities]] = torch.arange(len(modalities))

    def step(model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(batch["image"])
        loss_seg = seg_loss(out.logits, batch["mask"])
        g = out.gate
        if extra == "diversity":
            loss_aux = diversity_weight * diversity_loss(g.probs)
        elif extra == "cv2":
            loss_aux = balance_weight * importance_load_loss(g.weights).loss
        elif extra == "switch":
            loss_aux = balance_weight * switch_balance_loss(g.probs, g.indices)
        elif extra == "aux":
            target = local_modality.to(batch["modality"].device)[batch["modality"]] % num_experts
            loss_aux = aux_weight * HardRouter.aux_loss(g, target)
        else:
            loss_aux = loss_seg.new_zeros(())
        return {"loss": loss_seg + loss_aux, "seg": loss_seg.detach(), "aux": loss_aux.detach()}

    return step


def train(model: nn.Module, train_set: Any, val_set: Any = None, *, out_dir: Any, epochs: int, lr: float,
          batch_size: int, seed: int = 0, run_key: str | None = None, extra: str | None = None,
          modalities: tuple[str, ...] | list[str] = MODALITIES[:4], diversity_weight: float = 1.0,
          balance_weight: float = 0.1, aux_weight: float = 1.0, progress: bool = False,
          resume: bool = False) -> FitResult:
    """Train one variant: AdamW at ``lr``, ``epochs`` epochs, the step of :func:`make_step`.

    ``resume=False`` by default: the primer's runs take seconds, so each variant trains from scratch.
    """
    step = make_step(extra, modalities=modalities, num_experts=model.num_experts, diversity_weight=diversity_weight,
                     balance_weight=balance_weight, aux_weight=aux_weight)
    config = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, progress=progress, resume=resume, run_key=run_key)
    # own_generator=False: the chapter's numbers were made with a loader that draws its per-epoch base seed from
    # the global RNG, which the noisy gates also draw from; keeping it keeps them bit-identical.
    return train_loop(model, torch.optim.AdamW(model.parameters(), lr=lr), train_set, step_fn=step, config=config,
                      batch_size=batch_size, val_set=val_set, own_generator=False)


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, *, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per-image Dice (LViT convention, threshold 0.5; :func:`medmoe.metrics.per_image_dice`) and every routing
    decision on ``data``.

    Returns:
        ``{"dice": (N,), "expert": (N,) top-1 expert, "probs": (N, E) gate probabilities, "modality": (N,)}``.
    """
    model.eval()
    device = next(model.parameters()).device
    dice, chosen, probs, mods = [], [], [], []
    for batch in make_loader(data, batch_size):
        out = model(batch["image"].to(device))
        dice.append(per_image_dice(out.logits.cpu(), batch["mask"], from_logits=True))
        chosen.append(out.gate.indices[:, 0].cpu())
        probs.append(out.gate.probs.cpu())
        mods.append(batch["modality"])
    return {"dice": torch.cat(dice), "expert": torch.cat(chosen), "probs": torch.cat(probs),
            "modality": torch.cat(mods)}


def count(model: nn.Module) -> dict[str, int]:
    """Parameters: ``total``, ``trainable``, ``gate`` and ``experts`` (all experts together)."""
    return {"total": count_parameters(model), "trainable": count_parameters(model, trainable_only=True),
            "gate": count_parameters(model.gate), "experts": count_parameters(model.experts)}
