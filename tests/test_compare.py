"""medmoe.compare: the comparison chapter's tables and FLOP counts."""

from __future__ import annotations

import json

import pytest

from medmoe.claims import chance_from_null, paired_claim
from medmoe.compare import (
    DESIGNS,
    build_with_experts,
    design_table,
    forward_flops,
    latest_runs,
    measured_table,
    specialisation_record,
)


def _write(root, stem, *, started, status="ok", profile="quick", claims=None, folder=None):
    folder = root / (folder or stem)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"notebook": f"notebooks/{stem}.py", "status": status,
                                                     "profile": profile, "started": started, "metrics": {},
                                                     "claims": claims or []}))


def _claims():
    head = paired_claim(claim="Experts help.", measure="Dice", seeds=[0, 1, 2], treatment=("MoE", [0.8, 0.82, 0.81]),
                        control=("one", [0.78, 0.79, 0.785]))
    spec = paired_claim(claim="Routing follows modality.", measure="NMI(expert; modality)", seeds=[0, 1, 2],
                        treatment=("router", [0.5, 0.6, 0.55]), control=("shuffled", [0.01, 0.02, 0.0]),
                        chance=chance_from_null(0.55, [0.01] * 99))
    return [head, spec]


def test_latest_runs_takes_the_newest_successful_run_of_the_profile(tmp_path):
    _write(tmp_path, "02_medmoe", started="2026-01-01", folder="a")
    _write(tmp_path, "02_medmoe", started="2026-02-01", folder="b")
    _write(tmp_path, "02_medmoe", started="2026-03-01", status="failed", folder="c")
    _write(tmp_path, "02_medmoe", started="2026-04-01", profile="smoke", folder="d")
    _write(tmp_path / "deeper", "02_medmoe", started="2026-05-01", folder="e")  # not a chapter folder of this root
    runs = latest_runs(tmp_path)
    assert list(runs) == ["02_medmoe"] and runs["02_medmoe"]["started"] == "2026-02-01"


def test_latest_runs_names_an_unreadable_record(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable run record"):
        latest_runs(tmp_path)


def test_measured_table_reads_headline_and_specialisation(tmp_path):
    _write(tmp_path, "02_medmoe", started="2026-01-01", claims=_claims())
    table = measured_table(latest_runs(tmp_path))
    assert list(table.index) == [d.paper for d in DESIGNS.values()]
    row = table.loc["MedMoE"]
    assert row["verdict"] == "supported" and row["gain over control"].startswith("+0.025 ± 0.005 (n = 3)")
    assert "NMI 0.550 ± 0.050 vs chance 0.010" in row["specialisation (NMI vs permutation)"]
    assert table.loc["MoME", "specialisation (NMI vs permutation)"] == "no quick run in this build"


def test_specialisation_record_needs_nmi_and_a_chance_level():
    head, spec = _claims()
    assert specialisation_record([head, spec]) is spec
    assert specialisation_record([head]) is None


def test_design_table_has_one_row_per_paper():
    assert list(design_table().index) == ["MLMoE", "MedMoE", "SegMoTE", "MoME"]


@pytest.mark.parametrize("paper, n", [("nope", 2), ("mlmoe", 0), ("mome", 6)])
def test_build_with_experts_rejects_what_the_design_cannot_have(paper, n):
    with pytest.raises(ValueError):
        build_with_experts(paper, n, config=None if paper == "nope" else f"{paper}_test")


def test_flops_grow_for_a_soft_gate_and_stay_flat_for_top_1():
    """MLMoE's soft gate runs every expert, MedMoE's hard router one: the counts must show it."""
    mlmoe = [forward_flops(*build_with_experts("mlmoe", n, config="mlmoe_test")) for n in (1, 4)]
    medmoe = [forward_flops(*build_with_experts("medmoe", n, config="medmoe_test")) for n in (1, 4)]
    assert mlmoe[1] > mlmoe[0]
    assert medmoe[1] == pytest.approx(medmoe[0], rel=1e-3)
