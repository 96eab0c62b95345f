"""Tests for data_scripts/prepare_qata.py and prepare_mosmed.py (the programs medmoe.papers.mlmoe.prepare.qata and
.mosmed): fake Kaggle trees + LViT workbooks in the real formats -> the Ariadne (and LViT) layouts -> the loaders;
clear failures, idempotent, atomic."""

from __future__ import annotations

import importlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from openpyxl import Workbook
from PIL import Image

from medmoe.data.prepare import PREPARED_MARKER
from medmoe.papers.mlmoe.data import LViTDataset, QaTaDataset

REPO = Path(__file__).resolve().parent.parent
SIZE = 32


def _load(name: str):
    """The program behind ``data_scripts/<name>.py`` (a thin wrapper over the paper's prepare module)."""
    return importlib.import_module({"prepare_qata": "medmoe.papers.mlmoe.prepare.qata",
                                    "prepare_mosmed": "medmoe.papers.mlmoe.prepare.mosmed"}[name])


@pytest.fixture(scope="module")
def qata_cli():
    return _load("prepare_qata")


@pytest.fixture(scope="module")
def mosmed_cli():
    return _load("prepare_mosmed")


def _png(path: Path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)


def _mask(seed: int, high: int = 255) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    r = 4 + seed % 10
    m[r : r + 8, 6 : 6 + 10] = high
    return m


def _xlsx(path: Path, rows, header=("Image", "Description")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    book = Workbook()
    sheet = book.active
    if header is not None:
        sheet.append(list(header))
    for row in rows:
        sheet.append(list(row) if isinstance(row, (tuple, list)) else [row])
    book.save(path)
    return path


def _text(i: int) -> str:
    return f"Unilateral pulmonary infection, {i} infected areas, lower left lung."


# --------------------------------------------------------------------------------------------------
# QaTa-COV19
# --------------------------------------------------------------------------------------------------

N_QATA_TRAIN, N_QATA_TEST = 10, 4


def make_qata_kaggle(base: Path) -> Path:
    """``base/QaTa-COV19/QaTa-COV19-v2/{Train Set,Test Set}/{Images,Ground-truths}`` as on Kaggle."""
    v2 = base / "QaTa-COV19" / "QaTa-COV19-v2"
    for folder, ids in (("Train Set", range(N_QATA_TRAIN + 1)), ("Test Set", range(100, 100 + N_QATA_TEST))):
        for i in ids:  # the extra train image (id 10) has no text row
            _png(v2 / folder / "Images" / f"covid_{i}.png", _image(i))
            _png(v2 / folder / "Ground-truths" / f"mask_covid_{i}.png", _mask(i))
    return base


def make_qata_text(folder: Path) -> Path:
    _xlsx(folder / "Train_text_for_Covid19.xlsx", [(f"mask_covid_{i}.png", _text(i)) for i in range(N_QATA_TRAIN)])
    _xlsx(folder / "Test_text_for_Covid19.xlsx",
          [(f"mask_covid_{i}.png", _text(i)) for i in range(100, 100 + N_QATA_TEST)])
    return folder


@pytest.fixture()
def qata_inputs(tmp_path):
    return make_qata_kaggle(tmp_path / "kaggle"), make_qata_text(tmp_path / "lvit_text")


def _names(ds) -> list[str]:
    return [r[3] for r in ds.records]


def test_prepare_qata_end_to_end(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    root = tmp_path / "data"
    rc = qata_cli.main(["--root", str(root), "--qata", str(kaggle), "--text-dir", str(text), "--no-verify",
                        "--lvit-layout"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "Train_text_for_Covid19.xlsx 10 (train 8 + val 2" in out.out
    assert "1 image(s) in" in out.out and "covid_10.png" in out.out
    assert "8 train / 2 val" in out.out and "prompt/test.csv 4 rows" in out.out

    ariadne = root / "QaTa-COV19-v2"
    assert (ariadne / "Train" / "Images" / "covid_0.png").is_file()
    assert (ariadne / "Train" / "GTs" / "mask_covid_0.png").is_file()
    assert not (ariadne / "Train" / "Images" / "covid_10.png").exists()
    train = QaTaDataset(root=ariadne, split="train", size=SIZE)
    val = QaTaDataset(root=ariadne, split="val", size=SIZE)
    test = QaTaDataset(root=ariadne, split="test", size=SIZE)
    assert _names(train) == [f"covid_{i}.png" for i in range(8)]
    assert _names(val) == ["covid_8.png", "covid_9.png"]
    assert len(test) == N_QATA_TEST and test.texts[0] == _text(100)
    np.testing.assert_array_equal(train[3]["mask"][0].numpy(), (_mask(3) > 0).astype(np.float32))

    lvit_root = root / "lvit" / "QaTa-Covid19"
    assert (lvit_root / "Val_Folder" / "labelcol" / "mask_covid_9.png").is_file()
    assert (lvit_root / "Train_Folder" / "Train_text.xlsx").is_file()
    lv_train = LViTDataset(root=lvit_root, split="train", size=SIZE, split_policy="lvit")
    lv_val = LViTDataset(root=lvit_root, split="val", size=SIZE, split_policy="lvit")
    assert (len(lv_train), len(lv_val)) == (8, 2)
    # Both loaders, both layouts: the same items under the 80/20 policy.
    same = LViTDataset(root=lvit_root, split="val", size=SIZE)
    assert _names(same) == _names(val) and same.texts == val.texts
    # No temporary folders left next to the outputs.
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    assert not [p for p in (root / "lvit").iterdir() if p.name.startswith(".")]


def test_prepare_qata_split_ids(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    # Format of LViT's ID workbooks is unconfirmed: one with a header and mask names, one bare stems.
    _xlsx(text / "Train_ID.xlsx", [(f"mask_covid_{i}.png",) for i in (9, 0, 1, 3, 4, 6, 7, 8)], header=("Image",))
    _xlsx(text / "Val_ID.xlsx", ["covid_5", "covid_2"], header=None)
    root = tmp_path / "data"
    rc = qata_cli.main(["--root", str(root), "--qata", str(kaggle), "--text-dir", str(text), "--no-verify",
                        "--lvit-layout"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "split: Train_ID.xlsx / Val_ID.xlsx" in out.out
    val = QaTaDataset(root=root / "QaTa-COV19-v2", split="val", size=SIZE)
    assert _names(val) == ["covid_2.png", "covid_5.png"]  # LViT's val rows, in workbook order
    lv_val = LViTDataset(root=root / "lvit" / "QaTa-Covid19", split="val", size=SIZE, split_policy="lvit")
    assert _names(lv_val) == _names(val)
    # Forcing the row split ignores the ID files.
    assert qata_cli.main(["--root", str(root), "--qata", str(kaggle), "--text-dir", str(text), "--no-verify",
                          "--split-ids", "rows"]) == 0
    assert _names(QaTaDataset(root=root / "QaTa-COV19-v2", split="val", size=SIZE)) == ["covid_8.png", "covid_9.png"]


def test_prepare_qata_bad_split_ids(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    _xlsx(text / "Train_ID.xlsx", [f"covid_{i}" for i in range(7)], header=None)
    _xlsx(text / "Val_ID.xlsx", ["covid_7", "covid_8"], header=None)
    rc = qata_cli.main(["--root", str(tmp_path / "d"), "--qata", str(kaggle), "--text-dir", str(text), "--no-verify"])
    err = capsys.readouterr().err
    assert rc == 1 and "1 row(s) in neither, e.g. 'mask_covid_9.png'" in err and "--split-ids rows" in err


def test_prepare_qata_from_zip_archive(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(kaggle.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(kaggle).as_posix())
    out = tmp_path / "out" / "qata"
    rc = qata_cli.main(["--qata", str(archive), "--text-dir", str(text), "--no-verify", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert len(QaTaDataset(root=out, split="test", size=SIZE)) == N_QATA_TEST
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["qata"]  # unpacked copy removed


def test_prepare_qata_default_route_uses_the_catalogue(qata_cli, tmp_path, capsys):
    root = tmp_path / "data"
    make_qata_kaggle(root / "qata_cov19")
    # Workbooks missing: ManualDownloadRequired names the exact paths -> exit 3.
    assert qata_cli.main(["--root", str(root), "--no-kaggle"]) == 3
    err = capsys.readouterr().err
    assert str(root / "lvit_text" / "qata_cov19" / "Train_text_for_Covid19.xlsx") in err
    assert "OneDrive" in err
    # Our fake workbooks do not match the pinned checksums.
    make_qata_text(root / "lvit_text" / "qata_cov19")
    assert qata_cli.main(["--root", str(root), "--no-kaggle"]) == 1
    err = capsys.readouterr().err
    assert "checksum" in err and "--no-verify" in err
    assert qata_cli.main(["--root", str(root), "--no-kaggle", "--no-verify"]) == 0
    assert len(QaTaDataset(root=root / "QaTa-COV19-v2", split="train", size=SIZE)) == 8


def test_prepare_qata_missing_kaggle_data_needs_manual_download(qata_cli, qata_inputs, tmp_path, capsys):
    _, text = qata_inputs
    assert qata_cli.main(["--root", str(tmp_path / "d"), "--text-dir", str(text), "--no-verify", "--no-kaggle"]) == 3
    err = capsys.readouterr().err
    assert str(tmp_path / "d" / "qata_cov19" / "qatacov19-dataset.zip") in err and "kaggle.com" in err


def test_prepare_qata_is_idempotent(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    args = ["--root", str(tmp_path / "d"), "--qata", str(kaggle), "--text-dir", str(text), "--no-verify"]
    assert qata_cli.main(args) == 0
    out = tmp_path / "d" / "QaTa-COV19-v2"
    marker = out / PREPARED_MARKER
    stamp = marker.stat().st_mtime_ns
    capsys.readouterr()
    assert qata_cli.main(args) == 0
    assert "up to date" in capsys.readouterr().out and marker.stat().st_mtime_ns == stamp
    # A changed workbook (different content) rebuilds.
    make_qata_text(text)
    _xlsx(text / "Test_text_for_Covid19.xlsx", [(f"mask_covid_{i}.png", _text(i)) for i in range(100, 102)])
    assert qata_cli.main(args) == 0
    assert len(QaTaDataset(root=out, split="test", size=SIZE)) == 2
    assert qata_cli.main([*args, "--force"]) == 0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_prepare_qata_refuses_a_foreign_output_folder(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    out = tmp_path / "mine"
    (out / "notes.txt").parent.mkdir(parents=True)
    (out / "notes.txt").write_text("my own files")
    rc = qata_cli.main(["--qata", str(kaggle), "--text-dir", str(text), "--no-verify", "--out", str(out)])
    assert rc == 1 and "was not written by a medmoe prepare script" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "my own files"


def test_prepare_qata_text_row_without_mask(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    missing = kaggle / "QaTa-COV19" / "QaTa-COV19-v2" / "Train Set" / "Ground-truths" / "mask_covid_4.png"
    missing.unlink()
    no_image = missing.parent.parent / "Images" / "covid_7.png"
    no_image.unlink()
    out = tmp_path / "d" / "out"
    rc = qata_cli.main(["--qata", str(kaggle), "--text-dir", str(text), "--no-verify", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "2 problems in 14 rows" in err
    assert "Train_text_for_Covid19.xlsx: row 4" in err and "'mask_covid_4.png'" in err
    assert "mask file not found" in err and str(missing) in err
    assert "Train_text_for_Covid19.xlsx: row 7" in err and f"image file not found, expected {no_image}" in err
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))  # nothing written


def test_prepare_qata_text_row_without_image(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    for i in (101, 103):
        (kaggle / "QaTa-COV19" / "QaTa-COV19-v2" / "Test Set" / "Images" / f"covid_{i}.png").unlink()
    rc = qata_cli.main(["--qata", str(kaggle), "--text-dir", str(text), "--no-verify", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "2 problems in 14 rows" in err
    assert "Test_text_for_Covid19.xlsx: row 1" in err and "Test_text_for_Covid19.xlsx: row 3" in err
    assert "image file not found" in err and "covid_103.png" in err


def test_prepare_qata_unreadable_image(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    bad = kaggle / "QaTa-COV19" / "QaTa-COV19-v2" / "Train Set" / "Images" / "covid_2.png"
    bad.write_bytes(b"this is not a png" * 10)
    rc = qata_cli.main(["--qata", str(kaggle), "--text-dir", str(text), "--no-verify", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and f"cannot read image file {bad}" in err
    assert not (tmp_path / "o").exists()


def test_prepare_qata_missing_column(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    _xlsx(text / "Train_text_for_Covid19.xlsx", [("mask_covid_0.png", "x")], header=("Image", "Text"))
    rc = qata_cli.main(["--qata", str(kaggle), "--text-dir", str(text), "--no-verify", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "Train_text_for_Covid19.xlsx: missing column(s) ['Description']" in err
    assert "found columns ['Image', 'Text']" in err


def test_prepare_qata_unexpected_structure_lists_what_was_found(qata_cli, qata_inputs, tmp_path, capsys):
    kaggle, text = qata_inputs
    v2 = kaggle / "QaTa-COV19" / "QaTa-COV19-v2"
    (v2 / "Test Set").rename(v2 / "Testing")
    rc = qata_cli.main(["--qata", str(kaggle), "--text-dir", str(text), "--no-verify", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "no QaTa-COV19 folder found" in err
    assert "Testing/" in err and "Train Set/" in err and "Ground-truths/  (11 files)" in err


# --------------------------------------------------------------------------------------------------
# MosMedData+
# --------------------------------------------------------------------------------------------------

MOSMED_SPLITS = {"train": range(0, 8), "val": range(8, 10), "test": range(10, 13)}
MOSMED_BOOKS = {
    "train": "Train_text_MosMedData+ 1.xlsx",
    "val": "Val_text_MosMedData+ 1.xlsx",
    "test": "Test_text_MosMedData+.xlsx",
}


def _slice(i: int) -> str:
    return f"study_{255 + i // 4:04d}_{i % 4}.png"


def make_mosmed_kaggle(base: Path, *, images="frames", masks="masks", mask_prefix: bool = False) -> Path:
    """An unconfirmed-but-plausible Kaggle tree: ``base/<images>/<slice>.png``, ``base/<masks>/...``
    (masks stored 0/1, as some CT-slice exports do)."""
    for i in range(13):
        _png(base / images / _slice(i), _image(i))
        _png(base / masks / (("mask_" if mask_prefix else "") + _slice(i)), _mask(i, high=1))
    return base


def make_mosmed_text(folder: Path, *, mask_prefix: bool = False) -> Path:
    for split, ids in MOSMED_SPLITS.items():
        _xlsx(folder / MOSMED_BOOKS[split], [(("mask_" if mask_prefix else "") + _slice(i), _text(i)) for i in ids])
    return folder


def test_prepare_mosmed_end_to_end(mosmed_cli, tmp_path, capsys):
    kaggle = make_mosmed_kaggle(tmp_path / "kaggle" / "archive")
    text = make_mosmed_text(tmp_path / "text")
    root = tmp_path / "data"
    rc = mosmed_cli.main(["--root", str(root), "--mosmed", str(tmp_path / "kaggle"), "--text-dir", str(text),
                          "--no-verify", "--lvit-layout"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "rows: train 8, val 2, test 3 (total 13)" in out.out and "mask_name_rule='same_name'" in out.out
    assert "13 mask(s) were not stored as 0/255" in out.out
    assert str(kaggle / "frames") in out.out

    ariadne = root / "MosMedDataPlus"
    assert (ariadne / "Train" / "GTs" / f"mask_{_slice(0)}").is_file()
    with Image.open(ariadne / "Train" / "GTs" / f"mask_{_slice(0)}") as im:
        assert set(np.unique(np.asarray(im)).tolist()) == {0, 255}
    train = QaTaDataset(root=ariadne, split="train", size=SIZE)
    val = QaTaDataset(root=ariadne, split="val", size=SIZE)
    assert _names(train) == [_slice(i) for i in range(8)]  # 80 % of Train (8) + Val (2) rows
    assert _names(val) == [_slice(8), _slice(9)]
    assert len(QaTaDataset(root=ariadne, split="test", size=SIZE)) == 3
    assert train[0]["mask"].sum() > 0

    lvit_root = root / "lvit" / "MosMedDataPlus"
    assert (lvit_root / "Train_Folder" / "labelcol" / _slice(0)).is_file()  # original (same) names
    for policy, sizes in (("lvit", (8, 2)), ("ariadne_80_20", (8, 2))):
        got = [len(LViTDataset(root=lvit_root, split=s, size=SIZE, dataset="mosmed", split_policy=policy))
               for s in ("train", "val")]
        assert tuple(got) == sizes
    ds = LViTDataset(root=lvit_root, split="test", size=SIZE, dataset="mosmed")
    assert ds.mask_name_rule == "same_name" and ds[0]["mask"].sum() > 0


def test_prepare_mosmed_mask_prefix_convention(mosmed_cli, tmp_path, capsys):
    make_mosmed_kaggle(tmp_path / "k", images="Images", masks="GTs", mask_prefix=True)
    text = make_mosmed_text(tmp_path / "text", mask_prefix=True)
    out = tmp_path / "o"
    rc = mosmed_cli.main(["--mosmed", str(tmp_path / "k"), "--text-dir", str(text), "--no-verify", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0 and "mask_name_rule='strip_mask_prefix'" in stdout
    assert _names(QaTaDataset(root=out, split="test", size=SIZE)) == [_slice(i) for i in range(10, 13)]


def test_prepare_mosmed_unrecognised_structure(mosmed_cli, tmp_path, capsys):
    kaggle = make_mosmed_kaggle(tmp_path / "k", images="ct_scans", masks="infection_masks")
    text = make_mosmed_text(tmp_path / "text")
    out = tmp_path / "o"
    rc = mosmed_cli.main(["--mosmed", str(kaggle), "--text-dir", str(text), "--no-verify", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot find the MosMedData+ image and mask folders" in err
    assert "ct_scans/  (13 files)" in err and "infection_masks/  (13 files)" in err
    assert "--images-dir" in err
    rc = mosmed_cli.main(["--mosmed", str(kaggle), "--text-dir", str(text), "--no-verify", "--out", str(out),
                          "--images-dir", "ct_scans", "--masks-dir", "infection_masks"])
    assert rc == 0, capsys.readouterr().err
    assert len(QaTaDataset(root=out, split="train", size=SIZE)) == 8


def test_prepare_mosmed_text_row_without_mask(mosmed_cli, tmp_path, capsys):
    kaggle = make_mosmed_kaggle(tmp_path / "k")
    (kaggle / "masks" / _slice(9)).unlink()
    text = make_mosmed_text(tmp_path / "text")
    out = tmp_path / "o"
    rc = mosmed_cli.main(["--mosmed", str(kaggle), "--text-dir", str(text), "--no-verify", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Val_text_MosMedData+ 1.xlsx: row 1" in err and repr(_slice(9)) in err
    assert str(kaggle / "masks" / _slice(9)) in err and not out.exists()


def test_prepare_mosmed_missing_workbooks_needs_manual_download(mosmed_cli, tmp_path, capsys):
    kaggle = make_mosmed_kaggle(tmp_path / "k")
    text = tmp_path / "text"
    text.mkdir()
    rc = mosmed_cli.main(["--mosmed", str(kaggle), "--text-dir", str(text), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 3 and str(text / "Test_text_MosMedData+.xlsx") in err


def test_prepare_mosmed_default_route_accepts_a_hand_unpacked_folder(mosmed_cli, tmp_path, capsys):
    root = tmp_path / "data"
    make_mosmed_kaggle(root / "mosmed_plus" / "COVID-19 CT scans")
    make_mosmed_text(root / "lvit_text" / "mosmed_plus")
    rc = mosmed_cli.main(["--root", str(root), "--no-verify", "--no-kaggle"])
    assert rc == 0, capsys.readouterr().err
    assert len(QaTaDataset(root=root / "MosMedDataPlus", split="val", size=SIZE)) == 2
    shutil.rmtree(root / "mosmed_plus")
    assert mosmed_cli.main(["--root", str(root), "--no-verify", "--no-kaggle", "--force"]) == 3
    assert "covid19-ct-scan-lesion-segmentation-dataset.zip" in capsys.readouterr().err
