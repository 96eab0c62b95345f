"""MedMoE Book: mixture-of-experts models for medical imaging, as an executable textbook.

Layout (find things by folder name):

* :mod:`medmoe.moe` -- the shared vocabulary: gates, dispatch, losses, routing statistics (book: *MoE primer*).
* :mod:`medmoe.data` -- embedded phantom datasets and loaders for the real datasets' file layouts.
* :mod:`medmoe.engine` -- the one training loop (Hugging Face Accelerate) every chapter uses.
* :mod:`medmoe.metrics` -- each paper's Dice/IoU convention, named.
* :mod:`medmoe.repro.runner` -- ``medmoe run``: papermill + profiles + ``metrics.json`` with the environment.
* :mod:`medmoe.repro.registry` -- paper table cells -> notebook + parameters -> the paper's number.
"""

__version__ = "0.1.0"
