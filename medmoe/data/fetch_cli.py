"""Fetch the real datasets and checkpoints the book uses, verified, into one data root.

Usage::

    python data_scripts/fetch.py --list                      # what exists, and how it is accessed
    python data_scripts/fetch.py --show qata_cov19           # the manual route, in full
    python data_scripts/fetch.py sam_vit_b chaos --root data # download (open) or check (manual)

Exit status: 0 all ready; 1 a download or checksum failed; 2 bad usage or unknown name;
3 something must be downloaded by hand first (the message says what and where).
Everything here is a thin layer over :mod:`medmoe.data.sources` and :mod:`medmoe.data.download`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medmoe.data.download import ChecksumError, DownloadError, ManualDownloadRequired
from medmoe.data.sources import (
    EXIT_FAILED,
    EXIT_MANUAL,
    EXIT_OK,
    EXIT_USAGE,
    SOURCES,
    Source,
    access_table,
    default_data_root,
    fetch,
    get_source,
)

DEFAULT_ROOT = default_data_root()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fetch.py",
        description="Download (open access) or check (token / manual access) the book's datasets and weights.",
        epilog="Exit status: 0 ready, 1 download/checksum failure, 2 usage, 3 manual download needed.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="source names, see --list")
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"data root folder (default: {DEFAULT_ROOT})")
    parser.add_argument("--list", action="store_true", help="list the known sources and exit")
    parser.add_argument("--markdown", action="store_true", help="with --list: print a Markdown table")
    parser.add_argument("--show", action="store_true", help="print each NAME's details and manual route")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-verify", action="store_true", help="skip checksums (only to get past a wrong pin)")
    parser.add_argument("--no-kaggle", action="store_true", help="never call the kaggle command")
    return parser


def list_sources(*, markdown: bool = False) -> str:
    """One line per source: name, access, size, description (or the Markdown table)."""
    if markdown:
        return access_table()
    width = max(len(name) for name in SOURCES)
    lines = [f"{'name':<{width}}  {'access':<6}  {'size':<20}  description"]
    for s in SOURCES.values():
        lines.append(f"{s.name:<{width}}  {s.access:<6}  {s.size or '?':<20}  {s.description}")
    return "\n".join(lines)


def describe(source: Source, root: Path) -> str:
    """Everything a person needs to get ``source`` by hand."""
    lines = [
        f"{source.name}: {source.description}",
        f"  access:   {source.access}",
        f"  size:     {source.size or '?'}",
        f"  homepage: {source.homepage}",
        f"  licence:  {source.licence}",
        f"  folder:   {root / source.target}",
    ]
    if source.used_by:
        lines.append(f"  used by:  {source.used_by}")
    lines.append("  files:")
    for f in source.files:
        lines.append(f"    {f.filename}{'  (optional)' if f.optional else ''}")
        lines.append(f"      {f.checksum_text}")
        if f.url:
            lines.append(f"      {f.url}")
        if f.note:
            lines.append(f"      {f.note}")
    if source.instructions:
        lines.append("  how to get it by hand:")
        lines += ["    " + line for line in source.instructions.splitlines()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_sources(markdown=args.markdown))
        return EXIT_OK
    if not args.names:
        print("nothing to do: give one or more NAMEs, or --list\n\n" + list_sources(), file=sys.stderr)
        return EXIT_USAGE

    try:  # resolve every name before downloading anything
        sources = [get_source(name) for name in args.names]
    except KeyError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE

    root = Path(args.root).expanduser()
    if args.show:
        print("\n\n".join(describe(s, root) for s in sources))
        return EXIT_OK

    status = EXIT_OK
    for source in sources:
        try:
            path = fetch(
                source,
                root,
                progress=not args.quiet,
                verify=not args.no_verify,
                use_kaggle_cli=not args.no_kaggle,
            )
        except ManualDownloadRequired as err:
            print(f"\n[{source.name}] manual download needed\n{err}", file=sys.stderr)
            status = status or EXIT_MANUAL
        except ChecksumError as err:
            print(f"\n[{source.name}] checksum error\n{err}", file=sys.stderr)
            status = status or EXIT_FAILED
        except (DownloadError, OSError, ValueError) as err:
            print(f"\n[{source.name}] failed: {err}", file=sys.stderr)
            status = status or EXIT_FAILED
        else:
            print(f"[{source.name}] ready: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
