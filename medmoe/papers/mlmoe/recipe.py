"""MLMoE's recipe: losses, training steps, the two training stages and evaluation.

Explained in the book: *Chapter 1, MLMoE* (``chapters/01_mlmoe``), sections 4 "Training: text present, then text
absent", 5 "Results: does MLMoE use the report, and what does the virtual prompt recover?" and 6 "What the experts
look at". The same four verbs as every paper's recipe:

* :func:`build` -- the model (:func:`medmoe.papers.mlmoe.model.build_model`, with the ConvNeXt's pretrained weights
  loaded from a folder when asked);
* :func:`train` -- one stage with :func:`medmoe.engine.train_loop`, ``stage="text_present"`` or ``"text_absent"``;
* :func:`evaluate` -- global Dice / IoU and LViT's per-image Dice on a test set, with the reports, a fixed prompt or
  the virtual prompt (:func:`evaluate_texts`: several of them);
* :func:`count` -- parameter counts (total, trainable, experts, gates, adapters, virtual prompt).

The losses:

* Text-present stage: ``L = L_dice + L_ce + L_div`` (MLMoE Sec. II-B), with the CE term as
  BCE-with-logits on the pre-sigmoid logits (the book's reading of the paper's L_ce: under MONAI 1.0.1 Ariadne's CE
  term was identically zero) and ``L_div`` summed over the three guide stages. ``dice_only=True`` gives the loss
  Ariadne's code effectively optimised.
* Text-absent stage: ``L_A = L_dice + L_ce + L_dis`` (Sec. II-C, after Eq. (6)), where
  ``L_dis = E_x sum_s ||f_m^s - f^_m^s||_2`` between the fused features of each guide stage with the real
  report (teacher, no adapters) and with the virtual prompt + adapters (student); only the prompt and the
  adapters train (:meth:`~medmoe.papers.mlmoe.model.TextGuidedSegmenter.start_distillation`).
* Evaluation with the base code's metric: global (micro) Dice and foreground IoU at 0.5 over the whole test
  set (:class:`medmoe.metrics.GlobalDiceIoU`), with LViT's per-image mean Dice beside it.

The datasets the stages read (reports encoded once, the teacher's features computed once) are in
:mod:`medmoe.papers.mlmoe.data`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from medmoe.backbones import TextEncoder, build_convnext
from medmoe.engine import FitResult, TrainConfig, make_loader, train_loop
from medmoe.metrics import GlobalDiceIoU, PerImageDice
from medmoe.moe import diversity_loss
from medmoe.papers.mlmoe.data import TeacherDataset
from medmoe.papers.mlmoe.model import CONFIGS, AriadneConfig, TextGuidedSegmenter, build_model
from medmoe.utils import count_parameters, resolve_config

__all__ = [
    "STAGES", "build", "train", "evaluate", "evaluate_texts", "count",
    "SegLoss", "text_present_step", "teacher_features", "distillation_loss", "distillation_step",
    "expert_word_attribution", "LUNG_REGIONS", "gate_by_phrase",
]

STAGES = ("text_present", "text_absent")
"""The two training stages of :func:`train` (MLMoE Sec. II-B and II-C)."""


def build(name: str | AriadneConfig = "mlmoe_quick", *, backbone: nn.Module | None = None,
          backbone_weights: str | os.PathLike | None = None, **overrides) -> TextGuidedSegmenter:
    """:func:`~medmoe.papers.mlmoe.model.build_model`, with the ConvNeXt loaded from ``backbone_weights`` (a local
    folder of ``facebook/convnext-tiny-224`` or a hub id; see :func:`medmoe.backbones.build_convnext`) when given.
    ``backbone_weights`` empty or ``None``: the ConvNeXt starts from random weights.

    Raises:
        ValueError: both ``backbone`` and ``backbone_weights``; anything :func:`build_model` refuses.

    Example:
        >>> build("mlmoe_test", num_experts=0).config.num_experts
        0
    """
    if backbone_weights:
        if backbone is not None:
            raise ValueError("pass either backbone= (a built encoder) or backbone_weights= (where its weights are)")
        cfg = resolve_config(name, CONFIGS, overrides, what="model")
        backbone = build_convnext(cfg.encoder, pretrained=backbone_weights)
    return build_model(name, backbone=backbone, **overrides)


# ----------------------------------------------------------------------------- losses and steps
class SegLoss(nn.Module):
    """``Dice + BCE-with-logits`` (MONAI ``DiceCELoss(sigmoid=True)``), or Dice only; weights 1."""

    def __init__(self, *, dice_only: bool = False) -> None:
        super().__init__()
        self.loss = DiceLoss(sigmoid=True) if dice_only else DiceCELoss(sigmoid=True)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, mask)


def text_present_step(model, batch, *, seg_loss: SegLoss, div_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """One stage-1 step: ``L = L_seg + div_weight * sum_s L_div(g_s)``. ``batch``: image, mask, text_features."""
    out = model(batch["image"], batch["text_features"])
    seg = seg_loss(out.logits, batch["mask"])
    div = sum((diversity_loss(g.probs) for g in out.gates), seg.new_zeros(()))
    return {"loss": seg + div_weight * div, "seg": seg.detach(), "div": div.detach()}


def distillation_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """``E_x sum_s ||f_m^s - f^_m^s||_2``: per sample the (non-squared) L2 norm over tokens x channels of each
    stage's difference, summed over stages, averaged over the batch (MLMoE Sec. II-C; the spec flags sum vs
    mean and squared vs not as unresolved -- this is its proposal)."""
    if len(teacher) != len(student):
        raise ValueError(f"teacher has {len(teacher)} stages, student {len(student)}")
    total = 0.0
    for t, s in zip(teacher, student):
        if t.shape != s.shape:
            raise ValueError(f"stage feature shapes differ: teacher {tuple(t.shape)}, student {tuple(s.shape)}")
        total = total + (t - s).flatten(1).norm(dim=1)
    return total.mean()


@torch.no_grad()
def teacher_features(model, dataset, *, batch_size: int = 64) -> list[torch.Tensor]:
    """The fused features ``f_m^s`` of every item with its report (no adapters), per stage, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stages: list[list[torch.Tensor]] = []
    for batch in make_loader(dataset, batch_size):
        fused = model(batch["image"].to(device), batch["text_features"].to(device)).fused
        stages.append([f.cpu() for f in fused])
    model.train(was_training)
    return [torch.cat(s) for s in zip(*stages)]


def distillation_step(model, batch, *, seg_loss: SegLoss, dis_weight: float = 1.0,
                      prompt: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One stage-2 step: teacher = the frozen model with the report; student = the same model with the virtual
    prompt and the adapters (``text=None``), or with the fixed ``prompt``'s features ``(T, D)`` and the adapters
    (the fixed-prompt protocol of Table IV). ``L_A = L_seg(student) + dis_weight * L_dis`` (Sec. II-C, after
    Eq. (6)). The teacher's features come from ``batch["teacher"]`` when precomputed
    (:class:`~medmoe.papers.mlmoe.data.TeacherDataset`), else are computed."""
    if "teacher" in batch:
        teacher = batch["teacher"]
    else:
        with torch.no_grad():
            teacher = model(batch["image"], batch["text_features"]).fused
    if prompt is None:
        out = model(batch["image"], None)
    else:  # the fixed prompt (T, D) -> (B, T, D) in place of the virtual prompt, adapters on
        feats = prompt.to(batch["image"].device).expand(batch["image"].shape[0], -1, -1)
        out = model(batch["image"], feats, adapter=True)
    seg = seg_loss(out.logits, batch["mask"])
    dis = distillation_loss([t.detach() for t in teacher], out.fused)
    return {"loss": seg + dis_weight * dis, "seg": seg.detach(), "dis": dis.detach()}


# ----------------------------------------------------------------------------- training
def train(model: TextGuidedSegmenter, train_set: Any, val_set: Any = None, *, stage: str = "text_present",
          out_dir: Any, epochs: int, lr: float, batch_size: int, seed: int = 0, run_key: str | None = None,
          div_weight: float = 1.0, dis_weight: float = 1.0, adapters: bool = True, dice_only: bool = False,
          weight_decay: float = 0.01, patience: int | None = None, progress: bool = False,
          resume: bool = True, distill_prompt: torch.Tensor | None = None) -> FitResult:
    """Train one stage with :func:`medmoe.engine.train_loop`; the best checkpoint (lowest ``val_seg``, the
    segmentation loss without ``L_div`` / ``L_dis``; ``train_seg`` without ``val_set``) is kept in
    ``out_dir/best`` (load it with :func:`medmoe.engine.load_best`).

    * ``stage="text_present"`` (Sec. II-B): the model learns with the reports (items with ``text_features``,
      :func:`~medmoe.papers.mlmoe.data.with_text`); AdamW on the trainable parameters, a cosine schedule stepped
      per epoch (Ariadne: ``T_max=200``, ``eta_min=1e-6``), loss :func:`text_present_step` weighted by
      ``div_weight``. The counterpart of the base code's ``val_loss`` is ``val_seg``.
    * ``stage="text_absent"`` (Sec. II-C): freeze the trained model and learn the virtual prompt (and the adapters)
      by distillation (:func:`distillation_step`); the teacher's features are computed once
      (:class:`~medmoe.papers.mlmoe.data.TeacherDataset`). ``adapters=False`` is Table II's "w/o adapter",
      ``dis_weight=0`` is "w/o distillation". AdamW, no schedule.
    * ``stage="text_absent", distill_prompt=<(T, D) features of a fixed prompt>``: the fixed-prompt protocol of
      Table IV as the book reads it -- the prompt's features replace the virtual prompt as the student's input
      (the virtual prompt stays frozen and unused) and the adapters are trained by the same distillation; test
      it with ``evaluate(model, data, text=<the same features>, adapters=True)``.

    Args:
        patience: early stopping on ``val_seg`` after this many epochs without improvement (``None``: never).
        dice_only: Dice alone as the segmentation loss (the loss Ariadne's code effectively optimised).

    Raises:
        ValueError: an unknown ``stage``; ``distill_prompt`` with the text-present stage, not ``(T, D)``, or with
            ``adapters=False`` (nothing would train).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {STAGES}")
    if distill_prompt is not None:
        if stage != "text_absent":
            raise ValueError("distill_prompt= belongs to the text-absent stage: train(..., stage='text_absent', "
                             "distill_prompt=features)")
        if not isinstance(distill_prompt, torch.Tensor) or distill_prompt.ndim != 2:
            got = tuple(distill_prompt.shape) if isinstance(distill_prompt, torch.Tensor) else repr(distill_prompt)
            raise ValueError(f"distill_prompt must be one fixed prompt's features, a (T, D) tensor, got {got}")
        if not adapters:
            raise ValueError("distill_prompt= with adapters=False would train nothing (the fixed prompt is not "
                             "learnable); keep adapters=True")
    monitor = "val_seg" if val_set is not None else "train_seg"
    seg = SegLoss(dice_only=dice_only)
    if stage == "text_present":
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200, eta_min=1e-6)
        config = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, progress=progress, resume=resume,
                             early_stopping_patience=patience, scheduler_interval="epoch", monitor=monitor,
                             run_key=run_key)
        step = partial(text_present_step, seg_loss=seg, div_weight=div_weight)
        return train_loop(model, opt, train_set, step_fn=step, config=config, batch_size=batch_size, val_set=val_set,
                          scheduler=sched)
    params = model.start_distillation(adapters=adapters, prompt=distill_prompt is None)
    train_set = TeacherDataset(train_set, teacher_features(model, train_set))
    if val_set is not None:
        val_set = TeacherDataset(val_set, teacher_features(model, val_set))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    config = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, progress=progress, resume=resume,
                         early_stopping_patience=patience, monitor=monitor, run_key=run_key)
    prompt = None if distill_prompt is None else distill_prompt.detach().to(next(model.parameters()).device)
    step = partial(distillation_step, seg_loss=seg, dis_weight=dis_weight, prompt=prompt)
    return train_loop(model, opt, train_set, step_fn=step, config=config, batch_size=batch_size, val_set=val_set)


# ----------------------------------------------------------------------------- evaluation
def _check_text(text: Any) -> None:
    if isinstance(text, torch.Tensor):
        if text.ndim != 2:
            raise ValueError(f"a fixed prompt's features must have shape (T, D), got {tuple(text.shape)}")
    elif text not in ("report", "virtual"):
        raise ValueError(f"text must be 'report', 'virtual' or a (T, D) tensor, got {text!r}")


@torch.no_grad()
def evaluate(model: TextGuidedSegmenter, data: Any, *, text: str | torch.Tensor = "report", batch_size: int = 64,
             device: torch.device | str | None = None, adapters: bool | None = None) -> dict[str, Any]:
    """Test-set metrics of a text-guided segmenter on ``data`` (items with ``image``, ``mask`` and, for
    ``text="report"``, ``text_features``), read in order in batches of ``batch_size``.

    Args:
        text: ``"report"`` (each image's own report features), ``"virtual"`` (the virtual prompt and adapters;
            the text encoder is not needed), or a ``(T, D)`` tensor: one fixed prompt's features for every image
            (the paper's "pneumonia", "a photo of infected areas", ... baselines).
        device: where the images go; ``None``: the model's device.
        adapters: run the text-absent adapters; ``None``: only with ``text="virtual"``. ``True`` with a fixed
            prompt's features tests a model distilled for that prompt (``train(..., distill_prompt=...)``).

    Returns:
        ``global_dice`` and ``global_iou`` (the base code's convention), ``per_image_dice`` (LViT's), the number
        of images, and ``gates``: the stage gate weights ``(num_images, N)`` per stage (empty for Ariadne).
    """
    _check_text(text)
    model.eval()
    device = next(model.parameters()).device if device is None else torch.device(device)
    glob, per_image = GlobalDiceIoU(from_logits=True), PerImageDice(from_logits=True)
    gates: list[list[torch.Tensor]] = []
    for batch in make_loader(data, batch_size):
        image = batch["image"].to(device)
        if isinstance(text, torch.Tensor):
            feats = text.to(device).expand(image.shape[0], -1, -1)
        elif text == "report":
            feats = batch["text_features"].to(device)
        else:
            feats = None
        out = model(image, feats, adapter=adapters)
        glob.update(out.logits.cpu(), batch["mask"])
        per_image.update(out.logits.cpu(), batch["mask"])
        gates.append([g.weights.cpu() for g in out.gates])
    res = glob.compute()
    return {
        "global_dice": float(res["dice"]),
        "global_iou": float(res["iou"]),
        "per_image_dice": float(per_image.compute()["dice"]),
        "num_images": int(per_image.compute()["num_images"]),
        "gates": [torch.cat(s) for s in zip(*gates)] if gates and gates[0] else [],
    }


def evaluate_texts(model: TextGuidedSegmenter, data: Any, texts: Mapping[str, str | torch.Tensor], *,
                   batch_size: int = 64, device: torch.device | str | None = None) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` once per test-time text: ``{name: evaluate(model, data, text=texts[name])}``, in the order
    of ``texts`` (e.g. ``{"report": "report", '"pneumonia"': features, "virtual prompt": "virtual"}``)."""
    for text in texts.values():
        _check_text(text)
    return {name: evaluate(model, data, text=text, batch_size=batch_size, device=device)
            for name, text in texts.items()}


def count(model: TextGuidedSegmenter) -> dict[str, int]:
    """Parameters: ``total``, ``trainable`` (``requires_grad``: before :func:`train`'s text-absent stage everything
    but the adapters and the virtual prompt, during it only those), ``encoder`` (ConvNeXt), ``experts`` (every
    stage's text experts; 0 for Ariadne), ``gates``, ``adapters`` and ``virtual_prompt``.

    Example:
        >>> c = count(build("mlmoe_test"))
        >>> c["trainable"] == c["total"] - c["adapters"] - c["virtual_prompt"]
        True
    """
    moe = [g for g in model.guides if g.num_experts]
    return {"total": count_parameters(model), "trainable": count_parameters(model, trainable_only=True),
            "encoder": count_parameters(model.encoder), "experts": sum(count_parameters(g.experts) for g in moe),
            "gates": sum(count_parameters(g.gate) for g in moe),
            "adapters": count_parameters(model.adapter_parameters()), "virtual_prompt": model.virtual_prompt.numel()}


@torch.no_grad()
def expert_word_attribution(model: TextGuidedSegmenter, encoder: TextEncoder, text: str, *, stage: int = 0):
    """MLMoE Fig. 3 as the book reads it: how much each word of ``text`` feeds each text expert of one guide
    stage. Returns ``(words, (N, W) tensor)``, rows normalised to sum to 1 (word pieces summed into words)."""
    feats = encoder([text]).hidden
    txt = model.text_proj(feats)
    attr = model.guides[stage].experts.word_attribution(txt)[0]  # (N, T)
    spans = encoder.words(text)
    words = [w for w, _ in spans]
    by_word = torch.stack([attr[:, pos].sum(1) for _, pos in spans], dim=1)
    return words, by_word / by_word.sum(1, keepdim=True)


LUNG_REGIONS = ("upper left lung", "middle left lung", "lower left lung", "upper right lung", "middle right lung",
                "lower right lung")
"""The region phrases of QaTa-COV19's reports (LViT's annotations) and of the book's phantoms."""


def gate_by_phrase(weights: torch.Tensor, texts: Sequence[str], phrases: Sequence[str] = LUNG_REGIONS, *,
                   top_k: int = 6) -> tuple[list[str], torch.Tensor, str]:
    """Mean gate weight of the images whose report contains each phrase, for the figure "mean gate weight by
    region in the report" -- on any dataset: when no report names any of ``phrases`` (e.g. other annotations in
    the QaTa layout), the ``top_k`` most frequent words that some but not all reports contain are the groups.

    Args:
        weights: ``(num_images, N)`` gate weights of one stage (``evaluate(...)["gates"][s]``).
        texts: the ``num_images`` reports, in the same order.

    Returns:
        ``(labels, (G, N) means, how)``: ``how`` says which grouping was used, or why there is none (``G = 0``:
        every report is the same, or they share every word).

    Example:
        >>> labels, means, how = gate_by_phrase(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ["left lesion", "right one"])
        >>> labels, means.tolist(), how.startswith("no report names")
        (['left', 'lesion', 'one', 'right'], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], True)
    """
    texts = list(texts)
    if weights.ndim != 2 or weights.shape[0] != len(texts):
        raise ValueError(f"weights must have shape (num_images, N) with num_images = {len(texts)} reports, got "
                         f"{tuple(weights.shape)}")
    lower = [t.lower() for t in texts]
    labels = [p for p in phrases if any(p in t for t in lower)]
    how = "reports naming each phrase"
    if labels:
        members = [[i for i, t in enumerate(lower) if p in t] for p in labels]
    else:
        words = [set(re.findall(r"[a-z]{3,}", t)) for t in lower]
        freq = Counter(w for ws in words for w in ws)
        common = [w for w, c in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0])) if c < len(texts)][:top_k]
        labels = sorted(common)
        members = [[i for i, ws in enumerate(words) if w in ws] for w in labels]
        how = (f"no report names any of {len(phrases)} phrases ({phrases[0]!r}, ...): grouped by the "
               f"{len(labels)} most frequent words that some but not all reports contain")
        if not labels:
            how = "no grouping: the reports name none of the phrases and share every word"
    if not labels:
        return [], weights.new_zeros(0, weights.shape[1]), how
    return labels, torch.stack([weights[m].mean(0) for m in members]), how
