"""Chapter 2, MedMoE: modality-specialised multi-scale experts in a GLoRIA-style vision-language model.

Book: *Chapter 2, MedMoE* (``chapters/02_medmoe``). Which file holds the code each section explains:

* :mod:`~medmoe.papers.medmoe.data` -- section 1 "Data: image-report pairs with a modality label": the UniMed
  caption tables (:class:`~medmoe.papers.medmoe.data.UniMedCaptions`) and
  :class:`~medmoe.papers.medmoe.data.ReportDataset` (images with their encoded reports);
  :mod:`~medmoe.papers.medmoe.evalsets` -- the zero-shot and linear-probe benchmarks of Tables 1 and 2;
* :mod:`~medmoe.papers.medmoe.model` -- sections 2 "The text branch: a frozen BERT read GLoRIA's way" (
  :func:`~medmoe.papers.medmoe.model.encode_reports`) and 3 "The architecture, with shapes"
  (:class:`~medmoe.papers.medmoe.model.MedMoE`, :class:`~medmoe.papers.medmoe.model.MultiScaleExpert`, the
  configurations ``medmoe_paper``, ``medmoe_quick``, ``medmoe_test``);
* :mod:`~medmoe.papers.medmoe.recipe` -- Table 3's cost in section 3 (:func:`~medmoe.papers.medmoe.recipe.cost`),
  section 4 "Pretraining: global + local contrast and the auxiliary loss" (the GLoRIA losses,
  :func:`~medmoe.papers.medmoe.recipe.pretrain_step`, :func:`train`), sections 5 "Does the router follow the
  modality?" and 7 "Zero-shot classification (Table 1) and linear probing (Table 2)" (:func:`evaluate`) and
  section 6 "What the words attend to" (:func:`~medmoe.papers.medmoe.recipe.word_attention`);
* ``card.yaml`` -- the chapter's profiles (``rehearsal``: the paper path on tiny files), the inputs the paper
  profile reads and the paper's table cells; :mod:`~medmoe.papers.medmoe.fixtures` writes the rehearsal's files;
* :mod:`medmoe.benchmarks.medmoe_routing` -- the timing of hard routing against the released code's dense experts.

Section 8 "The claim, the control, the verdict" sets MedMoE against its K = 1 control
(:func:`~medmoe.papers.medmoe.recipe.routing_specialisation` and :func:`~medmoe.papers.medmoe.recipe.scale_attention`
measure the routing and the scale weights of section 5); section 9 "Where this chapter deviates from the paper,
and why" lists the configuration switches of ``model.py``.
There is no ``prepare.py``: the UniMed tables and the evaluation sets are read as downloaded
(``python data_scripts/fetch.py --show unimed_captions``).
"""

from medmoe.papers.medmoe.model import CONFIGS, MedMoE, MedMoEConfig, build_model
from medmoe.papers.medmoe.recipe import build, count, evaluate, train

__all__ = ["CONFIGS", "MedMoE", "MedMoEConfig", "build_model", "build", "train", "evaluate", "count"]
