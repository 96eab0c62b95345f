"""The paired design of Chapter 4: one backbone per seed, frozen; a Universal head and a MoME head trained from the
same start on the same features.

Explained in the book: *Chapter 4, MoME* (``chapters/04_mome``), section 3 "Training: one backbone, two heads" and
section 7 "The claim, the control, the verdict".

Training each model end to end from random weights puts two different backbones under the two heads, and at the
quick budget the seed-to-seed spread of the backbones swamps any effect of the router. The chapter therefore
separates them:

1. per seed, train the Universal Model end to end (:func:`medmoe.papers.mome.recipe.train`): its backbone is the
   one both heads share;
2. freeze it, and cache its decoder outputs on the training crops (:class:`FeatureCache`; or compute them on the
   fly, ``FrozenFeatures``-style, when they do not fit in memory: :func:`head_step` takes either);
3. build every head from the trained Universal head (:func:`head_from`): the Universal head continues as it is;
   MoME adds its expert projections and its router, started as the Universal Model
   (``router_init="universal"``: w(out) = 0.95); the kidney controls swap the text codes for mean-centred,
   normalised ones (:func:`centre_text`) or for the Universal Model's learned ``rand_embedding``;
4. train every head for the same steps on the same features in the same order (:func:`train_head`), and evaluate
   them with the same frozen backbone; :func:`kidney_sides` says which side each kidney head segments.

Example:
    >>> import torch
    >>> e = centre_text(torch.tensor([[1.0, 2.0], [1.0, 2.2]]))
    >>> [round(float(x), 3) for x in e.norm(dim=1)], round(float(e[0] @ e[1]), 3)
    ([1.0, 1.0], -1.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.inferers import sliding_window_inference
from torch import nn
from torch.utils.data import Dataset

from medmoe.engine import FitResult, TrainConfig, train_loop
from medmoe.metrics import binary_dice, mean_dice_per_class, per_volume_class_dice
from medmoe.papers.mome.model import UniversalSeg, build_model
from medmoe.papers.mome.recipe import partial_label_loss

__all__ = ["centre_text", "FeatureCache", "head_from", "head_step", "train_head", "evaluate_heads", "kidney_sides",
           "expert_shares", "TEXT_VARIANTS"]

#: The class codes a head can be given: the text embeddings as they are (``raw``), mean-centred over the classes
#: and L2-normalised (``centred``: the control for near-identical prompts), or none at all (``learned``: the
#: Universal Model's ``rand_embedding``).
TEXT_VARIANTS = ("raw", "centred", "learned")


def centre_text(embeddings: torch.Tensor) -> torch.Tensor:
    """``(C, D)`` text embeddings minus their mean over the classes, each row scaled to unit length: what every
    prompt shares ("A computerized tomography of a ...") is removed, so two prompts that differ in one word
    ("left" / "right") no longer have cosine close to 1."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"need (C >= 2, D) embeddings, got {tuple(embeddings.shape)}")
    centred = embeddings.float() - embeddings.float().mean(0, keepdim=True)
    return torch.nn.functional.normalize(centred, dim=1)


class FeatureCache(Dataset):
    """The frozen backbone's decoder outputs (``dec4 .. out``) on fixed training crops, with their labels.

    ``crops``: a dataset of patch items (``image`` ``(1, S, S, S)``, ``label``, ``labelled``), e.g.
    :class:`medmoe.papers.mome.data.RandomPatches`; each is drawn ``draws`` times (a random crop each time; on the
    quick phantoms the patch is the whole volume, so every draw is the same input). ``repeats``: the dataset is
    that many passes over the cache (a longer epoch without more checkpoints).
    """

    def __init__(self, model: UniversalSeg, crops: Dataset, *, draws: int = 1, repeats: int = 1,
                 batch_size: int = 2) -> None:
        if draws < 1 or repeats < 1:
            raise ValueError(f"draws and repeats must be >= 1, got {draws}, {repeats}")
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        self.items: list[dict[str, Any]] = []
        with torch.no_grad():
            for _ in range(draws):
                for k in range(len(crops)):
                    item = crops[k]
                    feats = model.forward_features(item["image"][None].to(device))
                    self.items.append({"feats": {n: f[0].cpu() for n, f in feats.items()}, "label": item["label"],
                                       "labelled": item["labelled"]})
        model.train(was)
        self.repeats = int(repeats)

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.items[k % len(self.items)]


def head_from(trained: UniversalSeg, name: str, *, text: torch.Tensor, **overrides) -> UniversalSeg:
    """A head on ``trained``'s backbone (shared, frozen), started from ``trained``'s head.

    Every head module that exists in both (``text_to_vision``, ``image_code``, ``controller``, the ``out``
    projection) is copied from ``trained``; the rest (MoME's other expert projections and router, a learned class
    embedding) keeps its own initialisation (``router_init``). ``text``: the class text embeddings this head reads.
    The backbone's parameters are frozen (``requires_grad=False``).
    """
    head = build_model(name, backbone=trained.backbone, num_classes=trained.config.num_classes,
                       text_dim=text.shape[1], **overrides)
    own = head.state_dict()
    shared = {k: v for k, v in trained.state_dict().items()
              if not k.startswith("backbone.") and k != "text_embeddings" and k in own and own[k].shape == v.shape}
    head.load_state_dict(shared, strict=False)
    head.set_text_embeddings(text)
    for p in head.backbone.parameters():
        p.requires_grad_(False)
    return head.to(next(trained.parameters()).device)


def head_step(model: UniversalSeg, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One step of a head: on cached features (``batch["feats"]``) or on images through the frozen backbone."""
    if "feats" in batch:
        feats = batch["feats"]
    else:
        with torch.no_grad():
            feats = model.forward_features(batch["image"])
    out = model.forward_head(feats)
    return partial_label_loss(out.logits, batch["label"], batch["labelled"])


def train_head(model: UniversalSeg, train_set: Dataset, *, out_dir: Any, epochs: int, lr: float, batch_size: int,
               seed: int = 0, run_key: str | None = None, weight_decay: float = 1e-5) -> FitResult:
    """AdamW on the head's trainable parameters (the backbone is frozen), ``epochs`` epochs of :func:`head_step`
    over ``train_set`` (a :class:`FeatureCache`, or patch items), shuffled by ``seed``
    (:func:`medmoe.engine.train_loop`). Heads trained with the same ``seed`` see the batches in the same order."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the head has no trainable parameter")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    config = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, run_key=run_key, progress=False)
    return train_loop(model, optimizer, train_set, step_fn=head_step, config=config, batch_size=batch_size)


@torch.no_grad()
def evaluate_heads(heads: Mapping[Any, UniversalSeg], data: Dataset, *, overlap: float = 0.5, sw_batch_size: int = 4,
                   kidneys: tuple[int, int] | None = None) -> dict[Any, dict[str, Any]]:
    """:func:`medmoe.papers.mome.recipe.evaluate` (sliding windows, sigmoid > 0.5, Dice per organ per volume) for
    several heads on **one** backbone: each window goes through the backbone once and through every head.

    ``kidneys``: ``(left, right)`` channels; then every head's result also has ``sides``, as
    :func:`kidney_sides`. Returns, per key of ``heads``: ``dice`` ``(N, C)``, ``per_class`` ``(C,)``, and ``sides``.
    """
    keys = list(heads)
    first = heads[keys[0]]
    if any(heads[k].backbone is not first.backbone for k in keys):
        raise ValueError("evaluate_heads needs heads on one shared backbone (head_from)")
    was = {k: h.training for k, h in heads.items()}
    for h in heads.values():
        h.eval()
    device = next(first.parameters()).device
    roi, c = (first.config.roi_size,) * 3, first.config.num_classes

    def all_heads(x):
        feats = first.forward_features(x)
        return torch.cat([heads[k].forward_head(feats).logits for k in keys], dim=1)  # (B, K C, ...)

    rows = {k: [] for k in keys}
    own = {k: [] for k in keys}
    other = {k: [] for k in keys}
    for v in range(len(data)):
        item = data[v]
        logits = sliding_window_inference(item["image"][None].to(device), roi, sw_batch_size, all_heads,
                                          overlap=overlap, mode="gaussian")
        prob = torch.sigmoid(logits).cpu()
        gt = item["label"]
        both = (kidneys is not None and bool(item["labelled"][kidneys[0]]) and bool(item["labelled"][kidneys[1]])
                and bool(gt[kidneys[0]].any()) and bool(gt[kidneys[1]].any()))
        for i, k in enumerate(keys):
            p = prob[:, i * c:(i + 1) * c]
            rows[k].append(per_volume_class_dice(p, gt[None].cpu(), labelled=item["labelled"][None].cpu())[0])
            if both:
                left, right = kidneys
                pred = p[0] > 0.5
                own[k].append((binary_dice(pred[left], gt[left] > 0) + binary_dice(pred[right], gt[right] > 0)) / 2)
                other[k].append((binary_dice(pred[left], gt[right] > 0)
                                 + binary_dice(pred[right], gt[left] > 0)) / 2)
    for k, h in heads.items():
        h.train(was[k])
    out = {}
    nan = float("nan")
    for k in keys:
        dice = torch.stack(rows[k])
        out[k] = {"dice": dice.numpy(), "per_class": mean_dice_per_class(dice).numpy(),
                  "sides": {"own": float(sum(own[k]) / len(own[k])) if own[k] else nan,
                            "other": float(sum(other[k]) / len(other[k])) if other[k] else nan, "n": len(own[k])}}
    return out


@torch.no_grad()
def kidney_sides(model: nn.Module, data: Dataset, *, left: int, right: int, overlap: float = 0.5
                 ) -> dict[str, float]:
    """Which side the kidney heads segment, over the volumes whose source labels both kidneys and whose ground
    truth holds both: ``own`` (mean Dice of the left head with the left kidney and the right head with the right
    one) and ``other`` (each head against the other side), sigmoid > 0.5, sliding-window inference as
    :func:`medmoe.papers.mome.recipe.evaluate`. NaN when no volume qualifies."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    roi = (model.config.roi_size,) * 3
    own, other = [], []
    for k in range(len(data)):
        if not (bool(data.labelled_of(k)[left]) and bool(data.labelled_of(k)[right])):
            continue
        item = data[k]
        gt = item["label"]
        if not (gt[left].any() and gt[right].any()):
            continue
        logits = sliding_window_inference(item["image"][None].to(device), roi, 4, lambda x: model(x).logits,
                                          overlap=overlap, mode="gaussian")
        pred = (torch.sigmoid(logits[0]) > 0.5).cpu()
        own.append((binary_dice(pred[left], gt[left] > 0) + binary_dice(pred[right], gt[right] > 0)) / 2)
        other.append((binary_dice(pred[left], gt[right] > 0) + binary_dice(pred[right], gt[left] > 0)) / 2)
    model.train(was)
    nan = float("nan")
    return {"own": float(sum(own) / len(own)) if own else nan,
            "other": float(sum(other) / len(other)) if other else nan, "n": len(own)}



@torch.no_grad()
def expert_shares(model: UniversalSeg, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(C, E)``: each expert's share of what MoME's fused feature is made of, per class, inside ``masks``.

    A router weight is not a contribution: an expert whose projection grows large weighs in even at a small
    ``w``. At every voxel the share of expert ``e`` for class ``c`` is ``||w_{c,e}(x) E_e(x)|| / sum_e' ||w_{c,e'}(x)
    E_{e'}(x)||`` (norms over the 8 channels), averaged over the voxels where ``masks[c]`` is set (all voxels where
    it is empty).

    Args:
        model: a MoME :class:`~medmoe.papers.mome.model.UniversalSeg` (with a router).
        image: ``(1, D, H, W)`` with sides divisible by 32 (one window).
        masks: ``(C, D, H, W)`` bool.
    """
    if model.router is None:
        raise ValueError("expert_shares needs a model with a router (MoME)")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    feats = model.forward_features(image[None].to(device))
    size = feats["out"].shape[2:]
    experts = []
    for name in model.config.experts:
        f = model.experts[name](feats[name])
        if f.shape[2:] != size:
            f = torch.nn.functional.interpolate(f, size=size, mode="trilinear", align_corners=False)
        experts.append(f.flatten(2))
    stacked = torch.stack(experts, dim=1)  # (1, E, 8, N)
    weights = model.router(stacked, model.text_codes())  # (1, C, E, N)
    norms = (weights[:, :, :, None] * stacked[:, None]).norm(dim=3)[0]  # (C, E, N)
    share = (norms / norms.sum(1, keepdim=True).clamp_min(1e-12)).cpu()
    model.train(was)
    m = masks.reshape(masks.shape[0], -1).bool()
    m = torch.where(m.any(1, keepdim=True), m, torch.ones_like(m))
    return (share * m[:, None]).sum(-1) / m.sum(-1, keepdim=True)
