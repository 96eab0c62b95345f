"""SegMoTE (Chapter 3): frozen SAM, expert tokens, MoTE routing and gradients, PPT, parameter counts, checkpoints,
the recipe's two training stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medmoe.data.phantoms import PhantomDataset2D
from medmoe.papers.segmote import recipe as R
from medmoe.papers.segmote.data import (
    GROUP_A,
    EmbeddingTasks,
    IMISDataset,
    IMISSegTasks,
    MultiDatasetIMIS,
    PhantomSegTasks,
    cache_embeddings,
    write_imis_layout,
)
from medmoe.papers.segmote.model import (
    ALIASES,
    CONFIGS,
    MoTE,
    PromptTokenizer,
    build_model,
    build_sam,
    example_inputs,
    load_sam_checkpoint,
)
from medmoe.repro.runner import run_notebook


def _model(**kw):
    torch.manual_seed(0)
    return build_model("segmote_test", **kw)


def _batch(b=2):
    torch.manual_seed(1)
    return torch.rand(b, 3, 64, 64), torch.tensor([[4.0, 6.0, 40.0, 44.0]] * b)


def test_sam_weights_bitwise_unchanged_after_training_and_router_gets_gradient():
    m = _model()
    before = {k: v.clone() for k, v in m.sam.state_dict().items()}
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)
    x, boxes = _batch()
    emb, early = m.encode(x)
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    m.train()
    for step in range(3):
        out = m(emb, early, boxes=boxes)
        loss = F.binary_cross_entropy_with_logits(out.masks, target) + 0.01 * out.balance_loss
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for mote in m.motes:  # the router learns (W_g and W_n start at zero)
                assert mote.gate.w_gate.grad is not None and mote.gate.w_gate.grad.abs().sum() > 0
                assert mote.gate.w_noise.grad is not None and mote.gate.w_noise.grad.abs().sum() > 0
            assert all(p.grad is None for p in m.sam.parameters())
        opt.step()
    after = m.sam.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not m.sam.training and m.training
    assert m.motes[0].gate.w_gate.abs().sum() > 0  # and it moved


def test_only_new_modules_are_trainable():
    m = _model()
    names = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert names == {"expert_tokens", "motes", "expert_hypernets", "expert_embedding_encoder", "compress_vit_feat",
                     "expert_feature_fusion", "ppt"}


def test_parameter_counts_of_the_paper_configurations():
    ppt = PromptTokenizer(dim=768, num_queries=2, num_heads=8)
    assert sum(p.numel() for p in ppt.parameters()) == 7_091_712  # the code's AttnPoolTokens; the paper: 7M
    m = build_model("segmote_paper_imis")
    trainable = sum(p.numel() for p in m.trainable_parameters())
    assert trainable == 16_290_592  # MoTE side 9,198,880 + PPT; the code's unused expert_mlp/dte/dteall add 1.27M
    assert abs(trainable / 17e6 - 1) < 0.05  # Table 3: 17M learnable
    c = R.count(m)
    assert (c["trainable"], c["ppt"], c["mote_side"]) == (16_290_592, 7_091_712, 9_198_880)
    assert c["sam"] == sum(p.numel() for p in m.sam.parameters()) and c["total"] == c["sam"] + c["trainable"]


def test_old_configuration_names_are_aliases():
    assert ALIASES == {"sam_b": "segmote_paper", "imis_like": "segmote_paper_imis"}
    small = dict(image_size=64, encoder_depth=2, global_attn=(1,))
    assert build_model("sam_b", **small).config == build_model("segmote_paper", **small).config
    assert build_model("imis_like", **small).config.prompt_dim == 768
    kwargs, shapes = example_inputs("segmote_test", batch_size=3)
    assert kwargs["image_embeddings"].shape == (3, 32, 4, 4) and shapes["masks"] == (3, 1, 16, 16)


@pytest.mark.parametrize("prompt", ["box", "points", "free", "free+mask"])
def test_prompt_modes_shapes(prompt):
    m = _model().eval()
    x, boxes = _batch(3)
    emb, early = m.encode(x)
    kw = {"box": dict(boxes=boxes[:3]),
          "points": dict(points=(torch.tensor([[[20.0, 20.0], [50.0, 50.0]]] * 3), torch.tensor([[1, 0]] * 3))),
          "free": dict(prompt_free=True),
          "free+mask": dict(prompt_free=True, mask_prior=torch.randn(3, 1, 16, 16))}[prompt]
    out = m(emb, early, **kw)
    assert out.masks.shape == (3, 1, 16, 16) and out.expert_masks.shape == (3, 3, 16, 16)
    assert torch.equal(out.masks[:, 0], out.expert_masks[torch.arange(3), out.selected])
    assert m.upscale(out.masks).shape == (3, 1, 64, 64)
    assert len(out.motes) == 2


def test_eval_is_deterministic_training_is_noisy():
    m = _model()
    with torch.no_grad():
        for mote in m.motes:  # give the router something to say
            mote.gate.w_gate.normal_()
            mote.gate.w_noise.normal_()
    x, boxes = _batch()
    emb, early = m.encode(x)
    m.eval()
    a, b = m(emb, early, boxes=boxes), m(emb, early, boxes=boxes)
    assert torch.equal(a.masks, b.masks)
    m.train()
    torch.manual_seed(3)
    c = m(emb, early, boxes=boxes)
    assert not torch.allclose(c.motes[0].gate.logits, a.motes[0].gate.logits)


def test_mote_equations_by_hand():
    torch.manual_seed(0)
    mote = MoTE(dim=6, num_experts=3, expert_dim=4).eval()
    with torch.no_grad():
        mote.gate.w_gate.copy_(torch.randn(6, 3))
    x = torch.randn(2, 4, 6)
    out = mote(x)
    logits = x @ mote.gate.w_gate  # Eq. (1), no noise in eval
    idx = logits.argmax(-1)
    conf = logits.max(-1).values  # Eq. (4)
    assert torch.equal(out.selected, conf.argmax(1))
    p = logits.softmax(-1).gather(-1, idx[..., None])[..., 0]
    for bi in range(2):
        for ti in range(4):
            e = int(idx[bi, ti])
            h = p[bi, ti] * mote.experts[e](x[bi, ti])  # Eq. (6): confidence-weighted expert output
            z = mote.proj(mote.dteall(mote.dte(h)))
            assert torch.allclose(out.tokens[bi, ti], z, atol=1e-5)
    w = torch.zeros(2, 4, 3).scatter(-1, idx[..., None], p[..., None])
    imp, load = w.sum((0, 1)), (w > 0).float().sum((0, 1))
    cv2 = lambda v: v.var() / v.mean() ** 2  # noqa: E731  (unbiased variance, Eq. 9 as the code computes it)
    assert torch.allclose(out.balance, cv2(imp) + cv2(load), atol=1e-5)


def test_ppt_attention_and_position_dependence():
    torch.manual_seed(0)
    ppt = PromptTokenizer(dim=16, num_queries=2, num_heads=2)
    emb = torch.randn(2, 16, 4, 4)
    tokens, attn = ppt(emb, return_attention=True)
    assert tokens.shape == (2, 2, 16) and attn.shape == (2, 2, 4, 4)
    assert torch.allclose(attn.flatten(2).sum(-1), torch.ones(2, 2), atol=1e-5)
    flipped = ppt(emb.flip(-1))  # coordinates enter the keys: a mirrored image gives other tokens
    assert not torch.allclose(tokens, flipped, atol=1e-4)


def test_load_sam_checkpoint_resizes_position_embeddings(tmp_path):
    torch.manual_seed(0)
    big = build_sam(CONFIGS["segmote_test"].__class__(**{**CONFIGS["segmote_test"].__dict__, "image_size": 128}))
    torch.save(big.state_dict(), tmp_path / "sam.pth")
    small = build_sam(CONFIGS["segmote_test"])
    resized = load_sam_checkpoint(small, tmp_path / "sam.pth").resized
    assert "image_encoder.pos_embed" in resized and any("rel_pos" in k for k in resized)
    assert small.image_encoder.pos_embed.shape == (1, 4, 4, 32)
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(small.state_dict()[key], big.state_dict()[key])
    m = build_model("segmote_test", backbone=small)
    assert m.encode(torch.rand(1, 3, 64, 64))[0].shape == (1, 32, 4, 4)
    with pytest.raises(FileNotFoundError, match="sam_vit_b"):
        load_sam_checkpoint(small, tmp_path / "missing.pth")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a checkpoint of this SAM"):
        load_sam_checkpoint(small, tmp_path / "other.pth")


def test_bad_inputs_are_named():
    m = _model()
    x, boxes = _batch()
    emb, early = m.encode(x)
    with pytest.raises(ValueError, match="prompt_free"):
        m(emb, early, boxes=boxes, prompt_free=True)
    with pytest.raises(ValueError, match="give points or boxes"):
        m(emb, early)
    with pytest.raises(ValueError, match="one prompt"):
        m(emb, early, boxes=boxes[:1].expand(3, -1))
    with pytest.raises(ValueError, match="early_features"):
        m(emb, None, boxes=boxes)
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        m.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown SegMoTE configuration"):
        build_model("sam_h")
    with pytest.raises(ValueError, match="unknown SegMoTEConfig field"):
        build_model("segmote_test", experts=3)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_model("segmote_test", image_size=70)


# ------------------------------------------------------------------------------------------------------ recipe


def test_prompts_from_masks():
    box_from_mask, point_from_mask, sample_prompts = R.box_from_mask, R.point_from_mask, R.sample_prompts
    mask = torch.zeros(32, 32)
    mask[5:15, 8:20] = 1
    assert box_from_mask(mask).tolist() == [8.0, 5.0, 19.0, 14.0]
    g = torch.Generator().manual_seed(0)
    jittered = box_from_mask(mask, jitter=3.0, generator=g)
    assert (jittered - torch.tensor([8.0, 5.0, 19.0, 14.0])).abs().max() <= 3.0
    for _ in range(20):  # from the half of the foreground nearest the centroid
        x, y = point_from_mask(mask, generator=g).tolist()
        assert mask[int(y), int(x)] == 1 and abs(x - 13.5) <= 5 and abs(y - 9.5) <= 4
    with pytest.raises(ValueError, match="empty"):
        box_from_mask(torch.zeros(4, 4))
    pr = sample_prompts(mask[None, None].expand(50, 1, -1, -1), torch.tensor([True, False] * 25), generator=g)
    assert set(pr["kind"][1::2]) <= {"box", "point"} and "free" in pr["kind"][0::2]
    assert pr["boxes"].shape == (50, 4) and pr["points"].shape == (50, 1, 2)


def test_sam_decode_matches_segment_anything_for_one_image():
    m = _model().eval()
    emb, _ = m.encode(torch.rand(1, 3, 64, 64))
    box = torch.tensor([[4.0, 6.0, 40.0, 44.0]])
    ours = R.sam_decode(m.sam, emb, boxes=box)
    sparse, dense = m.sam.prompt_encoder(None, box, None)
    ref, _ = m.sam.mask_decoder(image_embeddings=emb, image_pe=m.sam.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_phantom_tasks_step_and_evaluation():
    tasks = PhantomSegTasks(PhantomDataset2D(n=5, modalities=("cxr", "ct", "mri", "us", "derm"), size=64, seed=0,
                                             channels=3))
    assert {tasks.class_names[tasks[k]["class_index"]] for k in range(len(tasks))} >= {"derm/lesion", "cxr/lungs"}
    assert all(tasks[k]["mask"].sum() >= 8 for k in range(len(tasks)))
    m = _model()
    data = EmbeddingTasks(tasks, cache_embeddings(m, tasks))
    batch = torch.utils.data.default_collate([data[k] for k in range(len(data))])
    out = R.segmote_step(m, batch, loss_fn=R.seg_loss(), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and m.motes[0].gate.w_gate.grad is not None
    for prompt in ("box", "point", "free"):
        r = R.evaluate(m, data, prompt=prompt)
        assert 0.0 <= r["dice"] <= 1.0 and all(0 <= row["selected"] < 3 for row in r["rows"])
    assert len(R.evaluate(m, data, prompt="free")["rows"]) == sum((t[1], t[2]) in GROUP_A for t in tasks.items)
    with pytest.raises(ValueError, match="prompt"):
        R.evaluate(m, data, prompt="text")


def test_paper_size_step_on_imis_layout_data_with_a_sam_checkpoint(tmp_path):
    """The paper configuration offline: SAM ViT-B at 512 px, a checkpoint saved at SAM's 1024 px loaded from a local
    path (position tables resized), one item read from the IMIS-Bench layout, one SegMoTE step."""
    torch.manual_seed(0)
    paper = CONFIGS["segmote_paper"]
    sam1024 = build_sam(paper.__class__(**{**paper.__dict__, "image_size": 1024}))
    torch.save(sam1024.state_dict(), tmp_path / "sam_vit_b_01ec64.pth")
    m = build_model("segmote_paper")
    load_sam_checkpoint(m.sam, tmp_path / "sam_vit_b_01ec64.pth")
    key = "mask_decoder.transformer.layers.0.mlp.lin1.weight"
    assert torch.equal(m.sam.state_dict()[key], sam1024.state_dict()[key])
    del sam1024

    image = np.zeros((96, 80, 3), np.uint8)
    image[20:60, 10:50] = 200
    masks = np.zeros((1, 96, 80), np.uint8)
    masks[0, 20:60, 10:50] = 1
    root = write_imis_layout(tmp_path / "data", "PHANTOM",
                             [{"name": "p0", "image": image, "masks": masks, "split": "test"}], ["organ"])
    ds = IMISDataset(root=root, split="test", size=512)
    item = ds[0]
    emb, early = m.encode(item["image"][None])
    assert emb.shape == (1, 256, 32, 32) and early.shape == (1, 768, 32, 32)
    box = R.box_from_mask(item["mask"][0])[None]
    m.train()
    out = m(emb, early, boxes=box)
    assert out.masks.shape == (1, 1, 128, 128)
    target = (F.interpolate(item["mask"][None], size=128) > 0.5).float()
    loss = R.seg_loss()(out.masks, target) + 0.01 * out.balance_loss
    loss.backward()
    assert m.motes[-1].gate.w_gate.grad is not None and all(p.grad is None for p in m.sam.parameters())


def _imis_root(tmp_path, n_train=0):
    """Two IMIS-layout folders: a two-class 'organs' set (96 x 80 images; 3 test and ``n_train`` training images) and
    a binary ISIC-like set (group A, one test image and ``n_train`` training images)."""
    items = []
    for i in range(3 + n_train):
        image = np.zeros((96, 80, 3), np.uint8)
        masks = np.zeros((2, 96, 80), np.uint8)
        masks[0, 10 + i:50, 8:40] = 1
        image[masks[0] > 0] = 180
        if i != 1:  # class 2 is absent from image 1
            masks[1, 60:90, 50:75] = 1
            image[masks[1] > 0] = 90
        items.append({"name": f"o{i}", "image": image, "masks": masks, "split": "test" if i < 3 else "training"})
    write_imis_layout(tmp_path / "hq", "organs", items, ["liver", "spleen"])
    lesions = []
    for i in range(1 + n_train):
        lesion = np.zeros((1, 40, 40), np.uint8)
        lesion[0, 12 + i:30, 10:28 - i] = 1
        lesions.append({"name": f"isic{i}", "image": np.repeat(lesion[0, :, :, None] * 200, 3, -1), "masks": lesion,
                        "split": "test" if i == 0 else "training"})
    write_imis_layout(tmp_path / "hq", "isic2018_task1", lesions, ["skin_lesion"])
    return tmp_path / "hq"


def test_imis_tasks_match_the_phantom_interface_and_are_scored_at_the_original_resolution(tmp_path):
    tasks = IMISSegTasks(MultiDatasetIMIS(root=_imis_root(tmp_path), split="test", size=64))
    assert tasks.modalities == ("isic2018_task1", "organs") and tasks.num_images == 4
    assert tasks.class_names == ["isic2018_task1/skin_lesion", "organs/liver", "organs/spleen"]
    assert len(tasks) == 1 + 3 + 2  # one item per (image, present class)
    item = tasks[1]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert tasks.original_mask(1).shape == (96, 80)  # the stored resolution, for the metric
    assert [tasks.is_group_a(k) for k in range(len(tasks))] == [True] + [False] * 5

    m = _model()
    data = EmbeddingTasks(tasks, cache_embeddings(m, tasks))
    assert data[0]["emb"].shape[0] == m.config.prompt_dim and "image" not in data[0]
    r = R.evaluate(m, data, prompt="box")
    assert len(r["rows"]) == len(tasks) and len(r["rows"][0]["confidence"]) == m.config.num_expert_tokens
    # the metric by hand: upsample each item's logits to its original size, Dice per class, mean per image, mean
    torch.manual_seed(0)
    per_image = {}
    m.eval()
    with torch.no_grad():
        for k in range(len(tasks)):
            d = data[k]
            out = m(d["emb"][None], d["early"][None], boxes=R.box_from_mask(d["mask"][0])[None])
            truth = tasks.original_mask(k)
            pred = m.upscale(out.masks, size=tuple(truth.shape))[0, 0] > 0
            dice = 2 * float((pred & truth).sum()) / (float(pred.sum() + truth.sum()) + 1e-8)
            per_image.setdefault(d["image_index"], []).append(dice)
    expected = sum(sum(v) / len(v) for v in per_image.values()) / len(per_image)
    assert r["dice"] == pytest.approx(expected, abs=1e-5)
    assert torch.isnan(r["per_class"]).sum() == 0 and len(r["per_class"]) == 3
    assert len(R.evaluate(m, data, prompt="free")["rows"]) == 1  # PPT: group-A items only
    # without a cache the frozen encoder runs per batch: same numbers, and a training step works on images
    online = EmbeddingTasks(tasks, None)
    assert "image" in online[0] and "emb" not in online[0]
    assert R.evaluate(m, online, prompt="box")["dice"] == pytest.approx(r["dice"], abs=1e-5)
    batch = torch.utils.data.default_collate([online[k] for k in range(len(online))])
    out = R.segmote_step(m.train(), batch, loss_fn=R.seg_loss(), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert m.motes[0].gate.w_gate.grad is not None and all(q.grad is None for q in m.sam.parameters())
    with pytest.raises(ValueError, match="group-A"):
        organs = IMISSegTasks(MultiDatasetIMIS(root=tmp_path / "hq", codes=["organs"], split="test", size=64))
        R.evaluate(m, EmbeddingTasks(organs, data.cache), prompt="free")


def test_notebook_paper_profile_wiring_on_imis_layout_data(tmp_path):
    """The chapter's `paper` path end to end at a tiny size: a SAM checkpoint from a local file, IMIS-layout folders
    for training and evaluation, no embedding cache, the milestone schedule; metrics per data set come out."""
    root = _imis_root(tmp_path, n_train=4)
    # CHAOS CT is not a MedSeg-HQ source (defect 13): with train_codes "" the chapter must not train on it
    liver = np.zeros((1, 32, 32), np.uint8)
    liver[0, 8:24, 8:20] = 1
    write_imis_layout(root, "chaos_ct", [{"name": f"c{i}", "image": liver[0] * 150, "masks": liver,
                                          "split": "test" if i == 0 else "training"} for i in range(3)], ["liver"])
    torch.save(build_sam(CONFIGS["segmote_test"]).state_dict(), tmp_path / "sam.pth")
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "03_segmote.py"
    rec = run_notebook(nb, profile="smoke", out_dir=tmp_path / "out", parameters={
        "config": "segmote_test", "sam_checkpoint": str(tmp_path / "sam.pth"), "dataset": "imis",
        "data_root": str(root), "image_size": 64, "cache": False, "lr_milestones": "1", "epochs": 2, "batch_size": 4,
        "num_experts": 3, "num_expert_tokens": 3})
    metrics = rec["metrics"]
    for key in ("dice_box_organs", "dice_point_organs", "dice_box_isic2018_task1", "dice_free_isic2018_task1",
                "dice_prompt_free"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["sam_unchanged"] is True
    import json  # why: read the executed notebook's printed output (only this test does)

    printed = "".join("".join(o.get("text", "")) for c in json.loads((tmp_path / "out" / rec["executed_notebook"])
                      .read_text())["cells"] for o in c.get("outputs", []))
    assert "training on ['isic2018_task1', 'organs']" in printed  # not chaos_ct
    assert "dice_box_chaos_ct" in metrics  # evaluated, as every folder with a test split


def test_train_both_stages_through_the_engine(tmp_path):
    """``recipe.train``: the stand-in SAM's pretraining changes every SAM weight it trains; SegMoTE's stage trains
    only the new modules (SAM bitwise unchanged), halves the lr at the milestones and resumes under the same key."""
    tasks = PhantomSegTasks(PhantomDataset2D(n=4, modalities=("cxr", "derm"), size=64, seed=0, channels=3))
    m = _model()
    before = {k: v.clone() for k, v in m.sam.state_dict().items()}
    res = R.train(m, tasks, stage="sam_pretrain", out_dir=tmp_path / "standin", epochs=1, lr=1e-3, batch_size=4,
                  seed=0, run_key="k")
    assert len(res.history) == 1 and np.isfinite(res.history[0]["train_loss"])
    assert not torch.equal(before["mask_decoder.iou_token.weight"], m.sam.state_dict()["mask_decoder.iou_token.weight"])
    m.freeze_sam()
    frozen = {k: v.clone() for k, v in m.sam.state_dict().items()}
    data = EmbeddingTasks(tasks, cache_embeddings(m, tasks))
    res = R.train(m, data, stage="segmote", out_dir=tmp_path / "seed0", epochs=2, lr=1e-3, batch_size=4, seed=0,
                  run_key="k", loss="focal_dice", lr_milestones=[1])
    assert [round(h["lr"], 6) for h in res.history] == [1e-3, 5e-4]
    assert {"train_seg", "train_balance"} <= set(res.history[0])
    assert all(torch.equal(frozen[k], v) for k, v in m.sam.state_dict().items())
    again = R.train(m, data, stage="segmote", out_dir=tmp_path / "seed0", epochs=2, lr=1e-3, batch_size=4, seed=0,
                    run_key="k", loss="focal_dice", lr_milestones=[1])
    assert again.resumed_from == 2
    with pytest.raises(ValueError, match="unknown stage"):
        R.train(m, data, stage="sam", out_dir=tmp_path / "x", epochs=1, lr=1e-3, batch_size=4)
    with pytest.raises(ValueError, match="unknown loss"):
        R.train(m, data, loss="focal", out_dir=tmp_path / "x", epochs=1, lr=1e-3, batch_size=4)
    with pytest.raises(ValueError, match="lr_milestones"):
        R.train(m, tasks, stage="sam_pretrain", lr_milestones=[1], out_dir=tmp_path / "x", epochs=1, lr=1e-3,
                batch_size=4)


def test_evaluate_scores_logits_and_ground_truth_on_one_device(tmp_path, monkeypatch):
    """Defect 10: on CUDA, ``evaluate`` moved the ground truth to the model's device but kept the logits on the CPU,
    and the metric crashed. A CPU cannot run CUDA, so the model here *reports* the ``meta`` device (which holds no
    data and refuses to mix with CPU tensors, as CUDA does): the model inputs must be sent to it, and the metric must
    get the logits and the ground truth on one device. The decoder itself runs on CPU copies of the same batch."""
    tasks = IMISSegTasks(MultiDatasetIMIS(root=_imis_root(tmp_path), split="test", size=64))
    m = _model()
    data = EmbeddingTasks(tasks, cache_embeddings(m, tasks))
    expected = R.evaluate(m, data, prompt="box")

    cpu_batches, real_loader, real_prompted, real_dice = [], R.make_loader, R._prompted, R.per_class_per_image_dice

    def loader(*args, **kwargs):  # remember each CPU batch as the data set made it
        for batch in real_loader(*args, **kwargs):
            cpu_batches.append(batch)
            yield batch

    def prompted(model, batch, kinds, boxes, points):
        assert {v.device.type for v in batch.values()} == {"meta"} and boxes.device.type == "meta"  # on the model's
        cpu = cpu_batches[-1]
        cpu_boxes = torch.stack([R.box_from_mask(cpu["mask"][i, 0]) for i in range(len(kinds))])
        return real_prompted(model, cpu, kinds, cpu_boxes, None)

    def dice(pred, truth, **kwargs):
        assert pred.device == truth.device, (pred.device, truth.device)
        return real_dice(pred, truth, **kwargs)

    monkeypatch.setattr(m, "trainable_parameters", lambda: [torch.nn.Parameter(torch.empty(1, device="meta"))])
    monkeypatch.setattr(R, "make_loader", loader)
    monkeypatch.setattr(R, "_prompted", prompted)
    monkeypatch.setattr(R, "per_class_per_image_dice", dice)
    got = R.evaluate(m, data, prompt="box")
    assert got["dice"] == pytest.approx(expected["dice"], abs=1e-6)


@pytest.mark.parametrize("queries", [4, 8])
def test_ppt_with_more_queries_trains_in_batches_that_mix_prompt_kinds(queries):
    """Defect 11: Table 4's Q = 4 and Q = 8. The sparse-token buffer of a mixed batch is as long as its longest prompt
    (Q PPT tokens); box and point rows are padded with SAM's not-a-point token; a batch without PPT rows keeps SAM's
    2 tokens. Forward and backward run, and the PPT queries get a gradient."""
    m = _model(ppt_queries=queries)
    assert m.ppt.queries.shape[0] == queries
    images, boxes = _batch(4)
    emb, early = m.encode(images)
    m.train()
    points = boxes[:, None, :2] + 2.0
    kinds = ["box", "free", "point", "free"]
    out = R._prompted(m, {"emb": emb, "early": early}, kinds, boxes, points)
    assert out.masks.shape == (4, 1, 16, 16)
    (out.masks.mean() + out.balance_loss).backward()
    assert m.ppt.queries.grad is not None and m.ppt.queries.grad.abs().sum() > 0
    encode = {"box": lambda rows: m.prompt_tokens(emb[rows], boxes=boxes[rows]),
              "point": lambda rows: m.prompt_tokens(emb[rows], points=(points[rows], torch.ones(len(rows), 1))),
              "free": lambda rows: m.prompt_tokens(emb[rows], prompt_free=True)}
    pad = m.sam.prompt_encoder.not_a_point_embed.weight
    sparse = R.prompt_tokens_by_kind(kinds, lambda k, rows: encode[k](rows), batch=4, dim=m.config.prompt_dim,
                                     like=emb, pad=pad)
    assert sparse.shape == (4, queries, m.config.prompt_dim)
    assert torch.equal(sparse[0, 2:], pad.expand(queries - 2, -1)) and torch.equal(sparse[0, :2], encode["box"]([0])[0])
    only_boxes = R.prompt_tokens_by_kind(["box"] * 4, lambda k, rows: encode[k](rows), batch=4,
                                         dim=m.config.prompt_dim, like=emb, pad=pad)
    assert only_boxes.shape[1] == 2
    free = m(emb, early, prompt_free=True)
    assert free.masks.shape == (4, 1, 16, 16)


def test_segmote_stage_uses_the_codes_weight_decay(tmp_path, monkeypatch):
    """Defect 12: AdamW with weight decay 1e-5 (the code's ``--weight_decay``), not torch's default 0.01."""
    made = []
    real = torch.optim.AdamW

    def spy(params, **kwargs):
        made.append(kwargs)
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    tasks = PhantomSegTasks(PhantomDataset2D(n=2, modalities=("derm",), size=64, seed=0, channels=3))
    m = _model()
    data = EmbeddingTasks(tasks, cache_embeddings(m, tasks))
    R.train(m, data, stage="segmote", out_dir=tmp_path / "a", epochs=1, lr=1e-3, batch_size=4)
    assert made[-1].get("weight_decay") == 1e-5
    R.train(m, data, stage="segmote", out_dir=tmp_path / "b", epochs=1, lr=1e-3, batch_size=4, weight_decay=0.0)
    assert made[-1]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="weight_decay"):
        R.train(m, data, stage="segmote", out_dir=tmp_path / "c", epochs=1, lr=1e-3, batch_size=4, weight_decay=-1)


# ---------------------------------------------------------------- issue 13: router switch, controls, token statistics
def _phantom_data(m, n=6, modalities=("cxr", "ct", "mri", "us", "derm")):
    tasks = PhantomSegTasks(PhantomDataset2D(n=n, modalities=modalities, size=64, seed=0, channels=3))
    return EmbeddingTasks(tasks, cache_embeddings(m, tasks))


def test_router_init_switch_and_its_parameter_group(tmp_path, monkeypatch):
    """The named deviation: a non-zero initial W_g (W_n stays zero) and the routers in their own AdamW group at
    router_lr_scale x lr; the paper setting is the code's zero init and one group."""
    assert R.ROUTER_SETTINGS["paper"] == {"router_init_std": 0.0, "router_lr_scale": 1.0}
    zero, dev_ = _model(), _model(router_init_std=R.ROUTER_SETTINGS["deviation"]["router_init_std"])
    assert all(float(m.gate.w_gate.detach().abs().sum()) == 0 for m in zero.motes)
    w = torch.cat([m.gate.w_gate.detach().flatten() for m in dev_.motes])
    assert 0.05 < float(w.std()) < 0.2 and all(float(m.gate.w_noise.detach().abs().sum()) == 0 for m in dev_.motes)
    with pytest.raises(ValueError, match="router_init_std"):
        _model(router_init_std=-1.0)
    made = []
    real = torch.optim.AdamW

    def spy(params, **kwargs):
        made.append((params, kwargs))
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    data = _phantom_data(dev_, n=2, modalities=("derm",))
    res = R.train(dev_, data, stage="segmote", out_dir=tmp_path / "a", epochs=1, lr=1e-3, batch_size=4,
                  router_lr_scale=10.0)
    groups = made[-1][0]
    routers = {id(p) for m in dev_.motes for p in m.gate.parameters()}
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in groups[1]["params"]} == routers and not routers & {id(p) for p in groups[0]["params"]}
    assert res.history[0]["lr"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="router_lr_scale"):
        R.train(dev_, data, stage="segmote", out_dir=tmp_path / "b", epochs=1, lr=1e-3, batch_size=4,
                router_lr_scale=0)


def test_router_drift_is_zero_before_training_and_grows_with_it(tmp_path):
    m = _model(router_init_std=0.1)
    w0 = R.router_weights(m)
    assert [d["moved"] for d in R.router_drift(w0, m)] == [0.0] * len(m.motes)
    R.train(m, _phantom_data(m, n=3), stage="segmote", out_dir=tmp_path / "a", epochs=2, lr=1e-3, batch_size=4,
            router_lr_scale=10.0)
    drift = R.router_drift(w0, m)
    assert all(d["moved"] > 0 and d["initial"] > 0 and d["relative"] > 0 for d in drift)
    zero = _model()
    assert np.isnan(R.router_drift(R.router_weights(zero), zero)[0]["relative"])


def test_evaluate_scores_every_token_and_group_a_items_like_for_like():
    m = _model(router_init_std=0.1)
    data = _phantom_data(m)
    r = R.evaluate(m, data, prompt="box")
    for row in r["rows"]:
        assert len(row["token_dice"]) == m.config.num_expert_tokens
        assert row["token_dice"][row["selected"]] == pytest.approx(row["dice"], abs=1e-6)  # the same metric
    ga = R.evaluate(m, data, prompt="point", items="group_a")
    assert {row["item"] for row in ga["rows"]} == {row["item"] for row in R.evaluate(m, data, prompt="free")["rows"]}
    assert all(row["group_a"] for row in ga["rows"])
    with pytest.raises(ValueError, match="items"):
        R.evaluate(m, data, prompt="box", items="some")
    m.eval()
    noisy = R.evaluate(m, data, prompt="box", noisy=True)
    assert not m.training and len(noisy["rows"]) == len(r["rows"])  # the mode is restored


def test_frozen_model_baseline_uses_the_same_items_prompts_and_metric():
    m = _model()
    data = _phantom_data(m)
    own = R.evaluate_standin(m, data, prompt="box")
    seg = R.evaluate(m, data, prompt="box")
    assert [r["item"] for r in own["rows"]] == [r["item"] for r in seg["rows"]]
    k = 0
    item = data[k]
    box = R.box_from_mask(item["mask"][0])[None]
    logits = R.sam_decode(m.sam, item["emb"][None], boxes=box)
    pred = m.upscale(logits, size=tuple(item["mask"].shape[-2:]))[0, 0] > 0
    truth = item["mask"][0] > 0.5
    expected = float(2 * (pred & truth).sum() / (pred.sum() + truth.sum() + 1e-8))
    assert next(r["dice"] for r in own["rows"] if r["item"] == k) == pytest.approx(expected, abs=1e-5)
    assert 0 <= R.evaluate_standin(m, data, prompt="point", seed=1)["dice"] <= 1
    with pytest.raises(ValueError, match="prompt-free"):
        R.evaluate_standin(m, data, prompt="free")


def test_token_statistics():
    from medmoe.papers.segmote.analysis import (  # why: only these tests use the analysis helpers
        class_dice,
        group_dice,
        nmi_with_null,
        selection_quality,
        token_modality_dice,
    )

    rows = [{"modality": i % 2, "selected": i % 2, "token_dice": [0.9, 0.1] if i % 2 == 0 else [0.2, 0.8],
             "class_index": i % 2, "dice": 0.5, "group_a": i % 2 == 0} for i in range(20)]
    assert token_modality_dice(rows, 2).round(2).tolist() == [[0.9, 0.2], [0.1, 0.8]]
    q = selection_quality(rows)
    assert q["selected_is_best"] == 1.0 and q["chance_is_best"] == 0.5 and q["dice_best"] == q["dice_selected"]
    real, null = nmi_with_null([r["selected"] for r in rows], [r["modality"] for r in rows], n_perm=30)
    assert real == pytest.approx(1.0) and max(null) < real
    names = ["a/x", "b/y"]
    assert class_dice(rows, names, ["a/x"], group_a_only=True) == 0.5 and np.isnan(class_dice(rows, names, ["c/z"]))
    assert group_dice(rows, names, ["a", "b"]) == 0.5
