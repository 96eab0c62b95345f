"""The rehearsal fixtures of Chapter 4 (MoME): the ``paper`` profile's inputs, tiny, in their real formats.

Explained in the book: *Chapter 4, MoME* (``chapters/04_mome``), the note on the ``rehearsal`` profile. ``medmoe run
notebooks/04_mome.py --profile rehearsal`` calls :func:`write_rehearsal_fixtures` with ``<out>/fixtures`` and runs the
``paper`` profile's code path on what it writes:

* ``universal/`` -- NIfTI CT volumes and label maps in the CLIP-Driven Universal Model's layout (AMOS ``09`` and MSD
  liver ``10_03``, so the MSD-only zoom augmentation runs), written by
  :func:`medmoe.papers.mome.data.write_universal_fixture`, with ``dataset_list/universal_{train,test}.txt`` where
  ``data_scripts/prepare_universal.py`` puts its lists;
* ``weights/txt_encoding.pth`` -- the Universal Model's class-embedding file: a ``(32, 512)`` float16 tensor saved
  with ``torch.save`` (its ``pretrained_weights/clip_embedding.py`` saves CLIP ViT-B/32's fp16 text features);
  random numbers here;
* ``weights/model_swinvit.pt`` -- self-supervised Swin weights in the format of MONAI's ``model_swinvit.pt``
  (:func:`write_swinvit_checkpoint`), for the rehearsal's small Swin UNETR (``universal_test`` / ``mome_test``:
  feature size 12, one block per stage, window 4), which ``SwinUNETR.load_from`` reads.

Only sizes differ from the paper: 16^3 volumes, 3 cases per dataset, the ``_test`` Swin UNETR.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medmoe.papers.mome.data import (
    NUM_UNIVERSAL_CLASSES,
    parse_dataset_list,
    write_dataset_list,
    write_universal_fixture,
)
from medmoe.papers.mome.model import CONFIGS, MoMEConfig, build_swinunetr
from medmoe.utils import resolve_config

__all__ = ["REHEARSAL_DATASETS", "write_swinvit_checkpoint", "write_rehearsal_fixtures"]

#: The datasets of the rehearsal's dataset lists (AMOS, and an MSD task so that the MSD-only zoom runs).
REHEARSAL_DATASETS = ("09", "10_03")

# MONAI's MLPBlock calls its layers linear1/linear2; the released checkpoint (and load_from) says fc1/fc2.
_MLP_NAMES = {".mlp.linear1.": ".mlp.fc1.", ".mlp.linear2.": ".mlp.fc2."}


def write_swinvit_checkpoint(path: str | os.PathLike[str], config: str | MoMEConfig = "universal_test", *,
                             seed: int = 0) -> Path:
    """Write a ``model_swinvit.pt``-format checkpoint for ``config``'s Swin encoder: ``{"state_dict": {...}}`` with
    the ``module.``-prefixed names of the released file (``module.patch_embed.proj.weight``,
    ``module.layers1.0.blocks.0.mlp.fc1.weight``, ...), filled with a freshly initialised Swin transformer (seeded).

    Example:
        >>> import tempfile
        >>> sd = torch.load(write_swinvit_checkpoint(Path(tempfile.mkdtemp()) / "m.pt"))["state_dict"]
        >>> "module.layers1.0.blocks.0.mlp.fc1.weight" in sd, "module.layers4.0.downsample.reduction.weight" in sd
        (True, True)
    """
    cfg = resolve_config(config, CONFIGS, {}, what="MoME")
    with torch.random.fork_rng():  # leave the caller's random stream alone
        torch.manual_seed(seed)
        vit = build_swinunetr(cfg).swinViT
    state = {}
    for key, value in vit.state_dict().items():
        for ours, theirs in _MLP_NAMES.items():
            key = key.replace(ours, theirs)
        state[f"module.{key}"] = value.clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "state_dict": state}, path)
    return path


def write_rehearsal_fixtures(root: str | os.PathLike[str]) -> None:
    """Write the rehearsal's inputs under ``root`` (see the module docstring); deterministic, about a second.

    Layout (what the ``rehearsal`` profile of ``card.yaml`` points at)::

        root/universal/09_AMOS/{img,label}/amos_000{0,1,2}.nii.gz
        root/universal/10_Decathlon/Task03_Liver/{imagesTr,labelsTr}/liver_{0,1,2}.nii.gz
        root/universal/dataset_list/universal_{train,test}.txt     (2 + 2 train cases, 1 + 1 test cases)
        root/weights/txt_encoding.pth                              ((32, 512) float16)
        root/weights/model_swinvit.pt                              (Swin encoder of universal_test / mome_test)
    """
    root = Path(root)
    data = root / "universal"
    everything = write_universal_fixture(data, datasets=REHEARSAL_DATASETS, cases_per_dataset=3, size=16, seed=0,
                                          list_name="all_cases.txt")
    cases = parse_dataset_list(everything)
    everything.unlink()
    test = {c.line for d in REHEARSAL_DATASETS for c in [c for c in cases if c.dataset == d][-1:]}
    lists = data / "dataset_list"
    write_dataset_list(lists, "universal_train.txt", [(c.image, c.label) for c in cases if c.line not in test])
    write_dataset_list(lists, "universal_test.txt", [(c.image, c.label) for c in cases if c.line in test])
    weights = root / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(NUM_UNIVERSAL_CLASSES, 512, generator=g).half(), weights / "txt_encoding.pth")
    write_swinvit_checkpoint(weights / "model_swinvit.pt", "universal_test")
