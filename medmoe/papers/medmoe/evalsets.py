"""The classification benchmarks MedMoE is evaluated on (zero-shot and linear probing), in their real file formats.

Used in the book by: *Chapter 2, MedMoE* (``chapters/02_medmoe``), section 7 "Zero-shot classification (Table 1)
and linear probing (Table 2)", with the paper profile (:func:`medmoe.papers.medmoe.recipe.evaluate` scores them) --
Table 1's zero-shot accuracies (CheXpert 5x200, RSNA pneumonia, thyroid and breast ultrasound, ACL and meniscus
MRI, MedIMeta CT organs in three views) and the linear probes with 1 % / 10 % / 100 % of the labels
(:func:`subsample_labels`). Every loader returns a :class:`ClassificationSet` whose ``classes`` are human-readable
names; :data:`CLASS_PROMPTS` holds the sentences a zero-shot classifier embeds for each class.

**Where the files come from.** MedMoE's own evaluation code is empty, so the sets follow UniMed-CLIP, whose
processed evaluation zip (``python data_scripts/fetch.py --show unimed_clip_eval``) unpacks to one folder
per set. The facts below were read in UniMed-CLIP's ``clipeval/datasets.py``, ``clipeval/dataset_catalog.json``,
``docs/EVALUATION_DATA.md`` and ``constants.py``, in RadImageNet's ``*/dataframe/*.csv`` (BMEII-AI/RadImageNet,
where the four ultrasound/MRI tables originate) and in MedIMeta's ``info.yaml`` / writer code:

================================  =================================================================================
set (``root`` = unpacked folder)  file and format
================================  =================================================================================
``chexpert_5x200``                ``chexpert/chexpert-5x200.csv`` (in UniMed-CLIP: ``local_data/chexpert-5x200.csv``):
                                  unnamed index, ``imgpath`` (``CheXpert-v1.0-small/train/...jpg``, relative to
                                  ``chexpert/``), the 14 CheXpert label columns (0.0/1.0), ``Report Impression``.
                                  Label = argmax over ``Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural
                                  Effusion`` -- UniMed-CLIP's class order (alphabetical).
``rsna_pneumonia``                ``rsna_custom_test_set/RSNA_pneumonia_balanced_testfile.csv``: image path in
                                  column 1, label in column 2 (read by *position*; names unknown), 0 normal /
                                  1 pneumonia (the order of UniMed-CLIP's prompts).
``thyroid_us``                    ``thyroid_us/thyroid_{split}_fold{k}.csv``: ``img_dir,label``; ``images/314_1.jpg``;
                                  ``benign``/``malignant`` -> 0/1.
``breast_us``                     ``breast_us/breast_{split}_fold{k}.csv``: ``filename,label``;
                                  ``images/benign (2).png``; ``benign``/``malignant`` -> 0/1 (BUSI's *normal*
                                  images are labelled benign).
``meniscus_mri``                  ``meniscal_mri/meniscus_{split}_fold{k}.csv``: ``img_dir,label``; ``n``/``p`` -> 0/1.
``acl_mri``                       ``acl_mri/{split}_fold{k}.csv``: ``filename,acl_label``; ``no``/``yes`` -> 0/1.
``medimeta_organs_{view}``        ``organs_{view}/annotations.csv`` (MedIMeta, Zenodo 7884735): ``filepath``
                                  (``images/000000.tiff``, 224x224 grey), ``split`` (train/val/test),
                                  ``tasks/organ label`` (0..10, the organs of :data:`ORGAN_CLASSES`).
================================  =================================================================================

UniMed-CLIP reads the four RadImageNet tables by position (column 0 = path, 1 = label), which is also the
default here (``path_column=0, label_column=1``); a column *name* may be given instead. For those tables
``split`` is ``"test"`` (default, fold 1 -- what UniMed-CLIP evaluates), ``"train"`` or ``"val"`` with
``fold=1..5``, or a CSV file name. Each table is looked for in ``root/<folder>/``, in
``root/<folder>/dataframe/`` (RadImageNet's own layout) and in ``root`` itself (``root`` is then the set's
folder); image paths are relative to the folder that holds ``images/``, i.e. the set's folder.

**Assumptions.** RSNA labels may also be the words ``normal`` / ``pneumonia``; RSNA images may be DICOM
(``.dcm``, needs pydicom). MedIMeta images are read from the TIFF files (not ``images.hdf5``, which would
need h5py). The CheXpert 5x200 rows are assumed to have at least one of the five classes positive (a row
with none is an error; ties go to the first class in the order above, like ``argmax``).

Example:
    >>> sorted(EVAL_SETS)[:3]
    ['acl_mri', 'breast_us', 'chexpert_5x200']
    >>> EVAL_SET_CLASSES["meniscus_mri"], list(CLASS_PROMPTS["meniscus_mri"]) == list(EVAL_SET_CLASSES["meniscus_mri"])
    (('normal', 'meniscal tear'), True)
    >>> chosen = subsample_labels([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], 0.5, seed=0)   # 2 of class 0, 3 of class 1
    >>> len(chosen), chosen == subsample_labels([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], 0.5, seed=0)
    (5, True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from medmoe.papers.medmoe.data import check_size, load_image_rgb

__all__ = [
    "ClassificationSet",
    "EVAL_SETS",
    "EVAL_SET_CLASSES",
    "CLASS_PROMPTS",
    "ORGAN_CLASSES",
    "CHEXPERT_5X200_COLUMNS",
    "build_eval_set",
    "chexpert_5x200",
    "rsna_pneumonia",
    "thyroid_us",
    "breast_us",
    "acl_mri",
    "meniscus_mri",
    "medimeta_organs_axial",
    "medimeta_organs_coronal",
    "medimeta_organs_sagittal",
    "subsample_labels",
    "write_eval_fixtures",
]

PathLike = Union[str, "os.PathLike[str]"]
Column = Union[str, int]

ORGAN_CLASSES: tuple[str, ...] = (
    "heart", "left lung", "right lung", "liver", "spleen", "pancreas", "left kidney", "right kidney", "bladder",
    "left femoral head", "right femoral head",
)
"""MedIMeta's organ labels 0..10 (``LiTS_organ_slices_*.yaml``; UniMed-CLIP's CT prompts use the same order)."""

CHEXPERT_5X200_COLUMNS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
"""The CheXpert columns of the 5x200 table, in UniMed-CLIP's class order."""

EVAL_SET_CLASSES: dict[str, tuple[str, ...]] = {
    "chexpert_5x200": tuple(c.lower() for c in CHEXPERT_5X200_COLUMNS),
    "rsna_pneumonia": ("normal", "pneumonia"),
    "thyroid_us": ("benign", "malignant"),
    "breast_us": ("benign", "malignant"),
    "acl_mri": ("normal", "acl tear"),
    "meniscus_mri": ("normal", "meniscal tear"),
    "medimeta_organs_axial": ORGAN_CLASSES,
    "medimeta_organs_coronal": ORGAN_CLASSES,
    "medimeta_organs_sagittal": ORGAN_CLASSES,
}
"""Class names of each set, index = label id. ``acl tear`` / ``meniscal tear`` name the positive class of
MRNet's tasks (UniMed-CLIP's keys are ``no`` / ``yes``)."""

# Raw label values in the tables (lower-cased, stripped) -> label id.
_LABEL_VALUES: dict[str, dict[str, int]] = {
    "rsna_pneumonia": {"0": 0, "1": 1, "normal": 0, "pneumonia": 1},
    "thyroid_us": {"benign": 0, "malignant": 1},
    "breast_us": {"benign": 0, "malignant": 1},
    "acl_mri": {"no": 0, "yes": 1},
    "meniscus_mri": {"n": 0, "p": 1},
    "medimeta_organs": {
        **{str(i): i for i in range(len(ORGAN_CLASSES))}, **{c: i for i, c in enumerate(ORGAN_CLASSES)},
    },
}

# --------------------------------------------------------------------------------------------------
# Zero-shot prompts (data only)
# --------------------------------------------------------------------------------------------------
#
# UniMed-CLIP gives each class of these sets a list of about ten descriptive sentences and averages their
# L2-normalised text embeddings (prompt ensembling); the class order of each dict is the label order. The
# sentences below are medmoe's own wording in the same style (several sentences per class, naming the
# modality, the anatomy and the finding), not a copy of UniMed-CLIP's lists.

_ORGAN_PROMPTS: dict[str, tuple[str, ...]] = {
    organ: (
        f"a CT slice showing the {organ}.",
        f"computed tomography image centred on the {organ}.",
        f"CT scan in which the {organ} is the structure in view.",
        f"abdominal or thoracic CT cross-section of the {organ}.",
        f"a cropped CT image of the {organ}.",
    )
    for organ in ORGAN_CLASSES
}

CLASS_PROMPTS: dict[str, dict[str, tuple[str, ...]]] = {
    "chexpert_5x200": {
        "atelectasis": (
            "chest X-ray showing atelectasis.",
            "frontal chest radiograph with collapse of part of the lung, consistent with atelectasis.",
            "linear or plate-like atelectasis at the lung bases on a chest X-ray.",
            "the radiograph of the chest demonstrates volume loss from atelectasis.",
            "subsegmental atelectasis is seen on this chest film.",
        ),
        "cardiomegaly": (
            "chest X-ray showing cardiomegaly.",
            "frontal chest radiograph with an enlarged cardiac silhouette.",
            "the heart is enlarged on this chest X-ray, in keeping with cardiomegaly.",
            "chest film demonstrating an increased cardiothoracic ratio.",
            "radiograph of the chest with a large heart.",
        ),
        "consolidation": (
            "chest X-ray showing consolidation.",
            "frontal chest radiograph with airspace consolidation in the lung.",
            "dense opacity filling the alveoli, consistent with consolidation, on a chest X-ray.",
            "chest film demonstrating lobar consolidation.",
            "patchy consolidation of the lung parenchyma on a radiograph.",
        ),
        "edema": (
            "chest X-ray showing pulmonary edema.",
            "frontal chest radiograph with interstitial and alveolar edema.",
            "fluid overload with vascular congestion and edema on a chest X-ray.",
            "chest film demonstrating bilateral pulmonary edema.",
            "radiograph of the chest with signs of edema in both lungs.",
        ),
        "pleural effusion": (
            "chest X-ray showing a pleural effusion.",
            "frontal chest radiograph with fluid in the pleural space.",
            "blunting of the costophrenic angle from a pleural effusion on a chest X-ray.",
            "chest film demonstrating a layering pleural effusion.",
            "radiograph of the chest with a meniscus sign of pleural fluid.",
        ),
    },
    "rsna_pneumonia": {
        "normal": (
            "a normal chest X-ray.",
            "chest radiograph with clear lungs and no abnormality.",
            "frontal chest X-ray without any acute findings.",
            "the lungs are clear on this chest film; no pneumonia.",
            "an unremarkable radiograph of the chest.",
        ),
        "pneumonia": (
            "chest X-ray showing pneumonia.",
            "chest radiograph with lung opacities consistent with pneumonia.",
            "frontal chest X-ray with an infectious infiltrate in the lung.",
            "focal airspace opacity on a chest film, suspicious for pneumonia.",
            "radiograph of the chest demonstrating pneumonia.",
        ),
    },
    "thyroid_us": {
        "benign": (
            "ultrasound of a benign thyroid nodule.",
            "thyroid sonogram with a well-circumscribed nodule with smooth margins.",
            "a thyroid nodule with regular shape and homogeneous echotexture on ultrasound.",
            "ultrasound image of a thyroid nodule without microcalcifications.",
            "a low-suspicion thyroid nodule on sonography.",
        ),
        "malignant": (
            "ultrasound of a malignant thyroid nodule.",
            "thyroid sonogram with an irregular, ill-defined nodule.",
            "a hypoechoic thyroid nodule with microcalcifications on ultrasound.",
            "ultrasound image of a thyroid nodule that is taller than wide with spiculated margins.",
            "a highly suspicious thyroid nodule, likely carcinoma, on sonography.",
        ),
    },
    "breast_us": {
        "benign": (
            "breast ultrasound with a benign finding.",
            "sonogram of the breast showing an oval, circumscribed benign lesion.",
            "breast ultrasound image without any malignant lesion.",
            "a benign breast mass with smooth borders on ultrasound.",
            "ultrasound of breast tissue with benign features.",
        ),
        "malignant": (
            "breast ultrasound with a malignant lesion.",
            "sonogram of the breast showing an irregular, spiculated mass.",
            "a hypoechoic breast mass with posterior shadowing, suspicious for cancer.",
            "breast ultrasound image of a carcinoma.",
            "ultrasound of the breast with a malignant tumour.",
        ),
    },
    "acl_mri": {
        "normal": (
            "a normal knee MRI.",
            "sagittal MRI of the knee with an intact anterior cruciate ligament.",
            "knee magnetic resonance image without ligament injury.",
            "MRI of the knee showing normal anatomy.",
            "the anterior cruciate ligament is continuous on this knee MRI.",
        ),
        "acl tear": (
            "knee MRI showing an anterior cruciate ligament tear.",
            "sagittal MRI of the knee with a torn ACL.",
            "knee magnetic resonance image with disruption of the anterior cruciate ligament.",
            "MRI of the knee demonstrating an ACL injury.",
            "the anterior cruciate ligament fibres are discontinuous on this knee MRI.",
        ),
    },
    "meniscus_mri": {
        "normal": (
            "a normal knee MRI.",
            "sagittal MRI of the knee with intact menisci.",
            "knee magnetic resonance image without a meniscal tear.",
            "MRI of the knee showing normal anatomy.",
            "the menisci have normal shape and signal on this knee MRI.",
        ),
        "meniscal tear": (
            "knee MRI showing a meniscal tear.",
            "sagittal MRI of the knee with a torn meniscus.",
            "knee magnetic resonance image with abnormal signal reaching the meniscal surface.",
            "MRI of the knee demonstrating a meniscus injury.",
            "a tear of the medial or lateral meniscus on this knee MRI.",
        ),
    },
    "medimeta_organs_axial": _ORGAN_PROMPTS,
    "medimeta_organs_coronal": _ORGAN_PROMPTS,
    "medimeta_organs_sagittal": _ORGAN_PROMPTS,
}
"""Zero-shot sentences per set and class: ``CLASS_PROMPTS[name][class_name] -> tuple of sentences``. The
keys of ``CLASS_PROMPTS[name]`` are ``EVAL_SET_CLASSES[name]`` in label order."""


# --------------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------------


class ClassificationSet(Dataset):
    """An image classification benchmark: image files, integer labels and human-readable class names.

    Image files are opened only in ``__getitem__`` (a missing one raises ``FileNotFoundError`` naming it).

    Args:
        name: the set's name (a key of :data:`EVAL_SETS` for the loaders here).
        classes: class names, index = label id (usable in prompts: ``"a chest X-ray showing {name}"``).
        paths: image file of every sample.
        labels: label id of every sample, in ``0..len(classes) - 1``.
        size: output height = width (>= 8).

    Items (dict):
        ``image`` float32 ``(3, size, size)`` in [0, 1] (see :func:`medmoe.papers.medmoe.data.load_image_rgb`),
        ``label`` int, ``path`` str.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> folder = tempfile.mkdtemp()
        >>> paths = [os.path.join(folder, f"{i}.png") for i in range(3)]
        >>> for i, p in enumerate(paths):
        ...     Image.new("L", (30, 30), color=80 * i).save(p)
        >>> ds = ClassificationSet(name="toy", classes=("benign", "malignant"), paths=paths, labels=[0, 1, 1], size=16)
        >>> item = ds[1]
        >>> item["image"].shape, item["label"], ds.classes[item["label"]], ds.class_counts()
        (torch.Size([3, 16, 16]), 1, 'malignant', [1, 2])
    """

    def __init__(
        self,
        *,
        name: str,
        classes: Sequence[str],
        paths: Sequence[PathLike],
        labels: Sequence[int],
        size: int = 224,
    ) -> None:
        self.name = str(name)
        self.classes: tuple[str, ...] = tuple(str(c) for c in classes)
        if not self.classes:
            raise ValueError(f"{self.name}: classes is empty")
        self.paths: list[str] = [os.fspath(p) for p in paths]
        self.labels: list[int] = [int(v) for v in labels]
        self.size = check_size(size)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.paths)} paths but {len(self.labels)} labels")
        if not self.paths:
            raise ValueError(f"{self.name}: no samples")
        bad = sorted({v for v in self.labels if not 0 <= v < len(self.classes)})
        if bad:
            raise ValueError(
                f"{self.name}: label(s) {bad} outside 0..{len(self.classes) - 1} for classes {self.classes}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        path = self.paths[index]
        return {"image": load_image_rgb(path, size=self.size), "label": self.labels[index], "path": path}

    def class_counts(self) -> list[int]:
        """Number of samples of each class, in class order."""
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()

    def __repr__(self) -> str:
        counts = ", ".join(f"{c}={n}" for c, n in zip(self.classes, self.class_counts()))
        return f"ClassificationSet({self.name!r}, {len(self)} images; {counts})"


# --------------------------------------------------------------------------------------------------
# Table helpers
# --------------------------------------------------------------------------------------------------


def _find_table(root: PathLike, folder: str, filename: str, *, what: str) -> tuple[Path, Path]:
    """Find ``filename`` for a set stored in ``root/<folder>``: ``(table path, folder images are relative to)``.

    Looks in ``root/<folder>/``, ``root/<folder>/dataframe/``, ``root/`` and ``root/dataframe/``;
    ``FileNotFoundError`` lists every path tried.
    """
    root = Path(root)
    tried = []
    for base in (root / folder, root):
        for sub in ("", "dataframe"):
            candidate = base / sub / filename if sub else base / filename
            tried.append(candidate)
            if candidate.is_file():
                return candidate, base
    hint = " (or fetch the open medimeta_organs source)" if folder.startswith("organs_") else ""
    raise FileNotFoundError(
        f"{what}: table {filename!r} not found; looked at " + ", ".join(str(p) for p in tried)
        + f". Unpack UniMed-CLIP's evaluation zip so that {folder}/ sits in the root you pass{hint} "
        "(python data_scripts/fetch.py --show unimed_clip_eval)."
    )


def _read_csv(path: Path, *, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: table not found: {path}")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _column(frame: pd.DataFrame, column: Column, path: Path, *, role: str) -> pd.Series:
    """A column by name, or by 0-based position for an int; ``ValueError`` naming file and columns."""
    if isinstance(column, bool) or not isinstance(column, (int, str)):
        raise ValueError(f"{role} column must be a name or a 0-based position, got {column!r}")
    if isinstance(column, int):
        if not 0 <= column < frame.shape[1]:
            raise ValueError(
                f"{path}: no column at position {column} for the {role} "
                f"({frame.shape[1]} columns: {list(frame.columns)})"
            )
        return frame.iloc[:, column]
    if column not in frame.columns:
        raise ValueError(f"{path}: missing {role} column {column!r}; found columns {list(frame.columns)}")
    return frame[column]


def _normalise_value(value: object) -> str:
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _map_labels(values: pd.Series, mapping: Mapping[str, int], path: Path, column: Column) -> list[int]:
    labels = []
    for row, value in enumerate(values):
        key = _normalise_value(value)
        if key not in mapping:
            raise ValueError(
                f"{path}: row {row} (0-based, header not counted): unknown label {value!r} in column {column!r}; "
                f"expected one of {sorted(set(mapping))}"
            )
        labels.append(mapping[key])
    return labels


def _paths(values: pd.Series, base: Path, path: Path, column: Column) -> list[Path]:
    out = []
    for row, value in enumerate(values):
        text = str(value).strip()
        if not text:
            raise ValueError(f"{path}: row {row} (0-based, header not counted): empty image path in column {column!r}")
        out.append(base / text)
    return out


def _check_split(split: object, allowed: Sequence[str], name: str) -> str:
    if not isinstance(split, str) or split not in allowed:
        raise ValueError(f"{name}: split must be one of {list(allowed)}, got {split!r}")
    return split


def _table_set(
    name: str, *, root: PathLike, folder: str, filename: str, size: int, path_column: Column,
    label_column: Column, csv: PathLike | None = None,
) -> ClassificationSet:
    if csv is not None:
        table = Path(csv)
        base = Path(root) / folder if (Path(root) / folder).is_dir() else Path(root)
    else:
        table, base = _find_table(root, folder, filename, what=name)
    frame = _read_csv(table, what=name)
    if frame.empty:
        raise ValueError(f"{table}: the table has no rows")
    paths = _paths(_column(frame, path_column, table, role="image path"), base, table, path_column)
    labels = _map_labels(_column(frame, label_column, table, role="label"), _LABEL_VALUES[name], table, label_column)
    return ClassificationSet(name=name, classes=EVAL_SET_CLASSES[name], paths=paths, labels=labels, size=size)


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


def chexpert_5x200(
    *, root: PathLike, split: str = "test", size: int = 224, csv: PathLike | None = None,
) -> ClassificationSet:
    """CheXpert 5x200: 1,000 frontal chest X-rays, 200 each of five findings (zero-shot only).

    Args:
        root: folder holding ``chexpert/`` (``chexpert/chexpert-5x200.csv`` and
            ``chexpert/CheXpert-v1.0-small/train/...``), or that ``chexpert`` folder itself.
        split: only ``"test"`` exists.
        size: output height = width.
        csv: the table, when it is not in ``root/chexpert/`` (UniMed-CLIP keeps it in ``local_data/``);
            images are still read relative to ``root/chexpert`` (or ``root``).

    Returns:
        A :class:`ClassificationSet` with classes ``atelectasis, cardiomegaly, consolidation, edema,
        pleural effusion``.
    """
    name = "chexpert_5x200"
    _check_split(split, ("test",), name)
    if csv is not None:
        table = Path(csv)
        base = Path(root) / "chexpert" if (Path(root) / "chexpert").is_dir() else Path(root)
    else:
        table, base = _find_table(root, "chexpert", "chexpert-5x200.csv", what=name)
    frame = _read_csv(table, what=name)
    paths = _paths(_column(frame, "imgpath", table, role="image path"), base, table, "imgpath")
    scores = []
    for column in CHEXPERT_5X200_COLUMNS:
        values = _column(frame, column, table, role=f"{column!r} label")
        try:
            scores.append(pd.to_numeric(values.replace("", "0")).to_numpy(dtype=np.float64))
        except ValueError as err:
            raise ValueError(f"{table}: column {column!r} is not numeric: {err}") from err
    matrix = np.stack(scores, axis=1)
    positive = matrix == 1.0
    missing = np.flatnonzero(~positive.any(axis=1))
    if missing.size:
        row = int(missing[0])
        raise ValueError(
            f"{table}: row {row} (0-based, header not counted), imgpath={frame['imgpath'].iat[row]!r}: none of "
            f"{list(CHEXPERT_5X200_COLUMNS)} is 1.0 ({missing.size} such rows)"
        )
    labels = positive.argmax(axis=1).tolist()
    return ClassificationSet(name=name, classes=EVAL_SET_CLASSES[name], paths=paths, labels=labels, size=size)


def rsna_pneumonia(
    *, root: PathLike, split: str = "test", size: int = 224, csv: PathLike | None = None,
    path_column: Column = 1, label_column: Column = 2,
) -> ClassificationSet:
    """RSNA pneumonia, UniMed-CLIP's balanced test file: normal vs pneumonia chest X-rays.

    Args:
        root: folder holding ``rsna_custom_test_set/`` (or that folder itself).
        split: only ``"test"`` exists.
        size: output height = width.
        csv: another table in the same format (default ``RSNA_pneumonia_balanced_testfile.csv``).
        path_column, label_column: name or 0-based position (UniMed-CLIP: 1 and 2). Labels ``0``/``1`` or
            ``normal``/``pneumonia``. Image paths are relative to the set's folder; ``.dcm`` files need pydicom.
    """
    _check_split(split, ("test",), "rsna_pneumonia")
    return _table_set(
        "rsna_pneumonia", root=root, folder="rsna_custom_test_set", filename="RSNA_pneumonia_balanced_testfile.csv",
        size=size, path_column=path_column, label_column=label_column, csv=csv,
    )


def _fold_filename(name: str, prefix: str, split: str, fold: int) -> str:
    if isinstance(split, str) and split.endswith(".csv"):
        return split
    _check_split(split, ("train", "val", "test"), name)
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 1:
        raise ValueError(f"{name}: fold must be a positive int (RadImageNet has folds 1..5), got {fold!r}")
    return f"{prefix}{split}_fold{fold}.csv"


def _radimagenet_task(
    name: str, folder: str, prefix: str, *, root: PathLike, split: str, fold: int, size: int,
    path_column: Column, label_column: Column,
) -> ClassificationSet:
    filename = _fold_filename(name, prefix, split, fold)
    return _table_set(name, root=root, folder=folder, filename=filename, size=size,
                      path_column=path_column, label_column=label_column)


def thyroid_us(
    *, root: PathLike, split: str = "test", fold: int = 1, size: int = 224,
    path_column: Column = 0, label_column: Column = 1,
) -> ClassificationSet:
    """Thyroid nodule ultrasound (DDTI via RadImageNet), benign vs malignant.

    Args:
        root: folder holding ``thyroid_us/`` (``thyroid_test_fold1.csv``, ``images/``), or that folder.
        split: ``"test"``, ``"train"``, ``"val"`` (file ``thyroid_{split}_fold{fold}.csv``) or a CSV file name.
        fold: RadImageNet fold 1..5 (UniMed-CLIP evaluates on fold 1's test table).
        size: output height = width.
        path_column, label_column: name or 0-based position (real columns: ``img_dir``, ``label``).
    """
    return _radimagenet_task("thyroid_us", "thyroid_us", "thyroid_", root=root, split=split, fold=fold,
                             size=size, path_column=path_column, label_column=label_column)


def breast_us(
    *, root: PathLike, split: str = "test", fold: int = 1, size: int = 224,
    path_column: Column = 0, label_column: Column = 1,
) -> ClassificationSet:
    """Breast ultrasound (BUSI via RadImageNet), benign (incl. BUSI *normal*) vs malignant.

    Args:
        root: folder holding ``breast_us/`` (``breast_test_fold1.csv``, ``images/``), or that folder.
        split: ``"test"``, ``"train"``, ``"val"`` (file ``breast_{split}_fold{fold}.csv``) or a CSV file name.
        fold: RadImageNet fold 1..5.
        size: output height = width.
        path_column, label_column: name or 0-based position (real columns: ``filename``, ``label``).
    """
    return _radimagenet_task("breast_us", "breast_us", "breast_", root=root, split=split, fold=fold,
                             size=size, path_column=path_column, label_column=label_column)


def acl_mri(
    *, root: PathLike, split: str = "test", fold: int = 1, size: int = 224,
    path_column: Column = 0, label_column: Column = 1,
) -> ClassificationSet:
    """ACL tear on sagittal knee MRI slices (MRNet via RadImageNet), normal vs ACL tear.

    Args:
        root: folder holding ``acl_mri/`` (``test_fold1.csv``, ``images/``), or that folder.
        split: ``"test"``, ``"train"``, ``"val"`` (file ``{split}_fold{fold}.csv``) or a CSV file name.
        fold: RadImageNet fold 1..5.
        size: output height = width.
        path_column, label_column: name or 0-based position (real columns: ``filename``, ``acl_label``).
    """
    return _radimagenet_task("acl_mri", "acl_mri", "", root=root, split=split, fold=fold,
                             size=size, path_column=path_column, label_column=label_column)


def meniscus_mri(
    *, root: PathLike, split: str = "test", fold: int = 1, size: int = 224,
    path_column: Column = 0, label_column: Column = 1,
) -> ClassificationSet:
    """Meniscal tear on sagittal knee MRI slices (MRNet via RadImageNet), normal vs meniscal tear.

    Args:
        root: folder holding ``meniscal_mri/`` (``meniscus_test_fold1.csv``, ``images/``), or that folder.
        split: ``"test"``, ``"train"``, ``"val"`` (file ``meniscus_{split}_fold{fold}.csv``) or a CSV file name.
        fold: RadImageNet fold 1..5.
        size: output height = width.
        path_column, label_column: name or 0-based position (real columns: ``img_dir``, ``label``).
    """
    return _radimagenet_task("meniscus_mri", "meniscal_mri", "meniscus_", root=root, split=split, fold=fold,
                             size=size, path_column=path_column, label_column=label_column)


def _medimeta_organs(
    view: str, *, root: PathLike, split: str, size: int, path_column: Column = "filepath",
    label_column: Column = "tasks/organ label", split_column: str = "split",
) -> ClassificationSet:
    name = f"medimeta_organs_{view}"
    _check_split(split, ("train", "val", "test"), name)
    table, base = _find_table(root, f"organs_{view}", "annotations.csv", what=name)
    frame = _read_csv(table, what=name)
    splits = _column(frame, split_column, table, role="split").str.strip()
    chosen = frame[(splits == split).to_numpy()].reset_index(drop=True)
    if chosen.empty:
        raise ValueError(f"{table}: no rows with {split_column} == {split!r}; found splits {sorted(set(splits))}")
    paths = _paths(_column(chosen, path_column, table, role="image path"), base, table, path_column)
    labels = _map_labels(_column(chosen, label_column, table, role="label"), _LABEL_VALUES["medimeta_organs"],
                         table, label_column)
    return ClassificationSet(name=name, classes=EVAL_SET_CLASSES[name], paths=paths, labels=labels, size=size)


def medimeta_organs_axial(*, root: PathLike, split: str = "test", size: int = 224) -> ClassificationSet:
    """MedIMeta axial CT organ slices (LiTS), 11 organs; ``root`` holds ``organs_axial/annotations.csv``.

    ``split`` is ``"train"``, ``"val"`` or ``"test"`` (the ``split`` column of ``annotations.csv``).
    """
    return _medimeta_organs("axial", root=root, split=split, size=size)


def medimeta_organs_coronal(*, root: PathLike, split: str = "test", size: int = 224) -> ClassificationSet:
    """MedIMeta coronal CT organ slices (LiTS), 11 organs; ``root`` holds ``organs_coronal/annotations.csv``."""
    return _medimeta_organs("coronal", root=root, split=split, size=size)


def medimeta_organs_sagittal(*, root: PathLike, split: str = "test", size: int = 224) -> ClassificationSet:
    """MedIMeta sagittal CT organ slices (LiTS), 11 organs; ``root`` holds ``organs_sagittal/annotations.csv``."""
    return _medimeta_organs("sagittal", root=root, split=split, size=size)


EVAL_SETS: dict[str, Callable[..., ClassificationSet]] = {
    "chexpert_5x200": chexpert_5x200,
    "rsna_pneumonia": rsna_pneumonia,
    "thyroid_us": thyroid_us,
    "breast_us": breast_us,
    "acl_mri": acl_mri,
    "meniscus_mri": meniscus_mri,
    "medimeta_organs_axial": medimeta_organs_axial,
    "medimeta_organs_coronal": medimeta_organs_coronal,
    "medimeta_organs_sagittal": medimeta_organs_sagittal,
}
"""Loader of every set, by name (the column order of MedMoE's Table 1)."""


def build_eval_set(name: str, *, root: PathLike, split: str = "test", size: int = 224) -> ClassificationSet:
    """Load the set ``name`` (a key of :data:`EVAL_SETS`) with the loader's defaults otherwise.

    Raises:
        ValueError: unknown ``name``; the message lists the known names.

    Example:
        >>> build_eval_set("chexpert-5x200", root=".")
        Traceback (most recent call last):
        ...
        ValueError: unknown evaluation set 'chexpert-5x200'; known sets: acl_mri, breast_us, chexpert_5x200, ...
    """
    if name not in EVAL_SETS:
        raise ValueError(f"unknown evaluation set {name!r}; known sets: {', '.join(sorted(EVAL_SETS))}")
    return EVAL_SETS[name](root=root, split=split, size=size)


# --------------------------------------------------------------------------------------------------
# Label subsampling for linear probes
# --------------------------------------------------------------------------------------------------


def subsample_labels(labels: Sequence[int], fraction: float, seed: int = 0) -> list[int]:
    """Indices of a stratified fraction of the labelled samples (linear probing with 1 % / 10 % / 100 %).

    For every class with ``n`` samples, ``max(1, round(fraction * n))`` of them (half rounds up) are kept,
    drawn without replacement; so every class present in ``labels`` keeps at least one example. The draw
    is deterministic for a seed, and for one seed the subsets are nested: the 1 % indices are contained in
    the 10 % ones (each class is shuffled once, then a prefix is taken).

    Args:
        labels: the label of every sample (ints).
        fraction: in (0, 1]; ``1`` returns every index.
        seed: seed of the shuffle.

    Returns:
        The chosen indices, sorted.

    Raises:
        ValueError: ``fraction`` outside (0, 1] or not a number; ``labels`` empty.

    Example:
        >>> labels = [0] * 100 + [1] * 10
        >>> chosen = subsample_labels(labels, 0.1, seed=0)
        >>> len(chosen), sum(labels[i] for i in chosen)   # 10 of class 0, 1 of class 1
        (11, 1)
        >>> set(subsample_labels(labels, 0.01, seed=0)) <= set(chosen)
        True
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    array = np.asarray(labels)
    if array.size == 0:
        raise ValueError("labels is empty; nothing to subsample")
    if array.ndim != 1:
        raise ValueError(f"labels must be one label per sample (1-D), got shape {array.shape}")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for value in np.unique(array):
        members = np.flatnonzero(array == value)
        keep = min(len(members), max(1, math.floor(float(fraction) * len(members) + 0.5)))
        chosen.extend(rng.permutation(members)[:keep].tolist())
    return sorted(int(i) for i in chosen)


# --------------------------------------------------------------------------------------------------
# Fixtures in the real layouts (the chapter's rehearsal, tests)
# --------------------------------------------------------------------------------------------------

_CHEXPERT_ALL_COLUMNS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)

# set -> (folder, table name per split ({split} filled in), path column, label column, raw value of each class)
_RADIMAGENET_LAYOUT = {
    "thyroid_us": ("thyroid_us", "thyroid_{split}_fold1.csv", "img_dir", "label", ("benign", "malignant")),
    "breast_us": ("breast_us", "breast_{split}_fold1.csv", "filename", "label", ("benign", "malignant")),
    "acl_mri": ("acl_mri", "{split}_fold1.csv", "filename", "acl_label", ("no", "yes")),
    "meniscus_mri": ("meniscal_mri", "meniscus_{split}_fold1.csv", "img_dir", "label", ("n", "p")),
}


def _fixture_image(path: Path, label: int, index: int, size: int, *, tiff: bool = False) -> None:
    """A grey 8-bit image whose brightness and stripe depend on the class (so the sets are learnable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1000 * label + index)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    grey = 0.3 * np.add.outer(ramp, ramp) / 2 + 0.4 * ((np.arange(size) // max(1, size // 8)) % (label + 2) == 0)
    grey = np.clip(grey + 0.05 * label + 0.05 * rng.standard_normal((size, size)), 0, 1)
    Image.fromarray((grey * 255).astype(np.uint8)).save(path, format="TIFF" if tiff else None)


def write_eval_fixtures(root: PathLike, *, sets: Sequence[str] | None = None, n_per_class: int = 2,
                        image_size: int = 28, medimeta_root: PathLike | None = None) -> Path:
    """Write tiny evaluation sets in the real layouts that :func:`build_eval_set` reads (the rehearsal, tests).

    ``root`` receives what UniMed-CLIP's evaluation zip unpacks to: ``chexpert/chexpert-5x200.csv`` (unnamed index,
    ``imgpath``, the 14 CheXpert columns, ``Report Impression``) with ``CheXpert-v1.0-small/...jpg`` images,
    ``rsna_custom_test_set/RSNA_pneumonia_balanced_testfile.csv`` (path and label in columns 1 and 2), the four
    RadImageNet task folders with ``train`` / ``val`` / ``test`` tables of fold 1 and ``images/``, and MedIMeta's
    ``organs_<view>/annotations.csv`` + ``images/000000.tiff`` (in ``medimeta_root`` when given, as
    ``python data_scripts/fetch.py medimeta_organs`` lays them out). ``n_per_class`` images of every class per split.

    Returns:
        ``root``.

    Example:
        >>> import tempfile
        >>> root = write_eval_fixtures(tempfile.mkdtemp(), sets=["acl_mri"])
        >>> ds = build_eval_set("acl_mri", root=root, split="train", size=16)
        >>> len(ds), ds.class_counts()
        (4, [2, 2])
    """
    root = Path(root)
    names = list(EVAL_SETS) if sets is None else list(sets)
    unknown = [n for n in names if n not in EVAL_SETS]
    if unknown:
        raise ValueError(f"unknown evaluation set(s) {unknown}; known sets: {', '.join(sorted(EVAL_SETS))}")
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
    for name in names:
        n_cls = len(EVAL_SET_CLASSES[name])
        items = [(c, i) for c in range(n_cls) for i in range(n_per_class)]
        if name == "chexpert_5x200":
            folder, rows = root / "chexpert", []
            for k, (c, i) in enumerate(items):
                imgpath = f"CheXpert-v1.0-small/train/patient{k:05d}/study1/view1_frontal.jpg"
                _fixture_image(folder / imgpath, c, i, image_size)
                row = {"imgpath": imgpath, "Sex": "Female", "Age": 60, "Frontal/Lateral": "Frontal", "AP/PA": "AP"}
                row.update({col: 0.0 for col in _CHEXPERT_ALL_COLUMNS})
                row[CHEXPERT_5X200_COLUMNS[c]] = 1.0
                row["Report Impression"] = f"\n1. {EVAL_SET_CLASSES[name][c]}.\n"
                rows.append(row)
            pd.DataFrame(rows).to_csv(folder / "chexpert-5x200.csv")  # unnamed index column, as the real file
        elif name == "rsna_pneumonia":
            folder = root / "rsna_custom_test_set"
            for c, i in items:
                _fixture_image(folder / "images" / f"rsna-{c}-{i:03d}.png", c, i, image_size)
            pd.DataFrame({"patientId": [f"rsna-{c}-{i:03d}" for c, i in items],
                          "path": [f"images/rsna-{c}-{i:03d}.png" for c, i in items],
                          "Target": [c for c, _ in items]}).to_csv(folder / "RSNA_pneumonia_balanced_testfile.csv",
                                                                   index=False)
        elif name in _RADIMAGENET_LAYOUT:
            sub, table, path_col, label_col, values = _RADIMAGENET_LAYOUT[name]
            folder = root / sub
            for split in ("train", "val", "test"):
                paths = [f"images/{split}_{c}_{i:03d}.png" for c, i in items]
                for (c, i), rel in zip(items, paths):
                    _fixture_image(folder / rel, c, i + 100 * len(split), image_size)
                pd.DataFrame({path_col: paths, label_col: [values[c] for c, _ in items]}).to_csv(
                    folder / table.format(split=split), index=False)
        else:  # medimeta_organs_<view>
            view = name.rsplit("_", 1)[-1]
            folder = Path(medimeta_root or root) / f"organs_{view}"
            rows = []
            for split in ("train", "val", "test"):
                for c, i in items:
                    rel = f"images/{len(rows):06d}.tiff"
                    _fixture_image(folder / rel, c, i + 100 * len(split), image_size, tiff=True)
                    rows.append({"filepath": rel, "split": split, "tasks/organ label": c,
                                 "original_filepath": f"volume-{len(rows)}.nii", "original_split": "train",
                                 "organ label": ORGAN_CLASSES[c]})
            pd.DataFrame(rows).to_csv(folder / "annotations.csv", index=False)
    return root
