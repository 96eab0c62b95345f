"""One file per model.

* :mod:`medmoe.models.primer` -- Chapter 0's toy mixture-of-experts segmenter.
* :mod:`medmoe.models.ariadne` -- Chapter 1: Ariadne's Thread and MLMoE (text experts, virtual prompt).
"""

from medmoe.models.ariadne import AriadneConfig, TextGuidedSegmenter, build_model
from medmoe.models.primer import ToyMoESegmenter

__all__ = ["ToyMoESegmenter", "AriadneConfig", "TextGuidedSegmenter", "build_model"]
