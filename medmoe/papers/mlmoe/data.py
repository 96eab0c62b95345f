"""MLMoE's data: the QaTa-COV19 folder layout (as read by Ariadne's Thread / LanGuideMedSeg, texts from LViT),
LViT's layout, and the task datasets the recipe trains on.

Explained in the book: *Chapter 1, MLMoE* (``chapters/01_mlmoe``), section 1 "Data: one loader for the phantoms
and QaTa-COV19" and section 2 "The frozen text encoder, run once". The chapter trains on ``QaTaDataset``; with no
download it reads phantoms written by :func:`prepare_phantom_qata` (:func:`write_qata_layout`), and with the real
QaTa-COV19 set unpacked in the same layout nothing else changes. :mod:`medmoe.papers.mlmoe.prepare` (the programs
behind ``data_scripts/prepare_qata.py`` and ``data_scripts/prepare_mosmed.py``) arranges the downloaded QaTa-COV19
and MosMedData+ files in this layout; the second part of this module reads LViT's own layout with the same item
format and preprocessing; the third holds the task datasets (:class:`TextFeatureDataset`, :func:`with_text`,
:class:`TeacherDataset`).

Layout::

    root/
      Train/Images/<name>.png        8-bit grey image
      Train/GTs/mask_<name>.png      mask, 0 (background) / 255 (lesion)
      Test/Images/...,  Test/GTs/...
      prompt/train.csv, prompt/test.csv

The table has exactly the columns ``Image`` and ``Description``. ``Image`` holds the *mask* file name
(``mask_covid_1.png``); the image file name is the same without the ``mask_`` prefix (``covid_1.png``).
An LViT Excel table (``.xlsx``, same two columns) can be passed instead of the CSV with ``table=``.

Example:
    >>> from medmoe.data.phantoms import PhantomDataset2D
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> _ = write_qata_layout(PhantomDataset2D(n=10, size=64), root, split="train")
    >>> ds = QaTaDataset(root=root, split="val", size=64)
    >>> len(ds), ds[0]["image"].shape, ds[0]["name"]
    (2, torch.Size([1, 64, 64]), 'phantom_8.png')

**LViT's prepared layout** (QaTa-COV19 and MosMedData+), read by :class:`LViTDataset` into the same
items as :class:`QaTaDataset`.

MLMoE trains and tests on QaTa-COV19 and MosMedData+ with
LViT's text annotations; :class:`LViTDataset` reads LViT's own layout with the same items and the same
preprocessing as :class:`~medmoe.papers.mlmoe.data.QaTaDataset` (the code is shared), and
:mod:`medmoe.papers.mlmoe.prepare` uses the table and pairing helpers of this module to turn the Kaggle downloads
plus LViT's workbooks into either layout.

Layout (one per data set, e.g. ``datasets/QaTa-Covid19`` or ``datasets/MosMedDataPlus``)::

    root/
      Train_Folder/img/<image name>        Train_Folder/labelcol/<mask name>   Train_Folder/Train_text.xlsx
      Val_Folder/img/...                   Val_Folder/labelcol/...             Val_Folder/Val_text.xlsx
      Test_Folder/img/...                  Test_Folder/labelcol/...            Test_Folder/Test_text.xlsx

Each text table (``.xlsx``, or ``.csv``) has exactly the columns ``Image`` and ``Description``;
``Image`` holds the *mask* file name. How the image file is named from it (``mask_name_rule``):

* ``"strip_mask_prefix"`` -- QaTa-COV19 (confirmed): ``mask_covid_1.png`` -> image ``covid_1.png``.
* ``"same_name"`` -- the mask and the image share the name (LViT's loader does this for its
  non-QaTa sets: ``mask = image[:-3] + "png"``, so the image may also be ``<stem>.jpg``/``.tif``...).
  For MosMedData+ the convention is **unconfirmed** (no workbook was inspected), so ``"auto"``
  detects it from the files and raises a clear error when neither rule matches.

**Splits** (``split_policy``). MLMoE says "following previous work, we split the original train set
into train (80 %) and validation (20 %)"; whether "original train set" means LViT's train table alone
or LViT's train + validation tables is **unresolved** (the paper does not say). We offer both:

* ``"ariadne_80_20"`` (default, *our reading*): concatenate LViT's Train then Val tables, first 80 %
  of the rows (file order, no shuffling) are ``train``, the last 20 % ``val``, like Ariadne's loader on
  its ``train.csv``. For QaTa-COV19 (5,716 + 1,429 rows) that gives exactly 5,716 / 1,429 again; for
  MosMedData+ (2,183 + 273) it gives 1,964 / 492. The Ariadne layout written by the prepare scripts
  holds the same rows in the same order, so ``QaTaDataset`` on it selects the same items.
* ``"lvit"``: LViT's own ``Train_Folder`` / ``Val_Folder``.

``"test"`` is always ``Test_Folder``.

Example:
    >>> import tempfile
    >>> from medmoe.data.phantoms import PhantomDataset2D
    >>> root = tempfile.mkdtemp()
    >>> for split, seed in (("train", 0), ("val", 1), ("test", 2)):
    ...     _ = write_lvit_layout(PhantomDataset2D(n=5, size=32, seed=seed), root, split=split)
    >>> len(LViTDataset(root=root, split="val", size=32))             # last 20 % of 5 + 5 rows
    2
    >>> len(LViTDataset(root=root, split="val", size=32, split_policy="lvit"))
    5

**Task datasets** (the third part). The text encoder and, in the text-absent stage, the text-present model are
frozen, so their outputs are computed once and carried by the items: :func:`with_text` adds each report's
encoded tokens (``text_features``), :class:`TeacherDataset` the teacher's fused features (``teacher``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset

from medmoe.backbones import TextEncoder, encode_cached
from medmoe.data.phantoms import PhantomDataset2D

__all__ = [
    # the QaTa-COV19 (Ariadne) layout
    "write_qata_layout", "QaTaDataset", "SPLIT_FOLDERS", "TABLE_COLUMNS",
    # LViT's layout (QaTa-COV19 and MosMedData+)
    "INTERPOLATIONS", "ZOOM_RANGE",
    "LVIT_SPLIT_FOLDERS", "LVIT_TABLE_STEMS", "SPLIT_POLICIES", "MASK_NAME_RULES", "LVIT_DATASETS", "IMAGE_SUFFIXES",
    "LViTDataset", "write_lvit_layout", "find_text_table", "read_text_table", "write_text_table",
    "image_name_candidates", "TextRow", "match_images",
    # the task datasets of Chapter 1
    "prepare_phantom_qata", "TextFeatureDataset", "with_text", "TeacherDataset",
]

SPLIT_FOLDERS: dict[str, str] = {"train": "Train", "val": "Train", "test": "Test"}
"""Folder under ``root`` for each split (train and val share the training folder and table)."""

TABLE_COLUMNS: tuple[str, str] = ("Image", "Description")
"""The two columns a QaTa-COV19 text table must have."""

_MASK_PREFIX = "mask_"

_T = TypeVar("_T")

# A loaded row: (image path, mask path, description, image file name).
_Record = tuple[Path, Path, str, str]


# --------------------------------------------------------------------------------------------------
# Shared helpers (also used by medmoe.papers.mlmoe.prepare, behind the data_scripts/prepare_*.py scripts)
# --------------------------------------------------------------------------------------------------


def _to_grey_uint8(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] (C = 1 or 3) -> ``(H, W)`` uint8; RGB is converted with BT.601 luma."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (1, H, W) or (3, H, W), got {tuple(image.shape)}")
    if image.shape[0] == 3:
        image = np.tensordot(np.asarray([0.299, 0.587, 0.114]), image, axes=([0], [0]))
    else:
        image = image[0]
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _phantom_pngs(item: dict) -> tuple[np.ndarray, np.ndarray]:
    """A phantom item -> ``(grey image (H, W) uint8, mask (H, W) uint8 in {0, 255})``, ready to save."""
    image = item["image"]
    mask = item["mask"]
    image = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    mask = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    mask_u8 = np.where(mask.reshape(mask.shape[-2:]) > 0.5, 255, 0).astype(np.uint8)
    return _to_grey_uint8(image), mask_u8


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    return size


def _check_val_fraction(val_fraction: object) -> float:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    return float(val_fraction)


def _read_table(path: Path, *, kind: str = "QaTa") -> pd.DataFrame:
    """Read a ``.csv`` / ``.xlsx`` text table with every cell as a string (empty cells -> ``""``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{kind} text table not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    if suffix in (".xlsx", ".xlsm"):
        return pd.read_excel(path, dtype=str, keep_default_na=False, engine="openpyxl")
    raise ValueError(f"table must be a .csv or .xlsx file, got {path}")


def _check_columns(frame: pd.DataFrame, path: Path, *, kind: str = "QaTa") -> None:
    """``ValueError`` naming the file, the missing and the found columns unless both columns exist."""
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        article = "an" if kind[:1].upper() in "AEIOU" or kind.startswith("LViT") else "a"
        raise ValueError(
            f"{path}: missing column(s) {missing}; found columns {list(frame.columns)}; "
            f"{article} {kind} table needs exactly {list(TABLE_COLUMNS)}"
        )


def _table_rows(path: Path, *, kind: str = "QaTa") -> list[tuple[int, str, str]]:
    """Read and check a text table: ``[(row, Image, Description), ...]``, values stripped.

    Rows are 0-based data rows (header not counted). An empty ``Description`` is a ``ValueError``
    naming the file, the row and the ``Image`` value.
    """
    frame = _read_table(path, kind=kind)
    _check_columns(frame, path, kind=kind)
    rows = []
    for row, (name, text) in enumerate(zip(frame["Image"], frame["Description"])):
        name, text = str(name).strip(), str(text).strip()
        if not text:
            raise ValueError(f"{_where(path, row, name)}: empty Description")
        rows.append((row, name, text))
    return rows


def _where(path: Path, row: int, value: str) -> str:
    """The prefix of every row-level message: file, 0-based row, ``Image`` value."""
    return f"{path}: row {row} (0-based, header not counted), Image={value!r}"


def _head_tail(items: Sequence[_T], split: str, val_fraction: float, *, what: str) -> list[_T]:
    """Ariadne's split: first ``floor((1 - val_fraction) * n)`` items are ``train``, the rest ``val``.

    ``"test"`` (or any other split) returns every item. An empty result is a ``ValueError`` saying
    ``what`` was split (e.g. the table path) and how many rows it had.
    """
    n_rows = len(items)
    n_train = math.floor((1.0 - val_fraction) * n_rows + 1e-9)
    if split == "train":
        chosen = list(items[:n_train])
    elif split == "val":
        chosen = list(items[n_train:])
    else:
        chosen = list(items)
    if not chosen:
        raise ValueError(f"split {split!r} is empty: {what} has {n_rows} rows and val_fraction={val_fraction}")
    return chosen


def _check_header(path: Path) -> tuple[int, int]:
    """Open an image file and read its header only (no pixel decoding): its ``(W, H)``; garbage -> ValueError."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image file {path}: {err}") from err


def _load_grey(path: Path) -> np.ndarray:
    """Decode an image file to an ``(H, W)`` uint8 grey array; unreadable data -> ValueError naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image file {path}: {err}") from err


INTERPOLATIONS: tuple[str, str] = ("bilinear", "bicubic")
"""Image resize modes: ``"bilinear"`` (the quick profile) or ``"bicubic"`` (Ariadne's ``Resized(224, bicubic)``)."""

ZOOM_RANGE: tuple[float, float] = (0.95, 1.2)
"""Ariadne's training augmentation ``RandZoomd(min_zoom=0.95, max_zoom=1.2, prob=0.1)`` (Ariadne's Thread code,
``utils/dataset.py``)."""


def _binarise_mask(grey: np.ndarray, mask_path: Path, mask_threshold: int) -> np.ndarray:
    """``(H, W)`` uint8 mask -> bool lesion map. 0/255 masks: ``value >= mask_threshold``. Masks stored as 0/1
    (values within {0, 1}, a common convention) are read as ``value > 0``. Any other mask whose lesion values all
    lie below the threshold would read as empty: ``ValueError`` naming the file."""
    peak = int(grey.max()) if grey.size else 0
    if peak == 1:  # a 0/1 mask
        return grey > 0
    if 0 < peak < mask_threshold:
        raise ValueError(
            f"mask file {mask_path} has lesion values up to {peak}, all below mask_threshold={mask_threshold}, so "
            f"it would read as empty; masks must be 0/255 (or 0/1); pass mask_threshold=1 to read every value > 0 "
            "as lesion"
        )
    return grey >= mask_threshold


def _load_pair(
    image_path: Path, mask_path: Path, *, size: int, mask_threshold: int = 128, interpolation: str = "bilinear",
    zoom=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read, resize and normalise one image/mask pair -> ``image (1, size, size)``, ``mask (1, size, size)``.

    Image: grey uint8, ``interpolation`` resize (bilinear or bicubic), per-image z-score (constant image ->
    zeros). Mask: grey uint8, binarised (:func:`_binarise_mask`: 0/255 or 0/1), nearest-neighbour resize.
    ``zoom``: a MONAI ``RandZoomd`` on ``{"image", "mask"}`` applied at the file's size before the resize, as in
    Ariadne's training transforms. An image and a mask of different sizes raise ``ValueError`` naming both.
    """
    grey = _load_grey(image_path)
    grey_mask = _load_grey(mask_path)
    if grey.shape != grey_mask.shape:
        raise ValueError(f"image {image_path} has shape {grey.shape} (H, W) but its mask {mask_path} has shape "
                         f"{grey_mask.shape}; an image and its mask must have the same size")
    image = torch.from_numpy(grey.astype(np.float32))[None]  # (1, H, W)
    mask = torch.from_numpy(_binarise_mask(grey_mask, mask_path, mask_threshold)).float()[None]  # (1, H, W)
    if zoom is not None:
        out = zoom({"image": image, "mask": mask})
        image, mask = torch.as_tensor(out["image"]).float(), torch.as_tensor(out["mask"]).float()
    image = F.interpolate(image[None], size=(size, size), mode=interpolation, align_corners=False)[0]
    mask = F.interpolate(mask[None], size=(size, size), mode="nearest-exact")[0]
    std = image.std(unbiased=False)
    image = (image - image.mean()) / (std if std > 0 else 1.0)
    return image, mask


class _TextMaskDataset(Dataset):
    """Base of :class:`QaTaDataset` and :class:`LViTDataset`: items from ``records``.

    Subclasses fill ``self.records`` (``[(image path, mask path, text, name), ...]``) and ``self.size``.
    """

    records: list[_Record]
    size: int
    mask_threshold: int = 128
    interpolation: str = "bilinear"
    zoom = None  # a MONAI RandZoomd (training augmentation), or None

    def _set_preprocessing(self, interpolation: str, zoom_prob: float, seed: int) -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if isinstance(zoom_prob, bool) or not isinstance(zoom_prob, (int, float)) or not 0.0 <= zoom_prob <= 1.0:
            raise ValueError(f"zoom_prob must be a probability in [0, 1], got {zoom_prob!r}")
        self.interpolation = interpolation
        self.zoom_prob = float(zoom_prob)
        if zoom_prob > 0:
            from monai.transforms import RandZoomd  # why: MONAI's transforms import is slow; only augmenting needs it

            self.zoom = RandZoomd(keys=("image", "mask"), prob=float(zoom_prob), min_zoom=ZOOM_RANGE[0],
                                  max_zoom=ZOOM_RANGE[1], mode=(interpolation, "nearest"), keep_size=True)
            self.zoom.set_random_state(seed=seed)

    def _check_not_all_empty(self) -> None:
        """Decode masks in order until one has a lesion pixel; a split whose masks are all empty is an error."""
        for _, mask_path, _, _ in self.records:
            if _binarise_mask(_load_grey(mask_path), mask_path, self.mask_threshold).any():
                return
        raise ValueError(
            f"every mask of split {self.split!r} under {self.root} is empty ({len(self.records)} masks read, e.g. "
            f"{self.records[0][1]}): the model would train or be tested on blank targets. Check the masks "
            "(0/255 or 0/1 lesion masks) and the split."
        )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def texts(self) -> list[str]:
        """The descriptions of this split, in item order."""
        return [r[2] for r in self.records]

    def _check_headers(self) -> None:
        for image_path, mask_path, _, _ in self.records:
            image_size, mask_size = _check_header(image_path), _check_header(mask_path)
            if image_size != mask_size:
                raise ValueError(f"image {image_path} is {image_size[0]} x {image_size[1]} (W x H) but its mask "
                                 f"{mask_path} is {mask_size[0]} x {mask_size[1]}; an image and its mask must have "
                                 "the same size")
        self._check_not_all_empty()

    def __getitem__(self, index: int) -> dict:
        image_path, mask_path, text, name = self.records[index]
        image, mask = _load_pair(image_path, mask_path, size=self.size, mask_threshold=self.mask_threshold,
                                 interpolation=self.interpolation, zoom=self.zoom)
        return {"image": image, "mask": mask, "text": text, "name": name}


# --------------------------------------------------------------------------------------------------
# The Ariadne / QaTa layout
# --------------------------------------------------------------------------------------------------


def write_qata_layout(dataset: Dataset, root: str | Path, *, split: str) -> Path:
    """Write a 2D phantom data set in the QaTa-COV19 layout under ``root`` (created if needed).

    For item ``i`` it writes ``<Split>/Images/phantom_<i>.png`` (8-bit grey; RGB ``derm`` images are
    converted to grey), ``<Split>/GTs/mask_phantom_<i>.png`` (0/255) and one row
    ``mask_phantom_<i>.png, <report>`` of ``prompt/<split>.csv`` (overwritten if it exists). Use
    different seeds for the train and test data sets.

    Args:
        dataset: a :class:`~medmoe.data.phantoms.PhantomDataset2D` (or any data set whose items are dicts
            with ``image`` ``(C, H, W)`` in [0, 1], ``mask`` ``(1, H, W)``, ``text`` and ``index``).
        root: output folder.
        split: ``"train"`` or ``"test"`` (the validation split is the tail of the train table).

    Returns:
        The path of the table written.

    Example:
        >>> import tempfile
        >>> from medmoe.data.phantoms import PhantomDataset2D
        >>> write_qata_layout(PhantomDataset2D(n=2, size=32), tempfile.mkdtemp(), split="test").name
        'test.csv'
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' (val is the tail of train), got {split!r}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("dataset is empty; nothing to write")
    root = Path(root)
    folder = root / SPLIT_FOLDERS[split]
    (folder / "Images").mkdir(parents=True, exist_ok=True)
    (folder / "GTs").mkdir(parents=True, exist_ok=True)
    (root / "prompt").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[i]
        grey, mask_u8 = _phantom_pngs(item)
        name = f"phantom_{int(item['index'])}.png"
        Image.fromarray(grey).save(folder / "Images" / name)
        Image.fromarray(mask_u8).save(folder / "GTs" / f"{_MASK_PREFIX}{name}")
        rows.append({"Image": f"{_MASK_PREFIX}{name}", "Description": str(item["text"])})
    table = root / "prompt" / f"{split}.csv"
    pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).to_csv(table, index=False)
    return table


class QaTaDataset(_TextMaskDataset):
    """QaTa-COV19 images, lesion masks and text descriptions, in the Ariadne's Thread layout.

    **Splits** (as in the reference code): ``"train"`` and ``"val"`` both come from the train table --
    the first ``floor((1 - val_fraction) * rows)`` rows in file order (no shuffling) are ``train``, the
    remaining rows are ``val``. ``"test"`` is the whole test table.

    **Checks at construction**, so no row is ever silently skipped: the table exists
    (``FileNotFoundError``), has the columns ``Image`` and ``Description`` (``ValueError``); and for
    *every* row of the table: ``Image`` starts with ``mask_``, the description is not empty
    (``ValueError``), the mask and the image files exist (``FileNotFoundError``). For the rows of the
    selected split each image and mask file is opened and its header read (cheap, no decoding), so
    garbage bytes raise ``ValueError`` naming the file; a file whose header is fine but whose pixel
    data is broken raises ``ValueError`` naming the file when the item is loaded. Row numbers in
    messages are 0-based data rows (the header line not counted).

    **Preprocessing** (per item): the image is read as 8-bit grey, resized to ``size x size``
    (``interpolation``: bilinear, or bicubic as Ariadne's code) and z-score normalised per image
    (``(x - mean) / std``, MONAI's ``NormalizeIntensity(channel_wise=True)``; a constant image becomes all
    zeros). The mask is resized with nearest neighbours and binarised as ``value >= 128``. The reference code
    uses ``== 255``; the two agree on clean 0/255 masks, and ``>= 128`` keeps lesion pixels that resampling or
    lossy re-saving moved off 255. A mask stored as 0/1 (values within {0, 1}) is read as ``value > 0``; any
    other mask whose values all lie below 128 raises ``ValueError`` when loaded. ``zoom_prob > 0`` adds
    Ariadne's training augmentation, MONAI ``RandZoomd(0.95-1.2, prob=zoom_prob)`` (bicubic / nearest), before
    the resize. An image and its mask of different sizes raise ``ValueError`` naming both files and sizes, and
    a split whose masks are all empty raises ``ValueError`` naming the split and the root (both checked at
    construction).

    Args:
        root: the data root (holding ``Train/``, ``Test/`` and ``prompt/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        table: the text table; default ``root/prompt/train.csv`` (train, val) or ``root/prompt/test.csv``
            (test). A ``.csv`` or an LViT ``.xlsx`` with the same two columns.
        size: output height = width, >= 8.
        val_fraction: fraction of the train table's rows, taken from its end, used as ``val``; in [0, 1).
        interpolation: ``"bilinear"`` or ``"bicubic"`` (Ariadne) for the image resize.
        zoom_prob: probability of Ariadne's random zoom per item (0.1 in its training transforms; 0: none).
        seed: seeds the random zoom.

    Items (dict):
        ``image`` float32 ``(1, size, size)``, ``mask`` float32 ``(1, size, size)`` in {0, 1},
        ``text`` str (the description, stripped), ``name`` str (the image file name).

    Example:
        On the real data: ``QaTaDataset(root="data/QaTa-COV19-v2", split="train")``. The same layout, written
        from phantoms by :func:`write_qata_layout`:

        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> _ = write_qata_layout(PhantomDataset2D(n=4, size=32, seed=0), root, split="train")
        >>> ds = QaTaDataset(root=root, split="train", size=32)
        >>> item = ds[0]; item["image"].shape, item["mask"].unique().tolist(), type(item["text"])
        (torch.Size([1, 32, 32]), [0.0, 1.0], <class 'str'>)
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str,
        table: str | Path | None = None,
        size: int = 224,
        val_fraction: float = 0.2,
        interpolation: str = "bilinear",
        zoom_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"split must be one of {tuple(SPLIT_FOLDERS)}, got {split!r}")
        self.size = _check_size(size)
        self.val_fraction = _check_val_fraction(val_fraction)
        self._set_preprocessing(interpolation, zoom_prob, seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"QaTa root folder not found: {self.root}")
        self.split = split
        folder = self.root / SPLIT_FOLDERS[split]
        default_table = self.root / "prompt" / ("test.csv" if split == "test" else "train.csv")
        self.table = Path(table) if table is not None else default_table

        frame = _read_table(self.table)
        _check_columns(frame, self.table)
        records: list[_Record] = []
        for row, (mask_name, text) in enumerate(zip(frame["Image"], frame["Description"])):
            mask_name, text = str(mask_name).strip(), str(text).strip()
            where = _where(self.table, row, mask_name)
            if not Path(mask_name).name.startswith(_MASK_PREFIX):
                raise ValueError(
                    f"{where}: Image must hold the mask file name, starting with {_MASK_PREFIX!r}"
                )
            if not text:
                raise ValueError(f"{where}: empty Description")
            mask_path = folder / "GTs" / mask_name
            image_path = folder / "Images" / Path(mask_name).name[len(_MASK_PREFIX) :]
            if not mask_path.is_file():
                raise FileNotFoundError(f"{where}: mask file not found, expected {mask_path}")
            if not image_path.is_file():
                raise FileNotFoundError(f"{where}: image file not found, expected {image_path}")
            records.append((image_path, mask_path, text, image_path.name))

        self.records = _head_tail(records, split, self.val_fraction, what=str(self.table))
        self._check_headers()


# ==================================================================================================
# LViT's prepared layout (QaTa-COV19 and MosMedData+): see the second part of the module docstring
# ==================================================================================================

LVIT_SPLIT_FOLDERS: dict[str, str] = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}
"""LViT's folder under ``root`` for each of its splits."""

LVIT_TABLE_STEMS: dict[str, str] = {"train": "Train_text", "val": "Val_text", "test": "Test_text"}
"""LViT's text table name (without suffix) inside each split folder: ``Train_Folder/Train_text.xlsx``."""

SPLIT_POLICIES: tuple[str, str] = ("ariadne_80_20", "lvit")
"""How ``train`` / ``val`` are formed; see the module docstring."""

MASK_NAME_RULES: tuple[str, str] = ("strip_mask_prefix", "same_name")
"""How the image file is named from the mask file name in the ``Image`` column."""

LVIT_DATASETS: tuple[str, str] = ("qata", "mosmed")
"""The data sets LViT's layout is used for here."""

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Image suffixes tried, in order, by the ``same_name`` rule when the exact name does not exist."""

_KIND = "LViT"
_MAX_LISTED = 20  # problems listed in one message before "... and N more"


# --------------------------------------------------------------------------------------------------
# Text tables
# --------------------------------------------------------------------------------------------------


def find_text_table(folder: str | Path, split: str) -> Path:
    """The text table of an LViT split folder: ``<Split>_text.xlsx``, else ``<Split>_text.csv``.

    Raises:
        FileNotFoundError: neither exists; the message names both paths tried.

    Example:
        >>> find_text_table("datasets/QaTa-Covid19/Train_Folder", "train")  # doctest: +SKIP
        PosixPath('datasets/QaTa-Covid19/Train_Folder/Train_text.xlsx')
    """
    if split not in LVIT_TABLE_STEMS:
        raise ValueError(f"split must be one of {tuple(LVIT_TABLE_STEMS)}, got {split!r}")
    folder = Path(folder)
    tried = [folder / f"{LVIT_TABLE_STEMS[split]}{suffix}" for suffix in (".xlsx", ".csv")]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{_KIND} text table not found: expected {tried[0]} (or {tried[1].name})")


def read_text_table(path: str | Path) -> list[tuple[int, str, str]]:
    """Read and check an LViT / Ariadne text table (``.xlsx`` or ``.csv``).

    Returns:
        ``[(row, image_column_value, description), ...]``; ``row`` is the 0-based data row (header not
        counted), values are stripped.

    Raises:
        FileNotFoundError: no such file. ValueError: not ``.csv``/``.xlsx``; a column ``Image`` or
        ``Description`` missing (the message lists the columns found); an empty description (the
        message names the row and its ``Image`` value).

    Example:
        >>> read_text_table("Train_text.xlsx")[:1]  # doctest: +SKIP
        [(0, 'mask_covid_1.png', 'Bilateral pulmonary infection, two infected areas, ...')]
    """
    return _table_rows(Path(path), kind=_KIND)


def write_text_table(rows: Iterable[tuple[str, str]], path: str | Path) -> Path:
    """Write ``(Image, Description)`` rows as a two-column table: ``.xlsx`` (openpyxl) or ``.csv``.

    The header row is ``Image, Description``. The parent folder is created. Returns ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> p = write_text_table([("mask_a.png", "left lung")], pathlib.Path(tempfile.mkdtemp()) / "t.xlsx")
        >>> read_text_table(p)
        [(0, 'mask_a.png', 'left lung')]
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [(str(a), str(b)) for a, b in rows]
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        from openpyxl import Workbook  # lazy: only .xlsx tables need openpyxl

        book = Workbook()
        sheet = book.active
        sheet.append(list(TABLE_COLUMNS))
        for row in rows:
            sheet.append(list(row))
        book.save(path)
    elif suffix == ".csv":
        pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).to_csv(path, index=False)
    else:
        raise ValueError(f"table must be a .csv or .xlsx file, got {path}")
    return path


# --------------------------------------------------------------------------------------------------
# Pairing the names in the Image column with image and mask files
# --------------------------------------------------------------------------------------------------


def image_name_candidates(mask_name: str, rule: str) -> list[str]:
    """The image file names ``rule`` allows for the mask file name ``mask_name``, in order of preference.

    ``strip_mask_prefix``: ``[name without "mask_"]`` (``[]`` if it does not start with ``mask_``);
    ``same_name``: the same name, then the same stem with each of :data:`IMAGE_SUFFIXES`.

    Example:
        >>> image_name_candidates("mask_covid_1.png", "strip_mask_prefix")
        ['covid_1.png']
        >>> image_name_candidates("slice_7.png", "same_name")[:3]
        ['slice_7.png', 'slice_7.jpg', 'slice_7.jpeg']
    """
    name = Path(mask_name).name
    if rule == "strip_mask_prefix":
        return [name[len(_MASK_PREFIX) :]] if name.startswith(_MASK_PREFIX) and len(name) > len(_MASK_PREFIX) else []
    if rule == "same_name":
        stem = Path(name).stem
        return [name] + [stem + s for s in IMAGE_SUFFIXES if stem + s != name]
    raise ValueError(f"mask_name_rule must be one of {MASK_NAME_RULES}, got {rule!r}")


@dataclass(frozen=True)
class TextRow:
    """One row of a text table, with the folders its mask and image should be in.

    Attributes:
        table: the table file (for messages). row: 0-based data row. mask_name: the ``Image`` value.
        text: the description. mask_dir / image_dir: where the mask / image file should be.
    """

    table: Path
    row: int
    mask_name: str
    text: str
    mask_dir: Path
    image_dir: Path

    @property
    def where(self) -> str:
        """``"<table>: row <r> (0-based, header not counted), Image='<value>'"``."""
        return _where(self.table, self.row, self.mask_name)

    @property
    def mask_path(self) -> Path:
        return self.mask_dir / self.mask_name


def _image_for(row: TextRow, rule: str) -> tuple[Path | None, str]:
    """``(image path, "")`` if ``rule`` finds the image of ``row``, else ``(None, problem)``."""
    names = image_name_candidates(row.mask_name, rule)
    if not names:
        return None, f"{row.where}: Image must hold the mask file name, starting with {_MASK_PREFIX!r}"
    for name in names:
        if (row.image_dir / name).is_file():
            return row.image_dir / name, ""
    expected = row.image_dir / names[0]
    also = f" (also tried {', '.join(names[1:])})" if len(names) > 1 else ""
    return None, f"{row.where}: image file not found, expected {expected}{also}"


def _summarise(problems: Sequence[str], *, of: int, what: str = "rows") -> str:
    if len(problems) == 1:
        return problems[0]
    shown = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return f"{len(problems)} problems in {of} {what}:\n  {shown}{more}"


def match_images(rows: Sequence[TextRow], *, rule: str = "auto") -> tuple[str, list[Path]]:
    """Check that every row's mask exists and find every row's image file.

    Args:
        rows: the rows (of one or several tables) to pair.
        rule: one of :data:`MASK_NAME_RULES`, or ``"auto"``: the rule under which the most rows find
            their image (both rules complete -> ambiguous, ``ValueError``).

    Returns:
        ``(rule used, [image path of each row])``.

    Raises:
        FileNotFoundError: a mask or an image file is missing. The message names each bad row (table,
            0-based row, ``Image`` value) and the exact path expected -- the first 20 of them, and how
            many there are. ValueError: with ``strip_mask_prefix``, an ``Image`` value that does not
            start with ``mask_``; or ``"auto"`` cannot tell the two rules apart.

    Example:
        >>> rule, images = match_images(rows, rule="auto")  # doctest: +SKIP
        >>> rule  # doctest: +SKIP
        'same_name'
    """
    if rule != "auto" and rule not in MASK_NAME_RULES:
        raise ValueError(f"mask_name_rule must be 'auto' or one of {MASK_NAME_RULES}, got {rule!r}")
    if not rows:
        raise ValueError("no rows to pair: the text table(s) are empty")
    mask_problems = [
        None if r.mask_path.is_file() else f"{r.where}: mask file not found, expected {r.mask_path}" for r in rows
    ]
    prefix = ""
    if rule == "auto":
        outcomes = {}
        for candidate in MASK_NAME_RULES:
            found = [_image_for(r, candidate) for r in rows]
            outcomes[candidate] = (sum(p is not None for p, _ in found), found)
        complete = [c for c, (n, _) in outcomes.items() if n == len(rows)]
        if len(complete) == 2:
            raise ValueError(
                "cannot tell how image names follow from the Image column: both mask_name_rule="
                f"'strip_mask_prefix' and 'same_name' find an image for every row (first row: {rows[0].where}). "
                "Pass mask_name_rule= explicitly."
            )
        best = max(MASK_NAME_RULES, key=lambda c: outcomes[c][0])
        n_best, found = outcomes[best]
        if n_best == 0:
            firsts = "; ".join(f"with mask_name_rule={c!r}: {outcomes[c][1][0][1]}" for c in MASK_NAME_RULES)
            raise FileNotFoundError(
                f"no image file matches any mask named in the Image column ({len(rows)} rows), under either "
                f"naming rule. {firsts}. Check the image folder, or pass mask_name_rule= explicitly."
            )
        rule = best
        if n_best < len(rows):
            prefix = f"(auto-detected mask_name_rule={best!r}: {n_best} of {len(rows)} rows match) "
    else:
        found = [_image_for(r, rule) for r in rows]
        bad_prefix = [p for path, p in found if path is None and "must hold the mask file name" in p]
        if bad_prefix:
            raise ValueError(_summarise(bad_prefix, of=len(rows)))
    problems = [p for m, (_, i) in zip(mask_problems, found) for p in (m, i) if p]
    if problems:
        raise FileNotFoundError(prefix + _summarise(problems, of=len(rows)))
    return rule, [p for p, _ in found]  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------------


class LViTDataset(_TextMaskDataset):
    """QaTa-COV19 or MosMedData+ images, lesion masks and descriptions, in LViT's prepared layout.

    Items and preprocessing are exactly those of :class:`~medmoe.papers.mlmoe.data.QaTaDataset` (same code):
    the image is read as 8-bit grey, resized to ``size x size`` (bilinear, or bicubic) and z-scored per image;
    the mask is resized with nearest neighbours and binarised as ``value >= mask_threshold`` (128), or
    ``value > 0`` for a 0/1 mask. Same optional random zoom, same size and all-empty checks.

    **Splits**: ``split_policy="ariadne_80_20"`` (default, our reading of MLMoE's unresolved "split the
    original train set 80/20"): LViT's Train then Val tables, concatenated in that order; the first
    ``floor((1 - val_fraction) * rows)`` rows are ``train``, the rest ``val``. ``split_policy="lvit"``:
    LViT's ``Train_Folder`` / ``Val_Folder`` as they are. ``"test"`` is ``Test_Folder`` either way.
    Each row's files are looked up in the folder of the table it came from.

    **Checks at construction** (as for ``QaTaDataset``, so no row is silently skipped), over *every*
    row of the table(s) the split is drawn from: the table exists (``FileNotFoundError``), has the
    columns ``Image`` and ``Description`` and no empty description (``ValueError``); each mask file
    ``labelcol/<Image>`` and each image file in ``img/`` exists (``FileNotFoundError`` naming the table,
    the 0-based row, the ``Image`` value and the expected path). The rows of the selected split have
    their image and mask headers read, so garbage bytes raise ``ValueError`` naming the file.
    A 0/1 mask is read as ``mask > 0``; loading an item whose mask has lesion pixels only below
    ``mask_threshold`` otherwise (e.g. 0/100) raises ``ValueError`` instead of returning an empty mask; pass
    ``mask_threshold=1`` (LViT's own rule, ``mask > 0``) for such masks.

    Args:
        root: the data set folder holding ``Train_Folder/``, ``Val_Folder/``, ``Test_Folder/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: output height = width, >= 8.
        dataset: ``"qata"`` or ``"mosmed"``; only chooses the default ``mask_name_rule``.
        split_policy: ``"ariadne_80_20"`` or ``"lvit"``.
        mask_name_rule: ``"auto"`` (QaTa: ``strip_mask_prefix``; MosMed: detected from the files),
            ``"strip_mask_prefix"`` or ``"same_name"``.
        tables: optional ``{"train"|"val"|"test": path}`` replacing ``<Split>_Folder/<Split>_text.xlsx``
            (``.xlsx`` or ``.csv``); without it ``<Split>_text.xlsx`` is used, else ``<Split>_text.csv``.
        val_fraction: with ``ariadne_80_20``, the fraction of rows taken from the end as ``val``; [0, 1).
        mask_threshold: mask pixels ``>= mask_threshold`` are lesion; in [1, 255].
        interpolation, zoom_prob, seed: as for :class:`~medmoe.papers.mlmoe.data.QaTaDataset`.

    Attributes:
        records: ``[(image path, mask path, text, image name), ...]`` of this split.
        mask_name_rule: the rule used (after auto-detection). tables: the tables read, in order.

    Items (dict):
        ``image`` float32 ``(1, size, size)``, ``mask`` float32 ``(1, size, size)`` in {0, 1},
        ``text`` str, ``name`` str (the image file name).

    Example:
        >>> ds = LViTDataset(root="data/lvit/MosMedDataPlus", split="train", dataset="mosmed")  # doctest: +SKIP
        >>> ds.mask_name_rule, ds[0]["mask"].shape  # doctest: +SKIP
        ('same_name', torch.Size([1, 224, 224]))
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str,
        size: int = 224,
        dataset: str = "qata",
        split_policy: str = "ariadne_80_20",
        mask_name_rule: str = "auto",
        tables: Mapping[str, str | Path] | None = None,
        val_fraction: float = 0.2,
        mask_threshold: int = 128,
        interpolation: str = "bilinear",
        zoom_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        if split not in LVIT_SPLIT_FOLDERS:
            raise ValueError(f"split must be one of {tuple(LVIT_SPLIT_FOLDERS)}, got {split!r}")
        if dataset not in LVIT_DATASETS:
            raise ValueError(f"dataset must be one of {LVIT_DATASETS}, got {dataset!r}")
        if split_policy not in SPLIT_POLICIES:
            raise ValueError(f"split_policy must be one of {SPLIT_POLICIES}, got {split_policy!r}")
        if mask_name_rule != "auto" and mask_name_rule not in MASK_NAME_RULES:
            raise ValueError(f"mask_name_rule must be 'auto' or one of {MASK_NAME_RULES}, got {mask_name_rule!r}")
        if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, int) or not 1 <= mask_threshold <= 255:
            raise ValueError(f"mask_threshold must be an int in [1, 255], got {mask_threshold!r}")
        tables = dict(tables or {})
        unknown = sorted(set(tables) - set(LVIT_SPLIT_FOLDERS))
        if unknown:
            raise ValueError(f"tables keys must be among {tuple(LVIT_SPLIT_FOLDERS)}, got {unknown}")
        self.size = _check_size(size)
        self.val_fraction = _check_val_fraction(val_fraction)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{_KIND} root folder not found: {self.root}")
        self.split = split
        self.dataset = dataset
        self.split_policy = split_policy
        self.mask_threshold = mask_threshold
        self._set_preprocessing(interpolation, zoom_prob, seed)

        if split == "test":
            sources = ["test"]
        elif split_policy == "lvit":
            sources = [split]
        else:
            sources = ["train", "val"]
        rows: list[TextRow] = []
        self.tables: list[Path] = []
        for source in sources:
            folder = self.root / LVIT_SPLIT_FOLDERS[source]
            table = Path(tables[source]) if source in tables else find_text_table(folder, source)
            self.tables.append(table)
            for row, name, text in read_text_table(table):
                rows.append(TextRow(table, row, name, text, folder / "labelcol", folder / "img"))

        if not rows:
            raise ValueError(f"split {split!r} is empty: {' + '.join(map(str, self.tables))} hold(s) no rows")
        rule = mask_name_rule
        if rule == "auto" and dataset == "qata":
            rule = "strip_mask_prefix"
        self.mask_name_rule, images = match_images(rows, rule=rule)
        records: list[_Record] = [(img, r.mask_path, r.text, img.name) for r, img in zip(rows, images)]
        if split_policy == "ariadne_80_20" or split == "test":
            what = " + ".join(str(t) for t in self.tables)
            records = _head_tail(records, split, self.val_fraction, what=what)
        self.records = records
        self._check_headers()


def write_lvit_layout(
    dataset: Dataset,
    root: str | Path,
    *,
    split: str,
    dataset_name: str = "qata",
    name_prefix: str | None = None,
    table_suffix: str = ".xlsx",
) -> Path:
    """Write a 2D phantom data set in LViT's layout under ``root`` (created if needed).

    For item ``i`` (``name = f"{name_prefix}_{index}.png"``, default prefix ``phantom_<split>`` so the
    three splits never share a file name) it writes ``<Split>_Folder/img/<name>`` (8-bit grey),
    the 0/255 mask ``<Split>_Folder/labelcol/mask_<name>`` (``dataset_name="qata"``) or
    ``labelcol/<name>`` (``"mosmed"``, the same-name convention), and the table
    ``<Split>_Folder/<Split>_text.xlsx`` (openpyxl; overwritten) whose ``Image`` column holds the mask
    file names.

    Args:
        dataset: a :class:`~medmoe.data.phantoms.PhantomDataset2D` (items with ``image``, ``mask``,
            ``text``, ``index``).
        root: output folder (the data set folder, holding the three split folders).
        split: ``"train"``, ``"val"`` or ``"test"``.
        dataset_name: ``"qata"`` (masks named ``mask_<image name>``) or ``"mosmed"`` (same name).
        name_prefix: file name prefix; default ``f"phantom_{split}"``.
        table_suffix: ``".xlsx"`` (LViT) or ``".csv"``.

    Returns:
        The path of the table written.

    Example:
        >>> import tempfile
        >>> from medmoe.data.phantoms import PhantomDataset2D
        >>> write_lvit_layout(PhantomDataset2D(n=2, size=32), tempfile.mkdtemp(), split="val").name
        'Val_text.xlsx'
    """
    if split not in LVIT_SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {tuple(LVIT_SPLIT_FOLDERS)}, got {split!r}")
    if dataset_name not in LVIT_DATASETS:
        raise ValueError(f"dataset_name must be one of {LVIT_DATASETS}, got {dataset_name!r}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("dataset is empty; nothing to write")
    prefix = name_prefix if name_prefix is not None else f"phantom_{split}"
    folder = Path(root) / LVIT_SPLIT_FOLDERS[split]
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "labelcol").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[i]
        grey, mask_u8 = _phantom_pngs(item)
        name = f"{prefix}_{int(item['index'])}.png"
        mask_name = f"{_MASK_PREFIX}{name}" if dataset_name == "qata" else name
        Image.fromarray(grey).save(folder / "img" / name)
        Image.fromarray(mask_u8).save(folder / "labelcol" / mask_name)
        rows.append((mask_name, str(item["text"])))
    return write_text_table(rows, folder / f"{LVIT_TABLE_STEMS[split]}{table_suffix}")


# ==================================================================================================
# The task datasets of Chapter 1: phantoms in the QaTa layout, encoded reports, the teacher's features
# ==================================================================================================


def prepare_phantom_qata(root: str | Path, *, n_train: int, n_test: int, size: int, seed: int,
                         ambiguous_only: bool = True) -> Path:
    """Write chest-radiograph phantoms in the QaTa-COV19 (Ariadne) layout under ``root`` and return ``root``.

    ``ambiguous_only`` keeps the phantoms whose image alone is ambiguous -- at least one lesion-like
    distractor that the report does not mention (about half of them) -- the setting in which the report
    carries information the image lacks. The real data are read from the same layout by the same loader
    (:class:`QaTaDataset`). The test phantoms are drawn with ``seed + 10_000``.

    Raises:
        ValueError: a split has no ambiguous phantom (increase ``n_train`` / ``n_test``).

    Example:
        >>> import tempfile
        >>> root = prepare_phantom_qata(tempfile.mkdtemp(), n_train=20, n_test=20, size=32, seed=0)
        >>> len(QaTaDataset(root=root, split="test", size=32)) > 0
        True
    """
    root = Path(root)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 10_000)):
        ds = PhantomDataset2D(n=n, modalities=("cxr",), size=size, seed=s, channels=1)
        keep = [i for i, ph in enumerate(ds.phantoms) if ph.distractor_regions] if ambiguous_only else list(range(n))
        if not keep:
            raise ValueError(f"no ambiguous phantoms among {n}; increase n_{split}")
        write_qata_layout(Subset(ds, keep), root, split=split)
    return root


class TextFeatureDataset(Dataset):
    """Wraps an image/mask/text dataset and adds the frozen text encoder's features of each report.

    The features are computed once (``features`` ``(len(dataset), T, D)``, e.g. from
    :func:`medmoe.backbones.encode_cached`; :func:`with_text` does both), never per epoch. Items gain
    ``text_features (T, D)``, and ``text_mask (T,)`` (the tokenizer's attention mask, 1 = real token) when
    ``masks`` is given.

    Example:
        >>> ds = TextFeatureDataset([{"image": torch.zeros(1, 4, 4)}], torch.ones(1, 3, 2))
        >>> ds[0]["text_features"].shape
        torch.Size([3, 2])
    """

    def __init__(self, dataset: Dataset, features: torch.Tensor, masks: torch.Tensor | None = None) -> None:
        if len(features) != len(dataset):
            raise ValueError(f"features has {len(features)} rows for a dataset of {len(dataset)} items")
        if masks is not None and tuple(masks.shape) != tuple(features.shape[:2]):
            raise ValueError(f"masks must have shape {tuple(features.shape[:2])}, got {tuple(masks.shape)}")
        self.dataset, self.features, self.masks = dataset, features, masks

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = {**self.dataset[i], "text_features": self.features[i]}
        if self.masks is not None:
            item["text_mask"] = self.masks[i]
        return item


def with_text(dataset: Dataset, encoder: TextEncoder) -> TextFeatureDataset:
    """Attach the frozen text encoder's features of every report (``dataset.texts``, encoded once and cached by
    :func:`medmoe.backbones.encode_cached`) and their attention masks (``text_mask``, for the gate's pooling)."""
    f = encode_cached(encoder, list(dataset.texts))
    return TextFeatureDataset(dataset, f.hidden, f.mask)


class TeacherDataset(Dataset):
    """Adds the frozen teacher's fused features of each item (``teacher``: one ``(N_s, C_s)`` tensor per stage).

    The text-present model is frozen during distillation, so its features are computed once
    (:func:`medmoe.papers.mlmoe.recipe.teacher_features`) instead of in every step of every epoch.
    """

    def __init__(self, dataset: Dataset, teacher: Sequence[torch.Tensor]) -> None:
        if any(len(t) != len(dataset) for t in teacher):
            raise ValueError(f"teacher features must have {len(dataset)} rows, got {[len(t) for t in teacher]}")
        self.dataset, self.teacher = dataset, list(teacher)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "teacher": [t[i] for t in self.teacher]}
