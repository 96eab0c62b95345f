"""Chapter 4, MoME: a text-guided router over decoder-layer experts, on its base, the CLIP-Driven Universal Model,
for partially labelled 3D CT.

Book: *Chapter 4, MoME* (``chapters/04_mome``). Only MoME's abstract is public, so most of the model is the book's
reconstruction; the chapter says which part is which. The files, and the sections that explain them:

* :mod:`~medmoe.papers.mome.model` -- :class:`UniversalSeg` (the Universal Model on MONAI's SwinUNETR, and MoME
  with its :class:`~medmoe.papers.mome.model.TextGuidedRouter`), configurations :data:`CONFIGS`,
  :func:`build_model`; section 2 "The architecture" and section 5 "Where the router looks: weights per class over
  slices";
* :mod:`~medmoe.papers.mome.recipe` -- the class text embeddings, the partial-label loss and the four verbs
  :func:`build`, :func:`train`, :func:`evaluate` (sliding-window, Dice per organ per volume), :func:`count`;
  sections 3 "Training: one backbone, two heads" and 4 "Per-organ Dice (the Universal Model's convention)";
* :mod:`~medmoe.papers.mome.paired` -- the chapter's paired design: per seed one frozen backbone, its cached
  decoder outputs (:class:`~medmoe.papers.mome.paired.FeatureCache`), a Universal and a MoME head from the same
  start (:func:`~medmoe.papers.mome.paired.head_from`, :func:`~medmoe.papers.mome.paired.train_head`), the text
  controls and the kidney-side measure; sections 3 "Training: one backbone, two heads" and 6 "The claim, the
  control, the verdict";
* :mod:`~medmoe.papers.mome.data` -- the Universal Model's 32-class template, dataset lists and label transfer
  (:class:`~medmoe.papers.mome.data.UniversalDataset`), the phantom CT sources
  (:class:`~medmoe.papers.mome.data.PhantomCT`) and the random training patches
  (:class:`~medmoe.papers.mome.data.RandomPatches`); section 1 "Partially labelled data";
* :mod:`~medmoe.papers.mome.prepare` -- arranges AMOS, the MSD CT tasks and TotalSegmentator in the Universal
  Model's layout (``data_scripts/prepare_universal.py`` calls it): the open part of its collection, not the 3,410
  scans of the Universal Model and MoME;
* :mod:`~medmoe.papers.mome.fixtures` -- the ``rehearsal`` profile's tiny inputs in the real formats (dataset-list
  NIfTI volumes, ``txt_encoding.pth``, a ``model_swinvit.pt``-format checkpoint);
* ``card.yaml`` -- the chapter's profiles and registry cells.
"""

from medmoe.papers.mome.model import CONFIGS, MoMEConfig, UniversalSeg, build_model
from medmoe.papers.mome.recipe import build, class_text_embeddings, count, evaluate, train

__all__ = ["CONFIGS", "MoMEConfig", "UniversalSeg", "build_model", "class_text_embeddings", "build", "train",
           "evaluate", "count"]
