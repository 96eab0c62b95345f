"""medmoe.backbones: offline text encoders, local-directory loading, paper-size shapes and parameter counts."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here must work without the network

import doctest
import json
import warnings

import pytest
import torch

import medmoe.backbones.encoders as E
from medmoe.backbones import (
    CONVNEXT_CONFIGS,
    ENCODERS,
    SWIN_CONFIGS,
    TEXT_MODELS,
    TextEncoder,
    TextFeatures,
    WeightsUnavailableError,
    build_convnext,
    build_swin,
    build_text_encoder,
    convnext_features,
    encode_cached,
    feature_channels,
    load_medclip_swin,
    swin_features,
    swin_min_input_size,
)

REPORT = "Bilateral pulmonary infection, two infected areas, upper left lung."
FAKE_HUB_ID = "medmoe-tests/no-such-model"  # never cached anywhere


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return build_text_encoder("minilm")


@pytest.fixture(scope="module")
def tiny() -> TextEncoder:
    torch.manual_seed(0)
    return build_text_encoder("random-bert-tiny", max_length=12)


# ------------------------------------------------------------------------------------------------ text


def test_minilm_offline_shapes_and_frozen(minilm):
    f = minilm([REPORT, "No finding."])
    assert isinstance(f, TextFeatures)
    assert minilm.width == 384 and minilm.max_length == 24
    assert f.hidden.shape == (2, 24, 384) and f.hidden.dtype == torch.float32
    assert f.mask.shape == f.input_ids.shape == (2, 24)
    assert f.mask.dtype == f.input_ids.dtype == torch.long
    assert f.mask[0].sum() == 14 and f.mask[1].sum() == 5  # [CLS] 12 tokens [SEP]; [CLS] no finding . [SEP]
    assert params(minilm.backbone) == 22_713_216
    assert not any(p.requires_grad for p in minilm.parameters())
    assert not f.hidden.requires_grad
    assert not minilm.training and not minilm.backbone.training
    minilm.train()  # a parent's train() must not switch the frozen backbone's dropout on
    assert minilm.training and not minilm.backbone.training
    minilm.eval()


def test_minilm_deterministic(minilm):
    minilm.train()
    f = minilm([REPORT, REPORT, "Pleural effusion."])
    minilm.eval()
    assert torch.equal(f.hidden[0], f.hidden[1])
    assert not torch.allclose(f.hidden[0], f.hidden[2])
    assert torch.equal(minilm([REPORT]).hidden[0], f.hidden[0])


def test_word_pieces_and_words(minilm):
    pieces = minilm.word_pieces([REPORT])[0]
    assert len(pieces) == 24
    assert pieces[:5] == ["[CLS]", "bilateral", "pulmonary", "infection", ","]
    assert pieces[13:] == ["[SEP]"] + ["[PAD]"] * 10
    words = minilm.words(REPORT)
    assert [w for w, _ in words] == ["Bilateral", "pulmonary", "infection", ",", "two", "infected", "areas", ",",
                                     "upper", "left", "lung", "."]
    assert [p for _, p in words] == [[i] for i in range(1, 13)]
    # word pieces are merged into whole words, positions index the token axis
    words = minilm.words("Cardiomegaly with COVID-19 pneumonia.", special=True)
    assert words[0] == ("[CLS]", [0]) and words[-1][0] == "[SEP]"
    card = dict(words)["Cardiomegaly"]
    assert len(card) > 1 and card == list(range(1, 1 + len(card)))
    assert [minilm.word_pieces(["Cardiomegaly"])[0][i] for i in card][1].startswith("##")
    # words cut off by max_length are dropped
    short = build_text_encoder("minilm", max_length=5)
    assert [w for w, _ in short.words(REPORT)] == ["Bilateral", "pulmonary", "infection"]


def test_gloria_style_grouping_without_fast_tokenizer():
    tokens = ["[CLS]", "card", "##iom", "##ega", "##ly", ",", "left", "lung", "[SEP]", "[PAD]"]
    groups = E._group_word_pieces(tokens, {"[CLS]", "[SEP]", "[PAD]"})
    assert [(w, p) for w, p, special in groups if not special] == [
        ("cardiomegaly", [1, 2, 3, 4]), (",", [5]), ("left", [6]), ("lung", [7])]
    assert [w for w, _, special in groups if special] == ["[CLS]", "[SEP]", "[PAD]"]


def test_encode_cached_equals_direct(minilm):
    minilm.clear_cache()
    texts = [REPORT, "No finding.", REPORT, "Pleural effusion.", "No finding."]
    calls = []
    hook = minilm.backbone.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        cached = encode_cached(minilm, texts, batch_size=2)
        assert len(calls) == 2 and len(minilm.cache) == 3  # 3 distinct texts in batches of 2
        again = encode_cached(minilm, list(reversed(texts)))
        assert len(calls) == 2  # the second epoch runs no encoder at all
    finally:
        hook.remove()
    direct = minilm(texts)
    for a, b in zip(cached, direct):
        assert a.shape == b.shape
    torch.testing.assert_close(cached.hidden, direct.hidden, atol=1e-5, rtol=1e-5)
    assert torch.equal(cached.mask, direct.mask) and torch.equal(cached.input_ids, direct.input_ids)
    torch.testing.assert_close(again.hidden, direct.hidden.flip(0), atol=1e-5, rtol=1e-5)
    own: dict = {}
    encode_cached(minilm, ["Edema."], cache=own)
    assert len(own) == 1


def test_encode_cached_longest_padding():
    enc = build_text_encoder("random-bert-tiny", max_length=10, padding="longest")
    texts = ["left lung", "bilateral pulmonary infection upper left lung and right", "x"]
    cached, direct = encode_cached(enc, texts, batch_size=1), enc(texts)
    assert cached.hidden.shape == direct.hidden.shape == (3, 10, 32)
    torch.testing.assert_close(cached.hidden, direct.hidden, atol=1e-5, rtol=1e-5)
    assert encode_cached(enc, texts[:1]).hidden.shape == enc(texts[:1]).hidden.shape == (1, 4, 32)


def test_encode_cached_refuses_what_it_cannot_cache():
    with pytest.raises(ValueError, match="frozen"):
        encode_cached(build_text_encoder("random-bert-tiny", freeze=False), ["a"])
    enc = build_text_encoder("random-bert-tiny", frozen_train_mode=True).train()
    with pytest.raises(ValueError, match="train mode"):
        encode_cached(enc, ["a"])
    with pytest.raises(ValueError, match="batch_size"):
        encode_cached(build_text_encoder("random-bert-tiny"), ["a"], batch_size=0)


def test_layers_last_and_sum_last4(tiny):
    enc4 = TextEncoder(tiny.tokenizer, tiny.backbone, max_length=12, layers="sum_last4")
    f4, f1 = enc4(["left lung"]), tiny(["left lung"])
    tok = tiny.tokenize(["left lung"])
    with torch.no_grad():
        out = tiny.backbone(**tok, output_hidden_states=True)
    assert len(out.hidden_states) == 5  # embeddings + 4 layers
    torch.testing.assert_close(f1.hidden, out.last_hidden_state)
    torch.testing.assert_close(f4.hidden, sum(out.hidden_states[-4:]))
    with pytest.raises(ValueError, match="layers"):
        TextEncoder(tiny.tokenizer, tiny.backbone, layers="mean")
    two = build_text_encoder("random-bert-tiny")
    two.backbone.config.num_hidden_layers = 2
    with pytest.raises(ValueError, match="at least 4"):
        TextEncoder(two.tokenizer, two.backbone, layers="sum_last4")


def test_minilm_sum_last4_shape():
    assert build_text_encoder("minilm", layers="sum_last4", max_length=25)([REPORT]).hidden.shape == (1, 25, 384)


def test_frozen_train_mode_reproduces_active_dropout():
    torch.manual_seed(0)
    enc = build_text_encoder("random-bert-tiny", frozen_train_mode=True, dropout=0.5)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.backbone.training
    a, b = enc([REPORT]).hidden, enc([REPORT]).hidden
    assert not torch.allclose(a, b)  # dropout active, as in the reference code
    enc.eval()
    assert torch.equal(enc([REPORT]).hidden, enc([REPORT]).hidden)
    with pytest.raises(ValueError, match="freeze"):
        build_text_encoder("random-bert-tiny", freeze=False, frozen_train_mode=True)


def test_unfrozen_encoder_trains():
    enc = build_text_encoder("random-bert-tiny", freeze=False).train()
    assert enc.backbone.training and all(p.requires_grad for p in enc.parameters())
    enc([REPORT]).hidden.sum().backward()
    assert enc.backbone.embeddings.word_embeddings.weight.grad is not None


def test_random_bert_base_is_paper_size():
    enc = build_text_encoder("random-bert-base")
    assert enc.width == 768 and enc.backbone.config.num_hidden_layers == 12
    assert enc.backbone.config.vocab_size == 30522 == len(enc.tokenizer)
    assert params(enc.backbone) == 109_482_240  # BERT-base with pooler, vocab 30,522
    assert enc([REPORT, "x"]).hidden.shape == (2, 24, 768)


def test_text_local_directory_round_trip(tiny, tmp_path):
    tiny.backbone.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = build_text_encoder(str(tmp_path), max_length=12)
    assert loaded.name == str(tmp_path) and loaded.width == 32
    a, b = tiny([REPORT, "No finding."]), loaded([REPORT, "No finding."])
    assert torch.equal(a.input_ids, b.input_ids)
    torch.testing.assert_close(a.hidden, b.hidden, atol=1e-6, rtol=1e-6)
    assert loaded.words(REPORT) == tiny.words(REPORT)
    # a Path works too, and a directory without tokenizer files can borrow one
    (tmp_path / "tokenizer.json").unlink()
    for name in ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tmp_path / name).exists():
            (tmp_path / name).unlink()
    with pytest.raises(ValueError, match="tokenizer"):
        build_text_encoder(tmp_path)
    torch.testing.assert_close(build_text_encoder(tmp_path, max_length=12, tokenizer="minilm")([REPORT]).hidden,
                               a.hidden[:1], atol=1e-6, rtol=1e-6)


def test_local_directory_with_custom_code_needs_opt_in(tiny, tmp_path):
    tiny.backbone.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modelling_cxrbert.CXRBertModel"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        build_text_encoder(str(tmp_path))


def test_cxr_bert_needs_trust_remote_code():
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        build_text_encoder("cxr-bert")
    assert TEXT_MODELS["cxr-bert"].hub_id == "microsoft/BiomedVLP-CXR-BERT-specialized"
    assert TEXT_MODELS["bio-clinicalbert"].hub_id == "emilyalsentzer/Bio_ClinicalBERT"


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    with pytest.raises(WeightsUnavailableError, match="hf download") as info:
        build_text_encoder(FAKE_HUB_ID)
    message = str(info.value)
    assert "offline" in message and "--local-dir" in message and "data_scripts/fetch.py" in message
    assert isinstance(info.value, OSError)
    # the named hub models go the same way (pointed at an id that is certainly not cached)
    monkeypatch.setitem(TEXT_MODELS, "bio-clinicalbert", E._TextModel("test", hub_id=FAKE_HUB_ID))
    with pytest.raises(WeightsUnavailableError, match="build_text_encoder"):
        build_text_encoder("bio-clinicalbert", local_files_only=True)
    with pytest.raises(WeightsUnavailableError, match="pretrained="):
        build_convnext("convnext-tiny", pretrained=FAKE_HUB_ID)
    with pytest.raises(WeightsUnavailableError, match="pretrained="):
        build_swin("swin-tiny", pretrained=FAKE_HUB_ID, local_files_only=True)


def test_bad_text_arguments(minilm, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        minilm([])
    with pytest.raises(ValueError, match="single str"):
        minilm(REPORT)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        minilm(["ok", 3])
    with pytest.raises(ValueError, match="empty"):
        encode_cached(minilm, [])
    with pytest.raises(ValueError, match="empty"):
        minilm.words("  ")
    with pytest.raises(ValueError, match="unknown text encoder"):
        build_text_encoder("pubmedbert")
    with pytest.raises(ValueError, match="neither an existing directory"):
        build_text_encoder("./no/such/dir")
    with pytest.raises(ValueError, match="config.json"):
        build_text_encoder(str(tmp_path))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        build_text_encoder("random-bert-tiny", max_length=1000)
    with pytest.raises(ValueError, match="max_length"):
        build_text_encoder("random-bert-tiny", max_length=1)
    with pytest.raises(ValueError, match="padding"):
        build_text_encoder("random-bert-tiny", padding="do_not_pad")


# ----------------------------------------------------------------------------------------------- image


@pytest.fixture(scope="module")
def convnext_tiny():
    return build_convnext("convnext-tiny")


def test_convnext_tiny_paper_size(convnext_tiny):
    assert params(convnext_tiny) == 27_820_128  # papers_spec 1.1
    assert convnext_tiny.config.drop_path_rate == 0.0
    assert feature_channels(convnext_tiny) == [96, 192, 384, 768]
    with torch.no_grad():
        feats = convnext_features(convnext_tiny, torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 56, 56), (1, 192, 28, 28), (1, 384, 14, 14), (1, 768, 7, 7)]


def test_convnext_small_configs():
    m = build_convnext("convnext-test")
    assert not m.training
    feats = convnext_features(m, torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    assert feature_channels(build_convnext("convnext-quick")) == [24, 48, 96, 192]
    assert build_convnext("convnext-test", drop_path_rate=0.2).config.drop_path_rate == 0.2
    with pytest.raises(ValueError, match="unknown ConvNeXt"):
        build_convnext("convnext-huge")
    with pytest.raises(ValueError, match="drop_path_rate"):
        build_convnext("convnext-test", drop_path_rate=1.5)


def test_convnext_local_directory(tmp_path):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    base = build_convnext("convnext-test")
    base.save_pretrained(tmp_path / "base")
    loaded = build_convnext("convnext-test", pretrained=tmp_path / "base")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(convnext_features(base, x), convnext_features(loaded, x)):
            assert torch.equal(a, b)
    # a classification checkpoint (as facebook/convnext-tiny-224 is) loads, its classifier dropped
    clf = ConvNextForImageClassification(ConvNextConfig(**CONVNEXT_CONFIGS["convnext-test"], num_labels=3))
    clf.save_pretrained(tmp_path / "clf")
    loaded = build_convnext("convnext-test", pretrained=str(tmp_path / "clf"))
    for k, v in clf.convnext.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(ValueError, match="not 'convnext-tiny'"):
        build_convnext("convnext-tiny", pretrained=tmp_path / "clf")
    assert feature_channels(build_convnext(None, pretrained=tmp_path / "clf")) == [8, 16, 32, 64]


@pytest.fixture(scope="module")
def swin_tiny():
    return build_swin("swin-tiny")


def test_swin_tiny_paper_size(swin_tiny):
    assert params(swin_tiny) == 27_519_354  # papers_spec 2.1: Swin-T 27.52M
    assert swin_tiny.config.drop_path_rate == 0.1  # as microsoft/swin-tiny-patch4-window7-224
    assert feature_channels(swin_tiny) == [96, 192, 384, 768]
    assert swin_min_input_size(swin_tiny) == 193
    with torch.no_grad():
        feats, last = swin_features(swin_tiny, torch.randn(1, 3, 224, 224), return_last=True)
    assert [tuple(f.shape) for f in feats] == [(1, 96, 56, 56), (1, 192, 28, 28), (1, 384, 14, 14), (1, 768, 7, 7)]
    assert tuple(last.shape) == (1, 49, 768)


def test_swin_test_config_and_hidden_state_layout():
    torch.manual_seed(0)
    m = build_swin("swin-test")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = swin_features(m, x)
        out = m(pixel_values=x, output_hidden_states=True)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    for f, h in zip(feats, out.hidden_states[:4]):  # the maps are hidden_states[0..3], reshaped
        b, c, hh, ww = f.shape
        assert torch.equal(f, h.transpose(1, 2).reshape(b, c, hh, ww))
    # too small for the window: refused before the model (which would keep a shrunken window) sees it
    with pytest.raises(ValueError, match="at least 33 x 33"):
        swin_features(m, torch.randn(1, 3, 16, 16))
    with torch.no_grad():
        assert torch.equal(swin_features(m, x)[3], feats[3])
    with pytest.raises(ValueError, match="unknown Swin"):
        build_swin("swin-large")


def test_swin_local_directory(tmp_path):
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    clf = SwinForImageClassification(SwinConfig(**SWIN_CONFIGS["swin-test"], num_labels=2)).eval()
    clf.save_pretrained(tmp_path)
    loaded = build_swin("swin-test", pretrained=str(tmp_path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = clf.swin(pixel_values=x, output_hidden_states=True).reshaped_hidden_states[:4]
        for a, b in zip(swin_features(loaded, x), want):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not 'swin-tiny'"):
        build_swin("swin-tiny", pretrained=tmp_path)


def _medclip_state(model, *, drop: int = 0) -> dict:
    state = {f"vision_model.model.{k}": v.clone() for k, v in model.state_dict().items()}
    for key in list(state)[:drop]:
        del state[key]
    state["vision_model.projection_head.weight"] = torch.randn(512, 128)
    state["vision_model.model.encoder.layers.0.blocks.0.attention.self.relative_position_index"] = torch.zeros(4, 4)
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["logit_scale"] = torch.tensor(2.6)
    return state


def test_load_medclip_swin(tmp_path):
    torch.manual_seed(0)
    source = build_swin("swin-test")
    torch.save(_medclip_state(source), tmp_path / "pytorch_model.bin")
    target = build_swin("swin-test")
    assert not torch.equal(target.embeddings.patch_embeddings.projection.weight,
                           source.embeddings.patch_embeddings.projection.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_medclip_swin(target, tmp_path)  # the directory, as the MedCLIP zip extracts
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    assert len(report.loaded) == len(source.state_dict()) and report.missing == []
    assert report.unexpected == ["vision_model.projection_head.weight"]
    assert "logit_scale" in report.ignored and any(k.startswith("text_model.") for k in report.ignored)
    assert any(k.endswith("relative_position_index") for k in report.ignored)


def test_load_medclip_swin_renames_transformers_4_parameter_names(tmp_path):
    """MedCLIP saved its Swin with transformers 4.x names; every one must land in today's model."""
    torch.manual_seed(0)
    source = build_swin("swin-test")
    legacy = {"q_proj.": "self.query.", "k_proj.": "self.key.", "v_proj.": "self.value.", "o_proj.": "output.dense.",
              "relative_position_bias.relative_position_bias_table": "self.relative_position_bias_table"}
    state = {}
    for k, v in source.state_dict().items():
        old = k
        for new_name, old_name in legacy.items():
            old = old.replace(f"attention.{new_name}", f"attention.{old_name}")
        old = old.replace("mlp.fc1.", "intermediate.dense.").replace("mlp.fc2.", "output.dense.")
        state[f"vision_model.model.{old}"] = v.clone()
    assert any("attention.self.query" in k for k in state) and any(".output.dense." in k for k in state)
    torch.save(state, tmp_path / "pytorch_model.bin")
    target = build_swin("swin-test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = load_medclip_swin(target, tmp_path)
    assert report.missing == [] and report.unexpected == []
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_load_medclip_swin_reports_problems(tmp_path):
    torch.manual_seed(0)
    source = build_swin("swin-test")
    torch.save(_medclip_state(source, drop=2), tmp_path / "partial.bin")
    with pytest.warns(UserWarning, match="2 model keys"):
        report = load_medclip_swin(build_swin("swin-test"), tmp_path / "partial.bin")
    assert len(report.missing) == 2
    torch.save({"module.x": torch.zeros(1)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="no key"):
        load_medclip_swin(build_swin("swin-test"), tmp_path / "other.bin")
    with pytest.raises(ValueError, match="shapes"):
        load_medclip_swin(build_swin("swin-quick"), tmp_path / "partial.bin")
    with pytest.raises(FileNotFoundError):
        load_medclip_swin(source, tmp_path / "missing.bin")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_medclip_swin(source, empty)


@pytest.mark.parametrize("features, model_name", [(convnext_features, "convnext-test"), (swin_features, "swin-test")])
def test_bad_image_input(features, model_name):
    model = ENCODERS[model_name.split("-")[0]](model_name)
    with pytest.raises(ValueError, match=r"rank 4.*\(3, 64, 64\)"):
        features(model, torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"3 channels.*\(2, 1, 64, 64\).*expand"):
        features(model, torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match="at least"):
        features(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="float"):
        features(model, torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="torch.Tensor"):
        features(model, [[0.0]])


def test_registry_and_feature_channels_errors(tiny):
    assert set(ENCODERS) == {"text", "convnext", "swin"}
    assert ENCODERS["text"] is build_text_encoder
    with pytest.raises(ValueError, match="ConvNeXt or Swin"):
        feature_channels(tiny.backbone)


def test_docstring_examples():
    result = doctest.testmod(E, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 6 and result.failed == 0


# --- issue 12, MLMoE
def test_local_remote_code_bert_folder_loads_offline_only_with_trust_remote_code(tmp_path, monkeypatch):
    """Issue 12, defect 1: a CXR-BERT-like folder (config.json with auto_map + its own modeling/configuration .py
    files) is refused without trust_remote_code, loads offline with it (the folder's class, its weights), and a
    folder missing the code files that auto_map names is refused with the file names."""
    from medmoe.papers.mlmoe.fixtures import write_remote_code_bert  # why: the rehearsal's fixture writer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_remote_code_bert(tmp_path / "BiomedVLP-CXR-BERT-specialized")
    with pytest.raises(ValueError, match="auto_map.*trust_remote_code=True"):
        build_text_encoder(folder)
    enc = build_text_encoder(folder, trust_remote_code=True, max_length=24)
    assert type(enc.backbone).__name__ == "CXRBertModel"
    from safetensors.torch import load_file  # why: compare with the weights on disk

    saved = load_file(str(folder / "model.safetensors"))
    emb = enc.backbone.bert.embeddings.word_embeddings.weight
    assert torch.equal(emb, saved["bert.embeddings.word_embeddings.weight"])
    f = enc(["bilateral pulmonary infection, upper left lung."])
    assert f.hidden.shape == (1, 24, 32)
    assert [w for w, _ in enc.words("bilateral pulmonary infection")] == ["bilateral", "pulmonary", "infection"]
    (folder / "modeling_cxrbert.py").unlink()
    with pytest.raises(ValueError, match=r"names model code in \['modeling_cxrbert.py'\].*lacks"):
        build_text_encoder(folder, trust_remote_code=True)
