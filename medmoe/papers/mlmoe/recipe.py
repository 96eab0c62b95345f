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

from medmoe.backbones import TextEncoder, build_convnext, encode_cached
from medmoe.engine import FitResult, TrainConfig, make_loader, train_loop
from medmoe.metrics import GlobalDiceIoU, PerImageDice
from medmoe.moe import diversity_loss, nmi_permutation_baseline
from medmoe.papers.mlmoe.data import TeacherDataset
from medmoe.papers.mlmoe.model import CONFIGS, AriadneConfig, TextGuidedSegmenter, build_model, pool_text
from medmoe.utils import count_parameters, resolve_config

__all__ = [
    "STAGES", "build", "train", "evaluate", "evaluate_texts", "count",
    "SegLoss", "text_present_step", "teacher_features", "distillation_loss", "distillation_step",
    "expert_word_attribution", "LUNG_REGIONS", "gate_by_phrase",
    "reword_report", "report_attributes", "gate_text_sensitivity", "gate_attribute_nmi",
    "expert_word_gradient_x_input",
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
    """One stage-1 step: ``L = L_seg + div_weight * sum_s L_div(g_s)``. ``batch``: image, mask, text_features
    (and ``text_mask``, the reports' attention masks, when the dataset has them)."""
    out = model(batch["image"], batch["text_features"], text_mask=batch.get("text_mask"))
    seg = seg_loss(out.logits, batch["mask"])
    div = sum((diversity_loss(g.probs) for g in out.gates), seg.new_zeros(()))
    return {"loss": seg + div_weight * div, "seg": seg.detach(), "div": div.detach()}


def distillation_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """``E_x sum_s ||f_m^s - f^_m^s||_2``: per sample the (non-squared) L2 norm over tokens x channels of each
    stage's difference, summed over stages, averaged over the batch (MLMoE Eq. (7); the paper leaves open whether
    the norm is squared and how the stages combine -- this is the book's reading)."""
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
        mask = batch.get("text_mask")
        fused = model(batch["image"].to(device), batch["text_features"].to(device),
                      text_mask=None if mask is None else mask.to(device)).fused
        stages.append([f.cpu() for f in fused])
    model.train(was_training)
    return [torch.cat(s) for s in zip(*stages)]


def _fixed_prompt(prompt, batch: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A fixed prompt -- ``(T, D)`` features, or ``((T, D) features, (T,) attention mask)`` -- for a batch."""
    feats, mask = prompt if isinstance(prompt, tuple) else (prompt, None)
    feats = feats.to(device).expand(batch, -1, -1)
    return feats, None if mask is None else mask.to(device).expand(batch, -1)


def distillation_step(model, batch, *, seg_loss: SegLoss, dis_weight: float = 1.0,
                      prompt: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> dict[str, torch.Tensor]:
    """One stage-2 step: teacher = the frozen model with the report; student = the same model with the virtual
    prompt and the adapters (``text=None``), or with the fixed ``prompt``'s features ``(T, D)`` and the adapters
    (the fixed-prompt protocol of Table IV). ``L_A = L_seg(student) + dis_weight * L_dis`` (Sec. II-C, after
    Eq. (6)). The teacher's features come from ``batch["teacher"]`` when precomputed
    (:class:`~medmoe.papers.mlmoe.data.TeacherDataset`), else are computed."""
    if "teacher" in batch:
        teacher = batch["teacher"]
    else:
        with torch.no_grad():
            teacher = model(batch["image"], batch["text_features"], text_mask=batch.get("text_mask")).fused
    if prompt is None:
        out = model(batch["image"], None)
    else:  # the fixed prompt (T, D) -> (B, T, D) in place of the virtual prompt, adapters on
        feats, mask = _fixed_prompt(prompt, batch["image"].shape[0], batch["image"].device)
        out = model(batch["image"], feats, adapter=True, text_mask=mask)
    seg = seg_loss(out.logits, batch["mask"])
    dis = distillation_loss([t.detach() for t in teacher], out.fused)
    return {"loss": seg + dis_weight * dis, "seg": seg.detach(), "dis": dis.detach()}


# ----------------------------------------------------------------------------- training
def train(model: TextGuidedSegmenter, train_set: Any, val_set: Any = None, *, stage: str = "text_present",
          out_dir: Any, epochs: int, lr: float, batch_size: int, seed: int = 0, run_key: str | None = None,
          div_weight: float = 1.0, dis_weight: float = 1.0, adapters: bool = True, dice_only: bool = False,
          weight_decay: float = 0.01, patience: int | None = None, progress: bool = False,
          resume: bool = True, distill_prompt: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
          ) -> FitResult:
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
      it with ``evaluate(model, data, text=<the same features>, adapters=True)``. A ``(features, attention
      mask)`` tuple lets the gates pool the prompt over its real tokens.

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
        feats = distill_prompt[0] if isinstance(distill_prompt, tuple) else distill_prompt
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2:
            got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else repr(feats)
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
    device = next(model.parameters()).device
    prompt = None if distill_prompt is None else (
        tuple(t.detach().to(device) for t in distill_prompt) if isinstance(distill_prompt, tuple)
        else distill_prompt.detach().to(device))
    step = partial(distillation_step, seg_loss=seg, dis_weight=dis_weight, prompt=prompt)
    return train_loop(model, opt, train_set, step_fn=step, config=config, batch_size=batch_size, val_set=val_set)


# ----------------------------------------------------------------------------- evaluation
def _check_text(text: Any) -> None:
    if isinstance(text, tuple):
        if len(text) != 2 or not all(isinstance(t, torch.Tensor) for t in text) or text[1].shape != text[0].shape[:1]:
            raise ValueError("a fixed prompt given as a tuple must be ((T, D) features, (T,) attention mask)")
        text = text[0]
    if isinstance(text, torch.Tensor):
        if text.ndim != 2:
            raise ValueError(f"a fixed prompt's features must have shape (T, D), got {tuple(text.shape)}")
    elif text not in ("report", "virtual"):
        raise ValueError(f"text must be 'report', 'virtual' or a (T, D) tensor, got {text!r}")


@torch.no_grad()
def evaluate(model: TextGuidedSegmenter, data: Any, *, text: str | torch.Tensor | tuple = "report",
             batch_size: int = 64,
             device: torch.device | str | None = None, adapters: bool | None = None) -> dict[str, Any]:
    """Test-set metrics of a text-guided segmenter on ``data`` (items with ``image``, ``mask`` and, for
    ``text="report"``, ``text_features``), read in order in batches of ``batch_size``.

    Args:
        text: ``"report"`` (each image's own report features), ``"virtual"`` (the virtual prompt and adapters;
            the text encoder is not needed), or a ``(T, D)`` tensor: one fixed prompt's features for every image
            (the paper's "pneumonia", "a photo of infected areas", ... baselines), or ``((T, D), (T,) mask)``.
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
        mask = None
        if isinstance(text, (torch.Tensor, tuple)):
            feats, mask = _fixed_prompt(text, image.shape[0], device)
        elif text == "report":
            feats = batch["text_features"].to(device)
            mask = batch["text_mask"].to(device) if "text_mask" in batch else None
        else:
            feats = None
        out = model(image, feats, adapter=adapters, text_mask=mask)
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


# ----------------------------------------------------------------------------- does the gate read the report?
_NUMBER_DIGITS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                  "eight": "8", "nine": "9"}


def reword_report(text: str) -> str:
    """A same-meaning rewording of a QaTa-COV19-style report (LViT's annotations, and the book's phantoms): number
    words become digits, "infected area(s)" becomes "lesion(s)", "Bilateral"/"Unilateral" become "in both lungs" /
    "in one lung", region names swap their first two words ("upper left lung" -> "left upper lung") and the
    clauses are listed in reverse order. Same findings, other tokens: the control of the gate's text sensitivity.
    A report in no known template keeps its words, with its comma-separated clauses reversed.

    Example:
        >>> reword_report("Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.")
        'Left upper lung and right lower lung; 2 lesions; pulmonary infection in both lungs.'
    """
    t = text.strip().rstrip(".")
    t = re.sub(r"\b(" + "|".join(_NUMBER_DIGITS) + r")\b", lambda m: _NUMBER_DIGITS[m.group(1)], t)
    t = re.sub(r"\b(Bilateral|bilateral) pulmonary infection\b", "pulmonary infection in both lungs", t)
    t = re.sub(r"\b(Unilateral|unilateral) pulmonary infection\b", "pulmonary infection in one lung", t)
    t = re.sub(r"\binfected areas\b", "lesions", t)
    t = re.sub(r"\binfected area\b", "lesion", t)
    t = re.sub(r"\b(upper|middle|lower) (left|right) lung\b", r"\2 \1 lung", t)
    out = "; ".join(reversed([c.strip() for c in t.split(", ") if c.strip()]))
    return out[:1].upper() + out[1:] + "."


def report_attributes(texts: Sequence[str]) -> dict[str, list[str]]:
    """Attributes a report states, per report: ``laterality`` (bilateral / unilateral / unstated), ``count`` (the
    number of infected areas as a digit, or "unstated") and ``regions`` (the lung regions named, in the order of
    :data:`LUNG_REGIONS`, or "none"). The forms :func:`reword_report` writes ("in both lungs", "2 lesions", "left upper
    lung") read the same as the originals. For NMI of the gate's choices against what the report says.

    Example:
        >>> report_attributes(["Unilateral pulmonary infection, one infected area, upper left lung."])
        {'laterality': ['unilateral'], 'count': ['1'], 'regions': ['upper left lung']}
    """
    out: dict[str, list[str]] = {"laterality": [], "count": [], "regions": []}
    for t in texts:
        low = re.sub(r"\b(left|right) (upper|middle|lower) lung\b", r"\2 \1 lung", t.lower())
        out["laterality"].append("bilateral" if re.search(r"\bbilateral\b|\bboth lungs\b", low) else
                                 "unilateral" if re.search(r"\bunilateral\b|\bone lung\b", low) else "unstated")
        numbers = "|".join([*_NUMBER_DIGITS, *_NUMBER_DIGITS.values()])
        m = re.search(r"\b(" + numbers + r")\b (infected area|lesion)", low)
        out["count"].append(_NUMBER_DIGITS.get(m.group(1), m.group(1)) if m else "unstated")
        out["regions"].append(" + ".join(r for r in LUNG_REGIONS if r in low) or "none")
    return out


def _tv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Total-variation distance between rows of gate weights, ``0.5 * sum |a - b|`` in [0, 1]."""
    return 0.5 * (a - b).abs().sum(-1)


@torch.no_grad()
def gate_text_sensitivity(model: TextGuidedSegmenter, data: Any, encoder: TextEncoder, texts: Sequence[str], *,
                          seed: int = 0, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """How far each test image's gate weights move when its report is replaced.

    For image ``i`` with report ``r_i``: ``swap`` is the total-variation distance (in [0, 1], averaged over the
    guide stages) between the gate weights with ``r_i`` and with the report of another image, drawn at random
    among those whose report differs (``seed``); ``reword`` is the distance with :func:`reword_report` of ``r_i``
    (same findings, other words). A gate that reads what the report says moves more under ``swap`` than under
    ``reword``; one that ignores the text moves under neither. ``between_images``: the distance between image
    ``i``'s and the other image's gate weights, each with its own report (how much the gate varies at all).
    ``text_swap`` / ``text_reword``: the cosine distance of the pooled (real-token) report features themselves
    under the same two changes -- what the frozen text encoder alone does with them.

    Args:
        data: the test items (``image``; read in order), ``texts`` their reports.

    Returns:
        ``{"swap", "reword", "between_images", "text_swap", "text_reword"}``: one value per image,
        ``(num_images,)``; and ``"partner"``, the index of the image whose report was swapped in.
    """
    texts = list(texts)
    if len(texts) != len(data):
        raise ValueError(f"{len(texts)} reports for {len(data)} images")
    if model.config.num_experts == 0:
        raise ValueError("the base model (num_experts=0) has no gate")
    g = torch.Generator().manual_seed(seed)
    partner = []
    for i, t in enumerate(texts):
        others = [j for j, u in enumerate(texts) if u != t]
        partner.append(others[int(torch.randint(len(others), (1,), generator=g))] if others else i)
    own = encode_cached(encoder, texts)
    swap = encode_cached(encoder, [texts[j] for j in partner])
    reword = encode_cached(encoder, [reword_report(t) for t in texts])
    model.eval()
    device = next(model.parameters()).device
    gates: dict[str, list[torch.Tensor]] = {"own": [], "swap": [], "reword": []}
    start = 0
    for batch in make_loader(data, batch_size):
        feats = model.forward_features(batch["image"].to(device))
        sl = slice(start, start + batch["image"].shape[0])
        start = sl.stop
        for key, f in (("own", own), ("swap", swap), ("reword", reword)):
            out = model.forward_head(feats, f.hidden[sl].to(device), text_mask=f.mask[sl].to(device))
            gates[key].append(torch.stack([gt.weights for gt in out.gates]).cpu())  # (S, B, N)
    g_all = {k: torch.cat(v, dim=1) for k, v in gates.items()}
    idx = torch.tensor(partner)
    pooled = {k: pool_text(f.hidden.cpu().float(), f.mask.cpu()) for k, f in (("own", own), ("swap", swap),
                                                                               ("reword", reword))}
    cos = {k: 1 - torch.nn.functional.cosine_similarity(pooled["own"], pooled[k], dim=-1) for k in ("swap", "reword")}
    return {"swap": _tv(g_all["own"], g_all["swap"]).mean(0), "reword": _tv(g_all["own"], g_all["reword"]).mean(0),
            "between_images": _tv(g_all["own"], g_all["own"][:, idx]).mean(0), "text_swap": cos["swap"],
            "text_reword": cos["reword"], "partner": idx}


def gate_attribute_nmi(gates: Sequence[torch.Tensor], labels: Sequence[str], *, n_perm: int = 200,
                       seed: int = 0) -> dict[str, Any]:
    """NMI between the gate's choice (argmax expert per image) and a report attribute, against a permutation
    baseline (:func:`medmoe.moe.nmi_permutation_baseline`), averaged over the guide stages.

    Returns:
        ``nmi`` (observed, mean over stages), ``chance`` (mean NMI of the shuffled choices, mean over stages),
        ``null`` (``n_perm`` values: the stage-mean NMI under each shuffle, the same shuffles as the baseline's,
        for a p-value, e.g. :func:`medmoe.claims.chance_from_null`), and ``top_share``: the fraction of images
        whose stage-1 choice is the most chosen expert (1.0: the gate always picks one expert).
    """
    codes = {v: i for i, v in enumerate(dict.fromkeys(labels))}
    label = torch.tensor([codes[v] for v in labels])
    nmi, chance, null = [], [], torch.zeros(n_perm)
    for w in gates:
        routing = w.argmax(-1)
        base = nmi_permutation_baseline(routing, label, n_perm=n_perm, seed=seed)
        nmi.append(base.nmi)
        chance.append(base.chance_mean)
        null += torch.tensor(base.null)
    first = gates[0].argmax(-1)
    return {"nmi": sum(nmi) / len(nmi), "chance": sum(chance) / len(chance), "null": (null / len(gates)).tolist(),
            "top_share": float(torch.bincount(first).max()) / first.numel()}


def expert_word_gradient_x_input(model: TextGuidedSegmenter, encoder: TextEncoder, text: str, *, stage: int = 0
                                 ) -> tuple[list[str], torch.Tensor]:
    """MLMoE Fig. 3 redrawn as gradient x input: for each text expert ``i`` of one guide stage, the attribution of
    word ``w`` to the expert's total output ``y_i = sum f_t^i`` is ``sum_{t in w} sum_d (dy_i / df_t[t, d]) *
    f_t[t, d]``, with ``f_t`` the frozen encoder's features of ``text`` (word pieces summed into words).

    Returns ``(words, (N, W) signed attributions)``. Unlike :func:`expert_word_attribution` (weight norms, which
    never change sign), this reads what the trained expert does with these particular tokens.
    """
    f = encode_cached(encoder, [text])
    device = next(model.parameters()).device
    feats = f.hidden.detach().to(device).clone().requires_grad_(True)
    experts = model.guides[stage].experts
    rows = []
    with torch.enable_grad():
        out = experts(model.text_proj(feats))  # (1, N, L, C)
        for i in range(out.shape[1]):
            (grad,) = torch.autograd.grad(out[0, i].sum(), feats, retain_graph=i < out.shape[1] - 1)
            rows.append((grad * feats).sum(-1)[0].detach().cpu())  # (T,)
    attr = torch.stack(rows)  # (N, T)
    spans = encoder.words(text)
    return [w for w, _ in spans], torch.stack([attr[:, pos].sum(1) for _, pos in spans], dim=1)
