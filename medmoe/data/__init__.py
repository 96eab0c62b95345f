"""Data: embedded phantom data sets and loaders for the real data sets' file layouts.

* :mod:`medmoe.data.phantoms` -- procedural 2D (five modalities, lesions, distractors, reports) and 3D
  (abdominal CT, partially labelled sources) phantoms; no download.
* :mod:`medmoe.data.qata` -- the QaTa-COV19 / Ariadne folder layout: write phantoms in it, load it back
  (one loader for the phantoms and the real data).
* :mod:`medmoe.data.lvit` -- LViT's prepared layout (QaTa-COV19, MosMedData+; both MLMoE split policies)
  and the helpers ``data_scripts/prepare_{qata,mosmed}.py`` use to arrange the downloads.
* :mod:`medmoe.data.unimed` -- UniMed caption tables (MedMoE pretraining): one sample per caption, with
  the six-class modality label.
* :mod:`medmoe.data.evalsets` -- MedMoE's zero-shot / linear-probe benchmarks in UniMed-CLIP's processed
  formats (CheXpert 5x200, RSNA, thyroid/breast US, ACL/meniscus MRI, MedIMeta CT organs), their class
  prompts and stratified label subsampling.
* :mod:`medmoe.data.imis` -- the IMIS-Bench layout SegMoTE reads (``<CODE>/dataset.json``, sparse
  ``x___<name>.(C, H, W, 1).npz`` labels): write phantoms in it, load it per class or per image, several
  data sets at once (``data_scripts/build_medseg_hq.py`` writes the public sources in it).
* :mod:`medmoe.data.universal` -- the CLIP-Driven Universal Model's conventions MoME builds on: the
  32-class CT template, tab-separated dataset lists, per-dataset label transfer (organs include their
  lesions, left/right splits) and a MONAI-preprocessed 3D dataset (``data_scripts/prepare_universal.py``
  arranges AMOS, the MSD CT tasks and TotalSegmentator in that layout).
* :mod:`medmoe.data.download` -- the verified, resumable downloader; :mod:`medmoe.data.sources` -- the
  catalogue of real datasets and weights (``python data_scripts/fetch.py --list``).

Names are imported lazily, so ``medmoe.data.download`` works without loading torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "phantoms": (
        "ANATOMY_CLASSES", "CLASSES_3D", "HU_3D", "LESION_REGIONS", "MODALITIES", "SOURCE_DATASETS", "Phantom2D",
        "Phantom3D", "PhantomDataset2D", "PhantomFindingSet", "PhantomVolumeDataset", "ct_prompt", "make_phantom_2d", "make_phantom_3d",
        "region_masks", "rgb_to_grey",
    ),
    "qata": ("SPLIT_FOLDERS", "TABLE_COLUMNS", "QaTaDataset", "write_qata_layout"),
    "lvit": (
        "LVIT_SPLIT_FOLDERS", "SPLIT_POLICIES", "MASK_NAME_RULES", "LViTDataset", "write_lvit_layout",
        "read_text_table", "write_text_table",
    ),
    "unimed": (
        "UNIMED_MODALITIES", "UNIMED_CAPTION_FILES", "UniMedCaptions", "load_image_rgb", "modality_from_path",
        "write_unimed_fixture",
    ),
    "evalsets": (
        "CLASS_PROMPTS", "EVAL_SETS", "EVAL_SET_CLASSES", "ORGAN_CLASSES", "ClassificationSet", "build_eval_set",
        "subsample_labels",
    ),
    "imis": (
        "IMIS_SPLITS", "SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "IMISDataset", "MultiDatasetIMIS", "collate_imis",
        "mask_file_name", "parse_mask_shape", "pseudo_region_map", "read_sparse_mask", "sam_normalize",
        "write_dataset_json", "write_imis_item", "write_imis_layout", "write_sparse_mask",
    ),
    "universal": (
        "UNIVERSAL_CLASSES", "NUM_UNIVERSAL_CLASSES", "TEMPLATE", "LABEL_TRANSFER", "UniversalCase",
        "UniversalDataset", "parse_dataset_list", "partial_label_target", "transfer_label", "write_dataset_list",
        "write_universal_fixture",
    ),
    "download": ("extract", "sha256sum", "DownloadError", "ChecksumError", "ManualDownloadRequired"),
    "sources": ("SOURCES", "Source", "RemoteFile", "fetch", "get_source"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"medmoe.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'medmoe.data' has no attribute {name!r}")
