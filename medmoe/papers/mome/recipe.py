"""MoME / Universal Model training and evaluation on partially labelled CT (book: *Chapter 4, MoME*).

* Class text embeddings (:func:`class_text_embeddings`): "A computerized tomography of a {organ}" encoded once,
  as the Universal Model stores its ``txt_encoding.pth`` -- CLIP ViT-B/32 in the ``paper`` profile (a saved
  ``(C, 512)`` tensor, or a local CLIP folder), the packaged MiniLM (mean over tokens) offline.
* Partial labels (:func:`partial_label_loss`): Dice + BCE only over the (volume, class) pairs whose class the
  volume's source data set annotates; the other classes get no gradient (the Universal Model's masked
  ``DiceLoss`` + ``Multi_BCELoss``, weights 1:1).
* Phantom CT (:class:`PhantomCT`): :class:`medmoe.data.phantoms.PhantomVolumeDataset` sources as multi-label
  targets over ``CLASSES_3D[1:]`` (the same convention as :class:`medmoe.papers.mome.data.UniversalDataset`).
* Training patches (:class:`RandomPatches`): MONAI ``RandCropByPosNegLabeld``, 2 positive : 1 negative, as the
  Universal Model.
* Inference (:func:`evaluate`): MONAI ``sliding_window_inference`` (overlap 0.5, Gaussian blending), sigmoid > 0.5,
  Dice per organ per volume (:func:`medmoe.metrics.per_volume_class_dice`), averaged per organ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medmoe.papers.mome.data import partial_label_target

__all__ = ["class_text_embeddings", "partial_label_loss", "PhantomCT", "RandomPatches", "train_step", "evaluate"]


def class_text_embeddings(names: Sequence[str], *, encoder: str = "minilm") -> torch.Tensor:
    """``(C, D)`` embeddings of "A computerized tomography of a {name}" for each class name.

    ``encoder``: ``"minilm"`` (the packaged all-MiniLM-L6-v2, mean over real tokens; offline), a ``.pth``/``.pt``
    file holding a ``(C, D)`` tensor in the classes' order (the Universal Model's ``txt_encoding.pth``: CLIP
    ViT-B/32, 512-d), or a local folder with a Hugging Face CLIP checkpoint (``CLIPModel.get_text_features``).

    Example:
        >>> class_text_embeddings(["liver", "spleen"]).shape
        torch.Size([2, 384])
    """
    from pathlib import Path

    from medmoe.data.phantoms import ct_prompt

    prompts = [ct_prompt(n) for n in names]
    path = Path(encoder)
    if encoder == "minilm":
        from medmoe.backbones import build_text_encoder

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
        from transformers import CLIPModel, CLIPTokenizer

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
    from monai.losses import DiceLoss

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


class PhantomCT(Dataset):
    """Partially labelled phantom CT volumes from several sources, as multi-label targets.

    Items: ``image`` ``(1, S, S, S)``, ``label`` ``(C, S, S, S)`` over ``CLASSES_3D[1:]`` with "liver" including
    "liver tumour" (:func:`medmoe.papers.mome.data.partial_label_target`, the convention of
    :class:`medmoe.papers.mome.data.UniversalDataset`), ``labelled`` ``(C,)``, ``source`` str.

    Args:
        sources: keys of :data:`medmoe.data.phantoms.SOURCE_DATASETS`.
        n_per_source: volumes per source.
        size: volume side (>= 32).
        seed: data seed.
        shift: ``(contrast, noise_std)`` applied to the images (``image * contrast + (1 - contrast) / 2`` plus
            Gaussian noise, seeded): a different "scanner" for a held-out source; ``None`` for none.
    """

    def __init__(self, *, sources: Sequence[str], n_per_source: int, size: int = 48, seed: int = 0,
                 shift: tuple[float, float] | None = None) -> None:
        from medmoe.data.phantoms import PhantomVolumeDataset

        if not sources:
            raise ValueError("sources must name at least one source data set")
        self.sources = list(sources)
        self.volumes = [PhantomVolumeDataset(n=n_per_source, source=s, seed=seed, size=size) for s in self.sources]
        self.index = [(v, i) for v in range(len(self.volumes)) for i in range(n_per_source)]
        self.shift, self.seed = shift, seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict[str, Any]:
        v, i = self.index[k]
        item = self.volumes[v][i]
        image = item["image"]
        if self.shift is not None:
            contrast, noise = self.shift
            g = torch.Generator().manual_seed(self.seed * 100_003 + k)
            image = (image * contrast + (1 - contrast) / 2 + noise * torch.randn(image.shape, generator=g)).clamp(0, 1)
        target, labelled = partial_label_target(item["label"], labelled=item["labelled"])
        return {"image": image, "label": target, "labelled": labelled, "source": self.sources[v]}


class RandomPatches(Dataset):
    """Random ``patch^3`` training crops of whole-volume items (``image``, ``label``, ``labelled``, ...), as the
    Universal Model samples them: volumes smaller than the patch are padded (MONAI ``SpatialPadd``), then MONAI
    ``RandCropByPosNegLabeld`` centres 2 of 3 crops on labelled foreground and 1 on background. Seeded by
    ``torch``'s generator (so by :func:`medmoe.utils.seed_everything` and the DataLoader's worker seeds).

    Example:
        >>> vols = PhantomCT(sources=["kidney"], n_per_source=1, size=48)
        >>> RandomPatches(vols, patch=32)[0]["image"].shape
        torch.Size([1, 32, 32, 32])
    """

    def __init__(self, volumes: Dataset, *, patch: int) -> None:
        from monai.transforms import RandCropByPosNegLabeld, SpatialPadd

        if patch < 32 or patch % 32:
            raise ValueError(f"patch must be a positive multiple of 32 (SwinUNETR), got {patch}")
        self.volumes, self.patch = volumes, patch
        self._pad = SpatialPadd(keys=("image", "label", "fg"), spatial_size=(patch,) * 3)
        self._crop = RandCropByPosNegLabeld(keys=("image", "label"), label_key="fg", spatial_size=(patch,) * 3,
                                            pos=2, neg=1, num_samples=1)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, k: int) -> dict[str, Any]:
        item = self.volumes[k]
        fg = (item["label"][item["labelled"]].sum(0, keepdim=True) > 0).float()
        self._crop.set_random_state(int(torch.randint(2**31 - 1, (1,))))
        crop = self._crop(self._pad({"image": item["image"], "label": item["label"], "fg": fg}))[0]
        return {**item, "image": torch.as_tensor(crop["image"]), "label": torch.as_tensor(crop["label"])}


def train_step(model, batch) -> dict[str, torch.Tensor]:
    """One step: forward on the patches, :func:`partial_label_loss`."""
    out = model(batch["image"])
    return partial_label_loss(out.logits, batch["label"], batch["labelled"])


@torch.no_grad()
def evaluate(model, data: Dataset, *, overlap: float = 0.5, sw_batch_size: int = 4, keep_router: int = 0) -> dict[str, Any]:
    """Sliding-window inference (MONAI, ``roi_size = model.config.roi_size``, Gaussian blending) on whole volumes,
    sigmoid > 0.5, Dice per organ per volume (the Universal Model's ``2TP / (|P| + |G| + 1)``), NaN for classes
    the volume's source does not label.

    Returns ``dice`` ``(N, C)`` (numpy), ``per_class`` ``(C,)`` (mean over volumes that label the class),
    ``sources`` (per volume) and, for the first ``keep_router`` volumes, ``router`` ``(C, E, D, H, W)`` and
    ``probability`` ``(C, D, H, W)`` maps (MoME only) with their ``image`` and ``label``.
    """
    from monai.inferers import sliding_window_inference

    from medmoe.metrics import mean_dice_per_class, per_volume_class_dice

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    roi = (model.config.roi_size,) * 3
    c = model.config.num_classes

    def predictor(x):
        out = model(x)
        if out.router is None:
            return out.logits
        return out.logits, out.router.flatten(1, 2)

    rows, sources, kept = [], [], []
    for k in range(len(data)):
        item = data[k]
        x = item["image"][None].to(device)
        pred = sliding_window_inference(x, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian")
        logits, router = (pred, None) if torch.is_tensor(pred) else pred
        prob = torch.sigmoid(logits)
        rows.append(per_volume_class_dice(prob.cpu(), item["label"][None], labelled=item["labelled"][None])[0])
        sources.append(item.get("source", item.get("dataset")))
        if k < keep_router:
            kept.append({"image": item["image"][0].numpy(), "label": item["label"].numpy(), "source": sources[-1],
                         "probability": prob[0].cpu().numpy(),
                         "router": None if router is None else router[0].reshape(c, -1, *router.shape[2:]).cpu().numpy()})
    model.train(was)
    dice = torch.stack(rows)
    return {"dice": dice.numpy(), "per_class": mean_dice_per_class(dice).numpy(), "sources": sources, "maps": kept}
