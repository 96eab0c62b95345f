"""One process of a multi-GPU chapter run: ``medmoe run NOTEBOOK --profile paper --gpus 8``.

Explained in the book: *Environment and commands* (section "Several GPUs"). The runner
(:func:`medmoe.repro.runner.run_notebook` with ``gpus > 1``) prepares two files with the run's parameters injected
and starts ``accelerate launch --multi_gpu --num_processes N -m medmoe.repro.distributed ...``, which runs this
module once per process:

* **rank 0** executes the prepared notebook with papermill, so the executed ``notebook.ipynb``, its figures and
  ``metrics.json`` come from rank 0 alone;
* **ranks 1..N-1** run the same cells as a plain script (``script.py``, written by jupytext from the same prepared
  notebook): same seeds, same data, same calls. :func:`medmoe.engine.fit` wraps the model in DDP, shards every
  training loader across the processes and saves checkpoints from the main process only;
  :func:`medmoe.repro.runner.save_results` returns without writing on ranks > 0; matplotlib draws off screen.

The papermill kernel is a child of rank 0's process, so it inherits ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
and the rest of the environment Accelerate set, and joins the same process group as the scripts. Evaluation and
figures run on every rank over the whole test set (no collective there), so every rank takes the same branches.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medmoe.repro.distributed",
                                description="one rank of `medmoe run --gpus N` (started by accelerate launch)")
    p.add_argument("prepared", help="the notebook with the parameters injected (rank 0 executes it)")
    p.add_argument("script", help="the same notebook as a script (ranks 1.. run it)")
    p.add_argument("executed", help="where rank 0 writes the executed notebook")
    p.add_argument("--cwd", required=True, help="the folder the notebook runs in (notebooks/)")
    p.add_argument("--kernel", default="python3")
    p.add_argument("--timeout", type=int, default=None)
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        import papermill as pm  # local: only rank 0 executes a notebook

        pm.execute_notebook(args.prepared, args.executed, kernel_name=args.kernel, progress_bar=False,
                            cwd=args.cwd, execution_timeout=args.timeout)
        return 0
    os.environ["MPLBACKEND"] = "Agg"  # no display; figures are rank 0's
    os.chdir(args.cwd)
    sys.argv = [args.script]
    runpy.run_path(str(Path(args.script)), run_name="__main__")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
