"""SegMoTE's data: the IMIS-Bench layout it trains and evaluates on (read it, write it, enumerate its prompts), and
the chapter's task datasets, one item per (image, class).

Used in the book by: *Chapter 3, SegMoTE* (token-level experts inside a frozen SAM-family decoder), section 1
"Data: one item per (image, class)". ``data_scripts/build_medseg_hq.py`` (:mod:`medmoe.papers.segmote.prepare`)
writes the public sources (ISIC 2018, SZ-CXR, CHAOS, AMOS, ...) in this layout with :func:`write_imis_layout`,
which also writes the tests' fixtures.

The task datasets (end of this file): :class:`SegTasks` is the interface, :class:`PhantomSegTasks` serves the
``quick`` profile's phantoms (:data:`TASK_CLASSES`, group A :data:`GROUP_A`), :class:`IMISSegTasks` the ``paper``
profile's IMIS folders (group A :data:`IMIS_GROUP_A`); :func:`cache_embeddings` runs the frozen image encoder once
per image and :class:`EmbeddingTasks` pairs every item with its image's embedding.

Layout (one folder per data set, named by its ``CODE``)::

    <root>/<CODE>/dataset.json
    <root>/<CODE>/image/<name>.png                        RGB PNG, any size
    <root>/<CODE>/label/x___<name>.(C, H, W, 1).npz       scipy.sparse matrix, one channel per class
    <root>/<CODE>/imask/x___<name>.npy                    (H, W) pseudo-label region ids (training only)

``dataset.json`` holds ``labels`` ``{"0": "background", "1": "spleen", ...}`` and the lists ``training``
and ``test`` of ``{"image": ..., "label": ..., "imask": ...}`` paths relative to ``<CODE>/`` (plus
``name``, ``description``, ``modality``, ``numTraining``, ``numTest``, which the loaders ignore).

Facts confirmed in the public code (read with the project's search tools):

* ``InMyDreammer/SegMoTE`` ``data_loader.py`` (and the IMIS-Bench loader it derives from): the label shape
  is ``ast.literal_eval(label_path.split('.')[-2])``; the label is
  ``scipy.sparse.load_npz(path).toarray().reshape(shape)``, shape ``(C, H, W, 1)``; channel ``c`` is the
  class ``labels.values()`` minus ``"background"``, in file order; images are read with
  ``PIL.Image.open(...).convert('RGB')`` and resized to ``image_size`` (512) with **nearest** interpolation,
  masks per channel with nearest too; test items are *every class present in an image*, prompted
  separately; training samples ``mask_num`` present classes per image (``random.sample`` when there are
  enough, ``random.choices`` otherwise); ``imask`` is ``np.load(...)`` of a region-id map (regions below
  0.05 % of the image are set to -1, i.e. ignored, by the loader).
* ``tuhlnaa/IMIS-Bench-Extended`` ``dataset/BTCV/dataset.json``: the keys above, paths such as
  ``"label/x___ABD_001_100.(13, 512, 512, 1).npz"`` and ``"imask/x___ABD_001_100.npy"``.

Assumptions (not visible in any public file, so stated here):

* **Stored sparse shape.** The writer is not public; the label files are binary. We store the 2-D matrix
  ``csr_matrix(masks.reshape(C, H * W))`` (values 0/1, uint8), the convention of the SegVol/M3D
  preprocessing scripts in the same family; third-party users of the IMIS BTCV files reshape a loaded
  ``(13, 512 * 512)`` matrix, which agrees. The reader accepts any 2-D stored shape with ``C*H*W``
  elements, exactly like the reference ``toarray().reshape(shape)``.
* Masks are binarised as ``value != 0`` on reading.
* **Presence** of a class is decided at the stored (original) resolution. The reference decides it after
  the 512 resize, so a structure of a few pixels that vanishes in the resize is skipped there and gives an
  empty ``mask`` item here.
* ``image`` is returned in ``[0, 1]``; SAM's normalisation (:data:`SAM_PIXEL_MEAN`, :data:`SAM_PIXEL_STD`,
  on the 0-255 scale) is left to the model, see :func:`sam_normalize`.

Example:
    >>> import tempfile, numpy as np
    >>> img = np.zeros((40, 60, 3), np.uint8)
    >>> masks = np.zeros((2, 40, 60), np.uint8); masks[0, 5:15, 5:20] = 1; masks[1, 20:30, 30:50] = 1
    >>> root = write_imis_layout(tempfile.mkdtemp(), "toy", [{"name": "a", "image": img, "masks": masks,
    ...                          "split": "test"}], labels=["liver", "spleen"])
    >>> ds = IMISDataset(root=root, split="test", size=32)
    >>> len(ds), ds[1]["class_name"], tuple(ds[1]["mask"].shape), tuple(ds[1]["label_original"].shape)
    (2, 'spleen', (1, 32, 32), (40, 60))
"""

from __future__ import annotations

import ast
import bisect
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from scipy import ndimage, sparse
from torch.utils.data import ConcatDataset, Dataset

from medmoe.backbones.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from medmoe.data.phantoms import MODALITIES
from medmoe.engine import make_loader

__all__ = [
    "IMIS_SPLITS", "SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "IMISDataset", "MultiDatasetIMIS", "collate_imis",
    "mask_file_name", "parse_mask_shape", "pseudo_region_map", "read_sparse_mask", "sam_normalize",
    "write_dataset_json", "write_imis_item", "write_imis_layout", "write_sparse_mask",
    "TASK_CLASSES", "GROUP_A", "PHANTOM_ANALOGUES", "IMIS_GROUP_A", "NOT_IN_MEDSEG_HQ", "SegTasks", "PhantomSegTasks",
    "IMISSegTasks", "EmbeddingTasks", "cache_embeddings",
]

IMIS_SPLITS: tuple[str, str] = ("training", "test")
"""The two lists of ``dataset.json`` (there is no validation list)."""


_SHAPE_IN_NAME = re.compile(r"\.(\([^().]*\))\.npz$")


# --------------------------------------------------------------------------------------------------
# The sparse label files
# --------------------------------------------------------------------------------------------------


def mask_file_name(name: str, shape: Sequence[int]) -> str:
    """The IMIS-Bench label file name for image ``name`` and masks of ``shape`` ``(C, H, W)``.

    Example:
        >>> mask_file_name("ABD_001_100", (13, 512, 512))
        'x___ABD_001_100.(13, 512, 512, 1).npz'
    """
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"a mask name must be a non-empty file name without '/', got {name!r}")
    c, h, w = (int(v) for v in shape)
    return f"x___{name}.{(c, h, w, 1)}.npz"


def parse_mask_shape(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``(C, H, W)`` from a label file name ``x___<name>.(C, H, W, 1).npz`` (a 3-tuple is accepted too).

    Raises:
        ValueError: the name has no parsable shape.

    Example:
        >>> parse_mask_shape("label/x___case_3.(2, 64, 48, 1).npz")
        (2, 64, 48)
    """
    name = Path(path).name
    match = _SHAPE_IN_NAME.search(name)
    shape = None
    if match:
        try:
            shape = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            shape = None
    ok = (isinstance(shape, tuple) and all(isinstance(v, int) and v > 0 for v in shape)
          and (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)))
    if not ok:
        raise ValueError(
            f"cannot parse the mask shape from the file name {name!r}: IMIS-Bench label files are named "
            "'x___<name>.(C, H, W, 1).npz' (C classes, H x W pixels)"
        )
    return shape[0], shape[1], shape[2]  # type: ignore[index]


def _load_sparse(path: Path) -> tuple[sparse.spmatrix, tuple[int, int, int]]:
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    shape = parse_mask_shape(path)
    try:
        matrix = sparse.load_npz(path)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read the sparse mask file {path}: {err}") from err
    stored, expected = int(np.prod(matrix.shape)), int(np.prod(shape))
    if stored != expected:
        raise ValueError(
            f"mask file {path} stores a {matrix.shape[0]} x {matrix.shape[1]} matrix ({stored} values) but its "
            f"name says {shape} ({expected} values)"
        )
    return matrix, shape


def read_sparse_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IMIS-Bench label file -> ``(C, H, W)`` uint8 in {0, 1} (channel ``c`` = class ``c``).

    The shape comes from the file name; the stored 2-D matrix (any shape with ``C*H*W`` values) is
    densified and reshaped in C order, as the reference loader does.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: no parsable shape in the name, or the stored size disagrees with it.

    Example:
        >>> import tempfile
        >>> p = write_sparse_mask(tempfile.mkdtemp(), "a", np.ones((1, 4, 5), np.uint8))
        >>> read_sparse_mask(p).shape
        (1, 4, 5)
    """
    matrix, shape = _load_sparse(Path(path))
    return (matrix.toarray().reshape(shape) != 0).astype(np.uint8)


def _present_channels(path: Path) -> tuple[int, ...]:
    """Channels with at least one foreground pixel, without densifying when the matrix is ``(C, H*W)``."""
    matrix, (c, _, _) = _load_sparse(path)
    if matrix.shape[0] == c:
        counts = np.asarray((matrix != 0).sum(axis=1)).ravel()
    else:
        counts = (matrix.toarray().reshape(c, -1) != 0).sum(axis=1)
    return tuple(int(i) for i in np.flatnonzero(counts))


def write_sparse_mask(path_dir: str | os.PathLike[str], name: str, masks: np.ndarray) -> Path:
    """Write ``masks`` ``(C, H, W)`` (or ``(H, W)``, one class) as ``path_dir/x___<name>.(C, H, W, 1).npz``.

    Stored as ``scipy.sparse.save_npz(csr_matrix(masks.reshape(C, H * W)))`` with 0/1 uint8 values (see the
    module docstring for why this 2-D shape). Non-zero input values become 1.

    Example:
        >>> import tempfile
        >>> write_sparse_mask(tempfile.mkdtemp(), "case_1", np.zeros((3, 8, 8))).name
        'x___case_1.(3, 8, 8, 1).npz'
    """
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or 0 in masks.shape:
        raise ValueError(f"masks must be (C, H, W) or (H, W) and not empty, got shape {masks.shape}")
    folder = Path(path_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / mask_file_name(name, masks.shape)
    binary = (masks != 0).astype(np.uint8).reshape(masks.shape[0], -1)
    sparse.save_npz(path, sparse.csr_matrix(binary))
    return path


# --------------------------------------------------------------------------------------------------
# Writing a data set
# --------------------------------------------------------------------------------------------------


def pseudo_region_map(image: np.ndarray, *, levels: int = 4, min_fraction: float = 0.0005) -> np.ndarray:
    """A cheap unsupervised region-id map ``(H, W)`` int16 for the ``imask`` files (``-1`` = no region).

    IMIS-Bench's pseudo labels are SAM-generated region maps (according to its paper; not re-checked); we
    cannot run that here without SAM weights, so this stand-in splits the grey image into ``levels``
    intensity quantile bins and labels the connected components of each bin; components under
    ``min_fraction`` of the image (the reference loader's 0.05 % threshold) get ``-1``. Only SegMoTE's
    pseudo-label training branch reads these maps.

    Example:
        >>> img = np.zeros((20, 20), np.uint8); img[:, 10:] = 200
        >>> np.unique(pseudo_region_map(img)).tolist()
        [0, 1]
    """
    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=-1)
    edges = np.unique(np.quantile(grey, np.linspace(0, 1, levels + 1)[1:-1]))
    bins = np.digitize(grey, edges)
    out = np.full(grey.shape, -1, dtype=np.int16)
    min_area, next_id = max(1.0, min_fraction * grey.size), 0
    for b in np.unique(bins):
        comps, n = ndimage.label(bins == b)
        if n == 0:
            continue
        areas = np.bincount(comps.ravel(), minlength=n + 1)
        for comp in np.flatnonzero(areas >= min_area):
            if comp == 0 or next_id >= np.iinfo(np.int16).max:
                continue
            out[comps == comp] = next_id
            next_id += 1
    return out


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        if image.size and (image.min() < 0 or image.max() > 255):
            raise ValueError(f"image values must lie in [0, 255] (uint8), got {image.min()}..{image.max()}")
        image = image.astype(np.uint8)
    return image


def write_imis_item(
    folder: str | os.PathLike[str],
    name: str,
    image: np.ndarray,
    masks: np.ndarray,
    *,
    imask: np.ndarray | bool | None = True,
) -> dict[str, str]:
    """Write one image of a ``<CODE>`` folder and return its ``dataset.json`` entry.

    Args:
        folder: the ``<CODE>`` folder.
        name: file stem (``image/<name>.png``, ``label/x___<name>...npz``, ``imask/x___<name>.npy``).
        image: ``(H, W, 3)`` uint8 (``(H, W)`` grey is written as RGB, as IMIS-Bench's loader expects 3 channels).
        masks: ``(C, H, W)`` one channel per class (all classes of the data set, absent ones empty).
        imask: a region-id map ``(H, W)``, ``True`` to compute :func:`pseudo_region_map`, or
            ``False``/``None`` for no ``imask`` file (the entry then has no ``imask`` key).

    Returns:
        ``{"image": "image/<name>.png", "label": "label/x___<name>.(C, H, W, 1).npz", "imask": ...}``.
    """
    folder = Path(folder)
    rgb = _as_rgb_uint8(image)
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != rgb.shape[:2]:
        raise ValueError(f"{name}: masks {masks.shape} must be (C, H, W) with (H, W) = image {rgb.shape[:2]}")
    (folder / "image").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / "image" / f"{name}.png")
    label = write_sparse_mask(folder / "label", name, masks)
    entry = {"image": f"image/{name}.png", "label": f"label/{label.name}"}
    if imask is not None and imask is not False:
        region = pseudo_region_map(rgb) if imask is True else np.asarray(imask)
        if region.shape != rgb.shape[:2]:
            raise ValueError(f"{name}: imask {region.shape} must match the image {rgb.shape[:2]}")
        (folder / "imask").mkdir(parents=True, exist_ok=True)
        np.save(folder / "imask" / f"x___{name}.npy", region)
        entry["imask"] = f"imask/x___{name}.npy"
    return entry


def write_dataset_json(
    folder: str | os.PathLike[str],
    *,
    code: str,
    labels: Sequence[str],
    training: Sequence[Mapping[str, str]],
    test: Sequence[Mapping[str, str]],
    modality: str = "",
    description: str = "",
) -> Path:
    """Write ``<folder>/dataset.json``: ``labels`` become ``{"0": "background", "1": labels[0], ...}``."""
    names = list(labels)
    if not names or "background" in names or len(set(names)) != len(names):
        raise ValueError(f"labels must be distinct class names without 'background', got {names}")
    payload = {
        "name": code,
        "description": description or code,
        "dimension": "2D",
        "modality": {"0": modality} if modality else {},
        "labels": {"0": "background", **{str(i + 1): n for i, n in enumerate(names)}},
        "numTraining": len(training),
        "numTest": len(test),
        "training": [dict(e) for e in training],
        "test": [dict(e) for e in test],
    }
    path = Path(folder) / "dataset.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=4) + "\n", encoding="utf-8")
    return path


def write_imis_layout(
    root: str | os.PathLike[str],
    code: str,
    items: Sequence[Mapping[str, object]],
    labels: Sequence[str],
    *,
    modality: str = "",
    imask: bool = True,
) -> Path:
    """Write a small data set in the IMIS-Bench layout from arrays and return ``root/<code>``.

    Args:
        root: parent folder (created if needed).
        code: the data set's folder name (the ``dataset`` of its items).
        items: dicts with ``name`` (str), ``image`` ``(H, W, 3)`` or ``(H, W)`` uint8, ``masks``
            ``(C, H, W)`` aligned with ``labels``, optional ``split`` (``"training"`` default or ``"test"``)
            and optional ``imask`` ``(H, W)`` region ids.
        labels: the ``C`` class names, in channel order (no ``"background"``).
        modality: written to ``dataset.json`` (e.g. ``"ct"``).
        imask: write a :func:`pseudo_region_map` for items that bring none.

    Example:
        >>> import tempfile
        >>> item = {"name": "x", "image": np.zeros((8, 8), np.uint8), "masks": np.ones((1, 8, 8), np.uint8)}
        >>> write_imis_layout(tempfile.mkdtemp(), "demo", [item], ["lung"]).name
        'demo'
    """
    folder = Path(root) / code
    lists: dict[str, list[dict[str, str]]] = {s: [] for s in IMIS_SPLITS}
    seen: set[str] = set()
    for i, item in enumerate(items):
        name, split = str(item["name"]), str(item.get("split", "training"))
        if split not in lists:
            raise ValueError(f"item {i} ({name!r}): split must be one of {IMIS_SPLITS}, got {split!r}")
        if name in seen:
            raise ValueError(f"item {i}: duplicate name {name!r}")
        seen.add(name)
        masks = np.asarray(item["masks"])
        if masks.ndim == 2:
            masks = masks[None]
        if masks.shape[0] != len(labels):
            raise ValueError(f"item {i} ({name!r}) has {masks.shape[0]} mask channels for {len(labels)} labels")
        own = item.get("imask")
        lists[split].append(write_imis_item(folder, name, item["image"], masks,  # type: ignore[arg-type]
                                            imask=own if own is not None else imask))
    write_dataset_json(folder, code=code, labels=labels, training=lists["training"], test=lists["test"],
                       modality=modality)
    return folder


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def sam_normalize(image: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` in [0, 1] -> SAM's normalised input ``(x * 255 - mean) / std``."""
    mean = image.new_tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
    std = image.new_tensor(SAM_PIXEL_STD).view(3, 1, 1)
    return (image * 255.0 - mean) / std


def _resize_nearest(array: np.ndarray, size: int) -> np.ndarray:
    """PIL nearest-neighbour resize to ``size x size`` (what torchvision's NEAREST does on a PIL image)."""
    return np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.NEAREST))


def _read_json(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"dataset.json not found: {path} (an IMIS-Bench data set folder holds one)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data.get("labels"), dict):
        raise ValueError(f"{path} has no 'labels' mapping {{id: name}}")
    return data


class IMISDataset(Dataset):
    """One IMIS-Bench ``<CODE>`` folder: prompts of single classes (test) or sampled objects (training).

    **Modes.**

    * ``"per_class"`` (default; SegMoTE's ``test.py``): one item per (image, class present in that image).
    * ``"per_image"`` (SegMoTE's training loader): one item per image with at least one present class;
      ``mask_num`` of its present classes are drawn on every access (without replacement when there are
      enough, with replacement otherwise), using ``torch``'s generator, so ``torch.manual_seed`` and the
      DataLoader's per-worker seeds apply.

    **Items** (``S = size``; ``K = 1`` in ``per_class`` mode, ``K = mask_num`` in ``per_image`` mode):

    * ``image`` float32 ``(3, S, S)`` in [0, 1], RGB, nearest-neighbour resize (as the reference code);
    * ``mask`` float32 ``(1, S, S)`` (``per_class``) or ``(K, 1, S, S)`` (``per_image``), nearest resize;
    * ``label_original`` uint8 ``(H, W)`` (or ``(K, H, W)``) at the stored resolution, for the metric;
    * ``class_name`` str (or list), ``class_id`` int (or long ``(K,)``): the ``dataset.json`` label id;
    * ``dataset`` (the CODE, the folder name), ``path`` (image file), ``label_path``.

    **Checks at construction** (each message names the file): ``dataset.json`` exists and has the split
    (``FileNotFoundError`` / ``ValueError``); every image and label file of the split exists
    (``FileNotFoundError``); each label name has a shape whose ``C`` equals the number of classes and whose
    ``(H, W)`` equals the image's (read from the PNG header; ``ValueError`` naming both files and both shapes);
    a split with label files of which none has a foreground pixel raises ``ValueError`` (a blank-target data set
    is a conversion error, never data). Label files are opened once to find the present classes (sparse, not
    densified).

    Args:
        root: the ``<CODE>`` folder holding ``dataset.json``.
        split: ``"training"`` or ``"test"``.
        size: output side ``S`` (512 in SegMoTE).
        classes: keep only these class names (``None``: all); unknown names raise ``ValueError``.
        mode: ``"per_class"`` or ``"per_image"``.
        mask_num: objects per image in ``per_image`` mode (2 in SegMoTE).
        with_imask: also return ``imask`` int64 ``(S, S)`` (nearest resize; needs the split's ``imask`` paths).

    Example:
        On the real data: ``IMISDataset(root="data/medseg_hq/amos_ct", split="test")``. The same layout,
        written by :func:`write_imis_layout`:

        >>> import tempfile
        >>> mask = np.zeros((1, 20, 24), np.uint8); mask[0, 5:10, 5:12] = 1
        >>> item = {"name": "a", "image": np.zeros((20, 24, 3), np.uint8), "masks": mask, "split": "test"}
        >>> root = write_imis_layout(tempfile.mkdtemp(), "toy_ct", [item], ["spleen"], modality="ct")
        >>> ds = IMISDataset(root=root, split="test", size=16)
        >>> ds[0]["image"].shape, ds[0]["class_name"]
        (torch.Size([3, 16, 16]), 'spleen')
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike[str],
        split: str = "test",
        size: int = 512,
        classes: Sequence[str] | None = None,
        mode: Literal["per_class", "per_image"] = "per_class",
        mask_num: int = 2,
        with_imask: bool = False,
    ) -> None:
        if split not in IMIS_SPLITS:
            raise ValueError(f"split must be one of {IMIS_SPLITS}, got {split!r}")
        if mode not in ("per_class", "per_image"):
            raise ValueError(f"mode must be 'per_class' or 'per_image', got {mode!r}")
        if int(size) < 1 or int(mask_num) < 1:
            raise ValueError(f"size and mask_num must be positive, got size={size}, mask_num={mask_num}")
        self.root, self.split, self.size, self.mode = Path(root), split, int(size), mode
        self.mask_num, self.with_imask = int(mask_num), with_imask
        self.code = self.root.name
        data = _read_json(self.root)
        if split not in data or not isinstance(data[split], list):
            raise ValueError(f"{self.root / 'dataset.json'} has no list {split!r}; keys: {sorted(data)}")
        pairs = [(int(k), str(v)) for k, v in data["labels"].items() if str(v) != "background"]
        #: Class names in channel order, and their dataset.json ids.
        self.all_classes = [n for _, n in pairs]
        self.all_class_ids = [i for i, _ in pairs]
        if classes is not None:
            unknown = sorted(set(classes) - set(self.all_classes))
            if unknown:
                raise ValueError(f"unknown classes {unknown} for {self.code}; it has {self.all_classes}")
        keep = set(self.all_classes if classes is None else classes)
        self.channels = [c for c, n in enumerate(self.all_classes) if n in keep]
        self.classes = [self.all_classes[c] for c in self.channels]

        kept = set(self.channels)
        #: One record per image of the split: (image path, label path, imask path or None, present channels).
        self.records: list[tuple[Path, Path, Path | None, tuple[int, ...]]] = []
        any_foreground = False
        for i, entry in enumerate(data[split]):
            image_path, label_path = self.root / entry["image"], self.root / entry["label"]
            imask_path = self.root / entry["imask"] if entry.get("imask") else None
            for p in (image_path, label_path):
                if not p.is_file():
                    raise FileNotFoundError(f"{split}[{i}] of {self.root / 'dataset.json'}: file not found: {p}")
            if with_imask and (imask_path is None or not imask_path.is_file()):
                raise FileNotFoundError(f"{split}[{i}]: imask file not found: {imask_path}")
            c, h, w = parse_mask_shape(label_path)
            if c != len(self.all_classes):
                raise ValueError(f"{label_path} has {c} channels but dataset.json lists {len(self.all_classes)} "
                                 f"classes {self.all_classes}")
            with Image.open(image_path) as im:
                width, height = im.size
            if (h, w) != (height, width):
                raise ValueError(f"mask shape (H, W) = {(h, w)} of {label_path} disagrees with image shape "
                                 f"{(height, width)} of {image_path}")
            present_all = _present_channels(label_path)
            any_foreground = any_foreground or bool(present_all)
            present = tuple(ch for ch in present_all if ch in kept)
            self.records.append((image_path, label_path, imask_path, present))
        if self.records and not any_foreground:
            raise ValueError(
                f"every mask of the {split!r} split of {self.root} is empty ({len(self.records)} label files, e.g. "
                f"{self.records[0][1]}): nothing to train or score on. Label files store 0/1 (any non-zero value is "
                "foreground); if they were built from masks stored as 0/1 by a converter expecting 0/255, rebuild "
                "them (data_scripts/build_medseg_hq.py accepts both)"
            )

        if mode == "per_class":
            self.index = [(r, ch) for r, rec in enumerate(self.records) for ch in rec[3]]
        else:
            self.index = [(r, -1) for r, rec in enumerate(self.records) if rec[3]]

    def __len__(self) -> int:
        return len(self.index)

    def class_counts(self) -> dict[str, int]:
        """Number of images in which each (kept) class is present."""
        counts = dict.fromkeys(self.classes, 0)
        for rec in self.records:
            for ch in rec[3]:
                counts[self.all_classes[ch]] += 1
        return counts

    def _mask(self, full: np.ndarray, ch: int) -> tuple[torch.Tensor, torch.Tensor]:
        original = full[ch]
        resized = _resize_nearest(original, self.size)
        return torch.from_numpy(resized.astype(np.float32))[None], torch.from_numpy(original.copy())

    def load_image(self, record: int) -> torch.Tensor:
        """Image ``record`` of :attr:`records`: float32 ``(3, S, S)`` RGB in [0, 1], nearest-neighbour resize."""
        with Image.open(self.records[record][0]) as im:
            rgb = np.asarray(im.convert("RGB"))
        image = torch.from_numpy(_resize_nearest(rgb, self.size).astype(np.float32) / 255.0)
        return image.permute(2, 0, 1).contiguous()

    def load_mask(self, record: int, channel: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class ``channel`` of image ``record``: the mask ``(1, S, S)`` float32 (nearest resize) and the uint8
        ``(H, W)`` mask at the stored resolution."""
        return self._mask(read_sparse_mask(self.records[record][1]), channel)

    def __getitem__(self, index: int) -> dict:
        r, ch = self.index[index]
        image_path, label_path, imask_path, present = self.records[r]
        image = self.load_image(r)
        full = read_sparse_mask(label_path)
        item: dict = {"image": image, "dataset": self.code, "path": str(image_path),
                      "label_path": str(label_path)}
        if self.mode == "per_class":
            chosen = [ch]
        elif len(present) >= self.mask_num:
            chosen = [present[int(i)] for i in torch.randperm(len(present))[: self.mask_num]]
        else:
            chosen = [present[int(i)] for i in torch.randint(len(present), (self.mask_num,))]
        masks, originals = zip(*(self._mask(full, c) for c in chosen))
        if self.mode == "per_class":
            item.update(mask=masks[0], label_original=originals[0], class_name=self.all_classes[ch],
                        class_id=self.all_class_ids[ch])
        else:
            item.update(mask=torch.stack(masks), label_original=torch.stack(originals),
                        class_name=[self.all_classes[c] for c in chosen],
                        class_id=torch.tensor([self.all_class_ids[c] for c in chosen], dtype=torch.long))
        if self.with_imask:
            region = np.load(imask_path).astype(np.float32)  # type: ignore[arg-type]
            item["imask"] = torch.from_numpy(_resize_nearest(region, self.size).astype(np.int64))
        return item


class MultiDatasetIMIS(ConcatDataset):
    """Several ``<CODE>`` folders under one ``root`` as one data set; every item keeps its ``dataset`` code.

    ``codes=None`` takes every sub-folder holding a ``dataset.json`` (sorted). With ``classes``, each folder
    keeps the names it has; a name no folder has raises ``ValueError``, and a folder with none of them is
    left out. Other keyword arguments go to :class:`IMISDataset`.

    Example:
        >>> ds = MultiDatasetIMIS(root="data/medseg_hq", split="test")  # doctest: +SKIP
        >>> ds.counts()                                                  # doctest: +SKIP
        {'amos_ct': 1210, 'isic2018_task1': 260}
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike[str],
        codes: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        **kwargs: object,
    ) -> None:
        root = Path(root)
        if codes is None:
            if not root.is_dir():
                raise FileNotFoundError(f"data root not found: {root}")
            codes = sorted(p.name for p in root.iterdir() if (p / "dataset.json").is_file())
            if not codes:
                raise FileNotFoundError(f"no <CODE>/dataset.json folders under {root}")
        datasets, wanted_found = [], set()
        for code in codes:
            names = [str(v) for v in _read_json(root / code)["labels"].values()]
            mine = None if classes is None else [c for c in classes if c in names]
            if mine is not None:
                wanted_found.update(mine)
                if not mine:
                    continue
            datasets.append(IMISDataset(root=root / code, classes=mine, **kwargs))  # type: ignore[arg-type]
        if classes is not None and set(classes) - wanted_found:
            raise ValueError(f"classes {sorted(set(classes) - wanted_found)} are in none of {list(codes)}")
        if not datasets:
            raise ValueError(f"none of {list(codes)} has any of the classes {list(classes or [])}")
        super().__init__(datasets)
        self.codes = [d.code for d in datasets]

    def counts(self) -> dict[str, int]:
        """Items per data set code."""
        return {d.code: len(d) for d in self.datasets}  # type: ignore[attr-defined]

    def dataset_code(self, index: int) -> str:
        """The code of the folder item ``index`` comes from (without loading it)."""
        if index < 0:
            index += len(self)
        return self.codes[bisect.bisect_right(self.cumulative_sizes, index)]


def collate_imis(batch: Sequence[Mapping[str, object]]) -> dict:
    """Batch IMIS items: ``image`` stacked ``(B, 3, S, S)``; ``mask`` stacked ``(B, 1, S, S)``
    (``per_class``) or concatenated ``(B*K, 1, S, S)`` (``per_image``, like SegMoTE's ``train_collate_fn``);
    ``class_id`` a long tensor of the same length; ``class_name`` a flat list; ``label_original`` and the
    string fields stay lists (originals differ in size)."""
    out: dict = {"image": torch.stack([b["image"] for b in batch])}  # type: ignore[misc]
    masks = [b["mask"] for b in batch]
    per_image = masks[0].ndim == 4  # type: ignore[union-attr]
    out["mask"] = torch.cat(masks) if per_image else torch.stack(masks)  # type: ignore[arg-type]
    if per_image:
        out["class_id"] = torch.cat([b["class_id"] for b in batch])  # type: ignore[misc]
        out["class_name"] = [n for b in batch for n in b["class_name"]]  # type: ignore[union-attr]
    else:
        out["class_id"] = torch.tensor([int(b["class_id"]) for b in batch], dtype=torch.long)  # type: ignore[arg-type]
        out["class_name"] = [b["class_name"] for b in batch]
    for key in ("label_original", "dataset", "path", "label_path"):
        out[key] = [b[key] for b in batch]
    if "imask" in batch[0]:
        out["imask"] = torch.stack([b["imask"] for b in batch])  # type: ignore[misc]
    return out


# --------------------------------------------------------------------------------------------------
# The chapter's task datasets: one item per (image, class), on phantoms or on IMIS-layout folders
# --------------------------------------------------------------------------------------------------


#: Classes segmented on each phantom modality (``lungs`` = left + right lung).
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "cxr": ("lungs", "heart", "lesion"),
    "ct": ("left lung", "right lung", "heart", "bone", "lesion"),
    "mri": ("cerebrospinal fluid", "grey matter", "white matter", "lesion"),
    "us": ("organ", "lesion"),
    "derm": ("lesion",),
}
#: The binary tasks PPT serves (the code's "group A": ISIC and, in the paper's text, SZ-CXR).
GROUP_A: frozenset[tuple[str, str]] = frozenset({("derm", "lesion"), ("cxr", "lungs")})

#: The quick profile's analogue of each data set of the paper's Tables 1 and 4: the phantom classes that play its
#: part. The chapter saves the paper's metric names for them (``dice_box_segthor`` is the box Dice on the phantom
#: CT's anatomy) so that the reproduction page's quick column fills; the card's notes say which analogue each is.
#: ISIC 2018 and SZ-CXR are the group-A tasks; ISLES 2022 (a lesion on an MRI sequence), SegTHOR (thoracic CT organs)
#: and TotalSegmentator MRI (anatomy on MRI) are out of domain for SAM, as CT and MRI are new to the quick stand-in.
PHANTOM_ANALOGUES: dict[str, tuple[str, ...]] = {
    "isic2018_task1": ("derm/lesion",),
    "sz_cxr": ("cxr/lungs",),
    "isles22": ("mri/lesion",),
    "segthor": ("ct/left lung", "ct/right lung", "ct/heart", "ct/bone"),
    "totalseg_mri": ("mri/cerebrospinal fluid", "mri/grey matter", "mri/white matter"),
}


def _class_mask(phantom, name: str) -> np.ndarray:
    if name == "lesion":
        return phantom.lesion.astype(bool)
    classes = phantom.anatomy_classes
    if name == "lungs":
        return np.isin(phantom.anatomy, [classes.index("left lung"), classes.index("right lung")])
    return phantom.anatomy == classes.index(name)


class SegTasks(Dataset):
    """Per-(image, class) segmentation items; the shared interface of the phantom and IMIS-layout tasks.

    Explained in the book: Chapter 3, section 1 "Data: one item per (image, class)".

    An item of ``items`` is ``(image_index, group, class_name)``, where ``group`` is a phantom modality or an IMIS
    data set code (the "modality" the selection statistics are taken over). Subclasses implement
    :meth:`image`, :meth:`mask` and, if the metric's resolution differs from the input's, :meth:`original_mask`.

    Items: ``image`` float32 ``(3, S, S)``, ``mask`` float32 ``(1, S, S)``, ``modality`` int (into
    :attr:`modalities`), ``class_index`` int (into :attr:`class_names`, ``"group/class"``), ``image_index`` int,
    ``group_a`` bool (PPT serves this item's task).
    """

    items: list[tuple[int, str, str]]
    modalities: tuple[str, ...]
    class_names: list[str]
    group_a: frozenset[tuple[str, str]]
    num_images: int

    def image(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def mask(self, k: int) -> torch.Tensor:
        raise NotImplementedError

    def original_mask(self, k: int) -> torch.Tensor:
        """Item ``k``'s ground truth ``(H, W)`` at the resolution the metric is taken at (default: the input's)."""
        return self.mask(k)[0] > 0.5

    def is_group_a(self, k: int) -> bool:
        return self.items[k][1:] in self.group_a

    def images(self) -> Dataset:
        """The distinct images as a data set of ``{"image": (3, S, S)}`` (what :func:`cache_embeddings` encodes)."""
        return _Images(self)

    def __len__(self) -> int:
        return len(self.items)

    def item(self, k: int, *, image: bool = True) -> dict[str, Any]:
        """Item ``k``; ``image=False`` leaves the image out (when its embedding is cached)."""
        i, group, name = self.items[k]
        out = {"mask": self.mask(k), "modality": self.modalities.index(group),
               "class_index": self.class_names.index(f"{group}/{name}"), "image_index": i,
               "group_a": self.is_group_a(k)}
        return {"image": self.image(i), **out} if image else out

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.item(k)


class _Images(Dataset):
    def __init__(self, tasks: SegTasks) -> None:
        self.tasks = tasks

    def __len__(self) -> int:
        return self.tasks.num_images

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.tasks.image(i)}


class PhantomSegTasks(SegTasks):
    """Per-(image, class) items (see :class:`SegTasks`) from :class:`medmoe.data.phantoms.PhantomDataset2D`.

    Classes smaller than ``min_area`` pixels in an image are skipped; group A is :data:`GROUP_A`.
    """

    def __init__(self, phantoms, *, min_area: int = 8) -> None:
        self.phantoms, self.modalities, self.group_a = phantoms, tuple(MODALITIES), GROUP_A
        self.num_images = len(phantoms.phantoms)
        self.class_names = [f"{m}/{c}" for m in MODALITIES for c in TASK_CLASSES[m]]
        self.items = []
        for i, ph in enumerate(phantoms.phantoms):
            for c in TASK_CLASSES[ph.modality]:
                if _class_mask(ph, c).sum() >= min_area:
                    self.items.append((i, ph.modality, c))
        if not self.items:
            raise ValueError("no class of any image reaches min_area; use larger images or a smaller min_area")

    def image(self, i: int) -> torch.Tensor:
        return self.phantoms[i]["image"]

    def mask(self, k: int) -> torch.Tensor:
        i, _, name = self.items[k]
        return torch.from_numpy(_class_mask(self.phantoms.phantoms[i], name)[None].astype(np.float32))


#: Folders that ``data_scripts/build_medseg_hq.py`` can build but that are not MedSeg-HQ sources (MedSeg-HQ's CHAOS
#: is T1 and T2 only): the chapter does not train on them unless named in ``train_codes``.
NOT_IN_MEDSEG_HQ: frozenset[str] = frozenset({"chaos_ct"})

#: SegMoTE's group A in the IMIS layout written by ``data_scripts/build_medseg_hq.py`` (ISIC 2018, SZ-CXR), plus
#: ISLES 2022, on which Table 4 also evaluates PPT.
IMIS_GROUP_A: frozenset[tuple[str, str]] = frozenset(
    {("isic2018_task1", "skin_lesion"), ("sz_cxr", "lung"), ("isles22", "stroke_lesion")})


class IMISSegTasks(SegTasks):
    """Per-(image, class) items (see :class:`SegTasks`) from IMIS-Bench folders (the ``paper`` profile).

    ``data`` is an :class:`IMISDataset` or a :class:`MultiDatasetIMIS` in ``per_class`` mode; the group of an item
    is its data set code. The metric is taken at the stored resolution (:meth:`original_mask`), as SegMoTE's test
    code does. ``group_a``: ``(code, class)`` pairs PPT serves.

    Example:
        >>> tasks = IMISSegTasks(MultiDatasetIMIS(root="data/medseg_hq", split="test", size=512))  # doctest: +SKIP
    """

    def __init__(self, data, *, group_a: frozenset[tuple[str, str]] | set = IMIS_GROUP_A) -> None:
        parts = list(getattr(data, "datasets", [data]))
        if any(getattr(d, "mode", None) != "per_class" for d in parts):
            raise ValueError("IMISSegTasks needs IMIS data sets in mode='per_class'")
        parts = [d for d in parts if len(d)]  # a folder without items in this split (e.g. no test list) is no group
        self.modalities = tuple(d.code for d in parts)
        self.class_names = [f"{d.code}/{c}" for d in parts for c in d.classes]
        self.group_a = frozenset(tuple(g) for g in group_a)
        self._where: list[tuple[Any, int]] = []  # image_index -> (data set, record)
        self._channel: list[int] = []
        self.items = []
        for d in parts:
            offset = len(self._where)
            self._where += [(d, r) for r in range(len(d.records))]
            for r, ch in d.index:
                self.items.append((offset + r, d.code, d.all_classes[ch]))
                self._channel.append(ch)
        self.num_images = len(self._where)
        if not self.items:
            raise ValueError(f"no (image, class) item in {list(self.modalities)}")

    def image(self, i: int) -> torch.Tensor:
        d, r = self._where[i]
        return d.load_image(r)

    def mask(self, k: int) -> torch.Tensor:
        d, r = self._where[self.items[k][0]]
        return d.load_mask(r, self._channel[k])[0]

    def original_mask(self, k: int) -> torch.Tensor:
        d, r = self._where[self.items[k][0]]
        return d.load_mask(r, self._channel[k])[1] > 0


@torch.no_grad()
def cache_embeddings(model, tasks: Dataset, *, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Run the frozen image encoder (``model.encode``, a :class:`~medmoe.papers.segmote.model.SegMoTE`) once per
    *image* of ``tasks`` (a :class:`SegTasks`); :class:`EmbeddingTasks` finds an item's image by its
    ``image_index``.

    Returns:
        ``{"emb": (N_images, D, h, w), "early": (N_images, C_vit, h, w)}``.
    """
    device = next(iter(model.parameters())).device
    emb, early = [], []
    for batch in make_loader(tasks.images(), batch_size):
        e, f = model.encode(batch["image"].to(device))
        emb.append(e)
        early.append(f)
    return {"emb": torch.cat(emb), "early": torch.cat(early)}


class EmbeddingTasks(Dataset):
    """:class:`SegTasks` items with the cached frozen embeddings of their image (``emb``, ``early``) and the item's
    index (``item``): what SegMoTE's recipe trains and evaluates on.

    Explained in the book: Chapter 3, section 4 "Training SegMoTE on the frozen model".

    ``cache=None`` keeps the image instead, and the steps run the frozen encoder on every batch: for data sets whose
    embeddings do not fit in memory (SAM ViT-B at 512 px: 4 MB per image, ``emb`` plus ``early``).
    """

    def __init__(self, tasks: SegTasks, cache: dict[str, torch.Tensor] | None) -> None:
        self.tasks, self.cache = tasks, cache

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, k: int) -> dict[str, Any]:
        if self.cache is None:
            return {**self.tasks.item(k), "item": k}
        item = self.tasks.item(k, image=False)
        i = item["image_index"]
        return {**item, "item": k, "emb": self.cache["emb"][i], "early": self.cache["early"][i]}
