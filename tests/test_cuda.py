"""Every chapter trains and evaluates on a CUDA GPU (issue 12, "Ready for a GPU"): ``pytest -m cuda``.

Skipped without CUDA. Each test builds the chapter's ``_test`` configuration on the GPU, trains it for one epoch
on a few tiny items through the recipe's own ``train`` (so :func:`medmoe.engine.train_loop`, with bf16 on a GPU that
has it), then runs the recipe's ``evaluate``. The data's tensors start on the CPU, as a DataLoader gives them, so
a recipe that leaves one tensor on the CPU and puts another on the GPU fails here (SegMoTE's ``evaluate`` once
combined CPU logits with a GPU ground truth: issue 12, defect 10). Each test checks a finite loss, that the
trainable parameters changed, and that the metrics lie in their range.

The checks are written for any device (``_mlmoe(device, tmp_path)``, ...), so they can be read and debugged on
the CPU; only the CUDA run catches the device mix-ups.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from medmoe.benchmarks.paper_steps import box_masks
from medmoe.data.phantoms import MODALITIES, PhantomDataset2D
from medmoe.papers import medmoe, mlmoe, mome, segmote
from medmoe.papers.medmoe.data import ReportDataset
from medmoe.papers.mome.data import PhantomCT, RandomPatches
from medmoe.papers.segmote.data import EmbeddingTasks, PhantomSegTasks, cache_embeddings

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m cuda on a GPU)")]


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _changed(before: list[torch.Tensor], params) -> bool:
    return any(not torch.equal(a, p.detach()) for a, p in zip(before, params))


def _in_unit_range(values) -> bool:
    """Every value a finite number in [0, 1] or NaN (a class never scored), and at least one finite."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    finite = t[~t.isnan()]
    return finite.numel() > 0 and bool(((finite >= 0) & (finite <= 1)).all())


def _finite_history(fit) -> None:
    losses = [v for h in fit.history for k, v in h.items() if k.endswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses), fit.history


# ----------------------------------------------------------------------------- chapter 1, MLMoE
def _mlmoe(device: str, tmp_path) -> dict:
    g = torch.Generator().manual_seed(0)
    model = mlmoe.build("mlmoe_test").to(device)
    c = model.config
    masks = box_masks(8, 64, generator=g)
    data = [{"image": torch.randn(1, 64, 64, generator=g), "mask": masks[i],
             "text_features": torch.randn(c.text_len, c.text_in_width, generator=g)} for i in range(8)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = _snapshot(trainable)
    fit = mlmoe.train(model, data, data[:4], stage="text_present", out_dir=tmp_path / "s1", epochs=1, lr=1e-3,
                batch_size=4)
    _finite_history(fit)
    assert _changed(before, trainable), "no trainable parameter of MLMoE moved in stage 1"
    prompt = model.virtual_prompt.detach().clone()
    fit2 = mlmoe.train(model, data, data[:4], stage="text_absent", out_dir=tmp_path / "s2", epochs=1, lr=1e-3,
                 batch_size=4)
    _finite_history(fit2)
    assert not torch.equal(prompt, model.virtual_prompt.detach()), "the virtual prompt did not move in stage 2"
    assert next(model.parameters()).device.type == torch.device(device).type
    fixed = torch.randn(c.text_len, c.text_in_width, generator=g)  # a fixed prompt's features, on the CPU
    out = {}
    for name, text in (("report", "report"), ("virtual", "virtual"), ("fixed", fixed)):
        res = mlmoe.evaluate(model, data, text=text, batch_size=4)
        assert res["num_images"] == 8
        assert _in_unit_range([res["global_dice"], res["global_iou"], res["per_image_dice"]]), (name, res)
        assert all(gw.shape[0] == 8 for gw in res["gates"])
        out[name] = res
    return out


def test_mlmoe_trains_and_evaluates_on_cuda(tmp_path):
    _mlmoe("cuda", tmp_path)


# ----------------------------------------------------------------------------- chapter 2, MedMoE
def _medmoe(device: str, tmp_path) -> dict:
    g = torch.Generator().manual_seed(0)
    model = medmoe.build("medmoe_test").to(device)
    c, n, length = model.config, 16, 25
    words = torch.randn(n, length, c.width, generator=g)
    reports = SimpleNamespace(words=words, sentence=words.mean(1),
                              cap_lens=torch.randint(2, length - 1, (n,), generator=g))
    base = [{"image": torch.rand(3, c.image_size, c.image_size, generator=g), "modality": i % c.num_experts,
             "label": i % 2} for i in range(n)]
    data = ReportDataset(base, reports)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = _snapshot(trainable)
    fit = medmoe.train(model, data, data, out_dir=tmp_path / "pre", epochs=1, lr=1e-3, batch_size=8, patience=None)
    _finite_history(fit)
    assert _changed(before, trainable), "no trainable parameter of MedMoE moved"
    assert next(model.parameters()).device.type == torch.device(device).type
    # zero-shot (global and GLoRIA's local similarity) with two class prompts, a linear probe, the router's numbers
    pw = torch.randn(2, length, c.width, generator=g)
    prompts = SimpleNamespace(words=pw, sentence=pw.mean(1), cap_lens=torch.tensor([5, 7]))
    res = medmoe.evaluate(model, base, batch_size=8, prompts=prompts, probe_train=base, fractions=(1.0,))
    assert _in_unit_range([res["zero_shot_global"], res["zero_shot_local"], res["router_agreement"],
                           *res["linear_probe"].values()]), res
    assert res["global"].shape == (n, c.width) and torch.isfinite(res["global"]).all()
    # retrieval against the paired reports (ReportDataset items)
    ret = medmoe.evaluate(model, data, batch_size=8)["retrieval"]
    assert _in_unit_range(list(ret.values())), ret
    return res


def test_medmoe_trains_and_evaluates_on_cuda(tmp_path):
    _medmoe("cuda", tmp_path)


# ----------------------------------------------------------------------------- chapter 3, SegMoTE
def _segmote(device: str, tmp_path) -> dict:
    model = segmote.build("segmote_test").to(device)
    side = model.config.image_size
    tasks = PhantomSegTasks(PhantomDataset2D(n=10, modalities=MODALITIES, size=side, seed=0, channels=3))
    data = EmbeddingTasks(tasks, None)  # no cache: the images come from the CPU and the frozen encoder runs per batch
    trainable = model.trainable_parameters()
    sam = _snapshot(model.sam.parameters())
    before = _snapshot(trainable)
    fit = segmote.train(model, data, out_dir=tmp_path / "segmote", epochs=1, lr=1e-3, batch_size=8)
    _finite_history(fit)
    assert _changed(before, trainable), "no trainable parameter of SegMoTE moved"
    assert not _changed(sam, model.sam.parameters()), "the frozen SAM moved"
    assert next(model.parameters()).device.type == torch.device(device).type
    cached = EmbeddingTasks(tasks, cache_embeddings(model, tasks))  # the notebook's cache=True path
    out = {}
    for name, d in (("images", data), ("cached", cached)):
        for prompt in ("box", "point", "free"):
            res = segmote.evaluate(model, d, prompt=prompt, batch_size=8)
            assert _in_unit_range([res["dice"]]) and _in_unit_range(res["per_class"]), (name, prompt, res["dice"])
            assert res["rows"] and all(0 <= r["selected"] < model.config.num_expert_tokens for r in res["rows"])
            out[name, prompt] = res
    return out


def test_segmote_trains_and_evaluates_on_cuda(tmp_path):
    _segmote("cuda", tmp_path)


# ----------------------------------------------------------------------------- chapter 4, MoME
def _mome(device: str, tmp_path) -> dict:
    g = torch.Generator().manual_seed(0)
    volumes = PhantomCT(sources=["kidney", "liver_tumour"], n_per_source=2, size=32, seed=0)
    classes = volumes[0]["label"].shape[0]
    out = {}
    for name in ("universal_test", "mome_test"):
        model = mome.build(name, num_classes=classes).to(device)
        model.set_text_embeddings(torch.randn(classes, model.config.text_dim, generator=g))
        before = _snapshot(model.parameters())
        fit = mome.train(model, RandomPatches(volumes, patch=model.config.roi_size), out_dir=tmp_path / name, epochs=1,
                    lr=1e-3, batch_size=2)
        _finite_history(fit)
        assert _changed(before, model.parameters()), f"no parameter of {name} moved"
        assert next(model.parameters()).device.type == torch.device(device).type
        res = mome.evaluate(model, volumes)
        assert res["dice"].shape == (len(volumes), classes)
        assert _in_unit_range(res["dice"]) and _in_unit_range(res["per_class"]), res["dice"]
        out[name] = res
    return out


def test_mome_trains_and_evaluates_on_cuda(tmp_path):
    _mome("cuda", tmp_path)
