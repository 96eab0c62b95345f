"""`medmoe run NOTEBOOK --gpus N`: a chapter as N data-parallel processes under `accelerate launch` (issue 12).

On this machine there is no GPU, so the two processes run on the CPU with gloo (`--cpu`), the same code path as
8 GPUs with NCCL except for the backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmoe.papers import cards
from medmoe.repro.runner import RESULTS_FILE, RunnerError, run_notebook, save_results

ROOT = Path(__file__).resolve().parents[1]
PRIMER = ROOT / "notebooks" / "00_moe_primer.py"


def test_a_chapter_runs_as_two_processes_and_rank0_alone_writes(tmp_path):
    out = tmp_path / "run"
    rec = run_notebook(PRIMER, profile="smoke", out_dir=out, gpus=2, cpu=True)
    assert rec["status"] == "ok" and rec["processes"] == 2
    work = out / "distributed"
    assert (work / "script.py").is_file() and (work / "notebook.ipynb").is_file()
    script = (work / "script.py").read_text()
    assert 'profile = "smoke"' in script  # the generated script carries the injected parameters
    # Both ranks joined one process group: Accelerate saved a random state per process in every checkpoint.
    states = sorted(p.name for p in out.rglob("last/random_states_*.pkl"))
    assert states and {"random_states_0.pkl", "random_states_1.pkl"} <= set(states)
    executed = json.loads((out / "notebook.ipynb").read_text())
    images = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "rank 0's executed notebook has its figures"
    assert list(out.glob("*.ipynb")) == [out / "notebook.ipynb"]  # one executed notebook, from rank 0
    assert json.loads((out / "metrics.json").read_text())["metrics"] == rec["metrics"]


def test_results_are_written_by_rank0_only(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    save_results(tmp_path, {"dice": 0.5})
    assert not (tmp_path / RESULTS_FILE).exists()
    monkeypatch.setenv("RANK", "0")
    save_results(tmp_path, {"dice": 0.5})
    assert json.loads((tmp_path / RESULTS_FILE).read_text())["metrics"] == {"dice": 0.5}


def test_more_gpus_than_the_machine_has_is_a_clear_error(tmp_path):
    torch = pytest.importorskip("torch")
    n = torch.cuda.device_count() + 2  # >= 2, so the multi-process path is asked for
    with pytest.raises(RunnerError, match=rf"asked for {n} GPUs but this machine has .*--cpu"):
        run_notebook(PRIMER, profile="smoke", out_dir=tmp_path, gpus=n)


@pytest.mark.parametrize("gpus", [0, -2, 1.5])
def test_gpus_must_be_a_positive_whole_number(tmp_path, gpus):
    with pytest.raises(RunnerError, match="gpus must be a whole number"):
        run_notebook(PRIMER, profile="smoke", out_dir=tmp_path, gpus=gpus)


@pytest.mark.parametrize("card", [c for c in cards() if "rehearsal" in c.profiles], ids=lambda c: c.name)
def test_every_paper_path_runs_as_two_processes(card, tmp_path):
    """The paper profile's path (its rehearsal) under DDP. This caught step functions that call model methods
    other than forward (MedMoE's aux_loss, SegMoTE's encode/decode): fit now runs the whole step inside DDP."""
    out = tmp_path / "run"
    rec = run_notebook(ROOT / card.notebook_path, profile="rehearsal", out_dir=out, gpus=2, cpu=True)
    assert rec["status"] == "ok" and rec["processes"] == 2
    assert list(out.rglob("last/random_states_1.pkl")), "the second process trained in the same group"
