"""Arrange the MosMedData+ download (Kaggle) and LViT's text workbooks into the layouts medmoe reads.

Explained in the book: Chapter 1, MLMoE (the ``paper`` profile reads the Ariadne layout written here).

Inputs (get them with ``python data_scripts/fetch.py --show mosmed_plus lvit_mosmed_text``):

* the Kaggle archive ``covid19-ct-scan-lesion-segmentation-dataset.zip`` or the folder it unpacks to;
  by default the catalogue's folder ``<root>/mosmed_plus`` (checked and unpacked by
  ``medmoe.data.sources.fetch``). **The folder names inside are unconfirmed**: the script looks for
  one folder of images (``frames``, ``images``, ``imgs``, ``img``, ...) next to one folder of masks
  (``masks``, ``labels``, ``labelcol``, ``GTs``, ...) and, if that fails, lists what it found;
  ``--images-dir`` / ``--masks-dir`` name them explicitly.
* LViT's three workbooks ``Train_text_MosMedData+ 1.xlsx``, ``Val_text_MosMedData+ 1.xlsx``,
  ``Test_text_MosMedData+.xlsx`` (by default in ``<root>/lvit_text/mosmed_plus``, checked against the
  catalogue's SHA-256 pins). They define LViT's split (2,183 / 273 / 273 reported).

How an image is named from the ``Image`` column (which names the mask) is also unconfirmed for
MosMedData+: ``--mask-name-rule auto`` (default) tries "same name" and "strip the ``mask_`` prefix"
and uses the one that matches the files (see :func:`medmoe.papers.mlmoe.data.match_images`).

Outputs:

* ``--out`` (default ``<root>/MosMedDataPlus``): the Ariadne layout read by ``QaTaDataset``:
  ``Train/Images/<name>.png``, ``Train/GTs/mask_<name>.png``, ``prompt/train.csv`` (LViT's Train rows,
  then its Val rows; ``QaTaDataset``'s 80/20 row split of those is our reading of MLMoE's "split the
  original train set 80/20"), and ``Test/...``, ``prompt/test.csv``.
* ``--lvit-layout [DIR]`` (default ``<root>/lvit/MosMedDataPlus``): LViT's layout (original names).

Masks are written as PNG binarised with LViT's rule (``value > 0`` -> 255), so 0/1 masks also work
with Ariadne's loader; the script says how many were not already 0/255. Each output is built in a
temporary folder next to it and renamed into place; running again with the same inputs does nothing
(``--force`` rebuilds).

Usage::

    python data_scripts/prepare_mosmed.py --root data
    python data_scripts/prepare_mosmed.py --mosmed ~/Downloads/archive.zip --text-dir ~/Downloads/lvit --lvit-layout

Exit status: 0 done (or already up to date); 1 bad or inconsistent input, checksum mismatch;
2 usage; 3 something must be downloaded by hand first (the message says what and where).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from medmoe.data import prepare as prep
from medmoe.data.download import ChecksumError, DownloadError, ManualDownloadRequired, sha256sum
from medmoe.data.sources import EXIT_FAILED, EXIT_MANUAL, EXIT_OK, EXIT_USAGE, default_data_root
from medmoe.papers.mlmoe import data as mlmoe_data
from medmoe.papers.mlmoe import prepare as arrange

DEFAULT_ROOT = default_data_root()

#: LViT's workbook for each split (the names of the lvit_mosmed_text catalogue entry, spaces included).
WORKBOOKS = {
    "train": "Train_text_MosMedData+ 1.xlsx",
    "val": "Val_text_MosMedData+ 1.xlsx",
    "test": "Test_text_MosMedData+.xlsx",
}

#: Folder names recognised (case-insensitive) as the image and the mask folder of the download.
IMAGE_DIR_NAMES = ("frames", "images", "image", "imgs", "img", "slices", "ct")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "labelcol", "gts", "gt", "ground-truths",
                  "ground_truths", "groundtruths", "lesions", "infection")

#: Row counts of LViT's split as reported for LViT (not verified against its workbooks); a difference is reported only.
PAPER_COUNTS = {"train": 2183, "val": 273, "test": 273}

_FORMAT = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_mosmed.py",
        description="Arrange MosMedData+ (Kaggle) + LViT text workbooks into the Ariadne (and LViT) layout.",
        epilog="Exit status: 0 done, 1 bad input or checksum, 2 usage, 3 manual download needed.",
    )
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"data root (default: {DEFAULT_ROOT})")
    parser.add_argument("--mosmed", metavar="PATH",
                        help="Kaggle archive or the folder it unpacks to (default: <root>/mosmed_plus via fetch)")
    parser.add_argument("--images-dir", metavar="DIR", help="the image folder (relative: inside the download)")
    parser.add_argument("--masks-dir", metavar="DIR", help="the mask folder (relative: inside the download)")
    parser.add_argument("--text-dir", metavar="DIR",
                        help="folder holding LViT's workbooks (default: <root>/lvit_text/mosmed_plus)")
    parser.add_argument("--mask-name-rule", choices=("auto", *mlmoe_data.MASK_NAME_RULES), default="auto",
                        help="how the image is named from the Image column (default: auto-detect)")
    parser.add_argument("--out", metavar="DIR", help="Ariadne layout output (default: <root>/MosMedDataPlus)")
    parser.add_argument("--lvit-layout", metavar="DIR", nargs="?", const="",
                        help="also write LViT's layout (default DIR: <root>/lvit/MosMedDataPlus)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the outputs are up to date")
    parser.add_argument("--no-verify", action="store_true", help="skip the workbook checksums")
    parser.add_argument("--no-kaggle", action="store_true", help="never call the kaggle command")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _image_count(folder: Path) -> int:
    try:
        return sum(1 for e in folder.iterdir() if e.suffix.lower() in mlmoe_data.IMAGE_SUFFIXES)
    except OSError:
        return 0


def find_image_mask_folders(
    folder: Path,
    *,
    images_dir: str | None = None,
    masks_dir: str | None = None,
    mask_names: list[str] | None = None,
) -> tuple[Path, Path]:
    """The image folder and the mask folder of the download.

    Explicit ``images_dir`` / ``masks_dir`` (relative to ``folder`` unless absolute) win. Otherwise
    every folder (4 levels deep) holding a sub-folder named like :data:`IMAGE_DIR_NAMES` *and* one
    named like :data:`MASK_DIR_NAMES`, both with image files, is a candidate; with several, the one
    whose mask folder holds the most of ``mask_names`` is used (a tie is an error).

    Raises:
        FileNotFoundError: nothing recognisable; the message lists the folders found with file counts.
    """
    if images_dir or masks_dir:
        if not (images_dir and masks_dir):
            raise ValueError("give both --images-dir and --masks-dir, or neither")
        chosen = tuple(Path(p) if Path(p).is_absolute() else folder / p for p in (images_dir, masks_dir))
        for p in chosen:
            if not p.is_dir():
                raise FileNotFoundError(f"folder not found: {p}. Found under {folder}:\n{prep.describe_tree(folder)}")
        return chosen  # type: ignore[return-value]

    candidates: list[tuple[Path, Path]] = []
    for d in prep.walk_folders(folder, max_depth=4):
        try:
            subs = {e.name.lower(): e for e in d.iterdir() if e.is_dir()}
        except OSError:
            continue
        imgs = [subs[n] for n in IMAGE_DIR_NAMES if n in subs and _image_count(subs[n])]
        masks = [subs[n] for n in MASK_DIR_NAMES if n in subs and _image_count(subs[n])]
        candidates += [(i, m) for i in imgs for m in masks]
    if not candidates:
        raise FileNotFoundError(
            f"cannot find the MosMedData+ image and mask folders under {folder} (the Kaggle folder names "
            f"are unconfirmed). Looked for an image folder named one of {list(IMAGE_DIR_NAMES)} next to a "
            f"mask folder named one of {list(MASK_DIR_NAMES)}, both holding images. Found:\n"
            f"{prep.describe_tree(folder)}\nName them with --images-dir and --masks-dir."
        )
    if len(candidates) == 1 or not mask_names:
        if len(candidates) == 1:
            return candidates[0]
    else:
        wanted = {Path(n).name for n in mask_names}
        scores = [len(wanted & set(os.listdir(m))) for _, m in candidates]
        best = max(scores)
        if best > 0 and scores.count(best) == 1:
            return candidates[scores.index(best)]
    listed = "\n".join(f"  images {i}  masks {m}" for i, m in candidates)
    raise ValueError(
        f"several possible image/mask folder pairs under {folder}:\n{listed}\n"
        "Name the right ones with --images-dir and --masks-dir."
    )


def _png(name: str) -> str:
    return str(Path(name).with_suffix(".png"))


def _fingerprint(args: argparse.Namespace, root: Path, text_dir: Path, layout: str) -> dict[str, object]:
    if args.mosmed:
        given = Path(args.mosmed).expanduser().resolve()
        stat = given.stat() if given.is_file() else None
        source = {"path": str(given), "size": stat.st_size if stat else None,
                  "mtime_ns": stat.st_mtime_ns if stat else None}
    else:
        source = {"path": str((root / "mosmed_plus").resolve())}
    workbooks = {n: sha256sum(text_dir / n) for n in WORKBOOKS.values() if (text_dir / n).is_file()}
    return {"script": "prepare_mosmed", "format": _FORMAT, "layout": layout, "mosmed": source,
            "images_dir": args.images_dir, "masks_dir": args.masks_dir, "workbooks": workbooks,
            "mask_name_rule": args.mask_name_rule}


def run(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser()
    out = Path(args.out).expanduser() if args.out else root / "MosMedDataPlus"
    lvit_out = None
    if args.lvit_layout is not None:
        lvit_out = Path(args.lvit_layout).expanduser() if args.lvit_layout else root / "lvit" / "MosMedDataPlus"
    text_dir = arrange.check_workbooks(args.text_dir, source="lvit_mosmed_text", root=root, verify=not args.no_verify)
    try:
        outputs, prints, todo = prep.plan_outputs(
            out=out, lvit_out=lvit_out, force=args.force,
            fingerprint=lambda layout: _fingerprint(args, root, text_dir, layout))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not todo:
        print(f"up to date: {', '.join(str(o) for o, _ in outputs)} (same inputs; --force rebuilds)")
        return EXIT_OK

    scratch = prep.ScratchDirs(out.parent, ".prepare_mosmed-")

    try:
        folder = prep.resolve_download(
            args.mosmed, source="mosmed_plus", root=root, scratch=scratch,
            verify=not args.no_verify, use_kaggle_cli=not args.no_kaggle, progress=not args.quiet,
        )
        tables = {split: mlmoe_data.read_text_table(text_dir / name) for split, name in WORKBOOKS.items()}
        images_dir, masks_dir = find_image_mask_folders(
            folder, images_dir=args.images_dir, masks_dir=args.masks_dir,
            mask_names=[m for rows in tables.values() for _, m, _ in rows],
        )
        rows = {split: [mlmoe_data.TextRow(text_dir / WORKBOOKS[split], r, m, t, masks_dir, images_dir)
                        for r, m, t in table] for split, table in tables.items()}
        every = rows["train"] + rows["val"] + rows["test"]
        rule, images = mlmoe_data.match_images(every, rule=args.mask_name_rule)
        arrange.check_readable([*dict.fromkeys(images), *dict.fromkeys(r.mask_path for r in every)])

        ariadne, lvit_pairs = {}, {}
        start = 0
        for split in ("train", "val", "test"):
            part = list(zip(rows[split], images[start:start + len(rows[split])]))
            start += len(rows[split])
            ariadne[split], lvit_pairs[split] = [], []
            for r, img in part:
                name = Path(r.mask_name).name
                mask_a = _png(name if name.startswith("mask_") else "mask_" + name)
                ariadne[split].append(arrange.SourcePair(img, r.mask_path, r.text, mask_a, mask_a[len("mask_"):]))
                lvit_pairs[split].append(arrange.SourcePair(img, r.mask_path, r.text, _png(name), img.name))

        counts = {split: len(rows[split]) for split in rows}
        print(f"MosMedData+ images: {images_dir}")
        print(f"MosMedData+ masks:  {masks_dir}")
        print(f"LViT workbooks:     {text_dir}")
        print(f"rows: train {counts['train']}, val {counts['val']}, test {counts['test']} "
              f"(total {sum(counts.values())}); image names from the Image column: mask_name_rule={rule!r}")
        off = [f"{k} {counts[k]} (reported: {v})" for k, v in PAPER_COUNTS.items() if counts[k] != v]
        if off:
            print(f"note: row counts differ from LViT's reported split: {', '.join(off)}")
        extra = _image_count(images_dir) - len({img for img in images})
        if extra > 0:
            print(f"note: {extra} image(s) in {images_dir} have no text row and are left out")

        for target, layout in todo:
            if layout == "ariadne":
                train = ariadne["train"] + ariadne["val"]
                summary = prep.build_folder_atomically(
                    target, lambda tmp: arrange.arrange_ariadne_layout(
                        tmp, train=train, test=ariadne["test"], binarise_masks=True),
                    fingerprint=prints[target])
                n_train = math.floor(0.8 * len(train) + 1e-9)
                print(f"wrote {target} (Ariadne layout): prompt/train.csv {summary['train']} rows (LViT train "
                      f"then val; QaTaDataset's 80/20 split: {n_train} train / {len(train) - n_train} val), "
                      f"prompt/test.csv {summary['test']} rows, {summary['files']} files")
            else:
                summary = prep.build_folder_atomically(
                    target, lambda tmp: arrange.arrange_lvit_layout(
                        tmp, train=lvit_pairs["train"], val=lvit_pairs["val"], test=lvit_pairs["test"],
                        binarise_masks=True),
                    fingerprint=prints[target])
                print(f"wrote {target} (LViT layout): Train_Folder {summary['train']}, Val_Folder "
                      f"{summary['val']}, Test_Folder {summary['test']} rows, {summary['files']} files")
            if summary["masks_binarised"]:
                print(f"note: {summary['masks_binarised']} mask(s) were not stored as 0/255 and were "
                      "binarised (value > 0 -> 255)")
    finally:
        scratch.cleanup()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ManualDownloadRequired as err:
        print(f"manual download needed\n{err}\n\nThen run this script again.", file=sys.stderr)
        return EXIT_MANUAL
    except ChecksumError as err:
        print(f"checksum error\n{err}\n(--no-verify skips the workbook checksums)", file=sys.stderr)
        return EXIT_FAILED
    except (DownloadError, OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
