"""Arranging downloaded QaTa-COV19 / MosMedData+ files into the layouts MLMoE reads (Chapter 1, MLMoE).

The two command-line programs are :mod:`medmoe.papers.mlmoe.prepare.qata` (``data_scripts/prepare_qata.py``) and
:mod:`medmoe.papers.mlmoe.prepare.mosmed` (``data_scripts/prepare_mosmed.py``); this module holds what both use:
:class:`SourcePair` (one image/mask/description to place), :func:`arrange_ariadne_layout` (read back by
:class:`~medmoe.papers.mlmoe.data.QaTaDataset`), :func:`arrange_lvit_layout` (read back by
:class:`~medmoe.papers.mlmoe.data.LViTDataset`), :func:`check_readable` and :func:`check_workbooks`. The
paper-independent parts (atomic output folders, download resolution) are in :mod:`medmoe.data.prepare`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medmoe.data.download import place_file
from medmoe.data.sources import fetch as fetch_source
from medmoe.data.sources import get_source
from medmoe.papers.mlmoe.data import (
    _MASK_PREFIX,
    LVIT_SPLIT_FOLDERS,
    LVIT_TABLE_STEMS,
    _check_header,
    _load_grey,
    _summarise,
    write_text_table,
)

__all__ = ["SourcePair", "check_readable", "arrange_ariadne_layout", "arrange_lvit_layout", "check_workbooks"]


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
    """Place pairs in the Ariadne layout read by :class:`~medmoe.papers.mlmoe.data.QaTaDataset`.

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
    entry = get_source(source)
    if given is None:
        return fetch_source(entry, root, verify=verify, progress=False)
    folder = Path(given).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"workbook folder not found: {folder}")
    return fetch_source(dataclasses.replace(entry, target="."), folder, verify=verify, progress=False)


