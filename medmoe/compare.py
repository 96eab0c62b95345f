"""The four papers' routing designs side by side: what each design is, what the book measured, what it costs.

Explained in the book: *Chapter 5, Four ways to route: a comparison* (``notebooks/05_comparison.py``), which trains
nothing. It reads the chapters' quick-profile records (``runs/quick/<chapter>/metrics.json``, written by
:func:`medmoe.repro.save_results`, with their ``claims``) and counts forward FLOPs of each paper's own model with
``torch.utils.flop_counter``, while the number of experts grows.

* :data:`DESIGNS` -- one :class:`Design` per paper: where the experts sit, the unit that is routed, what the router
  reads and what supervises it, dense or sparse compute. These are facts of the papers as the library builds them.
* :func:`latest_runs` -- the newest successful run of every chapter under a runs folder.
* :func:`measured_table` -- per paper, from those runs: the specialisation record (NMI against its permutation
  baseline) and the headline claim's paired gain over its control, each with its verdict.
* :func:`forward_flops`, :func:`cost_table` -- forward FLOPs per input against the number of experts.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from medmoe.repro.registry import find_runs

__all__ = ["Design", "DESIGNS", "latest_runs", "specialisation_record", "measured_table", "design_table",
           "forward_flops", "build_with_experts", "cost_table", "EXPERT_COUNTS"]


@dataclass(frozen=True)
class Design:
    """One paper's routing design, as the library builds it.

    Attributes:
        paper: short name. notebook: the chapter's notebook stem. experts: where the experts sit.
        unit: what one routing decision is about. router_input: what the router reads.
        supervision: what trains the router. compute: dense (every expert runs) or sparse (k of N run).
        quick_config: the model configuration the chapter's quick profile trains (for the FLOP counts).
    """

    paper: str
    notebook: str
    experts: str
    unit: str
    router_input: str
    supervision: str
    compute: str
    quick_config: str


DESIGNS: dict[str, Design] = {
    "mlmoe": Design(
        paper="MLMoE", notebook="01_mlmoe",
        experts="text experts: N maps of the report's token features",
        unit="per image (one gate for the report-image pair)",
        router_input="pooled text features ⊕ pooled image features",
        supervision="the segmentation loss, plus the diversity loss L_div",
        compute="dense: every expert runs, softmax weights with learned τ",
        quick_config="mlmoe_quick"),
    "medmoe": Design(
        paper="MedMoE", notebook="02_medmoe",
        experts="multi-scale fusion modules on the Swin encoder's four stages",
        unit="per image",
        router_input="the pooled image feature",
        supervision="an auxiliary cross-entropy towards the image's modality (L_aux), beside the contrastive losses",
        compute="sparse: hard top-1, one expert per image",
        quick_config="medmoe_quick"),
    "segmote": Design(
        paper="SegMoTE", notebook="03_segmote",
        experts="learnable expert tokens inside a frozen SAM mask decoder",
        unit="per token (each of T expert tokens picks one of E experts)",
        router_input="the token's own feature",
        supervision="the segmentation loss, plus the CV² importance + load balance loss",
        compute="sparse: noisy top-1 per token",
        quick_config="segmote_quick"),
    "mome": Design(
        paper="MoME", notebook="04_mome",
        experts="the 3D decoder's levels (dec3 … out), each with a class-specific dynamic head",
        unit="per class and voxel",
        router_input="the class's text embedding and the experts' features at the voxel",
        supervision="the masked partial-label segmentation loss only",
        compute="dense: a softmax over the levels at every voxel and class",
        quick_config="mome_quick"),
}
"""The four papers' designs, in chapter order."""

EXPERT_COUNTS: dict[str, tuple[int, ...]] = {"mlmoe": (1, 2, 4, 8, 16), "medmoe": (1, 2, 4, 8, 16),
                                             "segmote": (1, 2, 4, 8, 16), "mome": (1, 2, 3, 4, 5)}
"""Numbers of experts the cost figure may count (MoME has five decoder levels to route over); Chapter 5 keeps those
up to its ``max_experts`` (8 by default)."""

_MOME_LEVELS = ("dec3", "dec2", "dec1", "dec0", "out")


def latest_runs(runs_root: str | Path, *, profile: str = "quick") -> dict[str, dict[str, Any]]:
    """``{notebook stem: record}``: the newest successful ``profile`` run of each notebook in the folders directly
    under ``runs_root`` (``runs/quick/<chapter>/metrics.json``; deeper folders are not searched).

    Raises:
        ValueError: a ``metrics.json`` that is not valid JSON (named).
    """
    found: dict[str, dict[str, Any]] = {}
    for rec in find_runs(runs_root, pattern="*/metrics.json"):  # oldest first: a newer run replaces an older one
        if rec.get("status") == "ok" and rec.get("profile") == profile:
            found[Path(rec.get("notebook", "")).stem] = rec
    return found


def specialisation_record(claims: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first claim record that measures routing against a label by NMI with a chance baseline, or ``None``.

    >>> specialisation_record([{"measure": "Dice", "chance": None}, {"measure": "NMI(expert; modality)",
    ...                         "chance": {"value": 0.01, "p": 0.005}}])["measure"]
    'NMI(expert; modality)'
    """
    for rec in claims:
        if "NMI" in str(rec.get("measure", "")) and rec.get("chance"):
            return rec
    return None


def _pm(arm: dict[str, Any], digits: int = 3) -> str:
    sd = arm.get("sd")
    sd_text = "" if sd is None or (isinstance(sd, float) and math.isnan(sd)) else f" ± {sd:.{digits}f}"
    return f"{arm['mean']:.{digits}f}{sd_text}"


def measured_table(runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Per paper, what this build measured (from :func:`latest_runs`): specialisation and the headline gain.

    Columns: ``specialisation`` (NMI of the routing against a label, its permutation chance level and verdict),
    ``headline claim`` (the chapter's first claim record), ``gain over control`` (its paired Δ ± sd over n seeds) and
    ``verdict``. A chapter without a run, or without such a record, says so.
    """
    rows = []
    for key, design in DESIGNS.items():
        rec = runs.get(design.notebook)
        claims = (rec or {}).get("claims") or []
        row = {"paper": design.paper}
        if rec is None:
            row.update({"specialisation (NMI vs permutation)": "no quick run in this build", "headline claim": "-",
                        "gain over control": "-", "verdict": "-"})
            rows.append(row)
            continue
        spec = specialisation_record(claims)
        if spec is None:
            row["specialisation (NMI vs permutation)"] = "not measured: the chapter records no routing-vs-label claim"
        else:
            row["specialisation (NMI vs permutation)"] = (
                f"{spec['treatment']['name']}: NMI {_pm(spec['treatment'])} vs chance {spec['chance']['value']:.3f} "
                f"(p = {spec['chance']['p']:.2g}; {spec['measure']}); claim verdict: {spec['verdict']}")
        if claims:
            head = claims[0]
            d = head["delta"]
            row["headline claim"] = f"{head['claim']} ({head['treatment']['name']} vs {head['control']['name']}; " \
                                    f"{head['measure']})"
            row["gain over control"] = f"{d['mean']:+.3f} ± {d['sd']:.3f} (n = {d['n']})" if d["n"] > 1 else \
                f"{d['mean']:+.3f} (n = 1)"
            row["verdict"] = head["verdict"]
        else:
            row.update({"headline claim": "no claims recorded", "gain over control": "-", "verdict": "-"})
        rows.append(row)
    return pd.DataFrame(rows).set_index("paper")


def design_table() -> pd.DataFrame:
    """:data:`DESIGNS` as a table (one row per paper)."""
    return pd.DataFrame([{"paper": d.paper, "where the experts sit": d.experts, "routing unit": d.unit,
                          "router reads": d.router_input, "what trains the router": d.supervision,
                          "compute": d.compute} for d in DESIGNS.values()]).set_index("paper")


def build_with_experts(paper: str, num_experts: int, *, config: str | None = None) -> tuple[torch.nn.Module, dict]:
    """``(model in eval mode, forward kwargs for one input)`` for ``paper``'s model with ``num_experts`` experts.

    MoME routes over decoder levels: ``num_experts`` of them are used, the finest last (1 is the Universal Model's
    own head, without a router).

    Raises:
        ValueError: an unknown paper or a number of experts the design cannot have.
    """
    if paper not in DESIGNS:
        raise ValueError(f"unknown paper {paper!r}; choose from {sorted(DESIGNS)}")
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive integer, got {num_experts!r}")
    module = importlib.import_module(f"medmoe.papers.{paper}.model")
    name = config or DESIGNS[paper].quick_config
    if paper == "mome":
        if num_experts > len(_MOME_LEVELS):
            raise ValueError(f"MoME routes over at most {len(_MOME_LEVELS)} decoder levels, got {num_experts}")
        overrides = ({"experts": ("out",), "router": False} if num_experts == 1
                     else {"experts": _MOME_LEVELS[-num_experts:]})
    else:
        overrides = {"num_experts": num_experts}
    with torch.random.fork_rng():  # building a model must not move the caller's random stream
        torch.manual_seed(0)
        model = module.build_model(name, **overrides).eval()
        inputs, _ = module.example_inputs(model.config, batch_size=1)
    return model, inputs


def forward_flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward pass of ``model(**inputs)``, counted by ``torch.utils.flop_counter`` (two per
    multiply-accumulate; matrix products and convolutions, which dominate these models)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return int(counter.get_total_flops())


def cost_table(papers: Sequence[str] | None = None, counts: dict[str, Sequence[int]] | None = None) -> pd.DataFrame:
    """Forward GFLOPs for one input and parameter counts of each paper's quick model against its number of experts.

    Columns: ``paper``, ``experts``, ``gflops``, ``params_m`` (millions), ``relative`` (GFLOPs over the same
    design's one-expert model).
    """
    rows = []
    for paper in papers or list(DESIGNS):
        for n in (counts or EXPERT_COUNTS)[paper]:
            model, inputs = build_with_experts(paper, n)
            rows.append({"paper": DESIGNS[paper].paper, "experts": n, "gflops": forward_flops(model, inputs) / 1e9,
                         "params_m": sum(p.numel() for p in model.parameters()) / 1e6})
    table = pd.DataFrame(rows)
    table["relative"] = table["gflops"] / table.groupby("paper")["gflops"].transform("first")
    return table
