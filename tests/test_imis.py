"""Tests for medmoe.papers.segmote.data (the IMIS-Bench layout SegMoTE reads) and data_scripts/build_medseg_hq.py.

Fixtures are written in the real formats: sparse ``x___<name>.(C, H, W, 1).npz`` labels, RGB PNG images and
``dataset.json``; the builder gets ISIC-style JPG/PNG pairs and AMOS-style NIfTI volumes (nibabel).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import sparse

from medmoe.papers.segmote.data import (
    IMISDataset,
    MultiDatasetIMIS,
    collate_imis,
    mask_file_name,
    parse_mask_shape,
    read_sparse_mask,
    sam_normalize,
    write_imis_layout,
    write_sparse_mask,
)

LABELS = ["liver", "spleen", "kidney_left"]


def _masks(h: int, w: int, present: tuple[int, ...]) -> np.ndarray:
    m = np.zeros((len(LABELS), h, w), np.uint8)
    for c in present:
        m[c, 2 + 3 * c : 6 + 3 * c, 1 + c : w - 1] = 1
    return m


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# name, (H, W), present channels, split
ITEMS = [
    ("a", (20, 24), (0, 1), "test"),
    ("b", (18, 30), (2,), "test"),
    ("c", (16, 16), (), "test"),          # no class present: no per_class item
    ("d", (20, 20), (0, 1, 2), "training"),
]


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    items = [{"name": n, "image": _image(h, w, i), "masks": _masks(h, w, p), "split": s}
             for i, (n, (h, w), p, s) in enumerate(ITEMS)]
    return write_imis_layout(tmp_path, "toy", items, LABELS, modality="ct")


# --------------------------------------------------------------------------------------------------
# Sparse label files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 20, 30), (13, 7, 5)])
def test_sparse_mask_roundtrip(tmp_path, shape):
    rng = np.random.default_rng(0)
    masks = (rng.random(shape) > 0.7).astype(np.uint8) * 255  # non-zero values become 1
    path = write_sparse_mask(tmp_path, "case_1", masks)
    assert path.name == f"x___case_1.({shape[0]}, {shape[1]}, {shape[2]}, 1).npz"
    assert parse_mask_shape(path) == shape
    stored = sparse.load_npz(path)
    assert stored.shape == (shape[0], shape[1] * shape[2])  # the (C, H*W) convention
    out = read_sparse_mask(path)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, masks > 0)


def test_reader_accepts_any_stored_2d_layout_like_the_reference(tmp_path):
    masks = (np.random.default_rng(1).random((2, 6, 4)) > 0.5).astype(np.uint8)
    path = tmp_path / mask_file_name("y", masks.shape)
    sparse.save_npz(path, sparse.csr_matrix(masks.reshape(2 * 6, 4)))  # toarray().reshape(shape) still works
    np.testing.assert_array_equal(read_sparse_mask(path), masks)


def test_two_d_mask_is_one_channel(tmp_path):
    path = write_sparse_mask(tmp_path, "one", np.eye(4))
    assert read_sparse_mask(path).shape == (1, 4, 4)


@pytest.mark.parametrize("name", [
    "x___a.npz", "x___a.(2, 4).npz", "x___a.(0, 4, 4, 1).npz", "x___a.(2, 4, 4, 3).npz",
    "x___a.(2, four, 4, 1).npz", "x___a.(2, 4, 4, 1).npy",
])
def test_unparsable_shape_in_name(tmp_path, name):
    good = write_sparse_mask(tmp_path, "a", np.ones((2, 4, 4)))
    bad = tmp_path / name
    bad.write_bytes(good.read_bytes())
    with pytest.raises(ValueError, match="cannot parse the mask shape"):
        read_sparse_mask(bad)


def test_stored_size_disagrees_with_name(tmp_path):
    path = tmp_path / "x___a.(2, 4, 5, 1).npz"
    sparse.save_npz(path, sparse.csr_matrix(np.ones((2, 16), np.uint8)))
    with pytest.raises(ValueError, match=r"2 x 16 matrix.*\(2, 4, 5\)"):
        read_sparse_mask(path)


def test_missing_mask_file_is_named(tmp_path):
    missing = tmp_path / "x___gone.(1, 4, 4, 1).npz"
    with pytest.raises(FileNotFoundError, match="x___gone"):
        read_sparse_mask(missing)


# --------------------------------------------------------------------------------------------------
# IMISDataset
# --------------------------------------------------------------------------------------------------


def test_dataset_json_has_the_reference_keys(layout):
    data = json.loads((layout / "dataset.json").read_text())
    assert data["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_left"}
    assert {e["image"] for e in data["test"]} == {"image/a.png", "image/b.png", "image/c.png"}
    entry = data["training"][0]
    assert set(entry) == {"image", "label", "imask"}
    assert entry["label"] == "label/x___d.(3, 20, 20, 1).npz" and entry["imask"] == "imask/x___d.npy"
    with Image.open(layout / entry["image"]) as im:
        assert im.mode == "RGB"


def test_per_class_enumerates_every_present_class(layout):
    ds = IMISDataset(root=layout, split="test", size=16)
    got = [(Path(ds[i]["path"]).stem, ds[i]["class_name"], ds[i]["class_id"]) for i in range(len(ds))]
    assert got == [("a", "liver", 1), ("a", "spleen", 2), ("b", "kidney_left", 3)]
    item = ds[0]
    assert item["dataset"] == "toy"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 16)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["mask"].dtype == torch.float32 and item["mask"].shape == (1, 16, 16)
    assert set(torch.unique(item["mask"]).tolist()) == {0.0, 1.0}
    assert ds.class_counts() == {"liver": 1, "spleen": 1, "kidney_left": 1}


def test_label_original_is_at_the_stored_resolution(layout):
    ds = IMISDataset(root=layout, split="test", size=64)
    item = ds[2]  # image b, kidney_left
    assert item["label_original"].dtype == torch.uint8 and tuple(item["label_original"].shape) == (18, 30)
    np.testing.assert_array_equal(item["label_original"].numpy(), _masks(18, 30, (2,))[2])


@pytest.mark.parametrize("size", [40, 10])
def test_nearest_resize_like_the_reference(layout, size):
    ds = IMISDataset(root=layout, split="test", size=size)
    item = ds[0]
    rgb = np.asarray(Image.open(layout / "image" / "a.png").convert("RGB"))
    expected = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.NEAREST))
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy() * 255.0, expected, atol=1e-3)
    # nearest neighbour: every output value is an input value (no blending)
    assert set(np.unique(expected)) <= set(np.unique(rgb))
    mask = np.asarray(Image.fromarray(_masks(20, 24, (0, 1))[0]).resize((size, size), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(item["mask"][0].numpy(), mask)


def test_integer_upsampling_repeats_pixels(tmp_path):
    img = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, 1:3, 1:3] = 1
    root = write_imis_layout(tmp_path, "up", [{"name": "u", "image": img, "masks": masks, "split": "test"}], ["x"])
    item = IMISDataset(root=root, split="test", size=8)[0]
    np.testing.assert_array_equal(item["mask"][0].numpy(), np.kron(masks[0], np.ones((2, 2))))
    np.testing.assert_allclose(item["image"][0].numpy() * 255, np.kron(img, np.ones((2, 2))), atol=1e-3)


def test_per_image_samples_mask_num_present_objects(layout):
    ds = IMISDataset(root=layout, split="test", size=16, mode="per_image", mask_num=2)
    assert len(ds) == 2  # image c has no class
    torch.manual_seed(0)
    first = ds[0]
    assert first["mask"].shape == (2, 1, 16, 16) and first["label_original"].shape == (2, 20, 24)
    assert sorted(first["class_name"]) == ["liver", "spleen"]  # both present ones, without replacement
    second = ds[1]  # one present class: drawn with replacement
    assert second["class_name"] == ["kidney_left", "kidney_left"]
    assert second["class_id"].tolist() == [3, 3]
    torch.manual_seed(0)
    assert ds[0]["class_name"] == first["class_name"]  # torch's seed governs the draw


def test_classes_filter_and_unknown_class(layout):
    ds = IMISDataset(root=layout, split="test", size=8, classes=["spleen", "kidney_left"])
    assert [ds[i]["class_name"] for i in range(len(ds))] == ["spleen", "kidney_left"]
    with pytest.raises(ValueError, match="unknown classes \\['pancreas'\\]"):
        IMISDataset(root=layout, split="test", classes=["pancreas"])


def test_imask_is_returned_on_request(layout):
    item = IMISDataset(root=layout, split="training", size=12, with_imask=True)[0]
    assert item["imask"].shape == (12, 12) and item["imask"].dtype == torch.int64


def test_missing_dataset_json_and_unknown_split(tmp_path, layout):
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        IMISDataset(root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split must be one of"):
        IMISDataset(root=layout, split="val")


@pytest.mark.parametrize("kind", ["label", "image"])
def test_missing_file_of_the_split_is_named(layout, kind):
    entry = json.loads((layout / "dataset.json").read_text())["test"][1]
    (layout / entry[kind]).unlink()
    with pytest.raises(FileNotFoundError, match=Path(entry[kind]).name.replace("(", r"\(").replace(")", r"\)")):
        IMISDataset(root=layout, split="test")


def test_mask_image_shape_disagreement_names_both(layout):
    Image.fromarray(_image(21, 24, 9)).save(layout / "image" / "a.png")
    with pytest.raises(ValueError) as info:
        IMISDataset(root=layout, split="test")
    message = str(info.value)
    assert "(20, 24)" in message and "(21, 24)" in message
    assert "x___a.(3, 20, 24, 1).npz" in message and "a.png" in message


def test_multi_dataset_keeps_the_code(tmp_path):
    for code, present in (("ct_set", (0,)), ("mr_set", (1, 2))):
        write_imis_layout(tmp_path, code, [{"name": "z", "image": _image(12, 12, 0),
                                            "masks": _masks(12, 12, present), "split": "test"}], LABELS)
    ds = MultiDatasetIMIS(root=tmp_path, split="test", size=8)
    assert ds.counts() == {"ct_set": 1, "mr_set": 2}
    assert [ds[i]["dataset"] for i in range(len(ds))] == ["ct_set", "mr_set", "mr_set"]
    assert [ds.dataset_code(i) for i in range(len(ds))] == ["ct_set", "mr_set", "mr_set"]
    only = MultiDatasetIMIS(root=tmp_path, split="test", size=8, classes=["liver"])
    assert only.codes == ["ct_set", "mr_set"] and len(only) == 1
    with pytest.raises(ValueError, match="in none of"):
        MultiDatasetIMIS(root=tmp_path, split="test", classes=["heart"])


@pytest.mark.parametrize("mode", ["per_class", "per_image"])
def test_collate(layout, mode):
    ds = IMISDataset(root=layout, split="test", size=8, mode=mode)
    batch = collate_imis([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 8, 8)
    n = 2 if mode == "per_class" else 4
    assert batch["mask"].shape == (n, 1, 8, 8) and batch["class_id"].shape == (n,) and len(batch["class_name"]) == n
    assert batch["dataset"] == ["toy", "toy"] and len(batch["label_original"]) == 2


def test_sam_normalize():
    x = torch.ones(3, 2, 2)
    y = sam_normalize(x)
    assert torch.allclose(y[0], torch.full((2, 2), (255 - 123.675) / 58.395))


# --------------------------------------------------------------------------------------------------
# data_scripts/build_medseg_hq.py on tiny inputs in the original formats
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builder():
    return importlib.import_module("medmoe.papers.segmote.prepare")  # behind data_scripts/build_medseg_hq.py


def _fake_isic(folder: Path, n: int = 6, *, foreground: int = 255, mask_size: tuple[int, int] = (30, 40)) -> None:
    images, gts = folder / "ISIC2018_Task1-2_Training_Input", folder / "ISIC2018_Task1_Training_GroundTruth"
    images.mkdir(parents=True)
    gts.mkdir(parents=True)
    for i in range(n):
        name = f"ISIC_{i:07d}"
        Image.fromarray(_image(30, 40, i)).save(images / f"{name}.jpg", quality=95)
        mask = np.zeros(mask_size, np.uint8)
        mask[5 + i : 15 + i, 8:30] = foreground
        Image.fromarray(mask).save(gts / f"{name}_segmentation.png")
    (images / "ATTRIBUTION.txt").write_text("licence notes")


AMOS_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 500, 501]


def _fake_amos(folder: Path) -> None:
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])  # LPS-like, so the builder must reorient
    for sub in ("imagesTr", "labelsTr"):
        (folder / "amos22" / sub).mkdir(parents=True)
    for case in AMOS_IDS:
        label = np.zeros((24, 20, 12), np.int16)
        label[4:12, 3:9, 3:8] = 6    # liver on slices 3..7
        label[14:20, 10:16, 5:7] = 1  # spleen on slices 5..6
        hu = np.where(label > 0, 200.0, -1000.0).astype(np.float32)
        name = f"amos_{case:04d}.nii.gz"
        nib.save(nib.Nifti1Image(hu, affine), folder / "amos22" / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), folder / "amos22" / "labelsTr" / name)


def _patient(name: str) -> str:
    return "_".join(name.split("_")[:2])


def test_build_isic_and_amos(builder, tmp_path, capsys):
    root = tmp_path / "data"
    _fake_isic(root / "isic2018_task1")
    _fake_amos(root / "amos22")
    args = ["isic2018", "amos_ct", "amos_mri", "--root", str(root), "--slice-step", "1", "--seed", "3"]
    assert builder.main(args) == 0
    out = root / "medseg_hq"

    isic = {s: IMISDataset(root=out / "isic2018_task1", split=s, size=32) for s in ("training", "test")}
    assert (len(isic["training"]), len(isic["test"])) == (5, 1)  # 6 images, 9:1 -> 1 test image
    item = isic["test"][0]
    assert item["class_name"] == "skin_lesion" and item["label_original"].shape == (30, 40)

    data = json.loads((out / "amos_ct" / "dataset.json").read_text())
    assert list(data["labels"].values())[:3] == ["background", "spleen", "kidney_right"]
    names = {s: [Path(e["image"]).stem for e in data[s]] for s in ("training", "test")}
    patients = {s: {_patient(n) for n in names[s]} for s in names}
    assert patients["training"].isdisjoint(patients["test"])  # the split is by patient
    assert patients == {s: set(data["patients"][s]) for s in names}
    assert len(patients["test"]) == 1 and len(patients["training"]) == 9
    assert all(int(p.split("_")[1]) < 500 for p in patients["training"] | patients["test"])
    assert len(names["test"]) == 5  # every foreground slice (3..7) of the test patient

    test = IMISDataset(root=out / "amos_ct", split="test", size=16)
    assert sorted({test[i]["class_name"] for i in range(len(test))}) == ["liver", "spleen"]
    assert len(test) == 5 + 2  # liver on 5 slices, spleen on 2
    # image and mask stay aligned through the reorientation: the organ is bright (200 HU), the rest air
    for e in data["test"]:
        grey = np.asarray(Image.open(out / "amos_ct" / e["image"]).convert("L"))
        fg = read_sparse_mask(out / "amos_ct" / e["label"]).any(axis=0)
        assert grey[fg].min() > 200 and grey[~fg].max() == 0

    mri = json.loads((out / "amos_mri" / "dataset.json").read_text())
    mri_patients = set(mri["patients"]["training"]) | set(mri["patients"]["test"])
    assert mri_patients == {"amos_0500", "amos_0501"} and len(mri["patients"]["test"]) == 1

    capsys.readouterr()
    assert builder.main(args) == 0  # same inputs and options: nothing rebuilt
    assert capsys.readouterr().out.count("up to date") == 3


def _fake_isles(folder: Path, n: int = 3) -> None:
    """A BIDS tree as ISLES-2022.zip unpacks: DWI (and ADC, which must be ignored) per case plus a lesion mask."""
    for i in range(1, n + 1):
        sub = f"sub-strokecase{i:04d}"
        dwi = np.full((8, 8, 6), 10.0, dtype=np.float32)
        mask = np.zeros((8, 8, 6), dtype=np.uint8)
        mask[2:5, 3:6, 1:4] = 1
        dwi[mask > 0] = 500.0  # the lesion is bright on DWI
        raw = folder / "ISLES-2022" / "rawdata" / sub / "ses-0001"
        for kind, data in (("dwi", dwi), ("adc", np.zeros_like(dwi))):
            (raw / "dwi").mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.eye(4)), raw / "dwi" / f"{sub}_ses-0001_{kind}.nii.gz")
        der = folder / "ISLES-2022" / "derivatives" / sub / "ses-0001"
        der.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(mask, np.eye(4)), der / f"{sub}_ses-0001_msk.nii.gz")


def test_build_isles22_out_of_domain(builder, tmp_path):
    root = tmp_path / "data"
    _fake_isles(root / "isles22")
    assert builder.main(["isles22", "--root", str(root), "--slice-step", "1"]) == 0
    out = root / "medseg_hq" / "isles22"
    data = json.loads((out / "dataset.json").read_text())
    assert list(data["labels"].values()) == ["background", "stroke_lesion"]
    assert data["training"] == [] and len(data["test"]) == 3 * 3  # out-of-domain: every lesion slice is test
    ds = IMISDataset(root=out, split="test", size=8)
    assert {ds[i]["class_name"] for i in range(len(ds))} == {"stroke_lesion"}
    for e in data["test"]:  # the image is the DWI (lesion bright), not the empty ADC
        grey = np.asarray(Image.open(out / e["image"]).convert("L"))
        fg = read_sparse_mask(out / e["label"])[0] > 0
        assert grey[fg].min() > grey[~fg].max()


def test_build_isles22_without_dwi_names_the_missing_file(builder, tmp_path, capsys):
    root = tmp_path / "data"
    _fake_isles(root / "isles22", n=1)
    for f in (root / "isles22").rglob("*_dwi.nii.gz"):
        f.unlink()
    assert builder.main(["isles22", "--root", str(root)]) == 1
    assert "sub-strokecase0001" in capsys.readouterr().err


def test_split_patients_is_seeded_and_nine_to_one(builder):
    patients = [f"p{i}" for i in range(40)]
    a = builder.split_patients(patients, test_fraction=0.1, seed=1)
    assert len(a) == 4 and a == builder.split_patients(reversed(patients), test_fraction=0.1, seed=1)
    assert a != builder.split_patients(patients, test_fraction=0.1, seed=2)
    assert len(builder.split_patients(["x", "y"], test_fraction=0.1, seed=0)) == 1


def test_build_missing_input_explains_the_download(builder, tmp_path, capsys):
    assert builder.main(["amos_ct", "--root", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert str(tmp_path / "amos22") in err and "fetch.py amos22" in err and "zenodo.org/records/7155725" in err


def test_build_list_and_usage(builder, capsys):
    assert builder.main(["--list", "--root", "data"]) == 0
    listing = capsys.readouterr().out
    for key in ("isic2018", "sz_cxr", "chaos_ct", "amos_mri", "segthor", "totalseg_mri", "isles22"):
        assert key in listing
    assert "token access" in listing and "manual access" in listing and "open access" in listing
    assert builder.main(["not_a_source"]) == 2


def test_dicom_source_needs_pydicom(builder, tmp_path, capsys):
    try:
        import pydicom  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pydicom is installed")
    assert builder.main(["chaos_ct", "--root", str(tmp_path)]) == 1
    assert "pip install pydicom" in capsys.readouterr().err


def test_axial_slices_are_shown_radiologically(builder):
    volume = np.zeros((5, 4, 2))
    volume[4, 3, 1] = 1  # most right (+x), most anterior (+y) voxel of a RAS volume
    image = builder.axial(volume, 1)
    assert image.shape == (4, 5) and image[0, 0] == 1  # anterior up, patient's right on the image's left


# --------------------------------------------------------------------------------------------------
# Bad inputs a new user brings (defects 18 and 19): 0/1 masks, blank masks, image and mask of different sizes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreground", [1, 255])
def test_build_reads_masks_stored_as_0_1_and_as_0_255_alike(builder, tmp_path, foreground):
    """Defect 18: a 0/1 mask PNG (a common convention) was thresholded at 127 and written as an empty mask."""
    root = tmp_path / "data"
    _fake_isic(root / "isic2018_task1", foreground=foreground)
    assert builder.main(["isic2018", "--root", str(root), "--quiet"]) == 0
    ds = IMISDataset(root=root / "medseg_hq" / "isic2018_task1", split="training", size=32)
    assert len(ds) == 5 and int(ds[0]["label_original"].sum()) == 10 * 22


def test_build_refuses_a_mask_of_neither_convention(builder, tmp_path, capsys):
    root = tmp_path / "data"
    _fake_isic(root / "isic2018_task1", foreground=60)
    assert builder.main(["isic2018", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "ISIC_0000000_segmentation.png" in err and "neither a 0/1 nor a 0/255" in err


def test_build_refuses_a_source_whose_masks_are_all_empty(builder, tmp_path, capsys):
    root = tmp_path / "data"
    _fake_isic(root / "isic2018_task1", foreground=0)
    assert builder.main(["isic2018", "--root", str(root)]) == 1
    assert "every mask of the training split (5 images) is empty" in capsys.readouterr().err
    assert not (root / "medseg_hq" / "isic2018_task1").exists()  # nothing half-written


def test_build_names_both_files_and_shapes_when_image_and_mask_differ(builder, tmp_path, capsys):
    """Defect 19 (the builder already raised; kept as a regression test)."""
    root = tmp_path / "data"
    _fake_isic(root / "isic2018_task1", n=2, mask_size=(32, 40))
    assert builder.main(["isic2018", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "ISIC_0000000.jpg" in err and "ISIC_0000000_segmentation.png" in err
    assert "(30, 40)" in err and "(32, 40)" in err


def test_loader_refuses_a_split_whose_masks_are_all_empty(tmp_path):
    """Defect 18 at the loader: a split of blank targets raises instead of giving a data set with no items."""
    items = [{"name": f"e{i}", "image": _image(12, 12, i), "masks": np.zeros((3, 12, 12), np.uint8), "split": "test"}
             for i in range(2)]
    items.append({"name": "t0", "image": _image(12, 12, 5), "masks": _masks(12, 12, (0,)), "split": "training"})
    root = write_imis_layout(tmp_path, "blank", items, LABELS)
    with pytest.raises(ValueError, match=r"every mask of the 'test' split .* is empty"):
        IMISDataset(root=root, split="test")
    assert len(IMISDataset(root=root, split="training")) == 1  # the other split is fine
    # a stored 0/255 matrix (another writer's convention) reads as foreground, like the reference's .toarray() != 0
    path = next((root / "label").glob("x___t0.*"))
    sparse.save_npz(path, sparse.csr_matrix(read_sparse_mask(path).reshape(3, -1).astype(np.uint8) * 255))
    assert read_sparse_mask(path).max() == 1 and len(IMISDataset(root=root, split="training")) == 1
