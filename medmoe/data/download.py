"""The one verified downloader every data script and notebook uses.

Three promises, kept by every function here:

* **Verified.** A file is checked against its sha256 (or md5, where upstream only publishes that)
  before anyone sees it. A mismatch raises :class:`ChecksumError` naming the file and both digests.
* **Atomic.** Bytes go to ``<dest>.part`` first. ``dest`` itself appears only through one
  :func:`os.replace`, after the check passed, so a crash, a Ctrl-C or a bad checksum never leaves a
  half-written file where a loader would pick it up. :func:`extract` does the same for folders.
* **Resumable.** A later call continues an interrupted ``.part`` with an HTTP ``Range`` request;
  a server that ignores ``Range`` (answers 200) makes us restart from byte zero, cleanly.

Example (a file placed on disk stands in for a server; ``http(s)://`` works the same way)::

    >>> import tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> (tmp / "hello.txt").write_bytes(b"hello")
    5
    >>> digest = sha256sum(tmp / "hello.txt")
    >>> out = download((tmp / "hello.txt").as_uri(), tmp / "copy.txt", sha256=digest, progress=False)
    >>> out.read_bytes()
    b'hello'

Only the standard library and ``tqdm`` are used, so this module works in a bare Colab runtime.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from tqdm import tqdm

__all__ = [
    "DownloadError",
    "ChecksumError",
    "ManualDownloadRequired",
    "UnsafeArchiveError",
    "download",
    "extract",
    "sha256sum",
    "md5sum",
    "hash_file",
    "verify_file",
    "part_path",
    "place_file",
]

#: Bytes read per step when streaming (1 MiB): large enough to be fast, small enough for progress.
CHUNK_SIZE = 1 << 20

#: Sent with every HTTP request; some hosts refuse Python's default agent string.
USER_AGENT = "medmoe-downloader/0.1 (Python urllib)"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class DownloadError(RuntimeError):
    """A file could not be fetched: network failure, HTTP error, truncated transfer.

    ``url`` and ``status`` (the HTTP status, or ``None``) are kept as attributes for callers.
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class ChecksumError(DownloadError):
    """A file's digest is not the expected one. The message names the file and both digests."""

    def __init__(
        self,
        message: str,
        *,
        path: Path,
        algorithm: str,
        expected: str,
        actual: str,
        url: str | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.path = path
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


class ManualDownloadRequired(DownloadError):
    """The data needs a login, a token or a signed agreement, and the expected files are not there.

    The message says what to download, from where, with which account, and where to put it.
    ``missing`` holds the exact paths that were looked for.
    """

    def __init__(self, message: str, *, source: str, missing: tuple[Path, ...] = ()) -> None:
        super().__init__(message)
        self.source = source
        self.missing = missing


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder (``../x``, ``/etc/x``, links)."""


# --------------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------------


def hash_file(path: str | os.PathLike[str], *, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks so that 25 GB archives need no memory.

    Example::

        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> hash_file(p, algorithm="md5")
        '900150983cd24fb0d6963f7d28e17f72'
    """
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def sha256sum(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, streamed.

    Example::

        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> sha256sum(p)[:16]
        'ba7816bf8f01cfea'
    """
    return hash_file(path, algorithm="sha256")


def md5sum(path: str | os.PathLike[str]) -> str:
    """MD5 hex digest of a file, streamed. Only for sources that publish nothing better (Zenodo)."""
    return hash_file(path, algorithm="md5")


def _expected_digests(sha256: str | None, md5: str | None) -> list[tuple[str, str]]:
    """``[(algorithm, lower-case hex)]`` for the digests given, sha256 first; checks their length."""
    pairs: list[tuple[str, str]] = []
    for algorithm, value, length in (("sha256", sha256, 64), ("md5", md5, 32)):
        if value is None:
            continue
        value = value.strip().lower()
        if len(value) != length or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"{algorithm} must be {length} hex characters, got {value!r}")
        pairs.append((algorithm, value))
    return pairs


def verify_file(
    path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    note: str | None = None,
    url: str | None = None,
    shown_as: str | os.PathLike[str] | None = None,
) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the given digest(s); no digest: no check.

    ``note`` is appended to the error message, e.g. to say that the expected value was pinned by a
    third party and may itself be wrong. ``shown_as`` names the file in the message instead of
    ``path`` (a download names its destination, not its ``.part`` file).

    Example::

        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> verify_file(p, md5="900150983cd24fb0d6963f7d28e17f72")   # passes silently
    """
    path = Path(path)
    for algorithm, expected in _expected_digests(sha256, md5):
        actual = hash_file(path, algorithm=algorithm)
        if actual != expected:
            message = (
                f"{algorithm} mismatch for {shown_as or path}:\n"
                f"  expected {expected}\n"
                f"  actual   {actual}"
            )
            if url:
                message += f"\n  (downloaded from {url})"
            if note:
                message += f"\n{note}"
            raise ChecksumError(
                message, path=path, algorithm=algorithm, expected=expected, actual=actual, url=url
            )


# --------------------------------------------------------------------------------------------------
# download()
# --------------------------------------------------------------------------------------------------


def part_path(dest: str | os.PathLike[str]) -> Path:
    """Where :func:`download` keeps the unfinished bytes of ``dest``: ``dest`` + ``.part``."""
    dest = Path(dest)
    return dest.with_suffix(dest.suffix + ".part")


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    resume: bool = True,
    overwrite: bool = False,
    timeout: float = 60,
    progress: bool = True,
    headers: Mapping[str, str] | None = None,
    checksum_note: str | None = None,
) -> Path:
    """Fetch ``url`` to ``dest`` (``http://``, ``https://`` or ``file://``), verify it, return ``dest``.

    Args:
        url: where the file lives. ``file://`` URLs are copied, and verified like a download.
        dest: final path. Its parent folders are created.
        sha256: expected SHA-256 hex digest; ``None`` if nobody publishes one (then nothing is checked).
        md5: expected MD5 hex digest, for sources that only publish MD5 (Zenodo records).
        resume: continue an existing ``dest.part`` with a ``Range`` request. ``False`` starts over.
        overwrite: replace an existing ``dest`` whose checksum does not match (or that cannot be
            checked) instead of raising / returning it.
        timeout: seconds to wait for the server on each network operation.
        progress: show a ``tqdm`` progress bar.
        headers: extra HTTP headers, e.g. ``{"Authorization": "Bearer ..."}``.
        checksum_note: extra sentence for a :class:`ChecksumError`, e.g. where the pin came from.

    Returns:
        ``Path(dest)``.

    Raises:
        ChecksumError: the downloaded (or already present) file does not match; the ``.part`` file
            is deleted so the next call starts clean, and nothing is left at ``dest``.
        DownloadError: HTTP error (404, 401/403: needs a login), network failure, truncated transfer
            (the bytes so far stay in ``dest.part``; call again to resume).

    If ``dest`` already exists it is returned without any network access when it matches the
    checksum (or when no checksum is known); a mismatching ``dest`` raises unless ``overwrite``.

    Example::

        path = download(
            "https://zenodo.org/records/7960856/files/ISLES-2022.zip?download=1",
            "data/isles22/ISLES-2022.zip",
            sha256="f374895e383f725ddd280db41ef36ed975277c33de0e587a631ca7ea7ad45d6b",
        )
    """
    dest = Path(dest)
    expected = _expected_digests(sha256, md5)  # validates the strings before any network access

    if dest.exists():
        if not dest.is_file():
            raise DownloadError(f"cannot download {url} to {dest}: it exists and is not a file", url=url)
        if expected:
            try:
                verify_file(dest, sha256=sha256, md5=md5, note=checksum_note, url=url)
                return dest  # already there and correct: no network access at all
            except ChecksumError as err:
                if not overwrite:
                    raise ChecksumError(
                        f"{err}\n{dest} already exists but does not match; not overwriting it. "
                        "Delete it, or pass overwrite=True to download it again.",
                        path=err.path,
                        algorithm=err.algorithm,
                        expected=err.expected,
                        actual=err.actual,
                        url=url,
                    ) from None
        elif not overwrite:
            return dest  # nothing to compare against: trust what is there
        # overwrite: download again; the old file stays until os.replace swaps in the new one

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    if part.exists() and not resume:
        part.unlink()

    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "file":
        _copy_local(url, part, progress=progress)
    elif scheme in ("http", "https"):
        _fetch_http(url, part, timeout=timeout, progress=progress, headers=headers)
    else:
        raise DownloadError(f"unsupported URL scheme {scheme!r} in {url} (use http, https or file)", url=url)

    try:
        verify_file(part, sha256=sha256, md5=md5, note=checksum_note, url=url, shown_as=dest)
    except ChecksumError as err:
        part.unlink(missing_ok=True)  # corrupt bytes are useless for resuming too
        raise ChecksumError(
            f"{err}\nThe downloaded bytes were deleted; nothing was written to {dest}.",
            path=dest, algorithm=err.algorithm, expected=err.expected, actual=err.actual, url=url,
        ) from None
    os.replace(part, dest)  # the only moment `dest` comes into being
    return dest


def _progress_bar(*, total: int | None, initial: int, name: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not enabled,
        leave=False,
    )


def _copy_local(url: str, part: Path, *, progress: bool) -> None:
    """Copy the file behind a ``file://`` URL into ``part``, continuing a partial copy."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.netloc not in ("", "localhost"):
        raise DownloadError(f"file:// URL with a remote host is not supported: {url}", url=url)
    source = Path(urllib.request.url2pathname(parsed.path))
    if not source.is_file():
        raise DownloadError(f"{url}: no such file {source}", url=url)
    total = source.stat().st_size
    start = part.stat().st_size if part.exists() else 0
    if start > total:  # the partial copy is of some other file
        part.unlink()
        start = 0
    with open(source, "rb") as src, open(part, "ab" if start else "wb") as out:
        src.seek(start)
        name = part.name[: -len(".part")]
        with _progress_bar(total=total, initial=start, name=name, enabled=progress) as bar:
            while chunk := src.read(CHUNK_SIZE):
                out.write(chunk)
                bar.update(len(chunk))


def _http_error_message(url: str, status: int, reason: str) -> str:
    if status in (401, 403):
        return (
            f"HTTP {status} ({reason}) for {url}: this resource needs a login, an access token or an "
            "accepted data-use agreement. Download it by hand from the dataset's homepage while "
            "logged in (python data_scripts/fetch.py --show NAME prints the manual route), then "
            "place the file where fetch() expects it."
        )
    if status == 404:
        return (
            f"HTTP 404 (not found) for {url}: the file has moved or was removed upstream. "
            "Check the dataset's homepage for the current link."
        )
    if status >= 500:
        return f"HTTP {status} ({reason}) for {url}: the server has a problem; try again later"
    return f"HTTP {status} ({reason}) for {url}"


def _open(url: str, *, headers: dict[str, str], timeout: float) -> http.client.HTTPResponse:
    """``urlopen`` with our errors: HTTP errors become :class:`DownloadError` (416 is returned)."""
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:
            return err  # type: ignore[return-value]  # 416 "Range Not Satisfiable": the caller decides
        err.close()
        message = _http_error_message(url, err.code, err.reason)
        raise DownloadError(message, url=url, status=err.code) from None
    except urllib.error.URLError as err:
        raise DownloadError(
            f"could not reach {url}: {err.reason} (offline, or the host is down?)", url=url
        ) from None
    except (TimeoutError, socket.timeout):
        raise DownloadError(f"timed out connecting to {url}", url=url) from None


def _total_from_content_range(value: str | None) -> int | None:
    """The total size in ``Content-Range: bytes a-b/total`` (or ``bytes */total``), if stated."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _start_from_content_range(value: str | None) -> int | None:
    """The first byte ``a`` in ``Content-Range: bytes a-b/total``, if stated."""
    if not value:
        return None
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _fetch_http(
    url: str,
    part: Path,
    *,
    timeout: float,
    progress: bool,
    headers: Mapping[str, str] | None,
) -> None:
    """Download ``url`` into ``part``, resuming from its current size when the server allows.

    At most two requests: a ``Range`` request for the missing tail, and, only if the server's answer
    cannot be appended (416, or a 206 for some other range), one plain request from byte zero.
    """
    for _attempt in range(2):
        request_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        start = part.stat().st_size if part.exists() else 0
        if start:
            request_headers["Range"] = f"bytes={start}-"

        response = _open(url, headers=request_headers, timeout=timeout)
        with response:
            status = response.status
            content_range = response.headers.get("Content-Range")
            if status == 416 and start:
                # We asked for bytes past the end. If the server says the file is exactly as long
                # as our part, the part is complete (an earlier run stopped just before the rename).
                if _total_from_content_range(content_range) == start:
                    return
                part.unlink()  # the part is longer than the file: it is junk, start over
                continue
            if status == 416:
                raise DownloadError(f"HTTP 416 (range not satisfiable) for {url}", url=url, status=416)
            if status == 206 and start:
                if _start_from_content_range(content_range) not in (start, None):
                    part.unlink()  # the server sent some other range; do not splice it in
                    continue
                mode = "ab"  # 206: the server continues where we stopped
                total = _total_from_content_range(content_range)
                remaining = None if total is None else total - start
            else:
                mode, start = "wb", 0  # 200: the server sends the whole file again, so start over
                length = response.headers.get("Content-Length")
                total = remaining = int(length) if length and length.isdigit() else None
            received = _stream_to_file(
                response, part, mode=mode, url=url, start=start, total=total, progress=progress
            )

        if remaining is not None and received != remaining:
            raise DownloadError(
                f"download of {url} was cut short: got {start + received} of {total} bytes; "
                f"the bytes so far are kept in {part}, call again to resume",
                url=url,
            )
        return
    raise DownloadError(f"could not resume {url}: the server's range answers do not fit {part}", url=url)


def _stream_to_file(
    response: http.client.HTTPResponse,
    part: Path,
    *,
    mode: str,
    url: str,
    start: int,
    total: int | None,
    progress: bool,
) -> int:
    """Copy the response body into ``part`` (``"wb"`` or ``"ab"``); return the bytes received.

    A lost connection raises :class:`DownloadError`; the bytes written so far stay in ``part``.
    """
    received = 0
    with open(part, mode) as out, _progress_bar(
        total=total, initial=start, name=part.name[: -len(".part")], enabled=progress
    ) as bar:
        while True:
            try:
                chunk = response.read(CHUNK_SIZE)
            except (OSError, http.client.HTTPException) as err:  # timeouts and resets are OSErrors
                out.flush()
                raise DownloadError(
                    f"connection lost while downloading {url} after {start + received} bytes "
                    f"({err.__class__.__name__}: {err}); the bytes so far are kept in {part}, "
                    "call again to resume",
                    url=url,
                ) from None
            if not chunk:
                return received
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))


# --------------------------------------------------------------------------------------------------
# extract()
# --------------------------------------------------------------------------------------------------

_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`extract` knows ``path``'s format, judged by its name."""
    return str(path).lower().endswith(_ARCHIVE_SUFFIXES)


def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    """Refuse absolute names, drive letters and ``..``; return the name as a relative path."""
    unified = name.replace("\\", "/")
    pure = PurePosixPath(unified)
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise UnsafeArchiveError(f"refusing to extract {archive}: member {name!r} has an absolute path")
    if ".." in pure.parts:
        raise UnsafeArchiveError(
            f"refusing to extract {archive}: member {name!r} would be written outside the target "
            "folder (path traversal with '..')"
        )
    return pure


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = _check_member_name(member.name, archive)
    if member.issym():
        # A symlink's target is relative to the folder holding the link.
        target = member.linkname.replace("\\", "/")
        inside = PurePosixPath(*name.parent.parts, *PurePosixPath(target).parts)
        depth = 0
        for part in inside.parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                break
        if target.startswith("/") or depth < 0:
            raise UnsafeArchiveError(
                f"refusing to extract {archive}: symlink {member.name!r} -> {member.linkname!r} "
                "points outside the target folder"
            )
    elif member.islnk():
        _check_member_name(member.linkname, archive)  # hard-link targets are archive-relative
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(
            f"refusing to extract {archive}: member {member.name!r} is a device or FIFO"
        )


def extract(
    archive: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Unpack a ``.zip`` / ``.tar`` / ``.tar.gz`` (``.tgz``, ``.tar.bz2``, ``.tar.xz``) into ``dest_dir``.

    Every member name is checked first: absolute paths, ``..`` and links leaving the folder raise
    :class:`UnsafeArchiveError` before a single byte is written.

    Atomicity: everything is unpacked into a hidden temporary folder on the same disk first. If
    ``dest_dir`` does not exist, that folder becomes ``dest_dir`` with one :func:`os.replace`. If it
    exists (e.g. it holds the archive itself), each top-level entry of the archive is moved in with
    one :func:`os.replace` after *all* were unpacked, so a failure midway leaves nothing behind.
    An entry that already exists raises :class:`FileExistsError` unless ``overwrite``.

    Example::

        >>> import tempfile, zipfile, pathlib
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> with zipfile.ZipFile(tmp / "a.zip", "w") as z:
        ...     z.writestr("ds/readme.txt", "hi")
        >>> out = extract(tmp / "a.zip", tmp / "out")
        >>> (out / "ds" / "readme.txt").read_text()
        'hi'
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    if not is_archive(archive):
        raise ValueError(f"unknown archive format for {archive}; expected one of {', '.join(_ARCHIVE_SUFFIXES)}")
    if dest_dir.exists() and not dest_dir.is_dir():
        raise NotADirectoryError(f"cannot extract {archive} into {dest_dir}: it is not a folder")

    existing = dest_dir.is_dir()
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_parent = dest_dir if existing else dest_dir.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.extract-", dir=staging_parent))
    try:
        _unpack(archive, staging)
        if not existing:
            os.replace(staging, dest_dir)
            return dest_dir
        entries = sorted(staging.iterdir())
        clashes = [dest_dir / e.name for e in entries if (dest_dir / e.name).exists()]
        if clashes and not overwrite:
            raise FileExistsError(
                f"cannot extract {archive} into {dest_dir}: {', '.join(map(str, clashes))} already "
                "exist(s). Delete them, or pass overwrite=True."
            )
        for entry in entries:
            target = dest_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
        return dest_dir
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _unpack(archive: Path, into: Path) -> None:
    """Check all member names, then unpack ``archive`` into the (empty) folder ``into``."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member_name(name, archive)
            zf.extractall(into)
        return
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for member in members:
            _check_tar_member(member, archive)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and recent 3.8-3.11 patch releases
            tf.extractall(into, members=members, filter="data")
        else:  # pragma: no cover - old interpreters; our own checks above already ran
            tf.extractall(into, members=members)


def place_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, link: bool = False) -> None:
    """Put ``src`` at ``dst`` (parent folders created): a hard link when ``link`` and the file system allows it
    (same disk), else a copy. Used by the data-preparation scripts to lay out downloaded files."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)
