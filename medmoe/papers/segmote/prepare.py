"""Assemble a MedSeg-HQ-like training set (and SegMoTE's out-of-domain sets) in the IMIS-Bench layout.

Used in the book by: *Chapter 3, SegMoTE*. MedSeg-HQ itself (154,569 masks from 12 data sets, filtered by
five reviewers) is not released; this script rebuilds what public data allows, from the original
downloads, in the layout :mod:`medmoe.papers.segmote.data` (and SegMoTE's own loader) reads::

    <out>/<CODE>/dataset.json, image/<name>.png, label/x___<name>.(C, H, W, 1).npz, imask/x___<name>.npy

Sources (``--list`` prints each with its homepage, access kind and the folder it expects):

* ``isic2018`` -> ``isic2018_task1``: ``ISIC_<id>.jpg`` + ``ISIC_<id>_segmentation.png`` (skin_lesion)
* ``sz_cxr`` -> ``sz_cxr``: ``CHNCXR_<id>_<y>.png`` (NLM) + ``CHNCXR_<id>_<y>_mask.png`` (Kaggle) (lung)
* ``chaos_ct`` / ``chaos_t1`` / ``chaos_t2`` -> the folder of the same name (MedSeg-HQ has CHAOS T1 and T2 only:
  ``chaos_ct`` is not a MedSeg-HQ source, and the chapter does not train on it unless asked to):
  ``CT/<id>/DICOM_anon/*.dcm`` + ``CT/<id>/Ground/*.png`` (liver); ``MR/<id>/T1DUAL/DICOM_anon/InPhase``
  or ``MR/<id>/T2SPIR/DICOM_anon`` + their ``Ground`` (liver, kidneys, spleen)
* ``amos_ct`` / ``amos_mri`` -> the folder of the same name: ``images{Tr,Va}/amos_<id>.nii.gz`` + ``labels{Tr,Va}/...``
  (15 organs; ids >= 500 are the MRI cases)
* ``segthor`` -> ``segthor`` (out-of-domain, all test): ``<patient>/<patient>.nii.gz`` + ``<patient>/GT.nii.gz``
* ``totalseg_mri`` -> ``totalseg_mri`` (out-of-domain, all test): ``s<id>/mri.nii.gz`` +
  ``s<id>/segmentations/<structure>.nii.gz``
* ``isles22`` -> ``isles22`` (out-of-domain, all test): the BIDS release,
  ``rawdata/sub-strokecase<id>/ses-0001/dwi/*_dwi.nii.gz`` + ``derivatives/sub-strokecase<id>/ses-0001/*_msk.nii.gz``
  (the DWI sequence, on whose grid the lesion masks are drawn; stroke_lesion)

What it does, per source:

* finds the files anywhere under the input folder (default: the catalogue folder ``<root>/<target>``,
  e.g. ``data/amos22``, as left by ``python data_scripts/fetch.py amos22``; ``--input NAME=DIR`` overrides);
* reads the original formats: JPG/PNG with PIL, NIfTI with nibabel (reoriented to RAS, axial slices shown
  radiologically: anterior up, patient's right on the left), DICOM with pydicom -- **pydicom is not a
  dependency**: asking for a CHAOS source without it raises ``ImportError`` saying ``pip install pydicom``;
* keeps 2-D images as they are and cuts volumes into axial slices that contain foreground, every
  ``--slice-step``-th of them (default 10, the spacing of the BTCV sample shipped with IMIS-Bench);
  CT is windowed to ``--ct-window`` (default -160..240 HU), MR scaled between its 0.5 and 99.5 percentiles
  per volume; ``--size N`` resizes (bilinear image, nearest masks), default keeps the original size;
* writes one mask channel per class of the source (absent classes empty) as a sparse ``.npz``, an RGB
  PNG, and (unless ``--no-imask``) an unsupervised region map as the pseudo label (``imask``; IMIS-Bench's
  maps are SAM-generated according to its paper, which cannot be redone here; see
  :func:`medmoe.papers.segmote.data.pseudo_region_map`);
* splits **patients** 9:1 into ``training`` / ``test`` with ``--seed`` (``--test-fraction``); a volume is
  one patient (CHAOS, AMOS case ids), an SZ-CXR patient is ``CHNCXR_<id>``; ISIC 2018 file names carry
  no patient or lesion id, so each image is its own group there. The out-of-domain sets (SegTHOR,
  TotalSegmentator MRI, ISLES 2022) go entirely to ``test``. The patient lists are stored in ``dataset.json`` under
  ``patients`` (the loaders ignore the key).

Not reproduced: MedSeg-HQ's quality filtering (clarity, contrast, entropy, foreground ratio, connected
regions, reviewers) and its other sources (ISIC 2016/2017, BTCV, ACDC, WORD, TotalSegmentator CT).
Class names are ours (IMIS-style ``kidney_right``); TotalSegmentator MRI structures are merged into the 12
groups of SegMoTE's Table 1 (left + right kidney -> ``kidney`` ...). CHAOS slices are paired with their
ground-truth PNGs by natural sort order of the file names (no flip), as public CHAOS readers do.

Each ``<CODE>`` folder is built in a temporary folder and renamed into place; running again with the same
options does nothing (``--force`` rebuilds, e.g. after the input files changed).

Usage::

    python data_scripts/build_medseg_hq.py --list
    python data_scripts/build_medseg_hq.py isic2018 amos_ct amos_mri --root data      # -> data/medseg_hq/<CODE>
    python data_scripts/build_medseg_hq.py sz_cxr --input sz_cxr=~/Downloads/shenzhen --size 1024

Exit status: 0 done (or up to date); 1 bad input or a missing package; 2 usage; 3 an input folder is
missing (the message says what to download and where to put it).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medmoe.data import prepare
from medmoe.data.sources import EXIT_FAILED, EXIT_MANUAL, EXIT_OK, EXIT_USAGE, default_data_root, get_source
from medmoe.papers.segmote import data as imis
from medmoe.utils import natural_key

DEFAULT_ROOT = default_data_root()
_FORMAT = 1

#: A slice ready to write: (name, image (H, W) or (H, W, 3) uint8, masks (C, H, W) bool/uint8).
Slice = tuple[str, np.ndarray, np.ndarray]

AMOS_CLASSES = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior_vena_cava", "pancreas", "adrenal_gland_right", "adrenal_gland_left", "duodenum", "bladder",
    "prostate_or_uterus",
)
"""AMOS label values 1..15 in order (AMOS's own names: ... "arota", "postcava", ..., "prostate/uterus")."""

CHAOS_MR_CLASSES = ("liver", "kidney_right", "kidney_left", "spleen")
#: CHAOS MR ground-truth grey values (lo, hi]: liver 63, right kidney 126, left kidney 189, spleen 252.
CHAOS_MR_RANGES = ((55, 70), (110, 135), (175, 200), (240, 255))

SEGTHOR_CLASSES = ("esophagus", "heart", "trachea", "aorta")  # GT.nii.gz values 1..4

#: SegMoTE Table 1's TotalSegmentator-MRI organs, each the union of these structure files.
TOTALSEG_MRI_GROUPS: dict[str, tuple[str, ...]] = {
    "adrenal_gland": ("adrenal_gland_left", "adrenal_gland_right"),
    "aorta": ("aorta",),
    "colon": ("colon",),
    "duodenum": ("duodenum",),
    "gallbladder": ("gallbladder",),
    "iliopsoas": ("iliopsoas_left", "iliopsoas_right"),
    "kidney": ("kidney_left", "kidney_right"),
    "inferior_vena_cava": ("inferior_vena_cava",),
    "liver": ("liver",),
    "pancreas": ("pancreas",),
    "spleen": ("spleen",),
    "stomach": ("stomach",),
}


@dataclass(frozen=True)
class Options:
    slice_step: int = 10
    ct_window: tuple[float, float] = (-160.0, 240.0)


@dataclass(frozen=True)
class Case:
    """One patient (a volume, or one 2-D image) and how to cut it into slices."""

    patient: str
    slices: Callable[[], Iterator[Slice]]


@dataclass(frozen=True)
class Builder:
    key: str
    code: str
    catalogue: str  # name in medmoe.data.sources
    classes: tuple[str, ...]
    modality: str
    expects: str
    find: Callable[[Path, Options], list[Case]]
    ood: bool = False
    dicom: bool = False


# --------------------------------------------------------------------------------------------------
# Readers and intensity scaling
# --------------------------------------------------------------------------------------------------


def window_ct(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Hounsfield units -> uint8 through the window ``(lo, hi)``."""
    lo, hi = window
    return (np.clip((hu - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def scale_mr(volume: np.ndarray) -> np.ndarray:
    """MR intensities -> uint8 between the volume's 0.5 and 99.5 percentiles."""
    lo, hi = np.percentile(volume, [0.5, 99.5])
    return (np.clip((volume - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_grey(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _load_nifti(path: Path) -> np.ndarray:
    """A NIfTI volume as a float array in RAS orientation ``(X, Y, Z)``."""
    try:
        image = nib.as_closest_canonical(nib.load(str(path)))
    except Exception as err:  # nibabel raises several types for broken files
        raise ValueError(f"cannot read NIfTI file {path}: {err}") from err
    return np.asanyarray(image.dataobj)


def axial(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a RAS volume as an image: rows anterior -> posterior, columns right -> left."""
    return volume[:, :, z].T[::-1, ::-1]


def _require_pydicom():
    try:
        import pydicom  # lazy: optional dependency, only the CHAOS sources need it
    except ImportError:
        raise ImportError("CHAOS is stored as DICOM, which needs pydicom (not a medmoe dependency): "
                          "pip install pydicom") from None
    return pydicom


def _foreground_slices(label: np.ndarray, step: int) -> list[int]:
    """Indices ``z`` (last axis) with foreground, every ``step``-th of them."""
    z = np.flatnonzero(label.reshape(-1, label.shape[-1]).any(axis=0))
    return [int(i) for i in z[::step]]


def _check_same_shape(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {image_path} is {image.shape[:2]} but its mask {mask_path} is {mask.shape[:2]}; "
                         "an image and its mask must have the same size (nothing is resized silently)")


def binary_mask(grey: np.ndarray, path: Path) -> np.ndarray:
    """A 2-D mask image ``(H, W)`` uint8 -> bool foreground, for both conventions of public data sets: values
    ``{0, 1}`` (foreground ``> 0``) and ``{0, 255}`` (foreground ``> 127``, which also absorbs JPEG-like noise).

    Raises:
        ValueError: a maximum between 2 and 127 -- neither convention, so thresholding could silently empty it.

    Example:
        >>> binary_mask(np.array([[0, 1]], np.uint8), Path("m.png")).tolist(), binary_mask(
        ...     np.array([[0, 255]], np.uint8), Path("m.png")).tolist()
        ([[False, True]], [[False, True]])
    """
    top = int(grey.max()) if grey.size else 0
    if top <= 1:
        return grey > 0
    if top > 127:
        return grey > 127
    raise ValueError(f"mask {path} has values {np.unique(grey)[:8].tolist()} (max {top}): neither a 0/1 nor a 0/255 "
                     "mask; convert it to one of them")


# --------------------------------------------------------------------------------------------------
# 2-D sources: ISIC 2018 task 1, SZ-CXR
# --------------------------------------------------------------------------------------------------


def _pair_2d(folder: Path, image_glob: str, mask_glob: str, mask_suffix: str, what: str) -> list[tuple[Path, Path]]:
    masks = sorted(folder.rglob(mask_glob), key=natural_key)
    images = {p.stem: p for p in folder.rglob(image_glob) if not p.stem.endswith(mask_suffix)}
    pairs, orphans = [], []
    for m in masks:
        stem = m.stem[: -len(mask_suffix)]
        (pairs.append((images[stem], m)) if stem in images else orphans.append(m.name))
    if orphans:
        raise ValueError(f"{len(orphans)} {what} mask(s) under {folder} have no image ({image_glob}): "
                         f"{', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}")
    return pairs


def _case_2d(name: str, patient: str, image_path: Path, mask_path: Path) -> Case:
    def slices() -> Iterator[Slice]:
        image, mask = _read_rgb(image_path), _read_grey(mask_path)
        _check_same_shape(image, mask, image_path, mask_path)
        yield name, image, binary_mask(mask, mask_path)[None]  # 0/1 and 0/255 masks alike

    return Case(patient, slices)


def find_isic(folder: Path, options: Options) -> list[Case]:
    pairs = _pair_2d(folder, "ISIC_*.jpg", "ISIC_*_segmentation.png", "_segmentation", "ISIC")
    return [_case_2d(img.stem, img.stem, img, m) for img, m in pairs]


def find_sz_cxr(folder: Path, options: Options) -> list[Case]:
    pairs = _pair_2d(folder, "CHNCXR_*.png", "CHNCXR_*_mask.png", "_mask", "SZ-CXR")
    return [_case_2d(img.stem, "_".join(img.stem.split("_")[:2]), img, m) for img, m in pairs]


# --------------------------------------------------------------------------------------------------
# Volumes: AMOS, SegTHOR, TotalSegmentator MRI (NIfTI)
# --------------------------------------------------------------------------------------------------


def _volume_case(patient: str, load: Callable[[], tuple[np.ndarray, np.ndarray]], *, ct: bool,
                 options: Options) -> Case:
    """``load()`` -> (image (X, Y, Z), channel masks (C, X, Y, Z) bool)."""

    def slices() -> Iterator[Slice]:
        volume, masks = load()
        grey = window_ct(volume, options.ct_window) if ct else scale_mr(volume)
        for z in _foreground_slices(masks.any(axis=0), options.slice_step):
            yield f"{patient}_{z}", axial(grey, z), np.stack([axial(m, z) for m in masks])

    return Case(patient, slices)


def _label_map_loader(image_path: Path, label_path: Path, n_classes: int):
    def load() -> tuple[np.ndarray, np.ndarray]:
        volume = _load_nifti(image_path).astype(np.float32)
        label = np.rint(_load_nifti(label_path)).astype(np.int16)
        if volume.shape != label.shape:
            raise ValueError(f"volume {image_path} is {volume.shape} but its labels {label_path} are {label.shape}")
        return volume, np.stack([label == v for v in range(1, n_classes + 1)])

    return load


def _find_amos(folder: Path, options: Options, *, mri: bool) -> list[Case]:
    cases = []
    for images in sorted(p for p in folder.rglob("images*") if p.is_dir()):
        labels = images.parent / images.name.replace("images", "labels", 1)
        if not labels.is_dir():
            continue  # imagesTs: no public labels
        for image_path in sorted(images.glob("amos_*.nii*"), key=natural_key):
            label_path = labels / image_path.name
            case_id = int(re.sub(r"\D", "", image_path.name.split(".")[0]) or -1)
            if not label_path.is_file() or (case_id >= 500) != mri:
                continue
            patient = image_path.name.split(".")[0]
            cases.append(_volume_case(patient, _label_map_loader(image_path, label_path, len(AMOS_CLASSES)),
                                      ct=not mri, options=options))
    return cases


def find_segthor(folder: Path, options: Options) -> list[Case]:
    cases = []
    for gt in sorted(folder.rglob("GT.nii*"), key=lambda p: natural_key(p.parent)):
        image_path = next(iter(sorted(gt.parent.glob(f"{gt.parent.name}.nii*"))), None)
        if image_path is None:
            raise FileNotFoundError(f"{gt} has no image {gt.parent / (gt.parent.name + '.nii.gz')} next to it")
        cases.append(_volume_case(gt.parent.name, _label_map_loader(image_path, gt, len(SEGTHOR_CLASSES)),
                                  ct=True, options=options))
    return cases


def find_totalseg_mri(folder: Path, options: Options) -> list[Case]:
    cases = []
    for image_path in sorted(folder.rglob("mri.nii*"), key=lambda p: natural_key(p.parent)):
        seg = image_path.parent / "segmentations"
        if not seg.is_dir():
            continue

        def load(image_path: Path = image_path, seg: Path = seg) -> tuple[np.ndarray, np.ndarray]:
            volume = _load_nifti(image_path).astype(np.float32)
            masks = np.zeros((len(TOTALSEG_MRI_GROUPS), *volume.shape), dtype=bool)
            for c, parts in enumerate(TOTALSEG_MRI_GROUPS.values()):
                for part in parts:  # a structure file missing from this version stays empty
                    files = sorted(seg.glob(f"{part}.nii*"))
                    if files:
                        masks[c] |= _load_nifti(files[0]) > 0
            return volume, masks

        cases.append(_volume_case(image_path.parent.name, load, ct=False, options=options))
    return cases


def find_isles22(folder: Path, options: Options) -> list[Case]:
    """ISLES 2022 (BIDS): each case's DWI volume and its lesion mask (``*_msk.nii.gz``, drawn on the DWI grid)."""
    cases = []
    for mask_path in sorted(folder.rglob("*_msk.nii*"), key=natural_key):
        subject = next((part for part in mask_path.parts if part.startswith("sub-")), None)
        if subject is None:
            raise ValueError(f"{mask_path}: no sub-<id> folder in its path (ISLES 2022 is a BIDS tree)")
        dwi = sorted(p for p in folder.rglob(f"{subject}_*dwi.nii*") if "derivatives" not in p.parts)
        if not dwi:
            raise FileNotFoundError(f"{mask_path} has no DWI image rawdata/{subject}/ses-*/dwi/{subject}_*_dwi.nii.gz")
        cases.append(_volume_case(subject, _label_map_loader(dwi[0], mask_path, 1), ct=False, options=options))
    return cases


# --------------------------------------------------------------------------------------------------
# DICOM: CHAOS
# --------------------------------------------------------------------------------------------------


def _dicom_volume(paths: list[Path]) -> np.ndarray:
    """Slices ``(Z, H, W)`` in rescaled units (HU for CT)."""
    pydicom = _require_pydicom()
    out = []
    for p in paths:
        ds = pydicom.dcmread(str(p))
        slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
        out.append(ds.pixel_array.astype(np.float32) * slope + intercept)
    return np.stack(out)


def _find_chaos(folder: Path, options: Options, *, sequence: str) -> list[Case]:
    _require_pydicom()
    modality = "CT" if sequence == "CT" else "MR"
    dicom_sub = {"CT": "DICOM_anon", "T1": "T1DUAL/DICOM_anon/InPhase", "T2": "T2SPIR/DICOM_anon"}[sequence]
    ground_sub = {"CT": "Ground", "T1": "T1DUAL/Ground", "T2": "T2SPIR/Ground"}[sequence]
    tops = sorted(p for p in prepare.walk_folders(folder, max_depth=4) if p.name == modality)
    cases = []
    for top in tops:
        for patient_dir in sorted((p for p in top.iterdir() if p.is_dir()), key=natural_key):
            dicom_dir, ground_dir = patient_dir / dicom_sub, patient_dir / ground_sub
            if not (dicom_dir.is_dir() and ground_dir.is_dir()):
                continue
            patient = f"chaos_{sequence.lower()}_{patient_dir.name}"

            def slices(dicom_dir: Path = dicom_dir, ground_dir: Path = ground_dir,
                       patient: str = patient) -> Iterator[Slice]:
                dicoms = sorted(dicom_dir.glob("*.dcm"), key=natural_key)
                grounds = sorted(ground_dir.glob("*.png"), key=natural_key)
                if len(dicoms) != len(grounds) or not dicoms:
                    raise ValueError(f"{dicom_dir} has {len(dicoms)} DICOM slices but {ground_dir} has "
                                     f"{len(grounds)} ground-truth PNGs; they must pair one to one")
                volume = _dicom_volume(dicoms)
                grey = window_ct(volume, options.ct_window) if sequence == "CT" else scale_mr(volume)
                gt = np.stack([_read_grey(p) for p in grounds]).astype(np.int16)
                if gt.shape != volume.shape:
                    raise ValueError(f"{ground_dir} masks {gt.shape} do not match the DICOM slices {volume.shape}")
                if sequence == "CT":
                    masks = (gt > 0)[None]
                else:
                    masks = np.stack([(gt > lo) & (gt <= hi) for lo, hi in CHAOS_MR_RANGES])
                fg = np.flatnonzero(masks.any(axis=(0, 2, 3)))[:: options.slice_step]
                for z in fg:
                    yield f"{patient}_{int(z)}", grey[z], masks[:, z]

            cases.append(Case(patient, slices))
    return cases


BUILDERS: dict[str, Builder] = {b.key: b for b in (
    Builder("isic2018", "isic2018_task1", "isic2018_task1", ("skin_lesion",), "dermoscopy",
            "ISIC_<id>.jpg and ISIC_<id>_segmentation.png anywhere inside (the two training archives)", find_isic),
    Builder("sz_cxr", "sz_cxr", "sz_cxr", ("lung",), "x-ray",
            "CHNCXR_<id>_<y>.png (NLM) and CHNCXR_<id>_<y>_mask.png (Kaggle) anywhere inside", find_sz_cxr),
    Builder("chaos_ct", "chaos_ct", "chaos", ("liver",), "ct",
            "CT/<patient>/DICOM_anon/*.dcm and CT/<patient>/Ground/*.png (CHAOS_Train_Sets.zip unpacked)",
            lambda f, o: _find_chaos(f, o, sequence="CT"), dicom=True),
    Builder("chaos_t1", "chaos_t1", "chaos", CHAOS_MR_CLASSES, "mr",
            "MR/<patient>/T1DUAL/DICOM_anon/InPhase/*.dcm and MR/<patient>/T1DUAL/Ground/*.png",
            lambda f, o: _find_chaos(f, o, sequence="T1"), dicom=True),
    Builder("chaos_t2", "chaos_t2", "chaos", CHAOS_MR_CLASSES, "mr",
            "MR/<patient>/T2SPIR/DICOM_anon/*.dcm and MR/<patient>/T2SPIR/Ground/*.png",
            lambda f, o: _find_chaos(f, o, sequence="T2"), dicom=True),
    Builder("amos_ct", "amos_ct", "amos22", AMOS_CLASSES, "ct",
            "images{Tr,Va}/amos_<id>.nii.gz with labels{Tr,Va}/ next to them (amos22.zip unpacked); ids < 500",
            lambda f, o: _find_amos(f, o, mri=False)),
    Builder("amos_mri", "amos_mri", "amos22", AMOS_CLASSES, "mr",
            "the same AMOS folders; ids >= 500 are the MRI cases", lambda f, o: _find_amos(f, o, mri=True)),
    Builder("segthor", "segthor", "segthor", SEGTHOR_CLASSES, "ct",
            "<patient>/<patient>.nii.gz and <patient>/GT.nii.gz anywhere inside", find_segthor, ood=True),
    Builder("totalseg_mri", "totalseg_mri", "totalsegmentator_mri", tuple(TOTALSEG_MRI_GROUPS), "mr",
            "s<id>/mri.nii.gz and s<id>/segmentations/<structure>.nii.gz anywhere inside", find_totalseg_mri,
            ood=True),
    Builder("isles22", "isles22", "isles22", ("stroke_lesion",), "mr",
            "rawdata/sub-strokecase<id>/ses-0001/dwi/*_dwi.nii.gz and "
            "derivatives/sub-strokecase<id>/ses-0001/*_msk.nii.gz",
            find_isles22, ood=True),
)}


# --------------------------------------------------------------------------------------------------
# Split, write, CLI
# --------------------------------------------------------------------------------------------------


def split_patients(patients: Iterable[str], *, test_fraction: float, seed: int) -> set[str]:
    """The test patients: ``round(test_fraction * n)`` of the sorted unique ``patients`` (at least one when
    there are two or more, never all), drawn with ``numpy.random.default_rng(seed)``."""
    unique = sorted(set(patients))
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"--test-fraction must lie in [0, 1], got {test_fraction}")
    n_test = math.floor(test_fraction * len(unique) + 0.5)
    if len(unique) >= 2 and test_fraction > 0:
        n_test = min(max(n_test, 1), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[:n_test]}


def _resize(image: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    if not size or image.shape[:2] == (size, size):
        return image, masks
    img = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    out = np.stack([np.asarray(Image.fromarray(m.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST))
                    for m in masks])
    return img, out


def build_source(builder: Builder, cases: list[Case], out_folder: Path, *, test: set[str], size: int,
                 imask: bool) -> dict[str, object]:
    """Write ``cases`` into ``out_folder`` (IMIS-Bench layout); returns counts."""
    lists: dict[str, list[dict[str, str]]] = {"training": [], "test": []}
    patients: dict[str, set[str]] = {"training": set(), "test": set()}
    foreground = {"training": 0, "test": 0}  # images with at least one foreground pixel
    for case in cases:
        split = "test" if case.patient in test else "training"
        for name, image, masks in case.slices():
            if masks.shape[0] != len(builder.classes):
                raise ValueError(f"{name}: {masks.shape[0]} mask channels for classes {builder.classes}")
            image, masks = _resize(np.ascontiguousarray(image), np.ascontiguousarray(masks), size)
            lists[split].append(imis.write_imis_item(out_folder, name, image, masks, imask=imask))
            patients[split].add(case.patient)
            foreground[split] += bool(np.any(masks))
    for split, entries in lists.items():
        if entries and not foreground[split]:
            raise ValueError(f"{builder.key}: every mask of the {split} split ({len(entries)} images) is empty: "
                             "nothing to train or score on. Masks stored as 0/1 and as 0/255 are both read; check that "
                             f"the mask files under the input folder hold the structures ({builder.expects})")
    path = imis.write_dataset_json(out_folder, code=builder.code, labels=builder.classes,
                                   training=lists["training"], test=lists["test"], modality=builder.modality,
                                   description=f"{builder.code}, built by data_scripts/build_medseg_hq.py")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["patients"] = {k: sorted(v) for k, v in patients.items()}
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")
    return {"training": len(lists["training"]), "test": len(lists["test"]),
            "patients_training": len(patients["training"]), "patients_test": len(patients["test"])}


def input_folder(builder: Builder, root: Path, inputs: dict[str, str]) -> Path:
    given = inputs.get(builder.key) or inputs.get(builder.catalogue)
    return Path(given).expanduser() if given else root / get_source(builder.catalogue).target


def missing_message(builder: Builder, folder: Path, root: Path) -> str:
    source = get_source(builder.catalogue)
    how = {"open": f"download it: python data_scripts/fetch.py {source.name} --root {root}",
           "token": f"needs a Kaggle account; python data_scripts/fetch.py --show {source.name} says what to do",
           "manual": f"must be downloaded by hand; python data_scripts/fetch.py --show {source.name} says how"}
    return (f"{builder.key}: input folder not found: {folder}\n"
            f"  source {source.name!r} ({source.access}): {how[source.access]}\n"
            f"  homepage: {source.homepage}\n"
            f"  expected inside: {builder.expects}\n"
            f"  (or point to your copy with --input {builder.key}=DIR)")


def list_sources(root: Path) -> str:
    lines = []
    for b in BUILDERS.values():
        s = get_source(b.catalogue)
        extra = ("  (out-of-domain: all test)" if b.ood else
                 "  (not a MedSeg-HQ source: the chapter does not train on it by default)"
                 if b.code in imis.NOT_IN_MEDSEG_HQ else "")
        lines += [f"{b.key}  -> <out>/{b.code}{extra}",
                  f"    source:   {s.name} ({s.access} access)  {s.homepage}",
                  f"    folder:   {root / s.target}",
                  f"    expects:  {b.expects}",
                  f"    classes:  {', '.join(b.classes)}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_medseg_hq.py",
        description="Write public segmentation sources in the IMIS-Bench layout (a MedSeg-HQ-like set for SegMoTE).",
        epilog="Exit status: 0 done, 1 bad input or missing package, 2 usage, 3 input folder missing.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"sources to build: {', '.join(BUILDERS)}")
    parser.add_argument("--list", action="store_true", help="list the sources, their access and folders, and exit")
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"data root (default: {DEFAULT_ROOT})")
    parser.add_argument("--out", metavar="DIR", help="output root (default: <root>/medseg_hq)")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=DIR",
                        help="input folder for a source (NAME: a source above or its catalogue name)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split (default 0)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="test patients (default 0.1, i.e. 9:1)")
    parser.add_argument("--slice-step", type=int, default=10, help="every N-th foreground slice of a volume")
    parser.add_argument("--size", type=int, default=0, help="resize to SIZE x SIZE (default 0: keep)")
    parser.add_argument("--ct-window", type=float, nargs=2, default=(-160.0, 240.0), metavar=("LO", "HI"),
                        help="CT window in HU (default -160 240)")
    parser.add_argument("--max-cases", type=int, default=0, help="use only the first N patients (a quick trial)")
    parser.add_argument("--no-imask", action="store_true", help="write no pseudo-label (imask) files")
    parser.add_argument("--force", action="store_true", help="rebuild outputs that are up to date")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    return parser


def run(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser()
    if args.list:
        print(list_sources(root))
        return EXIT_OK
    unknown = [n for n in args.names if n not in BUILDERS]
    if not args.names or unknown:
        what = f"unknown source(s) {unknown}" if unknown else "no source given"
        print(f"error: {what}; choose from {', '.join(BUILDERS)} (--list explains each)", file=sys.stderr)
        return EXIT_USAGE
    try:
        inputs = dict(item.split("=", 1) for item in args.input)
    except ValueError:
        print(f"error: --input takes NAME=DIR, got {args.input}", file=sys.stderr)
        return EXIT_USAGE
    if args.slice_step < 1 or args.size < 0 or args.ct_window[0] >= args.ct_window[1]:
        print("error: --slice-step must be >= 1, --size >= 0 and the CT window LO < HI", file=sys.stderr)
        return EXIT_USAGE
    out_root = Path(args.out).expanduser() if args.out else root / "medseg_hq"
    options = Options(slice_step=args.slice_step, ct_window=tuple(args.ct_window))

    for name in dict.fromkeys(args.names):
        builder = BUILDERS[name]
        if builder.dicom:
            _require_pydicom()
        folder = input_folder(builder, root, inputs)
        if not folder.is_dir():
            print(missing_message(builder, folder, root), file=sys.stderr)
            return EXIT_MANUAL
        fingerprint = {"script": "build_medseg_hq", "format": _FORMAT, "source": name,
                       "input": str(folder.resolve()), "seed": args.seed, "test_fraction": args.test_fraction,
                       "slice_step": args.slice_step, "size": args.size, "ct_window": list(args.ct_window),
                       "imask": not args.no_imask, "max_cases": args.max_cases}
        target = out_root / builder.code
        if not args.force and prepare.prepared_is_current(target, fingerprint):
            if not args.quiet:
                print(f"{name}: up to date: {target} (same options; --force rebuilds)")
            continue
        cases = builder.find(folder, options)
        if args.max_cases:
            cases = cases[: args.max_cases]
        if not cases:
            raise FileNotFoundError(f"{name}: nothing found under {folder}; expected {builder.expects}. Found:\n"
                                    f"{prepare.describe_tree(folder)}")
        test = ({c.patient for c in cases} if builder.ood else
                split_patients((c.patient for c in cases), test_fraction=args.test_fraction, seed=args.seed))
        summary = prepare.build_folder_atomically(
            target, lambda tmp, b=builder, c=cases, t=test: build_source(
                b, c, tmp, test=t, size=args.size, imask=not args.no_imask),
            fingerprint=fingerprint)
        if not args.quiet:
            print(f"{name}: wrote {target}: {summary['training']} training images "
                  f"({summary['patients_training']} patients), {summary['test']} test images "
                  f"({summary['patients_test']} patients)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
