"""Tests for medmoe.papers.mlmoe.data: LViT's layout (QaTa-COV19, MosMedData+), both split policies, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from openpyxl import Workbook, load_workbook
from PIL import Image

from medmoe.data.phantoms import PhantomDataset2D
from medmoe.papers.mlmoe.data import (
    LViTDataset,
    QaTaDataset,
    find_text_table,
    image_name_candidates,
    read_text_table,
    write_lvit_layout,
    write_qata_layout,
    write_text_table,
)

SIZE = 32
N_TRAIN, N_VAL, N_TEST = 6, 4, 3


def _phantoms(n: int, seed: int) -> PhantomDataset2D:
    return PhantomDataset2D(n=n, modalities=("cxr", "ct", "derm"), size=SIZE, seed=seed)


@pytest.fixture(scope="module")
def splits():
    return {"train": _phantoms(N_TRAIN, 0), "val": _phantoms(N_VAL, 1), "test": _phantoms(N_TEST, 2)}


def _write(root, splits, dataset_name="qata"):
    for split, ds in splits.items():
        write_lvit_layout(ds, root, split=split, dataset_name=dataset_name)
    return root


@pytest.fixture()
def qata_root(tmp_path, splits):
    return _write(tmp_path / "QaTa-Covid19", splits)


@pytest.fixture()
def mosmed_root(tmp_path, splits):
    return _write(tmp_path / "MosMedDataPlus", splits, dataset_name="mosmed")


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _xlsx(path, rows, header=("Image", "Description")):
    path.parent.mkdir(parents=True, exist_ok=True)
    book = Workbook()
    sheet = book.active
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    book.save(path)


# --------------------------------------------------------------------------------------------------
# Layout and round trip
# --------------------------------------------------------------------------------------------------


def test_layout_on_disk(qata_root, mosmed_root):
    train = qata_root / "Train_Folder"
    assert (train / "img" / "phantom_train_0.png").is_file()
    assert (train / "labelcol" / "mask_phantom_train_0.png").is_file()
    assert (qata_root / "Val_Folder" / "Val_text.xlsx").is_file()
    assert (qata_root / "Test_Folder" / "labelcol" / "mask_phantom_test_2.png").is_file()
    sheet = load_workbook(train / "Train_text.xlsx").active
    values = list(sheet.values)
    assert values[0] == ("Image", "Description")
    assert [v[0] for v in values[1:]] == [f"mask_phantom_train_{i}.png" for i in range(N_TRAIN)]
    # MosMed-style: the mask has the image's name.
    assert (mosmed_root / "Train_Folder" / "labelcol" / "phantom_train_0.png").is_file()
    assert read_text_table(mosmed_root / "Train_Folder" / "Train_text.xlsx")[0][1] == "phantom_train_0.png"
    with Image.open(train / "labelcol" / "mask_phantom_train_2.png") as im:
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}


def test_round_trip_matches_qata_loader(qata_root, splits, tmp_path):
    ds = LViTDataset(root=qata_root, split="test", size=SIZE)
    ariadne = tmp_path / "ariadne"
    write_qata_layout(splits["test"], ariadne, split="test")
    ref = QaTaDataset(root=ariadne, split="test", size=SIZE)
    assert len(ds) == len(ref) == N_TEST and ds.mask_name_rule == "strip_mask_prefix"
    for i in range(N_TEST):
        a, b = ds[i], ref[i]
        assert a["name"] == f"phantom_test_{i}.png"
        assert a["text"] == b["text"] == splits["test"].reports[i]
        assert a["image"].shape == a["mask"].shape == (1, SIZE, SIZE)
        assert a["image"].dtype == a["mask"].dtype == torch.float32
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        np.testing.assert_array_equal(a["mask"][0].numpy(), splits["test"].phantoms[i].lesion.astype(np.float32))
        assert abs(a["image"].mean().item()) < 1e-5


def test_resize(mosmed_root):
    item = LViTDataset(root=mosmed_root, split="train", size=64, dataset="mosmed")[1]
    assert item["image"].shape == item["mask"].shape == (1, 64, 64)
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}


# --------------------------------------------------------------------------------------------------
# Split policies
# --------------------------------------------------------------------------------------------------


def _names(ds):
    return [r[3] for r in ds.records]


def test_split_policy_ariadne_80_20(qata_root):
    # Train (6 rows) then Val (4 rows) -> 10 rows; first 8 train, last 2 val.
    train = LViTDataset(root=qata_root, split="train", size=SIZE)
    val = LViTDataset(root=qata_root, split="val", size=SIZE)
    expected = [f"phantom_train_{i}.png" for i in range(N_TRAIN)] + [f"phantom_val_{i}.png" for i in range(N_VAL)]
    assert _names(train) == expected[:8]
    assert _names(val) == expected[8:]
    assert train.split_policy == "ariadne_80_20"
    # Files of Val rows are read from Val_Folder.
    assert train.records[-1][0].parent.parent.name == "Val_Folder"
    val30 = LViTDataset(root=qata_root, split="val", size=SIZE, val_fraction=0.3)
    assert _names(val30) == expected[7:]
    with pytest.raises(ValueError, match=r"split 'val' is empty: .*Train_text\.xlsx \+ .*Val_text\.xlsx has 10 rows"):
        LViTDataset(root=qata_root, split="val", val_fraction=0.0)


def test_split_policy_lvit(qata_root):
    train = LViTDataset(root=qata_root, split="train", size=SIZE, split_policy="lvit")
    val = LViTDataset(root=qata_root, split="val", size=SIZE, split_policy="lvit")
    assert _names(train) == [f"phantom_train_{i}.png" for i in range(N_TRAIN)]
    assert _names(val) == [f"phantom_val_{i}.png" for i in range(N_VAL)]
    # The test split is the same under both policies.
    for policy in ("lvit", "ariadne_80_20"):
        test = LViTDataset(root=qata_root, split="test", size=SIZE, split_policy=policy)
        assert _names(test) == [f"phantom_test_{i}.png" for i in range(N_TEST)]


def test_lvit_policy_checks_only_its_own_table(qata_root):
    (qata_root / "Val_Folder" / "labelcol" / "mask_phantom_val_1.png").unlink()
    assert len(LViTDataset(root=qata_root, split="train", size=SIZE, split_policy="lvit")) == N_TRAIN
    with pytest.raises(FileNotFoundError, match="row 1"):
        LViTDataset(root=qata_root, split="train", size=SIZE)  # ariadne_80_20 reads Val_text too


# --------------------------------------------------------------------------------------------------
# Mask naming rules (MosMedData+ is unconfirmed: both conventions, auto-detected)
# --------------------------------------------------------------------------------------------------


def test_image_name_candidates():
    assert image_name_candidates("mask_covid_1.png", "strip_mask_prefix") == ["covid_1.png"]
    assert image_name_candidates("covid_1.png", "strip_mask_prefix") == []
    assert image_name_candidates("a.png", "same_name")[:2] == ["a.png", "a.jpg"]
    with pytest.raises(ValueError, match="mask_name_rule must be one of"):
        image_name_candidates("a.png", "guess")


def test_mosmed_same_name_auto_detected(mosmed_root):
    ds = LViTDataset(root=mosmed_root, split="train", size=SIZE, dataset="mosmed")
    assert ds.mask_name_rule == "same_name"
    assert _names(ds)[0] == "phantom_train_0.png"
    ds = LViTDataset(root=mosmed_root, split="test", size=SIZE, dataset="mosmed", mask_name_rule="same_name")
    assert len(ds) == N_TEST


def test_mosmed_with_mask_prefix_auto_detected(qata_root):
    ds = LViTDataset(root=qata_root, split="test", size=SIZE, dataset="mosmed")
    assert ds.mask_name_rule == "strip_mask_prefix"


def test_mosmed_hand_written_layout_jpg_images(tmp_path):
    # Hand-written MosMed-style layout: CT-slice names, masks .png, images .jpg with the same stem.
    rng = np.random.default_rng(0)
    root = tmp_path / "MosMedDataPlus"
    for split, stem in (("Train", "study_0255_12"), ("Val", "study_0256_3"), ("Test", "study_0300_7")):
        folder = root / f"{split}_Folder"
        (folder / "img").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / "img" / f"{stem}.jpg")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 10:22] = 255
        _png(folder / "labelcol" / f"{stem}.png", mask)
        _xlsx(folder / f"{split}_text.xlsx", [(f"{stem}.png", "Unilateral pulmonary infection, one infected area.")])
    ds = LViTDataset(root=root, split="test", size=SIZE, dataset="mosmed", split_policy="lvit")
    assert ds.mask_name_rule == "same_name" and _names(ds) == ["study_0300_7.jpg"]
    assert ds[0]["mask"].sum() > 0
    assert len(LViTDataset(root=root, split="train", size=SIZE, dataset="mosmed")) == 1  # 80 % of 2 rows


def test_mosmed_neither_rule_matches(mosmed_root):
    for p in (mosmed_root / "Test_Folder" / "img").iterdir():
        p.rename(p.with_name("renamed_" + p.name))
    with pytest.raises(FileNotFoundError) as err:
        LViTDataset(root=mosmed_root, split="test", size=SIZE, dataset="mosmed")
    msg = str(err.value)
    assert "under either naming rule" in msg
    assert "mask_name_rule='strip_mask_prefix'" in msg and "must hold the mask file name" in msg
    assert "mask_name_rule='same_name'" in msg
    assert str(mosmed_root / "Test_Folder" / "img" / "phantom_test_0.png") in msg


def test_auto_names_the_rows_the_best_rule_misses(mosmed_root):
    (mosmed_root / "Test_Folder" / "img" / "phantom_test_1.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        LViTDataset(root=mosmed_root, split="test", size=SIZE, dataset="mosmed")
    msg = str(err.value)
    assert "auto-detected mask_name_rule='same_name': 2 of 3 rows match" in msg
    assert "row 1" in msg and "'phantom_test_1.png'" in msg and "image file not found" in msg


def test_explicit_rule_that_does_not_fit(mosmed_root, qata_root):
    with pytest.raises(ValueError, match=r"row 0 .*'phantom_test_0\.png'.*must hold the mask file name"):
        LViTDataset(root=mosmed_root, split="test", dataset="mosmed", mask_name_rule="strip_mask_prefix")
    with pytest.raises(FileNotFoundError, match=r"row 0 .*image file not found, expected .*mask_phantom_test_0\.png"):
        LViTDataset(root=qata_root, split="test", dataset="qata", mask_name_rule="same_name")


# --------------------------------------------------------------------------------------------------
# Table files
# --------------------------------------------------------------------------------------------------


def test_csv_table_and_explicit_table_paths(qata_root, tmp_path):
    rows = [(m, t) for _, m, t in read_text_table(qata_root / "Test_Folder" / "Test_text.xlsx")]
    (qata_root / "Test_Folder" / "Test_text.xlsx").unlink()
    write_text_table(rows, qata_root / "Test_Folder" / "Test_text.csv")
    assert find_text_table(qata_root / "Test_Folder", "test").name == "Test_text.csv"
    from_csv = LViTDataset(root=qata_root, split="test", size=SIZE)
    other = write_text_table(rows[:2], tmp_path / "my tables" / "Test_text_for_Covid19.xlsx")
    given = LViTDataset(root=qata_root, split="test", size=SIZE, tables={"test": other})
    assert given.texts == from_csv.texts[:2] and given.tables == [other]
    with pytest.raises(ValueError, match=r"tables keys must be among"):
        LViTDataset(root=qata_root, split="test", tables={"valid": other})


def test_missing_table(qata_root, tmp_path):
    (qata_root / "Val_Folder" / "Val_text.xlsx").unlink()
    with pytest.raises(FileNotFoundError, match=r"LViT text table not found: expected .*Val_Folder[/\\]Val_text\.xlsx"):
        LViTDataset(root=qata_root, split="train")
    with pytest.raises(FileNotFoundError, match="LViT root folder not found"):
        LViTDataset(root=tmp_path / "nowhere", split="train")


def test_missing_column(qata_root):
    table = qata_root / "Train_Folder" / "Train_text.xlsx"
    rows = [(m, t) for _, m, t in read_text_table(table)]
    _xlsx(table, rows, header=("Image", "Text"))
    found = r"Train_text\.xlsx: missing column\(s\) \['Description'\]; found columns \['Image', 'Text'\]"
    with pytest.raises(ValueError, match=found):
        LViTDataset(root=qata_root, split="train")


def test_empty_description(qata_root):
    table = qata_root / "Test_Folder" / "Test_text.xlsx"
    rows = [(m, t) for _, m, t in read_text_table(table)]
    rows[2] = (rows[2][0], "  ")
    _xlsx(table, rows)
    with pytest.raises(ValueError, match=r"row 2 .*'mask_phantom_test_2\.png'.*empty Description"):
        LViTDataset(root=qata_root, split="test")


# --------------------------------------------------------------------------------------------------
# Files named by rows
# --------------------------------------------------------------------------------------------------


def test_missing_mask_file(qata_root):
    mask = qata_root / "Train_Folder" / "labelcol" / "mask_phantom_train_3.png"
    mask.unlink()
    with pytest.raises(FileNotFoundError) as err:
        LViTDataset(root=qata_root, split="val")
    msg = str(err.value)
    assert "Train_text.xlsx: row 3" in msg and "'mask_phantom_train_3.png'" in msg
    assert "mask file not found" in msg and str(mask) in msg


def test_missing_image_file(qata_root):
    image = qata_root / "Val_Folder" / "img" / "phantom_val_2.png"
    image.unlink()
    with pytest.raises(FileNotFoundError) as err:
        LViTDataset(root=qata_root, split="train")
    msg = str(err.value)
    assert "Val_text.xlsx: row 2" in msg and "image file not found" in msg and str(image) in msg


def test_several_missing_files_are_all_listed(qata_root):
    for i in range(N_TRAIN):
        (qata_root / "Train_Folder" / "labelcol" / f"mask_phantom_train_{i}.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        LViTDataset(root=qata_root, split="train", split_policy="lvit")
    msg = str(err.value)
    assert f"{N_TRAIN} problems in {N_TRAIN} rows" in msg
    assert all(f"row {i} " in msg for i in range(N_TRAIN))


def test_unreadable_image(qata_root):
    path = qata_root / "Train_Folder" / "img" / "phantom_train_1.png"
    path.write_bytes(b"definitely not a PNG file" * 20)
    with pytest.raises(ValueError) as err:
        LViTDataset(root=qata_root, split="train")
    assert f"cannot read image file {path}" in str(err.value)
    # Not in the selected split: the header is not read, construction succeeds.
    assert len(LViTDataset(root=qata_root, split="val", split_policy="lvit", size=SIZE)) == N_VAL


def test_zero_one_mask_is_read_and_other_faint_masks_refused(tmp_path):
    """Issue 12, defect 18: a 0/1 mask is read as lesion (before: raised, or read as empty by QaTaDataset); a
    faint mask (0/100) still raises, naming the file."""
    root = tmp_path / "m"
    folder = root / "Test_Folder"
    _png(folder / "img" / "a.png", np.full((32, 32), 100))
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12] = 1
    _png(folder / "labelcol" / "a.png", mask)
    _xlsx(folder / "Test_text.xlsx", [("a.png", "one infected area")])
    item = LViTDataset(root=root, split="test", size=SIZE, dataset="mosmed")[0]
    assert item["mask"].sum() == 64
    assert torch.all(item["image"] == 0)  # constant image -> zeros
    item = LViTDataset(root=root, split="test", size=SIZE, dataset="mosmed", mask_threshold=1)[0]
    assert item["mask"].sum() == 64
    mask[4:12, 4:12] = 100
    _png(folder / "labelcol" / "a.png", mask)
    with pytest.raises(ValueError, match=r"a.png has lesion values up to 100, all below mask_threshold=128"):
        LViTDataset(root=root, split="test", size=SIZE, dataset="mosmed")


def test_all_empty_split_and_size_mismatch_are_refused(tmp_path):
    """Issue 12, defects 18 and 19 in LViT's layout: all-empty masks and image/mask size mismatches raise."""
    root = tmp_path / "m"
    folder = root / "Test_Folder"
    _png(folder / "img" / "a.png", np.full((32, 32), 100))
    _png(folder / "labelcol" / "a.png", np.zeros((32, 32), np.uint8))
    _xlsx(folder / "Test_text.xlsx", [("a.png", "one infected area")])
    with pytest.raises(ValueError, match=r"every mask of split 'test' under .*m is empty \(1 masks read"):
        LViTDataset(root=root, split="test", size=SIZE, dataset="mosmed")
    _png(folder / "labelcol" / "a.png", np.full((16, 32), 255, np.uint8))
    with pytest.raises(ValueError, match=r"image .*img/a.png is 32 x 32 .* mask .*labelcol/a.png is 32 x 16"):
        LViTDataset(root=root, split="test", size=SIZE, dataset="mosmed")


def test_bad_arguments(qata_root, splits, tmp_path):
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'test'\), got 'valid'"):
        LViTDataset(root=qata_root, split="valid")
    with pytest.raises(ValueError, match=r"split_policy must be one of \('ariadne_80_20', 'lvit'\)"):
        LViTDataset(root=qata_root, split="train", split_policy="random")
    with pytest.raises(ValueError, match=r"dataset must be one of \('qata', 'mosmed'\)"):
        LViTDataset(root=qata_root, split="train", dataset="monuseg")
    with pytest.raises(ValueError, match="mask_name_rule must be 'auto' or one of"):
        LViTDataset(root=qata_root, split="train", mask_name_rule="guess")
    with pytest.raises(ValueError, match="size must be an int >= 8"):
        LViTDataset(root=qata_root, split="train", size=4)
    with pytest.raises(ValueError, match=r"mask_threshold must be an int in \[1, 255\]"):
        LViTDataset(root=qata_root, split="train", mask_threshold=0)
    with pytest.raises(ValueError, match="dataset_name must be one of"):
        write_lvit_layout(splits["test"], tmp_path, split="test", dataset_name="isic")
    with pytest.raises(ValueError, match="table must be a .csv or .xlsx file"):
        write_text_table([("a", "b")], tmp_path / "t.json")
