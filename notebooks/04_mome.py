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
# # Chapter 4 &mdash; MoME: a text-guided router over decoder-layer experts for partially labelled 3D CT
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmoe-book/medmoe-book/blob/main/notebooks/04_mome.ipynb)
#
# **Read this first: most of this chapter is a reconstruction.** Only the abstract of Rezvani et al.,
# *MoME: Mixture of Visual Language Medical Experts for Medical Imaging Segmentation* {cite:p}`rezvani2025mome`,
# is public, and no code. What the abstract states, and what this chapter builds on each point:
#
# | | the abstract says | this chapter |
# |---|---|---|
# | vision branch | "multi-scale decoder-layer experts" | the five decoder outputs of MONAI's SwinUNETR (`dec3` ... `out`; four at the quick size), each projected to 8 channels and upsampled: **reconstructed** |
# | text branch | "CLIP-based semantic embeddings" | "A computerized tomography of a {organ}" embedded once, as the CLIP-Driven Universal Model does (CLIP ViT-B/32 in the `paper` profile, MiniLM offline): **known from the base model** |
# | router | "text-guided", "pixel-wise fusion across scales", "class-specific segmentation heads" | per class and voxel, softmax weights over the experts from an MLP on [expert features; class text code]; the fused feature feeds the class's dynamic head: **reconstructed** |
# | data | 10 public CT data sets, 3,410 scans, partially labelled | the Universal Model's layout and dataset lists; the `paper` profile reads the open part that `data_scripts/prepare_universal.py` builds (AMOS, the six MSD CT tasks, TotalSegmentator), **not** the same 3,410 scans; on phantoms: four partially labelled sources: **base model's format, other data** |
# | training | not stated | the Universal Model's partial-label Dice + BCE, self-supervised Swin UNETR start, warm-up + cosine decay and augmentations (`paper` profile): **base model's** |
# | results | Dice, tumour detection, generalisation | not reproduced (no numbers are public to compare with) |
#
# The base, the **CLIP-Driven Universal Model** {cite:p}`liu2023universal`, is public, and MoME's setting matches it
# (10 partially labelled CT data sets, 3,410 scans in both abstracts), so the chapter builds it first, from its code's
# facts, and MoME on top of it. With one expert and no router the two are the same code (`medmoe.papers.mome.model`).
# Several of the Universal Model's data sets need an account or a request; the `paper` profile trains on the open ones
# that `data_scripts/prepare_universal.py` arranges in its layout (AMOS, the six MSD CT tasks and TotalSegmentator),
# so its numbers are on other scans than the 3,410.
#
# **Prerequisites.** The primer's [gates](00_moe_primer.ipynb#2-three-gates-one-output-type) (MoME's router is a
# dense softmax gate, evaluated once per class and voxel), its
# [dispatch and combine](00_moe_primer.ipynb#dispatch-and-combine-on-a-toy-batch) (here every expert is computed and
# combined, nothing is dispatched), its [balance losses](00_moe_primer.ipynb#3-the-losses-that-keep-experts-busy)
# (MoME, as reconstructed, trains without one), its
# [specialisation statistics](00_moe_primer.ipynb#5-did-the-experts-specialise) (section 5 reads the router's weights
# per organ) and [the verdict rule](00_moe_primer.ipynb#6-the-claim-the-control-the-verdict) (section 6). Related
# chapters: [Chapter 3](03_segmote.ipynb) also segments with experts inside a large backbone, but routes tokens of a
# frozen 2D model; [Chapter 1](01_mlmoe.ipynb) and [Chapter 2](02_medmoe.ipynb) route whole images;
# [Chapter 5](05_comparison.ipynb) puts the four designs side by side. The code of this chapter lives in
# `medmoe/papers/mome/`: `model.py` (the Swin UNETR backbone, the experts, `TextGuidedRouter`, `dynamic_head`),
# `recipe.py` (the partial-label loss, training, sliding-window evaluation), `paired.py` (the paired heads of
# section 3) and `data.py` (the phantom CT and the Universal Model's dataset lists).

# %% tags=["remove-cell"]
# Colab only: install the book's library when this notebook runs on Colab (Colab's own torch is kept).
import sys

if "google.colab" in sys.modules:
    # !pip install -q "medmoe[offline-text] @ git+https://github.com/medmoe-book/medmoe-book@main"
    pass

# %% tags=["parameters"]
# Parameters. `medmoe run notebooks/04_mome.py -p held_out kidney -p train_sources liver_tumour,spleen,multi_organ`
# overrides them;
# the profiles (quick / smoke / paper / rehearsal) live in medmoe/papers/mome/card.yaml.
profile = "quick"
run_dir = "runs/interactive/04_mome"
run_key = None  # injected by the runner: a hash of every parameter and the medmoe version
seed = 0                       # the seeds used are seed, seed + 1, ..., n_seeds of them
n_seeds = 3
base_config = "universal_quick"   # medmoe.papers.mome.model.CONFIGS
mome_config = "mome_quick"
text_encoder = "minilm"        # minilm | a (C, D) .pth of class embeddings (txt_encoding.pth) | a local CLIP folder
pretrained = ""                # self-supervised Swin weights (model_swinvit.pt, MONAI load_from); empty: random init
dataset = "phantoms"           # phantoms | universal (dataset lists in the Universal Model's layout under data_root)
data_root = ""                 # universal: the folder the list paths are relative to
train_list = ""                # universal: e.g. data/universal/universal_train.txt
test_list = ""                 # universal: in-domain test list
held_out_list = ""             # universal: a data set held out of training ("" to skip)
train_sources = "liver_tumour,kidney,multi_organ"   # phantoms: the sources trained on
held_out = "spleen"            # phantoms: the source held out of training
held_out_shift = [0.8, 0.03]   # phantoms: its "scanner": contrast and noise std
volume_size = 32               # phantoms: volume side (the quick patch is the whole volume)
n_train_per_source = 6
n_test_per_source = 2
epochs = 10
batch_size = 2
lr = 3e-3
weight_decay = 1e-5
schedule = "constant"          # constant | warmup_cosine (the Universal Model's, per epoch)
warmup_epochs = 0              # warmup_cosine: linear warm-up epochs (the Universal Model: 100 of 2,000)
augment = False                # the Universal Model's RandZoom (MSD only), RandRotate90, RandShiftIntensity
head_epochs = 6                # epochs of every head on the frozen backbone's features
head_repeats = 2               # passes over the cached features per head epoch
head_lr = 3e-3
cache_features = True          # cache the frozen decoder outputs (quick); False: recompute them per batch (paper)
kidney_controls = "centred,learned"   # extra Universal heads: mean-centred normalised text codes, learned codes
sw_overlap = 0.5
device = "auto"

# %% tags=["hide-cell"]
# %matplotlib inline
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display
from matplotlib.colors import TwoSlopeNorm
from torch.utils.data import Subset

from medmoe.claims import claim_sentence, claims_frame, paired_claim
from medmoe.data.phantoms import CLASSES_3D, SOURCE_DATASETS
from medmoe.env import environment
from medmoe.papers.mome import build, class_text_embeddings, count, evaluate, train
from medmoe.papers.mome.data import UNIVERSAL_CLASSES, PhantomCT, RandomPatches, UniversalDataset
from medmoe.papers.mome.model import CONFIGS, DECODER_LEVELS, TextGuidedRouter, UniversalSeg
from medmoe.papers.mome.paired import FeatureCache, centre_text, evaluate_heads, expert_shares, head_from, train_head
from medmoe.papers.mome.recipe import partial_label_loss
from medmoe.repro import checkpoint_dir, save_results
from medmoe.teaching import markdown, show_source
from medmoe.utils import resolve_device, seed_everything
from medmoe.viz import router_weight_bars

seed_everything(seed)
run_dir = Path(run_dir)
seeds = [seed + i for i in range(n_seeds)]
dev = resolve_device(device)
print(f"profile {profile}: {dataset} data, {base_config} vs {mome_config}, seeds {seeds}, "
      f"device {environment()['device']}")

# %% [markdown]
# **The architecture at a glance:** the Universal Model's Swin UNETR and class-text controller with MoME's text-guided router over decoder layers (the paper has no public figure: this is the book's reconstruction). Grey parts are frozen, green ones train,
# experts are orange, routers purple and losses red; the figure is drawn in code by
# `medmoe.diagrams.mome`.

# %% tags=["remove-input"]
from medmoe.diagrams import mome as architecture_diagram

fig = architecture_diagram()

# %% [markdown]
# ## 1. Partially labelled data
#
# Each source data set annotates only some organs; a voxel of an unannotated organ is background *in that
# source's labels*, though it is not background in the body. The phantoms copy this: abdominal CT-like volumes
# (HU windowed to [-175, 250] as the Universal Model), four sources. Targets are multi-label: the liver channel
# includes the liver tumour, as in the Universal Model's label transfer. One source is **held out of training**
# and scanned by a different "scanner" (lower contrast, more noise) to test generalisation.

# %%
if dataset == "phantoms":
    classes = list(CLASSES_3D[1:])
    train_names = [s.strip() for s in train_sources.split(",") if s.strip()]
    if held_out in train_names:
        raise ValueError(f"held_out source {held_out!r} is also a training source {train_names}")
    volumes = {
        "train": PhantomCT(sources=train_names, n_per_source=n_train_per_source, size=volume_size, seed=seed),
        "test": PhantomCT(sources=train_names, n_per_source=n_test_per_source, size=volume_size, seed=seed + 1000),
        "held_out": PhantomCT(sources=[held_out], n_per_source=n_test_per_source + 1, size=volume_size,
                              seed=seed + 2000, shift=tuple(held_out_shift)),
    }
    labelled_table = pd.DataFrame({s: [c in SOURCE_DATASETS[s] for c in classes] for s in (*train_names, held_out)},
                                  index=classes)
elif dataset == "universal":
    if not (data_root and train_list and test_list):
        raise ValueError("dataset='universal' needs data_root, train_list and test_list "
                         "(see data_scripts/prepare_universal.py)")
    classes = list(UNIVERSAL_CLASSES)
    volumes = {"train": UniversalDataset(root=data_root, list_file=train_list),
               "test": UniversalDataset(root=data_root, list_file=test_list)}
    if held_out_list:
        volumes["held_out"] = UniversalDataset(root=data_root, list_file=held_out_list)
    labelled_table = None
else:
    raise ValueError(f"dataset must be 'phantoms' or 'universal', got {dataset!r}")
print({k: len(v) for k, v in volumes.items()}, "volumes;", len(classes), "classes")
if labelled_table is not None:
    fig, axes = plt.subplots(1, len(labelled_table.columns), figsize=(2.6 * len(labelled_table.columns), 2.8))
    for ax, src in zip(axes, labelled_table.columns):
        split = "held_out" if src == held_out else "train"
        k = next(k for k in range(len(volumes[split])) if volumes[split].sources[volumes[split].index[k][0]] == src)
        item = volumes[split][k]
        z = int(item["label"].sum(dim=(0, 2, 3)).argmax())
        ax.imshow(item["image"][0, z], cmap="gray", vmin=0, vmax=1)
        lab = item["label"][:, z].numpy()
        for c in np.flatnonzero(item["labelled"].numpy()):
            if lab[c].any():
                ax.contour(lab[c], levels=[0.5], colors=[plt.cm.tab10(c)], linewidths=1)
        ax.set_title(f"{src}{' (held out)' if src == held_out else ''}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
labelled_table

# %% [markdown]
# ## 2. The architecture
#
# SwinUNETR's decoder gives five maps on the way back to full resolution. The Universal Model reads only the last
# (`out`), projects it to 8 channels, and runs one small **dynamic head** per class whose weights a controller
# computes from [image code; text code of the class]. MoME (as reconstructed) projects *every* decoder output to
# 8 channels, upsamples them, and lets a router decide per class and voxel how much each scale contributes.
#
# **The dynamic head** of the CLIP-Driven Universal Model {cite:p}`liu2023universal`, written as its released code
# computes it (`medmoe.papers.mome.model.dynamic_head`, with the controller in `UniversalSeg.forward_head`). A class
# is known to the head only through its text code and the image only through one global code:
#
# $$u_c = \mathrm{ReLU}(W_{tv}\,t_c + b_{tv}),\qquad \theta_c = W_\theta\,[\,g;\,u_c\,] + b_\theta
#   = \big(W^1_c, W^2_c, W^3_c, b^1_c, b^2_c, b^3_c\big),$$
#
# $$p_c(x) = \sigma\Big(W^3_c\,\mathrm{ReLU}\big(W^2_c\,\mathrm{ReLU}(W^1_c\,F(x) + b^1_c) + b^2_c\big)
#   + b^3_c\Big).$$
#
# Here $t_c$ is the CLIP (here MiniLM) embedding of the prompt "A computerized tomography of a {organ}" for class
# $c$, $u_c$ its text code (`text_to_vision`), $g$ the image code (GroupNorm, ReLU and global average pooling of
# `dec4`, then a 1x1x1 convolution; GAP(dec4) in the diagram), $\theta_c$ the controller's 153 numbers for class
# $c$ (the weights $W^1_c, W^2_c \in \mathbb{R}^{8\times 8}$, $W^3_c \in \mathbb{R}^{1\times 8}$ and biases
# $b^1_c, b^2_c \in \mathbb{R}^8$, $b^3_c \in \mathbb{R}$ of three 1x1x1 convolutions), $F(x)$ the 8-channel
# feature the head reads at voxel $x$ and $p_c(x)$ the probability that $x$ belongs to class $c$ (one sigmoid per
# class, so classes may overlap). In the Universal Model $F(x) = E_{\text{out}}(x)$, the projection of `out`, the
# same for every class.
#
# **The text-guided router** (the book's reconstruction from MoME's abstract {cite:p}`rezvani2025mome`: the paper's
# body is not public, so there is no equation number to quote; computed by
# `medmoe.papers.mome.model.TextGuidedRouter`, the sum in `UniversalSeg.forward_head`) replaces $F(x)$ by a feature
# of its own for every class:
#
# $$w_{c,e}(x) = \mathrm{softmax}_e\big(W_2\,\mathrm{ReLU}(W_v V(x) + W_t u_c + b_1) + b_2\big),\qquad
#   F_c(x) = \sum_e w_{c,e}(x)\,E_e(x),$$
#
# with $E_e(x)$ expert $e$'s 8-channel feature at voxel $x$ (decoder output $e$ after GroupNorm, ReLU, a 1x1x1
# convolution to 8 channels and trilinear upsampling), $V(x) = [E_1(x); \dots; E_E(x)]$ all of them stacked,
# $u_c$ the class's text code from above, $W_v$, $W_t$ and $b_1$ the first layer of a small MLP (the visual and the
# text part of one linear map), $W_2$ and $b_2$ its output layer with one logit per expert, and $w_{c,e}(x)$ the
# weight of expert $e$ for class $c$ at voxel $x$, which sums to 1 over $e$. $F_c$ replaces the Universal Model's
# single feature map in class $c$'s head. Every expert is computed at every voxel (dense routing, as the soft gate of
# the primer), and no load-balancing term is added, since the abstract states none.

# %%
rows = []
for name in ("universal_paper", "mome_paper", base_config, mome_config):
    cfg = CONFIGS[name]
    n = count(build(name))  # medmoe.papers.mome.recipe.count: total, trainable, router, experts
    rows.append({"configuration": name, "feature size": cfg.feature_size, "classes": cfg.num_classes,
                 "text dim": cfg.text_dim, "experts": ", ".join(cfg.experts), "parameters (M)": n["total"] / 1e6,
                 "router (k)": n["router"] / 1e3, "expert projections (k)": n["experts"] / 1e3})
params = pd.DataFrame(rows).set_index("configuration")
pyramid = pd.DataFrame([{"output": k, "channels (paper)": w * CONFIGS["mome_paper"].feature_size,
                         "grid for a 96^3 patch": f"{96 // f}^3"}
                        for k, (w, f) in DECODER_LEVELS.items()]).set_index("output")
display(pyramid)
params.round(3)

# %% [markdown]
# ### The MoE layer, on a toy batch
#
# The router is a class of its own, `TextGuidedRouter`; `UniversalSeg.forward_head` projects and upsamples the
# experts, stacks them, calls the router and forms $F_c$ with one `einsum`, then runs the dynamic heads. Both, as
# the library has them (the first comment of each block names the file and lines):

# %%
show_source(TextGuidedRouter, UniversalSeg.forward_head)

# %% [markdown]
# The router at toy size: a batch of 2 volumes of $4^3$ voxels, 3 experts of 8 channels ($E_1, E_2, E_3$), 3 classes
# with 16-d codes $u_c$, hidden width 8, random weights (built apart from the experiment's random stream, so the
# training below is unchanged). The cell prints the shapes and the routing decision (each class's mean weight per
# expert, and how many voxels each expert leads), then recomputes $w_{c,e}(x)$ and $F_c(x)$ from the equation
# above, one (volume, class, voxel) at a time, with the router's own weight matrices.

# %%
with torch.random.fork_rng():  # the toy router's initialisation does not touch the experiment's random stream
    torch.manual_seed(0)
    toy_router = TextGuidedRouter(num_experts=3, expert_dim=8, code_dim=16, hidden=8)
toy_gen = torch.Generator().manual_seed(0)
toy_experts = torch.randn(2, 3, 8, 4 ** 3, generator=toy_gen)  # (B, E, d, N): E_e(x) at N voxels
toy_codes = torch.randn(3, 16, generator=toy_gen)  # (C, code_dim): u_c
with torch.no_grad():
    toy_w = toy_router(toy_experts, toy_codes)  # (B, C, E, N)
    toy_fused = torch.einsum("bcen,bedn->bcdn", toy_w, toy_experts)  # F_c(x): the einsum of forward_head
print(f"experts {tuple(toy_experts.shape)} (B, E, d, N) and text codes {tuple(toy_codes.shape)} (C, code) -> "
      f"weights {tuple(toy_w.shape)} (B, C, E, N) -> fused {tuple(toy_fused.shape)} (B, C, d, N)")
toy_names = [f"E_{e + 1}" for e in range(toy_w.shape[2])]
display(pd.concat({
    "mean weight over voxels": pd.DataFrame(toy_w[0].mean(-1).numpy(), columns=toy_names),
    "voxels where the expert has the largest weight": pd.DataFrame(
        torch.nn.functional.one_hot(toy_w[0].argmax(1), len(toy_names)).sum(1).numpy(), columns=toy_names),
}, axis=1).rename_axis("class (volume 0)").round(3))
# by hand: w_{c,e}(x) = softmax_e(W_2 ReLU(W_v V(x) + W_t u_c + b_1) + b_2) and F_c(x) = sum_e w_{c,e}(x) E_e(x)
W_v, b_1 = toy_router.visual.weight.detach()[:, :, 0], toy_router.visual.bias.detach()
W_t = toy_router.text.weight.detach()
W_2, b_2 = toy_router.out.weight.detach()[:, :, 0], toy_router.out.bias.detach()
hand_w, hand_f = torch.zeros_like(toy_w), torch.zeros_like(toy_fused)
for b in range(toy_w.shape[0]):
    for c in range(toy_w.shape[1]):
        for n in range(toy_w.shape[3]):
            v = toy_experts[b, :, :, n].reshape(-1)  # V(x): the experts' features stacked, E * d values
            z = W_2 @ torch.relu(W_v @ v + W_t @ toy_codes[c] + b_1) + b_2  # one logit per expert
            hand_w[b, c, :, n] = z.exp() / z.exp().sum()
            hand_f[b, c, :, n] = sum(hand_w[b, c, e, n] * toy_experts[b, e, :, n] for e in range(len(toy_names)))
torch.testing.assert_close(toy_w.sum(2), torch.ones(toy_w.shape[0], toy_w.shape[1], toy_w.shape[3]))
torch.testing.assert_close(toy_w, hand_w)
torch.testing.assert_close(toy_fused, hand_f)
print(f"checked at all {toy_w.shape[0] * toy_w.shape[1] * toy_w.shape[3]} (volume, class, voxel) triples: the "
      "weights sum to 1 over the experts, equal the equation computed by hand, and the fused feature equals the "
      "weighted sum of the experts' features")
toy_router.start_as_one_expert(2, 0.95)  # router_init="universal": start as one expert (here E_3, in MoME `out`)
with torch.no_grad():
    toy_start = toy_router(toy_experts, toy_codes)
torch.testing.assert_close(toy_start, torch.tensor([0.025, 0.025, 0.95])[None, None, :, None].expand_as(toy_start))
print("after start_as_one_expert(2, 0.95), at every voxel and class: w = "
      + ", ".join(f"{n} {x:.3f}" for n, x in zip(toy_names, toy_start[0, 0, :, 0].tolist())))

# %% [markdown]
# ## 3. Training: one backbone, two heads
#
# **The masked partial-label loss** is the Universal Model's {cite:p}`liu2023universal` (its `DiceLoss` and
# `Multi_BCELoss`, weighted 1 : 1; MoME's abstract states no loss, so the book keeps this one and quotes no equation
# number). It is computed by `medmoe.papers.mome.recipe.partial_label_loss`, for the end-to-end training and for
# every head:
#
# $$\mathcal{L} = \frac{1}{|M|}\sum_{(i,c)\in M}\Big[\,1 - \frac{2\sum_x p_{i,c}(x)\,y_{i,c}(x) + 1}
#   {\sum_x p_{i,c}(x) + \sum_x y_{i,c}(x) + 1}
#   \;-\; \frac{1}{N}\sum_x \Big(y_{i,c}(x)\log p_{i,c}(x) + \big(1 - y_{i,c}(x)\big)\log\big(1 - p_{i,c}(x)\big)
#   \Big)\Big],$$
#
# where $M$ is the set of (volume, class) pairs of the batch whose class the volume's source data set annotates,
# $p_{i,c}(x)$ the predicted probability of class $c$ at voxel $x$ of patch $i$ (the $p_c(x)$ of section 2),
# $y_{i,c}(x) \in \{0, 1\}$ the label, $N$ the number of voxels in a patch, the first term the Dice loss with
# smoothing 1 and the second the binary cross-entropy. Every class outside $M$ gets **no gradient** (tested in
# `tests/test_mome.py`), since its label says background for an organ that may be there. On a toy batch of 2
# volumes and 3 classes, where volume 0 labels classes 0 and 1 and volume 1 labels classes 1 and 2:

# %%
toy_gen = torch.Generator().manual_seed(1)
toy_logits = torch.randn(2, 3, 4, 4, 4, generator=toy_gen, requires_grad=True)
toy_target = (torch.rand(2, 3, 4, 4, 4, generator=toy_gen) > 0.7).float()
toy_labelled = torch.tensor([[True, True, False], [False, True, True]])
toy_loss = partial_label_loss(toy_logits, toy_target, toy_labelled)
toy_loss["loss"].backward()
p_toy, y_toy = torch.sigmoid(toy_logits.detach()).flatten(2), toy_target.flatten(2)  # (B, C, N)
hand_dice = 1 - (2 * (p_toy * y_toy).sum(-1) + 1) / (p_toy.sum(-1) + y_toy.sum(-1) + 1)
hand_bce = -(y_toy * p_toy.log() + (1 - y_toy) * (1 - p_toy).log()).mean(-1)
torch.testing.assert_close(toy_loss["loss"], (hand_dice + hand_bce)[toy_labelled].mean())
grad_mass = toy_logits.grad.abs().flatten(2).sum(-1)  # (B, C)
assert (grad_mass[~toy_labelled] == 0).all() and (grad_mass[toy_labelled] > 0).all()
display(pd.DataFrame({"labelled": toy_labelled.flatten().numpy(), "Dice term": hand_dice.flatten().numpy(),
                      "BCE term": hand_bce.flatten().numpy(), "gradient mass": grad_mass.flatten().numpy()},
                     index=pd.MultiIndex.from_product([[0, 1], [0, 1, 2]], names=["volume", "class"])).round(4))
print(f"loss {toy_loss['loss'].item():.4f} equals the mean of Dice + BCE over the {int(toy_labelled.sum())} labelled "
      "pairs computed by hand; the unlabelled pairs get zero gradient")

# %% [markdown]
# Random patches are drawn 2 : 1 around labelled foreground and background (MONAI `RandCropByPosNegLabeld`), as the
# Universal Model does. The `paper`
# profile adds the rest of the Universal Model's recipe: the Swin encoder starts from self-supervised weights
# (`pretrained`, MONAI's `model_swinvit.pt` read by `SwinUNETR.load_from`; not the file the Universal Model's README
# names, see section 7), the learning rate warms up linearly and then decays along a cosine
# (`schedule="warmup_cosine"`), and the patches are augmented (`augment`: `RandZoomd` on the MSD volumes,
# `RandRotate90d`, `RandShiftIntensityd`).
#
# **A paired design.** If MoME and the Universal Model each train their own backbone from random weights, the two
# backbones differ by seed, and at a small budget that difference can be larger than anything the router does. So
# the chapter compares the two *heads* on one backbone (`medmoe.papers.mome.paired`), per seed:
#
# 1. train the Universal Model end to end (`medmoe.papers.mome.recipe.train`);
# 2. freeze its backbone and cache its decoder outputs on the training crops (`FeatureCache`; the `paper` profile
#    recomputes them per batch instead, `cache_features=False`, since 96^3 feature maps of a whole CT collection do
#    not fit in memory);
# 3. build every head from the trained Universal head (`head_from`): the **Universal head** continues as it is;
#    the **MoME head** copies it and adds the other experts' projections and the router, which starts as the
#    Universal Model (`router_init="universal"`, the book's choice: the router's output layer starts at zero
#    weight, with a bias that gives `out` the weight 0.95 at every voxel, so MoME starts close to the Universal
#    head's function and differs from it only where training moves the router);
# 4. train every head for the same steps, on the same features, in the same batch order, at the same learning
#    rate; evaluate them through the same frozen backbone.
#
# Two more Universal heads are the kidney controls of section 4: one reads the text embeddings mean-centred over
# the classes and normalised (`centre_text`), one replaces the text by a learned class embedding (the Universal
# Model's `rand_embedding`).

# %%
text = class_text_embeddings(classes, encoder=text_encoder)
patches = RandomPatches(volumes["train"], patch=CONFIGS[mome_config].roi_size, augment=augment)
ckpt = checkpoint_dir(run_dir, run_key)
controls = [c.strip() for c in kidney_controls.split(",") if c.strip()]
unknown = [c for c in controls if c not in ("centred", "learned")]
if unknown:
    raise ValueError(f"kidney_controls must name 'centred' and/or 'learned', got {unknown}")
ARMS = {"universal": "Universal head", "mome": "MoME head", "centred": "Universal head, centred text",
        "learned": "Universal head, learned codes"}
models, histories, backbone_hist = {}, [], []
for s in seeds:
    seed_everything(s)
    base = build(base_config, num_classes=len(classes), text_dim=text.shape[1], pretrained=pretrained or None).to(dev)
    base.set_text_embeddings(text)
    res = train(base, patches, out_dir=ckpt / f"backbone_seed{s}", epochs=epochs, lr=lr, batch_size=batch_size,
                seed=s, run_key=run_key, weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs)
    backbone_hist += [{"seed": s, **h} for h in res.history]
    models["end-to-end", s] = base.eval()
    seed_everything(s)
    feats = FeatureCache(base, patches, repeats=head_repeats) if cache_features else patches
    heads = {"universal": head_from(base, base_config, text=text),
             "mome": head_from(base, mome_config, text=text)}
    if "centred" in controls:
        heads["centred"] = head_from(base, base_config, text=centre_text(text))
    if "learned" in controls:
        seed_everything(s)
        heads["learned"] = head_from(base, base_config, text=text, text_code="learned")
    for arm, head in heads.items():
        r = train_head(head, feats, out_dir=ckpt / f"{arm}_head_seed{s}", epochs=head_epochs, lr=head_lr,
                       batch_size=batch_size, seed=s, run_key=run_key, weight_decay=weight_decay)
        models[arm, s] = head.eval()
        histories += [{"head": ARMS[arm], "seed": s, **h} for h in r.history]
    del feats
hist = pd.DataFrame(histories)
fig, axes = plt.subplots(1, 2, figsize=(10, 2.8))
sns.lineplot(data=pd.DataFrame(backbone_hist), x="epoch", y="train_loss", ax=axes[0])
axes[0].set_title("1. end to end (the backbone): Dice + BCE, mean over seeds", fontsize=9)
sns.lineplot(data=hist, x="epoch", y="train_loss", hue="head", ax=axes[1])
axes[1].set_title(f"2. heads on the frozen backbone ({head_repeats} passes per epoch)", fontsize=9)
axes[1].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# ## 4. Per-organ Dice (the Universal Model's convention)
#
# Whole test volumes are segmented with MONAI's sliding-window inference (patch = the training patch, overlap
# 0.5, Gaussian blending), sigmoid > 0.5. Dice is computed **per organ per volume** as
# $2TP / (|P| + |G| + 1)$ and averaged per organ over the volumes whose source labels that organ *and* whose ground
# truth contains it (`medmoe.metrics.per_volume_class_dice`): the reference test loop skips an organ absent from a
# volume, so a false positive there is not counted. The overall number is the mean over organs. `end-to-end` is the
# trained Universal Model before its head trains further on the frozen features (the start every head shares). The
# router's maps are stitched only for the one volume drawn in section 5.

# %%
# the volume whose router maps are drawn: the test volume whose source labels the most classes (read from the
# dataset's flags, without loading the volumes)
map_volume = max(range(len(volumes["test"])), key=lambda k: (int(volumes["test"].labelled_of(k).sum()), -k))
lower = {c.lower(): c for c in classes}
kidneys = (lower.get("left kidney"), lower.get("right kidney"))
kidney_channels = (classes.index(kidneys[0]), classes.index(kidneys[1])) if all(kidneys) else None
evals, side_rows = [], []
for s in seeds:  # every head of a seed shares its backbone: one backbone pass per window for all of them
    heads_of_seed = {arm: m for (arm, s_), m in models.items() if s_ == s}
    for split in [k for k in ("test", "held_out") if k in volumes]:
        res = evaluate_heads(heads_of_seed, volumes[split], overlap=sw_overlap,
                             kidneys=kidney_channels if split == "test" else None)
        for arm, r in res.items():
            for c, d in enumerate(r["per_class"]):
                if d == d:
                    evals.append({"model": ARMS.get(arm, arm), "arm": arm, "seed": s, "split": split,
                                  "organ": classes[c], "Dice": float(d)})
            if split == "test":
                side_rows.append({"head": ARMS.get(arm, arm), "arm": arm, "seed": s, **r["sides"]})
# the router's maps, for the drawn volume only (the MoME head of the first seed)
maps = {"mome": evaluate(models["mome", seeds[0]], Subset(volumes["test"], [map_volume]), overlap=sw_overlap,
                         maps_for=[0])["maps"][0]}
ev = pd.DataFrame(evals)
per_seed = ev.groupby(["split", "arm", "seed"]).Dice.mean()  # mean over organs, per seed
overall = per_seed.groupby(["split", "arm"]).agg(["mean", "std"]).unstack("arm")
per_organ = ev.groupby(["split", "organ", "model"], sort=False).Dice.agg(["mean", "std"]).unstack("model")
display(overall.round(3))
per_organ.round(3)

# %%
shown_arms = ev[ev.arm.isin(["end-to-end", "universal", "mome"])]
fig, axes = plt.subplots(1, len(ev.split.unique()), figsize=(5.5 * len(ev.split.unique()), 3.2), squeeze=False)
for ax, split in zip(axes[0], ev.split.unique()):
    sns.barplot(data=shown_arms[shown_arms.split == split], x="organ", y="Dice", hue="model", errorbar="sd", ax=ax)
    ax.set_title(f"{split}: Dice per organ, mean ± sd over {len(seeds)} seeds", fontsize=9)
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# **What the text codes can tell apart.** Every class-specific head, and MoME's router, is told which class it is
# working on only through the class's code. The cosine similarity of the prompt embeddings as they are, and after
# mean-centring over the classes (the control `centre_text`):

# %%
unit = torch.nn.functional.normalize(text.float(), dim=1)
cosine = pd.DataFrame((unit @ unit.T).numpy(), index=classes, columns=classes)
centred_unit = centre_text(text)
cosine_centred = pd.DataFrame((centred_unit @ centred_unit.T).numpy(), index=classes, columns=classes)
display(cosine.round(3))
display(cosine_centred.round(3))

# %% [markdown]
# **Which side does a kidney head segment?** For every test volume that labels both kidneys, the Dice of the left
# kidney's head with the left kidney and of the right one's with the right (*own side*), against each head with the
# other side. A head that cannot tell the sides apart scores about the same on both; one that swapped them scores
# higher on the other side (*segments*: a difference above 0.05 Dice either way; *neither*: both below 0.1). Per
# seed and head:

# %%
sides = None
if kidney_channels is not None:
    sides = pd.DataFrame(side_rows)
    sides["segments"] = np.select([sides[["own", "other"]].max(axis=1) < 0.1, sides.own > sides.other + 0.05,
                                   sides.other > sides.own + 0.05], ["neither", "own side", "other side"],
                                  "both sides alike")
sides.set_index(["head", "seed"]).round(3) if sides is not None else None

# %% [markdown]
# ## 5. Where the router looks: weights per class over slices
#
# For one test volume (the MoME head of the first seed; a volume whose source labels the most organs), the router's
# weight for each expert (decoder scale) of each class, on the axial slice through the class's largest labelled
# area. Rows are classes, columns experts; each pixel is $w_{c,e}(x)$ (the rows sum to 1 over the experts at every
# pixel). The router started at w(out) = 0.95 everywhere; the colour scale is centred on the uniform router's
# 1/E.

# %%
mp = maps["mome"]
experts = CONFIGS[mome_config].experts
uniform = 1.0 / len(experts)
router = mp["router"]  # (C, E, D, H, W)
shown = [c for c in range(len(classes)) if mp["label"][c].any()]
if not shown:
    raise ValueError(f"the drawn test volume (index {map_volume}) has no labelled organ in its ground truth")
fig, axes = plt.subplots(len(shown), 2 + len(experts), figsize=(1.7 * (2 + len(experts)), 1.7 * len(shown)),
                         squeeze=False)
for row, c in zip(axes, shown):
    z = int(mp["label"][c].sum(axis=(1, 2)).argmax())
    row[0].imshow(mp["image"][z], cmap="gray", vmin=0, vmax=1)
    row[0].contour(mp["label"][c][z], levels=[0.5], colors="red", linewidths=0.8)
    row[0].set_title(classes[c], fontsize=7)
    row[1].imshow(mp["probability"][c][z], cmap="magma", vmin=0, vmax=1)
    row[1].set_title("probability", fontsize=7)
    for e, name in enumerate(experts):
        row[2 + e].imshow(router[c, e, z], cmap="RdBu_r", norm=TwoSlopeNorm(uniform, 0, 1))
        row[2 + e].set_title(f"w({name})", fontsize=7)
    for a in row:
        a.axis("off")
fig.suptitle(f"router weights: red above, blue below the uniform 1/E = {uniform:.2f}", fontsize=9)
fig.tight_layout()

# %% [markdown]
# **The same, summarised:** the mean router weight of each expert inside each organ (labelled voxels) and in the
# background, over the test volume, against the uniform router's 1/E (dashed). The table below it gives, for every
# seed, the mean weight of each expert inside the organs of that volume. A weight is not a contribution: an
# expert whose projection has grown large counts even at a small weight. The last figure gives each expert's
# share of the fused feature itself, $\lVert w_{c,e}E_e\rVert / \sum_{e'}\lVert w_{c,e'}E_{e'}\rVert$, inside the
# organs (`expert_shares`).

# %%
inside = {classes[c]: router[c][:, mp["label"][c] > 0].mean(1) for c in shown}
inside["background (all classes)"] = np.mean([router[c][:, mp["label"].max(0) == 0].mean(1)
                                              for c in range(len(classes))], axis=0)
weights_table = pd.DataFrame(inside, index=[f"w({e})" for e in experts]).T
fig = router_weight_bars(weights_table, title=f"MoME head, seed {seeds[0]}: mean router weight inside each organ")

# %%
moved = []
for s in seeds:  # the router's weights inside the organs, per seed (recomputed on the drawn volume)
    r = evaluate(models["mome", s], Subset(volumes["test"], [map_volume]), overlap=sw_overlap, maps_for=[0])["maps"][0]
    organs = [c for c in range(len(classes)) if r["label"][c].any()]
    w = np.mean([r["router"][c][:, r["label"][c] > 0].mean(1) for c in organs], axis=0)
    moved.append({"seed": s, **{f"w({e})": float(x) for e, x in zip(experts, w)}})
moved = pd.DataFrame(moved).set_index("seed")
display(moved.round(3))
shares = None
if all(n % 32 == 0 for n in mp["image"].shape):  # one window: the drawn volume fits the model as a whole
    organs = [c for c in range(len(classes)) if mp["label"][c].any()]
    shares = pd.DataFrame([{"seed": s, **{f"w({e})": float(x) for e, x in zip(experts, expert_shares(
        models["mome", s], torch.as_tensor(mp["image"])[None], torch.as_tensor(mp["label"] > 0))[organs].mean(0))}}
        for s in seeds]).set_index("seed")
    fig = router_weight_bars(shares.rename(index=lambda s: f"seed {s}", columns=lambda c: c[2:-1]),
                             title="share of each expert in the fused feature inside the organs (not the weight)",
                             ylabel="share of the fused feature")

# %% [markdown]
# ## 6. The claim, the control, the verdict
#
# Each claim is measured on the same seeds, data and backbone for the treatment and its control, paired by seed,
# and judged by the book's one rule (`medmoe.claims.VERDICT_RULE`): *supported* needs at least 3 paired seeds and a
# one-sided paired t-test with p < 0.05 in the treatment's favour, *contradicted* the same in the control's favour,
# and anything else is *not shown*.
#
# * **Headline**: MoME's text-guided fusion of decoder scales segments better than the Universal Model's
#   single-scale head; treatment the MoME head, control the Universal head, both from the same trained Universal
#   head on the same frozen features (section 3), mean Dice over organs on the in-domain test volumes; the same on
#   the held-out source.
# * **Kidneys**: a class-conditioned head segments its own class. For the two kidneys, whose prompts differ in one
#   word, the treatment is a head's Dice with its own side and the control its Dice with the other side, for the
#   Universal head reading the text as it is, the centred text, and learned codes (section 4), and for the MoME
#   head. How to read them: if the learned codes, which need no text at all, separate the sides no better than
#   the text codes, the limit is in the features the head reads, not in the text.

# %%
claims = []
arm_values = {(split, arm): [float(per_seed[split, arm, s]) for s in seeds]
              for split, arm, _ in per_seed.index}
claims.append(paired_claim(
    claim="MoME's text-guided router over decoder scales segments better than the Universal Model's single-scale "
          "head.",
    measure="mean Dice over organs, in-domain test volumes (heads on one frozen backbone per seed)", seeds=seeds,
    treatment=("MoME head", arm_values["test", "mome"]), control=("Universal head", arm_values["test", "universal"]),
    note="paired: per seed one backbone, both heads from the trained Universal head, same steps and batches"))
if "held_out" in volumes:
    claims.append(paired_claim(
        claim="On a source held out of training, MoME's head segments better than the Universal head.",
        measure="mean Dice over organs, held-out source (shifted scanner)", seeds=seeds,
        treatment=("MoME head", arm_values["held_out", "mome"]),
        control=("Universal head", arm_values["held_out", "universal"])))
if sides is not None:
    for arm in ["universal", *controls, "mome"]:
        rows = sides[sides.arm == arm].set_index("seed").loc[seeds]
        if rows[["own", "other"]].notna().all().all():
            claims.append(paired_claim(
                claim=f"Kidney heads ({ARMS.get(arm, arm)}) segment their own side, not the other.",
                measure="Dice of each kidney head with its own side (treatment) and with the other side (control)",
                seeds=seeds, treatment=("own side", rows.own.tolist()), control=("other side", rows.other.tolist())))
display(claims_frame(claims))
Markdown("\n\n".join(f"* {claim_sentence(r)}" for r in claims))

# %%
head = claims[0]
d = head["delta"]
per_seed_delta = ", ".join(f"seed {s}: {v:+.3f}" for s, v in zip(head["seeds"], d["values"]))
start_w = CONFIGS[mome_config].router_init_weight
w_out = moved[f"w({experts[-1]})"] if experts[-1] == "out" else None
router_text = "" if w_out is None else (
    f" The router started at w(out) = {start_w:.2f}; after training, the MoME heads give `out` a mean weight of "
    f"{w_out.mean():.3f} (from {w_out.min():.3f} to {w_out.max():.3f} over the seeds) inside the organs of the drawn "
    f"volume, against the uniform router's {uniform:.2f}.") + ("" if shares is None else (
    f" Its share of the fused feature there is {shares[f'w({experts[-1]})'].mean():.3f} on average over the seeds; the "
    "other experts' shares: " + ", ".join(f"{e} {shares[f'w({e})'].mean():.3f}" for e in experts[:-1]) + "."))
e2e = overall.get(("mean", "end-to-end"))
e2e_text = "" if e2e is None else (
    f" The end-to-end Universal Model both heads start from scores {e2e['test']:.3f} on the same volumes.")
per_epoch = hist.groupby(["head", "epoch"]).train_loss.mean().unstack("epoch")  # mean over seeds
k = min(max(1, head_epochs // 2), per_epoch.shape[1] - 1)
converge_text = "" if k < 1 else (
    f" Mean training loss of each head (over seeds) across its last {k} epochs: "
    + "; ".join(f"{h} {row.iloc[-k - 1]:.3f} → {row.iloc[-1]:.3f}" for h, row in per_epoch.iterrows()) + ".")
side_text = ""
if sides is not None:
    tally = sides.groupby("head").segments.value_counts().unstack(fill_value=0)
    side_text = " Which side the kidney heads segment, seeds per outcome: " + "; ".join(
        f"{h}: " + ", ".join(f"{k} {int(v)}" for k, v in row.items() if v) for h, row in tally.iterrows()) + "."
Markdown(
    f"**Verdict on the headline claim: {head['verdict']}.** MoME head minus Universal head, mean Dice over organs, "
    f"per seed: {per_seed_delta}; Δ = {d['mean']:+.3f} ± {d['sd']:.3f} over {d['n']} seeds.{e2e_text}{router_text}"
    f"{converge_text} The prompts of the two kidneys have cosine {cosine.loc[kidneys[0], kidneys[1]]:.3f} as they are and "
    f"{cosine_centred.loc[kidneys[0], kidneys[1]]:.3f} centred.{side_text}"
    if all(kidneys) else
    f"**Verdict on the headline claim: {head['verdict']}.** MoME head minus Universal head, mean Dice over organs, "
    f"per seed: {per_seed_delta}; Δ = {d['mean']:+.3f} ± {d['sd']:.3f} over {d['n']} seeds.{e2e_text}{router_text}"
    f"{converge_text}"
)

# %% [markdown]
# ## 7. Where this chapter deviates, and why
#
# * **MoME's architecture is a reconstruction** from its abstract (experts = the five SwinUNETR decoder outputs,
#   an MLP router on [expert features; text code], softmax per voxel, no load-balancing term since none is
#   stated). Every choice is the book's, not the paper's; there are no published MoME numbers to compare with.
# * **MoME's router starts as the Universal Model** (`router_init="universal"`, the book's choice, in the `paper`
#   and quick configurations): its output layer starts at zero weight and a bias that gives `out` the weight 0.95
#   at every voxel and class. A default-initialised router starts near uniform (1/E per expert) and blends the
#   coarse experts into every prediction before it has learnt anything; this start makes MoME a change *from* the
#   Universal Model that training has to earn.
# * **Experts at the quick size**: at 32^3, `dec3` is a 2^3 grid (one value per 16^3 block, coarser than an organ
#   here), so the quick MoME drops it and keeps `dec2` (4^3) to `out`; the `paper` configuration keeps all five
#   (at 96^3, `dec3` is 6^3).
# * **The paired design** (section 3) is the book's: heads trained on a frozen backbone, the same one for both,
#   instead of two models trained end to end. It measures what the router adds on given features; it does not
#   measure what MoME's loss would do to the backbone if it were trained through the router.
# * **Text embeddings**: the quick profile embeds the prompts with MiniLM (384-d), since CLIP's weights cannot be
#   downloaded here; the `paper` profile reads CLIP ViT-B/32 embeddings (`txt_encoding.pth`, 32 x 512) or computes
#   them from a local CLIP folder.
# * **Data of the `paper` profile**: `data_scripts/prepare_universal.py` builds AMOS (`09`), the six MSD CT tasks
#   (`10_03` ... `10_10`) and TotalSegmentator v2 (`15`, our label transfer) in the Universal Model's layout, with a
#   patient-level split of its own. These are not the 3,410 scans of the Universal Model or MoME: BTCV, Pancreas-CT,
#   CHAOS, LiTS, KiTS, WORD, AbdomenCT-1K, CT-ORG and AbdomenCT-12organ need an account, a request or a conversion
#   (`--list` says how); their reference lists can be used where the files exist.
# * **Paper profile's training**: as the Universal Model's `train.py`: AdamW 1e-4, weight decay 1e-5, 2,000 epochs
#   with 100 of linear warm-up and cosine decay (stepped before each epoch, as there), its augmentations, batch 2
#   patches on one GPU instead of 8 GPUs x 1 volume x 2 crops. One epoch here is one crop per training volume.
# * **Pretrained weights**: the book starts from MONAI's self-supervised Swin UNETR encoder weights
#   (`model_swinvit.pt`, loaded with `SwinUNETR.load_from`, encoder only), while the Universal Model's README names
#   `swin_unetr.base_5000ep_f48_lr2e-4_pretrained.pt`. The book did not verify that the two files hold the same
#   weights.
# * **Quick profile**: SwinUNETR with feature size 12, window 4 and group normalisation (the bottleneck of a 32^3
#   patch is one voxel, which instance normalisation cannot normalise in training), whole 32^3 phantom volumes,
#   6 classes, 3 seeds. The backbone (the Universal Model end to end): 90 steps of batch 2 at lr 3e-3 from random
#   weights, no augmentation, constant learning rate. Every head: 6 epochs of 2 passes over the 18 cached
#   training volumes (108 steps of batch 2) at lr 3e-3; the loss curves of section 3 show how far the heads got.
# * **Rehearsal profile** (`--profile rehearsal`, in `make test`): the `paper` profile's code path on tiny fixtures
#   in the real formats (`medmoe.papers.mome.fixtures`: NIfTI volumes and dataset lists in the Universal Model's
#   layout, a `txt_encoding.pth`, a `model_swinvit.pt`-format checkpoint), with the `_test` Swin UNETR (feature size
#   12, one block per stage), 16^3 volumes, 2 epochs and 1 head epoch. Only sizes change; its numbers mean
#   nothing.
# * **Label transfer** happens after resampling (`medmoe.papers.mome.data`), not at native resolution as the
#   reference code; no organ-specific post-processing at inference.
# * **Held-out generalisation** on the phantoms is a source whose labels were never seen in training *and* whose
#   images come from a shifted "scanner"; the classes it labels are learnt from other sources.

# %% [markdown]
# ## Summary
#
# * **The Universal Model's class-specific head.** One network segments every class: a controller turns
#   [image code; class text code] into the 153 weights of a tiny 8 &rarr; 8 &rarr; 8 &rarr; 1 head per class, so the
#   class is named by its prompt, not by an output channel {cite:p}`liu2023universal`.
# * **MoME, as the book reconstructs it.** The experts are the decoder's scales; a text-guided router gives, for
#   every class and voxel, softmax weights $w_{c,e}(x)$ over them, and the class's head reads the fused
#   $F_c(x) = \sum_e w_{c,e}(x) E_e(x)$. The routing is dense (every expert runs at every voxel) and has no balance
#   loss. You checked both equations by hand on a toy batch.
# * **Partial labels.** Each source annotates only some organs; the loss is Dice + BCE over the labelled
#   (volume, class) pairs only, and an unlabelled class gets exactly zero gradient.
# * **A paired comparison.** Training two backbones would compare seeds as much as routers; training the two
#   heads on one frozen backbone per seed isolates what the router adds. A router weight is not a contribution: the
#   expert shares of section 5 measure the fused feature itself.
#
# What this run measured (generated from its numbers):

# %% tags=["remove-input"]
summary = [f"* **Headline.** {claim_sentence(claims[0])}"]
if len(claims) > 1 and claims[1]["claim"].startswith("On a source held out"):
    summary.append(f"* **Held-out source.** {claim_sentence(claims[1])}")
if e2e is not None:
    summary.append(f"* The end-to-end Universal Model that every head starts from scores {e2e['test']:.3f} mean Dice "
                   "on the in-domain test volumes.")
if w_out is not None:
    summary.append(f"* **The router.** It started at w(out) = {start_w:.2f}; after training, `out` keeps a mean weight "
                   f"of {w_out.mean():.3f} inside the organs of the drawn volume (from {w_out.min():.3f} to "
                   f"{w_out.max():.3f} over the seeds), against the uniform {uniform:.2f}.")
side_claims = [r for r in claims if r["claim"].startswith("Kidney heads")]
if side_claims:
    summary.append("* **Kidney sides** (own side against the other, mean Dice over seeds): " + "; ".join(
        f"{r['claim'][len('Kidney heads ('):r['claim'].index(')')]} {r['treatment']['mean']:.3f} vs "
        f"{r['control']['mean']:.3f}, {r['verdict']}" for r in side_claims) + ".")
markdown("\n".join(summary))

# %% [markdown]
# ## Exercises
#
# Each command reruns the chapter in the quick profile with one or more parameters changed (a few minutes on a
# CPU; `n_seeds` and the epochs scale the time), and writes to `runs/quick/04_mome/`, replacing this build's record there
# (Chapter 5 reads that folder); add `--out runs/exercises/<name>` to keep both.
#
# 1. `medmoe run notebooks/04_mome.py -p held_out_shift "[1.0, 0.0]"`: the held-out source is scanned like the
#    training sources. Compare `dice_held_out_*[spleen]` with `dice_test_*[spleen]` in the run's `metrics.json`:
#    whatever gap is left comes from the source never being trained on, not from the scanner. Was MoME's head
#    better or worse than the Universal head under the shift, and does that change without it?
# 2. `medmoe run notebooks/04_mome.py -p head_epochs 12`: twice the head training. Watch the router's per-seed
#    weights in section 5: does w(out) leave its start of 0.95, and does the headline Δ become consistent across
#    seeds? If the router barely moves, the two heads stay close to the same function by construction.
# 3. `medmoe run notebooks/04_mome.py -p n_seeds 6`: more paired seeds for the same claims. The verdict rule needs
#    a one-sided p < 0.05; see whether the headline's Δ and its spread change, or only p.
# 4. `medmoe run notebooks/04_mome.py -p held_out kidney -p train_sources liver_tumour,spleen,multi_organ`: hold
#    out the kidney source instead of the spleen. The kidneys are still learnt from `multi_organ`; the held-out
#    claim now scores both kidneys, whose prompts differ in one word (section 4).
# 5. `medmoe run notebooks/04_mome.py -p epochs 20`: a better-trained backbone. Does the end-to-end Dice rise, and
#    does the router add more, or less, on the better features it fuses?

# %% tags=["hide-cell"]
metrics = {"seeds": seeds, "classes": classes, "design": "paired heads on one frozen backbone per seed"}
tags = {"universal": "universal", "mome": "mome", "end-to-end": "end_to_end", "centred": "universal_centred",
        "learned": "universal_learned"}
for (split, arm), r in per_seed.groupby(["split", "arm"]).agg(["mean", "std"]).iterrows():
    metrics[f"dice_{split}_{tags[arm]}"] = float(r["mean"])
    metrics[f"dice_{split}_{tags[arm]}_sd"] = float(r["std"])
for (split, organ, arm), d in ev.groupby(["split", "organ", "arm"]).Dice.mean().items():
    metrics[f"dice_{split}_{tags[arm]}[{organ}]"] = float(d)
metrics["delta_test_mome_minus_universal"] = claims[0]["delta"]["values"]
metrics["params_m"] = {n: float(params.loc[n, "parameters (M)"]) for n in params.index}
metrics["router_weights_inside"] = {k: [float(x) for x in v] for k, v in weights_table.iterrows()}
metrics["router_weights_inside_per_seed"] = {int(s): [float(x) for x in v] for s, v in moved.iterrows()}
if sides is not None:
    metrics["kidney_sides"] = sides.drop(columns="head").to_dict(orient="records")
save_results(run_dir, metrics, history=histories, claims=claims)
print(f"saved {len(metrics)} metrics and {len(claims)} claims to {run_dir.name}/")
