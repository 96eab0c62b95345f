"""MoME / Universal Model training and evaluation on partially labelled CT.

Explained in the book: *Chapter 4, MoME* (``chapters/04_mome``), sections 3 "Training: one backbone, two
heads" and 4 "Per-organ Dice (the Universal Model's convention)". The same four verbs as every paper's recipe:

* :func:`build` -- the model (:func:`medmoe.papers.mome.model.build_model`);
* :func:`train` -- AdamW with :func:`medmoe.engine.train_loop` on :func:`train_step`, whose loss is
  :func:`partial_label_loss`: Dice + BCE only over the (volume, class) pairs whose class the volume's source data
  set annotates; the other classes get no gradient (the Universal Model's masked ``DiceLoss`` + ``Multi_BCELoss``,
  weights 1:1); optionally the Universal Model's linear warm-up + cosine decay per epoch
  (:func:`warmup_cosine_factor`);
* :func:`evaluate` -- MONAI ``sliding_window_inference`` (overlap 0.5, Gaussian blending), sigmoid > 0.5, Dice per
  organ per volume (:func:`medmoe.metrics.per_volume_class_dice`; organs absent from a volume's ground truth are
  skipped, as the reference ``test.py``), averaged per organ; router maps only for the volumes asked for;
* :func:`count` -- parameter counts (total, trainable, the router, the expert projections).

Besides, the class text embeddings (:func:`class_text_embeddings`): "A computerized tomography of a {organ}"
encoded once, as the Universal Model stores its ``txt_encoding.pth`` -- CLIP ViT-B/32 in the ``paper`` profile (a
saved ``(C, 512)`` tensor, or a local CLIP folder), the packaged MiniLM (mean over tokens) offline. The datasets
(the phantom CT, the random training patches, the Universal Model's dataset lists) are in
:mod:`medmoe.papers.mome.data`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from torch import nn
from torch.utils.data import Dataset

from medmoe.backbones import build_text_encoder
from medmoe.data.phantoms import ct_prompt
from medmoe.engine import FitResult, TrainConfig, train_loop
from medmoe.metrics import mean_dice_per_class, per_volume_class_dice
from medmoe.papers.mome.model import build_model
from medmoe.utils import count_parameters

__all__ = ["class_text_embeddings", "partial_label_loss", "train_step", "warmup_cosine_factor", "SCHEDULES", "build",
           "train", "evaluate", "count"]

#: Learning-rate schedules of :func:`train`: ``constant`` (the quick profile) and ``warmup_cosine`` (the Universal
#: Model's ``LinearWarmupCosineAnnealingLR``, stepped once per epoch).
SCHEDULES = ("constant", "warmup_cosine")

build = build_model


def class_text_embeddings(names: Sequence[str], *, encoder: str = "minilm") -> torch.Tensor:
    """``(C, D)`` embeddings of "A computerized tomography of a {name}" for each class name.

    ``encoder``: ``"minilm"`` (the packaged all-MiniLM-L6-v2, mean over real tokens; offline), a ``.pth``/``.pt``
    file holding a ``(C, D)`` tensor in the classes' order (the Universal Model's ``txt_encoding.pth``: CLIP
    ViT-B/32, 512-d), or a local folder with a Hugging Face CLIP checkpoint (``CLIPModel.get_text_features``).

    Example:
        >>> class_text_embeddings(["liver", "spleen"]).shape
        torch.Size([2, 384])
    """
    prompts = [ct_prompt(n) for n in names]
    path = Path(encoder)
    if encoder == "minilm":
        enc = build_text_encoder("minilm", max_length=16)
        with torch.no_grad():
            f = enc(prompts)
        m = f.mask[..., None].to(f.hidden)
        return (f.hidden * m).sum(1) / m.sum(1)
    if path.suffix in (".pth", ".pt"):
        if not path.is_file():
            raise FileNotFoundError(f"text embedding file not found: {path}")
        emb = torch.load(path, map_location="cpu", weights_only=True)
        if not torch.is_tensor(emb) or emb.ndim != 2 or emb.shape[0] != len(names):
            raise ValueError(f"{path} must hold a ({len(names)}, D) tensor (one row per class), got "
                             f"{tuple(emb.shape) if torch.is_tensor(emb) else type(emb).__name__}")
        return emb.float()
    if path.is_dir():
        from transformers import CLIPModel, CLIPTokenizer  # lazy: slow to import; only a CLIP folder needs it

        model, tok = CLIPModel.from_pretrained(path, local_files_only=True).eval(), CLIPTokenizer.from_pretrained(path)
        with torch.no_grad():
            out = model.get_text_features(**tok(prompts, padding=True, return_tensors="pt"))
        return (out if torch.is_tensor(out) else out.pooler_output).float()
    raise ValueError(f"encoder must be 'minilm', a .pth file or a CLIP folder; {encoder!r} is none of them")


def partial_label_loss(logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dice + BCE over the labelled (volume, class) pairs only.

    Args:
        logits: ``(B, C, D, H, W)``.
        target: ``(B, C, D, H, W)`` binary.
        labelled: ``(B, C)`` bool, True where the volume's source annotates the class.

    Returns:
        ``loss`` (Dice + BCE), ``dice`` and ``bce``: each the mean over labelled pairs of the per-(volume, class)
        term -- Dice loss with smoothing 1 (MONAI ``DiceLoss(sigmoid=True)``), BCE with logits averaged over voxels.
        Unlabelled classes do not enter, so their logits get no gradient.
    """
    if logits.shape != target.shape or logits.ndim < 3:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must both be (B, C, ...)")
    if tuple(labelled.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"labelled must be (B, C) = {tuple(logits.shape[:2])}, got {tuple(labelled.shape)}")
    keep = labelled.bool()
    if not keep.any():
        raise ValueError("no labelled (volume, class) pair in the batch")
    target = target.to(logits.dtype)
    dice = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, reduction="none")(logits, target).reshape(keep.shape)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(-1)
    d, b = dice[keep].mean(), bce[keep].mean()
    return {"loss": d + b, "dice": d.detach(), "bce": b.detach()}


def train_step(model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One step: forward on the patches, :func:`partial_label_loss`."""
    out = model(batch["image"])
    return partial_label_loss(out.logits, batch["label"], batch["labelled"])


def warmup_cosine_factor(epoch: int, *, warmup_epochs: int, max_epochs: int) -> float:
    """The learning-rate factor (of ``lr``) for 0-based ``epoch`` under the Universal Model's schedule.

    Its ``train.py`` steps ``LinearWarmupCosineAnnealingLR(warmup_epochs, max_epochs)`` (start 0, minimum 0) *before*
    each epoch, so epoch ``e`` trains at the schedule's value at ``t = e + 1``: ``t / (warmup_epochs - 1)`` while
    ``t < warmup_epochs`` (linear warm-up from 0), then ``(1 + cos(pi (t - warmup_epochs) / (max_epochs -
    warmup_epochs))) / 2`` (cosine decay to 0 at ``t = max_epochs``).

    Example:
        >>> [round(warmup_cosine_factor(e, warmup_epochs=3, max_epochs=7), 3) for e in range(6)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if warmup_epochs < 0 or max_epochs <= warmup_epochs:
        raise ValueError(f"need 0 <= warmup_epochs < max_epochs, got warmup_epochs={warmup_epochs}, "
                         f"max_epochs={max_epochs}")
    t = epoch + 1
    if t < warmup_epochs:
        return t / max(1, warmup_epochs - 1)
    return 0.5 * (1.0 + math.cos(math.pi * (t - warmup_epochs) / (max_epochs - warmup_epochs)))


def train(model: nn.Module, train_set: Any, val_set: Any = None, *, out_dir: Any, epochs: int, lr: float,
          batch_size: int, seed: int = 0, run_key: str | None = None, weight_decay: float = 1e-5,
          schedule: str = "constant", warmup_epochs: int = 0, progress: bool = False,
          resume: bool = True) -> FitResult:
    """Train the Universal Model or MoME with partial labels: AdamW at ``lr`` with ``weight_decay`` (the Universal
    Model's 1e-5 by default), ``epochs`` epochs of :func:`train_step` on ``train_set`` (e.g.
    :class:`medmoe.papers.mome.data.RandomPatches`), shuffled by ``seed`` (:func:`medmoe.engine.train_loop`).

    ``schedule``: ``"constant"`` (``lr`` throughout) or ``"warmup_cosine"`` (the Universal Model's linear warm-up
    over ``warmup_epochs`` then cosine decay to 0 at ``epochs``, once per epoch: :func:`warmup_cosine_factor`; its
    ``train.py`` uses 100 of 2,000 epochs).

    The model must be on its device and hold its class text embeddings
    (:meth:`~medmoe.papers.mome.model.UniversalSeg.set_text_embeddings`) already. ``val_set``, when given, is
    scored with the same loss (``val_loss``). ``resume=True``: a run with the same ``out_dir`` and ``run_key``
    continues from its last checkpoint (with the scheduler's state).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    interval = "epoch" if schedule == "warmup_cosine" else "step"
    config = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, progress=progress, resume=resume, run_key=run_key,
                         scheduler_interval=interval)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = None
    if schedule == "warmup_cosine":
        warmup_cosine_factor(0, warmup_epochs=warmup_epochs, max_epochs=epochs)  # checks the two numbers
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: warmup_cosine_factor(e, warmup_epochs=warmup_epochs, max_epochs=epochs))
    return train_loop(model, optimizer, train_set, step_fn=train_step, config=config, batch_size=batch_size,
                      val_set=val_set, scheduler=scheduler)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, overlap: float = 0.5, sw_batch_size: int = 4,
             maps_for: Sequence[int] = ()) -> dict[str, Any]:
    """Sliding-window inference (MONAI, ``roi_size = model.config.roi_size``, Gaussian blending) on whole volumes,
    sigmoid > 0.5, Dice per organ per volume (the Universal Model's ``2TP / (|P| + |G| + 1)``), NaN for classes
    the volume's source does not label and for labelled classes absent from the volume's ground truth (the
    reference ``test.py`` scores an organ only where ``sum(label) != 0``).

    ``maps_for``: indices of the volumes whose maps are returned (the ones a figure draws). Only for these is the
    router's ``(C, E, D, H, W)`` map stitched across windows: at CT size it is ``C x E`` times the size of the
    volume, so it is never computed for the others.

    Returns ``dice`` ``(N, C)`` (numpy), ``per_class`` ``(C,)`` (mean over the volumes that score the class),
    ``sources`` (per volume) and ``maps``, one per index of ``maps_for`` in its order: ``router``
    ``(C, E, D, H, W)`` (MoME; ``None`` for the Universal Model) and ``probability`` ``(C, D, H, W)`` with the
    volume's ``image``, ``label``, ``source`` and ``index``.
    """
    maps_for = [int(k) for k in maps_for]
    bad = [k for k in maps_for if not 0 <= k < len(data)]
    if bad:
        raise ValueError(f"maps_for indices {bad} are outside the {len(data)} volumes")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    roi = (model.config.roi_size,) * 3
    c = model.config.num_classes

    def logits_only(x):
        return model(x).logits

    def with_router(x):
        out = model(x)
        return out.logits if out.router is None else (out.logits, out.router.flatten(1, 2))  # (B, C E, d, h, w)

    rows, sources, kept = [], [], {}
    for k in range(len(data)):
        item = data[k]
        x = item["image"][None].to(device)
        drawn = k in maps_for
        pred = sliding_window_inference(x, roi, sw_batch_size, with_router if drawn else logits_only,
                                        overlap=overlap, mode="gaussian")
        logits, router = (pred, None) if torch.is_tensor(pred) else pred
        prob = torch.sigmoid(logits)
        rows.append(per_volume_class_dice(prob.cpu(), item["label"][None].cpu(),
                                          labelled=item["labelled"][None].cpu())[0])
        sources.append(item.get("source", item.get("dataset")))
        if drawn:
            kept[k] = {"index": k, "image": item["image"][0].cpu().numpy(), "label": item["label"].cpu().numpy(),
                       "source": sources[-1], "probability": prob[0].cpu().numpy(),
                       "router": None if router is None
                       else router[0].reshape(c, -1, *router.shape[2:]).cpu().numpy()}
    model.train(was)
    dice = torch.stack(rows)
    return {"dice": dice.numpy(), "per_class": mean_dice_per_class(dice).numpy(), "sources": sources,
            "maps": [kept[k] for k in maps_for]}


def count(model: nn.Module) -> dict[str, int]:
    """Parameters: ``total``, ``trainable``, ``router`` (the text-guided router; 0 for the Universal Model) and
    ``experts`` (the per-expert projections to the head width; the Universal Model's one is its ``precls_conv``).

    Example:
        >>> c = count(build_model("mome_test"))
        >>> c["total"] == c["trainable"], c["router"] > 0
        (True, True)
    """
    return {"total": count_parameters(model), "trainable": count_parameters(model, trainable_only=True),
            "router": 0 if model.router is None else count_parameters(model.router),
            "experts": count_parameters(model.experts)}
