"""MoME and the Universal Model (Chapter 4): shapes, the dynamic heads, the router, the partial-label loss, the paper
configuration on a 96^3 patch, sliding-window evaluation on phantoms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmoe.papers.mome.model import CONFIGS, NUM_DYNAMIC_PARAMS, build_model, dynamic_head
from medmoe.papers.mome import recipe as R


def _model(name="mome_test", **kw):
    torch.manual_seed(0)
    m = build_model(name, **kw)
    m.set_text_embeddings(torch.randn(m.config.num_classes, m.config.text_dim))
    return m


@pytest.mark.parametrize("name", ["universal_test", "mome_test"])
@pytest.mark.parametrize("batch", [1, 2])
def test_output_shapes(name, batch):
    m = _model(name)
    out = m(torch.rand(batch, 1, 32, 32, 64))
    assert out.logits.shape == (batch, 3, 32, 32, 64)
    if m.config.router:
        assert out.router.shape == (batch, 3, 2, 32, 32, 64)
        assert torch.allclose(out.router.sum(2), torch.ones(()), atol=1e-5)
    else:
        assert out.router is None


def test_dynamic_head_is_three_one_by_one_convolutions():
    torch.manual_seed(0)
    feats, params = torch.randn(2, 8, 5), torch.randn(2, 3, NUM_DYNAMIC_PARAMS)
    got = dynamic_head(feats, params)
    for b in range(2):
        for c in range(3):
            p = params[b, c]
            w1, w2, w3 = p[:64].view(8, 8, 1), p[64:128].view(8, 8, 1), p[128:136].view(1, 8, 1)
            b1, b2, b3 = p[136:144], p[144:152], p[152:153]
            x = F.relu(F.conv1d(feats[b:b + 1], w1, b1))
            x = F.relu(F.conv1d(x, w2, b2))
            assert torch.allclose(got[b, c], F.conv1d(x, w3, b3)[0, 0], atol=1e-5)
    # per-class features (MoME) with every class given the same features equal the shared form
    assert torch.allclose(dynamic_head(feats[:, None].expand(2, 3, 8, 5), params), got, atol=1e-6)


def test_router_is_text_guided_and_fuses_experts_per_voxel():
    m = _model()
    x = torch.rand(1, 1, 32, 32, 32)
    out = m(x)
    # classes differ only by their text codes, so different texts must give different per-voxel weights
    assert not torch.allclose(out.router[0, 0], out.router[0, 1])
    assert out.router[0, 0].std(dim=(1, 2, 3)).max() > 0  # weights vary over voxels
    # the fused feature is sum_e w_e E_e: with a router forced to pick one expert, MoME equals the head on that expert
    feats = m.forward_features(x)
    with torch.no_grad():
        m.router.out.weight.zero_()
        m.router.out.bias.copy_(torch.tensor([-1e4, 1e4]))  # all weight on the second expert ("out")
    forced = m.forward_head(feats)
    assert torch.allclose(forced.router[:, :, 1], torch.ones(()))
    e = m.experts["out"](feats["out"]).flatten(2)
    pairs = torch.cat([m.image_code(feats["dec4"]).flatten(1)[:, None].expand(1, 3, -1), m.text_codes()[None]], -1)
    params = m.controller(pairs.reshape(3, -1, 1, 1, 1)).reshape(1, 3, -1)
    assert torch.allclose(forced.logits.flatten(2), dynamic_head(e, params), atol=1e-4)


def test_partial_label_loss_gives_unlabelled_classes_no_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, 8, requires_grad=True)
    target = (torch.rand(2, 4, 8, 8, 8) > 0.7).float()
    labelled = torch.tensor([[True, False, True, False], [False, False, True, True]])
    out = R.partial_label_loss(logits, target, labelled)
    out["loss"].backward()
    grad = logits.grad.abs().flatten(2).sum(-1)
    assert torch.all(grad[~labelled] == 0) and torch.all(grad[labelled] > 0)
    # the value: mean over labelled pairs of (1 - soft Dice with smoothing 1) + BCE averaged over voxels
    p = torch.sigmoid(logits.detach())
    dice = 1 - (2 * (p * target).flatten(2).sum(-1) + 1) / (p.flatten(2).sum(-1) + target.flatten(2).sum(-1) + 1)
    bce = F.binary_cross_entropy_with_logits(logits.detach(), target, reduction="none").flatten(2).mean(-1)
    assert out["loss"].item() == pytest.approx((dice[labelled].mean() + bce[labelled].mean()).item(), rel=1e-5)
    # through the model: the logits of unlabelled classes get zero gradient too
    m = _model()
    x = torch.rand(1, 1, 32, 32, 32)
    res = m(x)
    res.logits.retain_grad()
    lab = torch.tensor([[True, False, True]])
    R.partial_label_loss(res.logits, (torch.rand_like(res.logits) > 0.5).float(), lab)["loss"].backward()
    assert res.logits.grad[0, 1].abs().max() == 0 and res.logits.grad[0, 0].abs().max() > 0
    assert m.router.visual.weight.grad is not None and m.controller.weight.grad is not None


def test_bad_inputs_are_named():
    m = _model()
    with pytest.raises(ValueError, match="divisible by 32"):
        m(torch.rand(1, 1, 30, 32, 32))
    with pytest.raises(ValueError, match="rank|5"):
        m(torch.rand(1, 32, 32, 32))
    with pytest.raises(ValueError, match="experts"):
        build_model("mome_test", experts=("dec9", "out"))
    with pytest.raises(ValueError, match="at least two"):
        build_model("mome_test", experts=("out",))
    with pytest.raises(ValueError, match="unknown"):
        build_model("mome_test", n_experts=3)
    with pytest.raises(ValueError, match="text embeddings"):
        m.set_text_embeddings(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="labelled"):
        R.partial_label_loss(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="no labelled"):
        R.partial_label_loss(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, dtype=torch.bool))


def test_phantom_targets_are_partial_and_multi_label():
    from medmoe.data.phantoms import CLASSES_3D

    ds = R.PhantomCT(sources=["liver_tumour", "kidney"], n_per_source=1, size=32, seed=0)
    item = ds[0]
    names = CLASSES_3D[1:]
    assert item["labelled"].tolist() == [n in ("liver", "liver tumour") for n in names]
    liver, tumour = names.index("liver"), names.index("liver tumour")
    assert torch.all(item["label"][liver] >= item["label"][tumour])  # the liver includes its tumour
    kid = ds[1]
    assert kid["labelled"].tolist() == [n in ("left kidney", "right kidney") for n in names]
    assert kid["label"][kid["labelled"]].sum() > 0 and kid["label"][~kid["labelled"]].sum() == 0
    crops = R.RandomPatches(R.PhantomCT(sources=["kidney"], n_per_source=1, size=48), patch=32)
    torch.manual_seed(0)
    c = crops[0]
    assert c["image"].shape == (1, 32, 32, 32) and c["label"].shape == (6, 32, 32, 32) and c["label"].sum() > 0
    small = R.RandomPatches(R.PhantomCT(sources=["kidney"], n_per_source=1, size=40), patch=64)  # padded, then cropped
    assert small[0]["image"].shape == (1, 64, 64, 64)
    with pytest.raises(ValueError, match="patch"):
        R.RandomPatches(crops.volumes, patch=48)


def test_training_step_and_sliding_window_evaluation_on_phantoms():
    from medmoe.data.phantoms import CLASSES_3D

    torch.manual_seed(0)
    m = build_model("mome_test", num_classes=6)
    m.set_text_embeddings(torch.randn(6, 16))
    train = R.RandomPatches(R.PhantomCT(sources=["multi_organ", "liver_tumour"], n_per_source=1, size=48), patch=32)
    batch = torch.utils.data.default_collate([train[0], train[1]])
    out = R.train_step(m, batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["dice"] > 0
    test = R.PhantomCT(sources=["spleen"], n_per_source=2, size=48)
    r = R.evaluate(m, test, keep_router=1)
    assert r["dice"].shape == (2, 6) and r["sources"] == ["spleen", "spleen"]
    spleen = CLASSES_3D[1:].index("spleen")
    assert (~torch.isnan(torch.as_tensor(r["dice"]))).sum() == 2 and 0 <= r["per_class"][spleen] <= 1
    assert r["maps"][0]["router"].shape == (6, 2, 48, 48, 48)
    assert abs(r["maps"][0]["router"].sum(1) - 1).max() < 1e-4  # blended windows still sum to 1 per voxel


def test_parameter_counts_of_the_paper_configurations():
    counts = {n: sum(p.numel() for p in build_model(n).parameters()) for n in ("universal_paper", "mome_paper")}
    assert counts["universal_paper"] == 62_595_315
    assert counts["mome_paper"] - counts["universal_paper"] == 12_069  # 4 extra expert projections + the router
    assert CONFIGS["mome_paper"].experts == ("dec3", "dec2", "dec1", "dec0", "out")


def test_paper_configuration_forward_and_backward_on_a_96_cube():
    """The `paper` configuration (SwinUNETR-48, 32 classes, CLIP-width text codes, five experts), random weights,
    one 96^3 patch forward and backward through the partial-label loss."""
    torch.manual_seed(0)
    m = build_model("mome_paper", use_checkpoint=True)
    m.set_text_embeddings(torch.randn(32, 512))
    x = torch.rand(1, 1, 96, 96, 96)
    out = m(x)
    assert out.logits.shape == (1, 32, 96, 96, 96) and out.router.shape == (1, 32, 5, 96, 96, 96)
    labelled = torch.zeros(1, 32, dtype=torch.bool)
    labelled[0, [0, 5, 10]] = True
    target = torch.zeros_like(out.logits)
    target[:, :, 30:60, 30:60, 30:60] = 1
    loss = R.partial_label_loss(out.logits, target, labelled)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert m.router.out.weight.grad.abs().sum() > 0 and m.backbone.swinViT.patch_embed.proj.weight.grad.abs().sum() > 0


def test_notebook_paper_path_on_dataset_list_fixtures(tmp_path):
    """The chapter's `paper` path at a tiny size: NIfTI volumes in the Universal Model's layout read through its
    dataset lists (32-class template), class embeddings from a saved (C, D) tensor as txt_encoding.pth,
    training and sliding-window evaluation of both models; per-organ metrics come out."""
    from pathlib import Path

    from medmoe.papers.mome.data import write_universal_fixture
    from medmoe.repro.runner import run_notebook

    lines = write_universal_fixture(tmp_path, datasets=("09", "10_03"), cases_per_dataset=3, size=16).read_text().split("\n")
    lines = [ln for ln in lines if ln.strip()]
    test = [ln for ln in lines if ln.startswith("09")][-1:]
    (tmp_path / "train.txt").write_text("\n".join(ln for ln in lines if ln not in test) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(test) + "\n")
    torch.save(torch.randn(32, 16), tmp_path / "txt_encoding.pth")
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "04_mome.py"
    rec = run_notebook(nb, profile="smoke", out_dir=tmp_path / "out", parameters={
        "dataset": "universal", "data_root": str(tmp_path), "train_list": str(tmp_path / "train.txt"),
        "test_list": str(tmp_path / "test.txt"), "base_config": "universal_test", "mome_config": "mome_test",
        "text_encoder": str(tmp_path / "txt_encoding.pth"), "batch_size": 2})
    m = rec["metrics"]
    assert 0.0 <= m["dice_test_universal"] <= 1.0 and 0.0 <= m["dice_test_mome"] <= 1.0
    assert any(k.startswith("dice_test_mome[") for k in m) and len(m["classes"]) == 32
