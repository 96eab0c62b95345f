"""Chapter 3, SegMoTE (Lu et al., CVPR 2026): token-level experts inside a frozen SAM, and prompt-free tokenisation.

Book: *Chapter 3, SegMoTE* (``chapters/03_segmote``; the notebook ``notebooks/03_segmote.py``). Its sections and
the code that they explain:

* 1 "Data: one item per (image, class)" -- :mod:`~medmoe.papers.segmote.data`: the task datasets
  (:class:`~medmoe.papers.segmote.data.PhantomSegTasks`, :class:`~medmoe.papers.segmote.data.IMISSegTasks`), the
  IMIS-Bench layout they read, and the embedding cache;
* 2 "The frozen foundation model" -- :func:`~medmoe.papers.segmote.model.build_sam` and
  :func:`~medmoe.papers.segmote.model.load_sam_checkpoint` (from :mod:`medmoe.backbones.sam`), and the stand-in
  SAM's pretraining, :func:`~medmoe.papers.segmote.recipe.train` with ``stage="sam_pretrain"``;
* 3 "Where the expert tokens enter, and what trains" -- :mod:`~medmoe.papers.segmote.model`
  (:class:`~medmoe.papers.segmote.model.SegMoTE`, :class:`~medmoe.papers.segmote.model.MoTE`) and
  :func:`~medmoe.papers.segmote.recipe.count`;
* 4 "Training SegMoTE on the frozen model" -- :mod:`~medmoe.papers.segmote.recipe` (prompts, losses,
  :func:`~medmoe.papers.segmote.recipe.segmote_step`, :func:`~medmoe.papers.segmote.recipe.train`);
* 5 "Box, point or no prompt (Table 4)" -- :class:`~medmoe.papers.segmote.model.PromptTokenizer` (PPT) and
  :func:`~medmoe.papers.segmote.recipe.evaluate`;
* 4 also the controls and the router's switch -- :func:`~medmoe.papers.segmote.recipe.evaluate_standin` (the frozen
  model's own decoding), :data:`~medmoe.papers.segmote.recipe.ROUTER_SETTINGS`,
  :func:`~medmoe.papers.segmote.recipe.router_drift`;
* 6 "Which token is selected, per modality (Fig. 6a) and per layer (Fig. 7)" -- the routing rows of
  :func:`~medmoe.papers.segmote.recipe.evaluate` and :mod:`~medmoe.papers.segmote.analysis` (token x modality Dice,
  whether the selected token is the best one, NMI against its permutation null);
* 7 "The claim, the control, the verdict" -- :mod:`medmoe.claims` over the numbers above.

Files: ``model.py`` (the model, its configurations ``segmote_paper``, ``segmote_paper_imis``, ``segmote_quick``,
``segmote_test``), ``recipe.py`` (losses, steps and the four verbs), ``analysis.py`` (token statistics), ``data.py``
(layouts and task datasets), ``prepare.py`` (what ``data_scripts/build_medseg_hq.py`` runs), ``fixtures.py`` (the
``rehearsal`` profile's inputs in their real formats), ``card.yaml`` (profiles, declared inputs and the paper's table
cells).
"""

from medmoe.papers.segmote.model import ALIASES, CONFIGS, SegMoTE, SegMoTEConfig, build_model
from medmoe.papers.segmote.recipe import build, count, evaluate, train

__all__ = ["CONFIGS", "ALIASES", "SegMoTEConfig", "SegMoTE", "build_model", "build", "train", "evaluate", "count"]
