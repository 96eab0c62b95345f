"""MedMoE (Chapter 2): model shapes and counts, routing semantics, GLoRIA losses, evaluation helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medmoe.backbones import build_swin, build_text_encoder
from medmoe.data.phantoms import PhantomDataset2D, PhantomFindingSet
from medmoe.moe import GateOutput, contingency, normalized_mutual_information
from medmoe.papers.medmoe import recipe as R
from medmoe.papers.medmoe.data import ReportDataset
from medmoe.papers.medmoe.model import (
    CONFIGS,
    MultiScaleExpert,
    aggregate_word_pieces,
    build_model,
    encode_reports,
    example_inputs,
)


@pytest.fixture(scope="module")
def tiny_text():
    return build_text_encoder("random-bert-tiny", max_length=12, layers="sum_last4")


def _model(**kw):
    torch.manual_seed(0)
    return build_model("medmoe_test", **kw)


# ---------------------------------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return build_model("medmoe_paper")


def test_paper_configuration_parameter_count_matches_the_released_code(paper_model):
    m = paper_model
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(m.backbone) == 27_519_354  # Swin-T
    assert count(m.router) == 99_206  # 768 -> 128 -> 6
    assert [count(e) for e in m.experts] == [1_404_673] * 6
    total = count(m)
    assert total == 36_046_598
    assert abs(total / 37e6 - 1) < 0.03  # Table 3: "37M (all experts)"
    assert R.count(m) == {"total": total, "trainable": total, "backbone": 27_519_354, "router": 99_206,
                          "experts": 6 * 1_404_673, "one_expert": 1_404_673, "text_projection": 0}


def test_paper_configuration_flops_with_one_expert_active(paper_model):
    c = R.cost(paper_model)  # the counter counts 2 FLOPs per multiply-accumulate; cost reports MACs
    assert abs(c["gmacs"] / 7.8 - 1) < 0.10, c  # Table 3: 7.8 G with one expert active
    assert 4.0 < c["backbone_gmacs"] < 4.6  # Swin-T, ~4.5 G in the usual MAC convention
    assert c["params_m"] == pytest.approx(36.046598) and c["expert_params_m"] == pytest.approx(1.404673)
    assert paper_model.training  # cost leaves the mode as it found it


def test_example_inputs_give_the_promised_shapes():
    for name in ("medmoe_test", "medmoe_quick"):
        kwargs, shapes = example_inputs(name, batch_size=3)
        out = build_model(name)(**kwargs)
        assert {k: tuple(getattr(out, k).shape) for k in shapes} == shapes
    kwargs, _ = example_inputs(build_model("medmoe_test", router_input="text").config)
    assert set(kwargs) == {"images", "text_global"}


def test_an_injected_backbone_is_used_and_checked():
    torch.manual_seed(0)
    swin = build_swin("swin-test")
    m = build_model("medmoe_test", backbone=swin)
    assert m.backbone is swin
    assert R.build("medmoe_test", backbone=swin).backbone is swin
    with pytest.raises(ValueError, match="swin="):
        build_model("medmoe_test", backbone="swin-test")  # the Swin's configuration name is the field swin
    with pytest.raises(ValueError, match="not both"):
        R.build("medmoe_test", backbone=swin, swin_weights="somewhere")


@pytest.mark.parametrize("name,size", [("medmoe_test", 64), ("medmoe_quick", 64), ("medmoe_test", 48)])
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes(name, size, batch):
    torch.manual_seed(0)
    m = build_model(name)
    cfg = CONFIGS[name]
    out = m(torch.rand(batch, 3, size, size))
    side = cfg.image_size // 4
    assert out.global_.shape == (batch, cfg.width)
    assert out.local.shape == (batch, cfg.width, side, side)
    assert out.gate.indices.shape == (batch, 1)
    assert out.scale_weights.shape == (batch, side * side, 4)
    assert torch.allclose(out.scale_weights.sum(-1), torch.ones(batch, side * side))
    assert int(out.counts.sum()) == batch
    assert torch.allclose(out.global_, out.local.flatten(2).mean(-1), atol=1e-6)


def test_grey_images_are_repeated_to_rgb():
    m = _model().eval()
    x = torch.rand(2, 1, 64, 64)
    assert torch.allclose(m(x).global_, m(x.expand(-1, 3, -1, -1)).global_)


def test_dispatch_equals_computing_every_expert_outputs_and_gradients():
    m = _model()
    x = torch.rand(6, 3, 64, 64)
    maps, pooled = m.forward_features(x)
    idx = torch.tensor([[0], [2], [2], [1], [0], [2]])
    gate = GateOutput(weights=F.one_hot(idx[:, 0], 3).float(), probs=torch.full((6, 3), 1 / 3),
                      logits=torch.zeros(6, 3), indices=idx)
    sparse = m.forward_head(maps, gate)
    grads_sparse = torch.autograd.grad(sparse.global_.square().sum() + sparse.local.mean(),
                                       list(m.experts.parameters()))
    m.compute_all_experts = True
    dense = m.forward_head(maps, gate)
    grads_dense = torch.autograd.grad(dense.global_.square().sum() + dense.local.mean(), list(m.experts.parameters()))
    assert torch.allclose(sparse.global_, dense.global_, atol=1e-6)
    assert torch.allclose(sparse.scale_weights, dense.scale_weights, atol=1e-6)
    assert sparse.counts.tolist() == dense.counts.tolist() == [2, 1, 3]
    for a, b in zip(grads_sparse, grads_dense):
        assert torch.allclose(a, b, atol=1e-6)


def test_only_the_selected_experts_run():
    m = _model()
    calls = [0] * 3
    for i, e in enumerate(m.experts):
        e.register_forward_hook(lambda mod, inp, out, i=i: calls.__setitem__(i, calls[i] + inp[0].shape[0]))
    out = m(torch.rand(4, 3, 64, 64))
    chosen = out.gate.indices[:, 0].tolist()
    assert calls == [chosen.count(k) for k in range(3)]
    m.compute_all_experts = True
    calls[:] = [0, 0, 0]
    m(torch.rand(4, 3, 64, 64))
    assert calls == [4, 4, 4]


def test_router_learns_only_from_the_auxiliary_loss():
    m = _model()
    out = m(torch.rand(4, 3, 64, 64))
    task = out.global_.square().sum() + out.local.mean()
    task.backward(retain_graph=True)
    assert all(p.grad is None for p in m.router.parameters())  # hard routing: no gradient from the task
    unselected = set(range(3)) - set(out.gate.indices[:, 0].tolist())
    for k in unselected:
        assert all(p.grad is None for p in m.experts[k].parameters())
    m.aux_loss(out.gate, torch.tensor([0, 1, 2, 0])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.router.parameters())


def test_aux_loss_on_logits_or_on_probabilities_like_the_code():
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    gate = GateOutput(weights=torch.zeros(5, 3), probs=logits.softmax(-1), logits=logits,
                      indices=logits.argmax(-1, keepdim=True))
    y = torch.tensor([0, 1, 2, 1, 0])
    assert torch.allclose(_model().aux_loss(gate, y), F.cross_entropy(logits, y))
    assert torch.allclose(_model(aux_on="probs").aux_loss(gate, y), F.cross_entropy(logits.softmax(-1), y))


def test_text_conditioned_router_option():
    m = _model(router_input="text")
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="text_global"):
        m(x)
    t = torch.randn(2, 32)
    assert m(x, text_global=t).gate.indices.shape == (2, 1)
    assert m.router.in_features == 32


def test_linear_1d_alignment_is_interpolation_along_the_flattened_tokens():
    torch.manual_seed(0)
    e = MultiScaleExpert(in_widths=(2, 2), width=2, attn_hidden=2)
    with torch.no_grad():
        for p in e.proj:
            p.weight.copy_(torch.eye(2)[:, :, None])
            p.bias.zero_()
        e.scale_attention[2].weight.zero_()  # equal scale weights: V = mean of the aligned scales
        e.scale_attention[2].bias.zero_()
    fine = torch.zeros(1, 2, 4, 4)
    coarse = torch.rand(1, 2, 2, 2)
    v, beta = e(fine, coarse)
    assert torch.allclose(beta, torch.full_like(beta, 0.5))
    expected = F.interpolate(coarse.flatten(2), size=16, mode="linear").transpose(1, 2) / 2
    assert torch.allclose(v, expected, atol=1e-6)
    e.align = "bilinear2d"
    v2, _ = e(fine, coarse)
    expected2 = F.interpolate(coarse, size=(4, 4), mode="bilinear").flatten(2).transpose(1, 2) / 2
    assert torch.allclose(v2, expected2, atol=1e-6)
    assert not torch.allclose(v, v2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_experts=0), "num_experts"), (dict(align="nearest"), "align"),
    (dict(router_input="report"), "router_input"), (dict(aux_on="softmax"), "aux_on"),
    (dict(swin="swin-huge"), "swin"), (dict(image_size=32), "too small"),
    (dict(colour=3), "unknown MedMoEConfig field"),
])
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("medmoe_test", **kwargs)


def test_bad_inputs():
    m = _model()
    with pytest.raises(ValueError, match="channels"):
        m(torch.rand(1, 2, 64, 64))
    with pytest.raises(ValueError, match="rank"):
        m(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="expects 4 maps"):
        m.experts[0](torch.rand(1, 16, 4, 4))
    with pytest.raises(ValueError, match="unknown MedMoE configuration"):
        build_model("medmoe_large")


# ----------------------------------------------------------------------------------------------------- text


def test_aggregate_word_pieces_like_gloria():
    h = torch.arange(1.0, 9.0)[None, :, None].expand(1, 8, 2)
    tokens = [["[CLS]", "card", "##iome", "##gal", "##y", "left", "[SEP]", "[PAD]"]]
    words, names = aggregate_word_pieces(h, tokens)
    assert names == [["[CLS]", "cardiomegaly", "left", "[SEP]"]]
    assert words[0, :, 0].tolist() == [1.0, 2 + 3 + 4 + 5, 6.0, 7.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="tokens"):
        aggregate_word_pieces(h, [["[CLS]"]])


def test_encode_reports(tiny_text):
    texts = ["Upper left lung opacity.", "No finding."]
    r = encode_reports(tiny_text, texts)
    assert r.words.shape == (2, 12, 32)
    assert torch.allclose(r.sentence, r.words.mean(1))
    for i, t in enumerate(texts):
        n_words = len(tiny_text.words(t))
        assert int(r.cap_lens[i]) == n_words + 1
        assert r.words_text[i][0] == "[CLS]" and r.words_text[i][-1] == "[SEP]"
        assert r.words[i, n_words + 2:].abs().sum() == 0  # zeros after [SEP]
    chunked = encode_reports(tiny_text, texts, batch_size=1)
    assert torch.allclose(chunked.words, r.words, atol=1e-5)
    with pytest.raises(ValueError, match="sum_last4"):
        encode_reports(build_text_encoder("random-bert-tiny", max_length=12), texts)


# --------------------------------------------------------------------------------------------------- losses


def test_global_loss_by_hand():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    cos = torch.tensor([[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]) * 10
    row = -(cos[0, 0] - torch.logsumexp(cos[0], 0) + cos[1, 1] - torch.logsumexp(cos[1], 0)) / 2
    col = -(cos[0, 0] - torch.logsumexp(cos[:, 0], 0) + cos[1, 1] - torch.logsumexp(cos[:, 1], 0)) / 2
    l0, l1 = R.global_contrastive_loss(v, t)
    assert torch.allclose(l0, row) and torch.allclose(l1, col)


def test_gloria_attention_double_softmax():
    torch.manual_seed(0)
    words, regions = torch.randn(2, 3, 4), torch.randn(2, 4, 2, 5)
    ctx, attn = R.gloria_attention(words, regions, temp1=4.0)
    s = torch.einsum("bdm,bwd->bmw", regions.flatten(2), words).softmax(-1)  # over words first
    a = (s.transpose(1, 2) * 4.0).softmax(-1)  # then over regions
    assert torch.allclose(attn.flatten(2), a, atol=1e-6)
    assert torch.allclose(attn.flatten(2).sum(-1), torch.ones(2, 3))
    assert torch.allclose(ctx, torch.einsum("bwm,bdm->bwd", a, regions.flatten(2)), atol=1e-5)


def test_local_similarity_equals_the_per_report_loop():
    torch.manual_seed(0)
    local, words = torch.randn(5, 8, 3, 3), torch.randn(4, 9, 8)
    cap = torch.tensor([1, 3, 7, 4])
    sim = R.local_similarity(local, words, cap)
    assert sim.shape == (5, 4)
    for j in range(4):
        w = words[j, 1:int(cap[j]) + 1][None].expand(5, -1, -1)
        c, _ = R.gloria_attention(w, local, 4.0)
        ref = torch.log((F.cosine_similarity(w, c, dim=-1) * 5.0).exp().sum(1))
        assert torch.allclose(sim[:, j], ref, atol=1e-5)
    with pytest.raises(ValueError, match="cap_lens"):
        R.local_similarity(local, words, torch.tensor([0, 1, 1, 1]))


def test_local_loss_prefers_the_matching_pairs():
    torch.manual_seed(0)
    d = 16
    words = torch.zeros(3, 6, d)
    local = torch.randn(3, d, 2, 2) * 0.1
    for i in range(3):  # report i's words sit in image i's regions
        vecs = torch.randn(3, d)
        words[i, 1:4] = vecs
        local[i].flatten(1)[:, :3] = vecs.T
    cap = torch.tensor([3, 3, 3])
    l0, l1 = R.local_contrastive_loss(local, words, cap)
    shuffled = R.local_contrastive_loss(local[[1, 2, 0]], words, cap)
    assert l0 + l1 < shuffled[0] + shuffled[1]
    assert l0 < math.log(3) and l1 < math.log(3)


def test_pretrain_step_gives_every_term_and_gradients(tiny_text):
    m = _model()
    r = encode_reports(tiny_text, ["a b", "c d e", "f"])
    batch = {"image": torch.rand(3, 3, 64, 64), "words": r.words, "sentence": r.sentence, "cap_len": r.cap_lens,
             "modality": torch.tensor([0, 1, 2])}
    out = R.pretrain_step(m, batch)
    assert set(out) == {"loss", "global", "local", "aux", "router_acc"}
    w = R.LossWeights()
    assert torch.allclose(out["loss"], w.local * out["local"] + w.global_ * out["global"] + w.aux * out["aux"])
    out["loss"].backward()
    assert any(p.grad is not None for p in m.router.parameters())
    assert any(p.grad is not None for p in m.backbone.parameters())


# ----------------------------------------------------------------------------------------------- evaluation


def test_zero_shot_predict_and_prompt_ensembles():
    img = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]])
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert R.zero_shot_predict(img, prompts).tolist() == [0, 1, 2]
    ens = torch.stack([prompts, prompts * 3], dim=1)  # (C, P, D): scale does not matter after normalisation
    assert R.zero_shot_predict(img, ens).tolist() == [0, 1, 2]


def test_retrieval_recall_by_hand_and_with_groups():
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.95, 0.5, 0.0], [0.1, 0.2, 0.3]])
    r = R.retrieval_recall(sim, ks=(1, 2))
    assert r["i2t_R@1"] == pytest.approx(2 / 3)  # image 1's best report is report 0
    assert r["i2t_R@2"] == pytest.approx(1.0)
    assert r["t2i_R@1"] == pytest.approx(1 / 3)  # reports 0 and 1 both prefer image 1; report 2 prefers image 2
    grouped = R.retrieval_recall(sim, ks=(1,), groups=["a", "a", "b"])  # reports 0 and 1 are the same text
    assert grouped["i2t_R@1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="square"):
        R.retrieval_recall(torch.zeros(2, 3))


def test_linear_probe_rises_to_perfect_on_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 5, generator=g) * 0.3 + F.one_hot(y, 5).float() * 3
    res = R.linear_probe(x[:200], y[:200].tolist(), x[200:], y[200:].tolist(), fractions=(0.01, 0.1, 1.0))
    assert set(res) == {0.01, 0.1, 1.0}
    assert res[1.0] == 1.0 and all(0 <= v <= 1 for v in res.values())


def test_train_runs_resumes_and_records_router_accuracy(tmp_path, tiny_text):
    ds = PhantomDataset2D(n=9, modalities=("cxr", "ct", "mri"), size=64, seed=0, channels=3)
    r = encode_reports(tiny_text, ds.reports)
    data = ReportDataset(ds, r)
    m = _model()
    res = R.train(m, data, data, out_dir=tmp_path / "run", epochs=1, lr=1e-3, batch_size=3, seed=0)
    assert res.epochs_run == 1 and {"train_router_acc", "val_loss", "val_aux"} <= set(res.history[0])
    again = R.train(_model(), data, data, out_dir=tmp_path / "run", epochs=2, lr=1e-3, batch_size=3, seed=0)
    assert len(again.history) == 2 and again.history[0] == res.history[0]
    alone = R.train(_model(), data, out_dir=tmp_path / "no_val", epochs=1, lr=1e-3, batch_size=4, seed=0)
    assert alone.monitor == "train_loss" and not any(k.startswith("val_") for k in alone.history[0])
    emb = R.embed_images(m, ds, batch_size=4, keep_local=True)
    assert emb["global"].shape == (9, 32) and emb["expert"].shape == (9,) and emb["local"].shape == (9, 32, 16, 16)
    words, maps, expert = R.word_attention(m, ds[0]["image"], r, index=0)
    assert maps.shape == (len(words), 16, 16) and torch.allclose(maps.flatten(1).sum(1), torch.ones(len(words)))
    assert "[SEP]" not in words and 0 <= expert < 3
    with pytest.raises(ValueError, match="encoded reports"):
        ReportDataset(ds, encode_reports(tiny_text, ds.reports[:3]))


def test_evaluate_gives_the_chapters_numbers(tiny_text):
    """evaluate = embed_images + the notebook's routing, zero-shot, probe and retrieval computations."""
    m = _model().eval()
    pairs = PhantomDataset2D(n=12, modalities=("cxr", "ct", "mri"), size=64, seed=0, channels=3)
    data = ReportDataset(pairs, encode_reports(tiny_text, pairs.reports))
    res = R.evaluate(m, data, batch_size=5, groups=pairs.reports)
    emb = R.embed_images(m, pairs, batch_size=5)
    assert torch.equal(res["global"], emb["global"]) and torch.equal(res["expert"], emb["expert"])
    table = contingency(emb["modality"], emb["expert"], num_a=5, num_b=3)
    assert res["router_agreement"] == float(table.max(dim=1).values.sum() / table.sum())
    assert res["router_nmi"] == float(normalized_mutual_information(emb["expert"], emb["modality"]))
    sim = R.global_similarity(emb["global"], data.reports.sentence)
    assert res["retrieval"] == R.retrieval_recall(sim, groups=pairs.reports)
    assert "local" not in res and "zero_shot_global" not in res

    train = PhantomFindingSet(modality="ct", n_per_class=2, size=64, seed=5, channels=3)
    test = PhantomFindingSet(modality="ct", n_per_class=2, size=64, seed=6, channels=3)
    prompts = [list(p) for p in test.prompts]
    owner = torch.tensor([c for c, ps in enumerate(prompts) for _ in ps])
    enc = encode_reports(tiny_text, [p for ps in prompts for p in ps])
    res = R.evaluate(m, test, prompts=enc, prompt_class=owner, probe_train=train, fractions=(0.5, 1.0), seed=3)
    te = R.embed_images(m, test, keep_local=True)
    per_class = lambda s: torch.stack([s[:, owner == c].mean(1) for c in range(len(prompts))], 1)  # noqa: E731
    g = R.global_similarity(te["global"], enc.sentence)
    loc = R.local_similarity(te["local"], enc.words, enc.cap_lens)
    assert res["zero_shot_global"] == float((per_class(g).argmax(1) == te["label"]).float().mean())
    assert res["zero_shot_local"] == float((per_class(loc).argmax(1) == te["label"]).float().mean())
    tr = R.embed_images(m, train)
    assert res["linear_probe"] == R.linear_probe(tr["global"], tr["label"].tolist(), te["global"],
                                                 te["label"].tolist(), fractions=(0.5, 1.0), seed=3)
    assert R.evaluate(m, test, prompts=enc, prompt_class=owner, keep_local=True)["local"].shape == te["local"].shape
    with pytest.raises(ValueError, match="label"):
        R.evaluate(m, pairs, prompts=enc, prompt_class=owner)
    with pytest.raises(ValueError, match="one class per prompt"):
        R.prompt_class_scores(g, owner[:-1])


def test_benchmark_script_runs_on_a_tiny_model(tmp_path):
    from medmoe.benchmarks import medmoe_routing

    res = medmoe_routing.run(batch=3, repeats=1, num_experts=3, config="medmoe_test")
    assert set(res["seconds_median"]) == {"K=1", "K=3 dispatched", "K=3 all experts (released code)"}
    assert res["dispatched_over_k1"] > 0 and res["all_experts_over_dispatched"] > 0
    assert medmoe_routing.spread_gate(5, 3).indices[:, 0].tolist() == [0, 1, 2, 0, 1]


def test_paper_configuration_trains_a_step_on_unimed_files_with_a_medclip_checkpoint(tmp_path):
    """The paper profile offline: Swin-T + 6 experts at 224 px, a 768-d 12-layer BERT read from a local folder
    (``save_pretrained`` format), MedCLIP-style weights loaded into the Swin, and UniMed caption tables."""
    from transformers import BertConfig, BertModel  # a 12-layer BERT saved in the save_pretrained layout

    from medmoe.backbones import load_medclip_swin
    from medmoe.papers.medmoe.data import UniMedCaptions, write_unimed_fixture

    rows = [("radiology_ai/CT/a.png", ["CT of the abdomen, liver lesion.", "Axial CT."]),
            ("radiology_ai/MR/b.png", ["Knee MRI with an ACL tear."]), ("radiology_ai/US/c.png", ["Thyroid nodule."])]
    csv = write_unimed_fixture(tmp_path / "unimed", rows, image_size=40)
    ds = UniMedCaptions(csv_files=[csv], image_root=tmp_path / "unimed", size=224, modality="from_path")
    assert len(ds) == 4 and ds.modality_labels == [1, 1, 2, 3]

    bert_dir = tmp_path / "bio_clinicalbert"
    tiny = build_text_encoder("random-bert-base", max_length=25, layers="sum_last4")
    BertModel(BertConfig(**tiny.backbone.config.to_dict())).save_pretrained(bert_dir)
    tiny.tokenizer.save_pretrained(bert_dir)
    text = build_text_encoder(str(bert_dir), max_length=25, layers="sum_last4")
    assert text.width == 768 and text.backbone.config.num_hidden_layers == 12

    donor = build_swin("swin-tiny")
    ckpt = tmp_path / "medclip" / "pytorch_model.bin"
    ckpt.parent.mkdir()
    torch.save({f"vision_model.model.{k}": v for k, v in donor.state_dict().items()}, ckpt)
    swin = build_swin("swin-tiny")
    report = load_medclip_swin(swin, ckpt.parent, warn=False)
    assert report.loaded and not report.unexpected
    model = build_model("medmoe_paper", backbone=swin)
    key = "encoder.layers.0.blocks.0.attention.q_proj.weight"
    assert torch.equal(model.backbone.state_dict()[key], donor.state_dict()[key])
    built = R.build("medmoe_paper", medclip_checkpoint=ckpt.parent, num_experts=2)  # the notebook's way
    assert torch.equal(built.backbone.state_dict()[key], donor.state_dict()[key]) and built.config.num_experts == 2

    data = ReportDataset(ds, encode_reports(text, ds.texts))
    batch = torch.utils.data.default_collate([data[i] for i in range(3)])
    model.train()
    out = R.pretrain_step(model, batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["local"] > 0 and out["global"] > 0
    assert sum(p.grad is not None for p in model.experts.parameters()) > 0
