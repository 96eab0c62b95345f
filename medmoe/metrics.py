"""Each paper's Dice/IoU convention, named, so the book reproduces each paper's numbers exactly.

"Dice" is not one number. The four codebases the book reproduces threshold differently, smooth
differently, and -- most importantly -- *average* differently (over pixels, over images, over the
classes present in an image, over volumes then organs). The same predictions can score very
differently under two conventions; :data:`METRIC_CONVENTIONS` lists them and the functions below
implement each one. Label maps are one-hot encoded with MONAI's :func:`monai.networks.utils.one_hot`;
pixel counts are exact int64 (the tests cross-check against :func:`monai.metrics.compute_dice`).

Book chapters that use this module:

* *Ariadne's Thread / MLMoE* (language-guided segmentation, QaTa-COV19): :class:`GlobalDiceIoU`.
* *LViT* (text-augmented segmentation, MoNuSeg / QaTa-COV19): :func:`per_image_dice`,
  :func:`per_image_iou`, :class:`PerImageDice`.
* *SegMoTE* (prompted universal 2-D segmentation): :func:`per_class_per_image_dice`.
* *MoME* (with the CLIP-Driven Universal Model's evaluation code): :func:`per_volume_class_dice`,
  :func:`mean_dice_per_class`.
* *Evaluation conventions* (the chapter comparing them): all of the above.

Thresholds: a probability ``p`` becomes foreground when ``p >= threshold`` ("inclusive") or
``p > threshold`` ("strict"). The codebases disagree; this only matters for pixels exactly at the
threshold, but each function follows its paper's code and says which one it uses.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.utils import one_hot

from medmoe.utils import check_rank

__all__ = [
    "METRIC_CONVENTIONS",
    "GlobalDiceIoU",
    "global_dice_iou",
    "per_image_dice",
    "per_image_iou",
    "PerImageDice",
    "per_class_per_image_dice",
    "per_volume_class_dice",
    "mean_dice_per_class",
    "binary_dice",
]

METRIC_CONVENTIONS: dict[str, str] = {
    "global_micro": (
        "Ariadne's Thread / MLMoE (torchmetrics 0.10 Dice() + BinaryJaccardIndex): TP/FP/FN summed over every "
        "pixel of the whole test set, then Dice = 2TP/(2TP+FP+FN) and 'MIoU' = TP/(TP+FP+FN) (foreground IoU); "
        "p >= 0.5 for Dice, p > 0.5 for IoU; an all-empty set scores 0. -> GlobalDiceIoU"
    ),
    "per_image_smoothed": (
        "LViT (utils.dice_on_batch, used for validation/model selection): per image "
        "(2I + 1e-5)/(|P| + |G| + 1e-5) at p >= 0.5, mean over images; empty pred on empty mask scores 1. "
        "LViT's test_model.py instead uses 2I/(|P| + |G| + 1e-5) at p > 0.5 (empty/empty scores 0): "
        "per_image_dice(..., smooth_numerator=False, inclusive=False). IoU: sklearn jaccard_score per image "
        "(empty/empty scores 0). -> per_image_dice, per_image_iou, PerImageDice"
    ),
    "per_class_per_image": (
        "SegMoTE (test.py): per image, Dice 2I/(|P|+|G|+1e-8) for each class present in that image's ground "
        "truth, averaged over those classes; then the mean over images (p > 0.5). -> per_class_per_image_dice"
    ),
    "per_volume_per_organ": (
        "CLIP-Driven Universal Model (MoME chapter): per volume and class Dice = 2TP/(|P|+|G|+1) at p > 0.5 for "
        "the classes labelled in that volume's dataset (others NaN); a labelled class absent from the volume's "
        "ground truth is NaN too, as its test loop skips it (skip_absent=True; its validation loop scores it); "
        "mean over volumes per organ, then over organs. -> per_volume_class_dice, mean_dice_per_class"
    ),
}


# ----------------------------------------------------------------------------- helpers


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(
            f"pred and target must be torch.Tensors, got {type(pred).__name__} and {type(target).__name__}"
        )
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )


def _check_binary(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless every value of ``x`` is 0 or 1 (bool tensors always pass)."""
    if x.dtype == torch.bool or x.numel() == 0:
        return
    if not torch.all((x == 0) | (x == 1)):
        bad = x[(x != 0) & (x != 1)].flatten()[:3].tolist()
        raise ValueError(f"{name} must be a binary mask with values 0/1, found values such as {bad}")


def _to_probabilities(pred: torch.Tensor, *, from_logits: bool) -> torch.Tensor:
    """Apply a sigmoid to logits; check that probabilities lie in [0, 1]."""
    pred = pred.float()
    if from_logits:
        return torch.sigmoid(pred)
    if pred.numel() and (pred.min() < 0 or pred.max() > 1):
        raise ValueError(
            f"pred must hold probabilities in [0, 1], got values in [{pred.min().item():.4g}, "
            f"{pred.max().item():.4g}]; pass from_logits=True for raw network outputs"
        )
    return pred


def _binarize(prob: torch.Tensor, threshold: float, *, inclusive: bool) -> torch.Tensor:
    """``prob >= threshold`` (inclusive) or ``prob > threshold`` (strict), as float 0/1."""
    return (prob >= threshold).float() if inclusive else (prob > threshold).float()


def _counts(pred_bin: torch.Tensor, target_bin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positives, false positives and false negatives per sample and channel, each ``(B, C)`` float64.

    Counted directly in int64. (MONAI's ``get_confusion_matrix`` returns float32 counts and derives
    FP as ``N - TN``; above 2**24 voxels -- a 512x512x300 CT has 7.9e7 -- that is off by a few voxels.)
    """
    p = pred_bin.reshape(pred_bin.shape[0], pred_bin.shape[1], -1).bool()
    g = target_bin.reshape(target_bin.shape[0], target_bin.shape[1], -1).bool()
    tp = (p & g).sum(dim=2)
    fp = (p & ~g).sum(dim=2)
    fn = (~p & g).sum(dim=2)
    return tp.double(), fp.double(), fn.double()


# ----------------------------------------------------------------------------- global (micro) Dice / IoU


class GlobalDiceIoU:
    """Global (micro) Dice and foreground IoU over a whole test set -- Ariadne's Thread / MLMoE.

    TP, FP and FN are summed over every pixel of every image seen by :meth:`update`, and only then
    turned into one Dice ``2TP / (2TP + FP + FN)`` and one IoU ``TP / (TP + FP + FN)``. Large
    images with large lesions therefore dominate; an image whose mask is empty adds only its false
    positives. This is what torchmetrics 0.10's ``Dice()`` (micro average) and
    ``BinaryJaccardIndex()`` compute, including their small differences: Dice thresholds with
    ``p >= threshold``, IoU with ``p > threshold``, and a zero denominator scores 0.

    Args:
        threshold: probability cut-off (0.5 in the papers).
        from_logits: apply a sigmoid to ``pred`` first.

    Shapes:
        ``pred``: ``(B, 1, H, W)`` probabilities (or logits with ``from_logits=True``);
        ``target``: ``(B, 1, H, W)`` binary mask. Any matching shape ``(B, 1, *spatial)`` works.

    Example:
        >>> metric = GlobalDiceIoU()
        >>> metric.update(torch.tensor([[[[0.9, 0.2]]]]), torch.tensor([[[[1, 1]]]]))
        >>> metric.compute()  # TP=1, FN=1: Dice 2/3, IoU 1/2
        {'dice': 0.6666666666666666, 'iou': 0.5}
    """

    def __init__(self, *, threshold: float = 0.5, from_logits: bool = False) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        self.threshold = threshold
        self.from_logits = from_logits
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        # Dice and IoU threshold differently (>= vs >), so they keep separate counts.
        self.dice_tp = self.dice_fp = self.dice_fn = 0.0
        self.iou_tp = self.iou_fp = self.iou_fn = 0.0
        self.num_images = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch. ``pred``/``target``: ``(B, 1, *spatial)``, same shape."""
        _check_same_shape(pred, target)
        check_rank(pred, (3, 4, 5), "pred")
        if pred.shape[1] != 1:
            raise ValueError(f"pred must have one channel (B, 1, H, W), got shape {tuple(pred.shape)}")
        _check_binary(target, "target")
        prob = _to_probabilities(pred.detach(), from_logits=self.from_logits)
        target = target.detach().float()
        tp, fp, fn = _counts(_binarize(prob, self.threshold, inclusive=True), target)
        self.dice_tp += tp.sum().item()
        self.dice_fp += fp.sum().item()
        self.dice_fn += fn.sum().item()
        tp, fp, fn = _counts(_binarize(prob, self.threshold, inclusive=False), target)
        self.iou_tp += tp.sum().item()
        self.iou_fp += fp.sum().item()
        self.iou_fn += fn.sum().item()
        self.num_images += pred.shape[0]

    def compute(self) -> dict[str, float]:
        """``{"dice": ..., "iou": ...}`` over everything seen since the last :meth:`reset`."""
        if self.num_images == 0:
            raise ValueError("GlobalDiceIoU.compute() called before any update()")
        dice_den = 2 * self.dice_tp + self.dice_fp + self.dice_fn
        iou_den = self.iou_tp + self.iou_fp + self.iou_fn
        return {
            "dice": 2 * self.dice_tp / dice_den if dice_den > 0 else 0.0,
            "iou": self.iou_tp / iou_den if iou_den > 0 else 0.0,
        }


def global_dice_iou(
    pred: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.5, from_logits: bool = False
) -> dict[str, float]:
    """One-shot :class:`GlobalDiceIoU` on a single tensor pair ``(B, 1, H, W)``.

    Example:
        >>> global_dice_iou(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
        {'dice': 1.0, 'iou': 1.0}
    """
    metric = GlobalDiceIoU(threshold=threshold, from_logits=from_logits)
    metric.update(pred, target)
    return metric.compute()


# ----------------------------------------------------------------------------- per-image Dice (LViT)


def _binary_per_image_inputs(
    pred: torch.Tensor, target: torch.Tensor, threshold: float, from_logits: bool, inclusive: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_same_shape(pred, target)
    check_rank(pred, (3, 4, 5), "pred")
    if pred.shape[1] != 1:
        raise ValueError(f"pred must have one channel (B, 1, H, W), got shape {tuple(pred.shape)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    # LViT binarises the mask with `mask > 0`; a binary target is required here to catch mistakes.
    _check_binary(target, "target")
    prob = _to_probabilities(pred.detach(), from_logits=from_logits)
    return _binarize(prob, threshold, inclusive=inclusive), target.detach().float()


def per_image_dice(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    threshold: float = 0.5,
    smooth: float = 1e-5,
    smooth_numerator: bool = True,
    inclusive: bool = True,
    from_logits: bool = False,
) -> torch.Tensor:
    """Dice of each image separately -- LViT's convention.

    Per image ``(2 I + s) / (|P| + |G| + s)`` with ``s = smooth``, where ``I`` is the overlap and
    ``|P|``, ``|G|`` the predicted and true foreground pixel counts. With the numerator smoothed
    (LViT's ``utils.dice_on_batch``, used for validation and model selection) an empty prediction
    on an empty mask scores 1; LViT's ``test_model.py`` uses ``2 I / (|P| + |G| + s)`` at
    ``p > 0.5`` instead (``smooth_numerator=False, inclusive=False``), which scores that case 0.

    Args:
        pred: ``(B, 1, H, W)`` probabilities (or logits with ``from_logits=True``).
        target: ``(B, 1, H, W)`` binary mask.
        threshold: probability cut-off.
        smooth: the smoothing constant ``s``.
        smooth_numerator: add ``s`` to the numerator too.
        inclusive: foreground is ``p >= threshold`` (True, LViT training code) or ``p > threshold``.
        from_logits: apply a sigmoid to ``pred`` first.

    Returns:
        ``(B,)`` float64 tensor, one Dice per image.

    Example:
        >>> per_image_dice(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
        tensor([1.], dtype=torch.float64)
    """
    if smooth <= 0:
        raise ValueError(f"smooth must be > 0 (it keeps empty/empty images finite), got {smooth}")
    pred_bin, target_bin = _binary_per_image_inputs(pred, target, threshold, from_logits, inclusive)
    tp, fp, fn = _counts(pred_bin, target_bin)  # (B, 1)
    numerator = 2 * tp + (smooth if smooth_numerator else 0.0)
    denominator = (tp + fp) + (tp + fn) + smooth
    return (numerator / denominator)[:, 0]


def per_image_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    threshold: float = 0.5,
    inclusive: bool = True,
    empty_score: float = 0.0,
    from_logits: bool = False,
) -> torch.Tensor:
    """Foreground IoU ``I / |P ∪ G|`` of each image separately -- LViT's IoU (sklearn ``jaccard_score``).

    ``sklearn.metrics.jaccard_score`` returns 0 (with a warning) when prediction and mask are both
    empty; ``empty_score`` sets that value.

    Returns:
        ``(B,)`` float64 tensor.

    Example:
        >>> per_image_iou(torch.tensor([[[[1.0, 1.0]]]]), torch.tensor([[[[1, 0]]]]))
        tensor([0.5000], dtype=torch.float64)
    """
    pred_bin, target_bin = _binary_per_image_inputs(pred, target, threshold, from_logits, inclusive)
    tp, fp, fn = _counts(pred_bin, target_bin)
    union = tp + fp + fn
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float(empty_score)))
    return iou[:, 0]


class PerImageDice:
    """Accumulates :func:`per_image_dice` and :func:`per_image_iou` over batches; reports their means.

    The mean over *images* (every image weighs the same), unlike :class:`GlobalDiceIoU`.

    Example:
        >>> metric = PerImageDice()
        >>> metric.update(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
        >>> metric.compute()["dice"]
        1.0
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        smooth: float = 1e-5,
        smooth_numerator: bool = True,
        inclusive: bool = True,
        from_logits: bool = False,
    ) -> None:
        self.kwargs = dict(threshold=threshold, inclusive=inclusive, from_logits=from_logits)
        self.smooth = smooth
        self.smooth_numerator = smooth_numerator
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.dice_values: list[torch.Tensor] = []
        self.iou_values: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch ``(B, 1, H, W)``."""
        self.dice_values.append(
            per_image_dice(pred, target, smooth=self.smooth, smooth_numerator=self.smooth_numerator, **self.kwargs)
        )
        self.iou_values.append(per_image_iou(pred, target, **self.kwargs))

    def per_image(self) -> torch.Tensor:
        """All per-image Dice values seen so far, ``(N,)``."""
        return torch.cat(self.dice_values) if self.dice_values else torch.empty(0, dtype=torch.float64)

    def compute(self) -> dict[str, float]:
        """``{"dice": mean per-image Dice, "iou": mean per-image IoU, "num_images": N}``."""
        if not self.dice_values:
            raise ValueError("PerImageDice.compute() called before any update()")
        dice = torch.cat(self.dice_values)
        iou = torch.cat(self.iou_values)
        return {"dice": dice.mean().item(), "iou": iou.mean().item(), "num_images": dice.numel()}


# ----------------------------------------------------------------------------- per class per image (SegMoTE)


def per_class_per_image_dice(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    num_classes: int | None = None,
    ignore_background: bool = True,
    eps: float = 1e-8,
) -> dict[str, torch.Tensor | float]:
    """SegMoTE's Dice: per image, averaged over the classes present in that image's ground truth.

    For each image and each class *present in the image's ground truth*, Dice
    ``2 I / (|P| + |G| + eps)``; the image's score is the mean over those classes; the reported
    number is the mean over images. Classes absent from an image's ground truth do not count for
    that image, even if predicted (SegMoTE prompts only the classes that are there). Images with
    no foreground class at all get NaN and are left out of the mean (SegMoTE's own loop would
    turn the whole average into NaN).

    Inputs -- either form, ``pred`` and ``target`` alike:

    * per-class binary masks ``(B, C, H, W)`` (0/1 or bool; classes may overlap, as SegMoTE
      predicts each prompted class separately with ``sigmoid(logit) > 0.5``), or
    * integer label maps ``(B, H, W)`` with ``num_classes`` given; they are one-hot encoded with
      :func:`monai.networks.utils.one_hot`.

    With ``ignore_background=True`` channel / label 0 is dropped (as MONAI's
    ``include_background=False``); pass ``False`` for masks without a background channel.

    Returns:
        A dict with ``"dice"`` (float, mean over images), ``"per_image"`` ``(B,)``,
        ``"per_class"`` ``(C',)`` (mean over the images where the class is present; NaN if never
        present), ``"dice_bc"`` ``(B, C')`` with NaN where the class is absent, and ``"present"``
        ``(B, C')`` bool. ``C'`` is ``C - 1`` with the background ignored.

    Example:
        >>> t = torch.tensor([[[0, 1], [2, 2]]])  # classes 1 and 2 present
        >>> p = torch.tensor([[[0, 1], [0, 0]]])  # class 1 right, class 2 missed
        >>> round(per_class_per_image_dice(p, t, num_classes=3)["dice"], 6)  # (1 + 0) / 2
        0.5
    """
    _check_same_shape(pred, target)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if pred.ndim == 3:
        if num_classes is None:
            raise ValueError(f"integer label maps of shape {tuple(pred.shape)} need num_classes")
        for name, x in (("pred", pred), ("target", target)):
            if x.is_floating_point() or x.dtype == torch.bool:
                raise ValueError(f"{name} label map must hold integer class indices, got dtype {x.dtype}")
            if x.numel() and (x.min() < 0 or x.max() >= num_classes):
                raise ValueError(
                    f"{name} labels must lie in [0, {num_classes - 1}], got range [{x.min().item()}, {x.max().item()}]"
                )
        pred = one_hot(pred[:, None].long(), num_classes=num_classes, dim=1)
        target = one_hot(target[:, None].long(), num_classes=num_classes, dim=1)
    elif pred.ndim == 4:
        if num_classes is not None and pred.shape[1] != num_classes:
            raise ValueError(
                f"num_classes={num_classes} but pred has {pred.shape[1]} channels, shape {tuple(pred.shape)}"
            )
        _check_binary(pred, "pred")
        _check_binary(target, "target")
    else:
        raise ValueError(
            f"pred must be a label map (B, H, W) or per-class masks (B, C, H, W), got shape {tuple(pred.shape)}"
        )
    if ignore_background:
        if pred.shape[1] < 2:
            raise ValueError(f"ignore_background=True needs at least 2 classes, got shape {tuple(pred.shape)}")
        pred, target = pred[:, 1:], target[:, 1:]

    tp, fp, fn = _counts(pred.float(), target.float())  # (B, C')
    present = (tp + fn) > 0  # |G| > 0
    dice = 2 * tp / ((tp + fp) + (tp + fn) + eps)
    nan = torch.full_like(dice, float("nan"))
    dice_bc = torch.where(present, dice, nan)
    per_image = dice_bc.nanmean(dim=1)  # NaN for images with no class present
    per_class = dice_bc.nanmean(dim=0)
    mean = per_image.nanmean().item()
    return {"dice": mean, "per_image": per_image, "per_class": per_class, "dice_bc": dice_bc, "present": present}


# ---------------------------------------------------------------------- per volume per organ (CLIP-Driven Universal)


def per_volume_class_dice(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    labelled: torch.Tensor | None = None,
    threshold: float = 0.5,
    skip_absent: bool = True,
) -> torch.Tensor:
    """Dice per volume and class -- the CLIP-Driven Universal Model's convention (MoME chapter).

    For each volume ``b`` and class ``c``: ``2 TP / (|P| + |G| + 1)`` with ``P = pred > threshold``.
    NaN (skipped by :func:`mean_dice_per_class`) where the class is not annotated in the volume's source
    dataset (``labelled[b, c]`` False) and, with ``skip_absent`` (default), where it is annotated but absent
    from the volume's ground truth: the reference test loop (``test.py``) scores an organ only when
    ``torch.sum(label[b, organ - 1]) != 0``, so a false positive on an absent organ is not counted either.
    With ``skip_absent=False`` such a class scores 0 (the ``+ 1`` makes empty/empty 0, not 1; the
    reference's ``validation.py`` does this).

    Args:
        pred: ``(B, C, D, H, W)`` probabilities or binary masks (any ``(B, C, *spatial)`` works).
        target: binary masks, same shape.
        labelled: ``(B, C)`` or ``(C,)`` bool, which classes are annotated in each volume;
            ``None`` means all.
        threshold: strict cut-off (``p > threshold``), as in the original code.
        skip_absent: NaN for a labelled class with an empty ground truth in that volume (the reference
            test loop); ``False``: score it (0).

    Returns:
        ``(B, C)`` float64, NaN where not labelled (and, with ``skip_absent``, where absent).

    Example:
        >>> p = torch.ones(1, 3, 1, 2, 2); t = torch.ones(1, 3, 1, 2, 2); t[0, 2] = 0
        >>> per_volume_class_dice(p, t, labelled=torch.tensor([True, False, True]))  # 8/9, unlabelled, absent
        tensor([[0.8889,    nan,    nan]], dtype=torch.float64)
    """
    _check_same_shape(pred, target)
    if pred.ndim < 3:
        raise ValueError(f"pred must have shape (B, C, *spatial), got shape {tuple(pred.shape)}")
    _check_binary(target, "target")
    prob = _to_probabilities(pred.detach(), from_logits=False)
    tp, fp, fn = _counts(_binarize(prob, threshold, inclusive=False), target.detach().float())
    dice = 2 * tp / ((tp + fp) + (tp + fn) + 1.0)
    if labelled is not None:
        labelled = torch.as_tensor(labelled, device=dice.device).bool()
        if labelled.ndim == 1 and labelled.shape[0] == dice.shape[1]:
            labelled = labelled.expand_as(dice)
        if labelled.shape != dice.shape:
            raise ValueError(
                f"labelled must have shape (C,)=({dice.shape[1]},) or (B, C)={tuple(dice.shape)}, "
                f"got {tuple(labelled.shape)}"
            )
        dice = torch.where(labelled, dice, torch.full_like(dice, float("nan")))
    if skip_absent:  # the reference test loop scores an organ only where the volume's ground truth has it
        dice = torch.where(tp + fn > 0, dice, torch.full_like(dice, float("nan")))
    return dice


def mean_dice_per_class(dice_bc: torch.Tensor) -> torch.Tensor:
    """Mean over volumes of :func:`per_volume_class_dice`, per class, ignoring NaN (unlabelled) entries.

    The paper's "average Dice" is then the mean of this ``(C,)`` vector over organs
    (``mean_dice_per_class(d).nanmean()``), so every organ weighs the same however many volumes
    label it.

    Args:
        dice_bc: ``(B, C)``, NaN where a class is not labelled.

    Returns:
        ``(C,)``; NaN for a class labelled in no volume.

    Example:
        >>> mean_dice_per_class(torch.tensor([[1.0, float("nan")], [0.5, 0.2]]))
        tensor([0.7500, 0.2000])
    """
    check_rank(dice_bc, 2, "dice_bc")
    return dice_bc.nanmean(dim=0)


def binary_dice(pred, target, *, smooth: float = 1.0) -> float:
    """The Dice of one binary mask against another, ``2|P & G| / (|P| + |G| + smooth)``: for a figure or a table
    cell, not a paper's metric (those are above). ``smooth=1`` is the Universal Model's denominator.

    ``pred`` and ``target`` are boolean (or 0/1) arrays or tensors of the same shape.

    Raises:
        ValueError: different shapes, or values other than 0/1.

    Example:
        >>> binary_dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool))
        0.5
    """
    p, t = np.asarray(torch.as_tensor(pred).cpu()), np.asarray(torch.as_tensor(target).cpu())
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {p.shape} and {t.shape}")
    for name, x in (("pred", p), ("target", t)):
        if x.dtype != bool and not np.isin(x, (0, 1)).all():
            raise ValueError(f"{name} must be a binary mask (bool or 0/1); threshold probabilities first")
    p, t = p.astype(bool), t.astype(bool)
    return float(2 * (p & t).sum() / (p.sum() + t.sum() + smooth))
