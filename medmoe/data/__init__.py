"""Data every chapter shares: embedded phantoms and fetching; each paper's own file layouts live in its folder.

* :mod:`medmoe.data.phantoms` -- procedural 2D (five modalities, lesions, distractors, reports) and 3D
  (abdominal CT, partially labelled sources) phantoms; no download.
* :mod:`medmoe.data.download` -- the verified, resumable downloader; :mod:`medmoe.data.sources` -- the
  catalogue of real datasets and weights (``python data_scripts/fetch.py --list``, :mod:`medmoe.data.fetch_cli`).
* :mod:`medmoe.data.prepare` -- what every prepare program shares (atomic, idempotent output folders; finding a
  download).

The papers' layouts: :mod:`medmoe.papers.mlmoe.data` (QaTa-COV19 / LViT), :mod:`medmoe.papers.medmoe.data`
(UniMed captions) and :mod:`medmoe.papers.medmoe.evalsets`, :mod:`medmoe.papers.segmote.data` (IMIS-Bench),
:mod:`medmoe.papers.mome.data` (the Universal Model's lists). Nothing here imports from :mod:`medmoe.papers`.

Names are imported lazily, so ``medmoe.data.download`` works without loading torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "phantoms": (
        "ANATOMY_CLASSES", "CLASSES_3D", "HU_3D", "LESION_REGIONS", "MODALITIES", "SOURCE_DATASETS", "Phantom2D",
        "Phantom3D", "PhantomDataset2D", "PhantomFindingSet", "PhantomVolumeDataset", "ct_prompt", "make_phantom_2d",
        "make_phantom_3d", "region_masks", "rgb_to_grey",
    ),
    "download": ("extract", "sha256sum", "DownloadError", "ChecksumError", "ManualDownloadRequired"),
    "sources": ("SOURCES", "Source", "RemoteFile", "fetch", "get_source"),
    "prepare": ("PREPARED_MARKER", "prepared_is_current", "build_folder_atomically", "resolve_download"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"medmoe.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'medmoe.data' has no attribute {name!r}")
