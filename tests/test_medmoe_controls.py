"""MedMoE (Chapter 2, issue 13): the K = 1 control, the trainable text projection, routing against shuffled routing,
the scale weights beta, and phantoms whose lesion scale differs by modality."""

from __future__ import annotations

import pytest
import torch

from medmoe.backbones import build_text_encoder
from medmoe.data import phantoms
from medmoe.data.phantoms import PhantomDataset2D, make_phantom_2d
from medmoe.papers.medmoe import recipe as R
from medmoe.papers.medmoe.data import LESION_SCALE_BY_MODALITY, PHANTOM_ANALOGUE, lesion_scale
from medmoe.papers.medmoe.model import build_model, encode_reports


@pytest.fixture(scope="module")
def tiny_text():
    return build_text_encoder("random-bert-tiny", max_length=12, layers="sum_last4")


def _batch(text, k_labels):
    r = encode_reports(text, ["a b", "c d e", "f"])
    return {"image": torch.rand(3, 3, 64, 64), "words": r.words, "sentence": r.sentence, "cap_len": r.cap_lens,
            "modality": torch.tensor(k_labels)}


def test_k1_control_trains_without_aux_and_ignores_modality_labels(tiny_text):
    torch.manual_seed(0)
    m = build_model("medmoe_test", num_experts=1)
    out = R.pretrain_step(m, _batch(tiny_text, [0, 3, 5]))  # labels K = 1 could not route: not read
    assert float(out["aux"]) == 0.0
    w = R.LossWeights()
    assert torch.allclose(out["loss"], w.local * out["local"] + w.global_ * out["global"])
    out["loss"].backward()
    assert any(p.grad is not None for p in m.experts[0].parameters())


def test_text_projection_starts_as_identity_keeps_padding_and_learns(tiny_text):
    torch.manual_seed(0)
    m = build_model("medmoe_test", text_projection=True)
    plain = build_model("medmoe_test")
    assert plain.text_proj is None and R.count(plain)["text_projection"] == 0
    assert R.count(m)["text_projection"] == 32 * 32
    r = encode_reports(tiny_text, ["a b", "c d e"])
    assert torch.allclose(m.project_text(r.words), r.words)
    with torch.no_grad():
        m.text_proj.weight.add_(torch.randn(32, 32) * 0.1)
    pw = m.project_text(r.words)
    assert torch.equal(pw[r.words.abs().sum(-1) == 0], torch.zeros_like(pw[r.words.abs().sum(-1) == 0]))
    assert torch.allclose(m.project_text(r.sentence), pw.mean(1), atol=1e-5)  # t_g of the projected words
    out = R.pretrain_step(m, _batch(tiny_text, [0, 1, 2]))
    out["loss"].backward()
    assert m.text_proj.weight.grad is not None and m.text_proj.weight.grad.abs().sum() > 0


def test_routing_specialisation_is_not_fooled_by_one_expert():
    modality = torch.arange(5).repeat(20)
    one = R.routing_specialisation(torch.zeros(100, dtype=torch.long), modality, num_experts=5, n_perm=20)
    assert one["nmi"] == 0.0 and one["matched"] == pytest.approx(0.2)
    perfect = R.routing_specialisation((modality + 2) % 5, modality, num_experts=5, n_perm=50, seed=1)
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["matched"] == 1.0
    assert perfect["nmi_null_p95"] < 0.3 and perfect["matched_null_p95"] < 0.5
    assert len(perfect["nmi_null"]) == 50 == len(perfect["matched_null"])
    with pytest.raises(ValueError, match="same"):
        R.routing_specialisation(torch.zeros(3, dtype=torch.long), modality, num_experts=5)


def test_scale_attention_gives_beta_per_image_on_and_off_the_lesion():
    torch.manual_seed(0)
    m = build_model("medmoe_test").eval()
    ds = PhantomDataset2D(n=6, modalities=("cxr", "us"), size=64, seed=0, channels=3)
    b = R.scale_attention(m, ds, batch_size=4)
    assert b["beta"].shape == (6, 4) and torch.allclose(b["beta"].sum(1), torch.ones(6), atol=1e-5)
    assert b["expert"].shape == (6,) and b["modality"].tolist() == ds.modality_labels
    assert torch.allclose(b["beta_lesion"].sum(1), torch.ones(6), atol=1e-5)
    with torch.no_grad():
        direct = m(torch.stack([ds[i]["image"] for i in range(6)])).scale_weights.mean(1)
    assert torch.allclose(b["beta"], direct, atol=1e-5)


def test_lesion_scale_changes_sizes_inside_the_block_only():
    before = dict(phantoms._LESION_SIZE)
    area = lambda: make_phantom_2d(modality="us", seed=1, size=64, lesion_regions=("centre",)).lesion.sum()  # noqa: E731
    default = area()
    with lesion_scale() as used:
        assert used == LESION_SCALE_BY_MODALITY
        big = area()
    assert dict(phantoms._LESION_SIZE) == before and area() == default
    assert big > default
    with lesion_scale({}) as used:
        assert used == {} and area() == default
    with pytest.raises(ValueError, match="unknown modality"), lesion_scale({"xray": (0.1, 0.2)}):
        pass
    with pytest.raises(ValueError, match="low <= high"), lesion_scale({"us": (0.5, 0.2)}):
        pass
    assert dict(phantoms._LESION_SIZE) == before
    # small lesions in X-ray and CT, large in ultrasound and dermoscopy: the scale differs by modality
    assert LESION_SCALE_BY_MODALITY["cxr"][1] < LESION_SCALE_BY_MODALITY["us"][0]


def test_phantom_analogues_name_every_card_set():
    from medmoe.papers import load_card  # why: the card is only needed here

    card = load_card("medmoe")
    quick = [c for c in card.cells if "quick" in c and "[" in c["metric"]]
    assert quick, "the quick column has analogues for the per-set cells"
    for c in quick:
        real = c["metric"].split("[")[1].rstrip("]")
        assert real in PHANTOM_ANALOGUE and PHANTOM_ANALOGUE[real] in phantoms.MODALITIES
