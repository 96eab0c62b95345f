"""LViT's prepared folder layout (QaTa-COV19 and MosMedData+): load it, write phantoms in it, and
arrange downloaded files into it or into the Ariadne layout of :mod:`medmoe.data.qata`.

Explained in the book: Chapter 1, MLMoE. MLMoE trains and tests on QaTa-COV19 and MosMedData+ with
LViT's text annotations; :class:`LViTDataset` reads LViT's own layout with the same items and the same
preprocessing as :class:`~medmoe.data.qata.QaTaDataset` (the code is shared), and
``data_scripts/prepare_qata.py`` / ``data_scripts/prepare_mosmed.py`` use the helpers at the end of
this module to turn the Kaggle downloads plus LViT's workbooks into either layout.

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
or LViT's train + validation tables is **unresolved** (papers_spec §1.4). We offer both:

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
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from medmoe.data.download import place_file
from medmoe.data.qata import (
    _MASK_PREFIX,
    TABLE_COLUMNS,
    _check_header,
    _check_size,
    _check_val_fraction,
    _head_tail,
    _load_grey,
    _phantom_pngs,
    _Record,
    _table_rows,
    _TextMaskDataset,
    _where,
)

__all__ = [
    "LVIT_SPLIT_FOLDERS",
    "LVIT_TABLE_STEMS",
    "SPLIT_POLICIES",
    "MASK_NAME_RULES",
    "LVIT_DATASETS",
    "IMAGE_SUFFIXES",
    "LViTDataset",
    "write_lvit_layout",
    "find_text_table",
    "read_text_table",
    "write_text_table",
    "image_name_candidates",
    "TextRow",
    "match_images",
    "SourcePair",
    "check_readable",
    "arrange_ariadne_layout",
    "arrange_lvit_layout",
    "PREPARED_MARKER",
    "prepared_is_current",
    "build_folder_atomically",
    "describe_tree",
    "walk_folders",
    "resolve_download",
    "check_workbooks",
]

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
        from openpyxl import Workbook

        book = Workbook()
        sheet = book.active
        sheet.append(list(TABLE_COLUMNS))
        for row in rows:
            sheet.append(list(row))
        book.save(path)
    elif suffix == ".csv":
        import pandas as pd

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

    Items and preprocessing are exactly those of :class:`~medmoe.data.qata.QaTaDataset` (same code):
    the image is read as 8-bit grey, resized to ``size x size`` (bilinear) and z-scored per image; the
    mask is resized with nearest neighbours and binarised as ``value >= mask_threshold`` (128).

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
    Loading an item whose mask has lesion pixels only below ``mask_threshold`` (a 0/1 mask) raises
    ``ValueError`` instead of returning an empty mask; pass ``mask_threshold=1`` (LViT's own rule,
    ``mask > 0``) for such masks.

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

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        if item["mask"].sum() == 0 and self.mask_threshold > 1:
            mask_path = self.records[index][1]
            peak = int(_load_grey(mask_path).max())
            if 0 < peak < self.mask_threshold:
                raise ValueError(
                    f"mask file {mask_path} has lesion values up to {peak}, all below mask_threshold="
                    f"{self.mask_threshold}, so it would read as empty; it looks like a 0/1 mask: pass "
                    "mask_threshold=1 (LViT's rule, mask > 0)"
                )
        return item


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


# --------------------------------------------------------------------------------------------------
# Arranging downloaded files (used by data_scripts/prepare_qata.py and prepare_mosmed.py)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourcePair:
    """One image/mask/description to place in a layout.

    Attributes:
        image: the source image file. mask: the source mask file. text: the description.
        mask_name: the mask's file name in the layout, and the table's ``Image`` value.
        image_name: the image's file name in the layout. If its suffix differs from ``image``'s, the
            image is re-encoded (e.g. a ``.jpg`` source written as ``.png``).
    """

    image: Path
    mask: Path
    text: str
    mask_name: str
    image_name: str


class _Placer:
    """Copies (or hard-links) files into a layout, re-encoding or binarising where asked, once each."""

    def __init__(self, *, binarise_masks: bool, link: bool) -> None:
        self.binarise_masks = binarise_masks
        self.link = link
        self.written: dict[Path, Path] = {}
        self.masks_binarised = 0

    def _claim(self, src: Path, dst: Path) -> bool:
        previous = self.written.get(dst)
        if previous is not None:
            if previous != src:
                raise ValueError(f"two different files would be written to {dst}: {previous} and {src}")
            return False
        self.written[dst] = src
        return True

    def _copy(self, src: Path, dst: Path) -> None:
        place_file(src, dst, link=self.link)

    def image(self, src: Path, dst: Path) -> None:
        if not self._claim(src, dst):
            return
        if src.suffix.lower() == dst.suffix.lower():
            self._copy(src, dst)
            return
        try:
            with Image.open(src) as im:
                im.load()
                if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
                    im = im.convert("RGB")
                im.save(dst)
        except OSError as err:
            raise ValueError(f"cannot re-encode image file {src} as {dst.name}: {err}") from err

    def mask(self, src: Path, dst: Path) -> None:
        if not self._claim(src, dst):
            return
        if not self.binarise_masks:
            self._copy(src, dst)
            return
        if dst.suffix.lower() != ".png":
            raise ValueError(f"binarised masks are written as PNG; name {dst.name!r} (from {src}) must end in .png")
        grey = _load_grey(src)
        if not np.isin(grey, (0, 255)).all():
            self.masks_binarised += 1
        Image.fromarray(np.where(grey > 0, 255, 0).astype(np.uint8)).save(dst, format="PNG")


def check_readable(paths: Iterable[Path]) -> int:
    """Read the header of every image file in ``paths`` (no pixel decoding); returns how many.

    Raises:
        ValueError: files that are not readable images (garbage bytes, wrong format); the message lists
            the first 20 with the reason and says how many there are.
    """
    problems, n = [], 0
    for path in paths:
        n += 1
        try:
            _check_header(Path(path))
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError(_summarise(problems, of=n, what="files"))
    return n


def _check_ariadne_names(pairs: Iterable[SourcePair]) -> None:
    for p in pairs:
        if not p.mask_name.startswith(_MASK_PREFIX) or p.image_name != p.mask_name[len(_MASK_PREFIX) :]:
            raise ValueError(
                f"Ariadne layout needs mask_name = 'mask_' + image_name, got mask_name={p.mask_name!r}, "
                f"image_name={p.image_name!r} (source {p.mask})"
            )


def arrange_ariadne_layout(
    out: str | Path,
    *,
    train: Sequence[SourcePair],
    test: Sequence[SourcePair],
    binarise_masks: bool = False,
    link: bool = False,
) -> dict[str, int]:
    """Place pairs in the Ariadne layout read by :class:`~medmoe.data.qata.QaTaDataset`.

    Writes ``out/Train/Images/<image_name>``, ``out/Train/GTs/<mask_name>`` and ``out/prompt/train.csv``
    (rows in the order given: pass LViT's Train rows, then its Val rows), and the same for ``Test``.
    ``mask_name`` must be ``"mask_" + image_name``.

    Args:
        out: the (new, usually temporary) output folder.
        train, test: the pairs of each table.
        binarise_masks: re-write masks as PNG with ``value > 0 -> 255`` (LViT's rule; Ariadne needs 255);
            otherwise masks are copied byte for byte.
        link: hard-link files instead of copying where the file system allows.

    Returns:
        Counts: ``{"train": rows, "test": rows, "files": files written, "masks_binarised": n}``.
    """
    _check_ariadne_names([*train, *test])
    out = Path(out)
    placer = _Placer(binarise_masks=binarise_masks, link=link)
    for split, pairs in (("train", train), ("test", test)):
        folder = out / ("Train" if split == "train" else "Test")
        (folder / "Images").mkdir(parents=True, exist_ok=True)
        (folder / "GTs").mkdir(parents=True, exist_ok=True)
        for p in pairs:
            placer.image(p.image, folder / "Images" / p.image_name)
            placer.mask(p.mask, folder / "GTs" / p.mask_name)
        write_text_table(((p.mask_name, p.text) for p in pairs), out / "prompt" / f"{split}.csv")
    return {"train": len(train), "test": len(test), "files": len(placer.written),
            "masks_binarised": placer.masks_binarised}


def arrange_lvit_layout(
    out: str | Path,
    *,
    train: Sequence[SourcePair],
    val: Sequence[SourcePair],
    test: Sequence[SourcePair],
    binarise_masks: bool = False,
    link: bool = False,
) -> dict[str, int]:
    """Place pairs in LViT's layout read by :class:`LViTDataset`.

    Writes ``out/<Split>_Folder/img/<image_name>``, ``labelcol/<mask_name>`` and ``<Split>_text.xlsx``
    for the three splits. Arguments as for :func:`arrange_ariadne_layout`.

    Returns:
        Counts: ``{"train": rows, "val": rows, "test": rows, "files": n, "masks_binarised": n}``.
    """
    out = Path(out)
    placer = _Placer(binarise_masks=binarise_masks, link=link)
    for split, pairs in (("train", train), ("val", val), ("test", test)):
        folder = out / LVIT_SPLIT_FOLDERS[split]
        (folder / "img").mkdir(parents=True, exist_ok=True)
        (folder / "labelcol").mkdir(parents=True, exist_ok=True)
        for p in pairs:
            placer.image(p.image, folder / "img" / p.image_name)
            placer.mask(p.mask, folder / "labelcol" / p.mask_name)
        write_text_table(((p.mask_name, p.text) for p in pairs), folder / f"{LVIT_TABLE_STEMS[split]}.xlsx")
    return {"train": len(train), "val": len(val), "test": len(test), "files": len(placer.written),
            "masks_binarised": placer.masks_binarised}


PREPARED_MARKER = ".medmoe_prepared.json"
"""File a prepare script leaves in its output folder: what it was built from (for idempotent re-runs)."""


def prepared_is_current(out: str | Path, fingerprint: Mapping[str, object]) -> bool:
    """``True`` if ``out`` was built by a prepare script from exactly ``fingerprint``.

    Raises:
        FileExistsError: ``out`` exists, is not empty, and has no :data:`PREPARED_MARKER` -- it was not
            written by a prepare script, so it is never replaced.
    """
    out = Path(out)
    if not out.exists():
        return False
    marker = out / PREPARED_MARKER
    if not marker.is_file():
        if out.is_dir() and not any(out.iterdir()):
            return False
        raise FileExistsError(
            f"{out} already exists and was not written by a medmoe prepare script (no {PREPARED_MARKER}); "
            "it is left untouched. Remove it or choose another output folder."
        )
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded.get("fingerprint") == json.loads(json.dumps(dict(fingerprint)))


def build_folder_atomically(
    out: str | Path,
    build: Callable[[Path], Mapping[str, object]],
    *,
    fingerprint: Mapping[str, object],
) -> Mapping[str, object]:
    """Run ``build(tmp)`` in a temporary folder next to ``out``, then put it in place of ``out``.

    Nothing appears at ``out`` until ``build`` finished; a failure removes the temporary folder and
    leaves an existing ``out`` as it was. An existing ``out`` (with a :data:`PREPARED_MARKER`) is
    replaced by two renames (old out aside, new in) and then deleted. The marker records
    ``fingerprint`` and what ``build`` returned (counts).

    Returns:
        What ``build`` returned.
    """
    out = Path(out)
    prepared_is_current(out, fingerprint)  # refuses a foreign folder before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        summary = build(tmp)
        payload = {"fingerprint": dict(fingerprint), "summary": dict(summary)}
        (tmp / PREPARED_MARKER).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def describe_tree(folder: str | Path, *, max_depth: int = 4, max_lines: int = 40) -> str:
    """A short listing of the sub-folders of ``folder`` with their file counts, for error messages.

    Example:
        >>> print(describe_tree("data/mosmed_plus"))  # doctest: +SKIP
          data/mosmed_plus/  (1 file)
            frames/  (2729 files)
            masks/  (2729 files)
    """
    folder = Path(folder)
    lines: list[str] = []

    def walk(path: Path, depth: int) -> None:
        if len(lines) > max_lines:
            return
        try:
            entries = sorted(path.iterdir())
        except OSError:
            return
        n_files = sum(1 for e in entries if e.is_file())
        label = str(path) if depth == 0 else path.name
        lines.append(f"  {'  ' * depth}{label}/  ({n_files} file{'s' if n_files != 1 else ''})")
        if depth < max_depth:
            for e in entries:
                if e.is_dir() and not e.name.startswith("."):
                    walk(e, depth + 1)

    walk(folder, 0)
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["  ..."]
    return "\n".join(lines) if lines else f"  {folder} (cannot be listed)"


def walk_folders(folder: str | Path, *, max_depth: int = 4) -> list[Path]:
    """``folder`` and its sub-folders down to ``max_depth`` levels, breadth first, hidden ones skipped.

    Example:
        >>> walk_folders("data/qata_cov19", max_depth=1)  # doctest: +SKIP
        [PosixPath('data/qata_cov19'), PosixPath('data/qata_cov19/QaTa-COV19')]
    """
    folder = Path(folder)
    found, frontier = [folder], [folder]
    for _ in range(max_depth):
        nxt = []
        for path in frontier:
            try:
                nxt += sorted(e for e in path.iterdir() if e.is_dir() and not e.name.startswith("."))
            except OSError:
                continue
        found += nxt
        frontier = nxt
    return found


def resolve_download(
    given: str | Path | None,
    *,
    source: str,
    root: str | Path,
    scratch: Callable[[], Path],
    verify: bool = True,
    use_kaggle_cli: bool = True,
    progress: bool = True,
) -> Path:
    """The folder holding a downloaded data set: a given folder, a given archive (unpacked), or the
    catalogue's folder under the data root (checked by :func:`medmoe.data.sources.fetch`).

    Args:
        given: a folder, an archive (``.zip``/``.tar.gz``...), or ``None`` for ``fetch(source, root)``.
        source: the catalogue name (``"qata_cov19"``, ``"mosmed_plus"``).
        root: the data root used when ``given`` is ``None``.
        scratch: returns an empty folder to unpack a given archive into (the caller removes it).
        verify, use_kaggle_cli, progress: passed to ``fetch``.

    Raises:
        ManualDownloadRequired: nothing is on disk yet; the message says what to download and where.
        FileNotFoundError: ``given`` does not exist.
    """
    from medmoe.data.download import ManualDownloadRequired, extract, is_archive
    from medmoe.data.sources import get_source
    from medmoe.data.sources import fetch as fetch_source

    if given is None:
        entry = get_source(source)
        try:
            return fetch_source(entry, root, verify=verify, use_kaggle_cli=use_kaggle_cli, progress=progress)
        except ManualDownloadRequired:
            base = Path(root).expanduser() / entry.target
            # Unpacked by hand with no archive left: accept the folder, the caller looks inside.
            if base.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in base.iterdir()):
                return base
            raise
    path = Path(given).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if not is_archive(path):
            raise ValueError(f"{path} is neither a folder nor a known archive (.zip, .tar.gz, ...)")
        return extract(path, scratch() / "unpacked")
    raise FileNotFoundError(f"not found: {path} (give the downloaded archive or the folder it unpacks to)")


def check_workbooks(
    given: str | Path | None,
    *,
    source: str,
    root: str | Path,
    verify: bool = True,
) -> Path:
    """The folder holding LViT's workbooks, every file present and checked against the catalogue.

    ``given`` is a folder holding the workbooks under their catalogue names; ``None`` means
    ``<root>/<target>`` of the catalogue entry. Uses :func:`medmoe.data.sources.fetch`, so a missing
    file raises ``ManualDownloadRequired`` (with the download instructions and the exact paths) and a
    file that does not match its pinned SHA-256 raises ``ChecksumError`` (``verify=False`` skips that).
    """
    import dataclasses

    from medmoe.data.sources import fetch as fetch_source
    from medmoe.data.sources import get_source

    entry = get_source(source)
    if given is None:
        return fetch_source(entry, root, verify=verify, progress=False)
    folder = Path(given).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"workbook folder not found: {folder}")
    return fetch_source(dataclasses.replace(entry, target="."), folder, verify=verify, progress=False)


# ----------------------------------------------------------------------------------------------------------
# Shared by data_scripts/prepare_qata.py and data_scripts/prepare_mosmed.py
# ----------------------------------------------------------------------------------------------------------


class ScratchDirs:
    """Temporary folders next to an output folder (same file system, so results can be moved in atomically);
    call to make one, :meth:`cleanup` removes them all."""

    def __init__(self, parent: Path, prefix: str) -> None:
        self.parent, self.prefix, self.made = Path(parent), prefix, []

    def __call__(self) -> Path:
        import tempfile

        self.parent.mkdir(parents=True, exist_ok=True)
        self.made.append(Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.parent)))
        return self.made[-1]

    def cleanup(self) -> None:
        import shutil

        for d in self.made:
            shutil.rmtree(d, ignore_errors=True)


def plan_outputs(*, out: Path, lvit_out: Path | None, fingerprint, force: bool):
    """The outputs a prepare script must (re)build: ``(outputs, prints, todo)``.

    ``outputs`` pairs each folder with its layout (``"ariadne"``, and ``"lvit"`` when asked for); ``prints`` is each
    output's input fingerprint (``fingerprint(layout)``); ``todo`` the outputs that are missing or out of date
    (all of them with ``force``). Raises ``ValueError`` when both layouts would go to the same folder.
    """
    if lvit_out is not None and lvit_out.resolve() == out.resolve():
        raise ValueError("--out and --lvit-layout must be different folders")
    outputs = [(out, "ariadne")] + ([(lvit_out, "lvit")] if lvit_out is not None else [])
    prints = {o: fingerprint(layout) for o, layout in outputs}
    todo = [(o, layout) for o, layout in outputs if force or not prepared_is_current(o, prints[o])]
    return outputs, prints, todo
