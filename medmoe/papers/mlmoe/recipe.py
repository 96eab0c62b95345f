"""MLMoE's losses, training steps and evaluation (book: *Chapter 1, MLMoE*).

* Text-present stage: ``L = L_dice + L_ce + L_div`` (MLMoE Sec. II-B), with the CE term as
  BCE-with-logits on the pre-sigmoid logits (the spec's reading: under MONAI 1.0.1 Ariadne's CE term was
  identically zero) and ``L_div`` summed over the three guide stages. ``dice_only=True`` gives the loss
  Ariadne's code effectively optimised.
* Text-absent stage: ``L_A = L_dice + L_ce + L_dis`` (Sec. II-C, after Eq. (6)), where
  ``L_dis = E_x sum_s ||f_m^s - f^_m^s||_2`` between the fused features of each guide stage with the real
  report (teacher, no adapters) and with the virtual prompt + adapters (student); only the prompt and the
  adapters train (:meth:`~medmoe.papers.mlmoe.model.TextGuidedSegmenter.start_distillation`).
* Evaluation with the base code's metric: global (micro) Dice and foreground IoU at 0.5 over the whole test
  set (:class:`medmoe.metrics.GlobalDiceIoU`), with LViT's per-image mean Dice beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch.utils.data import Dataset

from medmoe.metrics import GlobalDiceIoU, PerImageDice
from medmoe.moe import diversity_loss

__all__ = [
    "TextFeatureDataset", "TeacherDataset", "SegLoss", "text_present_step", "teacher_features", "distillation_loss",
    "distillation_step", "evaluate",
    "prepare_phantom_qata", "with_text", "train_text_present", "train_text_absent", "expert_word_attribution",
]


class TextFeatureDataset(Dataset):
    """Wraps an image/mask/text dataset and adds the frozen text encoder's features of each report.

    The features are computed once (``features`` ``(len(dataset), T, D)``, e.g. from
    :func:`medmoe.backbones.encode_cached`), never per epoch. Items gain ``text_features (T, D)``.
    """

    def __init__(self, dataset: Dataset, features: torch.Tensor) -> None:
        if len(features) != len(dataset):
            raise ValueError(f"features has {len(features)} rows for a dataset of {len(dataset)} items")
        self.dataset, self.features = dataset, features

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "text_features": self.features[i]}


class SegLoss(torch.nn.Module):
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


class TeacherDataset(Dataset):
    """Adds the frozen teacher's fused features of each item (``teacher``: one ``(N_s, C_s)`` tensor per stage).

    The text-present model is frozen during distillation, so its features are computed once
    (:func:`teacher_features`) instead of in every step of every epoch.
    """

    def __init__(self, dataset: Dataset, teacher: Sequence[torch.Tensor]) -> None:
        if any(len(t) != len(dataset) for t in teacher):
            raise ValueError(f"teacher features must have {len(dataset)} rows, got {[len(t) for t in teacher]}")
        self.dataset, self.teacher = dataset, list(teacher)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "teacher": [t[i] for t in self.teacher]}


@torch.no_grad()
def teacher_features(model, dataset, *, batch_size: int = 64) -> list[torch.Tensor]:
    """The fused features ``f_m^s`` of every item with its report (no adapters), per stage, on the CPU."""
    from torch.utils.data import DataLoader

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stages: list[list[torch.Tensor]] = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        fused = model(batch["image"].to(device), batch["text_features"].to(device)).fused
        stages.append([f.cpu() for f in fused])
    model.train(was_training)
    return [torch.cat(s) for s in zip(*stages)]


def distillation_step(model, batch, *, seg_loss: SegLoss, dis_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """One stage-2 step: teacher = the frozen model with the report; student = the same model with the virtual
    prompt and the adapters (``text=None``). ``L_A = L_seg(student) + dis_weight * L_dis``. The teacher's
    features come from ``batch["teacher"]`` when precomputed (:class:`TeacherDataset`), else are computed."""
    if "teacher" in batch:
        teacher = batch["teacher"]
    else:
        with torch.no_grad():
            teacher = model(batch["image"], batch["text_features"]).fused
    out = model(batch["image"], None)
    seg = seg_loss(out.logits, batch["mask"])
    dis = distillation_loss([t.detach() for t in teacher], out.fused)
    return {"loss": seg + dis_weight * dis, "seg": seg.detach(), "dis": dis.detach()}


@torch.no_grad()
def evaluate(model, loader, *, text: str | torch.Tensor = "report", device: torch.device | str = "cpu") -> dict[str, Any]:
    """Test-set metrics of a text-guided segmenter.

    Args:
        text: ``"report"`` (each image's own report features), ``"virtual"`` (the virtual prompt and adapters;
            the text encoder is not needed), or a ``(T, D)`` tensor: one fixed prompt's features for every image
            (the paper's "pneumonia", "a photo of infected areas", ... baselines).

    Returns:
        ``global_dice`` and ``global_iou`` (the base code's convention), ``per_image_dice`` (LViT's), the number
        of images, and ``gates``: the stage gate weights ``(num_images, N)`` per stage (empty for Ariadne).
    """
    model.eval()
    glob, per_image = GlobalDiceIoU(from_logits=True), PerImageDice(from_logits=True)
    gates: list[list[torch.Tensor]] = []
    for batch in loader:
        image = batch["image"].to(device)
        if isinstance(text, torch.Tensor):
            feats = text.to(device).expand(image.shape[0], -1, -1)
        elif text == "report":
            feats = batch["text_features"].to(device)
        elif text == "virtual":
            feats = None
        else:
            raise ValueError(f"text must be 'report', 'virtual' or a (T, D) tensor, got {text!r}")
        out = model(image, feats)
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


# ----------------------------------------------------------------------------- data and training drivers
def prepare_phantom_qata(root, *, n_train: int, n_test: int, size: int, seed: int, ambiguous_only: bool = True):
    """Write chest-radiograph phantoms in the QaTa-COV19 (Ariadne) layout under ``root`` and return ``root``.

    ``ambiguous_only`` keeps the phantoms whose image alone is ambiguous -- at least one lesion-like
    distractor that the report does not mention (about half of them) -- the setting in which the report
    carries information the image lacks. The real data are read from the same layout by the same loader
    (:class:`medmoe.papers.mlmoe.data.QaTaDataset`).
    """
    from pathlib import Path

    from torch.utils.data import Subset

    from medmoe.data.phantoms import PhantomDataset2D
    from medmoe.papers.mlmoe.data import write_qata_layout

    root = Path(root)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 10_000)):
        ds = PhantomDataset2D(n=n, modalities=("cxr",), size=size, seed=s, channels=1)
        keep = [i for i, ph in enumerate(ds.phantoms) if ph.distractor_regions] if ambiguous_only else list(range(n))
        if not keep:
            raise ValueError(f"no ambiguous phantoms among {n}; increase n_{split}")
        write_qata_layout(Subset(ds, keep), root, split=split)
    return root


def with_text(dataset, encoder) -> TextFeatureDataset:
    """Attach the frozen text encoder's features of every report (encoded once, cached)."""
    from medmoe.backbones import encode_cached

    return TextFeatureDataset(dataset, encode_cached(encoder, list(dataset.texts)).hidden)


def train_text_present(model, train_ds, val_ds, *, out_dir, epochs: int, lr: float, batch_size: int, seed: int,
                       div_weight: float = 1.0, dice_only: bool = False, weight_decay: float = 0.01,
                       patience: int | None = None, progress: bool = False, resume: bool = True,
                       run_key: str | None = None):
    """Stage 1 with :func:`medmoe.engine.fit`: AdamW, cosine schedule per epoch (Ariadne: ``T_max=200``,
    ``eta_min=1e-6``), best checkpoint and early stopping on the validation segmentation loss (``val_seg``: Dice +
    BCE without ``L_div``, the counterpart of the base code's ``val_loss``). Returns the ``FitResult``."""
    from torch.utils.data import DataLoader

    from medmoe.engine import TrainConfig, fit

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200, eta_min=1e-6)
    seg = SegLoss(dice_only=dice_only)
    cfg = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, progress=progress, resume=resume,
                      early_stopping_patience=patience, scheduler_interval="epoch", monitor="val_seg", run_key=run_key)
    g = torch.Generator().manual_seed(seed)
    return fit(model, opt, DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=g),
               step_fn=lambda m, b: text_present_step(m, b, seg_loss=seg, div_weight=div_weight),
               val_loader=DataLoader(val_ds, batch_size=64), config=cfg, scheduler=sched)


def train_text_absent(model, train_ds, val_ds, *, out_dir, epochs: int, lr: float, batch_size: int, seed: int,
                      dis_weight: float = 1.0, dice_only: bool = False, adapters: bool = True, progress: bool = False,
                      resume: bool = True, run_key: str | None = None):
    """Stage 2: freeze the trained model, learn the virtual prompt (and the adapters) by distillation.

    ``adapters=False`` is Table II's "w/o adapter"; ``dis_weight=0`` is "w/o distillation"."""
    from torch.utils.data import DataLoader

    from medmoe.engine import TrainConfig, fit

    params = model.start_distillation(adapters=adapters)
    train_ds = TeacherDataset(train_ds, teacher_features(model, train_ds))
    val_ds = TeacherDataset(val_ds, teacher_features(model, val_ds))
    opt = torch.optim.AdamW(params, lr=lr)
    seg = SegLoss(dice_only=dice_only)
    cfg = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, progress=progress, resume=resume, monitor="val_seg",
                      run_key=run_key)
    g = torch.Generator().manual_seed(seed)
    return fit(model, opt, DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=g),
               step_fn=lambda m, b: distillation_step(m, b, seg_loss=seg, dis_weight=dis_weight),
               val_loader=DataLoader(val_ds, batch_size=64), config=cfg)


@torch.no_grad()
def expert_word_attribution(model, encoder, text: str, *, stage: int = 0):
    """MLMoE Fig. 3 as the book reads it: how much each word of ``text`` feeds each text expert of one guide
    stage. Returns ``(words, (N, W) tensor)``, rows normalised to sum to 1 (word pieces summed into words)."""
    feats = encoder([text]).hidden
    txt = model.text_proj(feats)
    attr = model.guides[stage].experts.word_attribution(txt)[0]  # (N, T)
    spans = encoder.words(text)
    words = [w for w, _ in spans]
    by_word = torch.stack([attr[:, pos].sum(1) for _, pos in spans], dim=1)
    return words, by_word / by_word.sum(1, keepdim=True)
