"""The primer's recipe: the six routing variants, their losses, training and evaluation on the phantoms.

Explained in the book: *Chapter 0, the MoE primer* (``chapters/00_moe_primer``), sections 4 "One experiment, six
routers" and 5 "Did the experts specialise?". The same four verbs as every paper's recipe:

* :func:`build` -- the model (:func:`medmoe.papers.primer.model.build_model`);
* :func:`train` -- one variant with :func:`medmoe.engine.train_loop` (Dice + BCE plus the variant's extra loss);
* :func:`evaluate` -- per-image Dice (LViT convention) and every routing decision on a test set;
* :func:`count` -- parameter counts.

and what the chapter measures with them: :func:`loss_table` (section 3, the losses on hand-made router logits),
:func:`routing_stats` (section 5, one variant and seed against the permutation baseline of
:func:`medmoe.moe.nmi_null`), and
:func:`mean_sd_table` (the variants table as mean ± sd over seeds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import nn

from medmoe.data.phantoms import MODALITIES
from medmoe.engine import FitResult, TrainConfig, make_loader, train_loop
from medmoe.metrics import per_image_dice
from medmoe.moe import (
    HardRouter,
    contingency,
    diversity_loss,
    entropy,
    expert_load,
    gate_entropy,
    importance_load_loss,
    mutual_information,
    nmi_null,
    normalized_mutual_information,
    router_z_loss,
    switch_balance_loss,
)
from medmoe.papers.primer.model import build_model
from medmoe.utils import count_parameters

__all__ = ["VARIANTS", "EXTRA_LOSSES", "build", "make_step", "train", "evaluate", "count", "loss_table",
           "routing_stats", "mean_sd_table"]

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


def loss_table(cases: Mapping[str, torch.Tensor]):
    """The four router losses on hand-made router **logits** ``(inputs, experts)``, one row per case.

    The gate is ``g = softmax(logits)``: the diversity, CV² and Switch losses read ``g``; the z-loss (ST-MoE,
    :func:`~medmoe.moe.router_z_loss`) reads the logits themselves, ``mean (logsumexp logits)^2``. (Fed
    log-probabilities instead, it would be identically 0: ``logsumexp(log g) = log sum g = log 1``.)

    Returns:
        a ``pandas.DataFrame`` indexed by case.

    Example:
        >>> t = loss_table({"uniform": torch.zeros(4, 4)})
        >>> round(float(t.loc["uniform", "z-loss (ST-MoE)"]), 4)  # (log 4)^2
        1.9218
    """
    import pandas as pd  # local: only the chapter's table needs pandas

    rows = []
    for name, logits in cases.items():
        g = logits.softmax(-1)
        rows.append({
            "gates": name,
            "diversity L_div (MLMoE)": diversity_loss(g).item(),
            "CV² imp+load (SegMoTE)": importance_load_loss(g).loss.item(),
            "Switch N·Σf·P": switch_balance_loss(g, g.argmax(-1)).item(),
            "z-loss (ST-MoE)": router_z_loss(logits).item(),
        })
    return pd.DataFrame(rows).set_index("gates")


def routing_stats(result: Mapping[str, torch.Tensor], labels: torch.Tensor, num_experts: int, *,
                  num_labels: int | None = None, n_perm: int = 200, perm_seed: int = 0) -> dict[str, Any]:
    """What one trained variant did on the test set (:func:`evaluate`'s ``result``) against ``labels`` ``(N,)``
    (the modality's position, 0 .. M-1; ``num_labels`` = M, default the largest label + 1).

    Returns:
        numbers: ``dice`` (per-image mean), ``experts_used``, ``load_entropy`` (entropy of the expert load over
        ``log N``: 1 = balanced, 0 = one expert), ``gate_entropy`` (nats), ``mi`` (nats), ``h_given_label``
        (``H(expert | label)`` in nats: 0 when the label decides the expert), ``nmi``, ``nmi_chance`` (mean of the
        permutation null); and ``null`` (the null's values), ``load`` (per expert) and ``table``
        (labels x experts counts).

    Example:
        >>> res = {"dice": torch.ones(8), "expert": torch.tensor([0, 1] * 4),
        ...        "probs": torch.full((8, 2), 0.5), "modality": torch.zeros(8, dtype=torch.long)}
        >>> s = routing_stats(res, torch.tensor([0, 1] * 4), 2, n_perm=10)
        >>> s["experts_used"], s["load_entropy"], s["nmi"]
        (2, 1.0, 1.0)
    """
    chosen = result["expert"]
    load = expert_load(chosen, num_experts)
    null = nmi_null(chosen, labels, n_perm=n_perm, seed=perm_seed)
    mi = float(mutual_information(chosen, labels))
    num_labels = num_labels or int(labels.max()) + 1
    return {
        "dice": float(result["dice"].mean()),
        "experts_used": int((load > 0).sum()),
        "load_entropy": float(entropy(load)) / math.log(num_experts) if num_experts > 1 else 0.0,
        "gate_entropy": float(gate_entropy(result["probs"])),
        "mi": mi,
        "h_given_label": max(float(entropy(load)) - mi, 0.0),
        "nmi": float(normalized_mutual_information(chosen, labels)),
        "nmi_chance": sum(null) / len(null),
        "null": null,
        "load": load.tolist(),
        "table": contingency(labels, chosen, num_a=num_labels, num_b=num_experts).numpy(),
    }


def mean_sd_table(rows: Sequence[Mapping[str, Any]], *, by: str, columns: Mapping[str, str], digits: int = 3):
    """``rows`` (one per variant and seed) as a table of ``mean ± sd`` over seeds, one row per ``by`` value in
    first-seen order; ``columns`` maps a row key to its column title. With one seed the sd is shown as ``n/a``.

    Example:
        >>> rows = [{"variant": "a", "nmi": 0.1}, {"variant": "a", "nmi": 0.3}]
        >>> mean_sd_table(rows, by="variant", columns={"nmi": "NMI"}).loc["a", "NMI"]
        '0.200 ± 0.141'
    """
    import pandas as pd  # local: only the chapter's table needs pandas

    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[by], []).append(r)
    out = []
    for key, rs in groups.items():
        line = {by: key}
        for col, title in columns.items():
            vals = [float(r[col]) for r in rs]
            mean = sum(vals) / len(vals)
            if len(vals) > 1:
                sd = f"{math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)):.{digits}f}"
            else:
                sd = "n/a"
            line[title] = f"{mean:.{digits}f} ± {sd}"
        out.append(line)
    return pd.DataFrame(out).set_index(by)
