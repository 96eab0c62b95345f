"""Chapter 0 (the MoE primer): its loss table, its routing statistics over seeds, and its evidence records."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from medmoe.claims import VERDICT_RULE
from medmoe.moe import nmi_null
from medmoe.papers.primer.recipe import loss_table, mean_sd_table, routing_stats
from medmoe.repro.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_moe_primer.py"


def test_the_z_loss_column_reads_the_router_logits():
    """Issue 13: the z-loss was applied to log-probabilities, whose logsumexp is log 1 = 0 for every gate."""
    logits = {"uniform": torch.zeros(4, 4), "confident": 10 * torch.eye(4), "shifted": 10 * torch.eye(4) + 5}
    table = loss_table(logits)
    z = table["z-loss (ST-MoE)"]
    for name, lg in logits.items():
        assert z[name] == pytest.approx(float((torch.logsumexp(lg, -1) ** 2).mean()), rel=1e-6)
        assert z[name] > 0.1  # on log-probabilities it would be 0.0
    assert z["uniform"] == pytest.approx(math.log(4) ** 2, rel=1e-6)
    # Shifting every logit leaves the softmax, and so every other loss, unchanged; only the z-loss grows.
    others = [c for c in table.columns if c != "z-loss (ST-MoE)"]
    assert table.loc["shifted", others].tolist() == pytest.approx(table.loc["confident", others].tolist(), abs=1e-6)
    assert z["shifted"] > z["confident"] + 50


def test_the_notebook_builds_its_loss_table_from_logits():
    source = NOTEBOOK.read_text()
    assert not re.search(r"router_z_loss\([^)]*\.log\(\)", source), "z-loss fed log-probabilities"
    assert "loss_table(cases)" in source


def test_the_notebook_measures_over_three_paired_seeds_by_default():
    params = NOTEBOOK.read_text().split('# %% tags=["parameters"]', 1)[1].split("# %%", 1)[0]
    assert re.search(r"^n_seeds = (\d+)", params, flags=re.M).group(1) == "3"
    assert "## 6. The claim, the control, the verdict" in NOTEBOOK.read_text()


def test_nmi_null_keeps_the_routing_counts_and_is_seeded():
    r = torch.tensor([0, 1, 2, 0] * 10)
    label = torch.tensor([0, 1, 2, 3] * 10)
    a, b = nmi_null(r, label, n_perm=30, seed=3), nmi_null(r, label, n_perm=30, seed=3)
    assert a == b and len(a) == 30
    assert all(0.0 <= v <= 1.0 for v in a)
    with pytest.raises(ValueError, match="n_perm"):
        nmi_null(r, label, n_perm=0)


def test_routing_stats_sees_collapse_and_specialisation():
    n = 40
    labels = torch.arange(n) % 4
    probs = torch.full((n, 4), 0.25)
    collapsed = routing_stats({"dice": torch.ones(n), "expert": torch.zeros(n, dtype=torch.long), "probs": probs,
                               "modality": labels}, labels, 4, n_perm=20)
    assert collapsed["experts_used"] == 1 and collapsed["load_entropy"] == 0.0 and collapsed["nmi"] == 0.0
    special = routing_stats({"dice": torch.ones(n), "expert": labels, "probs": probs, "modality": labels},
                            labels, 4, n_perm=20)
    assert special["experts_used"] == 4 and special["load_entropy"] == pytest.approx(1.0)
    assert special["nmi"] == pytest.approx(1.0) and special["nmi_chance"] < 0.2
    assert special["h_given_label"] == pytest.approx(0.0, abs=1e-9) and collapsed["h_given_label"] == 0.0
    # Two modalities merged into one expert: the modality still decides the expert, NMI = H(expert) / H(modality).
    merged = routing_stats({"dice": torch.ones(n), "expert": labels // 2, "probs": probs, "modality": labels},
                           labels, 4, n_perm=5)
    assert merged["h_given_label"] == pytest.approx(0.0, abs=1e-9) and merged["nmi"] == pytest.approx(0.5)
    mixed = routing_stats({"dice": torch.ones(n), "expert": torch.arange(n) % 3, "probs": probs,
                           "modality": labels}, labels, 4, n_perm=5)
    assert mixed["h_given_label"] > 0.5
    assert special["table"].shape == (4, 4) and special["table"].trace() == n


def test_mean_sd_table_is_mean_and_sample_sd_per_variant():
    rows = [{"variant": v, "x": x} for v, x in [("a", 1.0), ("b", 5.0), ("a", 2.0), ("b", 5.0), ("a", 3.0)]]
    t = mean_sd_table(rows, by="variant", columns={"x": "X"}, digits=2)
    assert t.index.tolist() == ["a", "b"]
    assert t.loc["a", "X"] == "2.00 ± 1.00" and t.loc["b", "X"] == "5.00 ± 0.00"
    assert mean_sd_table(rows[:1], by="variant", columns={"x": "X"}).loc["a", "X"] == "1.000 ± n/a"


@pytest.mark.slow
def test_the_smoke_run_saves_its_claims(tmp_path):
    """The evidence records land in metrics.json under `claims`, headline first, with the shared rule."""
    assert main(["run", str(NOTEBOOK), "--profile", "smoke", "-p", "n_seeds", "2", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "metrics.json").read_text())
    claims = rec["claims"]
    assert len(claims) >= 2 and "Switch" in claims[0]["claim"]
    for c in claims:
        assert {"claim", "measure", "treatment", "control", "delta", "chance", "verdict"} <= set(c)
        assert c["seeds"] == [0, 1] and c["delta"]["n"] == 2 and len(c["treatment"]["values"]) == 2
        assert c["verdict"] == "not shown"  # two seeds are too few for any verdict
        assert c["rule"] == VERDICT_RULE
    assert claims[0]["chance"]["name"] == "permutation" and 0 < claims[0]["chance"]["p"] <= 1
    assert rec["metrics"]["seeds"] == [0, 1] and rec["metrics"]["headline_verdict"] == "not shown"
