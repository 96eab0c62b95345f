"""medmoe.repro.runner and medmoe.repro.registry: profiles, parameter checks, metrics.json, the reproduction page."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import yaml
from tiny_notebook import TINY
from tiny_notebook import write_tiny as _tiny

from medmoe.claims import paired_claim
from medmoe.papers import Card
from medmoe.papers import cards as _cards
from medmoe.repro import registry
from medmoe.repro.cli import main
from medmoe.repro.runner import (
    MissingInputsError,
    RunnerError,
    check_inputs,
    load_card_profiles,
    load_profiles,
    materialise_fixtures,
    notebook_parameters,
    prepare_notebook,
    resolve_parameters,
    run_notebook,
)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))



def test_notebook_parameters_reads_literals():
    import jupytext

    params = notebook_parameters(jupytext.reads(TINY.format(body=""), fmt="py:percent"))
    assert params == {"profile": "quick", "run_dir": "runs/interactive/tiny", "run_key": None, "seed": 0,
                      "n_experts": 4, "scale": 0.5}


def test_run_writes_metrics_with_overrides_and_environment(tmp_path):
    nb = _tiny(tmp_path)
    rec = run_notebook(nb, profile="quick", parameters={"n_experts": 6, "seed": 3}, out_dir=tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk["status"] == "ok" and on_disk == json.loads(json.dumps(rec, default=str))
    assert on_disk["metrics"]["n_experts"] == 6 and on_disk["metrics"]["seed"] == 3 and on_disk["seed"] == 3
    assert on_disk["metrics"]["score"] == 3.0
    assert on_disk["parameters"]["scale"] == 0.5 and on_disk["parameters"]["profile"] == "quick"
    env = on_disk["environment"]
    assert env["packages"]["torch"] and env["device"] and on_disk["wall_time_s"] > 0
    assert on_disk["kernel_peak_memory"]["cpu_rss_mb"] > 0
    assert (tmp_path / "out" / "notebook.ipynb").is_file()


def test_same_seed_same_result_and_profile_values_applied(tmp_path):
    nb = _tiny(tmp_path)
    a = run_notebook(nb, profile="smoke", out_dir=tmp_path / "a")
    b = run_notebook(nb, profile="smoke", out_dir=tmp_path / "b")
    assert a["metrics"]["n_experts"] == 2
    assert a["metrics"]["draw"] == b["metrics"]["draw"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"profile": "gpu-huge"}, r"unknown profile 'gpu-huge'.*known profiles: \['quick', 'smoke'\]"),
        ({"parameters": {"n_expert": 3}}, r"unknown parameter\(s\) \['n_expert'\] in overrides"),
    ],
)
def test_bad_profile_or_parameter_is_an_error(tmp_path, kwargs, message):
    nb = _tiny(tmp_path)
    with pytest.raises(RunnerError, match=message):
        run_notebook(nb, out_dir=tmp_path / "out", **kwargs)


def test_unknown_name_in_profile_file_is_an_error(tmp_path):
    nb = _tiny(tmp_path, profiles={"quick": {"epochz": 3}})
    with pytest.raises(RunnerError, match=r"unknown parameter\(s\) \['epochz'\] in profile 'quick'"):
        resolve_parameters(nb, "quick")


def test_missing_parameters_cell_is_an_error(tmp_path):
    nb = _tiny(tmp_path)
    nb.write_text(nb.read_text().replace(' tags=["parameters"]', ""))
    with pytest.raises(RunnerError, match="no cell tagged 'parameters'"):
        run_notebook(nb, out_dir=tmp_path / "out")


def test_failing_cell_fails_loudly_and_records_it(tmp_path):
    nb = _tiny(tmp_path, body='raise RuntimeError("boom in cell")')
    with pytest.raises(RunnerError, match="boom in cell"):
        run_notebook(nb, out_dir=tmp_path / "out")
    rec = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert rec["status"] == "failed" and "boom in cell" in rec["error"]


def test_cli_exit_codes(tmp_path, capsys):
    nb = _tiny(tmp_path)
    assert main(["run", str(nb), "-p", "n_experts", "5", "--out", str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["metrics"]["n_experts"] == 5
    assert main(["run", str(nb), "--profile", "nope", "--out", str(tmp_path / "cli2")]) == 1
    assert "unknown profile 'nope'" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.py")]) == 1


def test_prepare_injects_without_running(tmp_path):
    nb = _tiny(tmp_path, body='raise RuntimeError("must not run")')
    out = prepare_notebook(nb, tmp_path / "prep" / "tiny.ipynb", profile="smoke")
    cells = json.loads(out.read_text())["cells"]
    injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "n_experts = 2" in "".join(injected[0]["source"])


# ---------------------------------------------------------------- the book's own notebooks
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_book_notebooks_profiles_are_valid(nb):
    profiles = load_profiles(nb)
    assert {"quick", "smoke"} <= set(profiles)
    for name in profiles:
        resolve_parameters(nb, name)  # raises on any unknown name


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_book_notebooks_are_paired_and_clean(nb):
    import jupytext

    ipynb = nb.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb} missing: run `make sync`"
    py_cells = [(c.cell_type, c.source) for c in jupytext.read(nb).cells]
    raw = json.loads(ipynb.read_text())
    nb_cells = [(c["cell_type"], "".join(c["source"])) for c in raw["cells"]]
    assert py_cells == nb_cells, f"{nb.name} and {ipynb.name} differ: run `make sync`"
    assert not any(c.get("outputs") for c in raw["cells"] if c["cell_type"] == "code"), (
        "commit notebooks without outputs"
    )
    assert "colab.research.google.com" in "".join(s for _, s in py_cells)


# ---------------------------------------------------------------- registry and report
def test_registry_is_valid_and_notebook_parameters_exist():
    cells = registry.load_cells()
    assert cells and len({c.id for c in cells}) == len(cells)
    for c in cells:
        if c.notebook_exists():
            nb = ROOT / c.notebook
            resolve_parameters(nb, c.profile, c.parameters)
            if c.quick is not None:
                resolve_parameters(nb, "quick", c.quick)


def _card(cells, *, notebook="00_moe_primer", paper="Demo") -> Card:
    return Card(name="demo", paper=paper, chapter=9, notebook=notebook, title="Demo", cells=cells)


def test_registry_rejects_bad_entries():
    with pytest.raises(ValueError, match="missing"):
        registry.load_cells([_card([{"id": "x"}])])
    good = {"id": "x", "table": "T", "row": "r", "column": "c", "paper_value": 1, "profile": "paper", "parameters": {},
            "metric": "m"}
    with pytest.raises(ValueError, match="unknown field"):
        registry.load_cells([_card([{**good, "colour": "red"}])])
    with pytest.raises(ValueError, match="duplicate"):
        registry.load_cells([_card([good]), _card([good])])


def _fake_run(
    root: Path, name: str, seed: int, value: float, *, profile="paper", params=None,
    notebook="notebooks/00_moe_primer.py",
):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "notebook": notebook, "profile": profile, "status": "ok", "seed": seed, "started": f"2026-01-0{seed + 1}",
        "parameters": {"seed": seed, **(params or {})}, "metrics": {"score": value}, "wall_time_s": 12.0,
        "environment": {"device": "cpu", "cpu_count": 2},
    }))


def test_report_shows_paper_vs_reproduced_and_not_run(tmp_path):
    reg = [_card([
        {"id": "demo.score", "table": "T1", "row": "ours", "column": "score", "paper_value": 0.9,
         "profile": "paper", "parameters": {"n_experts": 4}, "metric": "score"},
        {"id": "demo.other", "table": "T1", "row": "ours", "column": "other", "paper_value": 1.0,
         "profile": "paper", "parameters": {"n_experts": 8}, "metric": "score"},
    ]), _card([
        {"id": "future.x", "table": "T9", "row": "r", "column": "c", "paper_value": 5,
         "profile": "paper", "parameters": {}, "metric": "x"},
    ], notebook="99_not_written", paper="Future")]
    runs = tmp_path / "runs"
    _fake_run(runs, "a", 0, 0.80, params={"n_experts": 4})
    _fake_run(runs, "b", 1, 0.90, params={"n_experts": 4})
    _fake_run(runs, "c", 2, 0.10, params={"n_experts": 4}, profile="quick")  # other profile: not a match
    text = registry.render_report(runs_root=runs, papers=reg)
    row = next(line for line in text.splitlines() if "`demo.score`" in line)
    assert "0.90" in row and "0.85 ± 0.07" in row and "2 seed(s), cpu" in row
    assert row.rstrip().endswith("| - |")  # no quick analogue declared for this cell
    assert "not run" in next(line for line in text.splitlines() if "`demo.other`" in line)
    assert "chapter not written yet" in next(line for line in text.splitlines() if "`future.x`" in line)
    assert text.count("| `00_moe_primer.py` |") == 3  # every run is listed


def test_timings_table_uses_measured_quick_runs(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "q", 0, 0.5, profile="quick")
    text = registry.render_timings(runs_root=runs)
    assert "0.2 min" in text and "cpu, 2 cores" in text
    assert "not run" in registry.render_timings(runs_root=tmp_path / "empty")


def test_primer_runs_end_to_end_with_overrides(tmp_path):
    """`medmoe run notebooks/00_moe_primer.py -p n_experts 3 -p seed 2` (smoke sizes): metrics.json reflects them."""
    nb = ROOT / "notebooks" / "00_moe_primer.py"
    code = main(
        ["run", str(nb), "--profile", "smoke", "-p", "n_experts", "3", "-p", "seed", "2", "--out", str(tmp_path / "p")]
    )
    assert code == 0
    rec = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert rec["status"] == "ok" and rec["seed"] == 2 and rec["parameters"]["n_experts"] == 3
    assert rec["metrics"]["n_experts"] == 3 and rec["metrics"]["seed"] == 2
    assert 0.0 <= rec["metrics"]["nmi[hard + L_aux]"] <= 1.0
    assert rec["environment"]["packages"]["torch"]
    cells = json.loads((tmp_path / "p" / "notebook.ipynb").read_text())["cells"]
    tags = [c["metadata"].get("tags", []) for c in cells]
    assert any({"injected-parameters", "remove-cell"} <= set(t) for t in tags)  # the page hides this machine's paths
    assert any({"parameters", "hide-input"} <= set(t) for t in tags)  # the knobs stay one click away


def test_report_shows_the_quick_profile_analogue(tmp_path):
    reg = [_card([
        {"id": "demo.pct", "table": "T1", "row": "ours", "column": "score (%)", "paper_value": 90.0,
         "profile": "paper", "parameters": {"n_experts": 4}, "metric": "score", "scale": 100,
         "quick": {"n_experts": 4}},
    ])]
    runs = tmp_path / "runs"
    _fake_run(runs, "q", 0, 0.5, profile="quick", params={"n_experts": 4})
    row = next(line for line in registry.render_report(runs_root=runs, papers=reg).splitlines() if "`demo.pct`" in line)
    assert "not run" in row.split("|")[3]  # no paper-profile run
    assert "50.00 (1 seed(s), cpu)" in row  # the quick run, scaled to %


# ----------------------------------------------------------------------------- issue 12: inputs, fixtures, extends

_PAPER_CARDS = [c for c in _cards() if "paper" in c.profiles]


@pytest.mark.parametrize("card", _PAPER_CARDS, ids=lambda c: c.name)
def test_paper_profile_without_its_data_stops_before_anything_runs(card, tmp_path, monkeypatch):
    """Defect 20: a missing dataset or weight file stops the run with the data_scripts command, before training."""
    monkeypatch.chdir(tmp_path)  # an empty folder: no data/, no weights
    out = tmp_path / "run"
    with pytest.raises(MissingInputsError) as err:
        run_notebook(ROOT / card.notebook_path, profile="paper", out_dir=out)
    message = str(err.value)
    assert "data_scripts/" in message, message
    assert "nothing ran" in message
    assert not (out / "notebook.ipynb").exists(), "the notebook must not start"


@pytest.mark.parametrize("card", _PAPER_CARDS, ids=lambda c: c.name)
def test_every_paper_profile_declares_its_inputs(card):
    active = [e for e in card.inputs if "data_scripts/" in e["command"] or "medmoe" in e["command"]]
    assert active, f"medmoe/papers/{card.name}/card.yaml declares no inputs for its paper profile"


def test_check_inputs_makes_relative_paths_absolute_and_skips_what_does_not_apply(tmp_path):
    (tmp_path / "data" / "QaTa").mkdir(parents=True)
    spec = [{"path": "{data_root}/QaTa", "what": "QaTa", "command": "python data_scripts/prepare_qata.py",
             "when": {"dataset": ["qata"]}},
            {"path": "{text_encoder}", "what": "CXR-BERT", "command": "python data_scripts/fetch.py cxr-bert",
             "unless": {"text_encoder": ["minilm"]}},
            {"path": "{weights}", "what": "ConvNeXt", "command": "python data_scripts/fetch.py convnext"}]
    params = {"dataset": "qata", "data_root": "data", "text_encoder": "minilm", "weights": ""}
    assert check_inputs(spec, params, base=tmp_path) == {"data_root": str(tmp_path / "data")}
    params["text_encoder"] = "hf/cxr-bert"
    with pytest.raises(MissingInputsError, match=r"CXR-BERT: .*hf/cxr-bert is not there; it is made by: "
                                                 r"python data_scripts/fetch.py cxr-bert"):
        check_inputs(spec, params, base=tmp_path)
    with pytest.raises(RunnerError, match="unknown parameter"):
        check_inputs([{"path": "{nope}", "what": "x", "command": "y"}], params, base=tmp_path)


def test_fixtures_placeholder_is_written_and_substituted(tmp_path, monkeypatch):
    written = []
    module = types.ModuleType("medmoe.papers.fakepaper.fixtures")
    module.write_rehearsal_fixtures = lambda root: written.append(root)
    monkeypatch.setitem(sys.modules, "medmoe.papers.fakepaper.fixtures", module)
    values = {"data_root": "{fixtures}/data", "lists": ["{fixtures}/a.txt"], "epochs": 1}
    out = materialise_fixtures("fakepaper", values, tmp_path / "fx")
    root = str((tmp_path / "fx").resolve())
    assert written == [Path(root)]
    assert out == {"data_root": f"{root}/data", "lists": [f"{root}/a.txt"], "epochs": 1}
    assert materialise_fixtures("fakepaper", {"epochs": 1}, tmp_path / "none") == {"epochs": 1}
    assert len(written) == 1  # nothing written when no value mentions {fixtures}
    with pytest.raises(RunnerError, match="does not exist"):
        materialise_fixtures("nosuchpaper", values, tmp_path / "fx2")


# What a rehearsal may change: sizes (counts, epochs, batch, image size, schedule lengths) and the configuration's
# size; every path it changes must point into its {fixtures}. Anything else (a dataset, a loss, a switch that
# skips a cell) would rehearse another code path than the paper profile's.
REHEARSAL_SIZES = {"image_size", "epochs", "patience", "distill_epochs", "warmup_epochs", "batch_size",
                   "effective_batch", "n_seeds", "distill_prompt_seeds", "holdout", "lr_milestones", "bench_batch",
                   "head_epochs", "ablation_seeds"}
REHEARSAL_CONFIGS = {"config", "base_config", "mome_config", "bench_config"}


@pytest.mark.parametrize("card", [c for c in _cards() if "rehearsal" in c.profiles], ids=lambda c: c.name)
def test_rehearsal_is_the_paper_profile_with_sizes_changed(card):
    """A rehearsal extends the paper profile: it changes sizes and paths only, never the data set or the protocol."""
    raw = yaml.safe_load((ROOT / "medmoe" / "papers" / card.name / "card.yaml").read_text())["profiles"]["rehearsal"]
    assert raw.get("extends") == "paper"
    paper, rehearsal = card.profiles["paper"], card.profiles["rehearsal"]
    bad = []
    for key, value in rehearsal.items():
        if paper.get(key, object()) == value:
            continue
        if isinstance(value, str) and "{fixtures}" in value:
            continue
        if key in REHEARSAL_SIZES:
            if key == "bench_batch" and not value:
                bad.append(f"{key}: 0 skips a cell the paper profile runs")
            continue
        if key in REHEARSAL_CONFIGS and str(value).endswith("_test"):
            continue
        bad.append(f"{key}: paper {paper.get(key, '<notebook default>')!r} -> rehearsal {value!r}")
    assert not bad, f"medmoe/papers/{card.name}/card.yaml rehearsal changes more than sizes and paths: {bad}"


@pytest.mark.parametrize("card", [c for c in _cards() if c.datasets != ["phantoms"]], ids=lambda c: c.name)
def test_every_chapter_that_reads_real_data_has_a_rehearsal(card):
    assert "rehearsal" in card.profiles, f"medmoe/papers/{card.name}/card.yaml needs a rehearsal profile"
    values = card.profiles["rehearsal"]
    assert any("{fixtures}" in str(v) for v in values.values()), "a rehearsal reads its {fixtures}, not real data"


def test_report_lists_each_chapters_claims_from_its_latest_quick_run(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "q", 0, 0.5, profile="quick")
    path = runs / "q" / "metrics.json"
    rec = json.loads(path.read_text())
    rec["claims"] = [paired_claim(claim="Balance helps.", measure="NMI", seeds=[0, 1, 2],
                                  treatment=("balanced", [0.5, 0.6, 0.55]), control=("plain", [0.1, 0.12, 0.11]))]
    path.write_text(json.dumps(rec))
    reg = [_card([], notebook="00_moe_primer", paper="Primer")]
    text = registry.render_report(runs_root=runs, papers=reg)
    row = next(line for line in text.splitlines() if "Balance helps." in line)
    assert "balanced 0.550" in row and "**supported**" in row
    assert "no quick run with claims" in registry.render_report(runs_root=tmp_path / "none", papers=reg)


@pytest.mark.parametrize("card", _cards(), ids=lambda c: c.name)
def test_papermill_reads_every_parameter_the_runner_reads(card):
    """papermill parses the parameters cell with its own regex (a '=' inside a comment defeats it): both must agree,
    or papermill warns "Passed unknown parameter" and its parameter help is lost."""
    import jupytext
    from papermill.translators import PythonTranslator

    nb = jupytext.read(ROOT / card.notebook_path)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert {p.name for p in PythonTranslator.inspect(cell)} == set(notebook_parameters(nb))


def test_report_counts_each_papers_cells_by_status(tmp_path):
    reg = [_card([
        {"id": "d.a", "table": "T", "row": "r", "column": "a", "paper_value": 0.9, "profile": "paper",
         "parameters": {"n_experts": 4}, "metric": "score"},
        {"id": "d.b", "table": "T", "row": "r", "column": "b", "paper_value": 0.9, "profile": "paper",
         "parameters": {"n_experts": 8}, "metric": "score", "quick": {}},
        {"id": "d.c", "table": "T", "row": "r", "column": "c", "paper_value": None, "profile": "paper",
         "parameters": {"n_experts": 8}, "metric": "score"},
        {"id": "d.d", "table": "T", "row": "r", "column": "d", "paper_value": 1.0, "profile": "paper",
         "parameters": {"n_experts": 8}, "metric": "score"},
        {"id": "d.e", "table": "T", "row": "r", "column": "e", "paper_value": 1.0, "profile": "paper",
         "parameters": {}, "metric": "score", "computed": False, "note": "no training split"},
    ])]
    runs = tmp_path / "runs"
    _fake_run(runs, "p", 0, 0.8, params={"n_experts": 4})
    _fake_run(runs, "q", 1, 0.5, profile="quick")
    text = registry.render_report(runs_root=runs, papers=reg)
    assert "5 cells: 1 reproduced, 1 quick analogue, 1 not run, 1 not public, 1 not computed." in text
    assert "*not public*: the paper prints no number there" in text


def test_a_profiles_yaml_entry_serves_a_notebook_without_a_card_and_cards_still_serve_the_rest():
    """notebooks/profiles.yaml holds the comparison chapter's profiles; the paper chapters beside it keep their
    cards' profiles, and a notebook named by neither gets an error naming both places."""
    root = Path(__file__).resolve().parent.parent
    assert set(load_profiles(root / "notebooks/05_comparison.py")) == {"quick", "smoke"}
    assert load_profiles(root / "notebooks/01_mlmoe.py") == load_card_profiles("01_mlmoe")
    with pytest.raises(RunnerError, match="no entry for notebook 'zz_nothing'.*no paper card"):
        load_profiles(root / "notebooks/zz_nothing.py")
