"""MedMoE's data: UniMed caption tables (the image-text pairs MedMoE pretrains on) as a PyTorch data set, one
sample per caption, and :class:`ReportDataset`, which attaches the encoded reports to any image data set.

Used in the book by: *Chapter 2, MedMoE* (``chapters/02_medmoe``), section 1 "Data: image-report pairs with a
modality label" -- pretraining pairs every image with each of its captions and with a modality label (the target
of the router's auxiliary loss); section 2 "The text branch" encodes the reports once, and :class:`ReportDataset`
hands them to the training loop. :mod:`medmoe.papers.medmoe.evalsets` loads the zero-shot / linear-probe
benchmarks with the same image preprocessing (:func:`load_image_rgb`).

**The tables** (UniMed-CLIP's processed captions, downloaded by hand from MBZUAI SharePoint; see
``python data_scripts/fetch.py --show unimed_captions``). MedMoE reads three of them:
``radimagenet_with_captions_training_set.csv``, ``chexpert_with_captions_only_frontal_view.csv`` and
``Chest-Xray8_with_captions.csv``. Facts about their format, and where they come from:

* one row per image; the column ``filename`` holds a *Python list literal* with one image path,
  ``"['radiology_ai/CT/...png']"``, and the column ``captions`` a Python list literal of caption strings
  [MedMoE ``scripts/{radimagenet,chexpert,chestxray}_webdataset.py`` read ``row['filename']`` and
  ``row['captions']``; UniMed-CLIP ``data_prepration_scripts/*/*_webdataset.py`` read the same two by
  position (0 and 2) with ``ast.literal_eval``, and take element ``[0]`` of the file name list].
* **every caption is a separate sample** (MedMoE writes one webdataset sample per caption).
* the image path is relative to a per-table folder: RadImageNet paths start with ``radiology_ai/`` and
  sit under the RadImageNet download, CheXpert paths under the folder holding ``CheXpert-v1.0-small``,
  ChestX-ray8 names under ``chest_xray8/images`` (UniMed-CLIP ``docs/UniMed-DATA.md``). Hence
  ``image_root`` may be given once per table.
* modality labels (6 classes, :data:`UNIMED_MODALITIES`): RadImageNet by the modality folder of the path
  (:func:`modality_from_path`), CheXpert and ChestX-ray8 all X-ray (0) [MedMoE ``scripts/``].

**Assumptions** (no source says otherwise): the column between ``filename`` and ``captions`` (a list of
class labels in UniMed-CLIP's scripts) is never read, and :func:`write_unimed_fixture` names it
``labels``. A ``filename`` / caption cell that is not a list literal is taken as one plain string.
Empty caption strings inside a list are dropped; a row left with no caption at all is an error.

Preprocessing (per item, :func:`load_image_rgb`): RGB (grey replicated to 3 channels), bicubic resize
to ``size x size``, values in [0, 1]. Normalisation (ImageNet mean/std for Swin) is the model's job.

Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> csv = write_unimed_fixture(root, [("radiology_ai/CT/lung/a.png", ["axial CT of the chest", "lung CT"]),
    ...                                   ("radiology_ai/US/liver/b.png", ["liver ultrasound"])])
    >>> ds = UniMedCaptions(csv_files=[csv], image_root=root, size=32)
    >>> len(ds), ds.texts[1], ds.modality_labels
    (3, 'lung CT', [1, 1, 3])
    >>> item = ds[2]
    >>> item["image"].shape, item["image"].dtype, item["modality"], UNIMED_MODALITIES[item["modality"]]
    (torch.Size([3, 32, 32]), torch.float32, 3, 'ultrasound')
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = [
    "UNIMED_MODALITIES",
    "UNIMED_CAPTION_FILES",
    "RADIMAGENET_MODALITY_FOLDERS",
    "UniMedCaptions",
    "ReportDataset",
    "LESION_SCALE_BY_MODALITY",
    "PHANTOM_ANALOGUE",
    "lesion_scale",
    "modality_from_path",
    "load_image_rgb",
    "write_unimed_fixture",
    "split_by_image",
]

UNIMED_MODALITIES: tuple[str, ...] = ("x-ray", "ct", "mri", "ultrasound", "pathology", "fundus")
"""The six modality classes of MedMoE's router; the index is the label id."""

UNIMED_CAPTION_FILES: dict[str, str] = {
    "radimagenet": "radimagenet_with_captions_training_set.csv",
    "chexpert": "chexpert_with_captions_only_frontal_view.csv",
    "chestxray8": "Chest-Xray8_with_captions.csv",
}
"""The UniMed caption tables MedMoE's active configuration trains on (its other shards -- ROCOv2, PMC-OA,
Quilt-1M -- use BiomedCLIP pseudo-labels and are not covered here)."""

RADIMAGENET_MODALITY_FOLDERS: dict[str, int] = {"CT": 1, "MR": 2, "US": 3, "UT": 3}
"""RadImageNet's modality folders (``radiology_ai/{CT,MR,US}``) -> modality label. MedMoE's script tests the
substring ``"UT"`` for ultrasound; RadImageNet's folder is ``US`` (UniMed-CLIP ``docs/UniMed-DATA.md``), so
both are accepted."""

PathLike = Union[str, "os.PathLike[str]"]
ModalitySpec = Union[int, str]

_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


# --------------------------------------------------------------------------------------------------
# Shared helpers (also used by medmoe.papers.medmoe.evalsets)
# --------------------------------------------------------------------------------------------------


def check_size(size: object) -> int:
    """``size`` must be an int >= 8 (``ValueError`` otherwise); returns it."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    return size


def _grey_float_to_tensor(grey: np.ndarray, size: int) -> torch.Tensor:
    """``(H, W)`` float in [0, 1] -> bicubic ``(3, size, size)`` float32 tensor in [0, 1]."""
    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32))  # mode "F"
    resized = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    resized = np.clip(resized, 0.0, 1.0)
    return torch.from_numpy(resized.copy())[None].expand(3, size, size).contiguous()


def _min_max(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def _read_dicom(path: Path) -> np.ndarray:
    """A 2-D DICOM -> ``(H, W)`` float32 in [0, 1] (min-max; MONOCHROME1 inverted)."""
    try:  # lazy: pydicom is optional, needed only for DICOM files
        import pydicom
    except ImportError as err:
        raise ImportError(
            f"reading the DICOM file {path} needs pydicom, which is not installed: pip install pydicom"
        ) from err
    try:
        dataset = pydicom.dcmread(path)
        pixels = np.asarray(dataset.pixel_array)
    except Exception as err:  # pydicom raises many types for broken files
        raise ValueError(f"cannot decode DICOM file {path}: {err}") from err
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB ultrasound and the like
        pixels = pixels.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"DICOM file {path} holds pixel data of shape {pixels.shape}; expected one 2-D image")
    grey = _min_max(pixels)
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 1.0 - grey
    return grey


def load_image_rgb(path: PathLike, *, size: int) -> torch.Tensor:
    """Read one image file as a float32 ``(3, size, size)`` tensor in [0, 1].

    8-bit images (grey, RGB, palette, with or without alpha) are converted to RGB -- grey is replicated to
    three channels -- and resized with PIL's bicubic filter, then divided by 255 (what the
    ``AutoImageProcessor`` of Swin does before normalising). 16-bit / 32-bit images and DICOM files
    (``.dcm``, read with pydicom when it is installed) are min-max scaled to [0, 1] per image first.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file cannot be decoded, or ``size`` is not an int >= 8.
        ImportError: a ``.dcm`` file and pydicom is missing (says ``pip install pydicom``).

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "grey.png")
        >>> Image.new("L", (40, 20), color=255).save(path)
        >>> image = load_image_rgb(path, size=16)
        >>> tuple(image.shape), float(image.min()), float(image.max())
        ((3, 16, 16), 1.0, 1.0)
    """
    check_size(size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.suffix.lower() == ".dcm":
        return _grey_float_to_tensor(_read_dicom(path), size)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _HIGH_BIT_MODES:
                return _grey_float_to_tensor(_min_max(np.asarray(image)), size)
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image file {path}: {err}") from err
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def modality_from_path(path: PathLike) -> int:
    """The modality label of a RadImageNet-style image path, from its modality folder.

    The first path component (``/`` or ``\\`` separated) that is ``CT`` (-> 1), ``MR`` (-> 2) or ``US`` /
    ``UT`` (-> 3) decides; see :data:`RADIMAGENET_MODALITY_FOLDERS`. Matching is on whole components and
    case-sensitive, so ``ct_scan.png`` or ``abdomen_us`` do not count.

    Raises:
        ValueError: no component names a modality; the message quotes the path.

    Example:
        >>> modality_from_path("radiology_ai/MR/knee/acl/img01.png")
        2
        >>> UNIMED_MODALITIES[modality_from_path("radiology_ai/US/liver/usn053022.png")]
        'ultrasound'
    """
    for part in re.split(r"[\\/]+", os.fspath(path)):
        if part in RADIMAGENET_MODALITY_FOLDERS:
            return RADIMAGENET_MODALITY_FOLDERS[part]
    raise ValueError(
        f"cannot tell the modality of {os.fspath(path)!r}: no path component is one of "
        f"{sorted(RADIMAGENET_MODALITY_FOLDERS)} (RadImageNet's modality folders)"
    )


def parse_list_cell(value: object) -> list[str]:
    """A table cell holding a Python list literal (``"['a', 'b']"``) -> ``['a', 'b']``.

    Any other non-empty text is one item; an empty cell or ``NaN`` is ``[]``. A malformed list literal
    raises ``ValueError``.

    Example:
        >>> parse_list_cell("['CT of the chest.', \\"patient's lung\\"]")
        ['CT of the chest.', "patient's lung"]
        >>> parse_list_cell("plain caption"), parse_list_cell("")
        (['plain caption'], [])
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    text = str(value).strip()
    if not text:
        return []
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"malformed list literal {text[:80]!r}: {err}") from err
        if not isinstance(parsed, (list, tuple)):
            raise ValueError(f"expected a list literal, got {text[:80]!r}")
        return [str(item) for item in parsed]
    return [text]


def _modality_from_value(value: str) -> int:
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and number.is_integer() and 0 <= int(number) < len(UNIMED_MODALITIES):
        return int(number)
    aliases = {name: i for i, name in enumerate(UNIMED_MODALITIES)} | {"xray": 0, "x ray": 0}
    if text in aliases:
        return aliases[text]
    raise ValueError(
        f"unknown modality value {value!r}; expected 0..{len(UNIMED_MODALITIES) - 1} or one of {UNIMED_MODALITIES}"
    )


def _check_modality_spec(spec: object, csv: Path) -> ModalitySpec:
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise ValueError(f"modality for {csv} must be an int, 'from_path' or a column name, got {spec!r}")
    if isinstance(spec, int) and not 0 <= spec < len(UNIMED_MODALITIES):
        raise ValueError(f"modality for {csv} must be in 0..{len(UNIMED_MODALITIES) - 1}, got {spec}")
    if isinstance(spec, str) and not spec:
        raise ValueError(f"modality for {csv} is an empty string; give 'from_path', a column name or an int")
    return spec


def _per_table(value: object, n: int, what: str, single: tuple[type, ...]) -> list:
    """One value for all ``n`` tables, or a list/tuple with one value per table."""
    if isinstance(value, single):
        return [value] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what}: got {len(value)} values for {n} CSV files; give one, or one per file")
        return list(value)
    raise ValueError(f"{what} must be a single value or a list with one value per CSV file, got {value!r}")


# --------------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------------


class UniMedCaptions(Dataset):
    """UniMed image-caption pairs, one sample per caption, with MedMoE's modality label.

    Tables are read at construction: each CSV must exist (``FileNotFoundError``) and have the named
    columns (``ValueError`` naming the file, the missing and the found columns); every row must give an
    image path and at least one caption, and a modality that can be read (``ValueError`` naming the file
    and the 0-based data row). Image files are only opened in ``__getitem__``; a missing one raises
    ``FileNotFoundError`` naming it, so a partial download fails at the first absent image, not at start.

    Args:
        csv_files: the caption tables (see the module docstring for their format).
        image_root: folder the ``image_column`` paths are relative to; one for all tables, or a list with
            one per table (RadImageNet, CheXpert and ChestX-ray8 live in different folders).
        size: output height = width (>= 8).
        modality: ``"from_path"`` (RadImageNet: :func:`modality_from_path`), an int label for the whole
            table (``0`` for CheXpert / ChestX-ray8), or the name of a column holding ints ``0..5`` or
            names from :data:`UNIMED_MODALITIES`. One spec for all tables, or a list with one per table.
        image_column: column with the image path (a one-element list literal in the real tables).
        caption_columns: column(s) with captions; each cell a list literal of captions or one caption.
        max_items: keep only the first ``max_items`` samples (captions), table by table; ``None`` = all.
            Only as many rows as needed are read, so this is cheap on the multi-million-row tables.

    Attributes:
        texts: the caption of every sample, in item order.
        modality_labels: the modality label of every sample.
        paths: the full image path of every sample (repeated for the captions of one image).

    Items (dict):
        ``image`` float32 ``(3, size, size)`` in [0, 1]; ``text`` str; ``modality`` int in 0..5; ``path`` str.

    Example:
        >>> ds = UniMedCaptions(  # doctest: +SKIP
        ...     csv_files=["data/unimed_captions/radimagenet_with_captions_training_set.csv",
        ...                "data/unimed_captions/chexpert_with_captions_only_frontal_view.csv"],
        ...     image_root=["data/radimagenet", "data"], modality=["from_path", 0])
        >>> ds[0]["image"].shape, ds[0]["modality"]  # doctest: +SKIP
        (torch.Size([3, 224, 224]), 1)
    """

    def __init__(
        self,
        *,
        csv_files: Sequence[PathLike],
        image_root: PathLike | Sequence[PathLike],
        size: int = 224,
        modality: ModalitySpec | Sequence[ModalitySpec] = "from_path",
        image_column: str = "filename",
        caption_columns: str | Sequence[str] = "captions",
        max_items: int | None = None,
    ) -> None:
        self.size = check_size(size)
        if isinstance(csv_files, (str, os.PathLike)):
            csv_files = [csv_files]
        csvs = [Path(c) for c in csv_files]
        if not csvs:
            raise ValueError("csv_files is empty; give at least one UniMed caption table")
        if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
            raise ValueError(f"max_items must be a positive int or None, got {max_items!r}")
        roots = [Path(r) for r in _per_table(image_root, len(csvs), "image_root", (str, os.PathLike))]
        per_table = _per_table(modality, len(csvs), "modality", (int, str))
        specs = [_check_modality_spec(spec, csv) for spec, csv in zip(per_table, csvs)]
        captions = [caption_columns] if isinstance(caption_columns, str) else list(caption_columns)
        if not captions:
            raise ValueError("caption_columns is empty; name at least one caption column")

        self.csv_files = csvs
        self.texts: list[str] = []
        self.modality_labels: list[int] = []
        self.paths: list[str] = []
        for csv, root, spec in zip(csvs, roots, specs):
            remaining = None if max_items is None else max_items - len(self.texts)
            if remaining is not None and remaining <= 0:
                break
            self._read_table(csv, root, spec, image_column, captions, remaining)

    def _read_table(
        self, csv: Path, root: Path, spec: ModalitySpec, image_column: str, caption_columns: list[str],
        remaining: int | None,
    ) -> None:
        if not csv.is_file():
            raise FileNotFoundError(f"UniMed caption table not found: {csv}")
        header = list(pd.read_csv(csv, nrows=0).columns)
        modality_column = spec if isinstance(spec, str) and spec != "from_path" else None
        needed = [image_column, *caption_columns] + ([modality_column] if modality_column else [])
        missing = [c for c in needed if c not in header]
        if missing:
            raise ValueError(f"{csv}: missing column(s) {missing}; found columns {header}")
        frame = pd.read_csv(
            csv, usecols=list(dict.fromkeys(needed)), dtype=str, keep_default_na=False, nrows=remaining
        )
        for row in range(len(frame)):
            where = f"{csv}: row {row} (0-based, header not counted)"
            try:
                names = parse_list_cell(frame[image_column].iat[row])
                texts = [t.strip() for col in caption_columns for t in parse_list_cell(frame[col].iat[row])]
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from err
            if not names or not names[0].strip():
                raise ValueError(f"{where}: empty {image_column!r} cell")
            texts = [t for t in texts if t]
            if not texts:
                raise ValueError(f"{where}: no caption in column(s) {caption_columns}")
            relative = names[0].strip()
            try:
                if spec == "from_path":
                    label = modality_from_path(relative)
                elif modality_column:
                    label = _modality_from_value(frame[modality_column].iat[row])
                else:
                    label = int(spec)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from err
            path = str(root / relative)
            for text in texts:
                if remaining is not None and remaining <= 0:
                    return
                self.texts.append(text)
                self.modality_labels.append(label)
                self.paths.append(path)
                if remaining is not None:
                    remaining -= 1

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        path = self.paths[index]
        return {
            "image": load_image_rgb(path, size=self.size),
            "text": self.texts[index],
            "modality": self.modality_labels[index],
            "path": path,
        }

    def __repr__(self) -> str:
        counts = np.bincount(self.modality_labels, minlength=len(UNIMED_MODALITIES)) if self.texts else []
        per = ", ".join(f"{n}={c}" for n, c in zip(UNIMED_MODALITIES, counts) if c)
        return f"UniMedCaptions({len(self)} captions of {len(set(self.paths))} images; {per})"


def split_by_image(paths: Sequence[str], *, holdout: float = 0.01, seed: int = 0) -> dict[str, list[int]]:
    """Split samples into ``train`` / ``val`` / ``test`` **by image**: every caption of an image goes to the same split.

    UniMed has several captions per image and each caption is a sample (:class:`UniMedCaptions`), so a split over
    samples would put one image in training and in test. Here the distinct images (in order of first appearance)
    are shuffled with ``seed``; ``max(1, round(holdout * n_images))`` of them go to ``val``, as many to ``test``,
    the rest to ``train``. The released code holds out whole webdataset shards, which are split by image too.

    Args:
        paths: the image of every sample (``UniMedCaptions.paths``).
        holdout: share of the images for validation, and the same share for test, in (0, 0.5).
        seed: seed of the shuffle (the split is deterministic for a seed).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``: sorted sample indices; together every index once.

    Raises:
        ValueError: fewer than 3 distinct images, or ``holdout`` outside (0, 0.5).

    Example:
        >>> paths = ["a", "a", "b", "c", "c", "c", "d"]
        >>> parts = split_by_image(paths, holdout=0.25, seed=0)
        >>> parts
        {'train': [2, 6], 'val': [3, 4, 5], 'test': [0, 1]}
        >>> {split: sorted({paths[i] for i in index}) for split, index in parts.items()}
        {'train': ['b', 'd'], 'val': ['c'], 'test': ['a']}
    """
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0.0 < float(holdout) < 0.5:
        raise ValueError(f"holdout must be a share of the images in (0, 0.5), got {holdout!r}")
    images = list(dict.fromkeys(paths))
    if len(images) < 3:
        raise ValueError(f"{len(images)} distinct image(s): a train / val / test split by image needs at least 3")
    n_hold = max(1, round(float(holdout) * len(images)))
    if 2 * n_hold >= len(images):
        raise ValueError(f"holdout={holdout} leaves no training image among {len(images)} images; lower it")
    order = np.random.default_rng(seed).permutation(len(images))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[images[i]] = "val" if rank < n_hold else "test" if rank < 2 * n_hold else "train"
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for index, path in enumerate(paths):
        out[split_of[path]].append(index)
    return out


def write_unimed_fixture(
    root: PathLike,
    rows: Sequence[tuple[str, Sequence[str]]],
    *,
    name: str = UNIMED_CAPTION_FILES["radimagenet"],
    image_size: int = 24,
    write_images: bool = True,
) -> Path:
    """Write a small caption table in UniMed's real format, and tiny grey PNGs for it (tests, examples).

    The CSV ``root/<name>`` has the columns ``filename`` (a one-element list literal with the image path),
    ``labels`` (a list literal with the image's parent folder name; never read by the loader) and
    ``captions`` (a list literal of the captions). Each image ``root/<path>`` is an 8-bit grey PNG of
    ``image_size x image_size`` with a row-dependent gradient.

    Args:
        root: output folder (created if needed); image paths are relative to it.
        rows: ``[(image path, [caption, ...]), ...]``.
        name: the CSV file name.
        image_size: side of the PNGs written.
        write_images: also write the images (``False`` writes only the CSV).

    Returns:
        The path of the CSV written.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (relative, captions) in enumerate(rows):
        if write_images:
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            ramp = np.linspace(0, 255, image_size, dtype=np.float32)
            grey = (np.add.outer(ramp, ramp) / 2 * (0.5 + 0.5 * ((i % 5) / 4))).astype(np.uint8)
            Image.fromarray(grey).save(target)
        records.append({
            "filename": repr([str(relative)]),
            "labels": repr([Path(relative).parent.name]),
            "captions": repr([str(c) for c in captions]),
        })
    csv = root / name
    pd.DataFrame(records, columns=["filename", "labels", "captions"]).to_csv(csv, index=False)
    return csv


# --------------------------------------------------------------------------------------------------
# Report features for pretraining
# --------------------------------------------------------------------------------------------------


class ReportDataset(Dataset):
    """An image dataset with MedMoE's precomputed report features attached (what
    :func:`medmoe.papers.medmoe.recipe.train` reads).

    The text encoder is frozen, so each report is encoded once (:func:`medmoe.papers.medmoe.model.encode_reports`,
    a :class:`~medmoe.papers.medmoe.model.ReportEmbeddings` with one report per item, in item order). Items are
    ``image``, ``modality``, ``words (L, D)``, ``sentence (D,)``, ``cap_len`` and ``index``; the base items must
    have ``image`` and ``modality`` (e.g. :class:`UniMedCaptions`, or the phantoms'
    :class:`~medmoe.data.phantoms.PhantomDataset2D`).

    Raises:
        ValueError: as many encoded reports as items are needed.

    Example:
        >>> from types import SimpleNamespace
        >>> base = [{"image": torch.zeros(3, 8, 8), "modality": 1}]
        >>> reports = SimpleNamespace(words=torch.ones(1, 4, 2), sentence=torch.ones(1, 2), cap_lens=torch.tensor([2]))
        >>> item = ReportDataset(base, reports)[0]
        >>> sorted(item), item["words"].shape
        (['cap_len', 'image', 'index', 'modality', 'sentence', 'words'], torch.Size([4, 2]))
    """

    def __init__(self, dataset: Dataset, reports) -> None:
        if len(reports.words) != len(dataset):
            raise ValueError(f"{len(reports.words)} encoded reports for a dataset of {len(dataset)} items")
        self.dataset, self.reports = dataset, reports

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        r = self.reports
        return {"image": item["image"], "modality": item["modality"], "words": r.words[i],
                "sentence": r.sentence[i], "cap_len": r.cap_lens[i], "index": i}


# --------------------------------------------------------------------------------------------------
# Phantoms whose lesion scale differs by modality (Chapter 2, section 5b: the scale attention beta)
# --------------------------------------------------------------------------------------------------

#: Lesion radius per modality, as a fraction of the smaller half-extent of the region it is drawn in (the
#: phantoms' default is 0.45-0.8 for every modality but dermoscopy, 0.3-0.5). The chapter's phantoms draw small
#: lesions in X-ray and CT, medium ones in MRI and large ones in ultrasound and dermoscopy, so that the scale at
#: which a lesion is visible differs by modality -- the situation MedMoE's per-expert scale attention is for.
LESION_SCALE_BY_MODALITY: dict[str, tuple[float, float]] = {
    "cxr": (0.3, 0.45),
    "ct": (0.3, 0.45),
    "mri": (0.5, 0.7),
    "us": (0.8, 1.0),
    "derm": (0.85, 1.0),
}


@contextlib.contextmanager
def lesion_scale(sizes: dict[str, tuple[float, float]] | None = None):
    """Draw phantoms with the lesion radius range ``sizes[modality]`` inside the ``with`` block.

    ``sizes`` defaults to :data:`LESION_SCALE_BY_MODALITY`; ``{}`` changes nothing. The phantoms read their
    radius range per modality when a lesion is drawn (``medmoe.data.phantoms._LESION_SIZE``); this sets it for the
    block and restores it afterwards, so :class:`~medmoe.data.phantoms.PhantomDataset2D` and
    :class:`~medmoe.data.phantoms.PhantomFindingSet` built inside it use the ranges (the library's phantoms are
    unchanged outside it).

    Raises:
        ValueError: an unknown modality, or a range that is not ``0 < low <= high <= 1.5``.

    Example:
        >>> from medmoe.data.phantoms import make_phantom_2d
        >>> with lesion_scale({"us": (1.0, 1.0)}):
        ...     big = make_phantom_2d(modality="us", seed=0, size=64, lesion_regions=("centre",)).lesion.sum()
        >>> with lesion_scale({"us": (0.2, 0.2)}):
        ...     small = make_phantom_2d(modality="us", seed=0, size=64, lesion_regions=("centre",)).lesion.sum()
        >>> bool(big > 4 * small)
        True
    """
    from medmoe.data import phantoms  # why: the range table is the phantoms' module state, patched for the block

    sizes = dict(LESION_SCALE_BY_MODALITY if sizes is None else sizes)
    for m, rng in sizes.items():
        if m not in phantoms._LESION_SIZE:
            raise ValueError(f"unknown modality {m!r}: use one of {sorted(phantoms._LESION_SIZE)}")
        lo, hi = (float(v) for v in rng)
        if not 0 < lo <= hi <= 1.5:
            raise ValueError(f"lesion scale of {m!r} must satisfy 0 < low <= high <= 1.5, got {rng!r}")
        sizes[m] = (lo, hi)
    saved = dict(phantoms._LESION_SIZE)
    phantoms._LESION_SIZE.update(sizes)
    try:
        yield sizes
    finally:
        phantoms._LESION_SIZE.clear()
        phantoms._LESION_SIZE.update(saved)


#: The quick profile's analogue of each real evaluation set: the phantom finding set of the same modality. The
#: quick run saves its numbers under the real set's metric names too, so the reproduction page's "quick profile"
#: column shows a CPU analogue beside the paper's number (``card.yaml`` notes say which set it is).
PHANTOM_ANALOGUE: dict[str, str] = {
    "chexpert_5x200": "cxr", "rsna_pneumonia": "cxr", "thyroid_us": "us", "breast_us": "us", "acl_mri": "mri",
    "meniscus_mri": "mri", "medimeta_organs_axial": "ct", "medimeta_organs_coronal": "ct",
    "medimeta_organs_sagittal": "ct",
}
