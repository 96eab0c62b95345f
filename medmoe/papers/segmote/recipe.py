"""SegMoTE's segmentation tasks, prompts, losses, training steps and evaluation (book: *Chapter 3, SegMoTE*).

* Tasks: one item per (image, class present in it), as the reference code prompts each class of an image
  separately. On the phantoms the classes are anatomy structures and the lesions of five modalities; two binary
  tasks play the role of the paper's "group A" (ISIC skin lesions and SZ-CXR lungs), the only ones PPT serves:
  ``derm``/``lesion`` and ``cxr``/``lungs``.
* Prompts as the code samples them: a box is the mask's box with +-5 px jitter (scaled to the image size); a point
  is drawn from the half of the foreground pixels closest to the centroid; group-A items may also be prompt-free.
* Loss: ``20 x focal (gamma 2, alpha 0.25) + Dice`` on the low-resolution logits (MONAI ``DiceFocalLoss``; the
  code's loss without its IoU-regression term, since the IoU head is frozen and unused) plus ``0.01 L_balance``
  (Eq. 11).
* Metric: :func:`medmoe.metrics.per_class_per_image_dice` -- Dice per class per image at the original
  resolution, averaged over the classes of an image, then over images.
* The stand-in foundation model of the quick profile: SAM's modules at a small size, pretrained on the phantoms with
  SAM's own box and point prompting (:func:`sam_decode`, :func:`sam_pretrain_step`), then frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "TASK_CLASSES", "GROUP_A", "IMIS_GROUP_A", "SegTasks", "PhantomSegTasks", "IMISSegTasks", "box_from_mask", "point_from_mask", "sample_prompts",
    "sam_decode", "prompt_tokens_by_kind", "sam_pretrain_step", "standin_loss", "cache_embeddings", "EmbeddingTasks", "seg_loss", "segmote_step",
    "evaluate",
]

#: Classes segmented on each phantom modality (``lungs`` = left + right lung).
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "cxr": ("lungs", "heart", "lesion"),
    "ct": ("left lung", "right lung", "heart", "bone", "lesion"),
    "mri": ("cerebrospinal fluid", "grey matter", "white matter", "lesion"),
    "us": ("organ", "lesion"),
    "derm": ("lesion",),
}
#: The binary tasks PPT serves (the code's "group A": ISIC and, in the paper's text, SZ-CXR).
GROUP_A: frozenset[tuple[str, str]] = frozenset({("derm", "lesion"), ("cxr", "lungs")})


def _class_mask(phantom, name: str) -> np.ndarray:
    if name == "lesion":
        return phantom.lesion.astype(bool)
    classes = phantom.anatomy_classes
    if name == "lungs":
        return np.isin(phantom.anatomy, [classes.index("left lung"), classes.index("right lung")])
    return phantom.anatomy == classes.index(name)


class SegTasks(Dataset):
    """Per-(image, class) segmentation items; the shared interface of the phantom and IMIS-layout tasks.

    An item of ``items`` is ``(image_index, group, class_name)``, where ``group`` is a phantom modality or an IMIS
    data set code (the "modality" the selection statistics are taken over). Subclasses implement
    :meth:`image`, :meth:`mask` and, if the metric's resolution differs from the input's, :meth:`original_mask`.

    Items: ``image`` float32 ``(3, S, S)``, ``mask`` float32 ``(1, S, S)``, ``modality`` int (into
    :attr:`modalities`), ``class_index`` int (into :attr:`class_names`, ``"group/class"``), ``image_index`` int,
    ``group_a`` bool (PPT serves this item's task).
    """

    items: list[tuple[int, str, str]]
    modalities: tuple[str, ...]
    class_names: list[str]
    group_a: frozenset[tuple[str, str]]
    num_images: int

    def image(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def mask(self, k: int) -> torch.Tensor:
        raise NotImplementedError

    def original_mask(self, k: int) -> torch.Tensor:
        """Item ``k``'s ground truth ``(H, W)`` at the resolution the metric is taken at (default: the input's)."""
        return self.mask(k)[0] > 0.5

    def is_group_a(self, k: int) -> bool:
        return self.items[k][1:] in self.group_a

    def images(self) -> Dataset:
        """The distinct images as a data set of ``{"image": (3, S, S)}`` (what :func:`cache_embeddings` encodes)."""
        return _Images(self)

    def __len__(self) -> int:
        return len(self.items)

    def item(self, k: int, *, image: bool = True) -> dict[str, Any]:
        """Item ``k``; ``image=False`` leaves the image out (when its embedding is cached)."""
        i, group, name = self.items[k]
        out = {"mask": self.mask(k), "modality": self.modalities.index(group),
               "class_index": self.class_names.index(f"{group}/{name}"), "image_index": i, "group_a": self.is_group_a(k)}
        return {"image": self.image(i), **out} if image else out

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.item(k)


class _Images(Dataset):
    def __init__(self, tasks: SegTasks) -> None:
        self.tasks = tasks

    def __len__(self) -> int:
        return self.tasks.num_images

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.tasks.image(i)}


class PhantomSegTasks(SegTasks):
    """Per-(image, class) items (see :class:`SegTasks`) from :class:`medmoe.data.phantoms.PhantomDataset2D`.

    Classes smaller than ``min_area`` pixels in an image are skipped; group A is :data:`GROUP_A`.
    """

    def __init__(self, phantoms, *, min_area: int = 8) -> None:
        from medmoe.data.phantoms import MODALITIES

        self.phantoms, self.modalities, self.group_a = phantoms, tuple(MODALITIES), GROUP_A
        self.num_images = len(phantoms.phantoms)
        self.class_names = [f"{m}/{c}" for m in MODALITIES for c in TASK_CLASSES[m]]
        self.items = []
        for i, ph in enumerate(phantoms.phantoms):
            for c in TASK_CLASSES[ph.modality]:
                if _class_mask(ph, c).sum() >= min_area:
                    self.items.append((i, ph.modality, c))
        if not self.items:
            raise ValueError("no class of any image reaches min_area; use larger images or a smaller min_area")

    def image(self, i: int) -> torch.Tensor:
        return self.phantoms[i]["image"]

    def mask(self, k: int) -> torch.Tensor:
        i, _, name = self.items[k]
        return torch.from_numpy(_class_mask(self.phantoms.phantoms[i], name)[None].astype(np.float32))


#: SegMoTE's group A in the IMIS layout written by ``data_scripts/build_medseg_hq.py`` (ISIC 2018, SZ-CXR), plus
#: ISLES 2022, on which Table 4 also evaluates PPT.
IMIS_GROUP_A: frozenset[tuple[str, str]] = frozenset(
    {("isic2018_task1", "skin_lesion"), ("sz_cxr", "lung"), ("isles22", "stroke_lesion")})


class IMISSegTasks(SegTasks):
    """Per-(image, class) items (see :class:`SegTasks`) from IMIS-Bench folders (the ``paper`` profile).

    ``data`` is a :class:`medmoe.papers.segmote.data.IMISDataset` or :class:`~medmoe.papers.segmote.data.MultiDatasetIMIS` in
    ``per_class`` mode; the group of an item is its data set code. The metric is taken at the stored resolution
    (:meth:`original_mask`), as SegMoTE's test code does. ``group_a``: ``(code, class)`` pairs PPT serves.

    Example:
        >>> from medmoe.papers.segmote.data import MultiDatasetIMIS
        >>> tasks = IMISSegTasks(MultiDatasetIMIS(root="data/medseg_hq", split="test", size=512))  # doctest: +SKIP
    """

    def __init__(self, data, *, group_a: frozenset[tuple[str, str]] | set = IMIS_GROUP_A) -> None:
        parts = list(getattr(data, "datasets", [data]))
        if any(getattr(d, "mode", None) != "per_class" for d in parts):
            raise ValueError("IMISSegTasks needs IMIS data sets in mode='per_class'")
        self.modalities = tuple(d.code for d in parts)
        self.class_names = [f"{d.code}/{c}" for d in parts for c in d.classes]
        self.group_a = frozenset(tuple(g) for g in group_a)
        self._where: list[tuple[Any, int]] = []  # image_index -> (data set, record)
        self._channel: list[int] = []
        self.items = []
        for d in parts:
            offset = len(self._where)
            self._where += [(d, r) for r in range(len(d.records))]
            for r, ch in d.index:
                self.items.append((offset + r, d.code, d.all_classes[ch]))
                self._channel.append(ch)
        self.num_images = len(self._where)
        if not self.items:
            raise ValueError(f"no (image, class) item in {list(self.modalities)}")

    def image(self, i: int) -> torch.Tensor:
        d, r = self._where[i]
        return d.load_image(r)

    def mask(self, k: int) -> torch.Tensor:
        d, r = self._where[self.items[k][0]]
        return d.load_mask(r, self._channel[k])[0]

    def original_mask(self, k: int) -> torch.Tensor:
        d, r = self._where[self.items[k][0]]
        return d.load_mask(r, self._channel[k])[1] > 0


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
               points: tuple[torch.Tensor, torch.Tensor] | None = None, sparse: torch.Tensor | None = None) -> torch.Tensor:
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


def prompt_tokens_by_kind(kinds: Sequence[str], encode, *, batch: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """Sparse prompt tokens ``(B, 2, D)`` for a batch that mixes prompt kinds row by row: ``encode(kind, rows)``
    returns the tokens of the rows of one kind (a box: 2 corner tokens; a point: the point and SAM's padding token;
    PPT: its 2 queries)."""
    sparse = like.new_zeros(batch, 2, dim)
    for kind in dict.fromkeys(kinds):
        rows = torch.tensor([i for i, k in enumerate(kinds) if k == kind])
        sparse = sparse.index_put((rows,), encode(kind, rows))
    return sparse


def seg_loss():
    """``20 x focal + Dice`` with sigmoid (the code's segmentation loss without its IoU-regression term)."""
    from monai.losses import DiceFocalLoss

    return DiceFocalLoss(sigmoid=True, gamma=2.0, alpha=0.25, lambda_focal=20.0, lambda_dice=1.0)


def standin_loss():
    """Dice + BCE (MONAI ``DiceCELoss``) for pretraining the quick profile's stand-in SAM. Measured on the phantoms
    (segmote_quick, 900 items, 5 epochs): with the code's ``20 x focal + Dice`` the small SAM collapsed to
    background (Dice 0.000 after 4 epochs, patch 16); with Dice + BCE and patch 8 it reached a training loss of 0.79
    and SegMoTE on top of it box Dice 0.585, point 0.502, prompt-free (PPT, group A) 0.817."""
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True)


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

    sparse = prompt_tokens_by_kind(pr["kind"], encode, batch=len(masks), dim=emb.shape[1], like=emb)
    out = sam_decode(sam, emb, sparse=sparse)
    loss = loss_fn(out, _low_res(masks, out.shape[-1]))
    return {"loss": loss}


@torch.no_grad()
def cache_embeddings(model, tasks: Dataset, *, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Run the frozen image encoder once per *image* and keep, per item, the index of its image's embedding."""
    from torch.utils.data import DataLoader

    device = next(iter(model.parameters())).device
    emb, early = [], []
    for batch in DataLoader(tasks.images(), batch_size=batch_size):
        e, f = model.encode(batch["image"].to(device))
        emb.append(e)
        early.append(f)
    return {"emb": torch.cat(emb), "early": torch.cat(early)}


class EmbeddingTasks(Dataset):
    """:class:`SegTasks` items with the cached frozen embeddings of their image (``emb``, ``early``) and the item's
    index (``item``).

    ``cache=None`` keeps the image instead, and the steps run the frozen encoder on every batch: for data sets whose
    embeddings do not fit in memory (SAM ViT-B at 512 px: 4 MB per image, ``emb`` plus ``early``).
    """

    def __init__(self, tasks: SegTasks, cache: dict[str, torch.Tensor] | None) -> None:
        self.tasks, self.cache = tasks, cache

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, k: int) -> dict[str, Any]:
        if self.cache is None:
            return {**self.tasks.item(k), "item": k}
        item = self.tasks.item(k, image=False)
        i = item["image_index"]
        return {**item, "item": k, "emb": self.cache["emb"][i], "early": self.cache["early"][i]}


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

    sparse = prompt_tokens_by_kind(kinds, encode, batch=emb.shape[0], dim=model.config.prompt_dim, like=emb)
    return model.decode(emb, early, sparse=sparse)


def segmote_step(model, batch, *, loss_fn, balance_weight: float = 0.01,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One SegMoTE step (Eq. 11): ``L_seg + 0.01 L_balance`` with a sampled prompt kind per item."""
    pr = sample_prompts(batch["mask"], batch["group_a"], generator=generator)
    out = _prompted(model, batch, pr["kind"], pr["boxes"], pr["points"])
    seg = loss_fn(out.masks, _low_res(batch["mask"], out.masks.shape[-1]))
    return {"loss": seg + balance_weight * out.balance_loss, "seg": seg.detach(), "balance": out.balance_loss.detach()}


@torch.no_grad()
def evaluate(model, data: EmbeddingTasks, *, prompt: str, batch_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """SegMoTE's Dice with one prompt kind for every item, plus what the router chose per item.

    ``prompt``: ``box`` (the mask's box, no jitter), ``point`` (one foreground point) or ``free`` (PPT, group-A items
    only). The metric is :func:`medmoe.metrics.per_class_per_image_dice`: each item's low-resolution logits are
    upsampled (bilinear) to its ground truth's resolution (:meth:`SegTasks.original_mask`: the stored image size
    for IMIS data, as the reference test code), thresholded at 0, and scored per class per image; the classes of an
    image are averaged, then the images.

    Returns ``dice`` (float), ``per_class`` ``(len(class_names),)`` (NaN for classes never evaluated) and ``rows``:
    per item its ``image_index``, ``class_index``, ``modality``, ``selected`` token, the expert that every MoTE layer
    chose for that token (``experts``) and the last layer's routing confidence per token (``confidence``,
    ``(T,)``: the softmax probability of each token's chosen expert).
    """
    from torch.utils.data import DataLoader, Subset

    from medmoe.metrics import per_class_per_image_dice

    if prompt not in ("box", "point", "free"):
        raise ValueError(f"prompt must be box, point or free, got {prompt!r}")
    tasks = data.tasks
    if prompt == "free":
        keep = [k for k in range(len(data)) if tasks.is_group_a(k)]
        if not keep:
            raise ValueError("prompt='free' needs group-A items (tasks PPT serves); this data set has none")
        data = Subset(data, keep)
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    logits, rows = {}, []
    device = next(iter(model.trainable_parameters())).device
    for batch in DataLoader(data, batch_size=batch_size):
        batch = {key: v.to(device) if torch.is_tensor(v) else v for key, v in batch.items()}
        b = batch["mask"].shape[0]
        boxes = torch.stack([box_from_mask(batch["mask"][i, 0]) for i in range(b)])
        points = torch.stack([point_from_mask(batch["mask"][i, 0], generator=g) for i in range(b)])[:, None]
        out = _prompted(model, batch, [prompt] * b, boxes, points)
        last = out.motes[-1].gate
        conf = last.probs.gather(-1, last.indices[..., :1])[..., 0]
        for i in range(b):
            k, sel = int(batch["item"][i]), int(out.selected[i])
            logits[k] = out.masks[i:i + 1].float().cpu()
            rows.append({"item": k, "image_index": int(batch["image_index"][i]), "class_index": int(batch["class_index"][i]),
                         "modality": int(batch["modality"][i]), "selected": sel,
                         "experts": [int(m.gate.indices[i, sel, 0]) for m in out.motes],
                         "confidence": conf[i].float().cpu().tolist()})
    model.train(was)
    # Per image, stack its prompted classes as channels at the ground truth's resolution and score them together.
    by_image: dict[int, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image_index"], []).append(r)
    n_cls = len(tasks.class_names)
    per_image, sums, counts = [], torch.zeros(n_cls, dtype=torch.float64), torch.zeros(n_cls, dtype=torch.float64)
    for group in by_image.values():
        truth = torch.stack([tasks.original_mask(r["item"]) for r in group])[None].to(device)
        pred = model.upscale(torch.cat([logits[r["item"]] for r in group]), size=tuple(truth.shape[-2:]))[:, 0][None] > 0
        res = per_class_per_image_dice(pred, truth, ignore_background=False)
        per_image.append(float(res["per_image"][0]))
        for j, r in enumerate(group):
            sums[r["class_index"]] += float(res["dice_bc"][0, j])
            counts[r["class_index"]] += 1
    per_image_t = torch.tensor(per_image, dtype=torch.float64)
    return {"dice": float(per_image_t[~per_image_t.isnan()].mean()), "per_class": sums / counts, "rows": rows}
