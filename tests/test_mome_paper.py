"""Chapter 4's paper path (issue 12, defects 15-17 and 20, and the rehearsal): the evaluation skips absent organs,
router maps are stitched only for drawn volumes, the self-supervised Swin UNETR weights load with MONAI's ``load_from``,
the warm-up + cosine schedule, the Universal Model's augmentations, the card's declared inputs and the rehearsal
fixtures in the real formats."""

from __future__ import annotations

import dataclasses
import math
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medmoe.papers import load_card
from medmoe.papers.mome import recipe as R
from medmoe.papers.mome.data import (
    LABEL_TRANSFER,
    PhantomCT,
    RandomPatches,
    UniversalDataset,
    parse_dataset_list,
)
from medmoe.papers.mome.fixtures import REHEARSAL_DATASETS, write_rehearsal_fixtures, write_swinvit_checkpoint
from medmoe.papers.mome.model import CONFIGS, build_model, build_swinunetr, load_self_supervised
from medmoe.papers.mome.prepare import LIST_FOLDER
from medmoe.repro.runner import MissingInputsError, check_inputs, materialise_fixtures

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("mome_fixtures")
    write_rehearsal_fixtures(root)
    return root


# ----------------------------------------------------------------------------------------------- defect 15


def test_evaluate_skips_a_labelled_organ_absent_from_the_volume():
    """A phantom 'multi_organ' volume labels the liver tumour's source classes; an organ its source labels but its
    ground truth lacks must be NaN in ``dice`` (the reference test.py), not 0."""
    torch.manual_seed(0)
    m = build_model("universal_test", num_classes=6)
    m.set_text_embeddings(torch.randn(6, 16))
    vols = PhantomCT(sources=["multi_organ"], n_per_source=1, size=32)
    item = vols[0]
    labelled, present = item["labelled"], item["label"].flatten(1).any(1)
    absent = labelled & ~present
    if not absent.any():  # make one labelled organ absent from this volume's ground truth
        c = int(labelled.nonzero()[0])
        item["label"][c] = 0
        absent = torch.zeros_like(labelled)
        absent[c] = True
    r = R.evaluate(m, [item])
    dice = torch.as_tensor(r["dice"][0])
    assert torch.isnan(dice[absent]).all()
    assert not torch.isnan(dice[labelled & ~absent]).any()


# ----------------------------------------------------------------------------------------------- defect 17


def test_router_maps_are_stitched_only_for_the_drawn_volumes(monkeypatch):
    """sliding_window_inference must get a logits-only predictor for every volume that no figure draws: the
    stitched router map is C x E times the volume."""
    calls = []
    real = R.sliding_window_inference

    def spy(inputs, roi, sw_batch_size, predictor, **kw):
        out = real(inputs, roi, sw_batch_size, predictor, **kw)
        calls.append(not torch.is_tensor(out))  # True: the router map was stitched too
        return out

    monkeypatch.setattr(R, "sliding_window_inference", spy)
    torch.manual_seed(0)
    m = build_model("mome_test", num_classes=6)
    m.set_text_embeddings(torch.randn(6, 16))
    vols = PhantomCT(sources=["kidney"], n_per_source=3, size=32)
    r = R.evaluate(m, vols, maps_for=[1])
    assert calls == [False, True, False]
    assert len(r["maps"]) == 1 and r["maps"][0]["index"] == 1 and r["maps"][0]["router"].shape == (6, 2, 32, 32, 32)
    calls.clear()
    assert R.evaluate(m, vols)["maps"] == [] and calls == [False, False, False]
    with pytest.raises(ValueError, match="maps_for"):
        R.evaluate(m, vols, maps_for=[3])


# ----------------------------------------------------------------------------------------------- defect 16


def test_self_supervised_swin_weights_load_with_monai_load_from(tmp_path):
    path = write_swinvit_checkpoint(tmp_path / "model_swinvit.pt", "mome_test", seed=7)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(k.startswith("module.") for k in state) and "module.layers2.0.blocks.0.mlp.fc2.bias" in state
    torch.manual_seed(0)
    m = build_model("mome_test", num_classes=32, text_dim=512, pretrained=path)
    vit = m.backbone.swinViT
    assert torch.equal(vit.patch_embed.proj.weight, state["module.patch_embed.proj.weight"])
    assert torch.equal(vit.layers1[0].blocks[0].mlp.linear1.weight, state["module.layers1.0.blocks.0.mlp.fc1.weight"])
    reduction = state["module.layers3.0.downsample.reduction.weight"]
    assert torch.equal(vit.layers3[0].downsample.reduction.weight, reduction)
    torch.manual_seed(0)
    fresh = build_model("mome_test", num_classes=32, text_dim=512)
    assert not torch.equal(fresh.backbone.swinViT.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    assert m(torch.rand(1, 1, 32, 32, 32)).logits.shape == (1, 32, 32, 32, 32)


def test_self_supervised_weights_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt.*model_swinvit\.pt"):
        build_model("universal_test", pretrained=tmp_path / "nothere.pt")
    torch.save({"net": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt is not in the model_swinvit\.pt format"):
        build_model("universal_test", pretrained=tmp_path / "other.pt")
    small = write_swinvit_checkpoint(tmp_path / "small.pt", "universal_test")
    with pytest.raises(ValueError, match=r"small\.pt does not fit the backbone"):
        load_self_supervised(build_swinunetr(dataclasses.replace(CONFIGS["universal_test"], feature_size=24)), small)
    with pytest.raises(ValueError, match=r"small\.pt lacks the Swin UNETR key .*blocks\.1"):  # two blocks per stage
        load_self_supervised(build_swinunetr(CONFIGS["universal_quick"]), small)
    state = torch.load(small, weights_only=True)
    del state["state_dict"]["module.layers1.0.blocks.0.attn.qkv.weight"]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match=r"cut\.pt lacks the Swin UNETR key .*qkv"):
        build_model("universal_test", pretrained=tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="either backbone or pretrained"):
        build_model("universal_test", pretrained=small, backbone=build_swinunetr(CONFIGS["universal_test"]))


def test_warmup_cosine_is_the_universal_models_schedule():
    # LinearWarmupCosineAnnealingLR(warmup 100, max 2000) stepped before each epoch: epoch e trains at t = e + 1.
    f = [R.warmup_cosine_factor(e, warmup_epochs=100, max_epochs=2000) for e in range(2000)]
    assert f[0] == pytest.approx(1 / 99) and f[97] == pytest.approx(98 / 99) and f[98] == 1.0 and f[99] == 1.0
    assert f[1049] == pytest.approx(0.5 * (1 + math.cos(math.pi * 950 / 1900)))
    assert f[-1] == pytest.approx(0.0, abs=1e-12) and all(a >= b for a, b in zip(f[99:], f[100:]))
    with pytest.raises(ValueError, match="warmup_epochs"):
        R.warmup_cosine_factor(0, warmup_epochs=10, max_epochs=10)


def test_train_follows_the_schedule_per_epoch(tmp_path):
    torch.manual_seed(0)
    m = build_model("universal_test", num_classes=6)
    m.set_text_embeddings(torch.randn(6, 16))
    patches = RandomPatches(PhantomCT(sources=["kidney"], n_per_source=2, size=32), patch=32)
    res = R.train(m, patches, out_dir=tmp_path, epochs=4, lr=1e-3, batch_size=2, schedule="warmup_cosine",
                  warmup_epochs=2)
    want = [1e-3 * R.warmup_cosine_factor(e, warmup_epochs=2, max_epochs=4) for e in range(4)]
    assert [h["lr"] for h in res.history] == pytest.approx(want)
    with pytest.raises(ValueError, match="schedule"):
        R.train(m, patches, out_dir=tmp_path / "x", epochs=1, lr=1e-3, batch_size=2, schedule="cosine")


def test_augmentations_are_the_universal_models(rehearsal, monkeypatch):
    """RandZoom only for the MSD datasets (its RandZoomd_select), then the crop, then RandRotate90 and
    RandShiftIntensity on every patch; none of them without ``augment``."""
    ds = UniversalDataset(root=rehearsal / "universal", list_file=rehearsal / "universal" / LIST_FOLDER /
                          "universal_train.txt")
    seen = []
    patches = RandomPatches(ds, patch=32, augment=True)
    for name in ("_zoom", "_rotate", "_shift"):
        t = getattr(patches, name)
        monkeypatch.setattr(t, "prob", 1.0)
        monkeypatch.setattr(type(t), "__call__", lambda self, d, *a, _n=name, _c=type(t).__call__, **k:
                            (seen.append(_n), _c(self, d, *a, **k))[1])
    for k in range(len(ds)):
        seen.clear()
        item = patches[k]
        zoomed = ["_zoom"] if ds.cases[k].dataset.startswith("10_") else []
        assert seen == zoomed + ["_rotate", "_shift"], ds.cases[k].dataset
        assert item["image"].shape == (1, 32, 32, 32) and item["label"].shape == (32, 32, 32, 32)
    seen.clear()
    RandomPatches(ds, patch=32)[0]
    assert seen == []


# ----------------------------------------------------------------------------------------------- defect 20, rehearsal


def test_rehearsal_fixtures_are_in_the_real_formats(rehearsal):
    lists = rehearsal / "universal" / LIST_FOLDER
    train, test = (parse_dataset_list(lists / f"universal_{s}.txt") for s in ("train", "test"))
    assert {c.dataset for c in train} == {c.dataset for c in test} == set(REHEARSAL_DATASETS)
    assert not {c.name for c in train} & {c.name for c in test}
    item = UniversalDataset(root=rehearsal / "universal", list_file=lists / "universal_test.txt")[1]
    assert item["dataset"] == "10_03" and item["label"][5].sum() > 0 and item["label"][26].sum() > 0  # liver, tumour
    emb = torch.load(rehearsal / "weights" / "txt_encoding.pth", weights_only=True)
    assert emb.shape == (32, 512) and emb.dtype == torch.float16  # as clip_embedding.py saves CLIP's fp16 features
    assert R.class_text_embeddings(["x"] * 32, encoder=str(rehearsal / "weights" / "txt_encoding.pth")).dtype \
        == torch.float32
    load_self_supervised(build_swinunetr(CONFIGS["mome_test"]), rehearsal / "weights" / "model_swinvit.pt")
    values = np.unique(np.asarray(nib.load(str(rehearsal / "universal" / train[0].label)).dataobj)).tolist()
    assert set(values) - {0} == set(LABEL_TRANSFER["09"])  # AMOS's original label values, 1..15


def test_card_declares_every_paper_input_with_the_command_that_makes_it(tmp_path):
    card = load_card("mome")
    paper = card.profiles["paper"]
    with pytest.raises(MissingInputsError) as err:
        check_inputs(card.inputs, paper, base=tmp_path)
    text = str(err.value)
    for name in ("data_root", "train_list", "test_list", "text_encoder", "pretrained"):
        assert str(tmp_path / paper[name]) in text, name
    assert "python data_scripts/prepare_universal.py amos msd totalseg --root data --link" in text
    assert "python data_scripts/fetch.py amos22 msd_task03_liver" in text and "model_swinvit.pt" in text
    # the lists are where prepare_universal.py writes them
    assert paper["train_list"] == f"{paper['data_root']}/{LIST_FOLDER}/universal_train.txt"
    assert paper["test_list"] == f"{paper['data_root']}/{LIST_FOLDER}/universal_test.txt"
    # every data_scripts command names real sources and options of its script
    from medmoe.data.sources import SOURCES  # why: only this check needs the catalogue
    from medmoe.papers.mome.prepare import main as prepare_main  # why: parse its arguments with its own parser

    for entry in card.inputs:
        for part in entry["command"].split("&&"):
            words = shlex.split(part.split("(")[0])
            if words[:2] == ["python", "data_scripts/fetch.py"]:
                assert all(w in SOURCES for w in words[2:] if not w.startswith("-") and w != "data"), part
            if words[:2] == ["python", "data_scripts/prepare_universal.py"] and "<source>" not in part:
                assert prepare_main([*words[2:], "--list"]) == 0
    # the quick profile (phantoms, MiniLM, no weights) needs none of them
    assert check_inputs(card.inputs, {**paper, **card.profiles["quick"], "dataset": "phantoms", "text_encoder":
                                      "minilm", "pretrained": "", "held_out_list": ""}, base=tmp_path) == {}


def test_rehearsal_profile_reads_only_fixtures_that_exist(tmp_path):
    card = load_card("mome")
    values = materialise_fixtures("mome", dict(card.profiles["rehearsal"]), tmp_path / "fixtures")
    check_inputs(card.inputs, values, base=tmp_path)  # raises MissingInputsError if the fixtures lack an input
    for name in ("data_root", "train_list", "test_list", "text_encoder", "pretrained"):
        assert Path(values[name]).is_relative_to(tmp_path / "fixtures") and Path(values[name]).exists(), name
    assert values["base_config"].endswith("_test") and values["mome_config"].endswith("_test")
    same = {k for k in card.profiles["paper"] if card.profiles["paper"][k] == values[k]}
    assert {"dataset", "schedule", "augment", "lr", "weight_decay", "held_out_list"} <= same
