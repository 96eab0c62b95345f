"""The tiny notebook the runner's tests execute (tests/test_runner.py, tests/test_skip_unchanged.py): one
template and one writer, with its profiles in a ``profiles.yaml`` beside it, as a notebook outside the book keeps
them."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = '''\
# %% [markdown]
# A tiny notebook for the runner's tests.

# %% tags=["parameters"]
profile = "quick"
run_dir = "runs/interactive/tiny"
run_key = None
seed = 0
n_experts = 4
scale = 0.5

# %%
import random
from medmoe.repro.runner import save_results
random.seed(seed)
{body}
save_results(run_dir, {{"n_experts": n_experts, "seed": seed, "score": scale * n_experts, "draw": random.random()}})
'''


def write_tiny(tmp_path: Path, body: str = "", profiles: dict | None = None, name: str = "tiny") -> Path:
    nb = tmp_path / f"{name}.py"
    nb.write_text(TINY.format(body=body))
    card = {"profiles": profiles or {"quick": {}, "smoke": {"n_experts": 2}}}
    (tmp_path / "profiles.yaml").write_text(yaml.safe_dump({name: card}))
    return nb
