"""Tests for medmoe.papers.medmoe.data and medmoe.papers.medmoe.evalsets (Chapter 2, MedMoE) on fixtures in the real
file formats.

The fixtures copy the real layouts: UniMed caption CSVs (``filename`` / ``captions`` as Python list literals),
UniMed-CLIP's evaluation folders (RadImageNet's ``img_dir,label`` / ``filename,label`` /
``filename,acl_label`` tables, the CheXpert 5x200 table with its unnamed index and multi-line reports, the
positional RSNA table) and MedIMeta's ``organs_<view>/annotations.csv`` + ``images/000000.tiff``.
"""

from __future__ import annotations

import doctest
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import medmoe.data as data_pkg
from medmoe.data.sources import SOURCES
from medmoe.papers.medmoe import data as unimed
from medmoe.papers.medmoe import evalsets
from medmoe.papers.medmoe.data import (
    UNIMED_MODALITIES,
    ReportDataset,
    UniMedCaptions,
    load_image_rgb,
    modality_from_path,
    parse_list_cell,
    write_unimed_fixture,
)
from medmoe.papers.medmoe.evalsets import (
    CHEXPERT_5X200_COLUMNS,
    CLASS_PROMPTS,
    EVAL_SET_CLASSES,
    EVAL_SETS,
    ORGAN_CLASSES,
    ClassificationSet,
    build_eval_set,
    subsample_labels,
)

CHEXPERT_ALL = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]


def _grey(path, size=(40, 30), value=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8) if value is None else \
        np.full((size[1], size[0]), value, dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


# --------------------------------------------------------------------------------------------------
# UniMed captions
# --------------------------------------------------------------------------------------------------

RADIMAGENET_ROWS = [
    ("radiology_ai/CT/lung/normal/lung-normal000032.png", ["Axial CT of the chest.", "Normal lung parenchyma"]),
    ("radiology_ai/MR/knee/acl/knee-acl000001.png", ["Sagittal knee MRI with an ACL tear"]),
    ("radiology_ai/US/liver/usn053022.png", ["Liver ultrasound", "", "Homogeneous liver echotexture",
                                             "patient's liver, third caption"]),
]


@pytest.fixture()
def radimagenet_csv(tmp_path):
    return write_unimed_fixture(tmp_path / "radimagenet", RADIMAGENET_ROWS)


def test_real_caption_format_is_written(radimagenet_csv):
    table = pd.read_csv(radimagenet_csv)
    assert list(table.columns) == ["filename", "labels", "captions"]
    assert table["filename"][0] == "['radiology_ai/CT/lung/normal/lung-normal000032.png']"
    assert parse_list_cell(table["captions"][2])[3] == "patient's liver, third caption"


def test_one_sample_per_caption(radimagenet_csv):
    ds = UniMedCaptions(csv_files=[radimagenet_csv], image_root=radimagenet_csv.parent, size=32)
    # empty caption strings are dropped: 2 + 1 + 3
    assert len(ds) == 6
    assert ds.texts == ["Axial CT of the chest.", "Normal lung parenchyma", "Sagittal knee MRI with an ACL tear",
                        "Liver ultrasound", "Homogeneous liver echotexture", "patient's liver, third caption"]
    assert ds.modality_labels == [1, 1, 2, 3, 3, 3]
    assert ds.paths[0] == ds.paths[1] != ds.paths[2]
    assert "6 captions of 3 images" in repr(ds)
    item = ds[4]
    assert item["text"] == "Homogeneous liver echotexture" and item["modality"] == 3
    assert item["path"] == str(radimagenet_csv.parent / RADIMAGENET_ROWS[2][0])


@pytest.mark.parametrize("size", [16, 32, 57])
def test_unimed_item_shape_dtype_range(radimagenet_csv, size):
    ds = UniMedCaptions(csv_files=[radimagenet_csv], image_root=radimagenet_csv.parent, size=size)
    image = ds[0]["image"]
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.max()) > 0.1
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey replicated


def test_several_tables_roots_and_modality_specs(tmp_path, radimagenet_csv):
    chexpert = write_unimed_fixture(
        tmp_path / "data", [("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", ["No acute findings"])],
        name="chexpert_with_captions_only_frontal_view.csv",
    )
    ds = UniMedCaptions(
        csv_files=[radimagenet_csv, chexpert], image_root=[radimagenet_csv.parent, chexpert.parent],
        modality=["from_path", 0], size=16,
    )
    assert ds.modality_labels == [1, 1, 2, 3, 3, 3, 0]
    assert ds[6]["image"].shape == (3, 16, 16) and ds[6]["modality"] == 0
    # a modality column with ints or names
    table = pd.read_csv(chexpert)
    table["modality"] = ["x-ray"]
    table.to_csv(chexpert, index=False)
    assert UniMedCaptions(csv_files=[chexpert], image_root=chexpert.parent, modality="modality").modality_labels == [0]
    table["modality"] = ["4"]
    table.to_csv(chexpert, index=False)
    assert UNIMED_MODALITIES[UniMedCaptions(csv_files=[chexpert], image_root=chexpert.parent,
                                            modality="modality").modality_labels[0]] == "pathology"


def test_max_items_counts_captions(radimagenet_csv):
    ds = UniMedCaptions(csv_files=[radimagenet_csv, radimagenet_csv], image_root=radimagenet_csv.parent, max_items=3)
    assert len(ds) == 3 and ds.modality_labels == [1, 1, 2]
    assert len(UniMedCaptions(csv_files=[radimagenet_csv] * 2, image_root=radimagenet_csv.parent, max_items=8)) == 8


@pytest.mark.parametrize(
    "path, label",
    [
        ("radiology_ai/CT/abd/x.png", 1),
        ("radiology_ai/MR/brain/x.png", 2),
        ("radiology_ai/US/thyroid/x.png", 3),
        ("radiology_ai/UT/thyroid/x.png", 3),
        ("C:\\data\\radiology_ai\\MR\\knee\\x.png", 2),
    ],
)
def test_modality_from_path(path, label):
    assert modality_from_path(path) == label


@pytest.mark.parametrize("path", ["chest/ct_scan.png", "radiology_ai/ct/x.png", "CheXpert-v1.0-small/train/a.jpg"])
def test_modality_from_path_unknown_names_the_path(path):
    with pytest.raises(ValueError, match="cannot tell the modality") as info:
        modality_from_path(path)
    assert repr(path) in str(info.value)


def test_unimed_bad_inputs(tmp_path, radimagenet_csv):
    root = radimagenet_csv.parent
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        UniMedCaptions(csv_files=[missing], image_root=root)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['caption'\]") as info:
        UniMedCaptions(csv_files=[radimagenet_csv], image_root=root, caption_columns="caption")
    assert str(radimagenet_csv) in str(info.value) and "'captions'" in str(info.value)
    with pytest.raises(ValueError, match="missing column"):
        UniMedCaptions(csv_files=[radimagenet_csv], image_root=root, modality="modality_label")
    with pytest.raises(ValueError, match="0..5"):
        UniMedCaptions(csv_files=[radimagenet_csv], image_root=root, modality=7)
    with pytest.raises(ValueError, match="one per file"):
        UniMedCaptions(csv_files=[radimagenet_csv], image_root=[root, root])
    with pytest.raises(ValueError, match="max_items"):
        UniMedCaptions(csv_files=[radimagenet_csv], image_root=root, max_items=0)
    with pytest.raises(ValueError, match="size"):
        UniMedCaptions(csv_files=[radimagenet_csv], image_root=root, size=4)
    # a path with no modality folder: the file and the row are named
    odd = write_unimed_fixture(tmp_path / "odd", [("images/0001.png", ["a caption"])], write_images=False)
    with pytest.raises(ValueError, match=r"row 0 .*cannot tell the modality"):
        UniMedCaptions(csv_files=[odd], image_root=odd.parent)
    # a row without any caption
    empty = write_unimed_fixture(tmp_path / "empty", [("radiology_ai/CT/a.png", ["", "  "])], write_images=False)
    with pytest.raises(ValueError, match=r"row 0 .*no caption"):
        UniMedCaptions(csv_files=[empty], image_root=empty.parent)
    # unknown modality value in a column
    table = pd.read_csv(odd)
    table["modality"] = ["endoscopy"]
    table.to_csv(odd, index=False)
    with pytest.raises(ValueError, match="unknown modality value 'endoscopy'"):
        UniMedCaptions(csv_files=[odd], image_root=odd.parent, modality="modality")
    # images are checked lazily: construction works, the item names the missing file
    ds = UniMedCaptions(csv_files=[empty.parent / empty.name], image_root=tmp_path, modality=1,
                        caption_columns=["captions", "labels"])
    with pytest.raises(FileNotFoundError, match="a.png"):
        ds[0]
    with pytest.raises(IndexError):
        ds[5]


def test_parse_list_cell_errors():
    assert parse_list_cell(float("nan")) == []
    with pytest.raises(ValueError, match="malformed list literal"):
        parse_list_cell("['unterminated]")


# --------------------------------------------------------------------------------------------------
# Image reading
# --------------------------------------------------------------------------------------------------


def test_load_image_rgb_modes(tmp_path):
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 13 % 4096).astype(np.uint16)
    sixteen = tmp_path / "cxr16.png"
    Image.fromarray(ramp).save(sixteen)
    with Image.open(sixteen) as im:
        assert im.mode.startswith("I")
    image = load_image_rgb(sixteen, size=32)
    assert image.shape == (3, 32, 32) and float(image.min()) >= 0 and float(image.max()) <= 1
    assert float(image.max()) > 0.5  # min-max scaled, not divided by 65535
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (20, 10), (255, 0, 0, 128)).save(rgba)
    image = load_image_rgb(rgba, size=8)
    assert torch.allclose(image[:, 4, 4], torch.tensor([1.0, 0.0, 0.0]))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode image file .*garbage.png"):
        load_image_rgb(garbage, size=8)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image_rgb(tmp_path / "missing.png", size=8)


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    dcm = tmp_path / "0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm"
    dcm.write_bytes(b"\0" * 200)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(ImportError, match="pip install pydicom") as info:
        load_image_rgb(dcm, size=16)
    assert dcm.name in str(info.value)


def test_dicom_with_pydicom(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "rsna.dcm"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    pixels = (np.arange(40 * 30).reshape(30, 40) % 200).astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom 3
    except TypeError:
        ds.save_as(path, write_like_original=False)  # pydicom 2
    image = load_image_rgb(path, size=16)
    assert image.shape == (3, 16, 16) and float(image.max()) <= 1.0 and float(image.max()) > 0.5
    ds.PhotometricInterpretation = "MONOCHROME1"  # inverted grey scale
    ds.save_as(path)
    assert torch.allclose(load_image_rgb(path, size=16), 1.0 - image, atol=1e-5)
    assert pydicom.dcmread(path).Rows == 30


# --------------------------------------------------------------------------------------------------
# Evaluation sets: one root in UniMed-CLIP's unpacked layout
# --------------------------------------------------------------------------------------------------

# name -> expected label ids, in table order
EXPECTED = {
    "chexpert_5x200": [0, 1, 2, 3, 4, 4],
    "rsna_pneumonia": [0, 1, 1, 0],
    "thyroid_us": [1, 0, 0, 1],
    "breast_us": [0, 0, 1],
    "meniscus_mri": [0, 1, 1],
    "acl_mri": [1, 1, 0],
    "medimeta_organs_axial": [0, 3, 10],
    "medimeta_organs_coronal": [0, 3, 10],
    "medimeta_organs_sagittal": [0, 3, 10],
}


def _write_chexpert(root):
    folder = root / "chexpert"
    rows = []
    order = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pleural Effusion"]
    for i, finding in enumerate(order):
        imgpath = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg"
        _grey(folder / imgpath, value=40 * i + 10)
        row = {"imgpath": imgpath, "Sex": "Male", "Age": 50 + i, "Frontal/Lateral": "Frontal", "AP/PA": "AP"}
        row.update({c: 0.0 for c in CHEXPERT_ALL})
        row[finding] = 1.0
        if i == 5:
            row["Edema"] = -1.0  # uncertain labels are not positives
        row["Report Impression"] = f"\n1. finding number {i}.\n2. no pneumothorax, \"quoted\".\n"
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "chexpert-5x200.csv")  # unnamed index column, as the real file


def _write_rsna(root):
    folder = root / "rsna_custom_test_set"
    names = ["00436515-870c-4b36-a041-de91049b9ab4.png", "00c0b293-48e7-4e16-ac76-9269ba535a62.png",
             "00f08de1-517e-4652-a04f-d1dc9ee48593.jpg", "0100515c-5204-4f31-98e0-f35e4b00004a.png"]
    for i, name in enumerate(names):
        _grey(folder / "images" / name, seed=i)
    frame = pd.DataFrame({"patientId": [n.split(".")[0] for n in names],
                          "path": [f"images/{n}" for n in names], "Target": [0, 1, 1, 0]})
    frame.to_csv(folder / "RSNA_pneumonia_balanced_testfile.csv", index=False)


def _write_radimagenet_table(folder, filename, columns, rows):
    for path, _ in rows:
        _grey(folder / path, seed=len(path))
    pd.DataFrame(rows, columns=columns).to_csv(folder / filename, index=False)


def _write_medimeta(root, view):
    folder = root / f"organs_{view}"
    (folder / "images").mkdir(parents=True)
    labels = [0, 5, 3, 7, 10]
    splits = ["test", "train", "test", "val", "test"]
    rows = []
    for i, (label, split) in enumerate(zip(labels, splits)):
        Image.fromarray(np.full((224, 224), 20 * i + 5, dtype=np.uint8)).save(folder / "images" / f"{i:06d}.tiff")
        rows.append({"filepath": f"images/{i:06d}.tiff", "split": split, "tasks/organ label": label,
                     "original_filepath": f"volume-{i}.nii", "original_split": "train",
                     "organ label": ORGAN_CLASSES[label]})
    pd.DataFrame(rows).to_csv(folder / "annotations.csv", index=False)


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("unimed_clip_eval")
    _write_chexpert(root)
    _write_rsna(root)
    _write_radimagenet_table(root / "thyroid_us", "thyroid_test_fold1.csv", ["img_dir", "label"],
                             [("images/314_1.jpg", "malignant"), ("images/130_1.jpg", "benign"),
                              ("images/130_2.jpg", "benign"), ("images/123_1.jpg", "malignant")])
    _write_radimagenet_table(root / "breast_us", "breast_test_fold1.csv", ["filename", "label"],
                             [("images/normal (99).png", "benign"), ("images/benign (2).png", "benign"),
                              ("images/malignant (156).png", "malignant")])
    _write_radimagenet_table(root / "meniscal_mri", "meniscus_test_fold1.csv", ["img_dir", "label"],
                             [("images/0012_sagittal_13.000000.png", "n"), ("images/0675_sagittal_19.000000.png", "p"),
                              ("images/1146_sagittal_16.000000.png", "p")])
    _write_radimagenet_table(root / "acl_mri", "test_fold1.csv", ["filename", "acl_label"],
                             [("images/1054_sagittal_19.000000.png", "yes"),
                              ("images/0781_sagittal_15.000000.png", "yes"),
                              ("images/0228_sagittal_9.000000.png", "no")])
    for view in ("axial", "coronal", "sagittal"):
        _write_medimeta(root, view)
    return root


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_eval_set_labels_and_classes(eval_root, name):
    ds = build_eval_set(name, root=eval_root, size=16)
    assert isinstance(ds, ClassificationSet) and ds.name == name
    assert ds.classes == EVAL_SET_CLASSES[name]
    assert ds.labels == EXPECTED[name]
    assert len(ds) == len(ds.paths) == len(EXPECTED[name])
    assert sum(ds.class_counts()) == len(ds)


def test_eval_set_class_names(eval_root):
    chexpert = build_eval_set("chexpert_5x200", root=eval_root)
    assert [chexpert.classes[v] for v in chexpert.labels[:5]] == [c.lower() for c in CHEXPERT_5X200_COLUMNS]
    thyroid = build_eval_set("thyroid_us", root=eval_root)
    assert thyroid.classes[thyroid.labels[0]] == "malignant" and thyroid.paths[0].endswith("314_1.jpg")
    organs = build_eval_set("medimeta_organs_sagittal", root=eval_root)
    assert [organs.classes[v] for v in organs.labels] == ["heart", "liver", "right femoral head"]
    assert build_eval_set("medimeta_organs_axial", root=eval_root, split="train").labels == [5]
    assert build_eval_set("medimeta_organs_axial", root=eval_root, split="val").labels == [7]


SHAPE_CASES = [(name, size) for name in ("chexpert_5x200", "rsna_pneumonia", "breast_us", "acl_mri",
                                         "medimeta_organs_coronal") for size in (16, 33)]


@pytest.mark.parametrize("name, size", SHAPE_CASES)
def test_eval_item_shape_dtype_range(eval_root, name, size):
    ds = build_eval_set(name, root=eval_root, size=size)
    for index in (0, len(ds) - 1):
        item = ds[index]
        assert item["image"].shape == (3, size, size) and item["image"].dtype == torch.float32
        assert 0.0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1.0
        assert item["label"] == ds.labels[index] and item["path"] == ds.paths[index]


def test_medimeta_images_are_the_tiffs(eval_root):
    ds = build_eval_set("medimeta_organs_axial", root=eval_root, size=224)
    value = float(ds[1]["image"][0, 100, 100])  # row 2 of annotations.csv: grey 45
    assert math.isclose(value, 45 / 255, abs_tol=1e-6)


def test_radimagenet_layout_folds_and_named_columns(tmp_path):
    # RadImageNet's own layout: tables under dataframe/, images relative to the set folder
    folder = tmp_path / "thyroid"
    rows = [("images/1_1.jpg", "benign"), ("images/2_1.jpg", "malignant")]
    _write_radimagenet_table(folder, "thyroid_train_fold2.csv", ["img_dir", "label"], rows)
    (folder / "dataframe").mkdir()
    (folder / "thyroid_train_fold2.csv").rename(folder / "dataframe" / "thyroid_train_fold2.csv")
    ds = evalsets.thyroid_us(root=folder, split="train", fold=2, size=16, path_column="img_dir", label_column="label")
    assert ds.labels == [0, 1] and ds.paths[1] == str(folder / "images/2_1.jpg")
    assert ds[1]["image"].shape == (3, 16, 16)
    assert evalsets.thyroid_us(root=folder, split="thyroid_train_fold2.csv").labels == [0, 1]


def test_eval_bad_inputs(eval_root, tmp_path):
    with pytest.raises(ValueError, match="unknown evaluation set 'chexpert'; known sets: acl_mri, breast_us"):
        build_eval_set("chexpert", root=eval_root)
    with pytest.raises(FileNotFoundError, match=r"thyroid_val_fold1.csv.*looked at"):
        build_eval_set("thyroid_us", root=eval_root, split="val")
    with pytest.raises(ValueError, match="split must be one of"):
        build_eval_set("rsna_pneumonia", root=eval_root, split="train")
    with pytest.raises(ValueError, match="split must be one of"):
        build_eval_set("medimeta_organs_axial", root=eval_root, split="validation")
    with pytest.raises(ValueError, match="fold"):
        evalsets.acl_mri(root=eval_root, fold=0)
    with pytest.raises(ValueError, match=r"missing label column 'diagnosis'; found columns \['img_dir', 'label'\]"):
        evalsets.thyroid_us(root=eval_root, label_column="diagnosis")
    with pytest.raises(ValueError, match="no column at position 5"):
        evalsets.rsna_pneumonia(root=eval_root, label_column=5)


def test_eval_unknown_label_and_missing_files(tmp_path):
    _write_radimagenet_table(tmp_path / "meniscal_mri", "meniscus_test_fold1.csv", ["img_dir", "label"],
                             [("images/a.png", "n"), ("images/b.png", "maybe")])
    with pytest.raises(ValueError, match=r"row 1 .*unknown label 'maybe' in column 1; expected one of \['n', 'p'\]"):
        evalsets.meniscus_mri(root=tmp_path)
    # missing image: only when the item is read
    pd.DataFrame({"filename": ["images/gone.png"], "acl_label": ["no"]}).to_csv(
        (tmp_path / "acl_mri").mkdir() or tmp_path / "acl_mri" / "test_fold1.csv", index=False)
    ds = evalsets.acl_mri(root=tmp_path)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        ds[0]
    # CheXpert row with none of the five classes positive
    folder = tmp_path / "chexpert"
    folder.mkdir()
    row = {"imgpath": "CheXpert-v1.0-small/train/p/s/v.jpg", **{c: 0.0 for c in CHEXPERT_ALL}}
    pd.DataFrame([row]).to_csv(folder / "chexpert-5x200.csv")
    with pytest.raises(ValueError, match="row 0 .*none of"):
        evalsets.chexpert_5x200(root=tmp_path)
    # MedIMeta: a split with no rows
    _write_medimeta(tmp_path, "axial")
    table = pd.read_csv(tmp_path / "organs_axial" / "annotations.csv")
    table["split"] = "train"
    table.to_csv(tmp_path / "organs_axial" / "annotations.csv", index=False)
    with pytest.raises(ValueError, match=r"no rows with split == 'test'; found splits \['train'\]"):
        evalsets.medimeta_organs_axial(root=tmp_path)


def test_classification_set_checks(tmp_path):
    with pytest.raises(ValueError, match="outside 0..1"):
        ClassificationSet(name="x", classes=("a", "b"), paths=["p"], labels=[2])
    with pytest.raises(ValueError, match="1 paths but 2 labels"):
        ClassificationSet(name="x", classes=("a", "b"), paths=["p"], labels=[0, 1])
    with pytest.raises(ValueError, match="no samples"):
        ClassificationSet(name="x", classes=("a",), paths=[], labels=[])


# --------------------------------------------------------------------------------------------------
# Prompts, registry, subsampling
# --------------------------------------------------------------------------------------------------


def test_prompts_match_the_classes():
    assert set(EVAL_SETS) == set(EVAL_SET_CLASSES) == set(CLASS_PROMPTS)
    for name, prompts in CLASS_PROMPTS.items():
        assert tuple(prompts) == EVAL_SET_CLASSES[name], name
        for sentences in prompts.values():
            assert len(sentences) >= 3 and all(isinstance(s, str) and s.strip() for s in sentences)
            assert len(set(sentences)) == len(sentences)
    assert len(ORGAN_CLASSES) == 11


SUBSAMPLE_LABELS = [0] * 200 + [1] * 37 + [2] * 3 + [3] * 1


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_subsample_counts_and_classes(fraction):
    chosen = subsample_labels(SUBSAMPLE_LABELS, fraction, seed=3)
    assert chosen == sorted(set(chosen))
    counts = np.bincount(np.asarray(SUBSAMPLE_LABELS)[chosen], minlength=4)
    expected = [max(1, math.floor(fraction * n + 0.5)) for n in (200, 37, 3, 1)]
    assert counts.tolist() == expected
    assert all(c >= 1 for c in counts)


def test_subsample_determinism_and_nesting():
    a = subsample_labels(SUBSAMPLE_LABELS, 0.1, seed=7)
    assert a == subsample_labels(SUBSAMPLE_LABELS, 0.1, 7)
    assert a != subsample_labels(SUBSAMPLE_LABELS, 0.1, seed=8)
    assert set(subsample_labels(SUBSAMPLE_LABELS, 0.01, seed=7)) <= set(a) <= set(
        subsample_labels(SUBSAMPLE_LABELS, 0.5, seed=7))
    assert subsample_labels(SUBSAMPLE_LABELS, 1.0, seed=0) == list(range(len(SUBSAMPLE_LABELS)))
    assert subsample_labels(np.array(["b", "a", "b"]), 0.5) in ([0, 1], [1, 2])


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.01, 2, float("nan"), True, "0.1", None])
def test_subsample_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
        subsample_labels([0, 1], fraction)


def test_subsample_empty():
    with pytest.raises(ValueError, match="empty"):
        subsample_labels([], 0.5)


def test_sources_registered():
    expected = {"unimed_captions": "manual", "unimed_clip_eval": "manual", "medimeta_organs": "open",
                "mrnet": "manual", "ddti_thyroid": "token"}
    for name, access in expected.items():
        assert SOURCES[name].access == access, name
    assert [f.filename for f in SOURCES["medimeta_organs"].files] == [
        "organs_axial.zip", "organs_coronal.zip", "organs_sagittal.zip"]
    assert all("zenodo.org/records/7884735/" in f.url for f in SOURCES["medimeta_organs"].files)
    assert {f.filename for f in SOURCES["unimed_captions"].files} == set(unimed.UNIMED_CAPTION_FILES.values())


def test_the_paper_folder_owns_its_layouts():
    """MedMoE's data live in its paper folder; ``medmoe.data`` (shared by every chapter) does not re-export them."""
    for name in ("UniMedCaptions", "build_eval_set", "subsample_labels", "ReportDataset"):
        assert not hasattr(data_pkg, name)
    assert unimed.UniMedCaptions is UniMedCaptions and evalsets.build_eval_set is build_eval_set


def test_report_dataset_attaches_the_encoded_reports():
    base = [{"image": torch.full((3, 8, 8), float(i)), "modality": i % 2, "mask": torch.zeros(1, 8, 8)}
            for i in range(3)]
    words = torch.randn(3, 5, 4)
    reports = type("R", (), {"words": words, "sentence": words.mean(1), "cap_lens": torch.tensor([2, 3, 1])})()
    ds = ReportDataset(base, reports)
    item = ds[2]
    assert len(ds) == 3 and item["modality"] == 0 and item["index"] == 2 and int(item["cap_len"]) == 1
    assert torch.equal(item["image"], base[2]["image"]) and torch.equal(item["words"], words[2])
    assert "mask" not in item
    with pytest.raises(ValueError, match="2 encoded reports for a dataset of 3"):
        ReportDataset(base, type("R", (), {"words": words[:2]})())


@pytest.mark.parametrize("module", [unimed, evalsets], ids=["unimed", "evalsets"])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
