"""What the chapter measures about SegMoTE's tokens: which token's mask is best per modality, whether the router
selects it, and how much of the modality the selection carries against a permutation null.

Explained in the book: *Chapter 3, SegMoTE*, section 6 "Which token is selected, per modality (Fig. 6a) and per
layer (Fig. 7)". Every function reads the ``rows`` of :func:`medmoe.papers.segmote.recipe.evaluate` (one dict per
test item with ``modality``, ``selected``, ``dice`` and ``token_dice``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medmoe.moe import nmi_permutation_baseline

__all__ = ["nmi_with_null", "token_modality_dice", "selection_quality", "class_dice", "group_dice"]


def nmi_with_null(routing: Sequence[int], label: Sequence[int], *, n_perm: int = 100,
                  seed: int = 0) -> tuple[float, list[float]]:
    """``NMI(routing; label)`` and its permutation null: the same routing decisions shuffled over the items
    ``n_perm`` times (the null of :func:`medmoe.moe.nmi_permutation_baseline`, all values kept so that
    :func:`medmoe.claims.chance_from_null` can give a p-value).

    Example:
        >>> real, null = nmi_with_null([0, 0, 1, 1] * 8, [0, 0, 1, 1] * 8, n_perm=20)
        >>> real, len(null), max(null) < 1.0
        (1.0, 20, True)
    """
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    r, lab = torch.as_tensor(list(routing)).reshape(-1), torch.as_tensor(list(label)).reshape(-1)
    if r.numel() != lab.numel():
        raise ValueError(f"routing and label must label the same items, got {r.numel()} and {lab.numel()}")
    base = nmi_permutation_baseline(r, lab, n_perm=n_perm, seed=seed)
    return base.nmi, list(base.null)


def token_modality_dice(rows: Sequence[dict[str, Any]], num_groups: int) -> np.ndarray:
    """``(T, num_groups)``: the mean Dice of each expert token's own mask over the items of each modality (NaN where
    a modality has no item). A token specialised to a modality is one whose column entry stands out.

    Example:
        >>> rows = [{"modality": 0, "token_dice": [0.9, 0.1]}, {"modality": 1, "token_dice": [0.2, 0.8]}]
        >>> token_modality_dice(rows, 2).round(1).tolist()
        [[0.9, 0.2], [0.1, 0.8]]
    """
    if not rows or "token_dice" not in rows[0]:
        raise ValueError("rows need token_dice: evaluate(..., token_dice=True)")
    t = len(rows[0]["token_dice"])
    sums, counts = np.zeros((t, num_groups)), np.zeros(num_groups)
    for r in rows:
        sums[:, r["modality"]] += r["token_dice"]
        counts[r["modality"]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def selection_quality(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """How good the router's token choice is, per item:

    * ``selected_is_best``: the share of items whose selected token has the best Dice of all tokens (ties count);
    * ``chance_is_best``: the same share for a token drawn uniformly at random (the mean over items of
      ``#best tokens / T``);
    * ``dice_selected``, ``dice_random`` (the mean over tokens, what a random choice gets on average),
      ``dice_best`` (the oracle choice) and ``token_spread`` (the mean over items of best minus worst token Dice: 0
      when every token has learnt the same mask).

    Example:
        >>> rows = [{"selected": 0, "token_dice": [0.9, 0.5]}, {"selected": 0, "token_dice": [0.2, 0.6]}]
        >>> q = selection_quality(rows)
        >>> q["selected_is_best"], q["chance_is_best"], round(q["dice_selected"], 2), round(q["dice_best"], 2)
        (0.5, 0.5, 0.55, 0.75)
    """
    if not rows or "token_dice" not in rows[0]:
        raise ValueError("rows need token_dice: evaluate(..., token_dice=True)")
    td = np.array([r["token_dice"] for r in rows], dtype=float)  # (N, T)
    sel = np.array([r["selected"] for r in rows])
    best = td.max(1, keepdims=True)
    is_best = np.isclose(td, best, atol=1e-9)
    chosen = td[np.arange(len(sel)), sel]
    return {"selected_is_best": float(is_best[np.arange(len(sel)), sel].mean()),
            "chance_is_best": float(is_best.mean(1).mean()),
            "dice_selected": float(chosen.mean()), "dice_random": float(td.mean()),
            "dice_best": float(best.mean()), "token_spread": float((td.max(1) - td.min(1)).mean())}


def class_dice(rows: Sequence[dict[str, Any]], class_names: Sequence[str], classes: Sequence[str],
               *, group_a_only: bool = False) -> float:
    """The mean over ``classes`` (names ``"group/class"``) of each class's Dice averaged over its items (``rows`` of
    one evaluation; ``group_a_only`` keeps the group-A items). Classes without an item are left out; NaN if none has.

    Example:
        >>> rows = [{"class_index": 0, "dice": 0.5, "group_a": True}, {"class_index": 0, "dice": 0.7, "group_a": True},
        ...         {"class_index": 1, "dice": 0.2, "group_a": False}]
        >>> names = ["ct/heart", "ct/bone"]
        >>> round(class_dice(rows, names, names), 3), round(class_dice(rows, names, names, group_a_only=True), 3)
        (0.4, 0.6)
    """
    wanted = set(classes)
    per_class: dict[int, list[float]] = {}
    for r in rows:
        if class_names[r["class_index"]] in wanted and (r["group_a"] or not group_a_only) and r["dice"] == r["dice"]:
            per_class.setdefault(r["class_index"], []).append(r["dice"])
    if not per_class:
        return float("nan")
    return float(np.mean([np.mean(v) for v in per_class.values()]))


def group_dice(rows: Sequence[dict[str, Any]], class_names: Sequence[str], groups: Sequence[str]) -> float:
    """The per-data-set number of the paper's tables (:func:`class_dice` over a group's classes), averaged over
    ``groups`` (modalities or data set codes) that have items; NaN if none has.

    Example:
        >>> rows = [{"class_index": c, "dice": d, "group_a": False} for c, d in ((0, 0.5), (1, 0.2), (2, 0.9))]
        >>> round(group_dice(rows, ["ct/heart", "ct/bone", "mri/lesion"], ["ct", "mri"]), 3)
        0.625
    """
    values = [class_dice(rows, class_names, [c for c in class_names if c.split("/")[0] == g]) for g in groups]
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")
