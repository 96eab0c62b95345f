"""The CLIP-Driven Universal Model's data conventions (32-class template, dataset lists, label transfer) and the
chapter's task datasets.

Explained in the book: *Chapter 4, MoME* (``chapters/04_mome``), sections 1 "Partially labelled data" and 3
"Training: one backbone, two heads". MoME's "10 datasets, 3,410 CT scans" are, as far as public material
shows, the collection of the CLIP-Driven Universal Model (Liu et al., ICCV 2023; repository
``ljwztc/CLIP-Driven-Universal-Model``), so :class:`UniversalDataset` reads that collection the way its code does.
The quick profile's phantoms (:class:`PhantomCT`, on :class:`medmoe.data.phantoms.PhantomVolumeDataset`) express
the same partial labels with ids, turned into the same multi-label targets by :func:`partial_label_target`;
:class:`RandomPatches` draws the training crops of either.

**Template and indexing.** :data:`UNIVERSAL_CLASSES` lists the 32 classes in the reference order
(``utils/utils.py: ORGAN_NAME``). The reference numbers them 1..32 (*template ids*, used in its
``TEMPLATE`` and transfer tables, kept 1-based here in :data:`TEMPLATE` and :data:`LABEL_TRANSFER` so they
can be checked against it line by line); tensors use **0-based channels**: channel ``c`` is template id
``c + 1`` and ``UNIVERSAL_CLASSES[c]``. There is no background channel (one sigmoid per class).

**Dataset lists.** One case per line, ``image<TAB>label``, both relative to a data root
(``dataset/dataset_list/*.txt`` in the reference), for example::

    09_AMOS/img/amos_0004.nii.gz<TAB>09_AMOS/label/amos_0004.nii.gz
    10_Decathlon/Task03_Liver/imagesTr/liver_14.nii.gz<TAB>10_Decathlon/Task03_Liver/labelsTr/liver_14.nii.gz

The dataset id comes from the first folder (``"09"``), and for the Decathlon from the task folder too
(``"10_03"``): the reference (``utils.utils.get_key``) slices characters ``[0:2]`` and, for ``10``,
``[17:19]`` of the path, which is the same thing for ``10_Decathlon/TaskNN_...``.

**Label transfer** (:func:`transfer_label`): an original label value maps to one or more template
channels. Facts confirmed in the reference repository (``label_transfer.py``, ``utils/utils.py``):

* the per-dataset transfer lists (original value ``v`` -> ``TEMPLATE[key][v - 1]``, ``0`` = dropped);
* **organs include their lesions**: for LiTS (``04``), KiTS (``05``), MSD liver (``10_03``) and MSD
  pancreas (``10_07``) the tumour (and KiTS cyst) voxels are first relabelled as the organ
  (``ToTemplatelabel`` with ``POST_TUMOR_DICT``), and the lesion channel is then taken from the raw label
  (``generate_label``); so "Liver" is liver + liver tumour, "Kidney" is kidney + tumour + cyst. The MSD
  hepatic-vessel task (``10_08``) is **not** in that list: its vessel channel excludes the tumour;
* **left/right splitting** (``RL_Splitd``): datasets that label both kidneys (``05``, ``08``, ``13``, ``12``),
  both lungs (``12``) or both adrenal glands (``07``) with one value are split after orientation to RAS:
  of the two largest 26-connected components, the one with the smaller mean first-axis (RAS x) index
  becomes the *left* organ (template id + 1), everything else stays the *right* organ. A single
  component stays right (the reference compares with the mean of an empty array, which is ``nan``);
* ``TEMPLATE`` (``utils/utils.py``), the classes each dataset supervises; everything else is unlabelled
  (ignored by the partial-label loss).

Deviations and unverifiable points, stated rather than guessed:

* ``06`` (3D-IRCADb in the reference README) has a ``TEMPLATE`` entry but no transfer list in
  ``label_transfer.py``; its transfer here is the inverse of ``MERGE_MAPPING_v2['06']`` (how the reference
  writes predictions back to original values), never used in the reference's published lists.
* ``01_2`` (never produced by the key rule) and ``14`` (private data; its ``POST_TUMOR_DICT`` entry is
  missing in the reference) are left out.
* ``15`` is TotalSegmentator: the reference's ``TEMPLATE['15']`` is ids 1..17 with a "total segmentation"
  comment and no transfer list; TotalSegmentator v2 has no hepatic-vessel structure (id 15), so ``15``
  here lists the template classes it does have (see :data:`TOTALSEG_STRUCTURES`), written by
  :mod:`medmoe.papers.mome.prepare` (``data_scripts/prepare_universal.py``) as a label map whose values are
  template ids (left kidney cyst: 33).
* The reference transfers labels and splits left/right **before** resampling (``label_transfer.py``
  stores the result as ``post_label`` .h5 files); here it is done on the resampled, cropped id map, so
  the two agree up to nearest-neighbour resampling. Values a dataset's transfer list does not know (for
  example 255 in a 0/255 mask) raise ``ValueError`` instead of being dropped silently.
* CHAOS (``03``) labels are assumed to be 0/1 NIfTI files (the reference's converted
  ``03_CHAOS/ct/liver_label/*_segmentation.nii.gz``; its conversion script is not public).

Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> lst = write_universal_fixture(root, datasets=("09", "10_03"), cases_per_dataset=1, size=12)
    >>> [(c.dataset, c.name) for c in parse_dataset_list(lst)]
    [('09', '09_AMOS/label/amos_0000'), ('10_03', '10_Decathlon/Task03_Liver/labelsTr/liver_0')]
    >>> ds = UniversalDataset(root=root, list_file=lst)
    >>> item = ds[1]
    >>> tuple(item["image"].shape), tuple(item["label"].shape), int(item["labelled"].sum())
    ((1, 10, 10, 10), (32, 10, 10, 10), 2)
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    RandCropByPosNegLabeld,
    RandRotate90d,
    RandShiftIntensityd,
    RandZoomd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from scipy import ndimage
from torch.utils.data import Dataset

from medmoe.data.phantoms import CLASSES_3D, PhantomVolumeDataset

__all__ = [
    "UNIVERSAL_CLASSES", "NUM_UNIVERSAL_CLASSES", "TEMPLATE", "LABEL_TRANSFER", "IGNORED_VALUES",
    "LEFT_RIGHT_SPLIT", "REFERENCE_FOLDERS", "TOTALSEG_STRUCTURES", "PHANTOM_CONTAINS", "UniversalCase",
    "UniversalDataset", "PhantomCT", "RandomPatches", "ZOOM_DATASETS", "dataset_id", "labelled_channels",
    "parse_dataset_list",
    "partial_label_target", "preprocessing", "split_left_right", "transfer_label", "write_dataset_list",
    "write_universal_fixture",
]

UNIVERSAL_CLASSES: tuple[str, ...] = (
    "Spleen", "Right Kidney", "Left Kidney", "Gall Bladder", "Esophagus",
    "Liver", "Stomach", "Aorta", "Postcava", "Portal Vein and Splenic Vein",
    "Pancreas", "Right Adrenal Gland", "Left Adrenal Gland", "Duodenum", "Hepatic Vessel",
    "Right Lung", "Left Lung", "Colon", "Intestine", "Rectum",
    "Bladder", "Prostate", "Left Head of Femur", "Right Head of Femur", "Celiac Truck",
    "Kidney Tumor", "Liver Tumor", "Pancreas Tumor", "Hepatic Vessel Tumor", "Lung Tumor", "Colon Tumor",
    "Kidney Cyst",
)
"""The 32 template classes, reference order and spelling (``ORGAN_NAME``; "Celiac Truck" sic, the README
table says "Celiac Trunk"). Channel ``c`` (0-based) is template id ``c + 1``."""

NUM_UNIVERSAL_CLASSES = len(UNIVERSAL_CLASSES)

TEMPLATE: dict[str, tuple[int, ...]] = {
    "01": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14),
    "02": (1, 3, 4, 5, 6, 7, 11, 14),
    "03": (6,),
    "04": (6, 27),
    "05": (2, 3, 26, 32),
    "06": (1, 2, 3, 4, 6, 7, 11, 16, 17),
    "07": (6, 1, 3, 2, 7, 4, 5, 11, 14, 18, 19, 12, 13, 20, 21, 23, 24),
    "08": (6, 2, 3, 1, 11),
    "09": (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 21, 22),
    "10_03": (6, 27),
    "10_06": (30,),
    "10_07": (11, 28),
    "10_08": (15, 29),
    "10_09": (1,),
    "10_10": (31,),
    "12": (6, 21, 16, 17, 2, 3),
    "13": (6, 2, 3, 1, 11, 8, 9, 7, 4, 5, 12, 13, 25),
    "15": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 21, 22, 32),
}
"""Dataset id -> the template ids (1-based) it labels, as ``utils/utils.py: TEMPLATE`` (``15``: see the
module docstring)."""


def _identity(ids: Iterable[int]) -> dict[int, tuple[int, ...]]:
    return {i: (i,) for i in ids}


LABEL_TRANSFER: dict[str, dict[int, tuple[int, ...]]] = {
    "01": _identity(range(1, 15)),  # BTCV
    "02": {1: (1,), 3: (3,), 4: (4,), 5: (5,), 6: (6,), 7: (7,), 11: (11,), 14: (14,)},  # Pancreas-CT
    "03": {1: (6,)},  # CHAOS CT
    "04": {1: (6,), 2: (6, 27)},  # LiTS
    "05": {1: (2,), 2: (2, 26), 3: (2, 32)},  # KiTS; kidney 2 split into 2 / 3
    "06": {1: (1,), 2: (2,), 3: (3,), 4: (4,), 5: (6,), 6: (7,), 7: (11,), 8: (16,), 9: (17,)},
    "07": {1: (6,), 2: (1,), 3: (3,), 4: (2,), 5: (7,), 6: (4,), 7: (5,), 8: (11,), 9: (14,), 10: (18,),
           11: (19,), 12: (12,), 13: (20,), 14: (21,), 15: (23,), 16: (24,)},  # WORD; adrenal 12 split
    "08": {1: (6,), 2: (2,), 3: (1,), 4: (11,)},  # AbdomenCT-1K; kidney split
    "09": {**_identity(range(1, 10)), 10: (11,), 11: (12,), 12: (13,), 13: (14,), 14: (21,), 15: (22,)},  # AMOS
    "10_03": {1: (6,), 2: (6, 27)},
    "10_06": {1: (30,)},
    "10_07": {1: (11,), 2: (11, 28)},
    "10_08": {1: (15,), 2: (29,)},
    "10_09": {1: (1,)},
    "10_10": {1: (31,)},
    "12": {1: (6,), 2: (21,), 3: (16,), 4: (2,)},  # CT-ORG; lung 16 and kidney 2 split
    "13": {1: (6,), 2: (2,), 3: (1,), 4: (11,), 5: (8,), 6: (9,), 7: (7,), 8: (4,), 9: (5,), 10: (12,),
           11: (13,), 12: (25,)},  # AbdomenCT-12organ; kidney split
    "15": {**_identity(i for i in TEMPLATE["15"] if i != 32), 32: (2, 32), 33: (3, 32)},  # ours
}
"""Dataset id -> {original label value: template ids (1-based)}. Tuples of two are an organ that
includes a lesion plus the lesion itself. Background (0) is never listed."""

IGNORED_VALUES: dict[str, tuple[int, ...]] = {"02": (2, 8, 9, 10, 12, 13), "12": (5, 6)}
"""Original values the reference maps to 0 on purpose (``02``: classes it leaves unlabelled; ``12``:
CT-ORG bones and brain). Any other value missing from :data:`LABEL_TRANSFER` is an error."""

LEFT_RIGHT_SPLIT: dict[str, tuple[int, ...]] = {"05": (2,), "08": (2,), "13": (2,), "07": (12,), "12": (2, 16)}
"""Dataset id -> template ids of *right* organs whose label covers both sides (left = id + 1)."""

REFERENCE_FOLDERS: dict[str, str] = {
    "01": "01_Multi-Atlas_Labeling", "02": "02_TCIA_Pancreas-CT", "03": "03_CHAOS", "04": "04_LiTS",
    "05": "05_KiTS", "07": "07_WORD", "08": "08_AbdomenCT-1K", "09": "09_AMOS",
    "10_03": "10_Decathlon/Task03_Liver", "10_06": "10_Decathlon/Task06_Lung",
    "10_07": "10_Decathlon/Task07_Pancreas", "10_08": "10_Decathlon/Task08_HepaticVessel",
    "10_09": "10_Decathlon/Task09_Spleen", "10_10": "10_Decathlon/Task10_Colon",
    "12": "12_CT-ORG", "13": "13_AbdomenCT-12organ", "15": "15_TotalSegmentator",
}
"""Dataset folder under the data root, as in the reference's lists (``15_TotalSegmentator`` is ours; the
reference lists show no folder for ``06``). Images and labels sit in ``img/`` and ``label/`` (the
Decathlon keeps ``imagesTr/`` and ``labelsTr/``)."""

TOTALSEG_STRUCTURES: dict[int, tuple[str, ...]] = {
    1: ("spleen",), 2: ("kidney_right",), 3: ("kidney_left",), 4: ("gallbladder",), 5: ("esophagus",),
    6: ("liver",), 7: ("stomach",), 8: ("aorta",), 9: ("inferior_vena_cava",),
    10: ("portal_vein_and_splenic_vein",), 11: ("pancreas",), 12: ("adrenal_gland_right",),
    13: ("adrenal_gland_left",), 14: ("duodenum",),
    16: ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    17: ("lung_upper_lobe_left", "lung_lower_lobe_left"), 18: ("colon",), 19: ("small_bowel",),
    21: ("urinary_bladder",), 22: ("prostate",), 32: ("kidney_cyst_right",), 33: ("kidney_cyst_left",),
}
"""Label value of the ``15`` label map -> TotalSegmentator v2 structure files merged into it (names from
``wasserth/TotalSegmentator`` ``map_to_binary.py``, class map ``total``). ``femur_left/right`` are whole
femurs, not femoral heads, so ids 23/24 are not labelled. Cysts are written last, over the kidneys."""

PHANTOM_CONTAINS: dict[str, tuple[str, ...]] = {"liver": ("liver tumour",)}
"""The union rule for the 3D phantoms (:data:`medmoe.data.phantoms.CLASSES_3D`): the liver channel
includes the liver tumour, as the reference's liver includes the liver tumour."""

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


# --------------------------------------------------------------------------------------------------
# Dataset ids, lists
# --------------------------------------------------------------------------------------------------


def dataset_id(path: str) -> str:
    """The dataset id of a list entry: ``"01_Multi-Atlas_Labeling/..."`` -> ``"01"``,
    ``"10_Decathlon/Task03_Liver/..."`` -> ``"10_03"``.

    Raises:
        ValueError: the first folder does not start with two digits and ``_``, a ``10_`` path has no
            ``TaskNN_`` folder, or the id is not in :data:`TEMPLATE`.

    Example:
        >>> dataset_id("10_Decathlon/Task07_Pancreas/imagesTr/pancreas_290.nii.gz")
        '10_07'
    """
    parts = PurePosixPath(path.replace("\\", "/")).parts
    head = re.match(r"(\d\d)_", parts[0]) if parts else None
    if head is None:
        raise ValueError(f"cannot derive a dataset id from {path!r}: the first folder must start with two "
                         "digits and '_' (e.g. '09_AMOS/...')")
    key = head.group(1)
    if key == "10":
        task = re.match(r"Task(\d\d)_", parts[1]) if len(parts) > 2 else None
        if task is None:
            raise ValueError(f"cannot derive a Decathlon dataset id from {path!r}: expected "
                             "'10_Decathlon/TaskNN_<name>/...'")
        key = f"10_{task.group(1)}"
    if key not in TEMPLATE:
        raise ValueError(f"unknown dataset id {key!r} (from {path!r}); known ids: {', '.join(TEMPLATE)}")
    return key


def labelled_channels(dataset: str) -> torch.Tensor:
    """``(32,)`` bool: True for the 0-based channels dataset ``dataset`` supervises.

    Example:
        >>> labelled_channels("10_03").nonzero().flatten().tolist()
        [5, 26]
    """
    if dataset not in TEMPLATE:
        raise ValueError(f"unknown dataset id {dataset!r}; known ids: {', '.join(TEMPLATE)}")
    out = torch.zeros(NUM_UNIVERSAL_CLASSES, dtype=torch.bool)
    out[[i - 1 for i in TEMPLATE[dataset]]] = True
    return out


@dataclass(frozen=True)
class UniversalCase:
    """One line of a dataset list: relative ``image`` and ``label`` paths, ``dataset`` id, ``name`` (the label
    path without its extension, the reference's case name) and the 1-based ``line`` number."""

    image: str
    label: str
    dataset: str
    name: str
    line: int


def _strip_nifti(path: str) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _check_entry(path: str, where: str) -> None:
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"{where}: paths must be relative to the data root without '..', got {path!r}")


def parse_dataset_list(path: str | os.PathLike[str]) -> list[UniversalCase]:
    """Read a dataset list (``image<TAB>label`` per line, paths relative to the data root).

    Blank lines are skipped. Like the reference, fields are split on whitespace, so paths cannot contain
    spaces.

    Raises:
        FileNotFoundError: the list file does not exist.
        ValueError: a line without exactly two fields, an absolute path, a path with an unknown dataset
            id, or an image and label from different datasets (the message names file and line).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "l.txt"
        >>> _ = p.write_text("09_AMOS/img/amos_0004.nii.gz\\t09_AMOS/label/amos_0004.nii.gz\\n")
        >>> parse_dataset_list(p)[0].dataset
        '09'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset list not found: {path}")
    cases = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}, line {number}"
        fields = raw.split()
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'image<TAB>label' (two paths relative to the data root), "
                             f"got {len(fields)} field(s): {raw.strip()!r}")
        image, label = fields
        for p in fields:
            _check_entry(p, where)
        try:
            key, label_key = dataset_id(image), dataset_id(label)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if key != label_key:
            raise ValueError(f"{where}: image {image!r} is from dataset {key!r} but label {label!r} from {label_key!r}")
        cases.append(UniversalCase(image=image, label=label, dataset=key, name=_strip_nifti(label), line=number))
    return cases


def write_dataset_list(root: str | os.PathLike[str], list_name: str,
                       pairs: Iterable[tuple[str, str]]) -> Path:
    """Write ``root/list_name`` in the reference format (atomically: temporary file, then rename).

    Args:
        root: folder for the list (the reference keeps them in ``dataset/dataset_list/``).
        list_name: file name, e.g. ``"universal_train.txt"``.
        pairs: ``(image, label)`` paths relative to the data root, POSIX separators.

    Raises:
        ValueError: a path that is absolute, contains whitespace, or has no known dataset id.

    Example:
        >>> import tempfile
        >>> p = write_dataset_list(tempfile.mkdtemp(), "a.txt", [("09_AMOS/img/x.nii.gz", "09_AMOS/label/x.nii.gz")])
        >>> p.read_text()
        '09_AMOS/img/x.nii.gz\\t09_AMOS/label/x.nii.gz\\n'
    """
    folder = Path(root)
    if not list_name or "/" in list_name or "\\" in list_name:
        raise ValueError(f"list_name must be a file name, got {list_name!r}")
    lines = []
    for image, label in pairs:
        for p in (image, label):
            if not p or any(ch.isspace() for ch in p):
                raise ValueError(f"dataset-list paths cannot be empty or contain whitespace, got {p!r}")
            _check_entry(p, f"entry for {list_name}")
            dataset_id(p)
        lines.append(f"{image}\t{label}\n")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / list_name
    fd, tmp = tempfile.mkstemp(prefix=f".{list_name}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# --------------------------------------------------------------------------------------------------
# Label transfer
# --------------------------------------------------------------------------------------------------


def split_left_right(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a both-sides mask ``(X, Y, Z)`` in RAS voxel order into ``(right, left)``.

    The reference rule (``label_transfer.py: rl_split``): of the two largest 26-connected components, the
    one with the smaller mean index along the first axis (RAS x: towards the patient's left) is the left
    organ; every other voxel stays right (so a single component is right).

    Example:
        >>> m = np.zeros((8, 3, 3), bool); m[0:2] = True; m[5:8] = True
        >>> right, left = split_left_right(m)
        >>> np.flatnonzero(left.any(axis=(1, 2))).tolist(), np.flatnonzero(right.any(axis=(1, 2))).tolist()
        ([0, 1], [5, 6, 7])
    """
    mask = np.asarray(mask, dtype=bool)
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    left = np.zeros_like(mask)
    if n >= 2:
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
        first, second = (int(i) + 1 for i in np.argsort(-sizes, kind="stable")[:2])
        x = np.arange(mask.shape[0]).reshape(-1, *([1] * (mask.ndim - 1)))
        means = [np.broadcast_to(x, mask.shape)[components == c].mean() for c in (first, second)]
        left = components == (first if means[0] < means[1] else second)
    return mask & ~left, left


def transfer_label(label: np.ndarray | torch.Tensor, dataset: str, *, source: str = "the label") -> np.ndarray:
    """Original label values ``(X, Y, Z)`` (RAS voxel order) -> binary template targets ``(32, X, Y, Z)``.

    Applies :data:`LABEL_TRANSFER` (an organ channel includes its lesions where the reference does so),
    then the left/right split of :data:`LEFT_RIGHT_SPLIT`. Channels outside ``TEMPLATE[dataset]`` are
    all zero; use :func:`labelled_channels` to know which zeros mean "absent" rather than "unknown".

    Args:
        label: integer-valued array (floats are rounded).
        dataset: a key of :data:`TEMPLATE`.
        source: what to call the label in error messages (a file name).

    Raises:
        ValueError: a value that is neither background, in the dataset's transfer list nor in
            :data:`IGNORED_VALUES` (e.g. 255 in a 0/255 mask).

    Example:
        >>> lab = np.zeros((4, 4, 4), np.uint8); lab[1:3, 1:3, 1:3] = 1; lab[1, 1, 1] = 2
        >>> out = transfer_label(lab, "10_03")
        >>> int(out[5].sum()), int(out[26].sum())   # Liver (with the tumour), Liver Tumor
        (8, 1)
    """
    if dataset not in LABEL_TRANSFER:
        raise ValueError(f"unknown dataset id {dataset!r}; known ids: {', '.join(LABEL_TRANSFER)}")
    values = np.rint(label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label))
    values = values.astype(np.int64)
    table = LABEL_TRANSFER[dataset]
    found = {int(v) for v in np.unique(values)}
    unknown = sorted(found - set(table) - set(IGNORED_VALUES.get(dataset, ())) - {0})
    if unknown:
        raise ValueError(f"{source} (dataset {dataset!r}) holds label values {unknown} that the dataset's "
                         f"transfer list does not know; expected 0 and {sorted(table)}")
    out = np.zeros((NUM_UNIVERSAL_CLASSES, *values.shape), dtype=bool)
    for value, ids in table.items():
        if value in found:
            hit = values == value
            for template_id in ids:
                out[template_id - 1] |= hit
    for right_id in LEFT_RIGHT_SPLIT.get(dataset, ()):
        right, left = split_left_right(out[right_id - 1])
        out[right_id - 1], out[right_id] = right, out[right_id] | left
    return out


def partial_label_target(
    label: np.ndarray | torch.Tensor,
    *,
    classes: Sequence[str] | None = None,
    labelled: np.ndarray | torch.Tensor | None = None,
    contains: Mapping[str, Sequence[str]] = PHANTOM_CONTAINS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phantom id volume(s) -> multi-label targets in the same convention as :class:`UniversalDataset`.

    Args:
        label: ``(D, H, W)`` or ``(B, D, H, W)`` ids into ``classes`` (index 0 is background), as
            :class:`medmoe.data.phantoms.PhantomVolumeDataset` returns them.
        classes: the id names; default :data:`medmoe.data.phantoms.CLASSES_3D`.
        labelled: ``(len(classes),)`` or ``(B, len(classes))`` bool (the phantom item's ``labelled``,
            background first); default all True.
        contains: organ -> the classes inside it; the organ's channel is their union (the reference's
            liver includes the liver tumour).

    Returns:
        ``(target, labelled)``: ``target`` float32 ``(C, D, H, W)`` (or ``(B, C, D, H, W)``) in {0, 1} with
        ``C = len(classes) - 1`` (background dropped; channel ``c`` is ``classes[c + 1]``), and ``labelled``
        bool ``(C,)`` (or ``(B, C)``).

    Example:
        >>> lab = torch.tensor([[[0, 1, 6]]])          # background, liver, liver tumour
        >>> target, flags = partial_label_target(lab)
        >>> target[:, 0, 0].tolist()[0], target[:, 0, 0].tolist()[5]   # liver, liver tumour channels
        ([0.0, 1.0, 1.0], [0.0, 0.0, 1.0])
    """
    if classes is None:
        classes = CLASSES_3D
    classes = tuple(classes)
    ids = torch.as_tensor(label).long()
    if ids.ndim not in (3, 4):
        raise ValueError(f"label must be (D, H, W) or (B, D, H, W), got shape {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(classes)):
        raise ValueError(f"label ids must lie in [0, {len(classes) - 1}] (ids into {classes}), "
                         f"got [{int(ids.min())}, {int(ids.max())}]")
    channel_dim = 0 if ids.ndim == 3 else 1
    channels = []
    for name in classes[1:]:
        members = [classes.index(name)] + [classes.index(inner) for inner in contains.get(name, ()) if inner in classes]
        channels.append(torch.isin(ids, torch.tensor(members)))
    target = torch.stack(channels, dim=channel_dim).float()
    if labelled is None:
        flags = torch.ones(len(classes) - 1, dtype=torch.bool)
        if ids.ndim == 4:
            flags = flags.expand(ids.shape[0], -1).clone()
    else:
        flags = torch.as_tensor(labelled).bool()
        if flags.shape[-1] != len(classes):
            raise ValueError(f"labelled must have {len(classes)} entries (background first), got shape "
                             f"{tuple(flags.shape)}")
        flags = flags[..., 1:].clone()
    return target, flags


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


def _spatial_shape(path: Path) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in nib.load(str(path)).shape)
    except Exception as err:  # nibabel raises several types for broken files
        raise ValueError(f"cannot read the NIfTI header of {path}: {err}") from err
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _loader():
    return Compose([LoadImaged(keys=("image", "label"), reader="NibabelReader", image_only=True),
                    EnsureChannelFirstd(keys=("image", "label"))])


def preprocessing(*, spacing: Sequence[float] = (1.5, 1.5, 1.5),
                  hu_window: tuple[float, float] = (-175.0, 250.0)):
    """The Universal Model's deterministic preprocessing on channel-first ``image`` / ``label`` (MONAI).

    Orientation RAS; spacing ``spacing`` mm (bilinear image, nearest label); HU ``hu_window`` -> [0, 1]
    with clipping; crop to the image's foreground (voxels > 0 after scaling). Random augmentation
    (crops, zoom, rotation, intensity shift) is left to the caller's ``transform``.

    Example:
        >>> len(preprocessing().transforms)
        4
    """
    lo, hi = (float(v) for v in hu_window)
    return Compose([
        Orientationd(keys=("image", "label"), axcodes="RAS", labels=None),  # None: from the meta "space" (RAS)
        Spacingd(keys=("image", "label"), pixdim=tuple(float(s) for s in spacing), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys=("image", "label"), source_key="image", allow_smaller=True),
    ])


class UniversalDataset(Dataset):
    """CT volumes of a dataset list with multi-label targets on the 32-class template.

    Args:
        root: the data root the list's paths are relative to.
        list_file: a dataset list (:func:`parse_dataset_list`); a relative path is taken as given, not
            under ``root``.
        spacing: target voxel size in mm (Universal Model: 1.5 isotropic).
        hu_window: HU range scaled to [0, 1] (Universal Model: -175..250).
        transform: optional callable applied to the finished item dict (e.g. MONAI random crops on
            ``("image", "label")``).
        check_headers: compare image and label shapes from the NIfTI headers at construction (cheap: no
            voxel data is read).

    Items (dict):
        ``image`` float32 ``(1, D, H, W)`` in [0, 1] and ``label`` float32 ``(32, D, H, W)`` in {0, 1}
        (channel ``c`` = :data:`UNIVERSAL_CLASSES` ``[c]``), both on MONAI's RAS voxel axes (D: x towards
        the patient's right, H: y towards anterior, W: z towards superior), resampled and cropped to the
        body; ``labelled`` bool ``(32,)`` (True for ``TEMPLATE[dataset]``); ``dataset`` str; ``name`` str
        (the label path without extension).

    Raises:
        FileNotFoundError: ``root`` or the list is missing, or a listed file does not exist (the message
            names the list, the line and the path).
        ValueError: a malformed list (see :func:`parse_dataset_list`); image and label shapes differ (at
            construction from the headers, or at load time; the message names both files and shapes);
            unknown label values (see :func:`transfer_label`).

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> ds = UniversalDataset(root=root, list_file=write_universal_fixture(root, datasets=("10_09",)))
        >>> item = ds[0]
        >>> item["dataset"], UNIVERSAL_CLASSES[int(item["labelled"].nonzero())], float(item["label"][0].max())
        ('10_09', 'Spleen', 1.0)
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike[str],
        list_file: str | os.PathLike[str],
        spacing: Sequence[float] = (1.5, 1.5, 1.5),
        hu_window: tuple[float, float] = (-175.0, 250.0),
        transform=None,
        check_headers: bool = True,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root not found: {self.root}")
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}")
        if len(hu_window) != 2 or not hu_window[0] < hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {hu_window!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        self.list_file = Path(list_file)
        self.cases = parse_dataset_list(self.list_file)
        for case in self.cases:
            for what, rel in (("image", case.image), ("label", case.label)):
                if not (self.root / rel).is_file():
                    raise FileNotFoundError(f"{self.list_file}, line {case.line}: {what} file not found: "
                                            f"{self.root / rel}")
            if check_headers:
                image_shape = _spatial_shape(self.root / case.image)
                label_shape = _spatial_shape(self.root / case.label)
                if image_shape != label_shape:
                    raise ValueError(_shape_message(self.root / case.image, image_shape,
                                                    self.root / case.label, label_shape,
                                                    f"{self.list_file}, line {case.line}: "))
        self.spacing = spacing
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.transform = transform
        self._load = _loader()
        self._prepare = preprocessing(spacing=spacing, hu_window=self.hu_window)

    def __len__(self) -> int:
        return len(self.cases)

    def labelled_of(self, index: int) -> torch.Tensor:
        """``(32,)`` bool: the classes case ``index``'s dataset labels, without reading the volume."""
        return labelled_channels(self.cases[index].dataset)

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index]
        image_path, label_path = self.root / case.image, self.root / case.label
        data = self._load({"image": str(image_path), "label": str(label_path)})
        if tuple(data["image"].shape[1:]) != tuple(data["label"].shape[1:]):
            raise ValueError(_shape_message(image_path, tuple(data["image"].shape[1:]), label_path,
                                            tuple(data["label"].shape[1:])))
        data = self._prepare(data)
        image = torch.as_tensor(data["image"]).as_subclass(torch.Tensor).float()
        ids = torch.as_tensor(data["label"]).as_subclass(torch.Tensor)[0]
        if tuple(image.shape[1:]) != tuple(ids.shape):
            raise ValueError(f"after resampling, image {image_path} is {tuple(image.shape[1:])} but label "
                             f"{label_path} is {tuple(ids.shape)}: their affines disagree")
        label = transfer_label(ids, case.dataset, source=str(label_path))
        item = {
            "image": image.contiguous(),
            "label": torch.from_numpy(label).float(),
            "labelled": labelled_channels(case.dataset),
            "dataset": case.dataset,
            "name": case.name,
        }
        return self.transform(item) if self.transform is not None else item


def _shape_message(image: Path, image_shape, label: Path, label_shape, prefix: str = "") -> str:
    return (f"{prefix}image and label have different spatial shapes: image {image} is {tuple(image_shape)}, "
            f"label {label} is {tuple(label_shape)}")


# --------------------------------------------------------------------------------------------------
# The chapter's task datasets: phantom CT and random training patches
# --------------------------------------------------------------------------------------------------


class PhantomCT(Dataset):
    """Partially labelled phantom CT volumes from several sources, as multi-label targets.

    Items: ``image`` ``(1, S, S, S)``, ``label`` ``(C, S, S, S)`` over ``CLASSES_3D[1:]`` with "liver" including
    "liver tumour" (:func:`partial_label_target`, the convention of :class:`UniversalDataset`), ``labelled``
    ``(C,)``, ``source`` str.

    Args:
        sources: keys of :data:`medmoe.data.phantoms.SOURCE_DATASETS`.
        n_per_source: volumes per source.
        size: volume side (>= 32).
        seed: data seed.
        shift: ``(contrast, noise_std)`` applied to the images (``image * contrast + (1 - contrast) / 2`` plus
            Gaussian noise, seeded): a different "scanner" for a held-out source; ``None`` for none.

    Example:
        >>> item = PhantomCT(sources=["kidney"], n_per_source=1, size=32)[0]
        >>> tuple(item["image"].shape), tuple(item["label"].shape), item["source"]
        ((1, 32, 32, 32), (6, 32, 32, 32), 'kidney')
    """

    def __init__(self, *, sources: Sequence[str], n_per_source: int, size: int = 48, seed: int = 0,
                 shift: tuple[float, float] | None = None) -> None:
        if not sources:
            raise ValueError("sources must name at least one source data set")
        self.sources = list(sources)
        self.volumes = [PhantomVolumeDataset(n=n_per_source, source=s, seed=seed, size=size) for s in self.sources]
        self.index = [(v, i) for v in range(len(self.volumes)) for i in range(n_per_source)]
        self.shift, self.seed = shift, seed

    def __len__(self) -> int:
        return len(self.index)

    def labelled_of(self, k: int) -> torch.Tensor:
        """``(C,)`` bool: the classes volume ``k``'s source labels (the item's ``labelled``)."""
        v, _ = self.index[k]
        return torch.as_tensor(self.volumes[v].labelled[1:]).bool()

    def __getitem__(self, k: int) -> dict[str, Any]:
        v, i = self.index[k]
        item = self.volumes[v][i]
        image = item["image"]
        if self.shift is not None:
            contrast, noise = self.shift
            g = torch.Generator().manual_seed(self.seed * 100_003 + k)
            image = (image * contrast + (1 - contrast) / 2 + noise * torch.randn(image.shape, generator=g)).clamp(0, 1)
        target, labelled = partial_label_target(item["label"], labelled=item["labelled"])
        return {"image": image, "label": target, "labelled": labelled, "source": self.sources[v]}


ZOOM_DATASETS: tuple[str, ...] = ("10_03", "10_06", "10_07", "10_08", "10_09", "10_10")
"""Datasets whose training volumes the Universal Model zooms (its ``RandZoomd_select``: the MSD tasks only)."""


class RandomPatches(Dataset):
    """Random ``patch^3`` training crops of whole-volume items (``image``, ``label``, ``labelled``, ...), as the
    Universal Model samples them: volumes smaller than the patch are padded (MONAI ``SpatialPadd``), then MONAI
    ``RandCropByPosNegLabeld`` centres 2 of 3 crops on labelled foreground and 1 on background. Seeded by
    ``torch``'s generator (so by :func:`medmoe.utils.seed_everything` and the DataLoader's worker seeds).

    ``augment=True`` adds the Universal Model's random augmentations, in its order (``dataset/dataloader.py``):
    after the padding, ``RandZoomd`` (p 0.3, zoom 1.3-1.5, ``area`` / ``nearest``, size kept) for the MSD
    datasets of :data:`ZOOM_DATASETS` only (by the item's ``dataset``; phantoms are never zoomed); after the crop,
    ``RandRotate90d`` (p 0.1, k up to 3, in the first two axes) on image and label and ``RandShiftIntensityd``
    (offset up to 0.1, p 0.2) on the image.

    Example:
        >>> vols = PhantomCT(sources=["kidney"], n_per_source=1, size=48)
        >>> RandomPatches(vols, patch=32)[0]["image"].shape
        torch.Size([1, 32, 32, 32])
    """

    def __init__(self, volumes: Dataset, *, patch: int, augment: bool = False) -> None:
        if patch < 32 or patch % 32:
            raise ValueError(f"patch must be a positive multiple of 32 (SwinUNETR), got {patch}")
        self.volumes, self.patch, self.augment = volumes, patch, bool(augment)
        self._pad = SpatialPadd(keys=("image", "label", "fg"), spatial_size=(patch,) * 3)
        self._crop = RandCropByPosNegLabeld(keys=("image", "label"), label_key="fg", spatial_size=(patch,) * 3,
                                            pos=2, neg=1, num_samples=1)
        self._zoom = RandZoomd(keys=("image", "label", "fg"), prob=0.3, min_zoom=1.3, max_zoom=1.5,
                               mode=("area", "nearest", "nearest"))
        self._rotate = RandRotate90d(keys=("image", "label"), prob=0.1, max_k=3)
        self._shift = RandShiftIntensityd(keys="image", offsets=0.1, prob=0.2)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, k: int) -> dict[str, Any]:
        item = self.volumes[k]
        fg = (item["label"][item["labelled"]].sum(0, keepdim=True) > 0).float()
        data = self._pad({"image": item["image"], "label": item["label"], "fg": fg})
        if self.augment and item.get("dataset") in ZOOM_DATASETS:
            self._zoom.set_random_state(int(torch.randint(2**31 - 1, (1,))))
            data = self._zoom(data)
        self._crop.set_random_state(int(torch.randint(2**31 - 1, (1,))))
        crop = self._crop(data)[0]
        if self.augment:
            for t in (self._rotate, self._shift):
                t.set_random_state(int(torch.randint(2**31 - 1, (1,))))
                crop = t(crop)
        image = torch.as_tensor(crop["image"]).as_subclass(torch.Tensor).float()
        label = torch.as_tensor(crop["label"]).as_subclass(torch.Tensor)
        return {**item, "image": image, "label": label}


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------

_FIXTURE_HU = {1: 115.0, 2: 170.0, 6: 100.0, 11: 80.0}  # spleen, kidney, liver, pancreas; lesions 30 HU


def _fixture_paths(dataset: str, index: int) -> tuple[str, str]:
    if dataset not in REFERENCE_FOLDERS:
        raise ValueError(f"no fixture layout for dataset {dataset!r}; choose from {', '.join(REFERENCE_FOLDERS)}")
    folder = REFERENCE_FOLDERS[dataset]
    if dataset.startswith("10_"):
        stem = folder.split("/")[1].split("_", 1)[1].lower()
        return (f"{folder}/imagesTr/{stem}_{index}.nii.gz", f"{folder}/labelsTr/{stem}_{index}.nii.gz")
    stem = folder.split("_", 1)[1].split("-")[0].lower()
    return f"{folder}/img/{stem}_{index:04d}.nii.gz", f"{folder}/label/{stem}_{index:04d}.nii.gz"


def _fixture_volume(dataset: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A body (1-voxel air border) with each of the dataset's label values as a 3-voxel cube; lesion values
    (a second template id) sit at the centre of their organ's cube; both-sides values get two cubes at
    opposite ends of the first axis."""
    hu = np.full((size, size, size), -1000.0, np.float32)
    hu[1:-1, 1:-1, 1:-1] = 40.0
    label = np.zeros((size, size, size), np.uint8)
    slots = [(x, y, z) for y in range(1, size - 3, 3) for z in range(1, size - 3, 3) for x in (1, size - 4)]
    table = LABEL_TRANSFER[dataset]
    splits = set(LEFT_RIGHT_SPLIT.get(dataset, ()))
    organ_cube: dict[int, tuple[int, int, int]] = {}
    lesions = []
    for value, ids in table.items():
        if len(ids) > 1 and any(ids[0] in t for v, t in table.items() if v != value and len(t) == 1):
            lesions.append((value, ids[0]))
            continue
        for _ in range(2 if ids[0] in splits else 1):
            if not slots:
                raise ValueError(f"size {size} is too small for the {len(table)} label values of dataset {dataset!r}")
            x, y, z = slots.pop(0)
            label[x : x + 3, y : y + 3, z : z + 3] = value
            hu[x : x + 3, y : y + 3, z : z + 3] = _FIXTURE_HU.get(ids[0], 60.0)
            organ_cube.setdefault(ids[0], (x, y, z))
    inner = [(1, 1, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1)]
    for k, (value, organ) in enumerate(lesions):
        x, y, z = organ_cube[organ]
        dx, dy, dz = inner[k % len(inner)]
        label[x + dx, y + dy, z + dz] = value
        hu[x + dx, y + dy, z + dz] = 30.0
    hu += rng.normal(0.0, 5.0, hu.shape).astype(np.float32) * (hu > -1000)
    return hu, label


def write_universal_fixture(
    root: str | os.PathLike[str],
    *,
    datasets: Sequence[str] = ("09", "10_03"),
    cases_per_dataset: int = 1,
    size: int = 12,
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    seed: int = 0,
    list_name: str = "fixture.txt",
) -> Path:
    """Write tiny CT-like NIfTI volumes and labels in the reference layout, plus their dataset list.

    Each case is a ``size``\\ :sup:`3` volume (identity orientation, i.e. RAS, voxel size ``spacing``): a
    1-voxel air border (-1000 HU) around soft tissue, and every original label value of the dataset as a
    3-voxel cube (lesions inside their organ; both-sides organs as two cubes at the two ends of the first
    axis). Files go to ``root/<REFERENCE_FOLDERS[dataset]>/{img,label}/`` (``imagesTr``/``labelsTr`` for the
    Decathlon; the file names are ours); the list to ``root/list_name``. For tests and the notebook's
    paper-path test.

    Returns:
        The list path.

    Example:
        >>> import tempfile
        >>> p = write_universal_fixture(tempfile.mkdtemp(), datasets=("05",))
        >>> p.read_text().split()
        ['05_KiTS/img/kits_0000.nii.gz', '05_KiTS/label/kits_0000.nii.gz']
    """
    if isinstance(cases_per_dataset, bool) or not isinstance(cases_per_dataset, int) or cases_per_dataset < 1:
        raise ValueError(f"cases_per_dataset must be a positive int, got {cases_per_dataset!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 10:
        raise ValueError(f"size must be an int >= 10, got {size!r}")
    root = Path(root)
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    rng = np.random.default_rng(seed)
    pairs = []
    for dataset in datasets:
        for i in range(cases_per_dataset):
            image_rel, label_rel = _fixture_paths(dataset, i)
            hu, label = _fixture_volume(dataset, size, rng)
            for rel, array in ((image_rel, hu.astype(np.int16)), (label_rel, label)):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(array, affine), str(root / rel))
            pairs.append((image_rel, label_rel))
    return write_dataset_list(root, list_name, pairs)
