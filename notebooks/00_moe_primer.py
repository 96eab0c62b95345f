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
# its share of the inputs only (per image, per token and per voxel), the losses, and the statistics that tell us
# whether the experts *specialised* &mdash; on one small experiment where everything but the routing is held fixed,
# repeated over three seeds, and closed by the chapter's claim measured against a paired control.
# Every function used here lives in `medmoe.moe`; the toy model and its training recipe live in
# `medmoe/papers/primer/` (`model.py`, `recipe.py`, `card.yaml`), and every number printed below is computed by
# this notebook when the book is built.
#
# **Prerequisites.** PyTorch modules and a training loop, softmax and cross-entropy; nothing about mixtures of
# experts. **Where it leads.** Every later chapter builds on one part of this one:
# [Chapter 1 (MLMoE)](01_mlmoe.ipynb) on the soft gate and the diversity loss,
# [Chapter 2 (MedMoE)](02_medmoe.ipynb) on the hard router with an auxiliary loss,
# [Chapter 3 (SegMoTE)](03_segmote.ipynb) on noisy top-$k$ routing per token and the CV² balance loss,
# [Chapter 4 (MoME)](04_mome.ipynb) on soft routing per voxel, and
# [Chapter 5](05_comparison.ipynb) sets the four designs side by side.
#
# **Time and hardware.** The `quick` profile runs in about a minute on a 2-core CPU
# (the measured time of this build is on the [reproduction page](reproduction.md)).

# %% tags=["remove-cell"]
# Colab only: install the book's library when this notebook runs on Colab (Colab's own torch is kept).
import sys

if "google.colab" in sys.modules:
    # !pip install -q "medmoe @ git+https://github.com/medmoe-book/medmoe-book@main"
    pass

# %% tags=["parameters"]
# Parameters. `medmoe run notebooks/00_moe_primer.py --profile quick -p n_experts 6` overrides them;
# the profiles (quick / smoke) live in medmoe/papers/primer/card.yaml.
profile = "quick"
run_dir = "runs/interactive/00_moe_primer"
run_key = None  # injected by the runner: a hash of every parameter and the medmoe version
seed = 0
n_seeds = 3  # the experiment's seeds are seed, seed + 1, ...; every variant trains on the same ones (paired)
n_perm = 200  # permutations of the routing decisions for the chance baseline of NMI
n_experts = 4
modalities = ["cxr", "ct", "mri", "us"]
image_size = 48  # 48 rather than 64: three seeds of six variants fit in about a minute on 2 CPU cores
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

# %% tags=["hide-cell"]
# %matplotlib inline
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import medmoe
from medmoe.claims import MIN_SEEDS, VERDICT_RULE, chance_from_null, claim_sentence, claims_frame, paired_claim
from medmoe.data.phantoms import MODALITIES, PhantomDataset2D
from medmoe.moe import (
    HardRouter,
    NoisyTopKGate,
    SoftGate,
    dispatch_combine,
    diversity_loss,
    importance_load_loss,
    plan_dispatch,
    router_z_loss,
    switch_balance_loss,
)
from medmoe.papers.primer import VARIANTS, build, evaluate, train
from medmoe.papers.primer.recipe import loss_table, mean_sd_table, routing_stats
from medmoe.repro import checkpoint_dir, save_results
from medmoe.teaching import markdown, show_source
from medmoe.utils import resolve_device, seed_everything
from medmoe.viz import expert_load_bars, history_lines, phantom_gallery, routing_heatmaps

seed_everything(seed)
dev = resolve_device(device)
run_dir = Path(run_dir)
seeds = [seed + i for i in range(n_seeds)]
print(f"medmoe {medmoe.__version__}, torch {torch.__version__}, device {dev}, seeds {seeds}, experts {n_experts}")

# %% [markdown]
# **The architecture at a glance:** one mixture-of-experts layer as `medmoe.moe` builds it: the gate, top-k routing, dispatch to the experts, the weighted combination and the balance losses (after Shazeer et al.'s Fig. 1). Grey parts are frozen, green ones train,
# experts are orange, routers purple and losses red; the figure is drawn in code by
# `medmoe.diagrams.moe_layer`.

# %% tags=["remove-input"]
from medmoe.diagrams import moe_layer as architecture_diagram

fig = architecture_diagram()

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
# A mixture of $N$ experts $E_1, \dots, E_N$ with a gate $g$ computes {cite:p}`jacobs1991adaptive,shazeer2017moe`
#
# $$
# \begin{gathered}
# y(x) = \sum_{i=1}^{N} g_i(x)\, E_i(x), \\
#  g(x) \in \Delta^{N-1}\ \text{(weights} \ge 0 \text{ that sum to 1)}.
# \end{gathered}
# $$
#
# The papers differ in how the gate $g$ is made:
#
# * **Soft gate** (MLMoE, Eq. 3): with text features $f_t$, image features $f_v$, a small network $\Psi$ and a
#   learned temperature $\tau > 0$,
#
#   $$ g = \mathrm{softmax}\big(\Psi(f_t \oplus f_v)/\tau\big). $$
#
#   Every expert runs. Code: `SoftGate`.
# * **Noisy top-$k$** (SegMoTE, Eq. 1&ndash;5, after {cite:t}`shazeer2017moe`): for an input row $X$, with
#   learned $W_g$, $W_n$ and $Z \sim \mathcal N(0, 1)$ drawn in training only,
#
#   $$
#   \begin{gathered}
#   L = X W_g, \\
#    \tilde L = L + \big(\mathrm{softplus}(X W_n) + \varepsilon\big) \odot Z, \\
#   g = \mathrm{softmax}\big(\mathrm{KeepTopK}(\tilde L, k)\big),
#   \end{gathered}
#   $$
#
#   where $\mathrm{KeepTopK}$ sets all but the $k$ largest entries to $-\infty$. Only $k$ experts run. With
#   $k=1$ the softmax of one number is 1 and the router gets no gradient, so
#   `NoisyTopKGate(straight_through=True)` passes the gradient of the full softmax through. Code: `NoisyTopKGate`.
# * **Hard router** (MedMoE, Sec. 4.3): an MLP $r$ and $i^\star = \arg\max_i r(x)_i$, $g = e_{i^\star}$ (one-hot);
#   exactly one expert runs, and the router learns only from an auxiliary loss (Section 3). Code: `HardRouter`.
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
# For `SoftGate`, `indices` is only its top expert, kept for the statistics: all its weights are non-zero and every
# expert runs. For the top-2 gate the weights are zero outside `indices`; the hard router's are one-hot.
#
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
# ### Dispatch and combine on a toy batch
#
# A gate only *decides*; `dispatch_combine` runs the decision. It takes the rows $x_m$, the experts, the chosen
# expert ids $i_{m1}, \dots, i_{mk}$ of each row and the gate weights $w$, and computes
#
# $$ y_m = \sum_{j=1}^{k} w_{m, i_{mj}}\, E_{i_{mj}}(x_m), $$
#
# calling each expert once, on the rows routed to it. This is the library's own code (the function every chapter
# uses, and `plan_dispatch`, which groups the rows):

# %%
show_source(plan_dispatch, dispatch_combine)

# %% [markdown]
# Six inputs, three experts, a top-2 noisy gate (in eval mode, so without noise): every input goes to its two
# best experts, weighted by the softmax over those two. The plan groups the (input, choice) pairs by expert; each
# expert runs once, on its group only; the weighted outputs are added back in the inputs' order.

# %%
toy_gen = torch.Generator().manual_seed(seed)
x6 = torch.randn(6, 4, generator=toy_gen)  # (M, D): six inputs of four features
gate3 = NoisyTopKGate(in_features=4, num_experts=3, k=2).eval()
experts3 = torch.nn.ModuleList(torch.nn.Linear(4, 2) for _ in range(3))
with torch.no_grad():
    gate3.w_gate.copy_(torch.randn(4, 3, generator=toy_gen))  # SegMoTE starts at zero; random here, to route
    for e in experts3:
        e.weight.copy_(torch.randn(2, 4, generator=toy_gen))
        e.bias.zero_()
    g3 = gate3(x6)  # weights (6, 3), zero for the expert not chosen; indices (6, 2)
    plan = plan_dispatch(g3.indices, 3)
    y6, counts6 = dispatch_combine(x6, experts3, g3.indices, g3.weights)
print(f"x {tuple(x6.shape)} -> indices {tuple(g3.indices.shape)}, weights {tuple(g3.weights.shape)}, "
      f"y {tuple(y6.shape)}")
print("experts of each input:", g3.indices.tolist())
print("weights:\n", g3.weights.numpy().round(3))
print("inputs grouped by expert:", {e: rows.tolist() for e, rows in enumerate(plan.split())})
print("inputs per expert:", counts6.tolist(), f"(sum {int(counts6.sum())} = 6 inputs x k 2)")
m = 0
a, b = g3.indices[m].tolist()
with torch.no_grad():  # y_0 = w_{0,a} E_a(x_0) + w_{0,b} E_b(x_0), computed without dispatch
    hand = g3.weights[m, a] * experts3[a](x6[m]) + g3.weights[m, b] * experts3[b](x6[m])
print(f"by hand, input {m}: {float(g3.weights[m, a]):.3f}·E_{a}(x_{m}) + {float(g3.weights[m, b]):.3f}·E_{b}(x_{m}) = "
      f"{[round(v, 4) for v in hand.tolist()]}; dispatch_combine gave {[round(v, 4) for v in y6[m].tolist()]}")
torch.testing.assert_close(y6[m], hand)

# %% [markdown]
# ### What sparse routing saves
#
# `dispatch_combine` groups the inputs by the expert they were routed to (a stable sort of the expert ids,
# no one-hot matrix) and calls each expert on its share only. So a top-1 mixture costs about one expert
# per input whatever the number of experts, while a soft mixture runs all of them. Measured here on the
# primer's model, forward pass on (up to) 64 test images at inference:

# %%
import time


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
# ### Per token and per voxel: a preview of Chapters 3 and 4
#
# The primer's model routes whole images. Chapters 3 and 4 route finer units with the same gate and dispatch code;
# only what a "row" is changes. **SegMoTE** (Chapter 3) routes each of its $T$ expert *tokens*: a batch of tokens
# `(B, T, D)` is flattened to `B·T` rows, the noisy top-1 gate picks one expert per row, and the chosen expert's
# output is weighted by the router's softmax probability at that expert (the chapter explains why); the token whose
# top logit is largest is the image's *selected* token. **MoME** (Chapter 4) routes every *voxel*: a feature volume
# `(B, C, D, H, W)` is flattened to `B·D·H·W` rows and a soft gate mixes all experts at each voxel (in MoME the
# experts are the decoder's levels and the router also reads the class's text code; here each expert is a
# 1&times;1&times;1 convolution, i.e. a linear map per voxel). One output of each is recomputed by hand below.

# %%
torch.manual_seed(seed)
B, T, D, N = 2, 5, 8, 3
tokens = torch.randn(B, T, D)
token_gate = NoisyTopKGate(in_features=D, num_experts=N, k=1, init_std=1.0).eval()  # eval: no noise
token_experts = torch.nn.ModuleList(torch.nn.Linear(D, 4) for _ in range(N))
with torch.no_grad():
    tg = token_gate(tokens)  # one decision per token: weights/probs (B, T, N), indices (B, T, 1)
    p_chosen = tg.probs.gather(-1, tg.indices)  # SegMoTE's confidence weight: the softmax at the chosen expert
    tw = torch.zeros_like(tg.probs).scatter(-1, tg.indices, p_chosen)
    y_tok, counts_tok = dispatch_combine(tokens.reshape(B * T, D), token_experts, tg.indices.reshape(B * T, 1),
                                         tw.reshape(B * T, N))
y_tok = y_tok.reshape(B, T, -1)
selected = tg.logits.gather(-1, tg.indices)[..., 0].argmax(1)
print(f"per token: tokens {tuple(tokens.shape)} -> rows {(B * T, D)}; indices {tuple(tg.indices.shape)}, "
      f"output {tuple(y_tok.shape)}, rows per expert {counts_tok.tolist()}")
print("expert of each token (rows = images, columns = tokens):\n", tg.indices[..., 0].numpy())
print(f"selected token per image (largest top logit): {selected.tolist()}")
b, t = 1, 3
i = int(tg.indices[b, t, 0])
with torch.no_grad():
    e_out = token_experts[i](tokens[b, t])
hand = float(p_chosen[b, t, 0]) * float(e_out[0])
print(f"by hand, token ({b}, {t}) -> expert {i}: p = {float(p_chosen[b, t, 0]):.4f}, E_{i}(x)[0] = {float(e_out[0]):.4f}, "
      f"p·E_{i}(x)[0] = {hand:.5f}; dispatch_combine gave {float(y_tok[b, t, 0]):.5f}")
assert abs(hand - float(y_tok[b, t, 0])) < 1e-5

# %%
torch.manual_seed(seed)
C, S = 6, 4
volume = torch.randn(1, C, S, S, S)  # (B, C, D, H, W) features of a 4x4x4 volume
voxels = volume.permute(0, 2, 3, 4, 1).reshape(-1, C)  # one row per voxel: (B·D·H·W, C)
voxel_gate = SoftGate(in_features=C, num_experts=N)
voxel_experts = torch.nn.ModuleList(torch.nn.Linear(C, 2) for _ in range(N))  # 1x1x1 convolutions
with torch.no_grad():
    vg = voxel_gate(voxels)  # softmax weights over the experts at every voxel, (B·D·H·W, N)
    every = torch.arange(N).expand(voxels.shape[0], N)  # a soft router runs every expert at every voxel
    y_vox, counts_vox = dispatch_combine(voxels, voxel_experts, every, vg.weights)
y_vox = y_vox.reshape(1, S, S, S, -1).permute(0, 4, 1, 2, 3)  # back to a volume (B, C_out, D, H, W)
print(f"per voxel: volume {tuple(volume.shape)} -> rows {tuple(voxels.shape)}; weights {tuple(vg.weights.shape)}, "
      f"output {tuple(y_vox.shape)}, rows per expert {counts_vox.tolist()}")
print("strongest expert per voxel, slice d = 0:\n", vg.probs.argmax(-1).reshape(S, S, S)[0].numpy())
d, h, w = 1, 2, 3
v = volume[0, :, d, h, w]
with torch.no_grad():
    wv = voxel_gate(v[None]).weights[0]
    parts = [float(wv[e]) * float(voxel_experts[e](v)[0]) for e in range(N)]
print(f"by hand, voxel ({d}, {h}, {w}): weights {[round(float(q), 4) for q in wv]}, "
      f"sum_e w_e·E_e(x)[0] = {' + '.join(f'{q:.4f}' for q in parts)} = {sum(parts):.5f}; "
      f"dispatch_combine gave {float(y_vox[0, 0, d, h, w]):.5f}")
assert abs(sum(parts) - float(y_vox[0, 0, d, h, w])) < 1e-5

# %% [markdown]
# ## 3. The losses that keep experts busy
#
# Left alone, a router tends to collapse: one expert gets better, so it gets chosen more, so it gets
# better {cite:p}`shazeer2017moe`. Each paper counters that differently. Over a batch $\mathcal B$ of inputs $x$
# with gate probabilities $g(x)$ (the full softmax), combine weights $G(x)$ (zero for experts not chosen) and
# router logits $l(x)$:
#
# * **Diversity loss** (MLMoE, Sec. II-B; code `diversity_loss`), with the entropy $H(p) = -\sum_i p_i \log p_i$:
#
#   $$ \mathcal L_{\mathrm{div}} = \mathbb E_{x}\big[H(g(x))\big] - H\big(\mathbb E_{x}[g(x)]\big). $$
#
#   The first term wants each input's gate decisive, the second wants the batch's average gate spread out.
# * **CV² importance + load** (SegMoTE Eq. 7&ndash;9, after {cite:t}`shazeer2017moe`; code
#   `importance_load_loss`, `cv_squared`):
#
#   $$
#   \begin{gathered}
#   \mathrm{imp}_i = \sum_{x} G_i(x), \\
#    \mathrm{load}_i = \sum_{x} \mathbb 1\big[G_i(x) > 0\big], \\
#   \mathcal L_{\mathrm{bal}} = \mathrm{CV}^2(\mathrm{imp}) + \mathrm{CV}^2(\mathrm{load}), \\
#   \mathrm{CV}^2(v) = \frac{\mathrm{Var}(v)}{\mathrm{mean}(v)^2},
#   \end{gathered}
#   $$
#
#   with the unbiased variance (`torch.var`), as SegMoTE's code computes it.
# * **Switch loss** {cite:p}`fedus2022switch` (code `switch_balance_loss`): $f_i$ is the fraction of inputs whose
#   top-1 expert is $i$, $P_i$ the mean router probability of expert $i$:
#
#   $$
#   \begin{gathered}
#   f_i = \frac{1}{|\mathcal B|} \sum_{x} \mathbb 1\big[\arg\max_j g_j(x) = i\big], \\
#   P_i = \frac{1}{|\mathcal B|} \sum_{x} g_i(x), \\
#    \mathcal L_{\mathrm{switch}} = N \sum_{i=1}^{N} f_i P_i.
#   \end{gathered}
#   $$
#
#   $f$ counts and has no gradient; $P$ carries it. Balanced routing gives 1, one expert taking everything $N$.
# * **Router z-loss** {cite:p}`zoph2022stmoe` (code `router_z_loss`):
#
#   $$ \mathcal L_z = \frac{1}{|\mathcal B|} \sum_{x} \Big(\log \sum_{i=1}^{N} e^{l_i(x)}\Big)^2. $$
# * **Auxiliary modality loss** (MedMoE; code `HardRouter.aux_loss`): the router's cross-entropy towards the expert
#   assigned to the input's modality $m(x)$, $\mathcal L_{\mathrm{aux}} = -\frac{1}{|\mathcal B|}\sum_x
#   \log \mathrm{softmax}(r(x))_{m(x)}$.
#
# Each is computed by a short function of `medmoe.moe.losses`:

# %%
show_source(diversity_loss, importance_load_loss, switch_balance_loss, router_z_loss)

# %% [markdown]
# The table below applies the losses to hand-made router
# **logits** (rows = inputs, columns = experts; the gate is their softmax): the diversity loss is lowest for
# confident *and* varied gates, the CV² balance loss is zero for balanced use, and the Switch loss
# $N\sum_i f_i P_i$ is 1 when balanced and close to $N$ when collapsed. The router **z-loss** is the only one that
# reads the logits themselves: adding 5 to every logit leaves the softmax, and so every other loss, unchanged, and raises the
# z-loss, which exists to keep router logits small. It must be given logits: on log-probabilities
# $\log\sum_i g_i = \log 1 = 0$ for every gate. The row "soft, varied" writes its logits as
# log-probabilities, $l = \log g$, so it shows that case.

# %%
cases = {
    "collapsed": torch.tensor([[10.0, 0, 0, 0]] * 4),
    "uniform": torch.zeros(4, 4),
    "confident, varied": 10 * torch.eye(4),
    "confident, varied, logits + 5": 10 * torch.eye(4) + 5,
    "soft, varied": (torch.eye(4) * 0.7 + 0.075).log(),
}
loss_table(cases).round(3)

# %% [markdown]
# ## 4. One experiment, six routers
#
# The model (`medmoe.papers.primer.model.ToyMoESegmenter`) is a three-layer CNN stem followed by $N$
# convolutional expert heads that each predict the lesion mask. The router sees the pooled mean and
# spread of the stem's features. We train six variants with the same data, optimiser and number of
# steps, on each of the seeds in `seeds` (every variant on the same seeds, so each seed gives one paired
# comparison), using the book's one training loop (`medmoe.engine.fit`, on Hugging Face Accelerate). Every variant
# minimises the segmentation loss plus its extra loss of Section 3, with weight $\lambda$ (`diversity_weight`,
# `balance_weight` or `aux_weight`):
#
# $$
# \begin{aligned}
# \mathcal L = {} & \underbrace{1 - \frac{2\sum_p \hat y_p y_p + \epsilon}{\sum_p \hat y_p + \sum_p y_p + \epsilon}}_{\text{Dice}}
#   \\ & \underbrace{- \frac{1}{P}\sum_p \big[y_p \log \hat y_p + (1 - y_p)\log(1 - \hat y_p)\big]}_{\text{BCE}}
#   \; + \; \lambda\, \mathcal L_{\mathrm{extra}},
# \end{aligned}
# $$
#
# over the $P$ pixels $p$ of a mask $y$ and the sigmoid of the prediction $\hat y$, with $\epsilon = 10^{-5}$
# (MONAI's `DiceCELoss`; the code
# is `medmoe.papers.primer.recipe.make_step`). A seed sets the model's initial weights, the order of the
# training images and the noisy gate's noise; the images are the same for every seed.
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
stats, histories = {}, {}
for s in seeds:
    for name, (gate, extra) in VARIANTS.items():
        seed_everything(s)
        model = build("primer_quick", width=width, num_experts=n_experts, gate=gate, router_init_std=router_init_std)
        folder = ckpt / f"seed{s}" / name.replace(" ", "").replace("+", "_").replace("²", "2")
        fit_result = train(model, train_ds, out_dir=folder, epochs=epochs, lr=lr, batch_size=batch_size, seed=s,
                           run_key=run_key, extra=extra, modalities=modalities, **loss_weights)
        res = evaluate(model.to(dev), test_ds)
        # routing vs modality on the test images, and the same decisions shuffled n_perm times (the chance level)
        stats[name, s] = routing_stats(res, local_modality[res["modality"]], n_experts, num_labels=len(modalities),
                                       n_perm=n_perm, perm_seed=s)
        if s == seeds[0]:
            histories[name] = fit_result.history
    print(f"seed {s}: " + ", ".join(f"{n} {stats[n, s]['dice']:.3f}" for n in VARIANTS) + " (test Dice)")

fig = history_lines(histories, key="train_loss")
_ = fig.axes[0].set_title(f"training loss, seed {seeds[0]}", fontsize=9)

# %% [markdown]
# ## 5. Did the experts specialise?
#
# For every variant and seed we measure on the held-out test images:
#
# * **load** &mdash; the fraction of images whose top expert is $i$ (`expert_load`), summarised as its entropy
#   over $\log N$ (1 = every expert equally used, 0 = one expert takes everything);
# * **gate entropy** &mdash; how undecided the gate is per image, in nats (`gate_entropy`; $\log N$ = uniform);
# * **mutual information** $I(\text{expert};\text{modality})$ between the routing decision and the
#   modality, and the same divided by $H(\text{modality})$ (`normalized_mutual_information`, NMI): 0 means
#   routing ignores the modality, 1 means the modality can be read off the chosen expert;
# * **H(expert | modality)** $= H(\text{expert}) - I$: 0 when the modality decides the expert. Then
#   $\text{NMI} = H(\text{expert}) / H(\text{modality})$, so NMI can only grow by spreading the load, and a
#   router that merges modalities into fewer experts scores lower without ignoring the modality;
# * **NMI chance**: the NMI of the same routing decisions shuffled over the test images (`n_perm` times). The
#   plug-in NMI is biased upwards on a finite sample, and a router that uses more experts has more room for that
#   bias, so only NMI above this level means that routing follows the modality.
#
# The table gives mean ± sd over the seeds.

# %%
n_mod = len(modalities)
rows = [{"variant": name, **{k: v for k, v in st.items() if not isinstance(v, (list, np.ndarray))}}
        for (name, s), st in stats.items()]
columns = {"dice": "Dice (per-image mean)", "experts_used": "experts used", "load_entropy": "load entropy / log N",
           "gate_entropy": "gate entropy (nats)", "mi": "I(expert; modality) (nats)",
           "h_given_label": "H(expert | modality) (nats)", "nmi": "NMI",
           "nmi_chance": "NMI chance (permutation)"}
summary = mean_sd_table(rows, by="variant", columns=columns)
means = pd.DataFrame(rows).groupby("variant", sort=False).mean(numeric_only=True)
print(f"{len(seeds)} seed(s) {seeds}, {len(test_ds)} test images, {n_experts} experts, "
      f"H(modality) = {math.log(n_mod):.3f} nats")
summary

# %%
s0 = seeds[0]
fig = expert_load_bars({name: stats[name, s0]["load"] for name in VARIANTS},
                       title=f"Expert load on the test set ({n_experts} experts, seed {s0})")

# %%
fig = routing_heatmaps({name: stats[name, s0]["table"] for name in VARIANTS}, row_labels=modalities,
                       annotate={name: f"seed {s0}: NMI {stats[name, s0]['nmi']:.2f} "
                                       f"(chance {stats[name, s0]['nmi_chance']:.2f})" for name in VARIANTS})

# %% [markdown]
# ## 6. The claim, the control, the verdict
#
# The primer's claim is the one every later chapter leans on: **a load-balancing loss keeps a top-1 router from
# collapsing, and so lets it route by what differs between inputs**, here the modality. It is measured as a
# paired comparison: the treatment `top-1 + Switch` (the Switch Transformer's balance loss, made for top-1
# routing) against the control `top-1`, the same router, data, seeds and steps without the loss. The measure is
# NMI(top-1 expert; modality) on the test images, and the treatment must also beat its permutation baseline: the
# same decisions shuffled, averaged over the seeds like the observed value. Alongside it, recorded the same way:
#
# * the direct effect of the Switch loss, the spread of the load (load entropy / log N);
# * the same claim for SegMoTE's CV² importance + load loss;
# * MLMoE's diversity loss against the plain soft gate, on the per-image gate entropy (lower = more decisive);
# * a **positive control**: MedMoE's `hard + L_aux`, whose router is trained on the modality labels, against
#   `top-1`. It shows whether this measure, on these data and seeds, can detect routing by modality at all.
#
# The verdict rule is the same for every claim in the book (`medmoe.claims.VERDICT_RULE`), printed below.

# %%
from IPython.display import Markdown


def seed_values(variant, key):
    """One number per seed for a variant, in the order of `seeds` (the pairing)."""
    return [stats[variant, s][key] for s in seeds]


def permutation_chance(variant):
    """The null of the variant's mean NMI over seeds: permutation j's NMI, averaged over the seeds."""
    nulls = seed_values(variant, "null")
    observed = float(np.mean(seed_values(variant, "nmi")))
    return chance_from_null(observed, [float(np.mean(col)) for col in zip(*nulls)])


nmi_measure = f"NMI(top-1 expert; modality) on {len(test_ds)} test images"
claims = [
    paired_claim(claim="A load-balancing loss (Switch) makes a top-1 router route by modality.", measure=nmi_measure,
                 seeds=seeds, treatment=("top-1 + Switch", seed_values("top-1 + Switch", "nmi")),
                 control=("top-1", seed_values("top-1", "nmi")), chance=permutation_chance("top-1 + Switch"),
                 note="headline; same data, seeds, steps and initialisation, only the balance loss differs"),
    paired_claim(claim="The Switch loss spreads a top-1 router's load over the experts.",
                 measure=f"entropy of the expert load / log {n_experts}", seeds=seeds,
                 treatment=("top-1 + Switch", seed_values("top-1 + Switch", "load_entropy")),
                 control=("top-1", seed_values("top-1", "load_entropy"))),
    paired_claim(claim="SegMoTE's CV² balance loss makes a top-1 router route by modality.", measure=nmi_measure,
                 seeds=seeds, treatment=("top-1 + CV²", seed_values("top-1 + CV²", "nmi")),
                 control=("top-1", seed_values("top-1", "nmi")), chance=permutation_chance("top-1 + CV²")),
    paired_claim(claim="MLMoE's diversity loss makes the soft gate more decisive per image.",
                 measure="per-image gate entropy (nats)", seeds=seeds, higher_is_better=False,
                 treatment=("soft + L_div", seed_values("soft + L_div", "gate_entropy")),
                 control=("soft", seed_values("soft", "gate_entropy"))),
    paired_claim(claim="Positive control: a router trained on the modality (MedMoE's L_aux) routes by modality.",
                 measure=nmi_measure, seeds=seeds, treatment=("hard + L_aux", seed_values("hard + L_aux", "nmi")),
                 control=("top-1", seed_values("top-1", "nmi")), chance=permutation_chance("hard + L_aux"),
                 note="shows whether the measure can detect routing by modality on these data"),
]
print("Verdict rule:", VERDICT_RULE)
claims_frame(claims)

# %%
Markdown("\n".join(f"* {claim_sentence(r)}" for r in claims))

# %% [markdown]
# ## Summary
#
# **What this chapter taught.** A mixture of experts is a gate plus experts plus a combination
# $y = \sum_i g_i(x) E_i(x)$. The gate can be soft (every expert runs, weighted), noisy top-$k$ (only $k$ run) or
# hard (one runs, the router learns from an auxiliary loss); `dispatch_combine` runs each expert on its own rows
# only, whether a row is an image, a token or a voxel. Balance losses (diversity, CV², Switch) act on the
# router's statistics over a batch, the z-loss on its logits. Whether experts *specialise* is a measurement: NMI
# between routing and a label, against the same decisions shuffled, on paired seeds.
#
# What to look for in the tables and figures above:
#
# * **Collapse.** A router left alone can lean on few experts, because an expert that is chosen more gets
#   trained more; the soft gate, which mixes all experts anyway, has no pressure to pick a favourite per modality.
# * **Balance.** The CV² and Switch losses push the load towards uniform. Balance alone does not make routing
#   *meaningful*: NMI against its permutation baseline says whether it did.
# * **Supervision.** The hard router with the auxiliary modality loss (MedMoE's recipe) is *told* the modality,
#   so its NMI is the ceiling to compare the others with, and the positive control of the verdicts.
#
# The paragraph below is generated from this run's records and numbers, so it always describes what was measured:

# %% tags=["remove-input"]
head, load_rec, cv2_rec, div_rec, pos = claims
ctrl_chance = permutation_chance("top-1")
lines = [f"Over {len(seeds)} seed(s) {seeds} ({n_experts} experts, {len(test_ds)} test images):"]
for name, row in means.iterrows():
    lines.append(f"* **{name}** used {row['experts_used']:.1f} of {n_experts} experts on average (load entropy "
                 f"{row['load_entropy']:.2f} of 1), NMI(expert; modality) = {summary.loc[name, 'NMI']} against a "
                 f"chance level of {row['nmi_chance']:.2f}, per-image Dice = {summary.loc[name, 'Dice (per-image mean)']}.")
lines.append("")
lines.append(f"**The headline claim** ({head['claim']}): {head['verdict']}. The balance loss changed the load "
             f"entropy by {load_rec['delta']['mean']:+.2f} ± {load_rec['delta']['sd']:.2f} "
             f"({load_rec['verdict']}) and NMI by {head['delta']['mean']:+.3f} ± {head['delta']['sd']:.3f}.")
if head["verdict"] != "supported" and len(seeds) < MIN_SEEDS:
    lines.append(f"With {len(seeds)} seed(s), fewer than the rule's {MIN_SEEDS}, no claim can reach a verdict "
                 "other than not shown.")
elif head["verdict"] != "supported":
    why = [f"The control `top-1` reaches NMI {head['control']['mean']:.3f} against its own chance level "
           f"{ctrl_chance['value']:.3f} (p = {ctrl_chance['p']:.2g}), the treatment {head['treatment']['mean']:.3f} "
           f"against {head['chance']['value']:.3f} (p = {head['chance']['p']:.2g})."]
    if pos["verdict"] == "supported":
        why.append(f"The positive control is supported (NMI {pos['treatment']['mean']:.3f}), so the measure can see "
                   "routing by modality on these data: what is missing is the effect of the balance loss, not the "
                   "power to detect it.")
    else:
        why.append(f"The positive control is {pos['verdict']} too (NMI {pos['treatment']['mean']:.3f}), so with "
                   f"{len(seeds)} seed(s) this set-up cannot tell routing by modality from chance.")
    lines.append(" ".join(why))
worst = means["h_given_label"].idxmax()
if means["h_given_label"].max() < 0.1 * math.log(n_experts):
    lines.append(f"In every variant H(expert | modality) is at most {means['h_given_label'].max():.3f} nats "
                 f"(`{worst}`; log N = {math.log(n_experts):.3f}): the images of one modality go to one expert "
                 "whatever the loss, so NMI here measures how many experts the modalities are spread over "
                 "(NMI = H(expert) / H(modality)), which is what the balance losses change.")
else:
    lines.append(f"H(expert | modality) reaches {means['h_given_label'].max():.3f} nats (`{worst}`; log N = "
                 f"{math.log(n_experts):.3f}): there, images of one modality are split over several experts.")
markdown("\n".join(lines))

# %% [markdown]
# ## Exercises
#
# Each exercise is one command from the repository root; it re-runs this chapter with the quick profile and one
# parameter changed, and writes to `runs/quick/00_moe_primer/`, replacing this build's record there (Chapter 5
# reads that folder); add `--out runs/exercises/<name>` to keep both. Compare its tables with the ones above.
#
# 1. `medmoe run notebooks/00_moe_primer.py -p balance_weight 0.0` &mdash; no balance weight: `top-1 + CV²` and
#    `top-1 + Switch` become the plain `top-1` router with the same seeds, initialisation and steps. Their rows
#    should equal the control's exactly and the headline Δ should be 0 on every seed: a check that the paired
#    design isolates the loss. This is the control of the headline claim, run as a treatment.
# 2. `medmoe run notebooks/00_moe_primer.py -p n_experts 2` &mdash; fewer experts than modalities. NMI can now reach
#    at most $\log 2 / \log 4 = 0.5$: which modalities share an expert, and does the positive control still beat
#    its chance level?
# 3. `medmoe run notebooks/00_moe_primer.py -p n_experts 8` &mdash; more experts than modalities. Does a balance loss
#    split one modality over several experts (H(expert | modality) above 0), and what does that do to NMI?
# 4. `medmoe run notebooks/00_moe_primer.py -p router_init_std 0.0` &mdash; the noisy top-1 routers start with
#    $W_g = 0$, SegMoTE's initialisation: every image gets the same logits, and only the training noise breaks the
#    tie. Which top-1 variants leave that start, and which stay on one expert?
# 5. `medmoe run notebooks/00_moe_primer.py -p n_seeds 5 -p epochs 16` &mdash; more seeds and longer training. Does a
#    verdict change? The verdict rule needs at least three paired seeds; more seeds narrow the interval.

# %% tags=["hide-cell"]
metrics = {
    "n_experts": n_experts,
    "seed": seed,
    "seeds": seeds,
    **{f"dice[{k}]": float(v) for k, v in means["dice"].items()},
    **{f"mi[{k}]": float(v) for k, v in means["mi"].items()},
    **{f"nmi[{k}]": float(v) for k, v in means["nmi"].items()},
    **{f"nmi_chance[{k}]": float(v) for k, v in means["nmi_chance"].items()},
    **{f"load_entropy[{k}]": float(v) for k, v in means["load_entropy"].items()},
    **{f"h_expert_given_modality[{k}]": float(v) for k, v in means["h_given_label"].items()},
    **{f"experts_used[{k}]": float(v) for k, v in means["experts_used"].items()},
    "headline_verdict": claims[0]["verdict"],
}
save_results(run_dir, metrics, modalities=modalities, image_size=image_size, claims=claims)
print(f"saved {len(metrics)} metrics and {len(claims)} claims to {run_dir.name}/")
