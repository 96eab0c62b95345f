"""Chapter 0, the MoE primer: one toy segmenter, six routers, on phantoms from five modalities.

Book: *Chapter 0, a primer on mixture of experts* (``chapters/00_moe_primer``). The shared vocabulary it teaches
lives in :mod:`medmoe.moe`; this folder holds the toy model (:mod:`~medmoe.papers.primer.model`) and the recipe
that trains the six variants (:mod:`~medmoe.papers.primer.recipe`). The primer reads only the embedded phantoms,
so it has no ``data.py`` or ``prepare.py``.
"""

from medmoe.papers.primer.model import CONFIGS, ToyConfig, ToyMoESegmenter, build_model
from medmoe.papers.primer.recipe import VARIANTS, build, count, evaluate, train

__all__ = ["CONFIGS", "ToyConfig", "ToyMoESegmenter", "build_model", "VARIANTS", "build", "train", "evaluate", "count"]
