"""Pretrained backbones every chapter builds on, and every checkpoint loader (one :class:`LoadReport` type).

* :mod:`medmoe.backbones.encoders` -- BERT-family text encoders (the packaged offline MiniLM, a local folder or a
  hub id), ConvNeXt (Chapter 1) and Swin (Chapter 2) image encoders, and MedCLIP's Swin checkpoint loader;
* :mod:`medmoe.backbones.sam` -- SAM's image encoder, prompt encoder and mask decoder from ``segment-anything``
  at any input size, and a 1024-px checkpoint loader that resizes the position tables (Chapter 3).

Chapter 4's SwinUNETR is MONAI's own network, built inside :mod:`medmoe.papers.mome.model`.
"""

from medmoe.backbones.encoders import (
    CONVNEXT_CONFIGS,
    CONVNEXT_HUB_IDS,
    ENCODERS,
    SWIN_CONFIGS,
    SWIN_HUB_IDS,
    TEXT_MODELS,
    LoadReport,
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
    load_medclip_text,
    swin_features,
    swin_min_input_size,
)
from medmoe.backbones.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD, build_sam, load_sam_checkpoint

__all__ = [
    "TextFeatures", "TextEncoder", "TEXT_MODELS", "build_text_encoder", "encode_cached",
    "CONVNEXT_CONFIGS", "CONVNEXT_HUB_IDS", "build_convnext", "convnext_features",
    "SWIN_CONFIGS", "SWIN_HUB_IDS", "build_swin", "swin_features", "swin_min_input_size", "feature_channels",
    "LoadReport", "load_medclip_swin", "load_medclip_text",
    "build_sam", "load_sam_checkpoint", "SAM_PIXEL_MEAN", "SAM_PIXEL_STD",
    "WeightsUnavailableError", "ENCODERS",
]
