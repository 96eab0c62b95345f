"""Chapter 1, MLMoE (Liu et al.): text experts in the decoder of Ariadne's Thread, and a virtual prompt for when
the report is missing.

Book: *Chapter 1, MLMoE: text experts for text-guided segmentation* (``chapters/01_mlmoe``). Which file holds what:

* :mod:`~medmoe.papers.mlmoe.model` -- Ariadne's Thread and MLMoE as one model class
  (:class:`TextGuidedSegmenter`, configurations :data:`CONFIGS`), explained in section 3 "The architecture, with
  shapes";
* :mod:`~medmoe.papers.mlmoe.recipe` -- the losses, the two training stages (``train(..., stage="text_present" |
  "text_absent")``), evaluation with the report, a fixed prompt or the virtual prompt, parameter counts and the
  experts' word attribution: sections 4 "Training: text present, then text absent", 5 "Results: does MLMoE use
  the report, and what does the virtual prompt recover?" and 6 "What the experts look at";
* :mod:`~medmoe.papers.mlmoe.data` -- the QaTa-COV19 (Ariadne) and LViT layouts and their loaders, phantoms written
  in them, and the task datasets (encoded reports, the teacher's features): sections 1 "Data: one loader for the
  phantoms and QaTa-COV19" and 2 "The frozen text encoder, run once";
* :mod:`~medmoe.papers.mlmoe.prepare` -- arranging the QaTa-COV19 / MosMedData+ downloads and LViT's workbooks into
  those layouts (``data_scripts/prepare_qata.py``, ``data_scripts/prepare_mosmed.py``);
* ``card.yaml`` -- the chapter's profiles and the paper's table cells.
"""

from medmoe.papers.mlmoe.model import CONFIGS, AriadneConfig, TextGuidedSegmenter, build_model
from medmoe.papers.mlmoe.recipe import STAGES, build, count, evaluate, evaluate_texts, train

__all__ = ["CONFIGS", "AriadneConfig", "TextGuidedSegmenter", "build_model", "STAGES", "build", "train", "evaluate",
           "evaluate_texts", "count"]
