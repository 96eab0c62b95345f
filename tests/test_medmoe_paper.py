"""Chapter 2's paper profile (issue 12, defects 5-9 and 20): both MedCLIP towers, the effective batch, the split by
image, the auxiliary loss as the code, K against the data's labels, the declared inputs and the rehearsal fixtures."""

from __future__ import annotations

import doctest
import importlib
import warnings

import pytest
import torch

from medmoe.backbones import build_swin, build_text_encoder
from medmoe.backbones.encoders import load_medclip_text
from medmoe.data.sources import SOURCES
from medmoe.papers import load_card
from medmoe.papers.medmoe import recipe as R
from medmoe.papers.medmoe.data import UNIMED_CAPTION_FILES, UniMedCaptions, split_by_image, write_unimed_fixture
from medmoe.papers.medmoe.evalsets import EVAL_SETS, build_eval_set
from medmoe.papers.medmoe.fixtures import unimed_rows, write_rehearsal_fixtures
from medmoe.repro.runner import MissingInputsError, check_inputs, resolve_parameters


@pytest.fixture(scope="module")
def card():
    return load_card("medmoe")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("medmoe_rehearsal")
    write_rehearsal_fixtures(root)
    return root


# --- defect 5: Bio_ClinicalBERT from MedCLIP's text_model, both towers reported


def test_text_tower_is_loaded_from_the_medclip_checkpoint(fixtures):
    enc = build_text_encoder(str(fixtures / "bio_clinicalbert"), max_length=25, layers="sum_last4")
    state = torch.load(fixtures / "medclip" / "pytorch_model.bin", weights_only=True)
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(enc.backbone.state_dict()[key], state[f"text_model.model.{key}"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = R.load_text_weights(enc, fixtures / "medclip")
    for k, v in enc.backbone.state_dict().items():
        assert torch.equal(v, state[f"text_model.model.{k}"]), k
    assert report.missing == [] and report.unexpected == ["text_model.projection_head.weight"]
    assert "text_model.model.embeddings.position_ids" in report.ignored
    assert report.summary()["loaded"] == len(enc.backbone.state_dict())


def test_build_keeps_the_vision_report(fixtures):
    model = R.build("medmoe_test", swin_weights=fixtures / "swin", medclip_checkpoint=fixtures / "medclip",
                    num_experts=6, width=32)
    report = model.medclip_report
    assert report.missing == [] and report.unexpected == ["vision_model.projection_head.weight"]
    assert report.summary()["loaded"] == len(build_swin("swin-test").state_dict())


def test_text_loader_refuses_another_bert_or_no_text_tower(tmp_path):
    enc = build_text_encoder("random-bert-tiny", max_length=8)
    torch.save({f"text_model.model.{k}": v for k, v in enc.backbone.state_dict().items()}, tmp_path / "a.bin")
    other = build_text_encoder("random-bert-tiny", max_length=8, tokenizer="minilm")
    other.backbone.resize_token_embeddings(30600)
    with pytest.raises(ValueError, match="other shapes"):
        load_medclip_text(other.backbone, tmp_path / "a.bin")
    torch.save({"vision_model.model.x": torch.zeros(1)}, tmp_path / "b.bin")
    with pytest.raises(ValueError, match="no key .* under prefix 'text_model.model.'"):
        load_medclip_text(enc.backbone, tmp_path / "b.bin")
    with pytest.raises(FileNotFoundError, match="fetch.py medclip_vit"):
        load_medclip_text(enc.backbone, tmp_path / "missing")


# --- defect 6: 2,560 samples per optimiser step


def test_paper_profile_steps_on_2560_samples(card):
    p = card.profiles["paper"]
    per_step = p.get("effective_batch") or p["batch_size"] * p.get("grad_accum_steps", 1)
    assert per_step == 2560  # the code: 32 per GPU x 8 GPUs x 10 accumulation steps
    assert R.accumulation_steps(p["effective_batch"], p["batch_size"], 1) == 80
    assert R.accumulation_steps(p["effective_batch"], p["batch_size"], 8) == 10


def test_accumulation_steps_checks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert R.accumulation_steps(2560, 32) == 40
    with pytest.raises(ValueError, match="not a multiple"):
        R.accumulation_steps(2560, 24, 1)
    with pytest.raises(ValueError, match="positive int"):
        R.accumulation_steps(0, 32, 1)


# --- defect 7: the UniMed split is made over images


def test_split_by_image_never_shares_an_image(tmp_path):
    csv = write_unimed_fixture(tmp_path, unimed_rows("radimagenet", 30), write_images=False)
    ds = UniMedCaptions(csv_files=[csv], image_root=tmp_path, size=16)
    assert len(ds) > len(set(ds.paths))  # several captions per image: a split over captions would leak
    parts = split_by_image(ds.paths, holdout=0.1, seed=3)
    images = {s: {ds.paths[i] for i in idx} for s, idx in parts.items()}
    assert not images["train"] & images["val"] and not images["train"] & images["test"]
    assert not images["val"] & images["test"]
    assert sorted(i for idx in parts.values() for i in idx) == list(range(len(ds)))
    assert len(images["val"]) == len(images["test"]) == 3
    assert parts == split_by_image(ds.paths, holdout=0.1, seed=3) != split_by_image(ds.paths, holdout=0.1, seed=4)


def test_split_by_image_bad_inputs():
    with pytest.raises(ValueError, match="at least 3"):
        split_by_image(["a", "a", "b"])
    with pytest.raises(ValueError, match="holdout"):
        split_by_image(["a", "b", "c"], holdout=0.5)
    with pytest.raises(ValueError, match="no training image"):
        split_by_image(["a", "b", "c", "d"], holdout=0.4)


# --- defects 8, 9: the auxiliary loss as the code; K = 6 against 4 labels, stated


def test_paper_profile_aux_loss_on_probabilities_and_states_k(card):
    p = card.profiles["paper"]
    assert p["aux_on"] == "probs"
    model = R.build(p["config"], num_experts=p["num_experts"], aux_on=p["aux_on"])
    gate = model.router(torch.randn(3, model.in_widths[-1]))
    labels = torch.tensor([0, 1, 3])
    assert torch.allclose(model.aux_loss(gate, labels), torch.nn.functional.cross_entropy(gate.probs, labels))
    assert p["num_experts"] == 6
    text = open("notebooks/02_medmoe.py").read()
    assert "experts 4 (pathology) and" in text and "never chosen" in text


# --- defect 20: every input of the paper profile declared, with a real command


def test_paper_inputs_are_declared_with_real_commands(card, tmp_path):
    params = {**card.profiles["paper"], "data_root": str(tmp_path / "nowhere")}
    params = {k: (str(tmp_path / "nowhere" / v) if k in ("text_encoder", "swin_weights", "medclip_checkpoint",
                                                         "medimeta_root") else v) for k, v in params.items()}
    with pytest.raises(MissingInputsError) as err:
        check_inputs(card.inputs, params)
    message = str(err.value)
    for needle in ("radimagenet_with_captions_training_set.csv", "chexpert_with_captions_only_frontal_view.csv",
                   "Chest-Xray8_with_captions.csv", "chexpert-5x200.csv", "rsna_custom_test_set", "thyroid_us",
                   "breast_us", "acl_mri", "meniscal_mri", "organs_axial", "organs_coronal", "organs_sagittal",
                   "fetch.py --root", "medclip_vit", "emilyalsentzer/Bio_ClinicalBERT",
                   "microsoft/swin-tiny-patch4-window7-224"):
        assert needle in message, needle
    for entry in card.inputs:
        if "fetch.py" in entry["command"]:
            words = entry["command"].split("(")[0].split()
            names = [w for w in words[words.index("data_scripts/fetch.py") + 1:] if not w.startswith("-")
                     and "{" not in w]
            assert names and all(n in SOURCES for n in names), entry["command"]


def test_quick_profile_needs_no_input(card):
    for profile in ("quick", "smoke"):
        _, _, params = resolve_parameters("notebooks/02_medmoe.py", profile)
        assert check_inputs(card.inputs, params) == {}


# --- the rehearsal fixtures: the real formats, every declared input present


def test_rehearsal_fixtures_cover_every_declared_input(card, fixtures):
    params = {k: (v.replace("{fixtures}", str(fixtures)) if isinstance(v, str) else v)
              for k, v in card.profiles["rehearsal"].items()}
    check_inputs(card.inputs, params)  # raises if one is missing


def test_rehearsal_fixtures_load_with_the_real_loaders(fixtures):
    root = fixtures / "unimed_captions"
    tables = {"radimagenet": "from_path", "chexpert": 0, "chestxray8": 0}
    ds = UniMedCaptions(csv_files=[root / UNIMED_CAPTION_FILES[k] for k in tables],
                        image_root=[root / k for k in tables], size=16, modality=list(tables.values()))
    assert sorted(set(ds.modality_labels)) == [0, 1, 2, 3] and ds[0]["image"].shape == (3, 16, 16)
    for name in EVAL_SETS:
        where = fixtures / "medimeta_organs" if name.startswith("medimeta") else fixtures / "unimed_clip_eval"
        assert len(build_eval_set(name, root=where, split="test", size=16)) >= 4
    state = torch.load(fixtures / "medclip" / "pytorch_model.bin", weights_only=True)
    heads = {k.split(".")[0] + "." + k.split(".")[1] for k in state if "." in k}
    assert heads == {"vision_model.model", "vision_model.projection_head", "text_model.model",
                     "text_model.projection_head"} and "logit_scale" in state
    assert any("attention.self.query" in k for k in state if k.startswith("vision_model"))  # transformers 4.x names


@pytest.mark.parametrize("module", ["medmoe.papers.medmoe.fixtures", "medmoe.papers.medmoe.recipe"])
def test_docstring_examples(module):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(importlib.import_module(module), optionflags=flags)
    assert result.attempted > 0 and result.failed == 0
