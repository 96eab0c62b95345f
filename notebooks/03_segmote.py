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
# # Chapter 3 &mdash; SegMoTE: token-level experts inside a frozen SAM
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmoe-book/medmoe-book/blob/main/notebooks/03_segmote.ipynb)
#
# **The paper.** Lu et al., *SegMoTE: Token-Level Mixture of Experts for Medical Image Segmentation*
# {cite:p}`lu2026segmote`. SAM is a strong promptable segmenter, but adapting it to medical images by fine-tuning
# its decoder shifts it away from what it learned. SegMoTE keeps **all of SAM frozen** and adds:
#
# 1. a few learnable **expert tokens** next to SAM's output tokens, updated in every decoder layer by a
#    **mixture of token experts** (MoTE): a noisy top-1 router picks an expert for each token, the most confident
#    token is the one whose mask is predicted, and a load-balancing loss keeps the experts in use (Eq. 1&ndash;11);
# 2. **Progressive Prompt Tokenization** (PPT): learnable queries turn the image into prompt tokens, so binary tasks
#    such as skin lesions need no click or box.
#
# It claims that the selected tokens follow the modality (Fig. 6a, 7), that about 17 M learnable parameters
# (Table 3) beat fully fine-tuned medical SAMs out of domain (Table 1), and that PPT segments without prompts
# (Table 4).
#
# **What this chapter runs, and what is a stand-in.** SAM's weights cannot be downloaded here. The `quick`
# profile therefore builds a *small SAM from segment-anything's own modules*, pretrains it briefly on phantoms with
# SAM's box and point prompting, and freezes it: **this stand-in plays the role of the foundation model**. SegMoTE is
# then trained on top of it, on five phantom modalities, three seeds, on a CPU. The `paper` profile runs the same
# cells on the real SAM ViT-B (`sam_checkpoint`, position embeddings resized to 512 px) and on data in the IMIS-Bench
# layout (`medmoe.papers.segmote.data`, built by `data_scripts/build_medseg_hq.py`): training on the in-domain folders, box,
# point and prompt-free Dice on the in-domain and out-of-domain ones (Tables 1 and 4). It needs a GPU and the
# downloads, and has not been run for this book.

# %% tags=["remove-cell"]
# Colab only: install the book's library when this notebook runs on Colab (Colab's own torch is kept).
import sys

if "google.colab" in sys.modules:
    # !pip install -q "medmoe[offline-text] @ git+https://github.com/medmoe-book/medmoe-book"
    pass

# %% tags=["parameters"]
# Parameters. `medmoe run notebooks/03_segmote.py --profile quick -p num_experts 8` overrides them;
# the profiles (quick / smoke / paper) live in medmoe/papers/segmote/card.yaml.
profile = "quick"
run_dir = "runs/interactive/03_segmote"
run_key = None  # injected by the runner: a hash of every parameter and the medmoe version
seed = 0                     # the seeds used are seed, seed + 1, ..., n_seeds of them
n_seeds = 3
config = "segmote_quick"     # medmoe.papers.segmote.model.CONFIGS: segmote_quick | segmote_paper
sam_checkpoint = ""          # paper profile: sam_vit_b_01ec64.pth; empty pretrains the quick stand-in
dataset = "phantoms"         # phantoms | imis (folders in the IMIS-Bench layout under data_root)
data_root = ""               # imis: e.g. data/medseg_hq, as data_scripts/build_medseg_hq.py writes it
train_codes = ""             # imis: comma-separated <CODE> folders to train on ("": every folder with training data
                             # except those not in MedSeg-HQ, medmoe.papers.segmote.data.NOT_IN_MEDSEG_HQ: chaos_ct)
test_codes = ""              # imis: folders to evaluate on ("": every folder)
cache = True                 # cache the frozen image embeddings in memory (False: encode every batch)
image_size = 128
n_train = 300                # phantom images (each gives one item per class present)
n_test = 100
num_experts = 4              # E, experts per MoTE (Fig. 6b varies it)
num_expert_tokens = 4        # T
ppt_queries = 2              # Q, PPT's queries (Table 4: 2, 4, 8)
standin_epochs = 5
standin_lr = 1e-3
epochs = 4
batch_size = 32
lr = 1e-3
weight_decay = 1e-5          # AdamW's weight decay, the code's 1e-5 (train.py --weight_decay)
lr_milestones = ""           # e.g. "7,12": halve the learning rate after these epochs (the paper's schedule)
balance_weight = 0.01
loss = "dice_bce"            # dice_bce, or focal_dice for the code's 20 x focal + Dice
device = "auto"

# %%
# %matplotlib inline
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown

from medmoe.data.phantoms import MODALITIES, PhantomDataset2D
from medmoe.moe import contingency, nmi_permutation_baseline
from medmoe.papers.segmote import build, count, evaluate, train
from medmoe.papers.segmote.data import (
    NOT_IN_MEDSEG_HQ,
    EmbeddingTasks,
    IMISDataset,
    IMISSegTasks,
    MultiDatasetIMIS,
    PhantomSegTasks,
    cache_embeddings,
)
from medmoe.papers.segmote.model import load_sam_checkpoint
from medmoe.papers.segmote.recipe import box_from_mask
from medmoe.repro import checkpoint_dir, save_results
from medmoe.utils import count_parameters, resolve_device, seed_everything

seed_everything(seed)
dev = resolve_device(device)
run_dir = Path(run_dir)
ckpt = checkpoint_dir(run_dir, run_key)
seeds = [seed + i for i in range(n_seeds)]
print(f"profile {profile}: config {config}, E={num_experts}, T={num_expert_tokens}, seeds {seeds}, device {dev}")

# %% [markdown]
# ## 1. Data: one item per (image, class)
#
# The reference code prompts every class present in an image separately, and scores Dice per class per image. The
# phantom tasks: lungs, heart and lesions on chest X-ray; lungs, heart, bone and lesions on CT; CSF, grey and white
# matter and lesions on MRI; organ and lesions on ultrasound; skin lesions on dermoscopy. Two binary tasks play the
# paper's "group A" that PPT serves (ISIC skin lesions, SZ-CXR lungs): `derm/lesion` and `cxr/lungs`.

# %%
def codes(text):
    return [c.strip() for c in text.split(",") if c.strip()] or None


if dataset == "phantoms":
    images = {s: PhantomDataset2D(n=n, modalities=MODALITIES, size=image_size, seed=seed + off, channels=3)
              for s, n, off in (("train", n_train, 0), ("test", n_test, 1))}
    tasks = {s: PhantomSegTasks(d) for s, d in images.items()}
elif dataset == "imis":
    if not data_root:
        raise ValueError("dataset='imis' needs data_root: the folder holding <CODE>/dataset.json folders")
    train_list = codes(train_codes) or [c.name for c in sorted(Path(data_root).iterdir())
                                        if (c / "dataset.json").is_file() and c.name not in NOT_IN_MEDSEG_HQ
                                        and IMISDataset(root=c, split="training", size=image_size).records]
    print("training on", train_list)
    tasks = {"train": IMISSegTasks(MultiDatasetIMIS(root=data_root, codes=train_list, split="training", size=image_size)),
             "test": IMISSegTasks(MultiDatasetIMIS(root=data_root, codes=codes(test_codes), split="test", size=image_size))}
else:
    raise ValueError(f"dataset must be 'phantoms' or 'imis', got {dataset!r}")
groups = tasks["test"].modalities  # phantom modalities, or data set codes
counts = pd.Series([tasks["train"].class_names[tasks["train"][k]["class_index"]] for k in range(len(tasks["train"]))]).value_counts()
print({s: len(t) for s, t in tasks.items()}, "items;", len(counts), "classes")
fig, axes = plt.subplots(1, len(groups), figsize=(2.4 * len(groups), 2.6), squeeze=False)
for ax, m in zip(axes[0], groups):
    k = next(k for k in range(len(tasks["test"])) if tasks["test"].items[k][1] == m)
    item = tasks["test"][k]
    ax.imshow(item["image"].permute(1, 2, 0).numpy(), cmap="gray")
    ax.contour(item["mask"][0].numpy(), levels=[0.5], colors="red", linewidths=1)
    ax.set_title(tasks["test"].class_names[item["class_index"]], fontsize=8)
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## 2. The frozen foundation model
#
# The stand-in SAM is `segment-anything`'s `ImageEncoderViT`, `PromptEncoder` and `MaskDecoder` at a small size
# (4 ViT blocks of width 96, patch 8, a 64-wide decoder), trained end to end with a box or a point per item (Dice +
# BCE) and then frozen. With `sam_checkpoint` (and `config="segmote_paper"`, `image_size=512`) the real SAM ViT-B is loaded
# instead, its position embeddings resized to 512 px as SegMoTE runs it.

# %%
base = build(config, image_size=image_size, num_experts=num_experts, num_expert_tokens=num_expert_tokens,
             ppt_queries=ppt_queries)
sam = base.sam
if sam_checkpoint:
    print("resized:", load_sam_checkpoint(sam, sam_checkpoint).resized)
else:
    # medmoe.papers.segmote.recipe.train, stage "sam_pretrain": every SAM weight trains, a box or a point per item
    seed_everything(seed)
    fit_sam = train(sam, tasks["train"], stage="sam_pretrain", out_dir=ckpt / "standin", epochs=standin_epochs,
                    lr=standin_lr, batch_size=16, seed=seed, run_key=run_key)
    print("stand-in SAM training loss per epoch:", [round(h["train_loss"], 3) for h in fit_sam.history])
base.freeze_sam()
sam_state = {k: v.detach().cpu().clone() for k, v in sam.state_dict().items()}
print(f"SAM: {count_parameters(sam) / 1e6:.2f} M parameters, {count_parameters(sam, trainable_only=True)} trainable")

# %% [markdown]
# ## 3. Where the expert tokens enter, and what trains
#
# The decoder's token sequence is `[iou, mask x 4, expert x T, prompt ...]`. In each of the two two-way layers the
# expert tokens skip SAM's MLP and pass through a MoTE: router logits $L = XW_g$ (Eq. 1) with noise
# $(\mathrm{softplus}(XW_n) + 0.01)\,Z$ in training (Eq. 2), top-1 expert per token, the token whose top logit is
# largest is the image's selected token (Eq. 3&ndash;4), and the expert's output weighted by its softmax confidence
# replaces the token (Eq. 5&ndash;6). The mask is the selected token's, from the last layer. Only the new modules
# train. **The `paper` profile's configuration, `segmote_paper` (SAM ViT-B's 256-wide decoder, as the paper's text
# describes), trains 2.47 M parameters, not the paper's 17 M**: Table 3's count is that of the released code, built on
# IMIS-Net's 768-wide decoder (`segmote_paper_imis`, the first row below). PPT's `Q` queries (`ppt_queries`, 2 in the
# paper; Table 4 also tries 4 and 8) replace the sparse prompt tokens; a batch that mixes PPT rows with box or point
# rows pads the shorter rows with SAM's own not-a-point token.

# %%
# The paper's two widths (built on the meta device: only their sizes matter here) and this run's model, counted by
# medmoe.papers.segmote.recipe.count.
param_rows = []
for name in dict.fromkeys(("segmote_paper_imis", "segmote_paper", config)):  # config may be one of the two
    if name == config:
        n_par = count(base)
    else:
        with torch.device("meta"):  # no memory, no initialisation
            n_par = count(build(name))
    param_rows.append({"configuration": name, "SAM (frozen, M)": n_par["sam"] / 1e6,
                       "MoTE side (M)": n_par["mote_side"] / 1e6, "PPT (M)": n_par["ppt"] / 1e6,
                       "learnable (M)": n_par["trainable"] / 1e6})
param_rows.append({"configuration": "paper, Table 3", "MoTE side (M)": 10.0, "PPT (M)": 7.0, "learnable (M)": 17.0})
params = pd.DataFrame(param_rows).set_index("configuration")
print(f"this run's {config} trains {params.loc[config, 'learnable (M)']:.2f} M parameters; the paper's Table 3: 17 M "
      f"(segmote_paper, the paper profile's configuration: {params.loc['segmote_paper', 'learnable (M)']:.2f} M)")
params.round(3)

# %% [markdown]
# ## 4. Training SegMoTE on the frozen model
#
# The frozen image encoder runs once per image and its embeddings are cached. For every item a prompt kind is drawn
# as the code does (box 0.4, point 0.3, and for group-A items the prompt-free PPT path 0.3), and the loss is
# $L_{seg} + 0.01\,L_{balance}$ (Eq. 11).

# %%
base.freeze_sam()
base.to(dev)
data = {s: EmbeddingTasks(t, cache_embeddings(base, t) if cache else None) for s, t in tasks.items()}
milestones = [int(e) for e in codes(lr_milestones) or []]
models, histories, evals = {}, {}, []
prompts = ("box", "point") + (("free",) if any(tasks["test"].is_group_a(k) for k in range(len(tasks["test"]))) else ())
for s in seeds:
    seed_everything(s)
    m = build(config, backbone=sam, image_size=image_size, num_experts=num_experts, num_expert_tokens=num_expert_tokens,
              ppt_queries=ppt_queries)
    # medmoe.papers.segmote.recipe.train, stage "segmote": AdamW (weight decay 1e-5, as the code) on the new modules,
    # L_seg + balance_weight L_balance
    res = train(m, data["train"], stage="segmote", out_dir=ckpt / f"seed{s}", epochs=epochs, lr=lr, batch_size=batch_size,
                seed=s, run_key=run_key, loss=loss, balance_weight=balance_weight, lr_milestones=milestones,
                weight_decay=weight_decay)
    models[s], histories[s] = m.eval(), res.history
    for prompt in prompts:
        r = evaluate(m, data["test"], prompt=prompt, seed=s)
        evals.append({"seed": s, "prompt": prompt, "dice": r["dice"], "per_class": r["per_class"].tolist(), "rows": r["rows"]})
    print(f"seed {s}: " + ", ".join(f"{e['prompt']} Dice {e['dice']:.3f}" for e in evals if e["seed"] == s))
unchanged = all(torch.equal(sam_state[k], v.cpu()) for k, v in sam.state_dict().items())
print("SAM weights bitwise unchanged after training:", unchanged)
hist = pd.DataFrame([{"seed": s, **h} for s, hs in histories.items() for h in hs])
fig, ax = plt.subplots(1, 2, figsize=(9, 2.8))
sns.lineplot(data=hist, x="epoch", y="train_seg", hue="seed", ax=ax[0], palette="tab10")
sns.lineplot(data=hist, x="epoch", y="train_balance", hue="seed", ax=ax[1], palette="tab10", legend=False)
ax[0].set_title("L_seg (train)", fontsize=9)
ax[1].set_title("L_balance (train, last layer)", fontsize=9)
fig.tight_layout()

# %% [markdown]
# ## 5. Box, point or no prompt (Table 4)
#
# Dice per class per image at the phantoms' resolution, averaged over the classes of an image and then over images
# (the reference code's "Image Avg Dice"). Prompt-free is evaluated on the group-A tasks only, as PPT is meant for
# them; the box and point rows cover every class.

# %%
ev = pd.DataFrame([{k: v for k, v in e.items() if k not in ("rows", "per_class")} for e in evals])
table4 = ev.groupby("prompt", sort=False).dice.agg(["mean", "std"]).rename(columns={"mean": "Dice", "std": "sd"})
table4.round(3)

# %% [markdown]
# **Per modality (per data set in the `paper` profile).** The paper's per-data-set numbers (Tables 1 and 4) are
# the mean over a data set's classes of each class's Dice, itself averaged over the images that contain the class;
# the same here, mean over seeds.

# %%
names = tasks["test"].class_names
per_class = pd.DataFrame([{"seed": e["seed"], "prompt": e["prompt"], "group": names[c].split("/")[0], "class": names[c], "Dice": d}
                          for e in evals for c, d in enumerate(e["per_class"]) if d == d])
per_group = (per_class.groupby(["prompt", "group", "seed"], sort=False).Dice.mean()  # mean over a group's classes
             .groupby(["group", "prompt"], sort=False).mean().unstack("prompt"))
per_group.round(3)

# %% [markdown]
# ## 6. Which token is selected, per modality (Fig. 6a) and per layer (Fig. 7)
#
# For every test item, box prompts: the selected expert token, and the expert each MoTE layer chose for that token.
# The normalised mutual information $I(\text{token}; \text{modality}) / H(\text{modality})$ is compared with a random
# routing baseline: the same token counts, shuffled over the items (100 permutations).

# %%
# medmoe.moe.nmi_permutation_baseline: NMI and its mean and 95th percentile over 100 permutations
sel_rows = []
for e in evals:
    if e["prompt"] == "box":
        mod = torch.tensor([r["modality"] for r in e["rows"]])
        real, rnd, p95 = nmi_permutation_baseline(torch.tensor([r["selected"] for r in e["rows"]]), mod, n_perm=100,
                                                  seed=e["seed"])
        real_e, rnd_e, p95_e = nmi_permutation_baseline(torch.tensor([r["experts"][-1] for r in e["rows"]]), mod,
                                                        n_perm=100, seed=e["seed"])
        sel_rows.append({"seed": e["seed"], "NMI(token; modality)": real, "random routing (mean)": rnd, "random 95th pct": p95,
                         "NMI(last-layer expert; modality)": real_e, "random (mean), expert": rnd_e})
selection = pd.DataFrame(sel_rows).set_index("seed")
last_box = next(e for e in evals if e["prompt"] == "box" and e["seed"] == seeds[-1])
sel = torch.tensor([r["selected"] for r in last_box["rows"]])
mod = torch.tensor([r["modality"] for r in last_box["rows"]])
table = contingency(mod, sel, num_a=len(groups), num_b=num_expert_tokens)
share = (table / table.sum(1, keepdim=True)).numpy()
n_layers = len(last_box["rows"][0]["experts"])
fig, axes = plt.subplots(1, 1 + n_layers, figsize=(4 + 3.2 * n_layers, 2.8))
sns.heatmap(share, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=axes[0],
            yticklabels=list(groups), xticklabels=[f"token {t}" for t in range(num_expert_tokens)])
axes[0].set_title("selected token share per modality", fontsize=9)
for layer in range(n_layers):
    ex = torch.tensor([r["experts"][layer] for r in last_box["rows"]])
    t2 = contingency(mod, ex, num_a=len(groups), num_b=num_experts)
    sns.heatmap((t2 / t2.sum(1, keepdim=True)).numpy(), annot=True, fmt=".2f", cmap="Greens", vmin=0, vmax=1, cbar=False,
                ax=axes[1 + layer], yticklabels=list(groups), xticklabels=[f"E{k}" for k in range(num_experts)])
    axes[1 + layer].set_title(f"layer {layer + 1}: expert of the selected token", fontsize=9)
fig.suptitle(f"box prompts, seed {seeds[-1]}", fontsize=9)
fig.tight_layout()
selection.round(3)

# %% [markdown]
# **Routing per token, as in Fig. 7.** One test item per modality with its box prompt (red). Each expert token
# predicts its own mask, drawn as a heat map (sigmoid of its logits): these are the tokens' "responsibility
# regions". The title gives the expert the last MoTE layer routed the token to and that expert's routing
# probability; the selected token, whose mask is the output, is marked with a check.

# %%
m_last = models[seeds[-1]]
fig, axes = plt.subplots(len(groups), 2 + num_expert_tokens, figsize=(1.9 * (2 + num_expert_tokens), 1.9 * len(groups)), squeeze=False)
for row, m_name in zip(axes, groups):
    k = next(k for k in range(len(tasks["test"])) if tasks["test"].items[k][1] == m_name)
    item, d = tasks["test"][k], data["test"][k]
    box = box_from_mask(item["mask"][0])[None]
    with torch.no_grad():
        emb, early = (d["emb"][None], d["early"][None]) if "emb" in d else m_last.encode(item["image"][None].to(dev))
        out = m_last(emb.to(dev), early.to(dev), boxes=box.to(dev))
    gate = out.motes[-1].gate
    sel = int(out.selected[0])
    row[0].imshow(item["image"].permute(1, 2, 0).numpy(), cmap="gray")
    row[0].add_patch(plt.Rectangle(box[0, :2].tolist(), *(box[0, 2:] - box[0, :2]).tolist(), fill=False, color="red"))
    row[0].set_title(tasks["test"].class_names[item["class_index"]], fontsize=7)
    row[1].imshow(m_last.upscale(out.masks, size=tuple(item["mask"].shape[-2:]))[0, 0].cpu().numpy() > 0, cmap="gray")
    row[1].set_title(f"output (token {sel})", fontsize=7)
    for t in range(num_expert_tokens):
        e = int(gate.indices[0, t, 0])
        row[2 + t].imshow(torch.sigmoid(out.expert_masks[0, t]).cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
        row[2 + t].set_title(f"token {t}: E{e}, p={float(gate.probs[0, t, e]):.2f}" + (" \u2713" if t == sel else ""), fontsize=7,
                             color="green" if t == sel else "black")
    for a in row:
        a.axis("off")
fig.tight_layout()

# %%
mean_conf = float(np.mean([c for e in evals if e["prompt"] == "box" for r in e["rows"] for c in r["confidence"]]))


def dice_text(prompt):
    return f"**{table4.loc[prompt, 'Dice']:.3f} ± {table4.loc[prompt, 'sd']:.3f}**" if prompt in table4.index else "not evaluated (no group-A task)"


Markdown(
    f"Over {len(seeds)} seeds, SegMoTE on the frozen {'SAM' if sam_checkpoint else 'stand-in'} reaches Dice {dice_text('box')} "
    f"with box prompts and {dice_text('point')} with one point; prompt-free (PPT) on the group-A tasks: {dice_text('free')}. "
    f"The selected token carries NMI **{selection['NMI(token; modality)'].mean():.3f}** of the {'modality' if dataset == 'phantoms' else 'data set'}, "
    f"against **{selection['random routing (mean)'].mean():.3f}** for the same tokens shuffled at random (95th percentile "
    f"{selection['random 95th pct'].mean():.3f}). The last MoTE layer routes each token with a probability of "
    f"**{mean_conf:.2f}** on average for its chosen expert, against {1 / num_experts:.2f} for a uniform router: the router, "
    f"zero-initialised as in the code, has moved only a little in {epochs} epochs, which is why the tokens' masks in the "
    f"figure above are so alike. SAM's weights were bitwise unchanged by training: **{unchanged}**."
)

# %% [markdown]
# ## 7. Where this chapter deviates from the paper, and why
#
# * **The foundation model is a stand-in** in the quick profile: a small SAM from segment-anything's modules,
#   pretrained for a few epochs on the phantoms with Dice + BCE (the code's 20 x focal + Dice collapsed to background
#   at this size and budget). Nothing here says how SegMoTE does on top of the real SAM.
# * **Confidence weighting.** Eq. (5) is a softmax of a single logit, identically 1, and one public version of the
#   code has exactly that, so its router gets no gradient. The book multiplies the expert output by the softmax over
#   all experts' (noisy) logits at the chosen expert, so the router learns (our proposal, neither the paper's nor
#   the code's; the other public version of the code passes gradient through the same softmax with a
#   straight-through estimator whose forward value stays 1).
# * **Balance loss** over batch and tokens, as Eq. (7) writes it (the code sums importance over the batch only).
# * **Width.** The paper describes SAM-B's 256-wide decoder; the code is built on IMIS-Net's 768-wide decoder. Both
#   are configurations here (`segmote_paper`, `segmote_paper_imis`; formerly `sam_b`, `imis_like`). The `paper`
#   profile runs `segmote_paper`, which trains **2.47 M** parameters against the paper's 17 M (Table 3); the registry
#   says so next to its Table 3 cells.
# * **Loss.** The code's segmentation loss is 20 x focal + Dice + an IoU regression on a frozen head; the quick profile
#   trains with Dice + BCE by default (`loss="focal_dice"` is the code's two main terms). No pseudo-label branch, no
#   interactive refinement iterations, no CLIP text prompts (PPT replaces the code's text prompt for group A).
# * **Data.** Phantoms instead of MedSeg-HQ (unreleased); `medmoe.papers.segmote.data` reads the IMIS-Bench layout and
#   `data_scripts/build_medseg_hq.py` assembles a MedSeg-HQ-like set from public sources (ISIC 2018, SZ-CXR, CHAOS,
#   AMOS) and the out-of-domain ISLES 2022 (DWI), SegTHOR and TotalSegmentator-MRI. CHAOS CT is not a MedSeg-HQ
#   source (MedSeg-HQ has CHAOS T1 and T2): the script can build it, but the chapter does not train on it unless it is
#   named in `train_codes`. In the `paper` profile the "modality" of the selection statistics is the data set folder.
# * **SegTHOR's number** (Table 1): the paper reports an average of 83.39, but its own organ values (81.84, 74.51,
#   87.40, 80.53) average to 81.07; this chapter computes the organ average, and its registry cell says which number
#   it is compared with.
# * **Metric.** Dice per class per image at the ground truth's stored resolution (the logits upsampled bilinearly,
#   thresholded at 0), averaged over an image's classes, then over images; for the phantoms the stored resolution is
#   the input's. Per-data-set numbers average the per-class Dice over a data set's classes.
# * **Training schedule** (`paper` profile): AdamW at 1e-4 with weight decay 1e-5, halved after epochs 7 and 12 (the
#   paper's schedule; it says Adam, the code uses AdamW with `--weight_decay 1e-5`, not torch's default 0.01), batch
#   10 on one GPU; the paper does not state the number of epochs (20 here).
# * **Fig. 7** draws each expert token's own mask as its responsibility region; the paper does not say how its
#   heat maps are computed.

# %%
metrics = {
    "seeds": seeds,
    **{f"dice_{name}{suffix}": float(table4.loc[prompt, col]) for prompt, name in (("box", "box"), ("point", "point"), ("free", "prompt_free"))
       if prompt in table4.index for suffix, col in (("", "Dice"), ("_sd", "sd"))},
    **{f"dice_{prompt}_{group}": float(v) for group, row in per_group.iterrows() for prompt, v in row.items() if v == v},
    "nmi_token_modality": float(selection["NMI(token; modality)"].mean()),
    "nmi_token_modality_random": float(selection["random routing (mean)"].mean()),
    "nmi_expert_modality": float(selection["NMI(last-layer expert; modality)"].mean()),
    "router_confidence_last_layer": mean_conf,
    "sam_unchanged": bool(unchanged),
    "trainable_params_m": float(params.loc[config, "learnable (M)"]),
    "imis_like_trainable_params_m": float(params.loc["segmote_paper_imis", "learnable (M)"]),
    "sam_b_trainable_params_m": float(params.loc["segmote_paper", "learnable (M)"]),
}
save_results(run_dir, metrics, evaluations=[{k: v for k, v in e.items() if k != "rows"} for e in evals])
print(f"saved {len(metrics)} metrics to {run_dir}")
