"""The QaTa-COV19 folder layout (as read by Ariadne's Thread / LanGuideMedSeg, texts from LViT): write
phantoms in it, and load it back -- one loader for the phantoms and for the real data.

Explained in the book: the text-guided segmentation chapters (*Ariadne's Thread* and the MoE variants
built on it) train on ``QaTaDataset``; with no download they read phantoms written by
:func:`write_qata_layout`, and with the real QaTa-COV19 set unpacked in the same layout nothing else
changes. ``data_scripts/prepare_qata.py`` and ``data_scripts/prepare_mosmed.py`` arrange the
downloaded QaTa-COV19 and MosMedData+ files in this layout; :mod:`medmoe.data.lvit` reads LViT's own
layout with the same item format and preprocessing (the shared helpers live here).

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = ["write_qata_layout", "QaTaDataset", "SPLIT_FOLDERS", "TABLE_COLUMNS"]

SPLIT_FOLDERS: dict[str, str] = {"train": "Train", "val": "Train", "test": "Test"}
"""Folder under ``root`` for each split (train and val share the training folder and table)."""

TABLE_COLUMNS: tuple[str, str] = ("Image", "Description")
"""The two columns a QaTa-COV19 text table must have."""

_MASK_PREFIX = "mask_"

_T = TypeVar("_T")

# A loaded row: (image path, mask path, description, image file name).
_Record = tuple[Path, Path, str, str]


# --------------------------------------------------------------------------------------------------
# Shared helpers (also used by medmoe.data.lvit and the data_scripts/prepare_*.py scripts)
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


def _check_header(path: Path) -> None:
    """Open an image file and read its header only (no pixel decoding); garbage -> ValueError."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 -- the header has been parsed
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image file {path}: {err}") from err


def _load_grey(path: Path) -> np.ndarray:
    """Decode an image file to an ``(H, W)`` uint8 grey array; unreadable data -> ValueError naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image file {path}: {err}") from err


def _load_pair(
    image_path: Path, mask_path: Path, *, size: int, mask_threshold: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read, resize and normalise one image/mask pair -> ``image (1, size, size)``, ``mask (1, size, size)``.

    Image: grey uint8, bilinear resize, per-image z-score (constant image -> zeros). Mask: grey uint8,
    binarised as ``value >= mask_threshold``, nearest-neighbour resize.
    """
    image = torch.from_numpy(_load_grey(image_path).astype(np.float32))[None, None]
    mask = torch.from_numpy(_load_grey(mask_path) >= mask_threshold).float()[None, None]
    image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(mask, size=(size, size), mode="nearest-exact")[0]
    std = image.std(unbiased=False)
    image = (image - image.mean()) / (std if std > 0 else 1.0)
    return image, mask


class _TextMaskDataset(Dataset):
    """Base of :class:`QaTaDataset` and :class:`medmoe.data.lvit.LViTDataset`: items from ``records``.

    Subclasses fill ``self.records`` (``[(image path, mask path, text, name), ...]``) and ``self.size``.
    """

    records: list[_Record]
    size: int
    mask_threshold: int = 128

    def __len__(self) -> int:
        return len(self.records)

    @property
    def texts(self) -> list[str]:
        """The descriptions of this split, in item order."""
        return [r[2] for r in self.records]

    def _check_headers(self) -> None:
        for image_path, mask_path, _, _ in self.records:
            _check_header(image_path)
            _check_header(mask_path)

    def __getitem__(self, index: int) -> dict:
        image_path, mask_path, text, name = self.records[index]
        image, mask = _load_pair(image_path, mask_path, size=self.size, mask_threshold=self.mask_threshold)
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
    (bilinear) and z-score normalised per image (``(x - mean) / std``, MONAI's
    ``NormalizeIntensity(channel_wise=True)``; a constant image becomes all zeros). The mask is resized
    with nearest neighbours and binarised as ``value >= 128``. The reference code uses ``== 255``; the
    two agree on clean 0/255 masks, and ``>= 128`` keeps lesion pixels that resampling or lossy
    re-saving moved off 255. Note that a mask stored as 0/1 reads as empty with either rule.

    Args:
        root: the data root (holding ``Train/``, ``Test/`` and ``prompt/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        table: the text table; default ``root/prompt/train.csv`` (train, val) or ``root/prompt/test.csv``
            (test). A ``.csv`` or an LViT ``.xlsx`` with the same two columns.
        size: output height = width, >= 8.
        val_fraction: fraction of the train table's rows, taken from its end, used as ``val``; in [0, 1).

    Items (dict):
        ``image`` float32 ``(1, size, size)``, ``mask`` float32 ``(1, size, size)`` in {0, 1},
        ``text`` str (the description, stripped), ``name`` str (the image file name).

    Example:
        >>> ds = QaTaDataset(root="data/QaTa-COV19-v2", split="train")  # doctest: +SKIP
        >>> item = ds[0]; item["image"].shape, item["text"]  # doctest: +SKIP
        (torch.Size([1, 224, 224]), 'Bilateral pulmonary infection, two infected areas, ...')
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str,
        table: str | Path | None = None,
        size: int = 224,
        val_fraction: float = 0.2,
    ) -> None:
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"split must be one of {tuple(SPLIT_FOLDERS)}, got {split!r}")
        self.size = _check_size(size)
        self.val_fraction = _check_val_fraction(val_fraction)
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
