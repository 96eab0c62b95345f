"""Chapter 3's paper path: the card's paper and rehearsal profiles, declared inputs, registry notes, and the rehearsal
run end to end on fixtures in the real formats (medmoe/papers/segmote/fixtures.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from medmoe.data.sources import get_source
from medmoe.papers import load_card
from medmoe.papers.segmote import build, count
from medmoe.papers.segmote.data import NOT_IN_MEDSEG_HQ, IMISDataset
from medmoe.papers.segmote.fixtures import SAM_FILE, write_rehearsal_fixtures
from medmoe.papers.segmote.model import CONFIGS, build_sam, load_sam_checkpoint
from medmoe.papers.segmote.prepare import BUILDERS
from medmoe.repro.runner import MissingInputsError, check_inputs, run_notebook

ROOT = Path(__file__).resolve().parents[1]
CARD = load_card("segmote")


def _cell(cell_id: str) -> dict:
    return next(c for c in CARD.cells if c["id"] == cell_id)


def test_paper_profile_trains_2_47_m_parameters_and_the_registry_says_so():
    """Defect 13: segmote_paper's learnable count, measured with the library's count, is what the registry states."""
    with torch.device("meta"):  # sizes only
        trainable = count(build("segmote_paper"))["trainable"]
    assert f"{trainable / 1e6:.2f} M" == "2.47 M"
    cell = _cell("segmote.t3.learnable.paper_profile")
    assert cell["metric"] == "sam_b_trainable_params_m" and cell["paper_value"] == 17 and "2.47 M" in cell["note"]
    assert "2.47 M" in _cell("segmote.t3.learnable")["note"]
    assert CARD.profiles["paper"]["config"] == "segmote_paper"


def test_chaos_ct_is_not_trained_on_by_the_paper_profile():
    """Defect 13: CHAOS CT is not a MedSeg-HQ source."""
    train = CARD.profiles["paper"]["train_codes"].split(",")
    assert "chaos_ct" in NOT_IN_MEDSEG_HQ and not set(train) & NOT_IN_MEDSEG_HQ
    assert {"chaos_t1", "chaos_t2"} <= set(train)
    codes = {b.code for b in BUILDERS.values()}
    assert set(train) <= codes and set(CARD.profiles["paper"]["test_codes"].split(",")) <= codes


def test_segthor_cell_says_which_average_it_is_compared_with():
    """Defect 14: the paper's SegTHOR organ values average to 81.07, not the 83.39 it reports."""
    organs = {"esophagus": 81.84, "heart": 74.51, "aorta": 87.40, "trachea": 80.53}
    assert round(sum(organs.values()) / 4, 2) == 81.07
    cell = _cell("segmote.t1.segthor.box")
    assert cell["paper_value"] == 83.39 and "81.07" in cell["note"] and "83.39" in cell["note"]


@pytest.mark.parametrize("q", [4, 8])
def test_table4_query_cells_set_ppt_queries(q):
    """Defect 11: Table 4's Q = 4 and Q = 8 rows are runnable cells."""
    cells = [c for c in CARD.cells if c["parameters"].get("ppt_queries") == q]
    assert {c["metric"] for c in cells} == {"dice_free_isic2018_task1", "dice_free_sz_cxr", "dice_free_isles22"}


def test_weight_decay_of_the_paper_profile_is_the_codes():
    """Defect 12."""
    assert CARD.profiles["paper"]["weight_decay"] == 1e-5


def test_declared_inputs_name_real_commands_and_stop_a_run_without_data(tmp_path):
    """Defect 20: every input the paper profile reads is declared, with a command whose script arguments exist."""
    names = {b.key for b in BUILDERS.values()}
    for entry in CARD.inputs:
        for source in re.findall(r"fetch\.py (?:--show )?([a-z0-9_]+)", entry["command"]):
            get_source(source)  # raises for an unknown catalogue name
        for built in re.findall(r"build_medseg_hq\.py ([a-z0-9_]+)", entry["command"]):
            assert built in names, entry["command"]
    paper = dict(CARD.profiles["paper"])
    paper["sam_checkpoint"] = str(tmp_path / "weights" / "sam" / "sam_vit_b_01ec64.pth")
    paper["data_root"] = str(tmp_path / "medseg_hq")
    with pytest.raises(MissingInputsError) as info:
        check_inputs(CARD.inputs, paper)
    message = str(info.value)
    assert "sam_vit_b_01ec64.pth" in message and "fetch.py sam_vit_b" in message
    for code in paper["test_codes"].split(","):
        assert f"{code}/dataset.json" in message, code
    # the rehearsal's fixtures provide every one of them
    write_rehearsal_fixtures(tmp_path)
    check_inputs(CARD.inputs, paper)
    # a run with other folders checks only the data root (the loader names a missing <CODE>/dataset.json)
    check_inputs(CARD.inputs, {**paper, "test_codes": "isic2018_task1"})


def test_rehearsal_profile_is_the_paper_profile_with_smaller_sizes():
    paper, rehearsal = CARD.profiles["paper"], CARD.profiles["rehearsal"]
    changed = {k for k in rehearsal if rehearsal[k] != paper.get(k)}
    assert changed == {"config", "sam_checkpoint", "data_root", "image_size", "epochs", "batch_size", "lr_milestones"}
    assert "{fixtures}" in rehearsal["sam_checkpoint"] and "{fixtures}" in rehearsal["data_root"]


def test_fixture_checkpoint_is_a_1024_px_sam_that_the_loader_resizes(tmp_path):
    write_rehearsal_fixtures(tmp_path)
    state = torch.load(tmp_path / SAM_FILE, map_location="cpu", weights_only=True)
    vit_b = build_sam(CONFIGS["segmote_paper"].__class__(**{**CONFIGS["segmote_paper"].__dict__, "image_size": 1024}))
    real_keys = set(vit_b.state_dict())
    del vit_b
    assert set(state) <= real_keys  # SAM's own key names (fewer ViT blocks)
    assert state["image_encoder.pos_embed"].shape[1:3] == (64, 64)  # 1024 px / patch 16
    model = build("segmote_test", image_size=64)
    report = load_sam_checkpoint(model.sam, tmp_path / SAM_FILE)
    assert "image_encoder.pos_embed" in report.resized
    for code in CARD.profiles["paper"]["train_codes"].split(","):
        assert IMISDataset(root=tmp_path / "medseg_hq" / code, split="training").records


def test_rehearsal_runs_the_paper_path_end_to_end(tmp_path):
    """The rehearsal profile through the runner: fixtures written, inputs checked, the SAM checkpoint loaded and
    resized, every folder's loaders, training, the evaluation protocol, the figure and registry cells."""
    rec = run_notebook(ROOT / "notebooks" / "03_segmote.py", profile="rehearsal", out_dir=tmp_path / "run")
    metrics = rec["metrics"]
    for cell in CARD.cells:
        if cell["profile"] == "paper" and not cell["parameters"]:
            assert 0.0 <= metrics[cell["metric"]] <= 1.0, cell["id"]
    assert metrics["sam_unchanged"] is True and metrics["sam_b_trainable_params_m"] == pytest.approx(2.467936)
