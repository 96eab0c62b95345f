"""MoME and the Universal Model (Chapter 4): shapes, the dynamic heads, the router, the partial-label loss, the paper
configuration on a 96^3 patch, an injected SwinUNETR, the recipe's verbs, sliding-window evaluation on phantoms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR
from torch.utils.data import DataLoader

from medmoe.data.phantoms import CLASSES_3D
from medmoe.engine import TrainConfig, fit
from medmoe.papers.mome import recipe as R
from medmoe.papers.mome.data import PhantomCT, RandomPatches
from medmoe.papers.mome.model import CONFIGS, NUM_DYNAMIC_PARAMS, build_model, dynamic_head, example_inputs


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
        R.partial_label_loss(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4),
                             torch.zeros(1, 3, dtype=torch.bool))


def test_phantom_targets_are_partial_and_multi_label():
    ds = PhantomCT(sources=["liver_tumour", "kidney"], n_per_source=1, size=32, seed=0)
    item = ds[0]
    names = CLASSES_3D[1:]
    assert item["labelled"].tolist() == [n in ("liver", "liver tumour") for n in names]
    liver, tumour = names.index("liver"), names.index("liver tumour")
    assert torch.all(item["label"][liver] >= item["label"][tumour])  # the liver includes its tumour
    kid = ds[1]
    assert kid["labelled"].tolist() == [n in ("left kidney", "right kidney") for n in names]
    assert kid["label"][kid["labelled"]].sum() > 0 and kid["label"][~kid["labelled"]].sum() == 0
    crops = RandomPatches(PhantomCT(sources=["kidney"], n_per_source=1, size=48), patch=32)
    torch.manual_seed(0)
    c = crops[0]
    assert c["image"].shape == (1, 32, 32, 32) and c["label"].shape == (6, 32, 32, 32) and c["label"].sum() > 0
    small = RandomPatches(PhantomCT(sources=["kidney"], n_per_source=1, size=40), patch=64)  # padded, then cropped
    assert small[0]["image"].shape == (1, 64, 64, 64)
    with pytest.raises(ValueError, match="patch"):
        RandomPatches(crops.volumes, patch=48)


def test_training_step_and_sliding_window_evaluation_on_phantoms():
    torch.manual_seed(0)
    m = build_model("mome_test", num_classes=6)
    m.set_text_embeddings(torch.randn(6, 16))
    train = RandomPatches(PhantomCT(sources=["multi_organ", "liver_tumour"], n_per_source=1, size=48), patch=32)
    batch = torch.utils.data.default_collate([train[0], train[1]])
    out = R.train_step(m, batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["dice"] > 0
    test = PhantomCT(sources=["spleen"], n_per_source=2, size=48)
    r = R.evaluate(m, test, maps_for=[0])
    assert r["dice"].shape == (2, 6) and r["sources"] == ["spleen", "spleen"]
    spleen = CLASSES_3D[1:].index("spleen")
    assert (~torch.isnan(torch.as_tensor(r["dice"]))).sum() == 2 and 0 <= r["per_class"][spleen] <= 1
    assert r["maps"][0]["router"].shape == (6, 2, 48, 48, 48)
    assert abs(r["maps"][0]["router"].sum(1) - 1).max() < 1e-4  # blended windows still sum to 1 per voxel


def test_parameter_counts_of_the_paper_configurations():
    counts = {n: R.count(build_model(n)) for n in ("universal_paper", "mome_paper")}
    uni, mome = counts["universal_paper"], counts["mome_paper"]
    assert uni["total"] == uni["trainable"] == 62_595_315
    assert mome["total"] - uni["total"] == 12_069  # 4 extra expert projections + the router
    assert uni["router"] == 0 and mome["router"] + mome["experts"] - uni["experts"] == 12_069
    assert CONFIGS["mome_paper"].experts == ("dec3", "dec2", "dec1", "dec0", "out")


@pytest.mark.parametrize("name", ["universal_test", "mome_test"])
def test_example_inputs_promise_the_output_shapes(name):
    kwargs, shapes = example_inputs(name, batch_size=1)
    out = build_model(name)(**kwargs)
    assert {k: tuple(getattr(out, k).shape) for k in shapes} == shapes
    assert list(shapes)[0] == "logits" and ("router" in shapes) == CONFIGS[name].router


def _swin(**kw):
    cfg = CONFIGS["mome_test"]
    args = dict(in_channels=1, out_channels=cfg.num_classes, feature_size=cfg.feature_size, depths=cfg.depths,
                num_heads=cfg.num_heads, norm_name=cfg.norm, window_size=cfg.window_size)
    return SwinUNETR(**{**args, **kw})


def test_an_injected_swinunetr_is_the_backbone():
    torch.manual_seed(0)
    swin = _swin()
    weight = swin.swinViT.patch_embed.proj.weight.detach().clone()
    m = build_model("mome_test", backbone=swin)
    assert m.backbone is swin and isinstance(swin.out, torch.nn.Identity)  # the heads replace SwinUNETR's output
    assert torch.equal(m.backbone.swinViT.patch_embed.proj.weight, weight)
    assert m(torch.rand(1, 1, 32, 32, 32)).logits.shape == (1, 3, 32, 32, 32)
    # the same construction without injection: identical parameter names and shapes
    fresh = build_model("mome_test")
    assert [(k, v.shape) for k, v in fresh.state_dict().items()] == [(k, v.shape) for k, v in m.state_dict().items()]
    with pytest.raises(ValueError, match="feature_size"):
        build_model("mome_test", backbone=_swin(feature_size=24))
    with pytest.raises(ValueError, match="window_size"):
        build_model("mome_test", backbone=_swin(window_size=7))
    with pytest.raises(ValueError, match="SwinUNETR"):
        build_model("mome_test", backbone=torch.nn.Linear(2, 2))


def test_train_is_the_hand_built_adamw_fit(tmp_path):
    """``recipe.train`` gives bit-identical weights and history to the chapter's former hand-built
    AdamW + shuffled DataLoader + ``fit`` (the move must not change the quick profile's numbers)."""
    patches = RandomPatches(PhantomCT(sources=["kidney", "liver_tumour"], n_per_source=2, size=32), patch=32)
    text = torch.randn(6, 16)
    results = []
    for how in ("recipe", "fit"):
        torch.manual_seed(3)
        m = build_model("mome_test", num_classes=6)
        m.set_text_embeddings(text)
        if how == "recipe":
            res = R.train(m, patches, out_dir=tmp_path / how, epochs=2, lr=3e-3, batch_size=2, seed=3,
                          run_key="k", weight_decay=1e-5)
        else:
            res = fit(m, torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=1e-5),
                      DataLoader(patches, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(3)),
                      step_fn=R.train_step,
                      config=TrainConfig(out_dir=tmp_path / how, epochs=2, seed=3, progress=False, run_key="k"))
        results.append((m.state_dict(), [{k: v for k, v in h.items() if k != "time_s"} for h in res.history]))
    (a, hist_a), (b, hist_b) = results
    assert hist_a == hist_b and all(torch.equal(a[k], b[k]) for k in a)


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
