"""Arrange the QaTa-COV19 download (Kaggle) and LViT's text workbooks into the layouts medmoe reads.

Explained in the book: Chapter 1, MLMoE (the ``paper`` profile reads the Ariadne layout written here).

Inputs (get them with ``python data_scripts/fetch.py --show qata_cov19 lvit_qata_text``):

* the Kaggle archive ``qatacov19-dataset.zip`` or the folder it unpacks to
  (``QaTa-COV19/QaTa-COV19-v2/{Train Set,Test Set}/{Images,Ground-truths}``); by default the catalogue's
  folder ``<root>/qata_cov19``, checked (and unpacked) by ``medmoe.data.sources.fetch``;
* LViT's workbooks ``Train_text_for_Covid19.xlsx`` (train + val rows), ``Test_text_for_Covid19.xlsx``
  and, if you have them, ``Train_ID.xlsx`` / ``Val_ID.xlsx`` (LViT's train/val split); by default in
  ``<root>/lvit_text/qata_cov19``, checked against the catalogue's SHA-256 pins.

Outputs:

* ``--out`` (default ``<root>/QaTa-COV19-v2``): the Ariadne layout read by ``QaTaDataset``:
  ``Train/Images``, ``Train/GTs``, ``Test/...``, ``prompt/train.csv`` (LViT's Train rows, then its Val
  rows) and ``prompt/test.csv``. ``QaTaDataset``'s 80/20 row split then gives back LViT's 5,716 / 1,429.
* ``--lvit-layout [DIR]`` (default ``<root>/lvit/QaTa-Covid19``): LViT's layout read by ``LViTDataset``.

Usage::

    python data_scripts/prepare_qata.py --root data
    python data_scripts/prepare_qata.py --qata ~/Downloads/archive.zip --text-dir ~/Downloads/lvit --lvit-layout

Every text row must find its mask (``Ground-truths/<Image>``) and its image (``Images/<Image without
mask_>``); otherwise nothing is written and the message lists the rows and the paths expected.
Each output is built in a temporary folder next to it and renamed into place; running the script
again with the same inputs does nothing (``--force`` rebuilds).

Exit status: 0 done (or already up to date); 1 bad or inconsistent input, checksum mismatch;
2 usage; 3 something must be downloaded by hand first (the message says what and where).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import pandas as pd

from medmoe.data import prepare as prep
from medmoe.data.download import ChecksumError, DownloadError, ManualDownloadRequired, sha256sum
from medmoe.data.sources import EXIT_FAILED, EXIT_MANUAL, EXIT_OK, EXIT_USAGE, default_data_root
from medmoe.papers.mlmoe import data as mlmoe_data
from medmoe.papers.mlmoe import prepare as arrange

DEFAULT_ROOT = default_data_root()

TRAIN_TEXT = "Train_text_for_Covid19.xlsx"
TEST_TEXT = "Test_text_for_Covid19.xlsx"
TRAIN_IDS = "Train_ID.xlsx"
VAL_IDS = "Val_ID.xlsx"
SETS = ("Train Set", "Test Set")
KAGGLE_IMAGES, KAGGLE_MASKS = "Images", "Ground-truths"

#: Row counts of the real files (data_sources.md); a difference is reported, not an error.
PAPER_COUNTS = {"train+val": 7145, "train": 5716, "val": 1429, "test": 2113}

_FORMAT = 1  # bump when the output changes, so older outputs are rebuilt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_qata.py",
        description="Arrange QaTa-COV19 (Kaggle) + LViT text workbooks into the Ariadne (and LViT) layout.",
        epilog="Exit status: 0 done, 1 bad input or checksum, 2 usage, 3 manual download needed.",
    )
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"data root (default: {DEFAULT_ROOT})")
    parser.add_argument("--qata", metavar="PATH",
                        help="Kaggle archive or the folder it unpacks to (default: <root>/qata_cov19 via fetch)")
    parser.add_argument("--text-dir", metavar="DIR",
                        help="folder holding LViT's workbooks (default: <root>/lvit_text/qata_cov19)")
    parser.add_argument("--out", metavar="DIR", help="Ariadne layout output (default: <root>/QaTa-COV19-v2)")
    parser.add_argument("--lvit-layout", metavar="DIR", nargs="?", const="",
                        help="also write LViT's layout (default DIR: <root>/lvit/QaTa-Covid19)")
    parser.add_argument("--split-ids", choices=("auto", "ids", "rows"), default="auto",
                        help="train/val split: 'ids' = Train_ID.xlsx/Val_ID.xlsx, 'rows' = first 80%% / last "
                             "20%% of the train workbook, 'auto' = ids when both files exist (default)")
    parser.add_argument("--link", action="store_true", help="hard-link files instead of copying (same disk)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the outputs are up to date")
    parser.add_argument("--no-verify", action="store_true", help="skip the workbook checksums")
    parser.add_argument("--no-kaggle", action="store_true", help="never call the kaggle command")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def find_qata_sets(folder: Path) -> Path:
    """The folder holding ``Train Set`` and ``Test Set`` (each with ``Images`` and ``Ground-truths``)."""
    for d in prep.walk_folders(folder, max_depth=4):
        if all((d / s / sub).is_dir() for s in SETS for sub in (KAGGLE_IMAGES, KAGGLE_MASKS)):
            return d
    raise FileNotFoundError(
        f"no QaTa-COV19 folder found under {folder}: expected a folder holding 'Train Set/Images', "
        "'Train Set/Ground-truths', 'Test Set/Images' and 'Test Set/Ground-truths' (the Kaggle archive "
        f"unpacks to QaTa-COV19/QaTa-COV19-v2/...). Found:\n{prep.describe_tree(folder, max_depth=5)}"
    )


def _id_key(value: str) -> str:
    name = Path(str(value).strip()).name
    if name.startswith("mask_"):
        name = name[len("mask_"):]
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in mlmoe_data.IMAGE_SUFFIXES else name


def _read_ids(path: Path, keys: dict[str, list[int]]) -> list[int]:
    """Row indices (into the train workbook) named by an LViT ID workbook.

    The ID workbooks' format is unconfirmed, so this is tolerant: the column whose cells best match
    the workbook's ``Image`` names (with or without ``mask_``, with or without ``.png``) is used; one
    non-matching first cell (a header) is allowed.
    """
    frame = pd.read_excel(path, header=None, dtype=str, keep_default_na=False, engine="openpyxl")
    if frame.empty:
        raise ValueError(f"{path} is empty")
    scores = [sum(_id_key(v) in keys for v in frame[c]) for c in frame.columns]
    column = frame.columns[max(range(len(scores)), key=scores.__getitem__)]
    values = [str(v).strip() for v in frame[column]]
    unmatched = [(r, v) for r, v in enumerate(values) if v and _id_key(v) not in keys]
    if unmatched and unmatched[0][0] == 0:
        unmatched = unmatched[1:]  # a header cell
    if unmatched:
        shown = ", ".join(f"row {r}: {v!r}" for r, v in unmatched[:5])
        raise ValueError(
            f"{path}: {len(unmatched)} ID(s) name no row of {TRAIN_TEXT} ({shown}). The ID workbooks' "
            "format is unconfirmed; use --split-ids rows to split the train workbook 80/20 by row order."
        )
    rows: list[int] = []
    for v in values:
        rows += keys.get(_id_key(v), []) if v else []
    return rows


def split_train_val(train_rows: list[mlmoe_data.TextRow], text_dir: Path,
                    mode: str) -> tuple[list[int], list[int], str]:
    """``(train row indices, val row indices, how)`` for LViT's train workbook."""
    have_ids = (text_dir / TRAIN_IDS).is_file() and (text_dir / VAL_IDS).is_file()
    if mode == "ids" and not have_ids:
        raise FileNotFoundError(
            f"--split-ids ids needs {text_dir / TRAIN_IDS} and {text_dir / VAL_IDS} (optional files of the "
            "lvit_qata_text source); use --split-ids rows to split by row order instead"
        )
    n = len(train_rows)
    if mode == "rows" or not have_ids:
        n_train = math.floor(0.8 * n + 1e-9)
        why = "" if mode == "rows" else f" ({TRAIN_IDS} / {VAL_IDS} not found)"
        return list(range(n_train)), list(range(n_train, n)), f"first 80% / last 20% of {TRAIN_TEXT} by row{why}"
    keys: dict[str, list[int]] = {}
    for i, r in enumerate(train_rows):
        keys.setdefault(_id_key(r.mask_name), []).append(i)
    train_ids = set(_read_ids(text_dir / TRAIN_IDS, keys))
    val_ids = set(_read_ids(text_dir / VAL_IDS, keys))
    both = sorted(train_ids & val_ids)
    neither = sorted(set(range(n)) - train_ids - val_ids)
    if both or neither:
        detail = []
        if both:
            detail.append(f"{len(both)} row(s) in both, e.g. {train_rows[both[0]].mask_name!r}")
        if neither:
            detail.append(f"{len(neither)} row(s) in neither, e.g. {train_rows[neither[0]].mask_name!r}")
        raise ValueError(
            f"{TRAIN_IDS} and {VAL_IDS} do not split {TRAIN_TEXT} cleanly: {'; '.join(detail)}. "
            "Use --split-ids rows to split by row order instead."
        )
    # Workbook order within each part (deterministic whatever the order of the ID files).
    return (sorted(train_ids), sorted(val_ids), f"{TRAIN_IDS} / {VAL_IDS}")


def _fingerprint(args: argparse.Namespace, root: Path, text_dir: Path, layout: str) -> dict[str, object]:
    if args.qata:
        given = Path(args.qata).expanduser().resolve()
        stat = given.stat() if given.is_file() else None
        qata = {"path": str(given), "size": stat.st_size if stat else None,
                "mtime_ns": stat.st_mtime_ns if stat else None}
    else:
        qata = {"path": str((root / "qata_cov19").resolve())}
    workbooks = {n: sha256sum(text_dir / n) for n in (TRAIN_TEXT, TEST_TEXT, TRAIN_IDS, VAL_IDS)
                 if (text_dir / n).is_file()}
    return {"script": "prepare_qata", "format": _FORMAT, "layout": layout, "qata": qata,
            "workbooks": workbooks, "split_ids": args.split_ids, "link": bool(args.link)}


def _note_counts(counts: dict[str, int]) -> list[str]:
    off = [f"{k} {counts[k]} (paper: {v})" for k, v in PAPER_COUNTS.items() if k in counts and counts[k] != v]
    return [f"note: row counts differ from the published QaTa-COV19 / LViT numbers: {', '.join(off)}"] if off else []


def run(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser()
    out = Path(args.out).expanduser() if args.out else root / "QaTa-COV19-v2"
    lvit_out = None
    if args.lvit_layout is not None:
        lvit_out = Path(args.lvit_layout).expanduser() if args.lvit_layout else root / "lvit" / "QaTa-Covid19"
    text_dir = arrange.check_workbooks(args.text_dir, source="lvit_qata_text", root=root, verify=not args.no_verify)
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

    scratch = prep.ScratchDirs(out.parent, ".prepare_qata-")

    try:
        qata_dir = prep.resolve_download(
            args.qata, source="qata_cov19", root=root, scratch=scratch,
            verify=not args.no_verify, use_kaggle_cli=not args.no_kaggle, progress=not args.quiet,
        )
        kaggle = find_qata_sets(qata_dir)
        rows = {}
        for key, name, folder in (("train", TRAIN_TEXT, "Train Set"), ("test", TEST_TEXT, "Test Set")):
            table = text_dir / name
            rows[key] = [mlmoe_data.TextRow(table, r, m, t, kaggle / folder / KAGGLE_MASKS,
                                            kaggle / folder / KAGGLE_IMAGES)
                         for r, m, t in mlmoe_data.read_text_table(table)]
        _, images = mlmoe_data.match_images(rows["train"] + rows["test"], rule="strip_mask_prefix")
        pairs = [arrange.SourcePair(img, r.mask_path, r.text, Path(r.mask_name).name, img.name)
                 for r, img in zip(rows["train"] + rows["test"], images)]
        arrange.check_readable(path for p in pairs for path in (p.image, p.mask))
        train_all, test = pairs[: len(rows["train"])], pairs[len(rows["train"]):]
        train_idx, val_idx, how = split_train_val(rows["train"], text_dir, args.split_ids)
        train, val = [train_all[i] for i in train_idx], [train_all[i] for i in val_idx]

        print(f"QaTa-COV19 images: {kaggle}")
        print(f"LViT workbooks:    {text_dir}")
        counts = {"train+val": len(train_all), "train": len(train), "val": len(val), "test": len(test)}
        print(f"rows: {TRAIN_TEXT} {len(train_all)} (train {len(train)} + val {len(val)}, split: {how}); "
              f"{TEST_TEXT} {len(test)}")
        for line in _note_counts(counts):
            print(line)
        for folder, part in (("Train Set", train_all), ("Test Set", test)):
            used = {p.image.name for p in part}
            extra = sorted(set(os.listdir(kaggle / folder / KAGGLE_IMAGES)) - used)
            if extra:
                print(f"note: {len(extra)} image(s) in {kaggle / folder / KAGGLE_IMAGES} have no text row "
                      f"and are left out (e.g. {extra[0]})")

        for target, layout in todo:
            if layout == "ariadne":
                summary = prep.build_folder_atomically(
                    target,
                    lambda tmp: arrange.arrange_ariadne_layout(tmp, train=train + val, test=test, link=args.link),
                    fingerprint=prints[target])
                n_train = math.floor(0.8 * len(train + val) + 1e-9)
                print(f"wrote {target} (Ariadne layout): prompt/train.csv {summary['train']} rows "
                      f"(LViT train then val; QaTaDataset's 80/20 split: {n_train} train / "
                      f"{summary['train'] - n_train} val), prompt/test.csv {summary['test']} rows, "
                      f"{summary['files']} files")
            else:
                summary = prep.build_folder_atomically(
                    target,
                    lambda tmp: arrange.arrange_lvit_layout(tmp, train=train, val=val, test=test, link=args.link),
                    fingerprint=prints[target])
                print(f"wrote {target} (LViT layout): Train_Folder {summary['train']}, Val_Folder "
                      f"{summary['val']}, Test_Folder {summary['test']} rows, {summary['files']} files")
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
