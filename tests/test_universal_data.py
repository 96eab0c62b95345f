"""Tests for medmoe.papers.mome.data (the CLIP-Driven Universal Model's data conventions, MoME chapter) and
data_scripts/prepare_universal.py, on tiny real NIfTI files (12 voxels per side) in the reference layout."""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medmoe.data.phantoms import CLASSES_3D, PhantomVolumeDataset
from medmoe.data.sources import SOURCES
from medmoe.papers.mome import data as U

REPO = Path(__file__).resolve().parent.parent
N = 12  # voxels per side
AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])  # RAS, already at the target spacing: no resampling


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _body() -> np.ndarray:
    hu = np.full((N, N, N), -1000, np.int16)
    hu[1:-1, 1:-1, 1:-1] = 40
    return hu


def _write_case(root: Path, image_rel: str, label_rel: str, label: np.ndarray, *,
                affine: np.ndarray = AFFINE, image: np.ndarray | None = None) -> tuple[str, str]:
    _nifti(root / image_rel, _body() if image is None else image, affine)
    _nifti(root / label_rel, label.astype(np.uint8), affine)
    return image_rel, label_rel


def _kits_label() -> np.ndarray:
    """Two kidneys (value 1) at the two ends of the RAS x axis; a tumour (2) in the one at high x (the
    patient's right), a cyst (3) in the one at low x (the patient's left)."""
    lab = np.zeros((N, N, N), np.uint8)
    lab[1:4, 4:8, 4:8] = 1  # low x: left kidney
    lab[8:11, 4:8, 4:8] = 1  # high x: right kidney
    lab[9, 5, 5] = 2
    lab[2, 5, 5] = 3
    return lab


# --------------------------------------------------------------------------------------------------
# Template and tables (facts from ljwztc/CLIP-Driven-Universal-Model)
# --------------------------------------------------------------------------------------------------


def test_template_classes_in_reference_order():
    assert len(U.UNIVERSAL_CLASSES) == U.NUM_UNIVERSAL_CLASSES == 32
    assert U.UNIVERSAL_CLASSES[0] == "Spleen" and U.UNIVERSAL_CLASSES[5] == "Liver"
    assert U.UNIVERSAL_CLASSES[10] == "Pancreas" and U.UNIVERSAL_CLASSES[14] == "Hepatic Vessel"
    assert U.UNIVERSAL_CLASSES[25:] == ("Kidney Tumor", "Liver Tumor", "Pancreas Tumor", "Hepatic Vessel Tumor",
                                        "Lung Tumor", "Colon Tumor", "Kidney Cyst")
    assert U.TEMPLATE["09"] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 21, 22)
    assert U.TEMPLATE["10_03"] == (6, 27) and U.TEMPLATE["10_08"] == (15, 29) and U.TEMPLATE["05"] == (2, 3, 26, 32)


@pytest.mark.parametrize("dataset", sorted(U.TEMPLATE))
def test_transfer_targets_are_exactly_the_template(dataset):
    """What the transfer (plus the left/right split) can produce is exactly what TEMPLATE says is labelled."""
    produced = {t for ids in U.LABEL_TRANSFER[dataset].values() for t in ids}
    produced |= {right + 1 for right in U.LEFT_RIGHT_SPLIT.get(dataset, ())}
    assert produced == set(U.TEMPLATE[dataset])


def test_labelled_channels_are_zero_based():
    assert U.labelled_channels("10_03").nonzero().flatten().tolist() == [5, 26]
    flags = U.labelled_channels("09")
    assert flags.dtype == torch.bool and flags.shape == (32,) and int(flags.sum()) == 15
    assert not flags[14]  # AMOS has no hepatic vessel
    with pytest.raises(ValueError, match="unknown dataset id '11'"):
        U.labelled_channels("11")


# --------------------------------------------------------------------------------------------------
# Dataset ids and lists
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path,expected", [
    ("01_Multi-Atlas_Labeling/img/img0001.nii.gz", "01"),
    ("09_AMOS/label/amos_0004.nii.gz", "09"),
    ("10_Decathlon/Task03_Liver/imagesTr/liver_14.nii.gz", "10_03"),
    ("10_Decathlon/Task10_Colon/labelsTr/colon_026.nii.gz", "10_10"),
    ("12_CT-ORG/img/volume-101.nii.gz", "12"),
])
def test_dataset_id(path, expected):
    assert U.dataset_id(path) == expected


@pytest.mark.parametrize("path,message", [
    ("AMOS/img/a.nii.gz", "two digits"),
    ("11_Unknown/img/a.nii.gz", "unknown dataset id '11'"),
    ("10_Decathlon/imagesTr/a.nii.gz", "TaskNN_"),
    ("10_Decathlon/Task04_Hippocampus/imagesTr/a.nii.gz", "unknown dataset id '10_04'"),
])
def test_dataset_id_errors(path, message):
    with pytest.raises(ValueError, match=message):
        U.dataset_id(path)


def test_parse_dataset_list(tmp_path):
    lst = tmp_path / "PAOT_test.txt"
    lst.write_text(
        "09_AMOS/img/amos_0004.nii.gz\t09_AMOS/label/amos_0004.nii.gz\n"
        "\n"
        "10_Decathlon/Task03_Liver/imagesTr/liver_14.nii.gz\t10_Decathlon/Task03_Liver/labelsTr/liver_14.nii.gz\n"
    )
    cases = U.parse_dataset_list(lst)
    assert [(c.dataset, c.line) for c in cases] == [("09", 1), ("10_03", 3)]
    assert cases[0].image == "09_AMOS/img/amos_0004.nii.gz"
    assert cases[1].name == "10_Decathlon/Task03_Liver/labelsTr/liver_14"


@pytest.mark.parametrize("line,message", [
    ("09_AMOS/img/amos_0004.nii.gz", "expected 'image<TAB>label'"),
    ("09_AMOS/img/a.nii.gz\t09_AMOS/label/a.nii.gz\textra", "3 field"),
    ("11_X/img/a.nii.gz\t11_X/label/a.nii.gz", "unknown dataset id '11'"),
    ("/abs/09_AMOS/a.nii.gz\t09_AMOS/label/a.nii.gz", "relative"),
    ("09_AMOS/img/a.nii.gz\t10_Decathlon/Task03_Liver/labelsTr/a.nii.gz", "from dataset '09' but label"),
])
def test_malformed_list_line_names_file_and_line(tmp_path, line, message):
    lst = tmp_path / "bad.txt"
    lst.write_text("09_AMOS/img/amos_0001.nii.gz\t09_AMOS/label/amos_0001.nii.gz\n" + line + "\n")
    with pytest.raises(ValueError, match=message) as err:
        U.parse_dataset_list(lst)
    assert f"{lst}, line 2" in str(err.value)


def test_missing_list_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        U.parse_dataset_list(tmp_path / "nope.txt")


def test_write_dataset_list_roundtrip_and_errors(tmp_path):
    pairs = [("09_AMOS/img/amos_0001.nii.gz", "09_AMOS/label/amos_0001.nii.gz"),
             ("10_Decathlon/Task09_Spleen/imagesTr/spleen_2.nii.gz",
              "10_Decathlon/Task09_Spleen/labelsTr/spleen_2.nii.gz")]
    path = U.write_dataset_list(tmp_path, "x_train.txt", pairs)
    assert path.read_text() == "".join(f"{a}\t{b}\n" for a, b in pairs)
    assert [(c.image, c.label) for c in U.parse_dataset_list(path)] == pairs
    assert [p.name for p in tmp_path.iterdir()] == ["x_train.txt"]  # no temporary file left behind
    with pytest.raises(ValueError, match="whitespace"):
        U.write_dataset_list(tmp_path, "y.txt", [("09_AMOS/img/a b.nii.gz", "09_AMOS/label/a.nii.gz")])
    with pytest.raises(ValueError, match="unknown dataset id"):
        U.write_dataset_list(tmp_path, "y.txt", [("99_X/a.nii.gz", "99_X/b.nii.gz")])
    assert not (tmp_path / "y.txt").exists()


# --------------------------------------------------------------------------------------------------
# Label transfer
# --------------------------------------------------------------------------------------------------


def test_transfer_liver_includes_tumour():
    lab = np.zeros((N, N, N), np.uint8)
    lab[2:6, 2:6, 2:6] = 1
    lab[3:5, 3:5, 3:5] = 2  # tumour inside the liver
    for dataset in ("04", "10_03"):
        out = U.transfer_label(lab, dataset)
        assert out.shape == (32, N, N, N) and out.dtype == bool
        assert np.array_equal(out[5], lab > 0)  # Liver = liver + tumour
        assert np.array_equal(out[26], lab == 2)  # Liver Tumor
        assert not out[[c for c in range(32) if c not in (5, 26)]].any()


def test_transfer_hepatic_vessel_excludes_tumour_and_pancreas_includes_it():
    lab = np.zeros((N, N, N), np.uint8)
    lab[2:6, 2:6, 2:6] = 1
    lab[3, 3, 3] = 2
    vessel = U.transfer_label(lab, "10_08")
    assert np.array_equal(vessel[14], lab == 1) and np.array_equal(vessel[28], lab == 2)
    pancreas = U.transfer_label(lab, "10_07")
    assert np.array_equal(pancreas[10], lab > 0) and np.array_equal(pancreas[27], lab == 2)


def test_transfer_kits_splits_left_right_and_keeps_lesions_in_the_kidney():
    lab = _kits_label()
    out = U.transfer_label(lab, "05")
    right, left = out[1], out[2]
    assert np.array_equal(left, (lab > 0) & (np.arange(N)[:, None, None] < N // 2))
    assert np.array_equal(right, (lab > 0) & (np.arange(N)[:, None, None] >= N // 2))
    assert out[25].sum() == 1 and out[25][9, 5, 5]  # Kidney Tumor
    assert out[31].sum() == 1 and out[31][2, 5, 5]  # Kidney Cyst
    assert right[9, 5, 5] and left[2, 5, 5]  # the lesions are inside their kidney's channel


def test_transfer_amos_values_and_ignored_values():
    lab = np.zeros((N, N, N), np.uint8)
    for value in range(1, 16):
        lab.flat[value * 7] = value
    out = U.transfer_label(lab, "09")
    for value, (template_id,) in U.LABEL_TRANSFER["09"].items():
        assert out[template_id - 1].flat[value * 7], value
    assert out[10].flat[70] and out[20].flat[98] and out[21].flat[105]  # 10 pancreas, 14 bladder, 15 prostate
    ctorg = np.zeros((N, N, N), np.uint8)
    ctorg[0, 0, 0], ctorg[5, 5, 5] = 5, 1  # 5 = bones: dropped on purpose
    assert U.transfer_label(ctorg, "12").sum() == 1


def test_transfer_unknown_value_is_an_error():
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[1, 1, 1] = 255
    with pytest.raises(ValueError, match=r"liver_seg.nii.gz.*\[255\]"):
        U.transfer_label(lab, "03", source="liver_seg.nii.gz")


def test_split_left_right_single_component_stays_right():
    m = np.zeros((N, 3, 3), bool)
    m[2:5] = True
    right, left = U.split_left_right(m)
    assert np.array_equal(right, m) and not left.any()


# --------------------------------------------------------------------------------------------------
# UniversalDataset (MONAI preprocessing)
# --------------------------------------------------------------------------------------------------


def test_dataset_items_shapes_range_and_flags(tmp_path):
    lst = U.write_universal_fixture(tmp_path, datasets=("09", "10_03"), size=N)
    ds = U.UniversalDataset(root=tmp_path, list_file=lst)
    assert len(ds) == 2
    for item in ds:
        assert item["image"].dtype == torch.float32 and item["label"].dtype == torch.float32
        assert tuple(item["image"].shape) == (1, N - 2, N - 2, N - 2)  # the air border is cropped away
        assert tuple(item["label"].shape) == (32, N - 2, N - 2, N - 2)
        assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        assert set(item["label"].unique().tolist()) <= {0.0, 1.0}
        present = item["label"].flatten(1).any(dim=1)
        assert torch.equal(present, item["labelled"])  # the fixture draws every labelled class
    assert ds[0]["dataset"] == "09" and ds[0]["name"] == "09_AMOS/label/amos_0000"
    assert ds[1]["labelled"].nonzero().flatten().tolist() == [5, 26]


def test_dataset_resamples_to_the_requested_spacing(tmp_path):
    lst = U.write_universal_fixture(tmp_path, datasets=("10_09",), size=N, spacing=(1.0, 1.0, 1.0))
    fine = U.UniversalDataset(root=tmp_path, list_file=lst)[0]
    coarse = U.UniversalDataset(root=tmp_path, list_file=lst, spacing=(2.0, 2.0, 2.0))[0]
    assert fine["image"].shape[1:] == fine["label"].shape[1:]
    assert coarse["image"].shape[1:] == coarse["label"].shape[1:]
    assert all(c < f for c, f in zip(coarse["image"].shape[1:], fine["image"].shape[1:]))
    assert coarse["label"][0].any()  # the spleen survives nearest resampling


def test_dataset_hu_window(tmp_path):
    img = _body().astype(np.int16)
    img[2:10, 2:10, 2:10] = 250  # at the top of the window
    _write_case(tmp_path, "10_Decathlon/Task09_Spleen/imagesTr/spleen_1.nii.gz",
                "10_Decathlon/Task09_Spleen/labelsTr/spleen_1.nii.gz", np.zeros((N, N, N)), image=img)
    lst = U.write_dataset_list(tmp_path, "l.txt", [("10_Decathlon/Task09_Spleen/imagesTr/spleen_1.nii.gz",
                                                    "10_Decathlon/Task09_Spleen/labelsTr/spleen_1.nii.gz")])
    image = U.UniversalDataset(root=tmp_path, list_file=lst)[0]["image"][0]
    assert float(image.max()) == pytest.approx(1.0)
    assert float(image[0, 0, 0]) == pytest.approx((40 + 175) / 425, abs=1e-3)  # soft tissue
    wide = U.UniversalDataset(root=tmp_path, list_file=lst, hu_window=(-1000, 1000))[0]["image"][0]
    assert float(wide.max()) == pytest.approx(1250 / 2000, abs=1e-3)


@pytest.mark.parametrize("flip_x", [False, True])
def test_dataset_label_transfer_on_disk_with_orientation(tmp_path, flip_x):
    """A KiTS case stored RAS or with the x axis flipped (LAS) gives the same left/right kidneys."""
    lab, img = _kits_label(), _body()
    affine = AFFINE.copy()
    if flip_x:  # same world positions, voxels stored right-to-left
        affine[0, 0], affine[0, 3] = -1.5, 1.5 * (N - 1)
        lab, img = lab[::-1].copy(), img[::-1].copy()
    pair = _write_case(tmp_path, "05_KiTS/img/img0001.nii.gz", "05_KiTS/label/label0001.nii.gz", lab,
                       affine=affine, image=img)
    lst = U.write_dataset_list(tmp_path, "kits.txt", [pair])
    item = U.UniversalDataset(root=tmp_path, list_file=lst)[0]
    label = item["label"].bool()
    x = torch.arange(N - 2)[:, None, None].expand(N - 2, N - 2, N - 2)
    assert int(label[2].sum()) == 48 and int(label[1].sum()) == 48  # 3x4x4 kidneys
    assert x[label[2]].max() < x[label[1]].min()  # left kidney at lower RAS x than the right one
    assert int(label[25].sum()) == 1 and int(label[31].sum()) == 1
    assert bool((label[25] & label[1]).any()) and bool((label[31] & label[2]).any())
    assert item["labelled"].nonzero().flatten().tolist() == [1, 2, 25, 31]


def test_missing_label_file_is_named(tmp_path):
    lst = U.write_universal_fixture(tmp_path, datasets=("09", "10_03"), size=N)
    missing = tmp_path / "10_Decathlon/Task03_Liver/labelsTr/liver_0.nii.gz"
    missing.unlink()
    with pytest.raises(FileNotFoundError) as err:
        U.UniversalDataset(root=tmp_path, list_file=lst)
    assert f"{lst}, line 2" in str(err.value) and "label file not found" in str(err.value)
    assert str(missing) in str(err.value)


def test_shape_mismatch_at_construction_and_at_load(tmp_path):
    pair = _write_case(tmp_path, "09_AMOS/img/amos_0001.nii.gz", "09_AMOS/label/amos_0001.nii.gz",
                       np.zeros((N, N, N - 2)))
    lst = U.write_dataset_list(tmp_path, "l.txt", [pair])
    with pytest.raises(ValueError, match="different spatial shapes") as err:
        U.UniversalDataset(root=tmp_path, list_file=lst)
    for text in (str(tmp_path / pair[0]), str(tmp_path / pair[1]), str((N, N, N)), str((N, N, N - 2)), "line 1"):
        assert text in str(err.value)
    ds = U.UniversalDataset(root=tmp_path, list_file=lst, check_headers=False)
    with pytest.raises(ValueError, match="different spatial shapes") as err:
        ds[0]
    assert str(tmp_path / pair[1]) in str(err.value) and str((N, N, N - 2)) in str(err.value)


def test_dataset_constructor_errors_and_transform(tmp_path):
    with pytest.raises(FileNotFoundError, match="data root not found"):
        U.UniversalDataset(root=tmp_path / "none", list_file=tmp_path / "l.txt")
    lst = U.write_universal_fixture(tmp_path, datasets=("10_06",), size=N)
    with pytest.raises(ValueError, match="hu_window"):
        U.UniversalDataset(root=tmp_path, list_file=lst, hu_window=(250, -175))
    with pytest.raises(ValueError, match="spacing"):
        U.UniversalDataset(root=tmp_path, list_file=lst, spacing=(1.5, 0.0, 1.5))
    ds = U.UniversalDataset(root=tmp_path, list_file=lst, transform=lambda d: {**d, "seen": True})
    assert ds[0]["seen"] is True and ds[0]["labelled"].nonzero().flatten().tolist() == [29]


# --------------------------------------------------------------------------------------------------
# Phantoms in the same convention
# --------------------------------------------------------------------------------------------------


def test_partial_label_target_on_phantoms():
    item = PhantomVolumeDataset(n=1, source="liver_tumour", size=32, seed=3)[0]
    target, flags = U.partial_label_target(item["label"], labelled=item["labelled"])
    liver, tumour = CLASSES_3D.index("liver"), CLASSES_3D.index("liver tumour")
    assert target.shape == (len(CLASSES_3D) - 1, 32, 32, 32) and target.dtype == torch.float32
    assert torch.equal(target[liver - 1].bool(), (item["label"] == liver) | (item["label"] == tumour))
    assert torch.equal(target[tumour - 1].bool(), item["label"] == tumour)
    assert flags.tolist() == item["labelled"][1:].tolist() == [True, False, False, False, False, True]
    batch, bflags = U.partial_label_target(torch.stack([item["label"]] * 2))
    assert batch.shape == (2, 6, 32, 32, 32) and bflags.shape == (2, 6) and bool(bflags.all())
    assert torch.equal(batch[1], target)
    with pytest.raises(ValueError, match="ids must lie in"):
        U.partial_label_target(torch.full((2, 2, 2), 7))


# --------------------------------------------------------------------------------------------------
# data_scripts/prepare_universal.py on fake AMOS / MSD / TotalSegmentator folders
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    return importlib.import_module("medmoe.papers.mome.prepare")  # behind data_scripts/prepare_universal.py


def _organ_label(value: int, tumour: int | None = None) -> np.ndarray:
    lab = np.zeros((N, N, N), np.uint8)
    lab[3:7, 3:7, 3:7] = value
    if tumour is not None:
        lab[4, 4, 4] = tumour
    return lab


def _fake_sources(root: Path) -> None:
    amos = root / "amos22" / "amos22"
    for i in (1, 2, 3, 4, 5, 507):  # 507: an MRI case, left out
        _write_case(amos, f"imagesTr/amos_{i:04d}.nii.gz", f"labelsTr/amos_{i:04d}.nii.gz", _organ_label(6))
    _nifti(amos / "imagesTs/amos_0100.nii.gz", _body())  # no labels: ignored
    task = root / "msd" / "Task03_Liver"
    for i in range(4):
        _write_case(task, f"imagesTr/liver_{i}.nii.gz", f"labelsTr/liver_{i}.nii.gz", _organ_label(1, tumour=2))
    (task / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")


def test_prepare_amos_and_msd(cli, tmp_path, capsys):
    _fake_sources(tmp_path)
    assert cli.main(["amos", "msd_liver", "--root", str(tmp_path), "--seed", "1"]) == 0
    out = tmp_path / "universal"
    lists = out / "dataset_list"
    cases = {split: U.parse_dataset_list(lists / f"universal_{split}.txt") for split in ("train", "val", "test")}
    names = [c.name for split in cases.values() for c in split]
    assert sorted(names) == sorted([f"09_AMOS/label/amos_{i:04d}" for i in range(1, 6)]
                                   + [f"10_Decathlon/Task03_Liver/labelsTr/liver_{i}" for i in range(4)])
    assert len(set(names)) == len(names)  # every patient in exactly one split
    assert all(len(c) >= 1 for c in cases.values())
    amos_split = [len(U.parse_dataset_list(lists / f"amos_{s}.txt")) for s in ("train", "val", "test")]
    assert amos_split == [3, 1, 1]  # 5 patients: round(0.2 * 5) = 1 test, at least 1 val
    assert (out / "09_AMOS/img/amos_0001.nii.gz").is_file() and not (out / "09_AMOS/img/amos_0507.nii.gz").exists()
    assert not any(p.name.startswith("._") for p in (out / "10_Decathlon/Task03_Liver/imagesTr").iterdir())
    ds = U.UniversalDataset(root=out, list_file=lists / "universal_train.txt")
    item = next(i for i in ds if i["dataset"] == "10_03")
    assert item["label"][5].sum() == 64 and item["label"][26].sum() == 1  # liver includes its tumour
    first = (lists / "universal_test.txt").read_text()
    capsys.readouterr()
    assert cli.main(["amos", "msd_liver", "--root", str(tmp_path), "--seed", "1"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (lists / "universal_test.txt").read_text() == first  # same seed, same split
    assert cli.main(["amos", "--root", str(tmp_path), "--seed", "2", "--quiet"]) == 0
    moved = [U.parse_dataset_list(lists / f"amos_{s}.txt") for s in ("train", "val", "test")]
    assert sum(len(m) for m in moved) == 5


def test_prepare_errors(cli, tmp_path, capsys):
    assert cli.main(["msd_lung", "--root", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "input folder not found" in err and "fetch.py msd_task06_lung" in err
    (tmp_path / "msd" / "Task03_Liver").mkdir(parents=True)  # the catalogue folder exists, Task06 does not
    assert cli.main(["msd_lung", "--root", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "no cases found" in err and "Task06_Lung/imagesTr" in err and "Task03_Liver/" in err
    assert cli.main(["nonsense", "--root", str(tmp_path)]) == 2
    assert cli.main([]) == 2
    task = tmp_path / "msd" / "Task09_Spleen"
    _write_case(task, "imagesTr/spleen_1.nii.gz", "labelsTr/spleen_1.nii.gz", _organ_label(1))
    _nifti(task / "imagesTr/spleen_2.nii.gz", _body())  # no label
    capsys.readouterr()
    assert cli.main(["msd_spleen", "--root", str(tmp_path)]) == 1
    assert "spleen_2.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "universal" / "10_Decathlon" / "Task09_Spleen").exists()  # nothing half-built
    assert cli.main(["msd", "--root", str(tmp_path), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "07 WORD" in listing and "e-mail" in listing and "Synapse" in listing and "msd_colon" in listing


def test_prepare_totalsegmentator_merges_structures(cli, tmp_path):
    subject = tmp_path / "totalsegmentator_v201" / "s0001"
    _nifti(subject / "ct.nii.gz", _body())
    masks = {}
    masks["liver"] = np.zeros((N, N, N), np.uint8)
    masks["liver"][4:8, 4:8, 4:8] = 1
    masks["kidney_left"] = np.zeros((N, N, N), np.uint8)
    masks["kidney_left"][1:4, 1:4, 1:4] = 1
    masks["kidney_cyst_left"] = np.zeros((N, N, N), np.uint8)
    masks["kidney_cyst_left"][2, 2, 2] = 1  # exclusive of the kidney mask, as in the release
    masks["lung_upper_lobe_right"] = np.zeros((N, N, N), np.uint8)
    masks["lung_upper_lobe_right"][8:10, 8:10, 8:10] = 1
    for names in U.TOTALSEG_STRUCTURES.values():
        for name in names:
            _nifti(subject / "segmentations" / f"{name}.nii.gz", masks.get(name, np.zeros((N, N, N), np.uint8)))
    assert cli.main(["totalseg", "--root", str(tmp_path), "--quiet"]) == 0
    out = tmp_path / "universal"
    label = np.asarray(nib.load(str(out / "15_TotalSegmentator/label/s0001.nii.gz")).dataobj)
    assert label[5, 5, 5] == 6 and label[1, 1, 1] == 3 and label[2, 2, 2] == 33 and label[8, 8, 8] == 16
    lst = U.write_dataset_list(out, "ts.txt", [("15_TotalSegmentator/img/s0001.nii.gz",
                                                "15_TotalSegmentator/label/s0001.nii.gz")])
    item = U.UniversalDataset(root=out, list_file=lst)[0]
    assert item["label"][2].sum() == 27 and item["label"][31].sum() == 1  # left kidney includes its cyst
    assert item["label"][15].sum() == 8 and item["label"][5].sum() == 64
    assert not item["labelled"][14] and item["labelled"][31]  # no hepatic vessel in TotalSegmentator
    (subject / "segmentations" / "spleen.nii.gz").unlink()
    assert cli.main(["totalseg", "--root", str(tmp_path), "--force", "--quiet"]) == 1


def test_msd_sources_registered():
    for task in ("Task03_Liver", "Task06_Lung", "Task07_Pancreas", "Task08_HepaticVessel", "Task09_Spleen",
                 "Task10_Colon"):
        source = SOURCES[f"msd_{task.lower()}"]
        (remote,) = source.files
        assert source.access == "open" and source.target == "msd" and source.licence == "CC BY-SA 4.0"
        assert remote.url == f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{task}.tar"
        assert remote.md5 and len(remote.md5) == 32 and not remote.checksum_verified and remote.extract
        assert source.expect == (f"{task}/imagesTr", f"{task}/labelsTr")


def test_module_doctests():
    result = doctest.testmod(U, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10 and result.failed == 0
