"""What hard routing costs: MedMoE inference with K experts against K = 1, and against computing every expert.

Explained in the book: *Chapter 2, MedMoE* (``chapters/02_medmoe``), section 3 "The architecture, with shapes"
(Table 3, the paper's Sec. 6.2: "only one [expert] is active at inference").
MedMoE's released code runs all K experts on every image and then indexes the selected one;
:class:`medmoe.papers.medmoe.model.MedMoE` dispatches each image to its selected expert only
(:func:`medmoe.moe.dispatch_combine`). This script times, in the paper configuration (Swin-T, 224 x 224, random
weights -- the cost does not depend on the values):

* ``K=1``            -- one expert (a Swin + multi-scale head, no choice to make);
* ``K=6 dispatched`` -- six experts, each image through its own (the images are spread evenly over the
  experts, the worst case for dispatch: K small batches instead of one);
* ``K=6 all experts`` -- the released code's way.

It is a script, not a test: timings depend on the machine. Run::

    python -m medmoe.benchmarks.medmoe_routing --batch 8 --repeats 5 --out runs/bench/medmoe_routing.json

and it prints a table and writes the medians, the ratios and the environment as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from medmoe.env import environment
from medmoe.moe import GateOutput
from medmoe.papers.medmoe.model import CONFIGS, build_model


def spread_gate(batch: int, num_experts: int) -> GateOutput:
    """A routing decision that sends image ``i`` to expert ``i mod K`` (every expert used)."""
    idx = (torch.arange(batch) % num_experts)[:, None]
    weights = torch.zeros(batch, num_experts).scatter(1, idx, 1.0)
    return GateOutput(weights=weights, probs=weights, logits=weights, indices=idx)


def forward_once(model, images: torch.Tensor, gate: GateOutput) -> float:
    """Seconds for one full forward pass (Swin, router, experts) with the routing decision ``gate``."""
    with torch.inference_mode():
        t = time.perf_counter()
        maps, pooled = model.forward_features(images)
        model.route(pooled)  # the router runs, as in real inference; its choice is replaced by ``gate``
        model.forward_head(maps, gate)
        return time.perf_counter() - t


def run(*, batch: int = 8, repeats: int = 5, num_experts: int = 6, config: str = "medmoe_paper", seed: int = 0) -> dict:
    """Time the three variants in interleaved rounds (one pass of each per round, after one warm-up round), so a
    slow-down of the machine hits all of them alike; return the medians, their ratios and the environment."""
    if config not in CONFIGS:
        raise ValueError(f"unknown MedMoE config {config!r}; known: {sorted(CONFIGS)}")
    torch.manual_seed(seed)
    size = CONFIGS[config].image_size  # 224 in the paper configuration
    images = torch.rand(batch, 3, size, size)
    one = build_model(config, num_experts=1).eval()
    many = build_model(config, num_experts=num_experts).eval()
    dense = build_model(config, num_experts=num_experts).eval()
    dense.load_state_dict(many.state_dict())
    dense.compute_all_experts = True
    names = ("K=1", f"K={num_experts} dispatched", f"K={num_experts} all experts (released code)")
    variants = ((one, spread_gate(batch, 1)), (many, spread_gate(batch, num_experts)),
                (dense, spread_gate(batch, num_experts)))
    rows: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats + 1):
        for name, (model, gate) in zip(names, variants):
            t = forward_once(model, images, gate)
            if r > 0:
                rows[name].append(t)
    med = {k: statistics.median(v) for k, v in rows.items()}
    base, disp, full = (med[n] for n in names)
    return {
        "config": config, "batch": batch, "repeats": repeats, "num_experts": num_experts,
        "threads": torch.get_num_threads(), "seconds_median": med, "seconds_all": rows,
        "dispatched_over_k1": disp / base, "all_experts_over_dispatched": full / disp,
        "environment": environment(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--experts", type=int, default=6)
    p.add_argument("--config", default="medmoe_paper")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.experts < 2:
        p.error("--batch and --repeats must be >= 1 and --experts >= 2")
    res = run(batch=args.batch, repeats=args.repeats, num_experts=args.experts, config=args.config)
    print(f"{'variant':<40} {'s / batch of ' + str(args.batch):>18}")
    for k, v in res["seconds_median"].items():
        print(f"{k:<40} {v:>18.3f}")
    print(f"K={args.experts} dispatched / K=1: {res['dispatched_over_k1']:.3f}   "
          f"all experts / dispatched: {res['all_experts_over_dispatched']:.2f}x")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
