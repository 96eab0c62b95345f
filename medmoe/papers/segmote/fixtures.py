"""Chapter 3's rehearsal fixtures: the ``paper`` profile's inputs in their real formats, tiny.

``medmoe run notebooks/03_segmote.py --profile rehearsal`` calls :func:`write_rehearsal_fixtures` with
``<out>/fixtures`` and puts that folder in place of ``{fixtures}`` in the profile (``card.yaml``: ``rehearsal`` extends
``paper``). What it writes, and what of the paper path it exercises:

* ``medseg_hq/<CODE>/`` for every folder the ``paper`` profile reads (its ``train_codes`` and ``test_codes``), in the
  IMIS-Bench layout written by :func:`medmoe.papers.segmote.data.write_imis_layout` -- the writer
  ``data_scripts/build_medseg_hq.py`` uses: ``dataset.json``, RGB PNG images, ``x___<name>.(C, H, W, 1).npz`` sparse
  labels with the builder's real class lists (:data:`medmoe.papers.segmote.prepare.BUILDERS`), ``imask`` region maps.
  The MedSeg-HQ-like folders get two training images and one test image, the out-of-domain ones (ISLES 2022,
  SegTHOR, TotalSegmentator-MRI) one test image. Images are ``40 x 48`` (not square, not the model's input size), so
  the nearest resize and the scoring at the stored resolution run as on the real data.
* ``weights/sam/sam_vit_b_01ec64.pth``: a ``segment_anything`` ``Sam`` state dict with SAM's own key names, **built
  at 1024 px** (``image_encoder.pos_embed`` ``(1, 64, 64, C)``, global-attention ``rel_pos`` tables for a 64 x 64
  grid) but with the ``segmote_test`` configuration's small widths, so that
  :func:`medmoe.backbones.sam.load_sam_checkpoint` resizes the position tables to the run's ``image_size`` exactly as
  it does for ViT-B at 512 px. The rehearsal profile uses ``config: segmote_test`` for that reason (a ViT-B pass at
  1024 px alone costs about 20 s on the book's CPU).

Everything is deterministic (``numpy`` generator seeded with 0; ``torch`` seeded with 0) and written in about a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medmoe.papers.segmote.data import write_imis_layout
from medmoe.papers.segmote.model import CONFIGS, build_sam
from medmoe.papers.segmote.prepare import BUILDERS

__all__ = ["REHEARSAL_CONFIG", "SAM_FILE", "TRAIN_CODES", "OOD_CODES", "write_rehearsal_fixtures",
           "write_sam_checkpoint", "write_medseg_hq"]

REHEARSAL_CONFIG = "segmote_test"
"""The configuration whose SAM widths the fixture checkpoint has (the rehearsal profile's ``config``)."""
SAM_FILE = "weights/sam/sam_vit_b_01ec64.pth"
"""Where the checkpoint goes under the fixture root (as ``fetch.py sam_vit_b`` places it under its root)."""
TRAIN_CODES: tuple[str, ...] = ("isic2018_task1", "sz_cxr", "chaos_t1", "chaos_t2", "amos_ct", "amos_mri")
"""The MedSeg-HQ-like folders the paper profile trains on (its ``train_codes``)."""
OOD_CODES: tuple[str, ...] = ("isles22", "segthor", "totalseg_mri")
"""The out-of-domain folders (test only) of Table 1."""

_HEIGHT, _WIDTH = 40, 48


def write_sam_checkpoint(path: Path, *, config: str = REHEARSAL_CONFIG) -> Path:
    """A SAM checkpoint at 1024 px (SAM's key names and 64 x 64 position grid) with ``config``'s widths."""
    torch.manual_seed(0)
    cfg = CONFIGS[config]
    sam = build_sam(cfg.__class__(**{**cfg.__dict__, "image_size": 1024}))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def _item(rng: np.random.Generator, name: str, n_classes: int, present: list[int], split: str) -> dict:
    """One image with ``present`` classes drawn as bright rectangles on a noisy background."""
    image = rng.integers(0, 40, size=(_HEIGHT, _WIDTH), dtype=np.uint8)
    masks = np.zeros((n_classes, _HEIGHT, _WIDTH), np.uint8)
    for j, c in enumerate(present):
        y0, x0 = int(rng.integers(2, _HEIGHT // 2)), int(rng.integers(2, _WIDTH // 2))
        h, w = int(rng.integers(8, _HEIGHT // 2)), int(rng.integers(8, _WIDTH // 2))
        masks[c, y0:y0 + h, x0:x0 + w] = 1
        image[masks[c] > 0] = 120 + 40 * (j % 3)
    return {"name": name, "image": image, "masks": masks, "split": split}


def write_medseg_hq(root: Path) -> Path:
    """``root/medseg_hq/<CODE>`` for :data:`TRAIN_CODES` and :data:`OOD_CODES`, with each builder's real classes."""
    rng = np.random.default_rng(0)
    out = root / "medseg_hq"
    by_code = {b.code: b for b in BUILDERS.values()}
    for code in TRAIN_CODES + OOD_CODES:
        builder = by_code[code]
        n = len(builder.classes)
        splits = ["test"] if builder.ood else ["training", "training", "test"]
        items = []
        for i, split in enumerate(splits):
            # at most two classes per image (SegTHOR: all four in its one test image, as the Table 1 cell averages them)
            k = n if code == "segthor" else min(n, 2)
            present = sorted(int(c) for c in rng.choice(n, size=k, replace=False))
            items.append(_item(rng, f"{code}_{i}", n, present, split))
        write_imis_layout(out, code, items, builder.classes, modality=builder.modality)
    return out


def write_rehearsal_fixtures(root: Path) -> None:
    """Write the rehearsal's inputs under ``root``: ``medseg_hq/<CODE>/...`` and :data:`SAM_FILE`."""
    root = Path(root)
    write_medseg_hq(root)
    write_sam_checkpoint(root / SAM_FILE)
