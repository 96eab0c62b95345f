"""Each Dice/IoU convention against numbers worked out by hand on tiny masks."""

from __future__ import annotations

import math

import pytest
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from medmoe.metrics import (
    METRIC_CONVENTIONS,
    GlobalDiceIoU,
    PerImageDice,
    global_dice_iou,
    mean_dice_per_class,
    per_class_per_image_dice,
    per_image_dice,
    per_image_iou,
    per_volume_class_dice,
)

S = 1e-5  # LViT's smoothing constant


def _mask(*pixels: tuple[int, int], size: int = 4) -> torch.Tensor:
    """(1, 1, size, size) binary mask with the listed (row, col) pixels set."""
    m = torch.zeros(1, 1, size, size)
    for r, c in pixels:
        m[0, 0, r, c] = 1
    return m


@pytest.fixture
def three_images() -> tuple[torch.Tensor, torch.Tensor]:
    """A: TP=3 FP=1 FN=1.  B: empty mask, empty prediction.  C: one-pixel lesion, missed.

    Predictions are probabilities: foreground pixels 0.9 (or 0.7), background 0.1 (or 0.3).
    """
    target_a = _mask((0, 0), (0, 1), (1, 0), (1, 1))
    pred_a = 0.1 + 0.8 * _mask((0, 0), (0, 1), (1, 0), (3, 3))
    target_b = _mask()
    pred_b = torch.full((1, 1, 4, 4), 0.3)
    target_c = _mask((2, 2))
    pred_c = torch.full((1, 1, 4, 4), 0.1)
    pred = torch.cat([pred_a, pred_b, pred_c])
    target = torch.cat([target_a, target_b, target_c])
    return pred, target


# ----------------------------------------------------------------------------- global micro (Ariadne's Thread / MLMoE)


def test_global_dice_iou_by_hand(three_images):
    pred, target = three_images
    # Summed over all three images: TP = 3, FP = 1, FN = 1 + 1 = 2.
    metric = GlobalDiceIoU()
    metric.update(pred[:2], target[:2])  # two batches, one accumulator
    metric.update(pred[2:], target[2:])
    out = metric.compute()
    assert out["dice"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # 6/9
    assert out["iou"] == pytest.approx(3 / (3 + 1 + 2))  # 3/6
    metric.reset()
    metric.update(pred[:1], target[:1])  # image A alone: 6/8 and 3/5
    assert metric.compute() == pytest.approx({"dice": 0.75, "iou": 0.6})


def test_micro_and_per_image_differ(three_images):
    pred, target = three_images
    # Same three images, two averages:
    #   micro:      Dice = 6/9 = 0.667 (B contributes nothing, C adds one FN)
    #   per image:  A = (6+s)/(8+s) ~ 0.75, B = s/s = 1, C = s/(1+s) ~ 0  ->  mean ~ 0.583
    micro = global_dice_iou(pred, target)["dice"]
    per_image = per_image_dice(pred, target)
    expected = torch.tensor([(6 + S) / (8 + S), 1.0, S / (1 + S)], dtype=torch.float64)
    torch.testing.assert_close(per_image, expected)
    assert micro == pytest.approx(6 / 9)
    assert per_image.mean().item() == pytest.approx((0.75 + 1.0 + 0.0) / 3, abs=1e-5)
    assert abs(micro - per_image.mean().item()) > 0.08


def test_global_empty_everywhere_scores_zero():
    # torchmetrics' zero_division=0: no foreground anywhere gives 0 for both.
    out = global_dice_iou(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    assert out == {"dice": 0.0, "iou": 0.0}


def test_global_all_ones_batch_of_one():
    out = global_dice_iou(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
    assert out == {"dice": 1.0, "iou": 1.0}


def test_global_threshold_conventions_at_exactly_half():
    # torchmetrics 0.10: Dice() uses p >= 0.5, BinaryJaccardIndex uses p > 0.5.
    out = global_dice_iou(torch.tensor([[[[0.5]]]]), torch.tensor([[[[1.0]]]]))
    assert out == {"dice": 1.0, "iou": 0.0}


def test_global_logits_match_probabilities(three_images):
    pred, target = three_images
    logits = torch.logit(pred)
    assert global_dice_iou(logits, target, from_logits=True) == pytest.approx(global_dice_iou(pred, target))
    with pytest.raises(ValueError, match="from_logits=True"):
        global_dice_iou(logits, target)  # logits outside [0, 1] are refused


def test_global_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 1, 4, 5\)"):
        GlobalDiceIoU().update(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="one channel"):
        GlobalDiceIoU().update(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="binary"):
        GlobalDiceIoU().update(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5))
    with pytest.raises(ValueError, match="before any update"):
        GlobalDiceIoU().compute()


# ----------------------------------------------------------------------------- per image (LViT)


def test_per_image_dice_empty_and_full():
    empty = torch.zeros(1, 1, 4, 4)
    full = torch.ones(1, 1, 4, 4)
    # Validation convention: empty prediction on empty mask scores exactly 1.
    assert per_image_dice(empty, empty).item() == 1.0
    assert per_image_dice(full, full).item() == pytest.approx(1.0)
    # Prediction empty, mask full: s / (16 + s).
    assert per_image_dice(empty, full).item() == pytest.approx(S / (16 + S))
    # LViT's test_model.py: 2I / (|P| + |G| + s) at p > 0.5 -> empty/empty is 0.
    assert per_image_dice(empty, empty, smooth_numerator=False, inclusive=False).item() == 0.0
    assert per_image_dice(full, full, smooth_numerator=False).item() == pytest.approx(32 / (32 + S))


def test_per_image_threshold_inclusive_vs_strict():
    half = torch.full((1, 1, 1, 2), 0.5)
    target = torch.tensor([[[[1.0, 0.0]]]])
    # p >= 0.5: both pixels foreground, TP=1 FP=1 -> (2+s)/(3+s); p > 0.5: none -> s/(1+s).
    assert per_image_dice(half, target).item() == pytest.approx((2 + S) / (3 + S))
    assert per_image_dice(half, target, inclusive=False).item() == pytest.approx(S / (1 + S))


def test_per_image_iou_by_hand(three_images):
    pred, target = three_images
    # A: 3 / 5; B: empty/empty -> 0 (sklearn jaccard_score); C: 0 / 1.
    torch.testing.assert_close(per_image_iou(pred, target), torch.tensor([0.6, 0.0, 0.0], dtype=torch.float64))
    assert per_image_iou(pred[1:2], target[1:2], empty_score=1.0).item() == 1.0


def test_per_image_accumulator(three_images):
    pred, target = three_images
    metric = PerImageDice()
    metric.update(pred[:1], target[:1])
    metric.update(pred[1:], target[1:])
    out = metric.compute()
    assert out["num_images"] == 3
    assert out["dice"] == pytest.approx(((6 + S) / (8 + S) + 1.0 + S / (1 + S)) / 3)
    assert out["iou"] == pytest.approx(0.6 / 3)
    assert metric.per_image().shape == (3,)


def test_per_image_logits_and_validation(three_images):
    pred, target = three_images
    torch.testing.assert_close(
        per_image_dice(torch.logit(pred), target, from_logits=True), per_image_dice(pred, target)
    )
    with pytest.raises(ValueError, match=r"\(3, 1, 4, 4\).*\(3, 4, 4\)"):
        per_image_dice(pred, target[:, 0])
    with pytest.raises(ValueError, match="smooth"):
        per_image_dice(pred, target, smooth=0)


# ----------------------------------------------------------------------------- per class per image (SegMoTE)


@pytest.fixture
def label_maps() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 4x4 label maps, classes 0 (background), 1, 2.

    Image 1: class 1 -> TP 3, |P| 4, |G| 4 (Dice 6/8); class 2 -> TP 1, |P| 1, |G| 2 (Dice 2/3).
    Image 2: class 1 perfect (2 pixels); class 2 predicted (2 pixels) but absent from the truth.
    """
    t1 = torch.zeros(4, 4, dtype=torch.long)
    t1[0, 0:4] = 1
    t1[3, 0:2] = 2
    p1 = torch.zeros(4, 4, dtype=torch.long)
    p1[0, 0:3] = 1
    p1[1, 0] = 1
    p1[3, 0] = 2
    t2 = torch.zeros(4, 4, dtype=torch.long)
    t2[2, 2:4] = 1
    p2 = t2.clone()
    p2[0, 0:2] = 2
    return torch.stack([p1, p2]), torch.stack([t1, t2])


def test_per_class_per_image_by_hand(label_maps):
    pred, target = label_maps
    out = per_class_per_image_dice(pred, target, num_classes=3)
    image1 = (6 / 8 + 2 / 3) / 2
    image2 = 1.0  # class 2 is not in image 2's truth, so its false positives do not count
    torch.testing.assert_close(out["per_image"], torch.tensor([image1, image2], dtype=torch.float64), atol=1e-7, rtol=0)
    assert out["dice"] == pytest.approx((image1 + image2) / 2, abs=1e-7)
    torch.testing.assert_close(
        out["per_class"], torch.tensor([(0.75 + 1.0) / 2, 2 / 3], dtype=torch.float64), atol=1e-7, rtol=0
    )
    assert out["present"].tolist() == [[True, True], [True, False]]
    assert math.isnan(out["dice_bc"][1, 1].item())


def test_per_class_per_image_onehot_input_and_monai_crosscheck(label_maps):
    pred, target = label_maps
    pred_oh = one_hot(pred[:, None], num_classes=3, dim=1)
    target_oh = one_hot(target[:, None], num_classes=3, dim=1)
    from_maps = per_class_per_image_dice(pred, target, num_classes=3)
    from_onehot = per_class_per_image_dice(pred_oh, target_oh)
    torch.testing.assert_close(from_maps["dice_bc"], from_onehot["dice_bc"], equal_nan=True)
    # MONAI's compute_dice with ignore_empty=True gives NaN for absent classes -- the same table.
    monai_bc = compute_dice(pred_oh, target_oh, include_background=False, ignore_empty=True).double()
    torch.testing.assert_close(from_onehot["dice_bc"], monai_bc, equal_nan=True, atol=1e-7, rtol=0)


def test_per_class_per_image_no_foreground_image_is_nan_and_skipped(label_maps):
    pred, target = label_maps
    pred = torch.cat([pred, torch.ones(1, 4, 4, dtype=torch.long)])
    target = torch.cat([target, torch.zeros(1, 4, 4, dtype=torch.long)])  # third image: background only
    out = per_class_per_image_dice(pred, target, num_classes=3)
    assert math.isnan(out["per_image"][2].item())
    assert out["dice"] == pytest.approx(((6 / 8 + 2 / 3) / 2 + 1.0) / 2, abs=1e-7)


def test_per_class_per_image_batch_of_one_all_ones_no_background():
    masks = torch.ones(1, 2, 4, 4)
    out = per_class_per_image_dice(masks, masks, ignore_background=False)
    assert out["dice"] == pytest.approx(1.0)
    assert out["per_image"].shape == (1,)


def test_per_class_per_image_validation(label_maps):
    pred, target = label_maps
    with pytest.raises(ValueError, match="num_classes"):
        per_class_per_image_dice(pred, target)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        per_class_per_image_dice(pred, target, num_classes=2)
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 4, 3\)"):
        per_class_per_image_dice(pred, target[..., :3], num_classes=3)
    with pytest.raises(ValueError, match="binary"):
        per_class_per_image_dice(torch.full((1, 2, 2, 2), 0.7), torch.ones(1, 2, 2, 2))


# ---------------------------------------------------------------------- per volume per organ (CLIP-Driven Universal)


def test_per_volume_class_dice_by_hand():
    # Two volumes (B=2), three classes, D=1, H=W=2.
    pred = torch.zeros(2, 3, 1, 2, 2)
    target = torch.zeros(2, 3, 1, 2, 2)
    # Volume 0: class 0 perfect on 2 voxels -> 4/5; class 1 empty/empty -> skipped (NaN; 0/1 = 0 when scored);
    # class 2 unlabelled -> NaN.
    pred[0, 0, 0, 0] = 1
    target[0, 0, 0, 0] = 1
    pred[0, 2] = 1
    # Volume 1: class 0 TP 1, |P| 1, |G| 2 -> 2/4; class 1 one false positive on an absent organ -> skipped (NaN;
    # 0/2 when scored); class 2 perfect on 4 -> 8/9.
    pred[1, 0, 0, 0, 0] = 0.9
    target[1, 0, 0, 0] = 1
    pred[1, 1, 0, 1, 1] = 0.8
    pred[1, 2] = 0.6
    target[1, 2] = 1
    labelled = torch.tensor([[True, True, False], [True, True, True]])
    dice = per_volume_class_dice(pred, target, labelled=labelled)
    expected = torch.tensor([[4 / 5, math.nan, math.nan], [2 / 4, math.nan, 8 / 9]], dtype=torch.float64)
    torch.testing.assert_close(dice, expected, equal_nan=True)
    per_class = mean_dice_per_class(dice)
    torch.testing.assert_close(per_class, torch.tensor([(0.8 + 0.5) / 2, math.nan, 8 / 9], dtype=torch.float64),
                               equal_nan=True)
    assert per_class.nanmean().item() == pytest.approx((0.65 + 8 / 9) / 2)
    scored = per_volume_class_dice(pred, target, labelled=labelled, skip_absent=False)
    expected = torch.tensor([[4 / 5, 0.0, math.nan], [2 / 4, 0.0, 8 / 9]], dtype=torch.float64)
    torch.testing.assert_close(scored, expected, equal_nan=True)


def test_per_volume_labelled_but_absent_organ_is_skipped_as_the_reference_test_loop():
    """Defect 15: the Universal Model's test.py scores an organ of a volume only when its ground truth is non-empty
    (``torch.sum(label[b, organ - 1]) != 0``). An organ labelled for the dataset but absent from this volume is
    skipped (NaN) -- not scored 0, which would pull its organ's mean down for every volume without it."""
    pred = torch.zeros(3, 2, 2, 2, 2)
    target = torch.zeros(3, 2, 2, 2, 2)
    target[:, 0] = 1
    pred[:, 0] = 1  # class 0 perfect in every volume: 16 / 17
    target[0, 1, 0] = 1
    pred[0, 1, 0] = 1  # class 1 present (and perfect) only in volume 0: 8 / 9
    pred[1, 1, 0, 0, 0] = 1  # volume 1: a false positive on the absent organ; volume 2: empty on empty
    dice = per_volume_class_dice(pred, target, labelled=torch.ones(2, dtype=torch.bool))
    assert math.isnan(dice[1, 1].item()) and math.isnan(dice[2, 1].item())
    assert mean_dice_per_class(dice)[1].item() == pytest.approx(8 / 9)  # not (8/9 + 0 + 0) / 3
    assert mean_dice_per_class(dice)[0].item() == pytest.approx(16 / 17)


def test_per_volume_strict_threshold_and_labelled_vector():
    pred = torch.full((1, 2, 1, 1, 2), 0.5)  # exactly 0.5 is background here (p > 0.5)
    target = torch.ones(1, 2, 1, 1, 2)
    dice = per_volume_class_dice(pred, target, labelled=torch.tensor([True, False]))
    assert dice[0, 0].item() == 0.0 and math.isnan(dice[0, 1].item())
    # All ones, batch of one: 2*2 / (2 + 2 + 1).
    assert per_volume_class_dice(target, target)[0, 0].item() == pytest.approx(4 / 5)


def test_per_volume_validation():
    with pytest.raises(ValueError, match=r"\(1, 2, 1, 2, 2\).*\(1, 2, 1, 2, 3\)"):
        per_volume_class_dice(torch.zeros(1, 2, 1, 2, 2), torch.zeros(1, 2, 1, 2, 3))
    with pytest.raises(ValueError, match="labelled"):
        per_volume_class_dice(
            torch.zeros(1, 2, 1, 2, 2), torch.zeros(1, 2, 1, 2, 2), labelled=torch.ones(3, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="rank 2"):
        mean_dice_per_class(torch.zeros(3))


def test_counts_are_exact_on_large_volumes():
    # > 2**24 voxels: float32 counting (MONAI's get_confusion_matrix) would report 24 false positives, not 27.
    target = torch.zeros(1, 1, 320, 320, 200, dtype=torch.bool)
    pred = target.clone()
    target[0, 0, 100:150, 100:150, 100:150] = True
    pred[0, 0, 100:150, 100:150, 100:150] = True
    pred[0, 0, :3, :3, :3] = True  # 27 false positives
    dice = per_volume_class_dice(pred, target)
    tp = 50**3
    assert dice.item() == 2 * tp / ((tp + 27) + tp + 1)


def test_conventions_named():
    assert set(METRIC_CONVENTIONS) == {
        "global_micro", "per_image_smoothed", "per_class_per_image", "per_volume_per_organ"
    }
    joined = " ".join(METRIC_CONVENTIONS.values())
    for paper in ("Ariadne", "LViT", "SegMoTE", "CLIP-Driven"):
        assert paper in joined
