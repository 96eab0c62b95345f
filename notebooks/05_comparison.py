# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 5 &mdash; Four ways to route: a comparison
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmoe-book/medmoe-book/blob/main/notebooks/05_comparison.ipynb)
#
# The four papers of this book all add a mixture of experts to a medical imaging model, and no two of them put
# the experts in the same place, route the same unit, or train the router the same way. This chapter sets them side
# by side. It **trains nothing**: it reads the records the four chapters wrote when this book was built
# (`runs/quick/<chapter>/metrics.json`, with their claim records) and counts the forward FLOPs of each paper's own
# model, built by the library, while the number of experts grows.
#
# **Prerequisites.** The [primer](00_moe_primer.ipynb) (gates, [dispatch](00_moe_primer.ipynb#dispatch-and-combine-on-a-toy-batch),
# [balance losses](00_moe_primer.ipynb#3-the-losses-that-keep-experts-busy) and
# [the verdict rule](00_moe_primer.ipynb#6-the-claim-the-control-the-verdict)) and at least one of
# [Chapter 1 (MLMoE)](01_mlmoe.ipynb), [Chapter 2 (MedMoE)](02_medmoe.ipynb), [Chapter 3 (SegMoTE)](03_segmote.ipynb)
# and [Chapter 4 (MoME)](04_mome.ipynb). The code of this chapter is `medmoe/compare.py`.
#
# **Where the numbers come from.** Every number on this page is computed in this build: the measured table from the
# chapters' quick-profile runs on the book's phantoms (CPU scale, a few hundred steps), the cost figure from the
# library's models. The papers' own results are not repeated here; the [reproduction page](reproduction.md) puts
# them beside the book's.

# %% tags=["remove-cell"]
# Colab only: install the book's library when this notebook runs on Colab (Colab's own torch is kept).
import sys

if "google.colab" in sys.modules:
    # !pip install -q "medmoe @ git+https://github.com/medmoe-book/medmoe-book@main"
    pass

# %% tags=["parameters"]
# Parameters. `medmoe run notebooks/05_comparison.py -p max_experts 16` overrides them; the profiles live in
# notebooks/profiles.yaml (this chapter has no paper card).
profile = "quick"
run_dir = "runs/interactive/05_comparison"
run_key = None  # injected by the runner: a hash of every parameter and the medmoe version
runs_root = None  # None: the chapters' runs beside this one (runs/<profile>/); a name under runs/; an absolute path
runs_profile = "quick"  # which profile's runs to compare
max_experts = 8  # the cost figure counts FLOPs for 1, 2, 4 ... up to this many experts (MoME: up to 5 levels)

# %% tags=["hide-cell"]
# %matplotlib inline
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

import medmoe
from medmoe.compare import (
    DESIGNS,
    EXPERT_COUNTS,
    build_with_experts,
    cost_table,
    design_table,
    forward_flops,
    latest_runs,
    measured_table,
)
from medmoe.repro import save_results
from medmoe.teaching import markdown, show_source

pd.set_option("display.max_colwidth", None)  # the tables' cells are sentences: show them whole
run_dir = Path(run_dir)
root = run_dir.parent if runs_root is None else Path(runs_root) if Path(runs_root).is_absolute() else \
    run_dir.parent.parent / runs_root  # a relative name is a folder under runs/
runs = latest_runs(root, profile=runs_profile)
print(f"medmoe {medmoe.__version__}; {runs_profile} runs found for: {sorted(runs) or 'none'}")

# %% [markdown]
# ## 1. The four designs
#
# A mixture of experts is three choices: **what an expert is**, **what one routing decision is about** (the unit:
# an image, a token, a class at a voxel), and **what teaches the router**. Compute follows from the gate: a soft
# gate runs every expert (dense), a top-$k$ gate runs $k$ of them (sparse). The table states the four papers'
# choices as the library builds them (`medmoe.compare.DESIGNS`):

# %%
design_table()

# %% [markdown]
# Read down the columns. MLMoE and MoME mix **all** their experts with soft weights, and MedMoE and SegMoTE
# **choose**. Only MedMoE's router is told what to do (the image's modality, through $\mathcal L_{\mathrm{aux}}$);
# the other three learn routing from the task loss, with a balance term in MLMoE ($\mathcal L_{\mathrm{div}}$) and
# SegMoTE (CV²), and none stated in MoME's abstract. The routing unit goes from coarse to fine: one decision per
# image (MLMoE, MedMoE), per token (SegMoTE), per class and voxel (MoME).

# %% [markdown]
# ## 2. What each chapter measured
#
# Each chapter tests its paper's claim against a paired control on the same seeds and data, and, where the routing
# can be compared with a label, measures specialisation as NMI between the routing decision and the label against
# the same decisions shuffled (the primer's
# [specialisation statistics](00_moe_primer.ipynb#5-did-the-experts-specialise)). The table reads those records
# from this build's runs (`medmoe.compare.measured_table`); the verdicts follow the one rule of the book.

# %%
measured = measured_table(runs)
measured

# %% tags=["remove-input"]
lines = [f"* **{d.paper}**: no {runs_profile} run of `{d.notebook}` was found, so nothing is measured here; run "
         "that chapter first." for d in DESIGNS.values() if d.notebook not in runs]
verdicts = measured["verdict"].tolist()
lines.append(f"Headline claims of the {len(DESIGNS)} papers in this build: {verdicts.count('supported')} supported, "
             f"{verdicts.count('contradicted')} contradicted, {verdicts.count('not shown')} not shown at this "
             f"scale, {verdicts.count('-')} without a run. The specialisation verdict is that of the chapter's own "
             "claim record, which compares with a control as well as with chance.")
markdown("\n".join(lines))

# %% [markdown]
# ## 3. What the experts cost
#
# Sparse routing is the usual argument for a mixture of experts: parameters grow with the number of experts $N$,
# compute does not. The library counts the forward FLOPs of each paper's quick model (the one its chapter trains)
# with `torch.utils.flop_counter`, for one input, as $N$ grows. This is the code that builds the models and counts:

# %%
show_source(build_with_experts, forward_flops)

# %%
counts = {k: tuple(n for n in v if n <= max_experts) for k, v in EXPERT_COUNTS.items()}
cost = cost_table(counts=counts)
fig, (ax_f, ax_p) = plt.subplots(1, 2, figsize=(11, 3.8))
for paper, part in cost.groupby("paper", sort=False):
    ax_f.plot(part["experts"], part["relative"], marker="o", label=paper)
    ax_p.plot(part["experts"], part["params_m"] / part["params_m"].iloc[0], marker="o", label=paper)
ax_f.set(xlabel="number of experts N", ylabel="forward FLOPs / FLOPs with N = 1",
         title="compute per input (torch.utils.flop_counter)")
ax_p.set(xlabel="number of experts N", ylabel="parameters / parameters with N = 1", title="parameters")
for ax in (ax_f, ax_p):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
cost.pivot(index="experts", columns="paper", values=["gflops", "params_m"]).round(4)

# %% tags=["remove-input"]
top = cost.groupby("paper", sort=False).last()
first = cost.groupby("paper", sort=False).first()
lines = ["Measured on the quick models, from N = 1 to the largest N counted:"]
for paper, row in top.iterrows():
    lines.append(f"* **{paper}**: {first.loc[paper, 'gflops']:.3f} → {row['gflops']:.3f} GFLOPs per input "
                 f"(× {row['relative']:.3f}) at N = {int(row['experts'])}, while the parameters go from "
                 f"{first.loc[paper, 'params_m']:.2f} M to {row['params_m']:.2f} M.")
markdown("\n".join(lines))

# %% [markdown]
# Why the curves can look as they do (the numbers are in the table above). The count is for inference on one input.
# Training differs in one way that matters: a top-$k$ router runs only $k$
# experts per input there too, but a soft router (MLMoE, MoME) runs and back-propagates through all of them. Where
# the experts are small beside a frozen or shared backbone (SegMoTE's tokens, MoME's decoder levels) the cost of
# more experts is small whatever the gate; where each expert is a sizeable network on the whole input (MLMoE's text
# experts, MedMoE's fusion modules), the gate decides whether compute grows with $N$.

# %% [markdown]
# ## 4. Which design for which problem
#
# Read from the two tables above, with the caveat that every measurement here is a CPU-scale analogue on phantoms:
#
# * **You know the factor the experts should split on** (modality, scanner, site): supervise the router with it, as
#   MedMoE does. It is the only design whose specialisation is *given*, so its NMI measures how well the router
#   learned the label, not whether experts specialised on their own; the paired control (one expert) says whether
#   the split helped the task.
# * **Many small experts inside a frozen foundation model**: token-level top-$k$ routing (SegMoTE) adds parameters,
#   not compute, and needs a balance loss, since a router that starts uniform and learns only from the task loss
#   may never leave its first expert.
# * **The text carries the routing signal** (reports, class names): a soft gate over text experts (MLMoE) or a
#   text-guided router per class and voxel (MoME). Both are dense, so every expert costs compute, and both need a
#   control that removes or shuffles the text to show that the text is used.
# * **Whatever the design**, a claim about experts needs the control the chapters use: the same seeds and data
#   without the mechanism, and a chance level for any specialisation measure.
#
# The measured verdicts of Section 2 are the evidence for the last point in this build; the first three are the
# designs' logic, which the papers' full-scale experiments support and this build does not replace.

# %% [markdown]
# ## Summary
#
# The four designs differ in three choices: what an expert is, the unit a router decides for, and what trains the
# router. Two are dense (soft gates), two sparse (top-1). In this build:

# %% tags=["remove-input"]
supported = [p for p in measured.index if measured.loc[p, "verdict"] == "supported"]
flat = [p for p, row in top.iterrows() if row["relative"] < 1.01]
growing = [p for p, row in top.iterrows() if row["relative"] >= 1.01]
markdown("\n".join([
    f"* {len(supported)} of {len(DESIGNS)} headline claims are supported against their paired controls"
    + (f" ({', '.join(supported)})" if supported else "") + "; the others are listed with their gain in Section 2.",
    f"* Compute per input stays within 1 % of the one-expert model for {', '.join(flat) or 'no design'} and grows "
    f"for {', '.join(growing) or 'no design'} (up to × {top['relative'].max():.2f}), while parameters grow for all.",
]))

# %% [markdown]
# ## Exercises
#
# This chapter reads the other chapters' runs, so each exercise changes a chapter, then re-runs this one.
#
# 1. `medmoe run notebooks/05_comparison.py -p max_experts 16` &mdash; count FLOPs up to 16 experts. Which design's
#    compute grows linearly, and which stays flat?
# 2. `medmoe run notebooks/03_segmote.py -p num_experts 1`, then
#    `medmoe run notebooks/05_comparison.py` &mdash; SegMoTE's run now has one expert per
#    token, so the router inside each token has nothing to choose. What happens to its headline gain and to its
#    specialisation row (which measures the *selected token*, one of $T$, against the modality)?
# 3. `make rehearsal`, then `medmoe run notebooks/05_comparison.py -p runs_root rehearsal -p runs_profile rehearsal`
#    &mdash; the same tables for the rehearsal runs (the paper path on tiny fixtures, one seed): every verdict must
#    read "not shown", since one seed cannot pass the rule.

# %% tags=["hide-cell"]
metrics = {
    "runs_found": sorted(runs),
    **{f"verdict[{DESIGNS[k].paper}]": measured.loc[DESIGNS[k].paper, "verdict"] for k in DESIGNS},
    **{f"gflops[{r.paper}, N={r.experts}]": float(r.gflops) for r in cost.itertuples()},
}
save_results(run_dir, metrics)
print(f"saved {len(metrics)} metrics to {run_dir.name}/")
