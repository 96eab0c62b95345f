"""The reproduction registry: paper table cell -> notebook + parameters -> the paper's number.

Explained in the book: *Reproduction*. The cells live in each paper's card (``medmoe/papers/<name>/card.yaml``,
under ``cells``: data, not code); :func:`load_cells` gathers them from every card.
:func:`render_report` matches them with the runs found under ``runs/`` (every ``metrics.json`` written by
:mod:`medmoe.repro.runner`) and renders the book's paper-vs-reproduced page; a cell without a matching run says
"not run". :func:`reproduce` executes the notebooks behind chosen cells.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmoe.papers import Card, cards
from medmoe.repro.runner import RunnerError, run_notebook

__all__ = ["Cell", "load_cells", "find_runs", "matching_runs", "rehearsal_gaps", "render_report", "render_timings",
           "reproduce"]

REPO_ROOT = Path(__file__).resolve().parents[2]
_FIELDS = ("id", "table", "row", "column", "paper_value", "profile", "parameters", "metric")


@dataclass(frozen=True)
class Cell:
    """One number of one paper's table, and how the book reproduces it.

    ``computed: false`` (with a ``note`` saying why) marks a cell the book cannot compute from the data it has,
    e.g. MedMoE's RSNA linear probe, whose evaluation release has no training split: the report says so
    instead of "not run", and a rehearsal does not ask for it.
    """

    id: str
    paper: str
    table: str
    row: str
    column: str
    paper_value: float | None
    notebook: str
    profile: str
    metric: str
    parameters: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    scale: float = 1.0
    quick: dict[str, Any] | None = None
    computed: bool = True

    @property
    def run_tag(self) -> str:
        """A short stable hash of the parameters, naming the run folder of :func:`reproduce`."""
        blob = json.dumps(self.parameters, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]

    def notebook_exists(self, root: Path = REPO_ROOT) -> bool:
        return (root / self.notebook).is_file()


def load_cells(papers: list[Card] | None = None) -> list[Cell]:
    """Every paper's registry cells, from the cards (``paper`` and ``notebook`` come from the card).

    Raises:
        ValueError: a cell with a missing or unknown field, or an id used twice (naming them).
    """
    cells, seen = [], set()
    for card in cards() if papers is None else papers:
        for i, raw in enumerate(card.cells):
            missing = [f for f in _FIELDS if f not in raw]
            if missing:
                raise ValueError(f"{card.name}/card.yaml: cell #{i} ({raw.get('id', '?')}) is missing {missing}")
            unknown = sorted(set(raw) - set(_FIELDS) - {"note", "scale", "quick", "computed"})
            if unknown:
                raise ValueError(f"{card.name}/card.yaml: cell {raw['id']} has unknown field(s) {unknown}")
            if raw.get("computed") is False and not raw.get("note"):
                raise ValueError(f"{card.name}/card.yaml: cell {raw['id']} says computed: false; add a note why")
            if raw["id"] in seen:
                raise ValueError(f"duplicate registry cell id {raw['id']}")
            seen.add(raw["id"])
            cells.append(Cell(**{**raw, "paper": card.paper, "notebook": card.notebook_path,
                                 "parameters": dict(raw["parameters"] or {})}))
    return cells


def find_runs(runs_root: str | Path, *, pattern: str = "**/metrics.json") -> list[dict[str, Any]]:
    """Every ``metrics.json`` under ``runs_root`` (``pattern``: ``"*/metrics.json"`` for one folder per run, no
    deeper), each with its ``run_dir`` added, oldest first.

    Raises:
        ValueError: a record that cannot be read or is not valid JSON (named).
    """
    runs = []
    for p in sorted(Path(runs_root).glob(pattern)):
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"unreadable run record {p}: {e}") from e
        rec["run_dir"] = str(p.parent)
        runs.append(rec)
    return sorted(runs, key=lambda r: r.get("started", ""))


def matching_runs(cell: Cell, runs: list[dict[str, Any]], *, quick: bool = False) -> list[dict[str, Any]]:
    """Successful runs of the cell's notebook and profile whose parameters include the cell's (with
    ``quick=True``: quick-profile runs matching the cell's ``quick`` parameters)."""
    if quick and cell.quick is None:
        return []
    profile, wanted = ("quick", cell.quick or {}) if quick else (cell.profile, cell.parameters)
    out = []
    for r in runs:
        if r.get("status") != "ok" or Path(r.get("notebook", "")).name != Path(cell.notebook).name:
            continue
        if r.get("profile") != profile:
            continue
        params = r.get("parameters", {})
        if all(params.get(k) == v for k, v in wanted.items()) and r.get("metrics", {}).get(cell.metric) is not None:
            out.append(r)
    return out


def rehearsal_gaps(record: dict[str, Any], papers: list[Card] | None = None) -> list[str]:
    """The paper cells a ``rehearsal`` run should have filled but did not: ``"<cell id>: <metric>"`` each.

    A rehearsal runs the paper profile's path with tiny sizes, so every ``paper`` cell of its notebook whose
    parameters the run shares must find its metric, as a finite number, in the run's ``metrics``. A renamed
    metric or a registry cell nobody computes then fails ``make rehearsal`` instead of reading "not run" forever.

    Example:
        >>> rec = {"notebook": "notebooks/01_mlmoe.py", "parameters": {"dataset": "qata"}, "metrics": {}}
        >>> gaps = rehearsal_gaps(rec)
        >>> len(gaps) > 0 and gaps[0].startswith("mlmoe.")
        True
    """
    params, metrics = record.get("parameters", {}), record.get("metrics", {}) or {}
    gaps = []
    for cell in load_cells(papers):
        if cell.profile != "paper" or Path(cell.notebook).name != Path(record.get("notebook", "")).name:
            continue
        if not cell.computed:
            continue
        if not all(params.get(k) == v for k, v in cell.parameters.items()):
            continue
        value = metrics.get(cell.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            gaps.append(f"{cell.id}: {cell.metric}")
    return gaps


def _fmt(x: Any) -> str:
    if x is None:
        return "not public"
    return f"{x:.2f}" if isinstance(x, (int, float)) else str(x)


def _reproduced(cell: Cell, runs: list[dict[str, Any]], *, quick: bool = False) -> tuple[str, str]:
    if not cell.notebook_exists():
        return "not run", "chapter not written yet"
    if not cell.computed:
        return "not computed", cell.note
    if quick and cell.quick is None:
        return "-", ""
    hits = matching_runs(cell, runs, quick=quick)
    if not hits:
        return "not run", f"`medmoe reproduce {cell.id}`"
    by_seed = {r.get("seed"): cell.scale * float(r["metrics"][cell.metric]) for r in hits}  # latest run per seed
    vals = list(by_seed.values())
    text = _fmt(vals[0]) if len(vals) == 1 else f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"
    device = hits[-1].get("environment", {}).get("device", "?")
    return text, f"{len(vals)} seed(s), {device}"


STATUSES = ("reproduced", "quick analogue", "not run", "not public", "not computed")


def cell_status(cell: Cell, runs: list[dict[str, Any]]) -> str:
    """One of :data:`STATUSES` for a cell, given the runs of this build (the reproduction page counts them)."""
    if not cell.computed:
        return "not computed"
    if cell.notebook_exists() and matching_runs(cell, runs):
        return "reproduced"
    if cell.paper_value is None:
        return "not public"
    if cell.notebook_exists() and cell.quick is not None and matching_runs(cell, runs, quick=True):
        return "quick analogue"
    return "not run"


def _claims_section(runs: list[dict[str, Any]], papers: list[Card] | None) -> list[str]:
    """Every chapter's claims from its latest successful quick run: the verdicts, side by side."""
    from medmoe.claims import VERDICT_RULE, claim_sentence  # local: claims needs scipy only for a verdict

    lines = ["## Claims measured in this build", "",
             "Each chapter tests its paper's mechanism against a paired control (same seeds, same data) in the quick",
             f"profile. One rule gives every verdict: {VERDICT_RULE}", "",
             "| chapter | claim and measurement | verdict |", "|---|---|---|"]
    found = False
    for card in cards() if papers is None else papers:
        quick = [r for r in runs if Path(r.get("notebook", "")).stem == card.notebook and r.get("profile") == "quick"
                 and r.get("status") == "ok"]
        for rec in (quick[-1].get("claims") or []) if quick else []:
            found = True
            lines.append(f"| {card.title} | {claim_sentence(rec).replace('|', '/')} | **{rec['verdict']}** |")
    if not found:
        lines.append("| - | no quick run with claims under `runs/` | - |")
    return lines + [""]


def render_report(*, runs_root: str | Path = "runs", papers: list[Card] | None = None) -> str:
    """The book's reproduction page as MyST Markdown: registry cells vs matching runs, then all runs."""
    cells, runs = load_cells(papers), find_runs(runs_root)
    lines = [
        "# Reproduction: paper vs this book",
        "",
        "Each row is one number from a paper's table and the number the book's code produced for it.",
        "This page is generated by `medmoe report` from the cells of every paper's card and the `metrics.json` of",
        "every run under `runs/`; a cell with no matching run says **not run**. Paper-profile cells need a GPU",
        "and the real datasets, so a CPU build of the book shows them as not run. The last column is the same",
        "measurement in the quick profile on the phantoms: a CPU-scale analogue, not the paper's number.",
        "",
    ]
    lines += ["**Status of a cell.** *reproduced*: a paper-profile run under `runs/` gives its number.",
              "*quick analogue*: only the CPU analogue ran (last column). *not run*: nothing ran for it in this",
              "build (the command is given). *not public*: the paper prints no number there. *not computed*: the",
              "data the book can get cannot give it (the note says why).", ""]
    for paper in dict.fromkeys(c.paper for c in cells):
        mine = [c for c in cells if c.paper == paper]
        counts = Counter(cell_status(c, runs) for c in mine)
        summary = ", ".join(f"{counts[k]} {k}" for k in STATUSES if counts[k])
        lines += [f"## {paper}", "", f"{len(mine)} cells: {summary}.", "",
                  "| table cell | paper | reproduced (paper profile) | quick profile, phantoms |", "|---|---|---|---|"]
        for c in mine:
            value, how = _reproduced(c, runs)
            qvalue, qhow = _reproduced(c, runs, quick=True)
            quick_text = qvalue if qvalue in ("-", "not run") else f"{qvalue} ({qhow})"
            lines.append(
                f"| {c.table}, {c.row}: {c.column}<br>`{c.id}` | {_fmt(c.paper_value)} | {value}<br>{how} "
                f"| {quick_text} |"
            )
        lines.append("")
    lines += _claims_section(runs, papers)
    lines += ["## Runs in this build", "",
              "Every run found under `runs/`, with its profile, seed, wall time and device.", "",
              "| notebook | profile | seed | overrides | status | wall time (s) | device | metrics |",
              "|---|---|---|---|---|---|---|---|"]
    if not runs:
        lines.append("| (none) | | | | | | | |")
    for r in runs:
        metrics = r.get("metrics", {})
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in list(metrics.items())[:4] if isinstance(v, (int, float, str)))
        overrides = ", ".join(f"{k}={v}" for k, v in r.get("overrides", {}).items()) or "-"
        lines.append(
            f"| `{Path(r.get('notebook', '?')).name}` | {r.get('profile')} | {r.get('seed')} | {overrides} | "
            f"{r.get('status')} | {r.get('wall_time_s', '?')} | {r.get('environment', {}).get('device', '?')} "
            f"| {shown} |"
        )
    return "\n".join(lines) + "\n"


def render_timings(*, runs_root: str | Path = "runs", papers: list[Card] | None = None) -> str:
    """The intro's "hardware and time per chapter" table: the measured wall time of each chapter's latest
    successful ``quick`` run under ``runs_root`` (or "not run"), beside the hardware each profile needs."""
    runs = find_runs(runs_root)
    lines = ["| chapter | quick profile: measured time | measured on | paper profile needs | data |",
             "|---|---|---|---|---|"]
    for card in cards() if papers is None else papers:
        quick = [r for r in runs if Path(r.get("notebook", "")).stem == card.notebook and r.get("profile") == "quick"
                 and r.get("status") == "ok"]
        if quick:
            r = quick[-1]
            took = f"{r['wall_time_s'] / 60:.1f} min"
            env = r.get("environment", {})
            where = f"{env.get('device', '?')}, {env.get('cpu_count', '?')} cores"
        else:
            took, where = "not run", "-"
        lines.append(
            f"| {card.title} | {took} | {where} | {card.hardware.get('paper', '?')} | {', '.join(card.datasets)} |"
        )
    return "\n".join(lines) + "\n"


def reproduce(selection: list[str], *, runs_root: str | Path = "runs") -> list[dict[str, Any]]:
    """Run the notebooks behind the chosen cells (ids, or paper names for all of a paper's cells).

    Cells sharing a notebook, profile and parameters are run once. Unknown ids raise ``ValueError``.
    """
    cells = load_cells()
    chosen = [c for c in cells if c.id in selection or c.paper in selection]
    known = {c.id for c in cells} | {c.paper for c in cells}
    unknown = sorted(set(selection) - known)
    if unknown:
        raise ValueError(f"unknown registry cell(s) or paper(s) {unknown}; known: {sorted(known)}")
    done: dict[tuple, dict[str, Any]] = {}
    out = []
    for c in chosen:
        key = (c.notebook, c.profile, c.run_tag)
        if not c.notebook_exists():
            raise RunnerError(f"{c.id}: notebook {c.notebook} does not exist yet")
        if key not in done:
            run_dir = Path(runs_root) / c.profile / f"{Path(c.notebook).stem}-{c.run_tag}"
            done[key] = run_notebook(
                REPO_ROOT / c.notebook, profile=c.profile, parameters=c.parameters, out_dir=run_dir
            )
        rec = done[key]
        out.append({"cell": c.id, "status": rec["status"], "run_dir": rec["parameters"]["run_dir"]})
    return out
