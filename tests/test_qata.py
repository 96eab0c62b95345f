"""Tests for medmoe.papers.mlmoe.data: write phantoms in the QaTa-COV19 layout, read them back, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medmoe.data.phantoms import PhantomDataset2D
from medmoe.papers.mlmoe.data import QaTaDataset, write_qata_layout

SIZE = 32


@pytest.fixture(scope="module")
def phantoms():
    return PhantomDataset2D(n=10, modalities=("cxr", "ct", "derm"), size=SIZE, seed=0)


@pytest.fixture()
def root(tmp_path, phantoms):
    write_qata_layout(phantoms, tmp_path, split="train")
    write_qata_layout(PhantomDataset2D(n=4, size=SIZE, seed=1), tmp_path, split="test")
    return tmp_path


def test_layout_on_disk(root):
    assert (root / "Train" / "Images" / "phantom_0.png").is_file()
    assert (root / "Train" / "GTs" / "mask_phantom_0.png").is_file()
    assert (root / "Test" / "Images" / "phantom_3.png").is_file()
    table = pd.read_csv(root / "prompt" / "train.csv")
    assert list(table.columns) == ["Image", "Description"]
    assert table["Image"].tolist() == [f"mask_phantom_{i}.png" for i in range(10)]
    with Image.open(root / "Train" / "Images" / "phantom_2.png") as im:  # derm, written as grey
        assert im.mode == "L" and im.size == (SIZE, SIZE)
    with Image.open(root / "Train" / "GTs" / "mask_phantom_2.png") as im:
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}


def test_round_trip(root, phantoms):
    ds = QaTaDataset(root=root, split="train", size=SIZE)
    assert len(ds) == 8
    for i in range(len(ds)):
        item = ds[i]
        assert item["name"] == f"phantom_{i}.png"
        assert item["text"] == phantoms.reports[i]
        assert item["image"].shape == item["mask"].shape == (1, SIZE, SIZE)
        assert item["image"].dtype == item["mask"].dtype == torch.float32
        np.testing.assert_array_equal(item["mask"][0].numpy(), phantoms.phantoms[i].lesion.astype(np.float32))
        assert abs(item["image"].mean().item()) < 1e-5
        assert abs(item["image"].std(unbiased=False).item() - 1) < 1e-4
        grey = phantoms[i]["image"].numpy()
        if grey.shape[0] == 3:
            grey = np.tensordot([0.299, 0.587, 0.114], grey, axes=([0], [0]))[None]
        assert np.corrcoef(grey.ravel(), item["image"].numpy().ravel())[0, 1] > 0.999


def test_split_by_row_order(root):
    train = QaTaDataset(root=root, split="train", size=SIZE)
    val = QaTaDataset(root=root, split="val", size=SIZE)
    assert [train[i]["name"] for i in range(len(train))] == [f"phantom_{i}.png" for i in range(8)]
    assert [val[i]["name"] for i in range(len(val))] == ["phantom_8.png", "phantom_9.png"]
    val30 = QaTaDataset(root=root, split="val", size=SIZE, val_fraction=0.3)
    assert len(val30) == 3 and val30[0]["name"] == "phantom_7.png"
    test = QaTaDataset(root=root, split="test", size=SIZE)
    assert len(test) == 4 and test.texts == PhantomDataset2D(n=4, size=SIZE, seed=1).reports
    with pytest.raises(ValueError, match="split 'val' is empty: .* has 10 rows and val_fraction=0.0"):
        QaTaDataset(root=root, split="val", val_fraction=0.0)


def test_resize(root):
    item = QaTaDataset(root=root, split="train", size=64)[1]
    assert item["image"].shape == item["mask"].shape == (1, 64, 64)
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0


def test_xlsx_table(root):
    table = pd.read_csv(root / "prompt" / "train.csv")
    xlsx = root / "Train_text.xlsx"
    table.to_excel(xlsx, index=False)
    from_xlsx = QaTaDataset(root=root, split="train", table=xlsx, size=SIZE)
    from_csv = QaTaDataset(root=root, split="train", size=SIZE)
    assert from_xlsx.texts == from_csv.texts
    assert torch.equal(from_xlsx[3]["image"], from_csv[3]["image"])


def test_missing_table(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"QaTa text table not found: .*prompt[/\\]train\.csv"):
        QaTaDataset(root=tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match="QaTa root folder not found"):
        QaTaDataset(root=tmp_path / "nowhere", split="train")


def test_missing_column(root):
    bad = root / "prompt" / "bad.csv"
    table = pd.read_csv(root / "prompt" / "train.csv").rename(columns={"Description": "Text"})
    table.to_csv(bad, index=False)
    found = r"missing column\(s\) \['Description'\]; found columns \['Image', 'Text'\]"
    with pytest.raises(ValueError, match=found):
        QaTaDataset(root=root, split="train", table=bad)


def test_missing_mask_and_image_files(root):
    (root / "Train" / "GTs" / "mask_phantom_3.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        QaTaDataset(root=root, split="train")
    msg = str(err.value)
    assert "row 3" in msg and "'mask_phantom_3.png'" in msg and "mask file not found" in msg
    assert str(root / "Train" / "GTs" / "mask_phantom_3.png") in msg
    # Also caught when building another split: every row is checked.
    with pytest.raises(FileNotFoundError, match="row 3"):
        QaTaDataset(root=root, split="val")


def test_missing_image_file(root):
    (root / "Train" / "Images" / "phantom_9.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        QaTaDataset(root=root, split="train")
    msg = str(err.value)
    assert "row 9" in msg and "image file not found" in msg
    assert str(root / "Train" / "Images" / "phantom_9.png") in msg


def test_empty_description_and_bad_image_column(root):
    table = pd.read_csv(root / "prompt" / "train.csv")
    table.loc[2, "Description"] = "   "
    table.to_csv(root / "prompt" / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"row 2 .*'mask_phantom_2\.png'.*empty Description"):
        QaTaDataset(root=root, split="train")
    table = pd.read_csv(root / "prompt" / "test.csv")
    table.loc[1, "Image"] = "phantom_1.png"
    table.to_csv(root / "prompt" / "test.csv", index=False)
    with pytest.raises(ValueError, match=r"row 1 .*'phantom_1\.png'.*must hold the mask file name"):
        QaTaDataset(root=root, split="test")


def test_corrupt_image_file(root):
    path = root / "Train" / "Images" / "phantom_1.png"
    path.write_bytes(b"definitely not a PNG file" * 20)
    with pytest.raises(ValueError) as err:
        QaTaDataset(root=root, split="train")
    assert f"cannot read image file {path}" in str(err.value)


def test_truncated_image_fails_clearly_at_load(root):
    path = root / "Train" / "Images" / "phantom_0.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    ds = QaTaDataset(root=root, split="train", size=SIZE)
    with pytest.raises(ValueError) as err:
        ds[0]
    assert f"cannot decode image file {path}" in str(err.value)


def test_bad_arguments(root, phantoms, tmp_path):
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'test'\), got 'valid'"):
        QaTaDataset(root=root, split="valid")
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        QaTaDataset(root=root, split="train", val_fraction=1.0)
    with pytest.raises(ValueError, match="size must be an int >= 8"):
        QaTaDataset(root=root, split="train", size=4)
    with pytest.raises(ValueError, match="table must be a .csv or .xlsx file"):
        (root / "t.json").write_text("{}")
        QaTaDataset(root=root, split="train", table=root / "t.json")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        write_qata_layout(phantoms, tmp_path, split="val")


def _rewrite_mask(root, name, fn):
    path = root / "Train" / "GTs" / f"mask_{name}"
    mask = np.asarray(Image.open(path))
    Image.fromarray(fn(mask).astype(np.uint8)).save(path)
    return path


def test_zero_one_masks_are_read_not_empty(root):
    """Issue 12, defect 18: before the fix a 0/1 mask read as empty (value >= 128), silently."""
    before = QaTaDataset(root=root, split="train", size=SIZE)[0]["mask"]
    _rewrite_mask(root, "phantom_0.png", lambda m: m // 255)
    after = QaTaDataset(root=root, split="train", size=SIZE)[0]["mask"]
    assert after.sum() > 0 and torch.equal(before, after)


def test_a_split_of_empty_masks_is_refused(root):
    """Issue 12, defect 18: a split whose masks are all empty (e.g. 0/1 masks misread, or blank files) raises."""
    for i in (8, 9):  # the val split
        _rewrite_mask(root, f"phantom_{i}.png", lambda m: m * 0)
    with pytest.raises(ValueError, match=r"every mask of split 'val' under .* is empty \(2 masks read, e.g. "
                                         r".*mask_phantom_8.png\)"):
        QaTaDataset(root=root, split="val", size=SIZE)
    assert len(QaTaDataset(root=root, split="train", size=SIZE)) == 8  # the train split still has lesions


def test_image_and_mask_of_different_sizes_are_refused(root):
    """Issue 12, defect 19: before the fix both were resized separately and silently."""
    path = root / "Train" / "GTs" / "mask_phantom_3.png"
    Image.fromarray(np.zeros((SIZE, SIZE // 2), np.uint8)).save(path)
    with pytest.raises(ValueError, match=rf"image .*Images/phantom_3.png is {SIZE} x {SIZE} \(W x H\) but its "
                                         rf"mask .*mask_phantom_3.png is {SIZE // 2} x {SIZE}"):
        QaTaDataset(root=root, split="train", size=SIZE)
    # at load time too (e.g. a file replaced after construction): both files and both shapes are named
    from medmoe.papers.mlmoe.data import _load_pair  # why: the private loader, checked directly

    with pytest.raises(ValueError, match=rf"phantom_3.png has shape \({SIZE}, {SIZE}\).*mask_phantom_3.png has "
                                         rf"shape \({SIZE}, {SIZE // 2}\)"):
        _load_pair(root / "Train" / "Images" / "phantom_3.png", path, size=SIZE)


def test_bicubic_resize_and_random_zoom(root):
    """Issue 12, defect 4: Ariadne's bicubic resize and RandZoom(0.95-1.2, p) for training."""
    bil = QaTaDataset(root=root, split="train", size=64)[1]
    bic = QaTaDataset(root=root, split="train", size=64, interpolation="bicubic")[1]
    assert torch.equal(bil["mask"], bic["mask"]) and not torch.allclose(bil["image"], bic["image"])
    zoomed = QaTaDataset(root=root, split="train", size=64, interpolation="bicubic", zoom_prob=1.0, seed=0)
    z = zoomed[1]
    assert z["image"].shape == z["mask"].shape == (1, 64, 64)
    assert set(torch.unique(z["mask"]).tolist()) <= {0.0, 1.0}
    assert not torch.equal(z["mask"], bic["mask"])  # zoomed by a factor in [0.95, 1.2]
    assert zoomed.zoom.prob == 1.0 and tuple(zoomed.zoom.rand_zoom.min_zoom) == (0.95,)
    assert tuple(zoomed.zoom.rand_zoom.max_zoom) == (1.2,)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        QaTaDataset(root=root, split="train", interpolation="area")
    with pytest.raises(ValueError, match=r"zoom_prob must be a probability in \[0, 1\], got 2"):
        QaTaDataset(root=root, split="train", zoom_prob=2)
