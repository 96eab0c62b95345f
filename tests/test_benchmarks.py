"""The GPU benchmark script (``python -m medmoe.benchmarks.paper_steps``) runs on the CPU with the ``_test``
configurations and reports what the book's environment page records (issue 12, "Ready for a GPU")."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from medmoe.benchmarks import paper_steps

ROOT = Path(__file__).resolve().parents[1]

FIELDS = {"paper", "phase", "config", "device", "date", "precision", "weights", "batch_size", "samples_per_s",
          "peak_memory_mb", "memory_kind", "samples_per_epoch", "samples_source", "epochs", "epochs_source", "runs",
          "runs_source", "projected_hours", "projection"}


def test_paper_steps_runs_one_paper_on_the_cpu(tmp_path):
    out, md = tmp_path / "r.json", tmp_path / "t.md"
    report = paper_steps.main(["--papers", "segmote", "--device", "cpu", "--steps", "1", "--warmup", "1",
                               "--out", str(out), "--markdown", str(md)])
    assert report["size"] == "test" and len(report["rows"]) == 1
    row = report["rows"][0]
    assert FIELDS <= set(row)
    assert row["config"] == "segmote_test" and row["device"].startswith("cpu") and row["precision"] == "fp32"
    assert row["samples_per_s"] > 0 and row["peak_memory_mb"] > 0 and row["projected_hours"] > 0
    # the projection is samples per epoch x epochs x runs (from the card's paper profile) / samples/s
    assert row["batch_size"] == 10 and row["epochs"] == paper_steps.profile_parameters("segmote")["epochs"]
    want = row["samples_per_epoch"] * row["epochs"] * row["runs"] / row["samples_per_s"] / 3600
    assert row["projected_hours"] == pytest.approx(want)
    saved = json.loads(out.read_text())
    assert saved["rows"][0]["samples_per_s"] == pytest.approx(row["samples_per_s"])
    assert "training steps only" in saved["note"] and "not the paper's cost" in saved["note"]
    table = md.read_text()
    assert "| segmote | SegMoTE" in table and "training steps only" in table


def test_every_chapter_has_a_phase_with_a_cited_epoch_size():
    assert {p.paper for p in paper_steps.PHASES} == set(paper_steps.PAPER_ORDER)
    for p in paper_steps.PHASES:
        params = paper_steps.profile_parameters(p.paper)
        assert p.samples_per_epoch > 0 and "(" in p.samples_source, p
        assert p.epochs_key in params and "batch_size" in params, p
        assert isinstance(p.runs, int) or p.runs in params, p


def test_unknown_paper_is_refused():
    with pytest.raises(ValueError, match="unknown paper"):
        paper_steps.run(papers=("primer",), device="cpu")


def test_the_parameters_cell_reader_agrees_with_the_runner():
    """Without jupytext (the GPU image has none) the script reads the notebook's parameters cell itself."""
    from medmoe.papers import load_card
    from medmoe.repro.runner import resolve_parameters

    for paper in paper_steps.PAPER_ORDER:
        card = load_card(paper)
        full = resolve_parameters(ROOT / card.notebook_path, "paper")[2]
        mine = {**paper_steps._parameters_cell(ROOT / card.notebook_path), **card.profiles["paper"]}
        assert {k: v for k, v in full.items() if k not in ("run_key", "profile")} == \
            {k: v for k, v in mine.items() if k not in ("run_key", "profile")}, paper


def test_a_failing_phase_is_reported_and_the_others_still_run(monkeypatch, tmp_path):
    def broken(*args):
        raise RuntimeError("Expected all tensors to be on the same device")

    phases = tuple(dataclasses.replace(p, setup=broken) if p.name == "Universal Model" else p
                   for p in paper_steps.PHASES)
    monkeypatch.setattr(paper_steps, "PHASES", phases)
    with pytest.raises(SystemExit, match="1 phase.*Universal Model.*same device"):
        paper_steps.main(["--papers", "mome", "--device", "cpu", "--steps", "1", "--warmup", "0",
                          "--markdown", str(tmp_path / "t.md")])
    table = (tmp_path / "t.md").read_text()
    assert "| mome | MoME |" in table and "FAILED mome, Universal Model: RuntimeError" in table
