"""One file per model.

* :mod:`medmoe.models.primer` -- Chapter 0's toy mixture-of-experts segmenter.
* :mod:`medmoe.models.ariadne` -- Chapter 1: Ariadne's Thread and MLMoE (text experts, virtual prompt).
* :mod:`medmoe.models.medmoe` -- Chapter 2: MedMoE (Swin-T, hard-routed multi-scale experts, GLoRIA text branch).
* :mod:`medmoe.models.segmote` -- Chapter 3: SegMoTE (expert tokens and MoTE inside a frozen SAM, PPT).
* :mod:`medmoe.models.mome` -- Chapter 4: the CLIP-Driven Universal Model and MoME's text-guided router over
  SwinUNETR decoder experts (a reconstruction from MoME's abstract).
"""

from medmoe.models.ariadne import AriadneConfig, TextGuidedSegmenter, build_model
from medmoe.models.medmoe import MedMoE, MedMoEConfig
from medmoe.models.primer import ToyMoESegmenter

__all__ = ["ToyMoESegmenter", "AriadneConfig", "TextGuidedSegmenter", "build_model", "MedMoE", "MedMoEConfig"]
