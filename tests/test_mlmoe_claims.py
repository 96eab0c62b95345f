"""Issue 13, Chapter 1 (MLMoE): the gate pools the report over its real tokens, the probes of what the gate reads
(text sensitivity, NMI against a permutation baseline), gradient x input per word and expert, and the registry's
quick analogues of Tables II and III."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from medmoe.backbones import build_text_encoder, encode_cached
from medmoe.claims import chance_from_null
from medmoe.data.phantoms import PhantomDataset2D
from medmoe.papers import load_card
from medmoe.papers.mlmoe.data import TextFeatureDataset
from medmoe.papers.mlmoe.model import build_model, pool_text
from medmoe.papers.mlmoe.recipe import (
    SegLoss,
    evaluate,
    expert_word_gradient_x_input,
    gate_attribute_nmi,
    gate_text_sensitivity,
    report_attributes,
    reword_report,
    text_present_step,
)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_mlmoe.py"


def _gate(m, image, text, mask):
    return m(image, text, text_mask=mask).gates[0].weights


def test_gate_pools_real_tokens_only_and_padding_cannot_move_it():
    torch.manual_seed(0)
    m = build_model("mlmoe_test").eval()
    image, text = torch.randn(2, 1, 64, 64), torch.randn(2, 8, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1] * 8])
    noisy = text.clone()
    noisy[0, 3:] = torch.randn(5, 32) * 10  # change only the padding positions of report 0
    with torch.no_grad():
        a, b = _gate(m, image, text, mask), _gate(m, image, noisy, mask)
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.allclose(_gate(m, image, text, None), _gate(m, image, noisy, None), atol=1e-4)
        # all_tokens: the mask is ignored, so padding moves the gate again
        m_all = build_model("mlmoe_test", gate_text_pool="all_tokens").eval()
        m_all.load_state_dict(m.state_dict())
        assert not torch.allclose(_gate(m_all, image, text, mask), _gate(m_all, image, noisy, mask), atol=1e-4)
    assert torch.allclose(pool_text(text, mask)[0], text[0, :3].mean(0))
    with pytest.raises(ValueError, match="gate_text_pool"):
        build_model("mlmoe_test", gate_text_pool="cls")
    with pytest.raises(ValueError, match="text_mask must have shape"):
        m(image, text, text_mask=mask[:, :4])


def test_steps_and_evaluation_carry_the_mask():
    torch.manual_seed(0)
    m = build_model("mlmoe_test")
    feats, mask = torch.randn(3, 8, 32), torch.tensor([[1] * 4 + [0] * 4] * 3)
    ds = TextFeatureDataset([{"image": torch.randn(1, 64, 64), "mask": (torch.rand(1, 64, 64) > 0.8).float()}
                             for _ in range(3)], feats, mask)
    assert torch.equal(ds[0]["text_mask"], mask[0])
    batch = {k: torch.stack([ds[i][k] for i in range(3)]) for k in ("image", "mask", "text_features", "text_mask")}
    assert torch.isfinite(text_present_step(m, batch, seg_loss=SegLoss())["loss"])
    r = evaluate(m, ds)
    with torch.no_grad():
        m.eval()
        want = m(batch["image"], feats, text_mask=mask).gates[0].weights
    assert torch.allclose(r["gates"][0], want, atol=1e-5)
    r2 = evaluate(m, ds, text=(feats[0], mask[0]))  # a fixed prompt with its attention mask
    assert 0 <= r2["global_dice"] <= 1
    with pytest.raises(ValueError, match="attention mask"):
        evaluate(m, ds, text=(feats[0], mask[0, :3]))


def test_rewording_keeps_every_attribute_and_changes_the_words():
    reports = PhantomDataset2D(n=40, modalities=("cxr",), size=32, seed=3, channels=1).reports
    reworded = [reword_report(r) for r in reports]
    assert report_attributes(reworded) == report_attributes(reports)
    for a, b in zip(reports, reworded):
        assert a != b and set(re.findall(r"[a-z]+", b.lower())) != set(re.findall(r"[a-z]+", a.lower()))
    attrs = report_attributes(reports)
    assert {"bilateral", "unilateral"} >= set(attrs["laterality"]) and "unstated" not in attrs["count"]


def test_nmi_probe_against_its_permutation_baseline():
    label = ["left", "right"] * 20
    routed = torch.nn.functional.one_hot(torch.tensor([0, 1] * 20), 3).float()
    r = gate_attribute_nmi([routed, routed], label, n_perm=50)
    assert r["nmi"] == pytest.approx(1.0) and r["chance"] < 0.2 and len(r["null"]) == 50
    assert chance_from_null(r["nmi"], r["null"])["p"] == pytest.approx(1 / 51)
    collapsed = gate_attribute_nmi([torch.tensor([[0.9, 0.1]] * 40)], label, n_perm=10)
    assert collapsed["nmi"] == 0.0 and collapsed["top_share"] == 1.0


@pytest.fixture(scope="module")
def encoder():
    return build_text_encoder("random-bert-tiny", max_length=8)


def test_text_sensitivity_probe(encoder):
    torch.manual_seed(0)
    m = build_model("mlmoe_test", text_in_width=encoder.width, text_width=encoder.width)
    texts = ["Bilateral pulmonary infection, two infected areas.", "Unilateral pulmonary infection, one infected area.",
             "Bilateral pulmonary infection, three infected areas."]
    f = encode_cached(encoder, texts)
    data = TextFeatureDataset([{"image": torch.randn(1, 64, 64)} for _ in texts], f.hidden, f.mask)
    r = gate_text_sensitivity(m, data, encoder, texts, seed=0)
    for key in ("swap", "reword", "between_images", "text_swap", "text_reword"):
        assert r[key].shape == (3,) and bool(((r[key] >= -1e-6) & (r[key] <= 2)).all()), key
    assert all(texts[int(j)] != t for j, t in zip(r["partner"], texts))
    with pytest.raises(ValueError, match="no gate"):
        gate_text_sensitivity(build_model("mlmoe_test", num_experts=0, text_in_width=encoder.width,
                                          text_width=encoder.width), data, encoder, texts)


def test_gradient_x_input_matches_autograd_by_hand(encoder):
    torch.manual_seed(0)
    m = build_model("mlmoe_test", text_in_width=encoder.width, text_width=encoder.width)
    text = "upper left lung"
    words, attr = expert_word_gradient_x_input(m, encoder, text, stage=1)
    assert attr.shape == (m.config.num_experts, len(words))
    f = encode_cached(encoder, [text]).hidden.clone().requires_grad_(True)
    y = m.guides[1].experts(m.text_proj(f))[0, 2].sum()
    (g,) = torch.autograd.grad(y, f)
    per_token = (g * f).sum(-1)[0]
    spans = encoder.words(text)
    assert torch.allclose(attr[2], torch.stack([per_token[pos].sum() for _, pos in spans]), atol=1e-5)


def _notebook_defaults() -> dict:
    tree = ast.parse(NOTEBOOK.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "device":
            break
    return out


def test_quick_cells_name_what_the_quick_run_measures():
    """Every cell with a quick analogue matches the quick profile's parameters, and its metric is one the notebook
    saves; Table II reads the ablations trained inside the run."""
    card = load_card("mlmoe")
    params = {**_notebook_defaults(), **card.profiles["quick"]}
    source = NOTEBOOK.read_text()
    for c in card.cells:
        if c.get("quick") is None:
            continue
        assert all(params.get(k) == v for k, v in c["quick"].items()), c["id"]
        stem = c["metric"].split("[")[0]
        assert f'"{stem}' in source or f"'{stem}" in source or f'f"{stem}' in source, c["id"]
    t2 = [c for c in card.cells if c["table"] == "Table II" and "w/o MLMoE" not in c["row"]]
    assert len(t2) == 8 and all(c["metric"].startswith("ablation_global_") and c["quick"] == {} for c in t2)
    for c in t2:
        row = c["metric"].split("[")[1].rstrip("]")
        assert row in params["ablations"], c["id"]
