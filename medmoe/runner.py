"""``medmoe run``: execute a chapter notebook with a named profile, record what happened.

Explained in the book: *Environment and commands*. The runner is how the book, CI and a researcher
re-running a paper's table all execute notebooks:

* a notebook is a jupytext percent file (``notebooks/NN_name.py``) with one cell tagged ``parameters``;
* ``notebooks/profiles.yaml`` holds, per notebook, the parameter values of each profile (``quick``: CPU +
  phantoms, ``smoke``: the tiny nbval run, ``paper``: GPU + real data + the paper's hyperparameters);
* the runner checks every parameter name against the parameters cell, injects the values with papermill
  and writes ``<out>/notebook.ipynb`` and ``<out>/metrics.json`` (parameters, metrics the notebook saved with
  :func:`save_results`, wall time, peak memory, package versions, device, git commit).

It fails loudly: an unknown profile or parameter, a missing parameters cell or a failing cell is an error
(exit status 1), never a skip.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from medmoe.env import environment, peak_memory_mb

__all__ = [
    "RunnerError",
    "notebook_parameters",
    "load_profiles",
    "resolve_parameters",
    "run_notebook",
    "prepare_notebook",
    "fingerprint",
    "save_results",
    "main",
]

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.json"
RESERVED = ("profile", "run_dir")  # injected by the runner into every notebook


class RunnerError(RuntimeError):
    """A notebook could not be run as asked (bad profile, parameter, notebook or a failing cell)."""


def _read_notebook(path: Path):
    import jupytext

    if not path.is_file():
        raise RunnerError(f"notebook not found: {path}")
    if path.suffix not in (".py", ".ipynb", ".md"):
        raise RunnerError(f"{path}: expected a jupytext .py/.md notebook or an .ipynb")
    return jupytext.read(path)


def notebook_parameters(nb) -> dict[str, Any]:
    """Names and default values assigned in the cell tagged ``parameters``.

    Values that are not Python literals are reported as the source text of the expression.
    """
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        raise RunnerError("the notebook has no cell tagged 'parameters' (add `# %% tags=[\"parameters\"]`)")
    if len(cells) > 1:
        raise RunnerError(f"the notebook has {len(cells)} cells tagged 'parameters'; exactly one is allowed")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as e:
        raise RunnerError(f"the parameters cell is not valid Python: {e}") from e
    params: dict[str, Any] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name) and node.value is not None:
                try:
                    params[t.id] = ast.literal_eval(node.value)
                except ValueError:
                    params[t.id] = ast.unparse(node.value)
    return params


def load_profiles(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The profiles of one notebook from ``profiles.yaml`` beside it: ``{profile: {parameter: value}}``."""
    notebook = Path(notebook)
    cfg_path = notebook.parent / "profiles.yaml"
    if not cfg_path.is_file():
        raise RunnerError(f"no profiles file at {cfg_path}")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    entry = cfg.get(notebook.stem)
    if entry is None:
        raise RunnerError(f"{cfg_path} has no entry for notebook '{notebook.stem}'")
    profiles = entry.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise RunnerError(f"{cfg_path}: '{notebook.stem}' must define a non-empty 'profiles' mapping")
    return {name: dict(values or {}) for name, values in profiles.items()}


def resolve_parameters(notebook: str | Path, profile: str, overrides: dict[str, Any] | None = None):
    """Check a profile and overrides against the notebook; return ``(nb, injected, all_parameters)``.

    ``injected`` is what papermill writes into the notebook (profile values, then overrides, then
    ``profile``); ``all_parameters`` adds the notebook's own defaults for everything not injected.
    """
    notebook = Path(notebook)
    nb = _read_notebook(notebook)
    try:
        defaults = notebook_parameters(nb)
    except RunnerError as e:
        raise RunnerError(f"{notebook}: {e}") from None
    missing = [r for r in RESERVED if r not in defaults]
    if missing:
        raise RunnerError(f"{notebook}: the parameters cell must define {missing} (the runner sets them)")
    profiles = load_profiles(notebook)
    if profile not in profiles:
        raise RunnerError(f"unknown profile '{profile}' for {notebook.stem}; known profiles: {sorted(profiles)}")
    overrides = dict(overrides or {})
    for source, values in (("profile '" + profile + "'", profiles[profile]), ("overrides", overrides)):
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise RunnerError(f"unknown parameter(s) {unknown} in {source} for {notebook.stem}; "
                              f"the parameters cell defines: {sorted(defaults)}")
    injected = {**profiles[profile], **overrides, "profile": profile}
    return nb, injected, {**defaults, **injected}


def fingerprint(values: dict[str, Any]) -> str:
    """A short stable hash of JSON-able values (e.g. the parameters that define a training run), for
    :class:`medmoe.engine.TrainConfig` ``run_key`` and checkpoint folder names."""
    import hashlib

    return hashlib.sha1(json.dumps(_json_safe(values), sort_keys=True).encode()).hexdigest()[:12]


def _ensure_kernel_metadata(nb, kernel_name: str = "python3") -> None:
    """Percent files without a jupytext header have no kernelspec; papermill needs one."""
    nb.metadata.setdefault("kernelspec", {"name": kernel_name, "display_name": "Python 3", "language": "python"})
    nb.metadata.setdefault("language_info", {"name": "python"})


def _json_safe(obj: Any) -> Any:
    """Strict JSON: NaN/inf become ``None`` (with the key kept), tensors and numpy scalars become numbers."""
    import math

    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def save_results(run_dir: str | Path, metrics: dict[str, Any], **extra: Any) -> Path:
    """Called from a notebook's last cell: write the run's metrics (and the kernel's peak memory).

    ``metrics`` must be JSON-serialisable numbers/strings/lists; the runner merges the file into
    ``metrics.json``. Works without the runner too (interactive use), writing to ``run_dir``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = _json_safe({"metrics": metrics, "kernel_peak_memory": peak_memory_mb(), **extra})
    path = run_dir / RESULTS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, allow_nan=False))
    os.replace(tmp, path)
    return path


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def run_notebook(
    notebook: str | Path,
    *,
    profile: str = "quick",
    parameters: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    kernel_name: str = "python3",
    timeout: int | None = None,
    log_output: bool = False,
) -> dict[str, Any]:
    """Execute ``notebook`` with ``profile`` and ``parameters`` overrides; return the ``metrics.json`` record.

    Raises :class:`RunnerError` on any problem; a failing cell still leaves ``notebook.ipynb`` (with the
    error) and a ``metrics.json`` with ``"status": "failed"`` in ``out_dir``.
    """
    import papermill as pm

    notebook = Path(notebook)
    nb, injected, all_params = resolve_parameters(notebook, profile, parameters)
    _ensure_kernel_metadata(nb, kernel_name)
    out = Path(out_dir) if out_dir else Path("runs") / profile / notebook.stem
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    for stale in (RESULTS_FILE, METRICS_FILE):
        (out / stale).unlink(missing_ok=True)
    injected["run_dir"] = str(out)
    all_params["run_dir"] = str(out)
    record: dict[str, Any] = {
        "notebook": str(notebook),
        "profile": profile,
        "parameters": all_params,
        "overrides": dict(parameters or {}),
        "seed": all_params.get("seed"),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "executed_notebook": "notebook.ipynb",
    }
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            nb, str(out / "notebook.ipynb"), parameters=injected, kernel_name=kernel_name,
            progress_bar=False, log_output=log_output, cwd=str(notebook.parent.resolve()),
            execution_timeout=timeout,
        )
    except Exception as e:  # papermill raises PapermillExecutionError for a failing cell
        record.update(status="failed", error=f"{type(e).__name__}: {e}", wall_time_s=round(time.perf_counter() - t0, 1),
                      environment=environment())
        _atomic_json(out / METRICS_FILE, record)
        raise RunnerError(f"{notebook} failed with profile '{profile}' (see {out / 'notebook.ipynb'}):\n{e}") from e
    record["wall_time_s"] = round(time.perf_counter() - t0, 1)
    results_path = out / RESULTS_FILE
    if not results_path.is_file():
        record.update(status="failed", error="the notebook did not call medmoe.runner.save_results(run_dir, ...)")
        _atomic_json(out / METRICS_FILE, record)
        raise RunnerError(f"{notebook}: {record['error']}")
    results = json.loads(results_path.read_text())
    record.update(status="ok", **results, environment=environment())
    _atomic_json(out / METRICS_FILE, record)
    return record


def prepare_notebook(notebook: str | Path, out_path: str | Path, *, profile: str = "smoke",
                     parameters: dict[str, Any] | None = None) -> Path:
    """Write ``notebook`` as an ``.ipynb`` with the profile's parameters injected but not executed.

    This is what nbval runs in ``make test``: the same checks on names as :func:`run_notebook`, then
    papermill's ``prepare_only`` mode. ``run_dir`` points next to ``out_path``.
    """
    import papermill as pm

    nb, injected, _ = resolve_parameters(notebook, profile, parameters)
    _ensure_kernel_metadata(nb)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    injected["run_dir"] = str((out_path.parent / "runs" / Path(notebook).stem).resolve())
    pm.execute_notebook(nb, str(out_path), parameters=injected, prepare_only=True, progress_bar=False)
    return out_path


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
                       timeout=args.timeout, log_output=args.log_output)
    print(json.dumps({k: rec[k] for k in ("notebook", "profile", "seed", "status", "wall_time_s", "metrics")}, indent=2, default=str))
    print(f"wrote {Path(rec['parameters']['run_dir']) / METRICS_FILE}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    overrides = {name: _parse_value(value) for name, value in args.parameter or []}
    for nb in args.notebooks:
        out = prepare_notebook(nb, Path(args.out_dir) / (Path(nb).stem + ".ipynb"), profile=args.profile, parameters=overrides)
        print(f"wrote {out}")
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    print(json.dumps(environment(), indent=2))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from medmoe.registry import render_report, render_timings

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduction.md").write_text(render_report(runs_root=Path(args.runs)))
    (out / "timings.md").write_text(render_timings(runs_root=Path(args.runs)))
    (out / "environment.md").write_text("```json\n" + json.dumps(environment(), indent=2) + "\n```\n")
    print(f"wrote reproduction.md, timings.md and environment.md to {out}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from medmoe.registry import reproduce

    for rec in reproduce(args.cells, runs_root=Path(args.runs)):
        print(f"{rec['cell']}: {rec['status']} ({rec['run_dir']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medmoe", description="MedMoE Book: run chapter notebooks and reproduce paper tables.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute a notebook with a profile through papermill")
    r.add_argument("notebook", help="e.g. notebooks/00_moe_primer.py")
    r.add_argument("--profile", default="quick", help="quick | smoke | paper (see notebooks/profiles.yaml)")
    r.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="override a parameter (value parsed as YAML); repeatable")
    r.add_argument("--out", help="output folder (default runs/<profile>/<notebook>)")
    r.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    r.add_argument("--log-output", action="store_true", help="stream the notebook's output")
    r.set_defaults(func=_cmd_run)
    pr = sub.add_parser("prepare", help="write notebooks with a profile injected, not executed (for nbval)")
    pr.add_argument("notebooks", nargs="+")
    pr.add_argument("--profile", default="smoke")
    pr.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"))
    pr.add_argument("--out-dir", required=True)
    pr.set_defaults(func=_cmd_prepare)
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
