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
# # Chapter 0 &mdash; A primer on mixture of experts, in one vocabulary
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmoe-book/medmoe-book/blob/main/notebooks/00_moe_primer.ipynb)
#
# The four papers of this book put experts in four different places of a medical imaging model:
#
# | paper | what an expert is | how inputs are routed | what keeps the experts in use |
# |---|---|---|---|
# | **MLMoE** (Ch. 1) | a map of the report's text features | a **soft** gate over text $\oplus$ image features, with a learnable temperature $\tau$ | a **diversity loss** $\mathbb{E}_x[H(g)] - H(\mathbb{E}_x[g])$ |
# | **MedMoE** (Ch. 2) | a multi-scale fusion of Swin features | a **hard top-1** router on the pooled image feature | an **auxiliary modality cross-entropy** on the router |
# | **SegMoTE** (Ch. 3) | a learnable token inside a frozen SAM decoder | **noisy top-k** gating per token | a **CV² importance + load** balance loss |
# | **MoME** (Ch. 4) | a decoder layer of a 3D segmenter | a **text-guided pixel-wise** soft router | (not stated in the public abstract) |
#
# This chapter teaches the shared vocabulary &mdash; the three gates, the dispatch that runs each expert on
# its share of the inputs only, the losses, and the statistics that tell us whether the experts
# *specialised* &mdash; on one small experiment where everything but the routing is held fixed.
# Every function used here lives in `medmoe.moe`; the toy model and its training recipe live in
# `medmoe/papers/primer/` (`model.py`, `recipe.py`, `card.yaml`), and every number printed below is computed by
# this notebook when the book is built.
#
# **Time and hardware.** The `quick` profile runs in about 2&ndash;3 minutes on a 2-core CPU
# (the measured time of this build is on the [reproduction page](reproduction.md)).

# %% tags=["remove-cell"]
# Colab only: install the book's library when this notebook runs on Colab (Colab's own torch is kept).
import sys

if "google.colab" in sys.modules:
    # !pip install -q "medmoe @ git+https://github.com/medmoe-book/medmoe-book"
    pass

# %% tags=["parameters"]
# Parameters. `medmoe run notebooks/00_moe_primer.py --profile quick -p n_experts 6` overrides them;
# the profiles (quick / smoke) live in medmoe/papers/primer/card.yaml.
profile = "quick"
run_dir = "runs/interactive/00_moe_primer"
run_key = None  # injected by the runner: a hash of every parameter and the medmoe version
seed = 0
n_experts = 4
modalities = ["cxr", "ct", "mri", "us"]
image_size = 64
n_train = 640
n_test = 256
epochs = 8
batch_size = 32
lr = 5e-3
width = 16
balance_weight = 0.1
diversity_weight = 1.0
aux_weight = 1.0
router_init_std = 0.5
device = "auto"

# %%
# %matplotlib inline
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import medmoe
from medmoe.data.phantoms import MODALITIES, PhantomDataset2D
from medmoe.moe import (
    HardRouter,
    NoisyTopKGate,
    SoftGate,
    contingency,
    diversity_loss,
    expert_load,
    gate_entropy,
    importance_load_loss,
    mutual_information,
    normalized_mutual_information,
    router_z_loss,
    switch_balance_loss,
)
from medmoe.papers.primer import VARIANTS, build, evaluate, train
from medmoe.repro import checkpoint_dir, save_results
from medmoe.utils import resolve_device, seed_everything
from medmoe.viz import expert_load_bars, history_lines, phantom_gallery, routing_heatmaps

seed_everything(seed)
dev = resolve_device(device)
run_dir = Path(run_dir)
print(f"medmoe {medmoe.__version__}, torch {torch.__version__}, device {dev}, seed {seed}, experts {n_experts}")

# %% [markdown]
# ## 1. The data: phantoms that need routing
#
# The book's default data are procedurally generated medical phantoms (`medmoe.data.phantoms`):
# chest radiograph-like, CT-like, T1 MRI-like and ultrasound-like images, each with its own intensity
# statistics, lesions placed in named regions, *distractor* blobs that look like lesions but are not,
# and a report in the style of the QaTa-COV19 annotations naming where the real lesions are.
# A single network has to segment lesions in all four; a mixture can give each modality its own expert.

# %%
modalities = [m for m in modalities]
unknown = sorted(set(modalities) - set(MODALITIES))
if unknown:
    raise ValueError(f"unknown modalities {unknown}; choose from {MODALITIES}")
train_ds = PhantomDataset2D(n=n_train, modalities=modalities, size=image_size, seed=seed, channels=1)
test_ds = PhantomDataset2D(n=n_test, modalities=modalities, size=image_size, seed=seed + 10_000, channels=1)
print(f"{len(train_ds)} training and {len(test_ds)} test images of {image_size}x{image_size}, modalities {modalities}")
fig = phantom_gallery([test_ds[i] for i in range(len(modalities))])

# %% [markdown]
# ## 2. Three gates, one output type
#
# A mixture of $N$ experts computes $y = \sum_{i=1}^{N} g_i(x)\, E_i(x)$. The papers differ in how the
# gate $g$ is made:
#
# * **Soft gate** (MLMoE, Eq. 3): $g = \mathrm{softmax}(\Psi(f_t \oplus f_v)/\tau)$. Every expert runs; $\tau$
#   is learned. `SoftGate`.
# * **Noisy top-$k$** (SegMoTE, Eq. 1&ndash;5, after Shazeer et al.): logits $L = XW_g$, in training
#   $\tilde L = L + (\mathrm{softplus}(XW_n)+\varepsilon)\odot Z$, keep the top $k$, softmax over them.
#   Only $k$ experts run. With $k=1$ the softmax of one number is 1 and the router gets no gradient,
#   so `NoisyTopKGate(straight_through=True)` passes the gradient of the full softmax through. `NoisyTopKGate`.
# * **Hard router** (MedMoE, Sec. 4.3): an MLP and $\arg\max$; exactly one expert runs, and the router
#   learns only from an auxiliary loss. `HardRouter`.
#
# All three return the same `GateOutput(weights, probs, logits, indices)`:

# %%
torch.manual_seed(seed)
x = torch.randn(3, 8)
soft = SoftGate(in_features=8, num_experts=4)
noisy = NoisyTopKGate(in_features=8, num_experts=4, k=2)
torch.nn.init.normal_(noisy.w_gate)  # it starts at zero (uniform routing), as in SegMoTE's code
hard = HardRouter(in_features=8, num_experts=4, hidden=16)
for gate in (soft, noisy, hard):
    out = gate.eval()(x)
    print(f"{type(gate).__name__:>14}: weights[0] = {np.round(out.weights[0].detach().numpy(), 3)}, "
          f"indices[0] = {out.indices[0].tolist()}, shapes {tuple(out.weights.shape)} / {tuple(out.indices.shape)}")

# %% [markdown]
# The temperature $\tau$ of the soft gate decides how peaked it is. The same scores $s$, divided by
# smaller and smaller $\tau$, go from a uniform mixture to a hard choice:

# %%
s = torch.tensor([1.0, 0.5, 0.0, -0.5])
taus = [4.0, 1.0, 0.25, 0.05]
fig, axes = plt.subplots(1, len(taus), figsize=(10, 2.2), sharey=True)
for ax, tau in zip(axes, taus):
    ax.bar(range(4), (s / tau).softmax(0).numpy(), color="tab:blue")
    ax.set_title(f"τ = {tau}", fontsize=9)
    ax.set_xticks(range(4))
axes[0].set_ylabel("g_i")
fig.tight_layout()

# %% [markdown]
# ### What sparse routing saves
#
# `dispatch_combine` groups the inputs by the expert they were routed to (a stable sort of the expert ids,
# no one-hot matrix) and calls each expert on its share only. So a top-1 mixture costs about one expert
# per input whatever the number of experts, while a soft mixture runs all of them. Measured here on the
# primer's model, forward pass on (up to) 64 test images at inference:

# %%
import time

from medmoe.moe import dispatch_combine  # noqa: F401  (what ToyMoESegmenter.forward_head calls)


def forward_ms(gate, n, reps=5):
    m = build("primer_quick", width=width, num_experts=n, gate=gate, router_init_std=router_init_std).eval()
    xb = torch.stack([test_ds[i]["image"] for i in range(min(64, len(test_ds)))])
    with torch.no_grad():
        m(xb)
        t0 = time.perf_counter()
        for _ in range(reps):
            m(xb)
    return 1000 * (time.perf_counter() - t0) / reps


timing = pd.DataFrame(
    [{"experts": n, "soft (all experts run) ms": forward_ms("soft", n), "top-1 (one expert per image) ms": forward_ms("noisy_topk", n)}
     for n in (1, 4, 16)]
).set_index("experts")
timing.round(1)

# %% [markdown]
# ## 3. The losses that keep experts busy
#
# Left alone, a router tends to collapse: one expert gets better, so it gets chosen more, so it gets
# better. Each paper counters that differently. On four hand-made gate matrices (rows = inputs, columns
# = experts) the losses behave as follows &mdash; the diversity loss is lowest for confident *and* varied gates,
# the CV² balance loss is zero for balanced use, the Switch loss $N\sum_i f_i P_i$ is 1 when balanced and
# $N$ when collapsed:

# %%
cases = {
    "collapsed": torch.tensor([[1.0, 0, 0, 0]] * 4),
    "uniform": torch.full((4, 4), 0.25),
    "confident, varied": torch.eye(4),
    "soft, varied": torch.eye(4) * 0.7 + 0.075,
}
rows = []
for name, g in cases.items():
    rows.append({
        "gates": name,
        "diversity L_div (MLMoE)": diversity_loss(g).item(),
        "CV² imp+load (SegMoTE)": importance_load_loss(g).loss.item(),
        "Switch N·Σf·P": switch_balance_loss(g, g.argmax(-1)).item(),
        "z-loss": router_z_loss(g.log().clamp_min(-20)).item(),
    })
pd.DataFrame(rows).set_index("gates").round(3)

# %% [markdown]
# ## 4. One experiment, six routers
#
# The model (`medmoe.papers.primer.model.ToyMoESegmenter`) is a three-layer CNN stem followed by $N$
# convolutional expert heads that each predict the lesion mask. The router sees the pooled mean and
# spread of the stem's features. We train six variants with the same data, seed, optimiser and number of
# steps, using the book's one training loop (`medmoe.engine.fit`, on Hugging Face Accelerate), and the
# segmentation loss Dice + BCE (MONAI's `DiceCELoss`):
#
# | variant | gate | extra loss |
# |---|---|---|
# | `soft` | `SoftGate` | none |
# | `soft + L_div` | `SoftGate` | `diversity_weight` × diversity loss |
# | `top-1` | `NoisyTopKGate`, k = 1, straight-through | none |
# | `top-1 + CV²` | same | `balance_weight` × CV² importance + load loss |
# | `top-1 + Switch` | same | `balance_weight` × Switch loss |
# | `hard + L_aux` | `HardRouter` | `aux_weight` × cross-entropy(router logits, modality) |

# %%
# The six variants (medmoe.papers.primer.recipe.VARIANTS: name -> (gate, extra loss)) and their training
# (medmoe.papers.primer.recipe.train: AdamW, Dice + BCE plus the variant's extra loss, on medmoe.engine).
loss_weights = dict(diversity_weight=diversity_weight, balance_weight=balance_weight, aux_weight=aux_weight)
# The router's auxiliary target is the modality's position in `modalities` (modality m -> expert m mod N).
local_modality = torch.full((len(MODALITIES),), -1, dtype=torch.long)
local_modality[[MODALITIES.index(m) for m in modalities]] = torch.arange(len(modalities))
ckpt = checkpoint_dir(run_dir, run_key)
results, histories = {}, {}
for name, (gate, extra) in VARIANTS.items():
    seed_everything(seed)
    model = build("primer_quick", width=width, num_experts=n_experts, gate=gate, router_init_std=router_init_std)
    fit_result = train(model, train_ds, out_dir=ckpt / name.replace(" ", "").replace("+", "_").replace("²", "2"),
                       epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, run_key=run_key, extra=extra,
                       modalities=modalities, **loss_weights)
    histories[name] = fit_result.history
    results[name] = evaluate(model.to(dev), test_ds)
    print(f"{name:>15}: final train loss {fit_result.history[-1]['train_loss']:.3f}")

fig = history_lines(histories, key="train_loss")

# %% [markdown]
# ## 5. Did the experts specialise?
#
# For every variant we measure on the held-out test images:
#
# * **load** &mdash; the fraction of images whose top expert is $i$ (`expert_load`);
# * **gate entropy** &mdash; how undecided the gate is per image, in nats (`gate_entropy`; $\log N$ = uniform);
# * **mutual information** $I(\text{expert};\text{modality})$ between the routing decision and the
#   modality, and the same divided by $H(\text{modality})$ (`normalized_mutual_information`): 0 means
#   routing ignores the modality, 1 means the modality can be read off the chosen expert;
# * the same mutual information for **random routing** of the same number of images, the baseline that
#   the plug-in estimate's small-sample bias must beat.

# %%
g = torch.Generator().manual_seed(seed)
n_mod = len(modalities)
mod_labels = local_modality[torch.tensor(test_ds.modality_labels)]
random_mi = float(np.mean([mutual_information(torch.randint(0, n_experts, (len(test_ds),), generator=g), mod_labels).item() for _ in range(50)]))

rows, loads, tables, notes = [], {}, {}, {}
for name, res in results.items():
    dice, chosen, probs, mods = res["dice"], res["expert"], res["probs"], local_modality[res["modality"]]
    mi = mutual_information(chosen, mods).item()
    nmi = normalized_mutual_information(chosen, mods).item()
    load = expert_load(chosen, n_experts)
    loads[name] = load.tolist()
    tables[name] = contingency(mods, chosen, num_a=n_mod, num_b=n_experts).numpy()
    notes[name] = f"NMI {nmi:.2f}"
    rows.append({
        "variant": name,
        "Dice (per-image mean)": dice.mean().item(),
        "experts used": int((load > 0).sum()),
        "gate entropy (nats)": gate_entropy(probs).item(),
        "I(expert; modality) (nats)": mi,
        "NMI": nmi,
    })
summary = pd.DataFrame(rows).set_index("variant")
print(f"random routing baseline: I = {random_mi:.3f} nats (mean of 50 draws, {len(test_ds)} images, {n_experts} experts); "
      f"H(modality) = {math.log(n_mod):.3f} nats")
summary.round(3)

# %%
fig = expert_load_bars(loads, title=f"Expert load on the test set ({n_experts} experts)")

# %%
fig = routing_heatmaps(tables, row_labels=modalities, annotate=notes)

# %% [markdown]
# ## 6. What to take from this
#
# What to look for in the table and figures above:
#
# * **Collapse.** A router left alone tends to lean on few experts; the soft gate, which mixes all
#   experts anyway, has no reason to pick a favourite per modality.
# * **Balance.** The CV² and Switch losses push the load towards uniform. Balance alone does not make
#   routing *meaningful*: the mutual information with the modality says whether it did.
# * **Supervision.** The hard router with the auxiliary modality loss (MedMoE's recipe) is *told* the
#   modality, so its routing-vs-modality information is the ceiling to compare the others with.
# * **The task.** Dice says whether any of it helped segmentation; on these small phantoms the spread
#   between variants is small and changes from seed to seed (try `-p seed 1`).
#
# The sentence below is generated from this run's numbers, so it always describes what was measured:

# %%
from IPython.display import Markdown

best = summary["NMI"].idxmax()
lines = [f"In this run ({n_experts} experts, seed {seed}, {len(test_ds)} test images; random routing gives "
         f"I = {random_mi:.3f} nats):"]
for name, row in summary.iterrows():
    lines.append(f"* **{name}** used {int(row['experts used'])} of {n_experts} experts, "
                 f"NMI(expert; modality) = {row['NMI']:.2f}, per-image Dice = {row['Dice (per-image mean)']:.3f}.")
Markdown("\n".join(lines))

# %%
metrics = {
    "n_experts": n_experts,
    "seed": seed,
    "random_routing_mi": random_mi,
    **{f"dice[{k}]": float(v) for k, v in summary["Dice (per-image mean)"].items()},
    **{f"mi[{k}]": float(v) for k, v in summary["I(expert; modality) (nats)"].items()},
    **{f"nmi[{k}]": float(v) for k, v in summary["NMI"].items()},
    **{f"experts_used[{k}]": int(v) for k, v in summary["experts used"].items()},
}
save_results(run_dir, metrics, modalities=modalities, image_size=image_size)
print(f"saved {len(metrics)} metrics to {run_dir}")
