"""Issue 12, Chapter 1 (MLMoE): the paper profile's settings, its registry cells, its declared inputs, and the
rehearsal fixtures in the real formats the paper profile reads."""

from __future__ import annotations

import json
import re

import pytest
import torch

from medmoe.backbones import build_convnext, build_text_encoder
from medmoe.papers import load_card
from medmoe.papers.mlmoe import CONFIGS, build
from medmoe.papers.mlmoe.data import QaTaDataset
from medmoe.papers.mlmoe.fixtures import REMOTE_CODE_FILES, write_rehearsal_fixtures


@pytest.fixture(scope="module")
def card():
    return load_card("mlmoe")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixtures")
    write_rehearsal_fixtures(root)
    return root


def test_paper_profile_opts_in_to_remote_code_and_follows_ariadnes_preprocessing(card):
    """Defects 1 and 4: CXR-BERT needs trust_remote_code; bicubic resize and RandZoom(p=0.1) for training."""
    paper = card.profiles["paper"]
    assert paper["trust_remote_code"] is True
    assert paper["interpolation"] == "bicubic" and paper["zoom_prob"] == 0.1
    assert paper["distill_prompts"] == ["pneumonia", "a photo of infected areas", "a photo of lung"]


def test_table_iv_fixed_prompts_map_to_the_distilled_protocol_and_n1_to_the_base_model(card):
    """Defects 2 and 3: Table IV's fixed-prompt cells read the distilled-prompt metric (the raw prompt is its own
    labelled row); Table III's N = 1 reads the base model, with a note."""
    cells = {c["id"]: c for c in card.cells}
    t4 = [c for c in cells.values() if c["table"] == "Table IV" and c["row"] != "virtual prompt"]
    assert len(t4) == 12
    for c in t4:
        assert re.fullmatch(r'distilled_prompt_global_(iou|dice)\["[a-z ]+"\]', c["metric"]), c["id"]
        assert "distilled" in c["note"]
    for k in ("miou", "dice"):
        n1 = cells[f"mlmoe.t3.n1.{k}"]
        assert n1["metric"].startswith("base_test_global_") and "num_experts" not in n1["parameters"]
        assert "base model" in n1["note"]
        raw = cells[f"mlmoe.t1.qata.zhong_pneumonia.{k}"]
        assert raw["metric"].startswith('base_fixed_prompt_global_') and "raw-prompt" in raw["note"]


def test_inputs_name_the_real_commands(card):
    """Defect 20: every folder the paper profile reads is declared, with the command that provides it."""
    paper = card.profiles["paper"]
    by_path = {e["path"]: e for e in card.inputs}
    assert set(by_path) == {"{data_root}/QaTa-COV19-v2", "{data_root}/MosMedDataPlus", "{text_encoder}",
                            "{image_encoder_weights}"}
    assert by_path["{data_root}/QaTa-COV19-v2"]["command"] == "python data_scripts/prepare_qata.py --root {data_root}"
    assert by_path["{data_root}/MosMedDataPlus"]["when"] == {"dataset": "mosmed"}
    from medmoe.papers.mlmoe.prepare import mosmed, qata  # why: the scripts' real options and default outputs

    for module, folder in ((qata, "QaTa-COV19-v2"), (mosmed, "MosMedDataPlus")):
        usage = module.build_parser().format_help()
        assert "--root" in usage and f"<root>/{folder}" in usage
    assert paper["text_encoder"].endswith("BiomedVLP-CXR-BERT-specialized")
    assert "microsoft/BiomedVLP-CXR-BERT-specialized" in by_path["{text_encoder}"]["command"]
    assert "minilm" in by_path["{text_encoder}"]["unless"]["text_encoder"]
    assert "facebook/convnext-tiny-224" in by_path["{image_encoder_weights}"]["command"]


def test_rehearsal_extends_paper_and_points_at_the_fixtures(card):
    reh, paper = card.profiles["rehearsal"], card.profiles["paper"]
    for key in ("dataset", "trust_remote_code", "interpolation", "zoom_prob", "distill_prompts", "lr", "div_weight"):
        assert reh[key] == paper[key], key
    assert reh["config"] == "mlmoe_paper_test" and reh["data_root"] == "{fixtures}/data"
    assert reh["text_encoder"].startswith("{fixtures}/") and reh["image_encoder_weights"].startswith("{fixtures}/")
    cfg, full = CONFIGS["mlmoe_paper_test"], CONFIGS["mlmoe_paper"]
    assert (cfg.text_len, cfg.stage_text_lens, cfg.num_experts) == (full.text_len, full.stage_text_lens, 4)


def test_rehearsal_fixtures_are_in_the_real_formats(fixtures):
    bert = fixtures / "weights" / "hf" / "BiomedVLP-CXR-BERT-specialized"
    config = json.loads((bert / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_cxrbert.CXRBertModel"
    assert all((bert / f).is_file() for f in (*REMOTE_CODE_FILES, "vocab.txt", "model.safetensors"))
    from safetensors.torch import load_file  # why: check the checkpoint's key names

    keys = set(load_file(str(bert / "model.safetensors")))
    assert {"bert.embeddings.word_embeddings.weight", "cls_projection_head.dense_to_hidden.weight"} <= keys
    with pytest.raises(ValueError, match="auto_map"):
        build_text_encoder(bert)  # defect 1: without the opt-in the paper path stops here
    enc = build_text_encoder(bert, trust_remote_code=True, max_length=24)
    convnext = fixtures / "weights" / "hf" / "convnext-tiny-224"
    ckpt = set(load_file(str(convnext / "model.safetensors")))
    assert any(k.startswith("convnext.") for k in ckpt) and "classifier.weight" in ckpt
    backbone = build_convnext(CONFIGS["mlmoe_paper_test"].encoder, pretrained=convnext)
    assert torch.equal(backbone.embeddings.patch_embeddings.weight,
                       load_file(str(convnext / "model.safetensors"))["convnext.embeddings.patch_embeddings.weight"])
    model = build("mlmoe_paper_test", backbone_weights=convnext, text_in_width=enc.width)
    test = QaTaDataset(root=fixtures / "data" / "QaTa-COV19-v2", split="test", size=64, interpolation="bicubic")
    item = test[0]
    assert "lung" not in item["text"]  # defect 21: the test reports name no lung region
    out = model(item["image"][None], enc([item["text"]]).hidden)
    assert out.logits.shape == (1, 1, 64, 64)
