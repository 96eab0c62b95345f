"""Execute a chapter notebook with a named profile and record what happened (``medmoe run``, :mod:`medmoe.repro.cli`).

Explained in the book: *Environment and commands*. The runner is how the book, CI and a researcher
re-running a paper's table all execute notebooks:

* a notebook is a jupytext percent file (``notebooks/NN_name.py``) with one cell tagged ``parameters``;
* the paper's card (``medmoe/papers/<name>/card.yaml``, found by :func:`medmoe.papers.card_for_notebook`) holds
  the parameter values of each profile (``quick``: CPU + phantoms, ``smoke``: the tiny nbval run, ``paper``: GPU +
  real data + the paper's hyperparameters);
* the runner checks every parameter name against the parameters cell, injects the values with papermill, plus
  ``profile``, ``run_dir`` and ``run_key`` -- a hash of every parameter's value and the library's version
  (:func:`run_key_for`), so a checkpoint is resumed only by the same run -- and writes ``<out>/notebook.ipynb`` and
  ``<out>/metrics.json`` (parameters, metrics the notebook saved with :func:`save_results`, wall time, peak memory,
  package versions, device, git commit).

Before a notebook starts, the runner also

* writes a ``rehearsal`` profile's fixtures: when a profile value contains ``{fixtures}``, it calls the paper's
  ``medmoe.papers.<name>.fixtures.write_rehearsal_fixtures(<out>/fixtures)`` and puts that folder in its place
  (:func:`materialise_fixtures`), so the paper path runs end to end on tiny files in the real formats;
* checks the card's declared ``inputs`` (datasets, weights) against the run's parameters and stops with every
  missing file and the ``data_scripts/`` command that provides it, before any training (:func:`check_inputs`).
  Relative paths are read from the folder ``medmoe run`` is called in and handed to the notebook as absolute
  paths (the kernel runs in ``notebooks/``).

It fails loudly: an unknown profile or parameter, a missing parameters cell, a missing input or a failing cell is
an error (exit status 1), never a skip.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import importlib
import json
import math
import os
import string
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

import medmoe
from medmoe.env import environment, peak_memory_mb
from medmoe.papers import card_for_notebook

__all__ = [
    "RunnerError",
    "MissingInputsError",
    "check_inputs",
    "materialise_fixtures",
    "notebook_parameters",
    "load_profiles",
    "resolve_parameters",
    "run_notebook",
    "prepare_notebook",
    "fingerprint",
    "run_key_for",
    "checkpoint_dir",
    "save_results",
    "tag_for_the_book",
    "inputs_hash",
    "package_sources_hash",
    "reusable_run",
]

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.json"
INPUTS_FILE = "inputs.sha256"  # beside metrics.json: the hash of what a successful run was made from
RESERVED = ("profile", "run_dir", "run_key")  # injected by the runner into every notebook


class RunnerError(RuntimeError):
    """A notebook could not be run as asked (bad profile, parameter, notebook or a failing cell)."""


class MissingInputsError(RunnerError):
    """A dataset or weight file that the run reads is not there (the message names the command that makes it)."""


FIXTURES = "{fixtures}"


def _substitute(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_substitute(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, old, new) for k, v in value.items()}
    return value


def _mentions(value: Any, token: str) -> bool:
    if isinstance(value, str):
        return token in value
    if isinstance(value, (list, tuple)):
        return any(_mentions(v, token) for v in value)
    if isinstance(value, dict):
        return any(_mentions(v, token) for v in value.values())
    return False


def materialise_fixtures(paper: str | None, values: dict[str, Any], root: Path) -> dict[str, Any]:
    """``values`` with ``{fixtures}`` replaced by ``root``, after writing the paper's rehearsal fixtures there.

    Nothing is written when no value mentions ``{fixtures}``. The paper's fixture writer is found by name
    (``medmoe.papers.<paper>.fixtures.write_rehearsal_fixtures``), the one place the runner reaches into a paper
    folder beyond its card; the writer is deterministic, so re-running it over an old folder is harmless.
    """
    if not _mentions(values, FIXTURES):
        return dict(values)
    if paper is None:
        raise RunnerError(f"a parameter mentions {FIXTURES} but the notebook has no paper card to write them")
    module_name = f"medmoe.papers.{paper}.fixtures"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise RunnerError(f"the profile uses {FIXTURES} but {module_name} does not exist ({e})") from None
    writer = getattr(module, "write_rehearsal_fixtures", None)
    if writer is None:
        raise RunnerError(f"{module_name} has no write_rehearsal_fixtures(root)")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    writer(root)
    return _substitute(dict(values), FIXTURES, str(root))


def _matches(rule: dict[str, Any] | None, parameters: dict[str, Any], *, where: str) -> bool | None:
    if not rule:
        return None
    for name, wanted in rule.items():
        if name not in parameters:
            raise RunnerError(f"{where} names parameter {name!r}, which the notebook does not define")
        options = wanted if isinstance(wanted, list) else [wanted]
        if parameters[name] not in options:
            return False
    return True


def check_inputs(inputs: list[dict[str, Any]], parameters: dict[str, Any], *, base: str | Path | None = None,
                 where: str = "card") -> dict[str, str]:
    """Check the declared inputs of a run; return the path parameters made absolute (to inject).

    Each input is ``{path, what, command[, when, unless]}``; ``path`` and ``command`` are ``str.format`` templates
    over the run's parameters. An input is skipped when ``when`` does not match, when ``unless`` matches or when a
    parameter its path names is empty. Relative paths are read from ``base`` (default: the current folder).

    Raises:
        MissingInputsError: listing every missing input with the command that provides it.

    Example:
        >>> spec = [{"path": "{data_root}/QaTa", "what": "QaTa-COV19", "command": "python prep.py --out {data_root}",
        ...          "when": {"dataset": "qata"}}]
        >>> check_inputs(spec, {"dataset": "phantoms", "data_root": "data"})
        {}
        >>> check_inputs(spec, {"dataset": "qata", "data_root": "/nowhere"})
        Traceback (most recent call last):
        ...
        medmoe.repro.runner.MissingInputsError: 1 input of this run is missing, so nothing ran:
          - QaTa-COV19: /nowhere/QaTa is not there; it is made by: python prep.py --out /nowhere
    """
    base = Path(base) if base is not None else Path.cwd()
    missing: list[str] = []
    absolute: dict[str, str] = {}
    for i, entry in enumerate(inputs):
        here = f"{where} inputs[{i}]"
        if _matches(entry.get("when"), parameters, where=here) is False:
            continue
        if _matches(entry.get("unless"), parameters, where=here) is True:
            continue
        names = [f for _, f, _, _ in string.Formatter().parse(entry["path"]) if f]
        unknown = [n for n in names if n not in parameters]
        if unknown:
            raise RunnerError(f"{here}: path {entry['path']!r} names unknown parameter(s) {unknown}")
        if any(parameters[n] in ("", None) for n in names):
            continue
        try:
            path = Path(os.path.expanduser(entry["path"].format(**parameters)))
            command = entry["command"].format(**parameters)
        except (KeyError, IndexError, ValueError) as e:
            raise RunnerError(f"{here}: cannot fill in {entry['path']!r} / {entry['command']!r}: {e}") from None
        full = path if path.is_absolute() else base / path
        if not full.exists():
            missing.append(f"  - {entry['what']}: {full} is not there; it is made by: {command}")
        for n in names:
            value = parameters[n]
            if isinstance(value, str) and not Path(os.path.expanduser(value)).is_absolute():
                absolute[n] = os.path.abspath(base / os.path.expanduser(value))
    if missing:
        n = len(missing)
        raise MissingInputsError(f"{n} input{'s' if n > 1 else ''} of this run {'are' if n > 1 else 'is'} "
                                 "missing, so nothing ran:\n" + "\n".join(missing))
    return absolute


def _local_profiles(notebook: Path) -> dict[str, Any] | None:
    """The notebook's entry in a ``profiles.yaml`` beside it, or None (no such file, or no entry for it)."""
    local = notebook.parent / "profiles.yaml"
    if not local.is_file():
        return None
    return (yaml.safe_load(local.read_text()) or {}).get(notebook.stem)


def _card_of(notebook: Path):
    """The notebook's paper card, or None for a notebook with its own entry in a ``profiles.yaml`` beside it (your
    own, a test's, or a chapter that reads the others' runs and has no paper, such as the comparison chapter)."""
    if _local_profiles(notebook) is not None:
        return None
    try:
        return card_for_notebook(notebook.stem)
    except ValueError:
        return None


def _read_notebook(path: Path):
    import jupytext  # local: notebooks import this module for save_results, and need not load jupytext

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
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for t in targets:
            if isinstance(t, ast.Name) and node.value is not None:
                try:
                    params[t.id] = ast.literal_eval(node.value)
                except ValueError:
                    params[t.id] = ast.unparse(node.value)
    return params


def load_profiles(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The profiles of one notebook: ``{profile: {parameter: value}}``.

    A paper chapter's come from its paper's card (:func:`medmoe.papers.card_for_notebook`). Any other notebook (your
    own, a test's, or a chapter without a paper such as ``notebooks/05_comparison.py``) keeps them in a
    ``profiles.yaml`` beside it: ``{<stem>: {profiles: {...}}}``; an entry there takes precedence over a card.
    """
    notebook = Path(notebook)
    local = notebook.parent / "profiles.yaml"
    entry = _local_profiles(notebook)
    if entry is None and local.is_file():
        try:
            return load_card_profiles(notebook.stem)
        except ValueError:
            raise RunnerError(f"{local} has no entry for notebook '{notebook.stem}', and no paper card names it") \
                from None
    if entry is not None:
        profiles = entry.get("profiles")
        if not isinstance(profiles, dict) or not profiles:
            raise RunnerError(f"{local}: '{notebook.stem}' must define a non-empty 'profiles' mapping")
        return {name: dict(values or {}) for name, values in profiles.items()}
    try:
        return load_card_profiles(notebook.stem)
    except ValueError as e:
        raise RunnerError(str(e)) from None


def load_card_profiles(stem: str) -> dict[str, dict[str, Any]]:
    """``{profile: {parameter: value}}`` from the card of the paper whose notebook is ``notebooks/<stem>.py``."""
    return {name: dict(values) for name, values in card_for_notebook(stem).profiles.items()}


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
    all_parameters = {**defaults, **injected}
    injected["run_key"] = all_parameters["run_key"] = run_key_for(notebook.stem, all_parameters)
    return nb, injected, all_parameters


def fingerprint(values: dict[str, Any]) -> str:
    """A short stable hash of JSON-able values (e.g. the parameters that define a training run).

    Example:
        >>> fingerprint({"a": 1, "b": [2, 3]}) == fingerprint({"b": [2, 3], "a": 1})
        True
    """
    return hashlib.sha1(json.dumps(_json_safe(values), sort_keys=True).encode()).hexdigest()[:12]


def run_key_for(notebook: str, parameters: dict[str, Any]) -> str:
    """The checkpoint key of a run: a hash of the notebook's name, **every** parameter's value and ``medmoe``'s
    version (``run_dir`` and ``run_key`` left out). :class:`medmoe.engine.TrainConfig` refuses to resume a
    checkpoint written under another key, so changing any parameter, or the library, never resumes a stale run.

    Example:
        >>> a = run_key_for("01_mlmoe", {"seed": 0, "epochs": 3, "run_dir": "x"})
        >>> a == run_key_for("01_mlmoe", {"seed": 0, "epochs": 3, "run_dir": "elsewhere"})
        True
        >>> a == run_key_for("01_mlmoe", {"seed": 0, "epochs": 4, "run_dir": "x"})
        False
    """
    kept = {k: v for k, v in parameters.items() if k not in ("run_dir", "run_key")}
    return fingerprint({"notebook": Path(notebook).stem, "parameters": kept, "medmoe": medmoe.__version__})


def checkpoint_dir(run_dir: str | Path, run_key: str | None) -> Path:
    """Where a notebook keeps its checkpoints: ``<run_dir>/checkpoints/<run_key>``.

    Without the runner (``run_key`` is ``None``: a notebook opened by hand) every session gets a fresh folder, so
    it never resumes a checkpoint written with other parameters.
    """
    if run_key is None:
        run_key = "interactive-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path(run_dir) / "checkpoints" / run_key


def _ensure_kernel_metadata(nb, kernel_name: str = "python3") -> None:
    """Percent files without a jupytext header have no kernelspec; papermill needs one."""
    nb.metadata.setdefault("kernelspec", {"name": kernel_name, "display_name": "Python 3", "language": "python"})
    nb.metadata.setdefault("language_info", {"name": "python"})


def _json_safe(obj: Any) -> Any:
    """Strict JSON: NaN/inf become ``None`` (with the key kept), tensors and numpy scalars become numbers."""
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


def _rank() -> int:
    """This process's rank under ``accelerate launch`` / ``torchrun`` (0 when there is a single process)."""
    return int(os.environ.get("RANK", "0"))


def _launch_distributed(nb, injected: dict[str, Any], out: Path, *, cwd: Path, processes: int, cpu: bool,
                        kernel_name: str, timeout: int | None) -> None:
    """``accelerate launch`` ``processes`` copies of :mod:`medmoe.repro.distributed` over this notebook.

    Writes ``<out>/distributed/notebook.ipynb`` (parameters injected, not executed; rank 0 executes it) and
    ``<out>/distributed/script.py`` (the same cells as a script; ranks 1.. run it), then waits for all ranks.
    """
    import subprocess  # local: only the distributed path starts processes
    import sys

    import jupytext  # local: see _read_notebook
    import papermill as pm  # local: slow to import

    work = out / "distributed"
    work.mkdir(parents=True, exist_ok=True)
    prepared = work / "notebook.ipynb"
    pm.execute_notebook(nb, str(prepared), parameters=injected, prepare_only=True, progress_bar=False,
                        kernel_name=kernel_name)
    jupytext.write(jupytext.read(prepared), work / "script.py", fmt="py:percent")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "medmoe.repro.distributed", str(prepared), str(work / "script.py"), str(out / "notebook.ipynb"),
           "--cwd", str(cwd), "--kernel", kernel_name]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    env = dict(os.environ)
    if cpu:  # Accelerate goes multi-process on a machine without GPUs only when told to (medmoe.engine notes)
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (work / "launch.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RunnerError(f"accelerate launch with {processes} processes failed (exit {proc.returncode}; full log "
                          f"in {work / 'launch.log'}):\n{proc.stderr[-3000:]}")


def save_results(run_dir: str | Path, metrics: dict[str, Any], **extra: Any) -> Path:
    """Called from a notebook's last cell: write the run's metrics (and the kernel's peak memory).

    ``metrics`` must be JSON-serialisable numbers/strings/lists; the runner merges the file into
    ``metrics.json``. Works without the runner too (interactive use), writing to ``run_dir``.
    """
    run_dir = Path(run_dir)
    if _rank() > 0:  # several processes (medmoe run --gpus N): rank 0 alone writes the run's record
        return run_dir / RESULTS_FILE
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


# Tags Jupyter Book reads (myst-nb): what the rendered page hides; the downloaded notebook keeps every cell.
BOOK_TAGS = {"injected-parameters": "remove-cell", "parameters": "hide-input"}


def tag_for_the_book(path: str | Path) -> None:
    """Tag an executed notebook's cells for the rendered page: papermill's injected-parameters cell is removed (it
    prints this machine's paths), the parameters cell is collapsed behind a toggle (its knobs are what the
    exercises change). The notebook file itself keeps every cell.
    """
    import nbformat  # local: only an executed notebook needs it

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        for marker, tag in BOOK_TAGS.items():
            if marker in tags and tag not in tags:
                tags.append(tag)
                changed = True
    if changed:
        tmp = path.with_suffix(".tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, path)


# ---------------------------------------------------------------- execute only what changed
def package_sources_hash() -> str:
    """sha256 over every source file of the installed ``medmoe`` package (``.py``, ``.yaml``), names included.

    The cards (``medmoe/papers/<name>/card.yaml``) are package files, so a changed profile is seen here too.
    """
    root = Path(medmoe.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _requirements_text() -> bytes:
    """The pinned requirements (``requirements.txt`` beside the package's folder); empty for an installed wheel."""
    path = Path(medmoe.__file__).resolve().parent.parent / "requirements.txt"
    return path.read_bytes() if path.is_file() else b""


def inputs_hash(notebook: str | Path, profile: str, parameters: dict[str, Any],
                depends_on: Sequence[str | Path] = ()) -> str:
    """sha256 of everything a run is made from: the notebook's text, the profile, every resolved parameter (the
    profile's values, the ``-p`` overrides, the notebook's defaults), the ``medmoe`` sources and the pinned
    requirements, and the content of every file in ``depends_on`` (a missing one counts as missing), for a
    notebook that reads other runs' records. ``medmoe run --skip-unchanged`` reuses a run only when this is unchanged.

    Example:
        >>> import tempfile
        >>> nb = Path(tempfile.mkdtemp()) / "x.py"; _ = nb.write_text("x = 1")
        >>> inputs_hash(nb, "quick", {"seed": 0}) == inputs_hash(nb, "quick", {"seed": 0})
        True
        >>> inputs_hash(nb, "quick", {"seed": 0}) == inputs_hash(nb, "quick", {"seed": 1})
        False
    """
    h = hashlib.sha256()
    for part in (Path(notebook).read_bytes(), profile.encode(),
                 json.dumps(_json_safe(parameters), sort_keys=True).encode(),
                 package_sources_hash().encode(), _requirements_text()):
        h.update(hashlib.sha256(part).digest())
    for dep in depends_on:
        dep = Path(dep)
        h.update(hashlib.sha256(str(dep).encode() + b"\0" + (dep.read_bytes() if dep.is_file() else b"missing"))
                 .digest())
    return h.hexdigest()


def reusable_run(out: str | Path, digest: str) -> dict[str, Any] | None:
    """The ``metrics.json`` record in ``out`` if that run succeeded from inputs hashing to ``digest``, else None.

    A failed or interrupted run has no ``inputs.sha256`` (it is removed before a run starts and written after
    ``metrics.json`` of a successful one), so it is never reused; neither is a run whose inputs changed.
    """
    out = Path(out)
    stored, metrics = out / INPUTS_FILE, out / METRICS_FILE
    if not (stored.is_file() and metrics.is_file() and (out / "notebook.ipynb").is_file()):
        return None
    if stored.read_text().strip() != digest:
        return None
    try:
        record = json.loads(metrics.read_text())
    except ValueError:
        return None
    if record.get("status") != "ok" or record.get("inputs_sha256") != digest:
        return None
    return record


def run_notebook(
    notebook: str | Path,
    *,
    profile: str = "quick",
    parameters: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    kernel_name: str = "python3",
    timeout: int | None = None,
    log_output: bool = False,
    gpus: int = 1,
    cpu: bool = False,
    skip_unchanged: bool = False,
    depends_on: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Execute ``notebook`` with ``profile`` and ``parameters`` overrides; return the ``metrics.json`` record.

    ``gpus > 1`` runs the notebook as ``gpus`` data-parallel processes under ``accelerate launch``
    (:mod:`medmoe.repro.distributed`): rank 0 executes the notebook itself, so it alone writes the figures,
    ``notebook.ipynb`` and ``metrics.json``; the other ranks run the same code as a script generated from the
    notebook with the same parameters injected. ``cpu=True`` runs those processes on the CPU (gloo), which is how
    the test suite checks this path on a machine without GPUs.

    ``skip_unchanged=True`` (``medmoe run --skip-unchanged``, what ``make book`` passes unless ``FORCE=1``) returns
    the record of the last run in ``out_dir`` without executing anything when that run succeeded and
    :func:`inputs_hash` of this one is the same (the record then has ``"skipped": True``); otherwise it runs.
    Every successful run writes ``inputs.sha256`` beside ``metrics.json``. ``depends_on`` names files the notebook
    reads (other runs' ``metrics.json``) whose content is part of that hash.

    Raises :class:`RunnerError` on any problem; a failing cell still leaves ``notebook.ipynb`` (with the
    error) and a ``metrics.json`` with ``"status": "failed"`` in ``out_dir``.
    """
    import papermill as pm  # local: slow to import, and a notebook kernel importing save_results never needs it

    notebook = Path(notebook)
    if not isinstance(gpus, int) or gpus < 1:
        raise RunnerError(f"gpus must be a whole number >= 1, got {gpus!r}")
    if gpus > 1 and not cpu:
        import torch  # local: the runner itself never needs torch, only this check does

        found = torch.cuda.device_count()
        if found < gpus:
            raise RunnerError(f"asked for {gpus} GPUs but this machine has {found}; use --gpus {found or 1}, or "
                              f"--cpu to run {gpus} processes on the CPU (gloo, for testing)")
    nb, injected, all_params = resolve_parameters(notebook, profile, parameters)
    _ensure_kernel_metadata(nb, kernel_name)
    out = Path(out_dir) if out_dir else Path("runs") / profile / notebook.stem
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    digest = inputs_hash(notebook, profile, {**all_params, "run_dir": str(out), "processes": gpus},
                         depends_on=[Path(d).resolve() for d in depends_on])
    if skip_unchanged:
        previous = reusable_run(out, digest)
        if previous is not None:
            return {**previous, "skipped": True}
    for stale in (INPUTS_FILE, RESULTS_FILE, METRICS_FILE):
        (out / stale).unlink(missing_ok=True)
    card = _card_of(notebook)
    injected = materialise_fixtures(card.name if card else None, injected, out / "fixtures")
    all_params.update(injected)
    if card is not None and card.inputs:  # every dataset and weight file, before anything runs (MissingInputsError)
        absolute = check_inputs(card.inputs, all_params, where=f"medmoe/papers/{card.name}/card.yaml")
        injected.update(absolute)
        all_params.update(absolute)
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
    record["processes"] = gpus
    t0 = time.perf_counter()
    try:
        if gpus > 1:
            _launch_distributed(nb, injected, out, cwd=notebook.parent.resolve(), processes=gpus, cpu=cpu,
                                kernel_name=kernel_name, timeout=timeout)
        else:
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
    tag_for_the_book(out / "notebook.ipynb")
    results_path = out / RESULTS_FILE
    if not results_path.is_file():
        record.update(status="failed", error="the notebook did not call medmoe.repro.runner.save_results(run_dir, ...)")
        _atomic_json(out / METRICS_FILE, record)
        raise RunnerError(f"{notebook}: {record['error']}")
    results = json.loads(results_path.read_text())
    record.update(status="ok", **results, environment=environment(), inputs_sha256=digest)
    _atomic_json(out / METRICS_FILE, record)
    (out / INPUTS_FILE).write_text(digest + "\n")  # last: only a complete, successful run is ever reused
    return record


def prepare_notebook(notebook: str | Path, out_path: str | Path, *, profile: str = "smoke",
                     parameters: dict[str, Any] | None = None) -> Path:
    """Write ``notebook`` as an ``.ipynb`` with the profile's parameters injected but not executed.

    This is what nbval runs in ``make test``: the same checks on names as :func:`run_notebook`, then
    papermill's ``prepare_only`` mode. ``run_dir`` points next to ``out_path``.
    """
    import papermill as pm  # local: slow to import, and a notebook kernel importing save_results never needs it

    nb, injected, _ = resolve_parameters(notebook, profile, parameters)
    _ensure_kernel_metadata(nb)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    injected["run_dir"] = str((out_path.parent / "runs" / Path(notebook).stem).resolve())
    pm.execute_notebook(nb, str(out_path), parameters=injected, prepare_only=True, progress_bar=False)
    return out_path
