"""The ``medmoe`` command: ``run`` a chapter notebook with a profile, ``prepare`` notebooks for nbval, list the
``chapters``, ``report`` the reproduction page, ``reproduce`` registry cells, print the ``env`` record, ``sync-links``
(regenerate the notebooks' Colab badges and install cells from ``book/_config.yml``, :mod:`medmoe.repro.links`).

Explained in the book: *Environment and commands*. The work is done by :mod:`medmoe.repro.runner` and
:mod:`medmoe.repro.registry`; this module only parses arguments (it imports both, neither imports it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from medmoe.env import environment
from medmoe.papers import cards
from medmoe.repro.links import link_problems, sync_links
from medmoe.repro.registry import rehearsal_gaps, render_report, render_timings, reproduce
from medmoe.repro.runner import METRICS_FILE, RunnerError, prepare_notebook, run_notebook

__all__ = ["build_parser", "main"]


def _parse_value(text: str) -> Any:
    """CLI values are YAML scalars: ``4`` -> int, ``0.5`` -> float, ``true`` -> bool, ``[1, 2]`` -> list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = {}
    for name, value in args.parameter or []:
        overrides[name] = _parse_value(value)
    rec = run_notebook(args.notebook, profile=args.profile, parameters=overrides, out_dir=args.out,
                       timeout=args.timeout, log_output=args.log_output, gpus=args.gpus, cpu=args.cpu,
                       skip_unchanged=args.skip_unchanged, depends_on=args.depends_on or ())
    if rec.get("skipped"):  # .ci/run counts these lines: a second `make book` must execute no notebook
        print(f"skipped {args.notebook}: inputs unchanged since its run in {rec['parameters']['run_dir']} "
              f"(inputs.sha256 {rec['inputs_sha256'][:12]})")
        return 0
    shown = {k: rec[k] for k in ("notebook", "profile", "seed", "status", "wall_time_s", "metrics")}
    if args.profile == "rehearsal":  # the paper path must fill every paper cell it shares parameters with
        gaps = rehearsal_gaps(rec)
        if gaps:
            raise RunnerError(f"the rehearsal of {args.notebook} ran but did not report {len(gaps)} paper cell(s) "
                              "as finite numbers:\n  " + "\n  ".join(gaps))
    if args.max_seconds is not None and rec["wall_time_s"] > args.max_seconds:
        raise RunnerError(f"{args.notebook} --profile {args.profile} took {rec['wall_time_s']} s, over the "
                          f"--max-seconds {args.max_seconds} budget")
    print(json.dumps(shown, indent=2, default=str))
    print(f"wrote {Path(rec['parameters']['run_dir']) / METRICS_FILE}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    overrides = {name: _parse_value(value) for name, value in args.parameter or []}
    for nb in args.notebooks:
        out = prepare_notebook(
            nb, Path(args.out_dir) / (Path(nb).stem + ".ipynb"), profile=args.profile, parameters=overrides
        )
        print(f"wrote {out}")
    return 0


def _cmd_chapters(args: argparse.Namespace) -> int:
    for card in cards():
        if args.with_profile and args.with_profile not in card.profiles:
            continue
        if args.stems:
            print(card.notebook)
        elif args.paths:
            print(card.notebook_path)
        else:
            print(f"{card.notebook_path}\t{card.paper}\t{card.title}\t{sorted(card.profiles)}")
    return 0


def _cmd_sync_links(args: argparse.Namespace) -> int:
    try:
        if args.check:
            problems = link_problems(args.root)
            for p in problems:
                print(p)
            return 1 if problems else 0
        for path in sync_links(args.root, rev=args.rev):
            print(f"updated {path}")
    except ValueError as e:
        raise RunnerError(str(e)) from None
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    print(json.dumps(environment(), indent=2))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduction.md").write_text(render_report(runs_root=Path(args.runs)))
    (out / "timings.md").write_text(render_timings(runs_root=Path(args.runs)))
    (out / "environment.md").write_text("```json\n" + json.dumps(environment(), indent=2) + "\n```\n")
    print(f"wrote reproduction.md, timings.md and environment.md to {out}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    for rec in reproduce(args.cells, runs_root=Path(args.runs)):
        print(f"{rec['cell']}: {rec['status']} ({rec['run_dir']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medmoe", description="MedMoE Book: run chapter notebooks and reproduce paper tables."
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute a notebook with a profile through papermill")
    r.add_argument("notebook", help="e.g. notebooks/00_moe_primer.py")
    r.add_argument("--profile", default="quick", help="quick | smoke | paper | rehearsal (see the paper's card.yaml)")
    r.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="override a parameter (value parsed as YAML); repeatable")
    r.add_argument("--out", help="output folder (default runs/<profile>/<notebook>)")
    r.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    r.add_argument("--log-output", action="store_true", help="stream the notebook's output")
    r.add_argument("--gpus", type=int, default=1,
                   help="data-parallel processes (accelerate launch, DDP); rank 0 writes the notebook and metrics")
    r.add_argument("--cpu", action="store_true", help="with --gpus N: run the N processes on the CPU (gloo)")
    r.add_argument("--max-seconds", type=float, default=None, help="fail if the run takes longer (CI budgets)")
    r.add_argument("--skip-unchanged", action="store_true",
                   help="reuse the last successful run in --out if its inputs.sha256 (notebook, profile, parameters, "
                        "medmoe sources, requirements.txt) is unchanged; make book passes it unless FORCE=1")
    r.add_argument("--depends-on", action="append", metavar="FILE",
                   help="a file the notebook reads whose content also decides --skip-unchanged (repeatable); the "
                        "comparison chapter depends on the chapters' metrics.json")
    r.set_defaults(func=_cmd_run)
    pr = sub.add_parser("prepare", help="write notebooks with a profile injected, not executed (for nbval)")
    pr.add_argument("notebooks", nargs="+")
    pr.add_argument("--profile", default="smoke")
    pr.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"))
    pr.add_argument("--out-dir", required=True)
    pr.set_defaults(func=_cmd_prepare)
    ls = sub.add_parser("chapters", help="list the chapters' notebooks, discovered from medmoe/papers/*/card.yaml")
    only = ls.add_mutually_exclusive_group()
    only.add_argument("--stems", action="store_true", help="print only the notebook stems (for shell loops)")
    only.add_argument("--paths", action="store_true", help="print only the notebook paths (for the Makefile)")
    ls.add_argument("--with-profile", metavar="NAME", help="only the chapters whose card defines this profile")
    ls.set_defaults(func=_cmd_chapters)
    sl = sub.add_parser("sync-links", help="regenerate every notebook's Colab badge and install cell from "
                        "book/_config.yml (repository.url, repository.branch); make sync runs it")
    sl.add_argument("--rev", help="set repository.branch to this branch, tag or commit first")
    sl.add_argument("--root", default=".", help="the repository's root (default: here)")
    sl.add_argument("--check", action="store_true", help="change nothing; list the links that differ (exit 1)")
    sl.set_defaults(func=_cmd_sync_links)
    e = sub.add_parser("env", help="print the environment record")
    e.set_defaults(func=_cmd_env)
    rep = sub.add_parser("report", help="render the reproduction page and the timing table from the registry and runs/")
    rep.add_argument("--runs", default="runs")
    rep.add_argument("--out-dir", required=True, help="folder for reproduction.md and timings.md (book/chapters)")
    rep.set_defaults(func=_cmd_report)
    rp = sub.add_parser("reproduce", help="run the notebooks behind registry cells")
    rp.add_argument("cells", nargs="+", help="cell ids (see `medmoe report`) or paper names")
    rp.add_argument("--runs", default="runs")
    rp.set_defaults(func=_cmd_reproduce)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RunnerError as e:
        print(f"medmoe: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
