"""Where each real dataset and pretrained checkpoint comes from, and how to get it onto disk.

Every entry in :data:`SOURCES` is a :class:`Source`: plain data saying what the files are called,
where they live, how to check them and, when a login or agreement stands in the way, what a person
has to do by hand. :func:`fetch` turns an entry into files under a data root::

    from medmoe.data.sources import fetch
    path = fetch("sam_vit_b", root="data")          # open: downloads and verifies
    path = fetch("qata_cov19", root="data")         # Kaggle: tells you what to place where

The three kinds of access:

* ``"open"``: a plain URL; :func:`fetch` downloads it (resumable, verified, atomic).
* ``"token"``: needs an API token (Kaggle). If the ``kaggle`` command and ``~/.kaggle/kaggle.json``
  are present it is used; otherwise :class:`ManualDownloadRequired` explains the manual route.
* ``"manual"``: a share link, a data-use agreement, a login or an e-mail request. :func:`fetch`
  looks for the files where they should have been put, verifies them, and otherwise raises
  :class:`ManualDownloadRequired` naming the exact paths.

Adding a dataset is one entry at the bottom of this file, for example::

    register(Source(
        name="my_set",
        description="What it is, in one line",
        access="open",
        files=(RemoteFile("my_set.zip", url="https://zenodo.org/records/1/files/my_set.zip",
                          sha256="<64 hex>", extract=True),),
        homepage="https://zenodo.org/records/1",
        licence="CC BY 4.0",
        target="my_set",
        size="1.2 GB",
    ))

Checksums here were copied from the upstream records (Zenodo, the papers' repositories); none was
recomputed by medmoe from a real download (the project's machines are offline). A value pinned by
a third party is marked ``checksum_verified=False``, and its :class:`ChecksumError` says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from medmoe.data.download import (
    DownloadError,
    ManualDownloadRequired,
    download,
    extract,
    is_archive,
    verify_file,
)

# Shared by the scripts in data_scripts/ (fetch.py, prepare_qata.py, prepare_mosmed.py).
#: Exit status of the data scripts: done, bad input or checksum, usage, a manual download is needed first.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MANUAL = 0, 1, 2, 3


def default_data_root() -> str:
    """The data root when ``--root`` is not given: ``$MEDMOE_DATA``, else ``./data`` (git-ignored)."""

    return os.environ.get("MEDMOE_DATA", "data")


__all__ = [
    "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_MANUAL", "default_data_root", "MSD_CT_TASKS",
    "Access",
    "RemoteFile",
    "Source",
    "SOURCES",
    "UnknownSourceError",
    "register",
    "get_source",
    "fetch",
    "access_table",
    "manual_message",
]

Access = Literal["open", "token", "manual"]


class UnknownSourceError(KeyError):
    """A name that is not in :data:`SOURCES`; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""

_ACCESS_KINDS = ("open", "token", "manual")

#: Sentence added to checksum errors for values pinned by someone else and never checked by us.
UNVERIFIED_NOTE = (
    "Note: this checksum was pinned by a third-party repository and has not been verified by "
    "medmoe. If you downloaded the file from the official link, the pin itself may be wrong: "
    "please report it (and use fetch(..., verify=False) / fetch.py --no-verify meanwhile)."
)


def _check_relative(path: str, what: str) -> None:
    pure = PurePosixPath(path.replace("\\", "/"))
    if not path or pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"{what} must be a relative path without '..', got {path!r}")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a :class:`Source`.

    Attributes:
        filename: where the file goes, relative to the source's folder (``root/<target>/``).
        url: where to download it; ``None`` when there is no direct link (token or manual access).
        sha256: expected SHA-256, or ``None`` when no one publishes one.
        md5: expected MD5, for hosts that publish only MD5 (Zenodo).
        checksum_verified: ``False`` when the checksum was pinned by a third party and not
            confirmed against the upstream file; a mismatch message then says the pin may be wrong.
        extract: unpack this archive into the source's folder after it is verified.
        optional: a missing optional file does not stop :func:`fetch`; it is verified if present.
        note: one line for humans (what the file holds, where the checksum came from).

    Example::

        >>> f = RemoteFile("ISLES-2022.zip", url="https://zenodo.org/records/7960856/files/ISLES-2022.zip",
        ...                sha256="f374895e383f725ddd280db41ef36ed975277c33de0e587a631ca7ea7ad45d6b", extract=True)
        >>> f.checksum_text[:20]
        'sha256 f374895e383f7'
    """

    filename: str
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    checksum_verified: bool = True
    extract: bool = False
    optional: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        _check_relative(self.filename, "RemoteFile.filename")
        if self.extract and not is_archive(self.filename):
            raise ValueError(f"RemoteFile {self.filename!r} is marked extract=True but is not a known archive type")

    @property
    def checksum_text(self) -> str:
        """``"sha256 <hex>"``, ``"md5 <hex>"`` or ``"no checksum published"``, for messages."""
        if self.sha256:
            text = f"sha256 {self.sha256}"
        elif self.md5:
            text = f"md5 {self.md5}"
        else:
            return "no checksum published"
        return text if self.checksum_verified else text + " (third-party pin, unverified)"


@dataclass(frozen=True)
class Source:
    """A dataset or checkpoint: what it is, where it lives, how to get it, where it goes.

    Attributes:
        name: registry key, lower case with underscores (``"qata_cov19"``).
        description: one line.
        access: ``"open"`` (plain URL), ``"token"`` (Kaggle API token) or ``"manual"``.
        files: the files that make up the source.
        homepage: the page a person visits to download by hand or read the terms.
        licence: the terms, as stated upstream (``"see homepage"`` when we do not know them).
        instructions: the manual route: which site, which account or agreement, which file names.
        target: folder under the data root, e.g. ``"qata_cov19"`` -> ``<root>/qata_cov19/``.
        size: a human note (``"24.2 GB"``, ``"9,258 images"``), shown by ``fetch.py --list``.
        expect: paths under ``<root>/<target>/`` that exist once the source is ready (e.g. the
            extracted folder). When all exist, :func:`fetch` returns at once, so an archive may be
            deleted after extraction and a hand-extracted copy is accepted as it is.
        kaggle_dataset: ``"owner/slug"`` for the optional ``kaggle datasets download`` route.
        kaggle_competition: competition slug for the optional ``kaggle competitions download``.
        used_by: which chapters / papers need it (free text).
    """

    name: str
    description: str
    access: Access
    files: tuple[RemoteFile, ...]
    homepage: str
    licence: str
    target: str
    instructions: str = ""
    size: str = ""
    expect: tuple[str, ...] = ()
    kaggle_dataset: str | None = None
    kaggle_competition: str | None = None
    used_by: str = ""

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or " " in self.name or "-" in self.name:
            raise ValueError(f"Source.name must be lower case with underscores, got {self.name!r}")
        if self.access not in _ACCESS_KINDS:
            raise ValueError(f"Source {self.name!r}: access must be one of {_ACCESS_KINDS}, got {self.access!r}")
        if not isinstance(self.files, tuple) or not all(isinstance(f, RemoteFile) for f in self.files):
            raise TypeError(f"Source {self.name!r}: files must be a tuple of RemoteFile")
        if not self.files and not self.expect:
            raise ValueError(f"Source {self.name!r}: give at least one file or one expected path")
        _check_relative(self.target, f"Source {self.name!r} target")
        for path in self.expect:
            _check_relative(path, f"Source {self.name!r} expect entry")
        if self.access == "open":
            no_url = [f.filename for f in self.files if not f.url]
            if no_url:
                raise ValueError(f"Source {self.name!r} is 'open' but has no URL for {no_url}")
        if self.access != "open" and not self.instructions:
            raise ValueError(f"Source {self.name!r} is {self.access!r}: it needs manual instructions")


#: All known sources by name. Add entries with :func:`register`.
SOURCES: dict[str, Source] = {}


def register(source: Source, *, replace: bool = False) -> Source:
    """Add ``source`` to :data:`SOURCES` (``ValueError`` if the name is taken, unless ``replace``)."""
    if source.name in SOURCES and not replace:
        raise ValueError(f"a source named {source.name!r} is already registered")
    SOURCES[source.name] = source
    return source


def get_source(name: str) -> Source:
    """Look up a source; ``"QaTa-COV19"`` style spellings are normalised to ``"qata_cov19"``.

    Raises:
        UnknownSourceError: (a ``KeyError``) unknown name; the message lists every known name.
    """
    key = name.strip().lower().replace("-", "_")
    try:
        return SOURCES[key]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise UnknownSourceError(f"unknown data source {name!r}; known sources: {known}") from None


# --------------------------------------------------------------------------------------------------
# fetch()
# --------------------------------------------------------------------------------------------------


def fetch(
    source_or_name: Source | str,
    root: str | os.PathLike[str],
    *,
    progress: bool = True,
    verify: bool = True,
    use_kaggle_cli: bool = True,
) -> Path:
    """Make ``source_or_name`` ready under ``root/<target>/`` and return that folder.

    * open sources are downloaded (resumable, checksum-verified, atomic), then archives marked
      ``extract`` are unpacked;
    * token / manual sources must already have been placed there by hand (or, for Kaggle, by the
      ``kaggle`` command when it is installed and configured); they are verified and unpacked.

    Calling it again is cheap: finished files are checked, not downloaded again; an archive is not
    unpacked twice (a hidden ``.<archive>.extracted`` marker remembers it); when every path in
    ``Source.expect`` exists nothing is touched at all.

    Args:
        source_or_name: a :class:`Source` or a name in :data:`SOURCES`.
        root: the data root, e.g. ``"data"``.
        progress: show download progress bars.
        verify: check checksums. Only turn off to get past a wrong third-party pin.
        use_kaggle_cli: try the ``kaggle`` command for Kaggle sources when it is set up.

    Raises:
        UnknownSourceError: (a ``KeyError``) unknown name; the message lists the known ones.
        ManualDownloadRequired: files that must be fetched by hand are missing; the message says
            what, from where, with which account, and the exact path to put each file at.
        ChecksumError: a file does not match its checksum.
        DownloadError: any other download failure.

    Example::

        >>> import tempfile
        >>> try:
        ...     fetch("qata_cov19", root=tempfile.mkdtemp(), use_kaggle_cli=False)
        ... except ManualDownloadRequired as err:
        ...     print(err.missing[0].name)
        qatacov19-dataset.zip
    """
    source = source_or_name if isinstance(source_or_name, Source) else get_source(source_or_name)
    root = Path(root).expanduser()
    base = root / source.target
    if source.expect and all((base / p).exists() for p in source.expect):
        return base

    pending = [f for f in source.files if not (f.extract and _marker(base, f).exists())]
    if source.access == "open":
        for f in pending:
            _download_one(f, base, progress=progress, verify=verify)
    else:
        required = [f for f in pending if not f.optional and not (base / f.filename).exists()]
        if required and source.access == "token" and use_kaggle_cli and _kaggle_ready():
            _kaggle_download(source, root)
            required = [f for f in required if not (base / f.filename).exists()]
        if required:
            raise ManualDownloadRequired(
                manual_message(source, root, required),
                source=source.name,
                missing=tuple(base / f.filename for f in required),
            )
        for f in pending:
            path = base / f.filename
            if path.exists() and verify:
                verify_file(path, sha256=f.sha256, md5=f.md5, note=_note(f))

    for f in pending:
        if f.extract and (base / f.filename).exists():
            extract(base / f.filename, base)
            _marker(base, f).write_text(f"{f.filename} was extracted into this folder by medmoe.fetch\n")
    return base


def _note(f: RemoteFile) -> str | None:
    return None if f.checksum_verified else UNVERIFIED_NOTE


def _marker(base: Path, f: RemoteFile) -> Path:
    """Hidden file recording that archive ``f`` was unpacked into ``base``."""
    path = base / f.filename
    return path.parent / f".{path.name}.extracted"


def _download_one(f: RemoteFile, base: Path, *, progress: bool, verify: bool) -> Path:
    assert f.url is not None  # guaranteed by Source.__post_init__ for open sources
    return download(
        f.url,
        base / f.filename,
        sha256=f.sha256 if verify else None,
        md5=f.md5 if verify else None,
        progress=progress,
        checksum_note=_note(f),
    )


def _access_phrase(source: Source) -> str:
    if source.access == "token":
        return "needs a Kaggle account (and an API token for the scripted route)"
    return "must be downloaded by hand"


def manual_message(source: Source, root: Path, missing: Iterable[RemoteFile]) -> str:
    """The text of :class:`ManualDownloadRequired`: what, from where, which account, exact paths."""
    base = root / source.target
    lines = [
        f"{source.name!r} ({source.description}) is not on disk yet and {_access_phrase(source)}.",
        "",
        f"Homepage: {source.homepage}",
        f"Licence:  {source.licence}",
        "",
        "How to get it:",
        *("  " + line for line in source.instructions.strip().splitlines()),
        "",
        "Put these files at exactly these paths:",
    ]
    for f in missing:
        lines.append(f"  {base / f.filename}")
        detail = [f.checksum_text] + ([f.url] if f.url else []) + ([f.note] if f.note else [])
        lines.append(f"      ({'; '.join(detail)})")
    if source.expect:
        lines += [
            "",
            "Or, if you unpacked it yourself, make sure these exist:",
            *(f"  {base / p}" for p in source.expect),
        ]
    lines += ["", f"Then run again: python data_scripts/fetch.py {source.name} --root {root}"]
    return "\n".join(lines)


def _kaggle_ready() -> bool:
    """``kaggle`` is on PATH and has credentials (``~/.kaggle/kaggle.json`` or env variables)."""
    if shutil.which("kaggle") is None:
        return False
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    has_env = bool(os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))
    return has_env or (config_dir / "kaggle.json").is_file()


def _kaggle_download(source: Source, root: Path) -> None:
    """Run the Kaggle CLI into ``root/<target>``; a failure raises with the manual route appended."""
    base = root / source.target
    if source.kaggle_dataset:
        cmd = ["kaggle", "datasets", "download", "-d", source.kaggle_dataset, "-p", str(base)]
    elif source.kaggle_competition:
        cmd = ["kaggle", "competitions", "download", "-c", source.kaggle_competition, "-p", str(base)]
    else:
        return
    base.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise DownloadError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stderr.strip()}\n"
            "For competitions, accept the rules on the competition page first. Or download by hand:\n\n"
            + manual_message(source, root, [f for f in source.files if not f.optional])
        )


def access_table(sources: Iterable[Source] | None = None) -> str:
    """A Markdown table of name, access, size and homepage (used for ``data_scripts/README.md``)."""
    rows = ["| name | access | size | what | homepage |", "|---|---|---|---|---|"]
    for s in sources if sources is not None else SOURCES.values():
        rows.append(f"| `{s.name}` | {s.access} | {s.size or '?'} | {s.description} | {s.homepage} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------------
# The catalogue. Facts (URLs, access, sizes, checksums) from the project's data-sources fact sheet.
# --------------------------------------------------------------------------------------------------

_KAGGLE_STEPS = """\
1. Sign in at kaggle.com (a free account) and open {page}.
2. Click "Download" and save the archive as {filename} (the browser may call it archive.zip).
   Or, with an API token (kaggle.com > Settings > API > Create New Token -> ~/.kaggle/kaggle.json):
       pip install kaggle && kaggle {kind} download {flag} {ref} -p <the folder below>
3. Leave it zipped: fetch() verifies and unpacks it."""


def _kaggle_steps(*, ref: str, filename: str, competition: bool = False) -> str:
    page = f"https://www.kaggle.com/{'competitions' if competition else 'datasets'}/{ref}"
    return _KAGGLE_STEPS.format(
        page=page,
        filename=filename,
        kind="competitions" if competition else "datasets",
        flag="-c" if competition else "-d",
        ref=ref,
    )


def _zenodo(record: int, filename: str) -> str:
    return f"https://zenodo.org/records/{record}/files/{filename}?download=1"


register(Source(
    name="qata_cov19",
    description="QaTa-COV19 v2: chest X-rays with COVID-19 infection masks (MLMoE / LViT)",
    access="token",
    files=(RemoteFile("qatacov19-dataset.zip", extract=True, note="the archive Kaggle serves for this dataset"),),
    homepage="https://www.kaggle.com/datasets/aysendegerli/qatacov19-dataset",
    licence="see the Kaggle dataset page",
    target="qata_cov19",
    instructions=_kaggle_steps(ref="aysendegerli/qatacov19-dataset", filename="qatacov19-dataset.zip")
    + "\n4. With the lvit_qata_text workbooks in place too, arrange both for the loaders:"
    "\n       python data_scripts/prepare_qata.py --root <data root>",
    size="9,258 chest X-rays",
    expect=("QaTa-COV19/QaTa-COV19-v2/Train Set", "QaTa-COV19/QaTa-COV19-v2/Test Set"),
    kaggle_dataset="aysendegerli/qatacov19-dataset",
    used_by="MLMoE chapter (data_scripts/prepare_qata.py); image covid_1.png pairs with mask "
            "mask_covid_1.png (0/255)",
))

register(Source(
    name="lvit_qata_text",
    description="LViT text annotations for QaTa-COV19 (Excel workbooks, columns Image, Description)",
    access="manual",
    files=(
        RemoteFile("Train_text_for_Covid19.xlsx", checksum_verified=False, note="7,145 rows (train + val)",
                   sha256="35c0f5250c2e8ee5e2bfbefd83823472ede28d5d587add3083449510e3a6e909"),
        RemoteFile("Test_text_for_Covid19.xlsx", checksum_verified=False, note="2,113 rows",
                   sha256="708587c318248d305ff6e61757b4c0d7fec9037c93f86b870a5c76ccbacfc08a"),
        RemoteFile("Train_ID.xlsx", optional=True, note="5,716 rows: LViT's train split"),
        RemoteFile("Val_ID.xlsx", optional=True, note="1,429 rows: LViT's validation split"),
    ),
    homepage="https://github.com/HUANGLIZI/LViT",
    licence="see the LViT repository",
    target="lvit_text/qata_cov19",
    instructions="""\
1. Open the LViT README (github.com/HUANGLIZI/LViT) and follow its OneDrive link for the
   QaTa-COV19 text annotations (a share link: no account needed, but it cannot be scripted).
2. Download Train_text_for_Covid19.xlsx and Test_text_for_Covid19.xlsx (and Train_ID.xlsx,
   Val_ID.xlsx if present) and keep their names unchanged.
Note: the column Image holds the *mask* file name; the image is .replace('mask_', '').
3. Then arrange them with the images: python data_scripts/prepare_qata.py --root <data root>""",
    size="4 small .xlsx files",
    used_by="MLMoE chapter (text-guided segmentation; data_scripts/prepare_qata.py)",
))

register(Source(
    name="lvit_mosmed_text",
    description="LViT text annotations for MosMedData+ (Excel workbooks, columns Image, Description)",
    access="manual",
    files=(
        RemoteFile("Train_text_MosMedData+ 1.xlsx", checksum_verified=False,
                   sha256="f029c1bd606ab6fef682d6e6d67fb875cd17f8268b834ef3ad5baf444134db33"),
        RemoteFile("Val_text_MosMedData+ 1.xlsx", checksum_verified=False,
                   sha256="c8763cb6d636f84de9b14004c9f5c22729f6c49ce8d594af8501c75b4d7c7401"),
        RemoteFile("Test_text_MosMedData+.xlsx", checksum_verified=False,
                   sha256="f6b7d569c71af79773bfd926a7ee295ccf8ef058b5159d686323cd091d5a8db1"),
    ),
    homepage="https://github.com/HUANGLIZI/LViT",
    licence="see the LViT repository",
    target="lvit_text/mosmed_plus",
    instructions="""\
1. Open the LViT README (github.com/HUANGLIZI/LViT) and follow its OneDrive link for the
   MosMedData+ text annotations (a share link: it cannot be scripted).
2. Download the three workbooks and keep their names exactly, spaces included:
   'Train_text_MosMedData+ 1.xlsx', 'Val_text_MosMedData+ 1.xlsx', 'Test_text_MosMedData+.xlsx'.
3. Then arrange them with the images: python data_scripts/prepare_mosmed.py --root <data root>""",
    size="3 small .xlsx files",
    used_by="MLMoE chapter (data_scripts/prepare_mosmed.py); the three workbooks define LViT's "
            "train/val/test split",
))

register(Source(
    name="mosmed_plus",
    description="MosMedData+: CT slices (PNG) with COVID-19 lesion masks (MLMoE / LViT)",
    access="token",
    files=(RemoteFile("covid19-ct-scan-lesion-segmentation-dataset.zip", extract=True,
                      note="the archive Kaggle serves; folder names inside are unconfirmed "
                           "(data_scripts/prepare_mosmed.py looks for them and lists what it finds)"),),
    homepage="https://www.kaggle.com/datasets/maedemaftouni/covid19-ct-scan-lesion-segmentation-dataset",
    licence="see the Kaggle dataset page (original: medicalsegmentation.com/covid19)",
    target="mosmed_plus",
    instructions=_kaggle_steps(
        ref="maedemaftouni/covid19-ct-scan-lesion-segmentation-dataset",
        filename="covid19-ct-scan-lesion-segmentation-dataset.zip",
    )
    + "\n4. With the lvit_mosmed_text workbooks in place too, arrange both for the loaders:"
    "\n       python data_scripts/prepare_mosmed.py --root <data root>"
    "\n   (an archive you unpacked yourself is accepted: the script finds the image/mask folders)",
    size="2,729 CT slices",
    kaggle_dataset="maedemaftouni/covid19-ct-scan-lesion-segmentation-dataset",
    used_by="MLMoE chapter (data_scripts/prepare_mosmed.py); split by the lvit_mosmed_text workbooks",
))

register(Source(
    name="sam_vit_b",
    description="Segment Anything ViT-B checkpoint (SegMoTE)",
    access="open",
    files=(RemoteFile("sam_vit_b_01ec64.pth",
                      url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
                      note="Meta publishes no checksum, so this file cannot be verified"),),
    homepage="https://github.com/facebookresearch/segment-anything",
    licence="Apache-2.0",
    target="weights/sam",
    size="about 375 MB",
    used_by="SegMoTE chapter (alternative: Hugging Face facebook/sam-vit-base)",
))

register(Source(
    name="medclip_vit",
    description="MedCLIP ViT pretrained weights (zip holding pytorch_model.bin; MedMoE init)",
    access="open",
    files=(RemoteFile("medclip-vit-pretrained.zip",
                      url="https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip",
                      extract=True, note="URL from RyanWangZf/MedCLIP, medclip/medclip_vit_weight.txt"),),
    homepage="https://github.com/RyanWangZf/MedCLIP",
    licence="see the MedCLIP repository",
    target="weights/medclip",
    size="?",
    used_by="MedMoE chapter (MedMoE itself initialises Swin-T from MedCLIP)",
))

register(Source(
    name="universal_txt_encoding",
    description="CLIP-Driven Universal Model class embeddings txt_encoding.pth ((32, 512), CLIP ViT-B/32; MoME)",
    access="open",
    files=(RemoteFile("txt_encoding.pth",
                      url="https://github.com/ljwztc/CLIP-Driven-Universal-Model/raw/main/pretrained_weights/"
                          "txt_encoding.pth",
                      note="the repository publishes no checksum, so this file cannot be verified"),),
    homepage="https://github.com/ljwztc/CLIP-Driven-Universal-Model",
    licence="see the CLIP-Driven-Universal-Model repository",
    target="weights/universal",
    size="?",
    used_by="MoME chapter (the Universal Model's text branch)",
))

register(Source(
    name="swin_unetr_ssl",
    description="Self-supervised Swin UNETR encoder weights model_swinvit.pt (MONAI; feature size 48; MoME init)",
    access="open",
    files=(RemoteFile("model_swinvit.pt",
                      url="https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                          "model_swinvit.pt",
                      note="MONAI publishes no checksum, so this file cannot be verified"),),
    homepage="https://github.com/Project-MONAI/research-contributions/tree/main/SwinUNETR/BTCV",
    licence="Apache-2.0",
    target="weights/universal",
    size="about 250 MB",
    used_by="MoME chapter (SwinUNETR.load_from, as the Universal Model's training starts)",
))

register(Source(
    name="chexpert_5x200",
    description="CheXpert 5x200 zero-shot evaluation list (1,000 rows, 5 classes; images not included)",
    access="manual",
    files=(RemoteFile("chexpert-5x200.csv",
                      sha256="36469c3fb0f62019695fbee5d30b99f268060daecba01a75d8a8e94af49eee9a",
                      note="ships in the repository as local_data/chexpert-5x200.csv"),),
    homepage="https://github.com/mbzuai-oryx/UniMed-CLIP",
    licence="see the repository; the images keep CheXpert's research agreement",
    target="chexpert",
    instructions="""\
1. The CSV is a file in the UniMed-CLIP / MedMoE code repositories: local_data/chexpert-5x200.csv.
   Copy it from a checkout (git clone, or 'raw' download on GitHub) without editing it.
2. Its imgpath column points under CheXpert-v1.0-small/train/; those images come separately from
   Kaggle (ashery/chexpert) or Stanford AIMI (research agreement), placed next to the CSV.""",
    size="1,000 rows",
    used_by="MedMoE chapter (zero-shot classification: Atelectasis, Cardiomegaly, Edema, "
            "Pleural Effusion, Consolidation; 200 each)",
))

register(Source(
    name="chaos",
    description="CHAOS challenge training sets: abdominal CT and MR with organ masks",
    access="open",
    files=(RemoteFile("CHAOS_Train_Sets.zip", url=_zenodo(3431873, "CHAOS_Train_Sets.zip"), extract=True,
                      sha256="535f7d3417a0e0f0d9133fb3d962423d2a9cf3f103e4f09a3d8a1daf87d5d2fc"),),
    homepage="https://zenodo.org/records/3431873",
    licence="see the Zenodo record",
    target="chaos",
    size="?",
    used_by="MoME and SegMoTE chapters",
))

register(Source(
    name="amos22",
    description="AMOS 2022: multi-organ abdominal CT and MRI with 15-organ labels",
    access="open",
    files=(RemoteFile("amos22.zip", url=_zenodo(7155725, "amos22.zip"), extract=True,
                      sha256="d2fbf2c31abba9824d183f05741ce187b17905b8cca64d1078eabf1ba96775c2"),),
    homepage="https://zenodo.org/records/7155725",
    licence="CC BY 4.0",
    target="amos22",
    size="24.2 GB",
    used_by="MoME and SegMoTE chapters",
))

register(Source(
    name="isles22",
    description="ISLES 2022: ischemic stroke lesion segmentation, multi-sequence MRI",
    access="open",
    files=(RemoteFile("ISLES-2022.zip", url=_zenodo(7960856, "ISLES-2022.zip"), extract=True,
                      sha256="f374895e383f725ddd280db41ef36ed975277c33de0e587a631ca7ea7ad45d6b"),),
    homepage="https://zenodo.org/records/7960856",
    licence="see the Zenodo record",
    target="isles22",
    size="?",
    used_by="SegMoTE chapter (evaluation)",
))

register(Source(
    name="totalsegmentator_v201",
    description="TotalSegmentator CT v2.0.1: 1,228 subjects, per-structure NIfTI masks",
    access="open",
    files=(RemoteFile("Totalsegmentator_dataset_v201.zip", url=_zenodo(10047292, "Totalsegmentator_dataset_v201.zip"),
                      extract=True, md5="fe250e5718e0a3b5df4c4ea9d58a62fe",
                      note="Zenodo publishes only an md5 for this file"),),
    homepage="https://zenodo.org/records/10047292",
    licence="CC BY 4.0",
    target="totalsegmentator_v201",
    size="23.6 GB",
    used_by="SegMoTE chapter (MedSeg-HQ); MoME chapter (dataset 15, data_scripts/prepare_universal.py)",
))

register(Source(
    name="busi",
    description="BUSI: breast ultrasound images with benign/malignant/normal labels and masks",
    access="token",
    files=(RemoteFile("breast-ultrasound-images-dataset.zip", extract=True,
                      note="the archive Kaggle serves for this dataset"),),
    homepage="https://www.kaggle.com/datasets/aryashah2k/breast-ultrasound-images-dataset",
    licence="see the Kaggle dataset page",
    target="busi",
    instructions=_kaggle_steps(ref="aryashah2k/breast-ultrasound-images-dataset",
                               filename="breast-ultrasound-images-dataset.zip"),
    size="?",
    kaggle_dataset="aryashah2k/breast-ultrasound-images-dataset",
    used_by="MedMoE chapter (breast ultrasound evaluation)",
))

register(Source(
    name="rsna_pneumonia",
    description="RSNA Pneumonia Detection Challenge: 26,684 training DICOMs + stage_2_train_labels.csv",
    access="token",
    files=(RemoteFile("rsna-pneumonia-detection-challenge.zip", extract=True,
                      note="the archive Kaggle serves for this competition"),),
    homepage="https://www.kaggle.com/competitions/rsna-pneumonia-detection-challenge",
    licence="the competition rules (accept them on Kaggle first)",
    target="rsna_pneumonia",
    instructions="Log in to Kaggle and accept the competition rules on its page (Rules tab) first.\n"
    + _kaggle_steps(ref="rsna-pneumonia-detection-challenge",
                    filename="rsna-pneumonia-detection-challenge.zip", competition=True),
    size="26,684 DICOMs",
    expect=("stage_2_train_labels.csv",),
    kaggle_competition="rsna-pneumonia-detection-challenge",
    used_by="MedMoE chapter (pneumonia evaluation)",
))

# --- Chapter 2, MedMoE: pretraining captions and the evaluation sets
# (medmoe.papers.medmoe.data, medmoe.papers.medmoe.evalsets)

register(Source(
    name="unimed_captions",
    description="UniMed caption tables MedMoE pretrains on (RadImageNet, CheXpert frontal, ChestX-ray8; CSV)",
    access="manual",
    files=(
        RemoteFile("radimagenet_with_captions_training_set.csv",
                   note="columns filename, captions (Python list literals); images: RadImageNet "
                        "radiology_ai/{CT,MR,US} (request form at radimagenet.com)"),
        RemoteFile("chexpert_with_captions_only_frontal_view.csv",
                   note="images: CheXpert-v1.0-small (Kaggle ashery/chexpert or Stanford AIMI)"),
        RemoteFile("Chest-Xray8_with_captions.csv",
                   note="images: NIH ChestX-ray8 images/ folder (nihcc.app.box.com/v/ChestXray-NIHCC)"),
    ),
    homepage="https://github.com/mbzuai-oryx/UniMed-CLIP/blob/main/docs/UniMed-DATA.md",
    licence="see UniMed-CLIP; every image keeps its source dataset's terms",
    target="unimed_captions",
    instructions="""\
1. Open UniMed-CLIP's docs/UniMed-DATA.md (github.com/mbzuai-oryx/UniMed-CLIP) and follow its MBZUAI
   SharePoint links for the processed captions (share links: they cannot be scripted):
   sections CheXpert, ChestX-ray8 and RadImageNet.
2. Save the three CSV files with their names unchanged in the folder below.
3. The images come separately from each source dataset (CheXpert: Kaggle or Stanford AIMI;
   ChestX-ray8: NIH Box, open; RadImageNet: request form). The chapter's paper profile reads them from
   three folders next to the CSV files (a symbolic link each is enough):
   radimagenet/ (holds radiology_ai/), chexpert/ (holds CheXpert-v1.0-small/) and chestxray8/ (holds
   the image files the table's filename column names); elsewhere, pass their folders as image_root to
   medmoe.papers.medmoe.data.UniMedCaptions (one per table).""",
    size="3 CSV files",
    used_by="MedMoE chapter (pretraining captions, one sample per caption: medmoe.papers.medmoe.data.UniMedCaptions)",
))

register(Source(
    name="unimed_clip_eval",
    description="UniMed-CLIP's processed zero-shot evaluation sets (one zip; MedMoE's Table 1 benchmarks)",
    access="manual",
    files=(
        RemoteFile("rsna_custom_test_set/RSNA_pneumonia_balanced_testfile.csv", note="inside the zip"),
        RemoteFile("thyroid_us/thyroid_test_fold1.csv", note="inside the zip; columns img_dir,label"),
        RemoteFile("breast_us/breast_test_fold1.csv", note="inside the zip; columns filename,label"),
        RemoteFile("meniscal_mri/meniscus_test_fold1.csv", note="inside the zip; columns img_dir,label"),
        RemoteFile("acl_mri/test_fold1.csv", note="inside the zip; columns filename,acl_label"),
        RemoteFile("organs_axial/annotations.csv", optional=True,
                   note="inside the zip, or from the open medimeta_organs source"),
        RemoteFile("organs_coronal/annotations.csv", optional=True,
                   note="inside the zip, or from the open medimeta_organs source"),
        RemoteFile("organs_sagittal/annotations.csv", optional=True,
                   note="inside the zip, or from the open medimeta_organs source"),
    ),
    homepage="https://github.com/mbzuai-oryx/UniMed-CLIP/blob/main/docs/EVALUATION_DATA.md",
    licence="see UniMed-CLIP; every set keeps its source dataset's terms",
    target="unimed_clip_eval",
    instructions="""\
1. Open UniMed-CLIP's docs/EVALUATION_DATA.md (github.com/mbzuai-oryx/UniMed-CLIP) and follow its
   MBZUAI SharePoint link to the processed evaluation datasets (one zip, a share link: it cannot be
   scripted). The archive's file name is not documented, so it is not checked here.
2. Unpack it into the folder below so that its set folders (chexpert/, rsna_custom_test_set/,
   thyroid_us/, breast_us/, meniscal_mri/, acl_mri/, organs_axial/, ...) sit directly in it.
3. CheXpert 5x200 also needs its table: copy local_data/chexpert-5x200.csv from the UniMed-CLIP
   repository into chexpert/ (or pass csv= to medmoe.papers.medmoe.evalsets.chexpert_5x200).
4. Load a set with medmoe.papers.medmoe.evalsets.build_eval_set(name, root=<the folder below>).""",
    size="21 evaluation sets",
    expect=("thyroid_us", "breast_us", "meniscal_mri", "acl_mri", "rsna_custom_test_set"),
    used_by="MedMoE chapter (zero-shot and linear-probe evaluation: medmoe.papers.medmoe.evalsets)",
))

register(Source(
    name="medimeta_organs",
    description="MedIMeta CT organ slices (LiTS; axial, coronal, sagittal; 224x224, 11 organ classes)",
    access="open",
    files=tuple(
        RemoteFile(f"organs_{view}.zip", url=_zenodo(7884735, f"organs_{view}.zip"), extract=True,
                   note="Zenodo lists an md5 for each file on the record page; it is not pinned here "
                        "(not copied from the record), so this file is not verified")
        for view in ("axial", "coronal", "sagittal")
    ),
    homepage="https://zenodo.org/records/7884735",
    licence="CC BY-SA 4.0 (MedIMeta); LiTS images CC BY-NC-SA 4.0",
    target="medimeta_organs",
    size="?",
    expect=("organs_axial/annotations.csv", "organs_coronal/annotations.csv", "organs_sagittal/annotations.csv"),
    used_by="MedMoE chapter (CT axial / coronal / sagittal zero-shot: medmoe.papers.medmoe.evalsets.medimeta_organs_*)",
))

register(Source(
    name="mrnet",
    description="Stanford MRNet knee MRI (1,130 train + 120 valid exams; ACL tear, meniscal tear, abnormal)",
    access="manual",
    files=(RemoteFile("MRNet-v1.0.zip", extract=True,
                      note="Stanford publishes no checksum; the archive unpacks to MRNet-v1.0/"),),
    homepage="https://stanfordmlgroup.github.io/competitions/mrnet/",
    licence="Stanford University School of Medicine MRNet Dataset Research Use Agreement",
    target="mrnet",
    instructions="""\
1. Open https://stanfordmlgroup.github.io/competitions/mrnet/, register and accept the research use
   agreement; Stanford then e-mails a download link for MRNet-v1.0.zip (about 5.7 GB).
2. Save the archive in the folder below with that name; fetch() unpacks it.
Note: UniMed-CLIP's acl_mri / meniscal_mri sets are RadImageNet's 2-D sagittal slices taken from these
exams; for the book's zero-shot numbers use the unimed_clip_eval source instead.""",
    size="about 5.7 GB",
    expect=("MRNet-v1.0/train", "MRNet-v1.0/valid"),
    used_by="MedMoE chapter (origin of the ACL and meniscus MRI evaluation sets)",
))

register(Source(
    name="ddti_thyroid",
    description="DDTI thyroid ultrasound images with TI-RADS XML annotations (origin of the thyroid set)",
    access="token",
    files=(RemoteFile("ddti-thyroid-ultrasound-images.zip", extract=True,
                      note="the archive Kaggle serves for this mirror"),),
    homepage="https://www.kaggle.com/datasets/dasmehdixtr/ddti-thyroid-ultrasound-images",
    licence="open access from CIM@LAB, Universidad Nacional de Colombia; no licence stated (see the Kaggle page)",
    target="ddti_thyroid",
    instructions="The original site (CIM@LAB, Universidad Nacional de Colombia) is often offline; the Kaggle "
    "mirror is the usual route.\n"
    + _kaggle_steps(ref="dasmehdixtr/ddti-thyroid-ultrasound-images",
                    filename="ddti-thyroid-ultrasound-images.zip")
    + "\nNote: UniMed-CLIP's thyroid_us set is RadImageNet's benign/malignant split of these images; for "
    "the book's zero-shot numbers use the unimed_clip_eval source instead.",
    size="?",
    kaggle_dataset="dasmehdixtr/ddti-thyroid-ultrasound-images",
    used_by="MedMoE chapter (origin of the thyroid ultrasound evaluation set)",
))

# --- Chapter 3, SegMoTE: MedSeg-HQ-like training sources and the out-of-domain sets
#     (data_scripts/build_medseg_hq.py writes them in the IMIS-Bench layout read by medmoe.papers.segmote.data)

register(Source(
    name="isic2018_task1",
    description="ISIC 2018 Task 1: dermoscopy images (JPG) with skin-lesion masks (PNG), training set",
    access="open",
    files=(
        RemoteFile("ISIC2018_Task1-2_Training_Input.zip",
                   url="https://isic-challenge-data.s3.amazonaws.com/2018/ISIC2018_Task1-2_Training_Input.zip",
                   sha256="80f98572347a2d7a376227fa9eb2e4f7459d317cb619865b8b9910c81446675f",
                   checksum_verified=False, extract=True,
                   note="2,594 images ISIC_<id>.jpg; sha256 pinned by constantinpape/torch-em (isic.py)"),
        RemoteFile("ISIC2018_Task1_Training_GroundTruth.zip",
                   url="https://isic-challenge-data.s3.amazonaws.com/2018/ISIC2018_Task1_Training_GroundTruth.zip",
                   sha256="99f8b2bb3c4d6af483362010715f7e7d5d122d9f6c02cac0e0d15bef77c7604c",
                   checksum_verified=False, extract=True,
                   note="masks ISIC_<id>_segmentation.png (0/255); sha256 pinned by constantinpape/torch-em"),
    ),
    homepage="https://challenge.isic-archive.com/data/#2018",
    licence="see the ISIC 2018 challenge data page",
    target="isic2018_task1",
    size="2,594 images",
    expect=("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    used_by="SegMoTE chapter (MedSeg-HQ source; data_scripts/build_medseg_hq.py isic2018)",
))

register(Source(
    name="sz_cxr",
    description="SZ-CXR: Shenzhen chest X-rays (NLM, 662 PNG) with lung masks (Kaggle, 566 PNG)",
    access="token",
    files=(
        RemoteFile("shcxr-lung-mask.zip", extract=True,
                   note="the archive Kaggle serves for yoctoman/shcxr-lung-mask: CHNCXR_<id>_<0|1>_mask.png "
                        "(CC BY-NC-SA 4.0; Mendeley doi 10.17632/8gf9vpkhgy.2)"),
        RemoteFile("ChinaSet_AllFiles.zip", extract=True,
                   note="NLM's Shenzhen set: CXR_png/CHNCXR_<id>_<0|1>.png, downloaded by hand (no pinned URL)"),
    ),
    homepage="https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets",
    licence="images: NLM terms (open); masks: CC BY-NC-SA 4.0",
    target="sz_cxr",
    instructions=_kaggle_steps(ref="yoctoman/shcxr-lung-mask", filename="shcxr-lung-mask.zip")
    + "\n4. The images come from the U.S. National Library of Medicine (open, no account): open the homepage"
    "\n   above, section 'Tuberculosis image data sets', Shenzhen Hospital CXR Set, and save the archive as"
    "\n   ChinaSet_AllFiles.zip in the same folder. A folder you unpacked yourself is accepted by"
    "\n   data_scripts/build_medseg_hq.py (it looks for CHNCXR_*.png and CHNCXR_*_mask.png anywhere inside).",
    size="662 CXR, 566 masks",
    kaggle_dataset="yoctoman/shcxr-lung-mask",
    used_by="SegMoTE chapter (MedSeg-HQ source; data_scripts/build_medseg_hq.py sz_cxr)",
))

register(Source(
    name="segthor",
    description="SegTHOR: thoracic CT (NIfTI) with esophagus, heart, trachea and aorta masks (SegMoTE OOD set)",
    access="manual",
    files=(RemoteFile("segthor_train.zip", extract=True,
                      note="the training archive from CodaLab, saved under this name; reported layout "
                           "train/Patient_XX/{Patient_XX.nii.gz, GT.nii.gz} (labels 1-4); no checksum published"),),
    homepage="https://competitions.codalab.org/competitions/21145",
    licence="the challenge terms (accepted when registering on CodaLab)",
    target="segthor",
    instructions="""\
1. Create a CodaLab account, open the SegTHOR competition (homepage above; the challenge site is
   https://segthor.grand-challenge.org) and register; the organisers approve the request.
2. Under Participate > Get Data, download the training data (40 CT scans with ground truth).
3. Save the archive in the folder below as segthor_train.zip (or unpack it there yourself: the
   builder looks for */GT.nii.gz next to <patient>.nii.gz anywhere inside).""",
    size="40 CT scans",
    used_by="SegMoTE chapter (out-of-domain evaluation; data_scripts/build_medseg_hq.py segthor)",
))

register(Source(
    name="totalsegmentator_mri",
    description="TotalSegmentator MRI v1.0: 616 MR subjects with per-structure NIfTI masks (SegMoTE OOD set)",
    access="open",
    files=(RemoteFile("TotalsegmentatorMRI_dataset_v100.zip",
                      url=_zenodo(11367005, "TotalsegmentatorMRI_dataset_v100.zip"), extract=True,
                      note="v1.0, Zenodo record 11367005 (record and file name as used by public download "
                           "scripts; Zenodo's md5 is not pinned here, so the file is not verified). v2.0 is "
                           "record 14710732 (TotalsegmentatorMRI_dataset_v200.zip); the concept DOI "
                           "10.5281/zenodo.11367004 resolves to the newest version"),),
    homepage="https://doi.org/10.5281/zenodo.11367004",
    licence="see the Zenodo record",
    target="totalsegmentator_mri",
    size="616 subjects",
    used_by="SegMoTE chapter (out-of-domain evaluation; data_scripts/build_medseg_hq.py totalseg_mri); layout "
            "s<id>/mri.nii.gz + s<id>/segmentations/<structure>.nii.gz",
))

# --- Chapter 4, MoME: the Medical Segmentation Decathlon CT tasks of the CLIP-Driven Universal Model collection
#     (data_scripts/prepare_universal.py arranges them, with AMOS and TotalSegmentator, for medmoe.papers.mome.data)

#: MSD CT tasks of the Universal Model (dataset ids 10_03 ... 10_10): number -> (task folder, training
#: cases, label values, md5 of the tar as pinned by MONAI's ``DecathlonDataset.md5``).
MSD_CT_TASKS: dict[str, tuple[str, str, str, str]] = {
    "03": ("Task03_Liver", "131 training CT", "1 liver, 2 liver tumour", "a90ec6c4aa7f6a3d087205e23d4e6397"),
    "06": ("Task06_Lung", "63 training CT", "1 lung tumour", "8afd997733c7fc0432f71255ba4e52dc"),
    "07": ("Task07_Pancreas", "281 training CT", "1 pancreas, 2 pancreas tumour", "4f7080cfca169fa8066d17ce6eb061e4"),
    "08": ("Task08_HepaticVessel", "303 training CT", "1 hepatic vessel, 2 tumour", "641d79e80ec66453921d997fbf12a29c"),
    "09": ("Task09_Spleen", "41 training CT", "1 spleen", "410d4a301da4e5b2f6f86ec3ddba524e"),
    "10": ("Task10_Colon", "126 training CT", "1 colon tumour", "bad7a188931dc2f6acf72b08eb6202d0"),
}

for _number, (_task, _size, _labels, _md5) in MSD_CT_TASKS.items():
    register(Source(
        name=f"msd_{_task.lower()}",
        description=f"Medical Segmentation Decathlon {_task} (imagesTr/labelsTr NIfTI; labels {_labels})",
        access="open",
        files=(RemoteFile(f"{_task}.tar", url=f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{_task}.tar",
                          md5=_md5, checksum_verified=False, extract=True,
                          note="MONAI's mirror of the official archive (monai.apps.DecathlonDataset.resource); md5 "
                               "pinned by MONAI (DecathlonDataset.md5), not by the MSD organisers. The official "
                               "route is the Google Drive folder linked from medicaldecathlon.com. The tar may hold "
                               "macOS '._*' files next to the volumes; prepare_universal.py skips them"),),
        homepage="http://medicaldecathlon.com/",
        licence="CC BY-SA 4.0",
        target="msd",
        size=_size,
        expect=(f"{_task}/imagesTr", f"{_task}/labelsTr"),
        used_by=f"MoME chapter (Universal Model dataset 10_{_number}; data_scripts/prepare_universal.py)",
    ))
del _number, _task, _size, _labels, _md5
