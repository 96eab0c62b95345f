"""SegMoTE's recipe: prompts, losses, training steps, the two training stages and evaluation.

Explained in the book: *Chapter 3, SegMoTE* (``chapters/03_segmote``), sections 2 "The frozen foundation model",
4 "Training SegMoTE on the frozen model" and 5 "Box, point or no prompt (Table 4)". The same four verbs as every
paper's recipe:

* :func:`build` -- the model (:func:`medmoe.papers.segmote.model.build_model`);
* :func:`train` -- ``stage="segmote"``: the expert tokens, MoTE, expert heads and PPT on a frozen SAM;
  ``stage="sam_pretrain"``: the quick profile's stand-in SAM, end to end, before it is frozen. Both with
  :func:`medmoe.engine.train_loop`;
* :func:`evaluate` -- Dice with one prompt kind for every item, and what the router chose (and every token's Dice);
  :func:`evaluate_standin` -- the frozen model's own decoding on the same items and prompts (the chapter's control);
* :func:`count` -- parameter counts (Table 3).

What the steps do:

* Items: one per (image, class present in it), as the reference code prompts each class of an image separately
  (the task datasets are in :mod:`medmoe.papers.segmote.data`). Two binary phantom tasks play the role of the
  paper's "group A" (ISIC skin lesions and SZ-CXR lungs), the only ones PPT serves: ``derm``/``lesion`` and
  ``cxr``/``lungs``.
* Prompts as the code samples them: a box is the mask's box with +-5 px jitter (scaled to the image size); a point
  is drawn from the half of the foreground pixels closest to the centroid; group-A items may also be prompt-free.
* Loss: ``20 x focal (gamma 2, alpha 0.25) + Dice`` on the low-resolution logits (MONAI ``DiceFocalLoss``; the
  code's loss without its IoU-regression term, since the IoU head is frozen and unused) plus ``0.01 L_balance``
  (Eq. 11); the quick profile trains with Dice + BCE (``loss="dice_bce"``).
* Metric: :func:`medmoe.metrics.per_class_per_image_dice` -- Dice per class per image at the original
  resolution, averaged over the classes of an image, then over images.
* The stand-in foundation model of the quick profile: SAM's modules at a small size, pretrained on the phantoms with
  SAM's own box and point prompting (:func:`sam_decode`, :func:`sam_pretrain_step`), then frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss
from torch import nn
from torch.utils.data import Subset

from medmoe.engine import FitResult, TrainConfig, make_loader, train_loop
from medmoe.metrics import per_class_per_image_dice
from medmoe.papers.segmote.data import EmbeddingTasks
from medmoe.papers.segmote.model import SegMoTE, build_model
from medmoe.utils import count_parameters

__all__ = [
    "STAGES", "LOSSES", "build", "box_from_mask", "point_from_mask", "sample_prompts", "sam_decode",
    "prompt_tokens_by_kind", "sam_pretrain_step", "standin_loss", "seg_loss", "segmote_step", "train", "evaluate",
    "evaluate_standin", "router_weights", "router_drift", "ROUTER_SETTINGS", "count",
]

STAGES = ("segmote", "sam_pretrain")
"""The training stages of :func:`train`."""

build = build_model


def box_from_mask(mask: torch.Tensor, *, jitter: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(H, W)`` mask -> ``(4,)`` box ``x0, y0, x1, y1`` in pixels, each side moved by up to ``jitter`` pixels."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("box_from_mask: the mask is empty")
    box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    if jitter:
        box = box + (torch.rand(4, generator=generator).to(box.device) * 2 - 1) * jitter
    h, w = mask.shape[-2:]
    return box.clamp(min=0).minimum(torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=box.dtype, device=box.device))


def point_from_mask(mask: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(H, W)`` mask -> one ``(x, y)`` point drawn from the half of the foreground closest to its centroid."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("point_from_mask: the mask is empty")
    pts = torch.stack([xs, ys], dim=1).float()
    d = (pts - pts.mean(0)).norm(dim=1)
    near = d.argsort()[: max(1, (len(d) + 1) // 2)]
    return pts[near[torch.randint(len(near), (1,), generator=generator).to(near.device)]][0]


def sample_prompts(masks: torch.Tensor, group_a: torch.Tensor, *, generator: torch.Generator | None = None,
                   probs: dict[str, float] | None = None, jitter: float = 5.0) -> dict[str, Any]:
    """Draw a prompt kind per item (``box``/``point``, and ``free`` for group-A items) and its geometry.

    ``probs`` defaults to the code's box 0.4, point 0.3, and 0.3 for the text prompt -- which PPT replaces here --
    renormalised to box/point only for items outside group A. Returns ``kind`` (list), ``boxes (B, 4)``,
    ``points (B, 1, 2)``.
    """
    probs = probs or {"box": 0.4, "point": 0.3, "free": 0.3}
    kinds = []
    for a in group_a.tolist():
        names = [k for k in ("box", "point", "free") if a or k != "free"]
        p = torch.tensor([probs[k] for k in names])
        kinds.append(names[int(torch.multinomial(p / p.sum(), 1, generator=generator))])
    b = masks.shape[0]
    boxes = torch.stack([box_from_mask(masks[i, 0], jitter=jitter, generator=generator) for i in range(b)])
    points = torch.stack([point_from_mask(masks[i, 0], generator=generator) for i in range(b)])[:, None]
    return {"kind": kinds, "boxes": boxes, "points": points}


def sam_decode(sam, image_embeddings: torch.Tensor, *, boxes: torch.Tensor | None = None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None,
               sparse: torch.Tensor | None = None) -> torch.Tensor:
    """Plain SAM, batched one prompt per image: low-resolution logits ``(B, 1, 4h, 4w)`` from SAM's first mask
    token (``multimask_output=False``). ``segment_anything``'s ``MaskDecoder.predict_masks`` pairs every prompt with
    one image; this runs its modules for a batch of (image, prompt) pairs. ``sparse`` passes ready prompt tokens
    instead of ``boxes``/``points``."""
    pe, dec = sam.prompt_encoder, sam.mask_decoder
    if sparse is None:
        sparse = pe(points, boxes, None)[0]
    b = image_embeddings.shape[0]
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, *image_embeddings.shape[-2:])
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0).unsqueeze(0).expand(b, -1, -1)
    tokens = torch.cat([out_tokens, sparse], dim=1)
    src = image_embeddings + dense
    hs, keys = dec.transformer(src, pe.get_dense_pe().expand(b, -1, -1, -1), tokens)
    _, d, h, w = src.shape
    up = dec.output_upscaling(keys.transpose(1, 2).reshape(b, d, h, w))
    hyper = dec.output_hypernetworks_mlps[0](hs[:, 1])
    return (hyper[:, None] @ up.flatten(2)).reshape(b, 1, *up.shape[-2:])


def prompt_tokens_by_kind(kinds: Sequence[str], encode, *, batch: int, dim: int, like: torch.Tensor,
                          pad: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse prompt tokens ``(B, N, D)`` for a batch that mixes prompt kinds row by row: ``encode(kind, rows)``
    returns the tokens ``(len(rows), n_kind, D)`` of the rows of one kind (a box: 2 corner tokens; a point: the point
    and SAM's padding token; PPT: its ``Q`` queries). ``N`` is the largest ``n_kind`` of the batch (2 for SAM's
    prompts and PPT with ``Q = 2``; ``Q`` for PPT with ``Q = 4`` or ``8``, Table 4); rows with fewer tokens are
    filled with ``pad`` ``(D,)`` -- SAM's own not-a-point embedding, as SAM pads a point prompt -- or zeros."""
    encoded = {}
    for kind in dict.fromkeys(kinds):
        rows = torch.tensor([i for i, k in enumerate(kinds) if k == kind])
        encoded[kind] = (rows, encode(kind, rows))  # (len(rows), n_kind, D)
    n = max(tokens.shape[1] for _, tokens in encoded.values())
    fill = like.new_zeros(dim) if pad is None else pad.reshape(dim).to(like)
    sparse = fill.expand(batch, n, dim).clone()  # (B, N, D)
    for rows, tokens in encoded.values():
        sparse[rows, : tokens.shape[1]] = tokens.to(sparse.dtype)
    return sparse


def seg_loss() -> DiceFocalLoss:
    """``20 x focal + Dice`` with sigmoid (the code's segmentation loss without its IoU-regression term)."""
    return DiceFocalLoss(sigmoid=True, gamma=2.0, alpha=0.25, lambda_focal=20.0, lambda_dice=1.0)


def standin_loss() -> DiceCELoss:
    """Dice + BCE (MONAI ``DiceCELoss``) for pretraining the quick profile's stand-in SAM. Measured on the phantoms
    (segmote_quick, 900 items, 5 epochs): with the code's ``20 x focal + Dice`` the small SAM collapsed to
    background (Dice 0.000 after 4 epochs, patch 16); with Dice + BCE and patch 8 it reached a training loss of 0.79
    and SegMoTE on top of it box Dice 0.585, point 0.502, prompt-free (PPT, group A) 0.817."""
    return DiceCELoss(sigmoid=True)


LOSSES = {"dice_bce": standin_loss, "focal_dice": seg_loss}
"""The segmentation losses :func:`train` knows: ``dice_bce`` (:func:`standin_loss`) and ``focal_dice`` (the code's
``20 x focal + Dice``, :func:`seg_loss`)."""


def _low_res(mask: torch.Tensor, size: int) -> torch.Tensor:
    return (F.interpolate(mask, size=(size, size), mode="area") > 0.5).float()


def sam_pretrain_step(sam, batch, *, loss_fn, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Train the stand-in SAM end to end with a box or a point per item (the quick profile's foundation model)."""
    images, masks = batch["image"], batch["mask"]
    x = (images * 255.0 - sam.pixel_mean) / sam.pixel_std
    emb = sam.image_encoder(x)
    pr = sample_prompts(masks, torch.zeros(len(masks), dtype=torch.bool), generator=generator,
                        probs={"box": 0.5, "point": 0.5, "free": 0.0})

    def encode(kind, rows):
        if kind == "box":
            return sam.prompt_encoder(None, pr["boxes"][rows], None)[0]
        return sam.prompt_encoder((pr["points"][rows], pr["points"].new_ones(len(rows), 1)), None, None)[0]

    sparse = prompt_tokens_by_kind(pr["kind"], encode, batch=len(masks), dim=emb.shape[1], like=emb,
                                   pad=sam.prompt_encoder.not_a_point_embed.weight)
    out = sam_decode(sam, emb, sparse=sparse)
    loss = loss_fn(out, _low_res(masks, out.shape[-1]))
    return {"loss": loss}


def _prompted(model, batch, kinds: Sequence[str], boxes, points):
    if "emb" in batch:
        emb, early = batch["emb"], batch["early"]
    else:  # not cached: run the frozen image encoder here
        with torch.no_grad():
            emb, early = model.encode(batch["image"])

    def encode(kind, rows):
        if kind == "box":
            return model.prompt_tokens(emb[rows], boxes=boxes[rows])
        if kind == "point":
            return model.prompt_tokens(emb[rows], points=(points[rows], points.new_ones(len(rows), 1)))
        return model.prompt_tokens(emb[rows], prompt_free=True)

    sparse = prompt_tokens_by_kind(kinds, encode, batch=emb.shape[0], dim=model.config.prompt_dim, like=emb,
                                   pad=model.sam.prompt_encoder.not_a_point_embed.weight)
    return model.decode(emb, early, sparse=sparse)


def segmote_step(model, batch, *, loss_fn, balance_weight: float = 0.01,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One SegMoTE step (Eq. 11): ``L_seg + 0.01 L_balance`` with a sampled prompt kind per item."""
    pr = sample_prompts(batch["mask"], batch["group_a"], generator=generator)
    out = _prompted(model, batch, pr["kind"], pr["boxes"], pr["points"])
    seg = loss_fn(out.masks, _low_res(batch["mask"], out.masks.shape[-1]))
    return {"loss": seg + balance_weight * out.balance_loss, "seg": seg.detach(), "balance": out.balance_loss.detach()}


def _dice_rows(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice of each of ``pred``'s ``(N, H, W)`` boolean masks against one ground truth ``(H, W)`` (the same formula as
    :func:`medmoe.metrics.per_class_per_image_dice`: ``2 I / (|P| + |G| + eps)``)."""
    truth = truth.bool().reshape(1, -1)
    pred = pred.reshape(pred.shape[0], -1)
    inter = (pred & truth).sum(1).double()
    return 2 * inter / (pred.sum(1).double() + truth.sum(1).double() + 1e-8)


@torch.no_grad()
def _evaluate(decode, upscale, data: EmbeddingTasks, *, prompt: str, batch_size: int, seed: int, items: str,
              device) -> dict[str, Any]:
    """The evaluation protocol shared by :func:`evaluate` and :func:`evaluate_standin`: the same items, the same
    prompts (box without jitter, one point drawn with a generator seeded by ``seed``), the same metric.
    ``decode(inputs, kinds, boxes, points)`` returns ``(low-res logits (B, 1, h, w), [per-item extra dict])``."""
    if prompt not in ("box", "point", "free"):
        raise ValueError(f"prompt must be box, point or free, got {prompt!r}")
    if items not in ("all", "group_a"):
        raise ValueError(f"items must be 'all' or 'group_a', got {items!r}")
    tasks = data.tasks
    if prompt == "free" or items == "group_a":
        keep = [k for k in range(len(data)) if tasks.is_group_a(k)]
        if not keep:
            raise ValueError(f"prompt={prompt!r}, items={items!r} needs group-A items (tasks PPT serves); "
                             "this data set has none")
        data = Subset(data, keep)
    g = torch.Generator().manual_seed(seed)
    logits, rows = {}, []
    for batch in make_loader(data, batch_size):  # the loader's tensors are on the CPU
        b = batch["mask"].shape[0]
        boxes = torch.stack([box_from_mask(batch["mask"][i, 0]) for i in range(b)])  # (B, 4), from the CPU masks
        points = torch.stack([point_from_mask(batch["mask"][i, 0], generator=g) for i in range(b)])[:, None]
        inputs = {key: batch[key].to(device) for key in ("emb", "early", "image") if key in batch}  # model inputs
        masks, extra = decode(inputs, [prompt] * b, boxes.to(device), points.to(device))
        for i in range(b):
            k = int(batch["item"][i])
            logits[k] = masks[i:i + 1].float().cpu()
            rows.append({"item": k, "image_index": int(batch["image_index"][i]),
                         "class_index": int(batch["class_index"][i]), "modality": int(batch["modality"][i]),
                         "group_a": bool(batch["group_a"][i]), **extra[i]})
    # Per image, stack its prompted classes as channels at the ground truth's resolution and score them together.
    by_image: dict[int, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image_index"], []).append(r)
    n_cls = len(tasks.class_names)
    per_image, sums, counts = [], torch.zeros(n_cls, dtype=torch.float64), torch.zeros(n_cls, dtype=torch.float64)
    for group in by_image.values():
        # Scored on the CPU: the logits were moved there above, and the ground truth stays where the data set made it
        # (one device for both; moving only one of them to the model's device crashes on CUDA).
        truth = torch.stack([tasks.original_mask(r["item"]) for r in group])[None].cpu()  # (1, K, H, W)
        low = torch.cat([logits[r["item"]] for r in group])  # (K, 1, h, w), CPU
        pred = upscale(low, size=tuple(truth.shape[-2:]))[:, 0][None] > 0
        res = per_class_per_image_dice(pred, truth, ignore_background=False)
        per_image.append(float(res["per_image"][0]))
        for j, r in enumerate(group):
            r["dice"] = float(res["dice_bc"][0, j])
            sums[r["class_index"]] += r["dice"]
            counts[r["class_index"]] += 1
            if "token_logits" in r:  # every expert token's mask, scored the same way (SegMoTE only)
                tl = r.pop("token_logits")
                r["token_dice"] = _dice_rows(upscale(tl[:, None], size=tuple(truth.shape[-2:]))[:, 0] > 0,
                                             truth[0, j]).tolist()
    per_image_t = torch.tensor(per_image, dtype=torch.float64)
    return {"dice": float(per_image_t[~per_image_t.isnan()].mean()), "per_class": sums / counts, "rows": rows}


@torch.no_grad()
def evaluate(model, data: EmbeddingTasks, *, prompt: str, batch_size: int = 64, seed: int = 0, items: str = "all",
             noisy: bool = False, token_dice: bool = True) -> dict[str, Any]:
    """SegMoTE's Dice with one prompt kind for every item, plus what the router chose per item.

    ``prompt``: ``box`` (the mask's box, no jitter), ``point`` (one foreground point) or ``free`` (PPT, group-A items
    only). ``items="group_a"`` scores box or point on the group-A items only, the items PPT is scored on (Table 4
    like for like). The metric is :func:`medmoe.metrics.per_class_per_image_dice`: each item's low-resolution logits
    are upsampled (bilinear) to its ground truth's resolution
    (:meth:`~medmoe.papers.segmote.data.SegTasks.original_mask`: the stored image size for IMIS data, as the
    reference test code), thresholded at 0, and scored per class per image; the classes of an
    image are averaged, then the images.

    ``noisy=True`` routes as in training (the Eq. 2 noise on; SAM stays in eval mode): the routing statistics in
    training mode. The masks are then those of noisy routing too.

    Devices: prompts are drawn from the CPU masks, the model inputs (embeddings or images, boxes, points) go to the
    model's device, and the logits come back to the CPU, where the ground truth is: the metric sees one device.

    Returns ``dice`` (float), ``per_class`` ``(len(class_names),)`` (NaN for classes never evaluated) and ``rows``:
    per item its ``image_index``, ``class_index``, ``modality``, ``group_a``, ``dice`` (the item's Dice), the
    ``selected`` token, the expert that every MoTE layer chose for that token (``experts``), the last layer's routing
    confidence per token (``confidence``, ``(T,)``: the softmax probability of each token's chosen expert) and, with
    ``token_dice``, the Dice every expert token's own mask would have had (``token_dice``, ``(T,)``).
    """
    was = model.training
    model.train(noisy)
    device = next(iter(model.trainable_parameters())).device

    def decode(inputs, kinds, boxes, points):
        out = _prompted(model, inputs, kinds, boxes, points)
        last = out.motes[-1].gate
        conf = last.probs.gather(-1, last.indices[..., :1])[..., 0]
        extra = []
        for i in range(len(kinds)):
            sel = int(out.selected[i])
            e = {"selected": sel, "experts": [int(m.gate.indices[i, sel, 0]) for m in out.motes],
                 "confidence": conf[i].float().cpu().tolist()}
            if token_dice:
                e["token_logits"] = out.expert_masks[i].float().cpu()
            extra.append(e)
        return out.masks, extra

    try:
        return _evaluate(decode, model.upscale, data, prompt=prompt, batch_size=batch_size, seed=seed, items=items,
                         device=device)
    finally:
        model.train(was)


@torch.no_grad()
def evaluate_standin(model, data: EmbeddingTasks, *, prompt: str, batch_size: int = 64, seed: int = 0,
                     items: str = "all") -> dict[str, Any]:
    """The frozen foundation model's own decoding, without expert tokens: ``model.sam``'s first mask token
    (:func:`sam_decode`) on the same items, prompts and metric as :func:`evaluate` (the baseline SegMoTE must beat).
    ``prompt`` is ``box`` or ``point`` (SAM has no prompt-free path). Returns ``dice``, ``per_class`` and ``rows``
    (each with the item's ``dice``)."""
    if prompt == "free":
        raise ValueError("the frozen SAM has no prompt-free path: prompt must be box or point")
    device = next(iter(model.sam.parameters())).device

    def decode(inputs, kinds, boxes, points):
        if "emb" in inputs:
            emb = inputs["emb"]
        else:  # not cached: run the frozen image encoder here
            emb, _ = model.encode(inputs["image"])
        if kinds[0] == "box":
            masks = sam_decode(model.sam, emb, boxes=boxes)
        else:
            masks = sam_decode(model.sam, emb, points=(points, points.new_ones(points.shape[0], 1)))
        return masks, [{} for _ in kinds]

    return _evaluate(decode, model.upscale, data, prompt=prompt, batch_size=batch_size, seed=seed, items=items,
                     device=device)


def router_weights(model) -> list[torch.Tensor]:
    """A copy of every MoTE layer's router weights ``W_g`` ``(D, E)`` (on the CPU), to measure later how far
    training moved them (:func:`router_drift`)."""
    return [m.gate.w_gate.detach().float().cpu().clone() for m in model.motes]


def router_drift(before: Sequence[torch.Tensor], model) -> list[dict[str, float]]:
    """Per MoTE layer: ``||W_g - W_g0||_F`` (``moved``), ``||W_g0||_F`` (``initial``) and their ratio (``relative``;
    NaN for the code's zero init, where any move is infinitely many times the start).

    Example:
        >>> m = build_model("segmote_test", router_init_std=0.1)
        >>> w0 = router_weights(m)
        >>> router_drift(w0, m)[0]["moved"]
        0.0
    """
    out = []
    for w0, m in zip(before, model.motes):
        moved = float((m.gate.w_gate.detach().float().cpu() - w0).norm())
        initial = float(w0.norm())
        out.append({"moved": moved, "initial": initial, "relative": moved / initial if initial > 0 else float("nan")})
    return out


ROUTER_SETTINGS: dict[str, dict[str, float]] = {
    "paper": {"router_init_std": 0.0, "router_lr_scale": 1.0},
    "deviation": {"router_init_std": 0.1, "router_lr_scale": 10.0},
}
"""The named switch for MoTE's router (``router`` in the chapter's parameters).

* ``paper``: the released code's zero-initialised ``W_g`` and ``W_n``, trained at the same learning rate as every
  other new module. Every clean logit starts at 0, so routing starts out decided by the Eq. 2 noise alone.
* ``deviation`` (the book's, not the paper's): ``W_g ~ N(0, 0.1^2)`` (``router_init_std``; with LayerNorm-ed tokens of
  width 64 the clean logits start with a spread of about 0.8, so routing is input-dependent from the first step) and
  the router's ``W_g``, ``W_n`` in their own AdamW parameter group at ``router_lr_scale`` (10) times the learning rate
  of the other modules.
"""


def train(model: nn.Module, train_set: Any, val_set: Any = None, *, out_dir: Any, epochs: int, lr: float,
          batch_size: int, seed: int = 0, run_key: str | None = None, stage: str = "segmote", loss: str = "dice_bce",
          balance_weight: float = 0.01, lr_milestones: Sequence[int] = (), weight_decay: float = 1e-5,
          router_lr_scale: float = 1.0, progress: bool = False, resume: bool = True) -> FitResult:
    """Train one stage with :func:`medmoe.engine.train_loop` (AdamW at ``lr`` with ``weight_decay``, ``epochs``
    epochs, batches of ``batch_size`` shuffled with ``seed``).

    Optimiser of ``stage="segmote"``: AdamW with weight decay ``1e-5``, as the released code (``InMyDreammer/SegMoTE``
    ``train.py``, ``BaseTrainer.set_optimizer``: ``AdamW(params, lr=args.lr, weight_decay=args.weight_decay)`` with
    ``--weight_decay`` defaulting to ``1e-5``); the paper says Adam. At ``1e-5`` the decoupled decay of
    AdamW and Adam's L2 term differ by a negligible amount; torch's default (``0.01``) would not be the code's.
    ``weight_decay`` applies to that stage only; the quick profile's stand-in pretraining (not a paper setting)
    keeps AdamW's default.

    ``router_lr_scale`` (``stage="segmote"``): the MoTE routers' ``W_g`` and ``W_n`` form a second parameter group at
    ``router_lr_scale x lr`` (1: one learning rate for all, as the code; the book's deviation,
    :data:`ROUTER_SETTINGS`, uses 10). The first group holds every other new module, so the logged ``lr`` is theirs.

    Stages:

    * ``"segmote"`` (Eq. 11): ``model`` is a :class:`~medmoe.papers.segmote.model.SegMoTE` with a frozen SAM and
      ``train_set`` an :class:`~medmoe.papers.segmote.data.EmbeddingTasks`; only the new modules train
      (:meth:`SegMoTE.trainable_parameters`), with :func:`segmote_step`: a prompt kind drawn per item,
      ``LOSSES[loss] + balance_weight x L_balance``. ``lr_milestones``: halve the learning rate after these epochs
      (``MultiStepLR``, stepped once per epoch; the paper's schedule is ``(7, 12)``).
    * ``"sam_pretrain"``: the quick profile's stand-in foundation model. ``model`` is the ``Sam`` to pretrain (or
      a SegMoTE, whose ``sam`` is taken); every SAM weight is unfrozen and trained end to end with a box or a point
      per item of ``train_set`` (a :class:`~medmoe.papers.segmote.data.SegTasks`), :func:`sam_pretrain_step`.
      Freeze it afterwards (:meth:`SegMoTE.freeze_sam`).

    The prompts are drawn from a ``torch.Generator`` seeded with ``seed``. ``resume=True``: a run interrupted
    under the same ``run_key`` continues from its last epoch (:func:`medmoe.engine.fit`).

    Raises:
        ValueError: an unknown ``stage`` or ``loss``, ``lr_milestones`` with ``stage="sam_pretrain"``, or a negative
            ``weight_decay``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not router_lr_scale > 0:
        raise ValueError(f"router_lr_scale must be > 0, got {router_lr_scale}")
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {STAGES}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {sorted(LOSSES)}")
    loss_fn = LOSSES[loss]()
    generator = torch.Generator().manual_seed(seed)
    if stage == "sam_pretrain":
        if lr_milestones:
            raise ValueError("lr_milestones is for stage='segmote'; the stand-in SAM trains at a constant lr")
        sam = model.sam if isinstance(model, SegMoTE) else model
        for p in sam.parameters():
            p.requires_grad_(True)
        config = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, progress=progress, resume=resume,
                             run_key=run_key)
        return train_loop(sam, torch.optim.AdamW(sam.parameters(), lr=lr), train_set,
                          step_fn=lambda m, b: sam_pretrain_step(m, b, loss_fn=loss_fn, generator=generator),
                          config=config, batch_size=batch_size, val_set=val_set)
    routers = {id(p) for m in model.motes for p in m.gate.parameters() if p.requires_grad}
    groups = [{"params": [p for p in model.trainable_parameters() if id(p) not in routers]}]
    if router_lr_scale != 1.0:
        groups.append({"params": [p for p in model.trainable_parameters() if id(p) in routers],
                       "lr": lr * router_lr_scale})
    else:
        groups[0]["params"] = model.trainable_parameters()
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)  # the code's 1e-5
    milestones = [int(e) for e in lr_milestones]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.5) if milestones else None
    config = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, progress=progress, resume=resume, run_key=run_key,
                         scheduler_interval="epoch")
    return train_loop(model, optimizer, train_set,
                      step_fn=lambda m, b: segmote_step(m, b, loss_fn=loss_fn, balance_weight=balance_weight,
                                                        generator=generator),
                      config=config, batch_size=batch_size, val_set=val_set, scheduler=scheduler)


def count(model: nn.Module) -> dict[str, int]:
    """Parameters of a :class:`~medmoe.papers.segmote.model.SegMoTE` (Table 3): ``total``, ``trainable`` (the
    learnable parameters), ``sam`` (the frozen foundation model), ``ppt`` (PPT), ``mote_side`` (everything learnable
    but PPT: expert tokens, MoTE, expert heads) and ``experts`` (the experts of every MoTE layer together).

    Example:
        >>> c = count(build_model("segmote_test"))
        >>> c["trainable"] == c["mote_side"] + c["ppt"], c["total"] == c["sam"] + c["trainable"]
        (True, True)
    """
    trainable = count_parameters(model, trainable_only=True)
    ppt = count_parameters(model.ppt)
    return {"total": count_parameters(model), "trainable": trainable, "sam": count_parameters(model.sam), "ppt": ppt,
            "mote_side": trainable - ppt, "experts": sum(count_parameters(m.experts) for m in model.motes)}
