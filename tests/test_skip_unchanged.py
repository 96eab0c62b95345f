"""``medmoe run --skip-unchanged`` (what ``make book`` passes unless ``FORCE=1``): a chapter whose inputs are unchanged
is not executed again; any changed input (notebook, parameter, profile, library source, requirements) re-executes it,
and a failed or interrupted run is never reused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml
from tiny_notebook import write_tiny

from medmoe.repro import runner
from medmoe.repro.cli import main
from medmoe.repro.runner import INPUTS_FILE, RunnerError, inputs_hash, package_sources_hash, run_notebook

ROOT = Path(__file__).resolve().parent.parent

def _tiny(tmp_path: Path, profiles: dict | None = None) -> Path:
    return write_tiny(tmp_path, profiles=profiles or {"quick": {}})


@pytest.fixture
def executions(monkeypatch):
    """papermill replaced by a stand-in that records each execution and does what the notebook would do."""
    import papermill

    calls: list[dict] = []

    def execute(nb, out, parameters, **kwargs):
        calls.append(dict(parameters))
        if parameters.get("n_experts") == -1:
            raise RuntimeError("a failing cell")
        if parameters.get("n_experts") == -2:
            raise KeyboardInterrupt
        nbformat.write(nbformat.v4.new_notebook(), out)
        runner.save_results(parameters["run_dir"], {"n_experts": parameters.get("n_experts", 4)})

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return calls


def _run(nb, out, **kwargs):
    return run_notebook(nb, out_dir=out, skip_unchanged=True, **kwargs)


def test_a_real_run_is_skipped_when_nothing_changed(tmp_path, monkeypatch):
    nb, out = _tiny(tmp_path), tmp_path / "out"
    first = _run(nb, out)  # really executed by papermill
    assert first["status"] == "ok" and not first.get("skipped")
    assert (out / INPUTS_FILE).read_text().strip() == first["inputs_sha256"]

    import papermill

    def never(*args, **kwargs):
        raise AssertionError("an unchanged notebook was executed again")

    monkeypatch.setattr(papermill, "execute_notebook", never)
    again = _run(nb, out)
    assert again["skipped"] and again["metrics"] == first["metrics"]
    assert (out / "notebook.ipynb").is_file()  # the book's copy step still finds the executed notebook


def test_unchanged_skips_and_every_changed_input_reruns(tmp_path, monkeypatch, executions):
    nb, out = _tiny(tmp_path), tmp_path / "out"
    _run(nb, out)
    _run(nb, out)
    assert len(executions) == 1, "unchanged inputs must not execute"

    nb.write_text(nb.read_text().replace("seed = 0", "seed = 0  # edited"))  # the notebook's source
    _run(nb, out)
    assert len(executions) == 2

    _run(nb, out, parameters={"n_experts": 6})  # a -p override
    assert len(executions) == 3
    _run(nb, out, parameters={"n_experts": 6})
    assert len(executions) == 3

    (tmp_path / "profiles.yaml").write_text(yaml.safe_dump({"tiny": {"profiles": {"quick": {"seed": 5}}}}))
    _run(nb, out, parameters={"n_experts": 6})  # the profile's values
    assert len(executions) == 4

    real = package_sources_hash()
    monkeypatch.setattr(runner, "package_sources_hash", lambda: "changed-" + real)  # a library source
    _run(nb, out, parameters={"n_experts": 6})
    assert len(executions) == 5

    monkeypatch.setattr(runner, "_requirements_text", lambda: b"torch==0.0.1\n")  # the pinned requirements
    _run(nb, out, parameters={"n_experts": 6})
    assert len(executions) == 6
    _run(nb, out, parameters={"n_experts": 6})
    assert len(executions) == 6

    run_notebook(nb, out_dir=out, parameters={"n_experts": 6})  # FORCE=1: no --skip-unchanged
    assert len(executions) == 7


def test_a_failed_or_interrupted_run_is_never_reused(tmp_path, executions):
    nb, out = _tiny(tmp_path), tmp_path / "out"
    _run(nb, out)
    with pytest.raises(RunnerError):
        _run(nb, out, parameters={"n_experts": -1})
    assert not (out / INPUTS_FILE).exists()
    with pytest.raises(RunnerError):
        _run(nb, out, parameters={"n_experts": -1})
    assert len(executions) == 3, "a failed run is executed again"

    _run(nb, out)
    with pytest.raises(KeyboardInterrupt):
        _run(nb, out, parameters={"n_experts": -2})
    n = len(executions)
    # the interrupted run left no inputs.sha256, so the same inputs as the good run before it execute again
    assert not (out / INPUTS_FILE).exists()
    _run(nb, out)
    assert len(executions) == n + 1


def test_a_stale_record_is_not_trusted(tmp_path, executions):
    """inputs.sha256 and metrics.json must agree, and the run must have succeeded."""
    nb, out = _tiny(tmp_path), tmp_path / "out"
    _run(nb, out)
    record = json.loads((out / "metrics.json").read_text())
    record["status"] = "failed"
    (out / "metrics.json").write_text(json.dumps(record))
    _run(nb, out)
    assert len(executions) == 2


def test_the_library_hash_sees_a_changed_source_file(tmp_path, monkeypatch):
    pkg = tmp_path / "medmoe"
    (pkg / "papers" / "x").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "papers" / "x" / "card.yaml").write_text("profiles: {}\n")
    monkeypatch.setattr(runner.medmoe, "__file__", str(pkg / "__init__.py"))
    before = package_sources_hash()
    (pkg / "moe.py").write_text("x = 1\n")
    added = package_sources_hash()
    (pkg / "moe.py").write_text("x = 2\n")
    edited = package_sources_hash()
    (pkg / "papers" / "x" / "card.yaml").write_text("profiles: {quick: {}}\n")
    card = package_sources_hash()
    assert len({before, added, edited, card}) == 4
    nb = _tiny(tmp_path)
    assert inputs_hash(nb, "quick", {}) != inputs_hash(nb, "smoke", {})


def test_cli_says_skipped(tmp_path, capsys, executions):
    nb, out = _tiny(tmp_path), tmp_path / "out"
    assert main(["run", str(nb), "--out", str(out), "--skip-unchanged"]) == 0
    assert main(["run", str(nb), "--out", str(out), "--skip-unchanged"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("wrote ") == 1 and printed.count(f"skipped {nb}: inputs unchanged") == 1
    assert len(executions) == 1


def test_make_book_skips_unless_force():
    makefile = (ROOT / "Makefile").read_text()
    assert "SKIP_UNCHANGED = $(if $(FORCE),,--skip-unchanged)" in makefile
    loop = makefile[makefile.index("\nnotebooks:"):makefile.index("\nnotebooks:") + 600]
    assert re.search(r"medmoe run \$\$nb .*\$\(SKIP_UNCHANGED\)", loop)


def test_a_notebook_that_reads_other_runs_reruns_when_one_of_them_changed(tmp_path, executions):
    """The comparison chapter depends on the chapters' metrics.json (make book: --depends-on): a chapter that re-ran
    makes it re-run; an unchanged record, or the same missing one, lets it be skipped."""
    nb, out = _tiny(tmp_path), tmp_path / "out"
    record = tmp_path / "other" / "metrics.json"
    _run(nb, out, depends_on=[record])  # the record does not exist yet
    _run(nb, out, depends_on=[record])
    assert len(executions) == 1
    record.parent.mkdir()
    record.write_text('{"started": "1"}')
    _run(nb, out, depends_on=[record])
    assert len(executions) == 2
    _run(nb, out, depends_on=[record])
    assert len(executions) == 2
    record.write_text('{"started": "2"}')  # that chapter ran again
    _run(nb, out, depends_on=[record])
    assert len(executions) == 3


def test_make_book_makes_the_comparison_depend_on_the_chapters_records():
    make = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "--depends-on runs/$(PROFILE)/" in make and "$$deps" in make
