"""Chapter 4's paired design: the router's Universal start, heads on one frozen backbone, cached features, the text
controls and the kidney-side measure."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medmoe.papers.mome.data import PhantomCT, RandomPatches
from medmoe.papers.mome.model import CONFIGS, build_model
from medmoe.papers.mome.paired import (
    FeatureCache,
    centre_text,
    evaluate_heads,
    head_from,
    head_step,
    kidney_sides,
    train_head,
)

TEXT = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))


def _base():
    torch.manual_seed(0)
    m = build_model("universal_test", num_classes=6)
    m.set_text_embeddings(TEXT)
    return m


def test_universal_router_init_gives_out_its_weight_everywhere():
    torch.manual_seed(0)
    m = build_model("mome_test", num_classes=6, router_init="universal", router_init_weight=0.9)
    m.set_text_embeddings(TEXT)
    w = m(torch.rand(2, 1, 32, 32, 32)).router  # (B, C, E, ...), experts ("dec0", "out")
    assert torch.allclose(w[:, :, 1], torch.full_like(w[:, :, 1], 0.9), atol=1e-6)
    assert torch.allclose(w.sum(2), torch.ones_like(w[:, :, 0]), atol=1e-6)
    assert CONFIGS["mome_quick"].router_init == CONFIGS["mome_paper"].router_init == "universal"
    assert "dec3" not in CONFIGS["mome_quick"].experts and "dec3" in CONFIGS["mome_paper"].experts
    with pytest.raises(ValueError, match="out"):
        build_model("mome_test", experts=("dec1", "dec0"), router_init="universal")
    with pytest.raises(ValueError, match="router_init"):
        build_model("mome_test", router_init="zero")


def test_heads_share_the_frozen_backbone_and_start_from_the_trained_head():
    base = _base()
    uni, mome = head_from(base, "universal_test", text=TEXT), head_from(base, "mome_test", text=TEXT,
                                                                      router_init="universal")
    assert uni.backbone is base.backbone and mome.backbone is base.backbone
    assert not any(p.requires_grad for p in mome.backbone.parameters())
    for name in ("controller.weight", "text_to_vision.weight", "experts.out.2.weight"):
        assert torch.equal(mome.state_dict()[name], base.state_dict()[name])
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(uni(x).logits, base(x).logits)
        # MoME starts close to the Universal head: w(out) = 0.95, the rest of the fused feature from dec0
        gap = (mome(x).logits - base(x).logits).abs().mean() / base(x).logits.abs().mean()
    assert gap < 0.2


def test_training_a_head_leaves_the_backbone_alone_and_cache_equals_recompute(tmp_path):
    base = _base()
    vols = PhantomCT(sources=["kidney", "multi_organ"], n_per_source=1, size=32, seed=0)
    patches = RandomPatches(vols, patch=32)
    torch.manual_seed(0)
    cache = FeatureCache(base, patches, repeats=2)
    assert len(cache) == 2 * len(vols)
    head = head_from(base, "mome_test", text=TEXT, router_init="universal")
    item = cache[0]
    batch = {"feats": {k: v[None] for k, v in item["feats"].items()}, "label": item["label"][None],
             "labelled": item["labelled"][None]}
    on_the_fly = {"image": vols[0]["image"][None], "label": item["label"][None], "labelled": item["labelled"][None]}
    assert torch.allclose(head_step(head, batch)["loss"], head_step(head, on_the_fly)["loss"], atol=1e-5)
    before = copy.deepcopy(base.backbone.state_dict())
    router_before = head.router.out.weight.clone()
    train_head(head, cache, out_dir=tmp_path / "h", epochs=1, lr=1e-2, batch_size=2, seed=0)
    assert all(torch.equal(v, base.backbone.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(head.router.out.weight, router_before)  # the router moves off its start


def test_text_controls():
    e = centre_text(TEXT)
    assert torch.allclose(e.norm(dim=1), torch.ones(6), atol=1e-6)
    assert torch.allclose((TEXT - TEXT.mean(0)).div((TEXT - TEXT.mean(0)).norm(dim=1, keepdim=True)), e, atol=1e-6)
    learned = head_from(_base(), "universal_test", text=TEXT, text_code="learned")
    assert not hasattr(learned, "text_to_vision")
    assert torch.equal(learned.text_codes(), learned.class_embedding.weight)
    with pytest.raises(ValueError, match="text_code"):
        build_model("universal_test", text_code="clip")


class _Oracle(nn.Module):
    """Predicts each kidney from the ground truth of ``label_of`` (optionally with the sides swapped)."""

    def __init__(self, label, swap):
        super().__init__()
        self.config = SimpleNamespace(roi_size=32)
        self.w = nn.Parameter(torch.zeros(()))
        lab = label.clone().float()
        if swap:
            lab[[2, 3]] = lab[[3, 2]]
        self.lab = lab

    def forward(self, x):
        return SimpleNamespace(logits=(self.lab[None] * 20 - 10) + self.w)


@pytest.mark.parametrize("swap", [False, True])
def test_kidney_sides_tells_own_from_other_side(swap):
    vols = PhantomCT(sources=["kidney"], n_per_source=1, size=32, seed=0)
    r = kidney_sides(_Oracle(vols[0]["label"], swap), vols, left=2, right=3)
    assert r["n"] == 1
    own, other = (r["other"], r["own"]) if swap else (r["own"], r["other"])
    assert own > 0.95 and other < 0.5


def test_evaluate_heads_matches_evaluate_per_head():
    from medmoe.papers.mome.recipe import evaluate  # here: the reference the shared-backbone evaluator must match

    base = _base()
    heads = {"universal": head_from(base, "universal_test", text=TEXT),
             "mome": head_from(base, "mome_test", text=TEXT, router_init="universal")}
    vols = PhantomCT(sources=["kidney", "multi_organ"], n_per_source=1, size=32, seed=3)
    res = evaluate_heads(heads, vols, kidneys=(2, 3))
    for k, h in heads.items():
        ref = evaluate(h, vols)
        np.testing.assert_allclose(res[k]["dice"], ref["dice"], atol=1e-5, equal_nan=True)
        assert res[k]["sides"]["n"] == 2


def test_expert_shares_are_fractions_of_the_fused_feature():
    from medmoe.papers.mome.paired import expert_shares  # here: only this test needs it

    base = _base()
    mome = head_from(base, "mome_test", text=TEXT, router_init="universal")
    vol = PhantomCT(sources=["multi_organ"], n_per_source=1, size=32, seed=1)[0]
    shares = expert_shares(mome, vol["image"], vol["label"] > 0)
    assert shares.shape == (6, 2)
    assert torch.allclose(shares.sum(1), torch.ones(6), atol=1e-5)
    with pytest.raises(ValueError, match="router"):
        expert_shares(base, vol["image"], vol["label"] > 0)
