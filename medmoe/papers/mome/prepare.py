"""Arrange the open CT sources of the CLIP-Driven Universal Model collection in its layout, with dataset lists.

Used in the book by: *Chapter 4, MoME*. The Universal Model (and, as far as public material shows, MoME)
trains on a collection of partially labelled CT datasets arranged under one data root and listed in
tab-separated dataset lists (``image<TAB>label``, relative paths); :mod:`medmoe.papers.mome.data` reads
that layout. This script builds it for the sources that can be downloaded without an account::

    <out>/09_AMOS/img/amos_<id>.nii.gz              <out>/09_AMOS/label/amos_<id>.nii.gz
    <out>/10_Decathlon/TaskNN_<Name>/imagesTr/...   <out>/10_Decathlon/TaskNN_<Name>/labelsTr/...
    <out>/15_TotalSegmentator/img/s<id>.nii.gz      <out>/15_TotalSegmentator/label/s<id>.nii.gz
    <out>/dataset_list/<source>_{train,val,test}.txt and universal_{train,val,test}.txt (all sources in <out>)

Sources (``--list`` prints each with its folder, and the access route of the datasets not scripted here):

* ``amos`` -> ``09`` (catalogue ``amos22``): ``imagesTr/amos_<id>.nii.gz`` + ``labelsTr/`` (the CT cases,
  ids < 500; ``imagesVa`` is not used); the reference's folder names ``09_AMOS/img|label``;
* ``msd_liver``, ``msd_lung``, ``msd_pancreas``, ``msd_hepaticvessel``, ``msd_spleen``, ``msd_colon`` ->
  ``10_03`` ... ``10_10`` (catalogue ``msd_task03_liver`` ...): ``TaskNN_<Name>/imagesTr`` + ``labelsTr``
  (macOS ``._*`` files in the tars are skipped); ``msd`` selects all six;
* ``totalseg`` -> ``15`` (catalogue ``totalsegmentator_v201``): ``s<id>/ct.nii.gz`` +
  ``s<id>/segmentations/<structure>.nii.gz``, merged into one label map per subject by
  :data:`medmoe.papers.mome.data.TOTALSEG_STRUCTURES` (values are template ids; every listed structure file
  must exist). ``15`` and its folder name are ours: the reference has no transfer list for it.

Per source: the files are found anywhere under the input folder (default: the catalogue folder
``<root>/<target>`` left by ``python data_scripts/fetch.py NAME``; ``--input NAME=DIR`` overrides), copied
(``--link``: hard-linked where the file system allows) into ``<out>/<dataset folder>``, which is built in a
temporary folder and renamed into place (running again with the same inputs does nothing; ``--force``
rebuilds), and split **by patient** (the case id: ``amos_<id>``, ``liver_<n>``, ``s<id>``; one scan each as
far as the file names tell) into train / val / test with ``--seed`` (``--val-fraction`` 0.1,
``--test-fraction`` 0.2 by default). The reference's own split files
(``dataset/dataset_list/PAOT_*.txt``) use the same format and can be used instead where the files exist;
their seed is not published, so they are not regenerated here. Lists are written atomically.

Usage::

    python data_scripts/prepare_universal.py --list
    python data_scripts/prepare_universal.py amos msd totalseg --root data --link    # -> data/universal
    python data_scripts/prepare_universal.py msd_liver --input msd_liver=~/Downloads/Task03_Liver --max-cases 4

Exit status: 0 done (or up to date); 1 bad input; 2 usage; 3 an input folder is missing or holds no
cases (the message says what to download and where to put it).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medmoe.data import prepare
from medmoe.data.download import place_file
from medmoe.data.sources import (
    EXIT_FAILED,
    EXIT_MANUAL,
    EXIT_OK,
    EXIT_USAGE,
    MSD_CT_TASKS,
    default_data_root,
    get_source,
)
from medmoe.papers.mome import data as universal
from medmoe.utils import natural_key

DEFAULT_ROOT = default_data_root()
_FORMAT = 1
SPLITS = ("train", "val", "test")
LIST_FOLDER = "dataset_list"


@dataclass(frozen=True)
class Case:
    """One scan: its patient, where it goes (relative to the output data root) and how to place it."""

    patient: str
    image_rel: str
    label_rel: str
    image_src: Path
    label_src: Path | None = None  # None: the label is written by ``write_label``
    write_label: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class Builder:
    key: str
    dataset: str  # Universal Model dataset id
    catalogue: str  # name in medmoe.data.sources
    expects: str
    find: Callable[[Path], list[Case]]

    @property
    def folder(self) -> str:
        return universal.REFERENCE_FOLDERS[self.dataset]


#: The collection's datasets this script does not build, and how to get them (``--list`` prints these).
NOT_SCRIPTED: tuple[tuple[str, str, str], ...] = (
    ("01 BTCV (Multi-Atlas Labeling Beyond the Cranial Vault)",
     "Synapse syn3193805: log in and join the challenge (www.synapse.org/#!Synapse:syn3193805)",
     "01_Multi-Atlas_Labeling/img/img0001.nii.gz + label/label0001.nii.gz"),
    ("02 Pancreas-CT (TCIA)",
     "TCIA collection Pancreas-CT: DICOM through the NBIA Data Retriever under TCIA's terms; the reference's "
     "multi-organ labels (multiorgan_label/labelNNNN.nii.gz) are not from TCIA and their source is not named "
     "in the reference repository (unverified)",
     "02_TCIA_Pancreas-CT/img/PANCREAS_0005.nii.gz + multiorgan_label/label0005.nii.gz"),
    ("03 CHAOS (CT)",
     "open on Zenodo (python data_scripts/fetch.py chaos) but DICOM + PNG ground truth: convert to NIfTI "
     "yourself (labels 0/1; not scripted here)",
     "03_CHAOS/ct/img/18_image.nii.gz + ct/liver_label/18_segmentation.nii.gz"),
    ("04 LiTS",
     "CodaLab competition 17094: registration (the MSD Task03_Liver volumes, prepared here as 10_03, come "
     "from LiTS)",
     "04_LiTS/img/liver_0.nii.gz + label/liver_0.nii.gz"),
    ("05 KiTS",
     "kits-challenge.org (the reference README links the KiTS21 page): the challenge's GitHub repository and "
     "download script; terms on the site (not checked here)",
     "05_KiTS/img/img0010.nii.gz + label/label0010.nii.gz"),
    ("07 WORD", "request by e-mail (github.com/HiLab-git/WORD); GPL-3.0, academic use only",
     "07_WORD/img/word_0004.nii.gz + label/word_0004.nii.gz"),
    ("08 AbdomenCT-1K", "github.com/JunMa11/AbdomenCT-1K: share links (cannot be scripted)",
     "08_AbdomenCT-1K/img/Case_00006_0000.nii.gz + label/Case_00006.nii.gz"),
    ("12 CT-ORG", "TCIA collection CT-ORG (NBIA Data Retriever, TCIA terms)",
     "12_CT-ORG/img/volume-11.nii.gz + label/labels-11.nii.gz"),
    ("13 AbdomenCT-12organ", "from the AbdomenCT-1K repository (github.com/JunMa11/AbdomenCT-1K): share links",
     "13_AbdomenCT-12organ/img/Organ12_0008_0000.nii.gz + label/Organ12_0008.nii.gz"),
)


# --------------------------------------------------------------------------------------------------
# Finding the cases
# --------------------------------------------------------------------------------------------------


def _nifti_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem


def _volumes(folder: Path) -> list[Path]:
    """NIfTI files directly in ``folder``, without macOS ``._*`` resource files, naturally sorted."""
    return sorted((p for p in folder.glob("*.nii*") if not p.name.startswith(".") and p.is_file()), key=natural_key)


def _paired(images: Path, labels: Path, keep: Callable[[Path], bool] = lambda p: True) -> list[tuple[Path, Path]]:
    pairs, orphans = [], []
    for image in _volumes(images):
        if not keep(image):
            continue
        label = labels / image.name
        (pairs.append((image, label)) if label.is_file() else orphans.append(image.name))
    if orphans:
        raise ValueError(f"{len(orphans)} image(s) in {images} have no label of the same name in {labels}: "
                         f"{', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}")
    return pairs


def _amos_ct(image: Path) -> bool:
    """AMOS case ids below 500 are CT, 500 and above MRI."""
    digits = re.sub(r"\D", "", _nifti_stem(image))
    return bool(digits) and int(digits) < 500


def find_amos(folder: Path) -> list[Case]:
    cases = []
    for images in sorted(p for p in prepare.walk_folders(folder, max_depth=4) if p.name == "imagesTr"):
        for image, label in _paired(images, images.parent / "labelsTr", _amos_ct):
            stem = _nifti_stem(image)
            cases.append(Case(stem, f"09_AMOS/img/{image.name}", f"09_AMOS/label/{label.name}", image, label))
    return cases


def _find_msd(task: str) -> Callable[[Path], list[Case]]:
    def find(folder: Path) -> list[Case]:
        if folder.name != task:  # the catalogue folder <root>/msd holds all six tasks
            found = [p for p in prepare.walk_folders(folder, max_depth=3) if p.name == task]
            if not found:
                return []
            folder = found[0]
        if not (folder / "imagesTr").is_dir():
            return []
        return [Case(_nifti_stem(image), f"10_Decathlon/{task}/imagesTr/{image.name}",
                     f"10_Decathlon/{task}/labelsTr/{label.name}", image, label)
                for image, label in _paired(folder / "imagesTr", folder / "labelsTr")]

    return find


def merge_totalseg(ct: Path, segmentations: Path, out: Path) -> None:
    """Write the one-map label of a TotalSegmentator subject: value ``v`` where a structure of
    ``TOTALSEG_STRUCTURES[v]`` is set (later values win, so kidney cysts lie over the kidneys)."""
    reference = nib.load(str(ct))
    shape = tuple(reference.shape[:3])
    label = np.zeros(shape, np.uint8)
    for value, names in universal.TOTALSEG_STRUCTURES.items():
        for name in names:
            path = segmentations / f"{name}.nii.gz"
            if not path.is_file():
                raise FileNotFoundError(f"TotalSegmentator structure file missing: {path} (needed for template "
                                        f"value {value}); the v2.0.1 release has one file per structure")
            mask = nib.load(str(path))
            if tuple(mask.shape[:3]) != shape:
                raise ValueError(f"structure {path} is {tuple(mask.shape[:3])} but its CT {ct} is {shape}")
            label[np.asanyarray(mask.dataobj) > 0] = value
    image = nib.Nifti1Image(label, reference.affine)
    image.set_qform(reference.affine, code=1)
    image.set_sform(reference.affine, code=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(out))


def find_totalseg(folder: Path) -> list[Case]:
    cases = []
    for ct in sorted(folder.rglob("ct.nii.gz"), key=lambda p: natural_key(p.parent)):
        seg = ct.parent / "segmentations"
        if not seg.is_dir():
            continue
        subject = ct.parent.name
        cases.append(Case(subject, f"15_TotalSegmentator/img/{subject}.nii.gz",
                          f"15_TotalSegmentator/label/{subject}.nii.gz", ct,
                          write_label=lambda out, ct=ct, seg=seg: merge_totalseg(ct, seg, out)))
    return cases


_MSD_KEYS = {"03": "msd_liver", "06": "msd_lung", "07": "msd_pancreas", "08": "msd_hepaticvessel",
             "09": "msd_spleen", "10": "msd_colon"}

BUILDERS: dict[str, Builder] = {b.key: b for b in (
    Builder("amos", "09", "amos22", "imagesTr/amos_<id>.nii.gz with labelsTr/ next to it (amos22.zip unpacked); "
            "CT ids < 500", find_amos),
    *(Builder(_MSD_KEYS[n], f"10_{n}", f"msd_{task.lower()}",
              f"{task}/imagesTr/*.nii.gz and {task}/labelsTr/ (the {task}.tar unpacked)", _find_msd(task))
      for n, (task, *_rest) in MSD_CT_TASKS.items()),
    Builder("totalseg", "15", "totalsegmentator_v201",
            "s<id>/ct.nii.gz and s<id>/segmentations/<structure>.nii.gz (Totalsegmentator_dataset_v201.zip unpacked)",
            find_totalseg),
)}

ALIASES: dict[str, tuple[str, ...]] = {"msd": tuple(_MSD_KEYS.values()), "all": tuple(BUILDERS)}


# --------------------------------------------------------------------------------------------------
# Split, place, write lists
# --------------------------------------------------------------------------------------------------


def split_patients(patients: Iterable[str], *, val_fraction: float, test_fraction: float,
                   seed: int) -> dict[str, str]:
    """Patient -> ``"train"`` / ``"val"`` / ``"test"``: ``round(fraction * n)`` patients each for test and val
    (at least one each when there are three or more patients and the fraction is positive; train always
    keeps at least one), drawn from the sorted unique patients with ``numpy.random.default_rng(seed)``."""
    unique = sorted(set(patients))
    for name, f in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"--val-fraction + --test-fraction must be below 1, got {val_fraction + test_fraction}")
    n = len(unique)
    n_test, n_val = (math.floor(f * n + 0.5) for f in (test_fraction, val_fraction))
    if n >= 3:
        n_test = max(n_test, 1) if test_fraction > 0 else 0
        n_val = max(n_val, 1) if val_fraction > 0 else 0
    while n and n_test + n_val > n - 1:  # keep one patient for training
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    order = np.random.default_rng(seed).permutation(n)
    out = {}
    for rank, i in enumerate(order):
        out[unique[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def build_dataset(builder: Builder, cases: list[Case], tmp: Path, *, link: bool) -> dict[str, object]:
    """Place (or write) every case under ``tmp``, which becomes ``<out>/<builder.folder>``."""
    prefix = builder.folder + "/"
    for case in cases:
        image_dst, label_dst = tmp / case.image_rel[len(prefix):], tmp / case.label_rel[len(prefix):]
        place_file(case.image_src, image_dst, link=link)
        if case.write_label is not None:
            case.write_label(label_dst)
        else:
            assert case.label_src is not None
            place_file(case.label_src, label_dst, link=link)
    return {"cases": len(cases), "dataset": builder.dataset}


def write_lists(out_root: Path, builder: Builder, cases: list[Case], split: dict[str, str]) -> dict[str, int]:
    """``<out>/dataset_list/<key>_<split>.txt`` for this source, then ``universal_<split>.txt`` for every source
    whose lists are in that folder."""
    lists = out_root / LIST_FOLDER
    counts = {}
    for name in SPLITS:
        pairs = [(c.image_rel, c.label_rel) for c in cases if split[c.patient] == name]
        universal.write_dataset_list(lists, f"{builder.key}_{name}.txt", pairs)
        counts[name] = len(pairs)
    for name in SPLITS:
        pairs = []
        for key in BUILDERS:  # a fixed order, whatever was built when
            part = lists / f"{key}_{name}.txt"
            if part.is_file():
                pairs += [(c.image, c.label) for c in universal.parse_dataset_list(part)]
        universal.write_dataset_list(lists, f"universal_{name}.txt", pairs)
    return counts


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def input_folder(builder: Builder, root: Path, inputs: dict[str, str]) -> Path:
    given = inputs.get(builder.key) or inputs.get(builder.catalogue)
    return Path(given).expanduser() if given else root / get_source(builder.catalogue).target


def missing_message(builder: Builder, folder: Path, root: Path, *, found: str | None = None) -> str:
    source = get_source(builder.catalogue)
    what = "input folder not found" if found is None else "no cases found in the input folder"
    return (f"{builder.key}: {what}: {folder}\n"
            f"  source {source.name!r} ({source.access}): download it: python data_scripts/fetch.py {source.name} "
            f"--root {root}\n"
            f"  homepage: {source.homepage}\n"
            f"  expected inside: {builder.expects}\n"
            f"  (or point to your copy with --input {builder.key}=DIR)"
            + ("" if found is None else f"\n  what is there:\n{found}"))


def list_sources(root: Path) -> str:
    lines = ["Prepared by this script (open downloads):"]
    for b in BUILDERS.values():
        s = get_source(b.catalogue)
        labels = ", ".join(universal.UNIVERSAL_CLASSES[i - 1] for i in universal.TEMPLATE[b.dataset])
        lines += [f"{b.key}  -> dataset {b.dataset}: <out>/{b.folder}",
                  f"    source:   {s.name} ({s.access} access)  {s.homepage}",
                  f"    folder:   {root / s.target}",
                  f"    expects:  {b.expects}",
                  f"    labels:   {labels}"]
    aliases = "; ".join(f"{k} = {' '.join(v)}" for k, v in ALIASES.items())
    lines += [f"aliases: {aliases}", "",
              "Not scripted (an account, a registration or an e-mail request, or a format conversion); put them "
              "under <out> in the reference layout and add their lines to a dataset list:"]
    for name, access, layout in NOT_SCRIPTED:
        lines += [f"{name}", f"    access:   {access}", f"    layout:   {layout}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_universal.py",
        description="Arrange open CT sources in the CLIP-Driven Universal Model layout, with dataset lists (MoME).",
        epilog="Exit status: 0 done, 1 bad input, 2 usage, 3 input folder missing or empty.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"sources to prepare: {', '.join(BUILDERS)}, or {', '.join(ALIASES)}")
    parser.add_argument("--list", action="store_true", help="list the sources, their folders and the access notes")
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"data root (default: {DEFAULT_ROOT})")
    parser.add_argument("--out", metavar="DIR", help="output data root (default: <root>/universal)")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=DIR",
                        help="input folder for a source (NAME: a source above or its catalogue name)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation patients (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="test patients (default 0.2)")
    parser.add_argument("--link", action="store_true", help="hard-link files instead of copying (same disk)")
    parser.add_argument("--max-cases", type=int, default=0, help="use only the first N cases (a quick trial)")
    parser.add_argument("--force", action="store_true", help="rebuild outputs that are up to date")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    return parser


def run(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser()
    if args.list:
        print(list_sources(root))
        return EXIT_OK
    names = [k for n in args.names for k in ALIASES.get(n, (n,))]
    unknown = [n for n in names if n not in BUILDERS]
    if not names or unknown:
        what = f"unknown source(s) {unknown}" if unknown else "no source given"
        print(f"error: {what}; choose from {', '.join([*BUILDERS, *ALIASES])} (--list explains each)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        inputs = dict(item.split("=", 1) for item in args.input)
    except ValueError:
        print(f"error: --input takes NAME=DIR, got {args.input}", file=sys.stderr)
        return EXIT_USAGE
    if args.max_cases < 0:
        print("error: --max-cases must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    out_root = Path(args.out).expanduser() if args.out else root / "universal"

    for name in dict.fromkeys(names):
        builder = BUILDERS[name]
        folder = input_folder(builder, root, inputs)
        if not folder.is_dir():
            print(missing_message(builder, folder, root), file=sys.stderr)
            return EXIT_MANUAL
        cases = builder.find(folder)
        if args.max_cases:
            cases = cases[: args.max_cases]
        if not cases:
            print(missing_message(builder, folder, root, found=prepare.describe_tree(folder)), file=sys.stderr)
            return EXIT_MANUAL
        split = split_patients((c.patient for c in cases), val_fraction=args.val_fraction,
                               test_fraction=args.test_fraction, seed=args.seed)
        fingerprint = {"script": "prepare_universal", "format": _FORMAT, "source": name,
                       "input": str(folder.resolve()), "link": bool(args.link), "max_cases": args.max_cases,
                       "cases": len(cases)}
        target = out_root / builder.folder
        if not args.force and prepare.prepared_is_current(target, fingerprint):
            if not args.quiet:
                print(f"{name}: up to date: {target} (same inputs; --force rebuilds)")
        else:
            prepare.build_folder_atomically(
                target, lambda tmp, b=builder, c=cases: build_dataset(b, c, tmp, link=args.link),
                fingerprint=fingerprint)
        counts = write_lists(out_root, builder, cases, split)
        if not args.quiet:
            print(f"{name}: dataset {builder.dataset}: {len(cases)} cases in {target}; lists "
                  f"{out_root / LIST_FOLDER}/{name}_{{train,val,test}}.txt with "
                  f"{counts['train']}/{counts['val']}/{counts['test']} cases")
    if not args.quiet:
        print(f"Combined lists: {out_root / LIST_FOLDER}/universal_{{train,val,test}}.txt. "
              f"{len(NOT_SCRIPTED)} more datasets of the collection need an account, a request or a conversion: "
              "see --list.")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
