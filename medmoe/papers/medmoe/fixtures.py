"""Rehearsal fixtures of Chapter 2 (MedMoE): every file the ``paper`` profile reads, tiny, in the real formats.

Used by ``medmoe run notebooks/02_medmoe.py --profile rehearsal``: the runner calls
:func:`write_rehearsal_fixtures` with ``<out>/fixtures`` and puts that folder in place of ``{fixtures}`` in the
profile (``card.yaml``), so the notebook runs the paper profile's code path -- the UniMed loaders, the split by
image, both towers of the MedCLIP checkpoint, the evaluation sets and their protocol, the figure and registry
cells -- on these files. Only the sizes differ (the ``medmoe_test`` Swin and a 4-layer 32-d BERT).

Layout under ``root`` (the paper profile's ``data_root`` and weight folders):

* ``unimed_captions/`` -- the three UniMed caption tables MedMoE trains on
  (:data:`~medmoe.papers.medmoe.data.UNIMED_CAPTION_FILES`, written by
  :func:`~medmoe.papers.medmoe.data.write_unimed_fixture`: ``filename`` / ``labels`` / ``captions`` list
  literals), with their images in ``radimagenet/radiology_ai/{CT,MR,US}/...``,
  ``chexpert/CheXpert-v1.0-small/...`` and ``chestxray8/...``; several captions per image;
* ``unimed_clip_eval/`` -- UniMed-CLIP's evaluation folders and ``medimeta_organs/organs_<view>/`` (MedIMeta as
  ``fetch.py medimeta_organs`` unpacks it), by :func:`~medmoe.papers.medmoe.evalsets.write_eval_fixtures`;
* ``bio_clinicalbert/`` -- a ``save_pretrained`` BERT folder (``config.json``, weights, tokenizer files) standing
  in for ``data/weights/hf/Bio_ClinicalBERT``: 4 layers, 32-d, the MiniLM tokenizer;
* ``swin/`` -- a ``save_pretrained`` ``SwinModel`` of the ``swin-test`` size standing in for
  ``data/weights/hf/swin-tiny-patch4-window7-224``;
* ``medclip/pytorch_model.bin`` -- a MedCLIP-like checkpoint with the real key names of both towers:
  ``vision_model.model.*`` (the Swin, saved with transformers 4.x parameter names, as MedCLIP's is),
  ``vision_model.projection_head.weight``, ``text_model.model.*`` (the BERT, with the ``embeddings.position_ids``
  buffer transformers 4.x stored), ``text_model.projection_head.weight`` and ``logit_scale``. Its weights differ
  from the two folders above, so the chapter can show that the checkpoint, not the folder, was loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medmoe.backbones import build_swin, build_text_encoder
from medmoe.papers.medmoe.data import UNIMED_CAPTION_FILES, write_unimed_fixture
from medmoe.papers.medmoe.evalsets import write_eval_fixtures

__all__ = ["write_rehearsal_fixtures", "unimed_rows"]

_FINDINGS = {
    "CT": ("Axial CT of the abdomen", "liver lesion", "normal pancreas", "renal cyst"),
    "MR": ("Sagittal knee MRI", "ACL tear", "meniscal tear", "normal ligament"),
    "US": ("Thyroid ultrasound", "hypoechoic nodule", "benign cyst", "homogeneous echotexture"),
    "XR": ("Frontal chest X-ray", "cardiomegaly", "pleural effusion", "no acute finding"),
}


def unimed_rows(table: str, n_images: int) -> list[tuple[str, list[str]]]:
    """``(image path, captions)`` rows of a tiny UniMed table, with 1 to 3 captions per image in the real path styles.

    Example:
        >>> unimed_rows("radimagenet", 2)[1]
        ('radiology_ai/MR/knee/r000001.png', ['Sagittal knee MRI showing meniscal tear.', 'Meniscal tear on MRI.'])
    """
    rows = []
    for i in range(n_images):
        if table == "radimagenet":
            modality = ("CT", "MR", "US")[i % 3]
            organ = {"CT": "abdomen", "MR": "knee", "US": "thyroid"}[modality]
            path = f"radiology_ai/{modality}/{organ}/r{i:06d}.png"
        elif table == "chexpert":
            modality, path = "XR", f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg"
        else:
            modality, path = "XR", f"{i:08d}_000.png"
        title, *findings = _FINDINGS[modality]
        finding = findings[i % len(findings)]
        captions = [f"{title} showing {finding}.", f"{finding.capitalize()} on {title.split()[-1]}.",
                    f"{title}: {finding}, no other abnormality."][: 1 + i % 3]
        rows.append((path, captions))
    return rows


def _tensors_of(module: torch.nn.Module, prefix: str, seed: int) -> dict[str, torch.Tensor]:
    """The module's state under ``prefix``, with values shifted by a seeded offset (different from the folders)."""
    g = torch.Generator().manual_seed(seed)
    return {f"{prefix}{k}": (v + 0.01 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v.clone()
            for k, v in module.state_dict().items()}


def _legacy_swin_name(key: str) -> str:
    """Today's Swin parameter name -> transformers 4.x's (the names in MedCLIP's checkpoint)."""
    for new, old in (("attention.q_proj.", "attention.self.query."), ("attention.k_proj.", "attention.self.key."),
                     ("attention.v_proj.", "attention.self.value."), ("attention.o_proj.", "attention.output.dense."),
                     ("attention.relative_position_bias.relative_position_bias_table",
                      "attention.self.relative_position_bias_table"),
                     ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense.")):
        key = key.replace(new, old)
    return key


def write_rehearsal_fixtures(root: Path) -> None:
    """Write every input of the rehearsal profile under ``root`` (see the module docstring); a few seconds."""
    root = Path(root)
    torch.manual_seed(0)
    captions = root / "unimed_captions"
    for table, n in (("radimagenet", 24), ("chexpert", 8), ("chestxray8", 8)):
        write_unimed_fixture(captions / table, unimed_rows(table, n), name=UNIMED_CAPTION_FILES[table], image_size=32)
        (captions / table / UNIMED_CAPTION_FILES[table]).replace(captions / UNIMED_CAPTION_FILES[table])
    write_eval_fixtures(root / "unimed_clip_eval", medimeta_root=root / "medimeta_organs", n_per_class=2,
                        image_size=32)

    bert = build_text_encoder("random-bert-tiny", max_length=25, layers="sum_last4")
    bert.backbone.save_pretrained(root / "bio_clinicalbert")
    bert.tokenizer.save_pretrained(root / "bio_clinicalbert")
    swin = build_swin("swin-test")
    swin.save_pretrained(root / "swin")

    state = {_legacy_swin_name(k): v for k, v in _tensors_of(swin, "vision_model.model.", 1).items()}
    state["vision_model.projection_head.weight"] = torch.randn(16, swin.config.hidden_size)
    state.update(_tensors_of(bert.backbone, "text_model.model.", 2))
    state["text_model.model.embeddings.position_ids"] = torch.arange(512)[None]
    state["text_model.projection_head.weight"] = torch.randn(16, bert.width)
    state["logit_scale"] = torch.tensor(4.6052)
    (root / "medclip").mkdir(parents=True, exist_ok=True)
    torch.save(state, root / "medclip" / "pytorch_model.bin")
