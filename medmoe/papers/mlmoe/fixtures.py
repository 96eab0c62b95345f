"""Tiny inputs in the real formats the ``paper`` profile of Chapter 1 reads, for the ``rehearsal`` profile.

``medmoe run notebooks/01_mlmoe.py --profile rehearsal`` calls :func:`write_rehearsal_fixtures` with
``root = <out>/fixtures`` and runs the paper profile's code path on what it writes:

* ``data/QaTa-COV19-v2/`` -- phantoms in the Ariadne/QaTa-COV19 layout (``Train/Images``, ``Train/GTs/mask_*``,
  ``prompt/{train,test}.csv``), written by :func:`medmoe.papers.mlmoe.data.write_qata_layout` and read by the same
  :class:`~medmoe.papers.mlmoe.data.QaTaDataset` as the real data;
* ``weights/hf/BiomedVLP-CXR-BERT-specialized/`` -- a remote-code BERT folder like CXR-BERT's: ``config.json``
  with ``auto_map`` naming the folder's own ``configuration_cxrbert.py`` / ``modeling_cxrbert.py`` (written here:
  a ``BertForMaskedLM`` subclass with a CLS projection head that returns the last hidden layer, the structure
  of CXR-BERT's model class), ``model.safetensors`` with the real key names (``bert.*``, ``cls.predictions.*``,
  ``cls_projection_head.*``) and a WordPiece ``vocab.txt`` + ``tokenizer_config.json``. Loading it needs
  ``trust_remote_code=True``, exactly as the real folder does;
* ``weights/hf/convnext-tiny-224/`` -- a ``ConvNextForImageClassification`` checkpoint as ``hf download
  facebook/convnext-tiny-224`` gives (``config.json`` + ``model.safetensors``, keys ``convnext.*`` and
  ``classifier.*``), in the ``convnext-test`` size (depths 1, 1, 1, 1; widths 8-64) of the ``mlmoe_paper_test``
  model configuration.

Everything is deterministic and written in about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Subset

from medmoe.data.phantoms import PhantomDataset2D
from medmoe.papers.mlmoe.data import write_qata_layout

__all__ = ["write_rehearsal_fixtures", "write_remote_code_bert", "write_convnext_folder", "write_qata_fixture",
           "REMOTE_CODE_FILES"]

_CONFIG_PY = '''"""A tiny stand-in for CXR-BERT's configuration class (written by medmoe's rehearsal fixtures)."""
from transformers import BertConfig


class CXRBertConfig(BertConfig):
    model_type = "cxr-bert"

    def __init__(self, projection_size: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.projection_size = projection_size
'''

_MODELING_PY = '''"""A tiny stand-in for CXR-BERT's model class (written by medmoe's rehearsal fixtures): a
BertForMaskedLM with a projection head on the CLS token, returning the last hidden layer as ``last_hidden_state``."""
from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertForMaskedLM
from transformers.modeling_outputs import ModelOutput

from .configuration_cxrbert import CXRBertConfig


@dataclass
class CXRBertOutput(ModelOutput):
    last_hidden_state: torch.FloatTensor = None
    logits: torch.FloatTensor = None
    cls_projected_embedding: torch.FloatTensor = None
    hidden_states: tuple = None


class BertProjectionHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_to_hidden = nn.Linear(config.hidden_size, config.projection_size)
        self.transform_act_fn = nn.GELU()
        self.LayerNorm = nn.LayerNorm(config.projection_size, eps=1e-12)
        self.dense_to_output = nn.Linear(config.projection_size, config.projection_size)

    def forward(self, x):
        return self.dense_to_output(self.LayerNorm(self.transform_act_fn(self.dense_to_hidden(x))))


class CXRBertModel(BertForMaskedLM):
    config_class = CXRBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.cls_projection_head = BertProjectionHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              output_hidden_states=True, return_dict=True)
        last = out.hidden_states[-1]
        return CXRBertOutput(last_hidden_state=last, logits=out.logits,
                             cls_projected_embedding=self.cls_projection_head(last[:, 0]),
                             hidden_states=out.hidden_states if output_hidden_states else None)
'''

REMOTE_CODE_FILES = {"configuration_cxrbert.py": _CONFIG_PY, "modeling_cxrbert.py": _MODELING_PY}
"""The model code the remote-code BERT folder ships (``auto_map`` points at it)."""

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ("upper middle lower left right lung lungs bilateral unilateral pulmonary infection infected area areas one "
          "two three four five six seven eight nine no lesion lesions and in of the a photo pneumonia finding skin "
          "brain liver kidney ct x ray chest opacity small large").split()


def write_remote_code_bert(folder: str | Path, *, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny BERT folder in CXR-BERT's format: ``config.json`` with ``auto_map``, the two code files, weights
    with CXR-BERT's key names and a WordPiece tokenizer (``vocab.txt``). Returns the folder."""
    from safetensors.torch import save_file  # why: only writing fixtures needs safetensors
    from transformers import BertConfig, BertForMaskedLM  # why: transformers takes seconds to import

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = _SPECIAL + list(".,;:-()") + letters + [f"##{c}" for c in letters] + list(dict.fromkeys(_WORDS))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}, indent=2))
    for name, code in REMOTE_CODE_FILES.items():
        (folder / name).write_text(code, encoding="utf-8")
    cfg = dict(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=2,
               intermediate_size=2 * hidden_size, max_position_embeddings=64, hidden_dropout_prob=0.25,
               attention_probs_dropout_prob=0.25, type_vocab_size=2)
    config = {**cfg, "architectures": ["CXRBertModel"], "model_type": "cxr-bert", "projection_size": 16,
              "auto_map": {"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                           "AutoModel": "modeling_cxrbert.CXRBertModel"},
              "layer_norm_eps": 1e-12, "pad_token_id": 0, "hidden_act": "gelu", "initializer_range": 0.02}
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    torch.manual_seed(seed)
    mlm = BertForMaskedLM(BertConfig(**cfg))
    state = {k: v.detach().clone().contiguous() for k, v in mlm.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    head = {"dense_to_hidden.weight": (16, hidden_size), "dense_to_hidden.bias": (16,), "LayerNorm.weight": (16,),
            "LayerNorm.bias": (16,), "dense_to_output.weight": (16, 16), "dense_to_output.bias": (16,)}
    for k, shape in head.items():
        state[f"cls_projection_head.{k}"] = torch.randn(*shape, generator=g) * 0.02
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_convnext_folder(folder: str | Path, *, depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 32, 64),
                          seed: int = 0) -> Path:
    """A ``ConvNextForImageClassification`` checkpoint folder (``config.json`` + ``model.safetensors``), the format
    of ``facebook/convnext-tiny-224``, in a tiny size. Returns the folder."""
    from transformers import ConvNextConfig, ConvNextForImageClassification  # why: slow import, fixtures only

    torch.manual_seed(seed)
    model = ConvNextForImageClassification(ConvNextConfig(depths=list(depths), hidden_sizes=list(hidden_sizes),
                                                          drop_path_rate=0.0, num_labels=3))
    model.save_pretrained(folder)
    return Path(folder)


def write_qata_fixture(root: str | Path, *, n_train: int = 40, n_test: int = 12, size: int = 64,
                       seed: int = 0, region_free_test: bool = True) -> Path:
    """Chest-radiograph phantoms (with lesions) in the QaTa-COV19 (Ariadne) layout under ``root``.

    ``region_free_test``: the test reports keep only their first two clauses ("Bilateral pulmonary infection, two
    infected areas."), so no test report names a lung region -- as in data in the QaTa layout annotated otherwise;
    the chapter's figures must cope with that."""
    import pandas as pd  # why: rewriting one table of the fixture

    root = Path(root)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 10_000)):
        ds = PhantomDataset2D(n=n, modalities=("cxr",), size=size, seed=s, channels=1)
        table = write_qata_layout(Subset(ds, list(range(n))), root, split=split)
        if split == "test" and region_free_test:
            frame = pd.read_csv(table, dtype=str, keep_default_na=False)
            frame["Description"] = [", ".join(t.rstrip(".").split(", ")[:2]) + "." for t in frame["Description"]]
            frame.to_csv(table, index=False)
    return root


def write_rehearsal_fixtures(root: Path) -> None:
    """Write the rehearsal's data and weights under ``root`` (see the module docstring for the layout)."""
    root = Path(root)
    write_qata_fixture(root / "data" / "QaTa-COV19-v2")
    write_remote_code_bert(root / "weights" / "hf" / "BiomedVLP-CXR-BERT-specialized")
    write_convnext_folder(root / "weights" / "hf" / "convnext-tiny-224")
