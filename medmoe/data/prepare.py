"""What every ``data_scripts/`` prepare program shares: idempotent, atomic output folders and finding a download.

Used by :mod:`medmoe.papers.mlmoe.prepare`, :mod:`medmoe.papers.segmote.prepare` and
:mod:`medmoe.papers.mome.prepare`:

* :func:`prepared_is_current` / :func:`build_folder_atomically`: an output folder is built in a temporary folder
  next to it and renamed into place, with a :data:`PREPARED_MARKER` recording what it was built from, so a
  re-run with the same inputs does nothing and a failed run leaves the old output as it was;
* :func:`resolve_download`: a given folder, a given archive (unpacked), or the catalogue's folder under the data
  root (checked by :func:`medmoe.data.sources.fetch`);
* :func:`describe_tree` / :func:`walk_folders`: what a download looks like, for error messages;
* :class:`ScratchDirs` and :func:`plan_outputs`: temporary folders next to the outputs, and which outputs are
  out of date.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from medmoe.data.download import ManualDownloadRequired, extract, is_archive
from medmoe.data.sources import fetch as fetch_source
from medmoe.data.sources import get_source

__all__ = ["PREPARED_MARKER", "prepared_is_current", "build_folder_atomically", "describe_tree", "walk_folders",
           "resolve_download", "ScratchDirs", "plan_outputs"]


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
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()) / "mosmed_plus"
        >>> for sub, n in (("frames", 3), ("masks", 2)):
        ...     (root / sub).mkdir(parents=True)
        ...     for i in range(n):
        ...         _ = (root / sub / f"{i}.png").write_bytes(b"")
        >>> print(describe_tree(root).replace(str(root.parent) + "/", ""))
          mosmed_plus/  (0 files)
            frames/  (3 files)
            masks/  (2 files)
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
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "QaTa-COV19" / "Train").mkdir(parents=True)
        >>> [p.relative_to(root).as_posix() for p in walk_folders(root, max_depth=1)]
        ['.', 'QaTa-COV19']
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





class ScratchDirs:
    """Temporary folders next to an output folder (same file system, so results can be moved in atomically);
    call to make one, :meth:`cleanup` removes them all."""

    def __init__(self, parent: Path, prefix: str) -> None:
        self.parent, self.prefix, self.made = Path(parent), prefix, []

    def __call__(self) -> Path:
        self.parent.mkdir(parents=True, exist_ok=True)
        self.made.append(Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.parent)))
        return self.made[-1]

    def cleanup(self) -> None:
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
