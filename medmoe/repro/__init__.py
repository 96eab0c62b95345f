"""Reproduction: run notebooks with profiles, match runs against the papers' table cells, the ``medmoe`` command.

* :mod:`medmoe.repro.runner` -- papermill + the paper cards' profiles + ``metrics.json`` with the environment;
  :func:`save_results` (a notebook's last cell) and :func:`checkpoint_dir` (its checkpoint folder, keyed by the
  injected ``run_key``);
* :mod:`medmoe.repro.registry` -- paper table cells (from every card) -> runs -> the book's reproduction page;
* :mod:`medmoe.repro.cli` -- the ``medmoe`` command line.

Imports run one way: ``cli -> registry -> runner -> papers`` (cards only).
"""

from medmoe.repro.runner import RunnerError, checkpoint_dir, fingerprint, run_key_for, run_notebook, save_results

__all__ = ["RunnerError", "run_notebook", "save_results", "checkpoint_dir", "fingerprint", "run_key_for"]
