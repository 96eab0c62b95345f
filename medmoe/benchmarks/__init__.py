"""Benchmark scripts (not tests: their numbers depend on the machine).

* :mod:`medmoe.benchmarks.paper_steps` -- every chapter's paper-size training step: samples/s, peak memory and the
  projected training time of the paper profile (``python -m medmoe.benchmarks.paper_steps``; ``--device cuda``);
* :mod:`medmoe.benchmarks.medmoe_routing` -- MedMoE's hard routing against the released code's dense experts.
"""
