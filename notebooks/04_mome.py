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
# | vision branch | "multi-scale decoder-layer experts" | the five decoder outputs of MONAI's SwinUNETR (`dec3` ... `out`), each projected to 8 channels and upsampled: **reconstructed** |
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

# %% tags=["remove-cell"]
# Colab only: install the book's library when this notebook runs on Colab (Colab's own torch is kept).
import sys

if "google.colab" in sys.modules:
    # !pip install -q "medmoe[offline-text] @ git+https://github.com/medmoe-book/medmoe-book"
    pass

# %% tags=["parameters"]
# Parameters. `medmoe run notebooks/04_mome.py --profile quick -p held_out kidney` overrides them;
# the profiles (quick / smoke / paper / rehearsal) live in medmoe/papers/mome/card.yaml.
profile = "quick"
run_dir = "runs/interactive/04_mome"
run_key = None  # injected by the runner: a hash of every parameter and the medmoe version
seed = 0                       # the seeds used are seed, seed + 1, ..., n_seeds of them
n_seeds = 3
base_config = "universal_quick"   # medmoe.papers.mome.model.CONFIGS
mome_config = "mome_quick"
text_encoder = "minilm"        # minilm | a (C, D) .pth of class embeddings (txt_encoding.pth) | a local CLIP folder
pretrained = ""                # model_swinvit.pt-format self-supervised Swin weights (MONAI load_from); empty = random init
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
sw_overlap = 0.5
device = "auto"

# %%
# %matplotlib inline
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display

from medmoe.data.phantoms import CLASSES_3D, SOURCE_DATASETS
from medmoe.env import environment
from medmoe.metrics import binary_dice
from medmoe.papers.mome import build, class_text_embeddings, count, evaluate, train
from medmoe.papers.mome.data import UNIVERSAL_CLASSES, PhantomCT, RandomPatches, UniversalDataset
from medmoe.papers.mome.model import CONFIGS, DECODER_LEVELS
from medmoe.repro import checkpoint_dir, save_results
from medmoe.utils import resolve_device, seed_everything

seed_everything(seed)
run_dir = Path(run_dir)
seeds = [seed + i for i in range(n_seeds)]
dev = resolve_device(device)
print(f"profile {profile}: {dataset} data, {base_config} vs {mome_config}, seeds {seeds}, "
      f"device {environment()['device']}")

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
# 8 channels, upsamples them, and lets a router decide per class and voxel how much each scale contributes:
#
# $$w_{c,e}(x) = \mathrm{softmax}_e\big(W_2\,\mathrm{ReLU}(W_v V(x) + W_t u_c + b_1) + b_2\big),\qquad
#   F_c(x) = \sum_e w_{c,e}(x)\,E_e(x),$$
#
# with $E_e(x)$ expert $e$'s feature, $V(x)$ all of them stacked and $u_c$ the class's text code. $F_c$ replaces
# the Universal Model's single feature map in class $c$'s head.

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
# ## 3. Training both models with partial labels
#
# The loss is Dice + BCE over the (volume, class) pairs whose class the volume's source annotates; every other
# class's output gets **no gradient** (tested in `tests/test_mome.py`). Random patches are drawn 2 : 1 around
# labelled foreground and background (MONAI `RandCropByPosNegLabeld`), as the Universal Model does. Both models
# train the same way (`medmoe.papers.mome.recipe.train`: AdamW, the book's one training loop `medmoe.engine`). The
# `paper` profile adds the rest of the Universal Model's recipe: the Swin encoder starts from self-supervised
# weights (`pretrained`, MONAI's `model_swinvit.pt` read by `SwinUNETR.load_from`; not the file the Universal
# Model's README names, see section 6), the learning rate warms up
# linearly and then decays along a cosine (`schedule="warmup_cosine"`), and the patches are augmented
# (`augment`: `RandZoomd` on the MSD volumes, `RandRotate90d`, `RandShiftIntensityd`).

# %%
text = class_text_embeddings(classes, encoder=text_encoder)
patches = RandomPatches(volumes["train"], patch=CONFIGS[mome_config].roi_size, augment=augment)
ckpt = checkpoint_dir(run_dir, run_key)
models, histories = {}, []
for name in (base_config, mome_config):
    for s in seeds:
        seed_everything(s)
        m = build(name, num_classes=len(classes), text_dim=text.shape[1], pretrained=pretrained or None).to(dev)
        m.set_text_embeddings(text)
        res = train(m, patches, out_dir=ckpt / f"{name}_seed{s}", epochs=epochs, lr=lr, batch_size=batch_size, seed=s,
                    run_key=run_key, weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs)
        models[name, s] = m.eval()
        histories += [{"model": name, "seed": s, **h} for h in res.history]
hist = pd.DataFrame(histories)
fig, ax = plt.subplots(1, 1, figsize=(5, 2.8))
sns.lineplot(data=hist, x="epoch", y="train_loss", hue="model", ax=ax)
ax.set_title("partial-label Dice + BCE (train), mean over seeds", fontsize=9)
fig.tight_layout()

# %% [markdown]
# ## 4. Per-organ Dice (the Universal Model's convention)
#
# Whole test volumes are segmented with MONAI's sliding-window inference (patch = the training patch, overlap
# 0.5, Gaussian blending), sigmoid > 0.5. Dice is computed **per organ per volume** as
# $2TP / (|P| + |G| + 1)$ and averaged per organ over the volumes whose source labels that organ *and* whose ground
# truth contains it (`medmoe.metrics.per_volume_class_dice`): the reference test loop skips an organ absent from a
# volume, so a false positive there is not counted. The overall number is the mean over organs. The router's maps
# are stitched only for the one volume drawn below (at CT size they are classes x experts times the volume).

# %%
# the volume whose router maps are drawn: the test volume whose source labels the most classes (read from the
# dataset's flags, without loading the volumes)
map_volume = max(range(len(volumes["test"])), key=lambda k: (int(volumes["test"].labelled_of(k).sum()), -k))
evals, maps = [], {}
for (name, s), m in models.items():
    for split in [k for k in ("test", "held_out") if k in volumes]:
        drawn = [map_volume] if split == "test" and s == seeds[0] else []
        r = evaluate(m, volumes[split], overlap=sw_overlap, maps_for=drawn)
        if drawn:
            maps[name] = r["maps"][0]
        for c, d in enumerate(r["per_class"]):
            if d == d:
                evals.append({"model": name, "seed": s, "split": split, "organ": classes[c], "Dice": float(d)})
ev = pd.DataFrame(evals)
per_organ = ev.groupby(["split", "organ", "model"], sort=False).Dice.agg(["mean", "std"]).unstack("model")
overall = (ev.groupby(["split", "model", "seed"]).Dice.mean()  # mean over organs, per seed
           .groupby(["split", "model"]).agg(["mean", "std"]).unstack("model"))
display(overall.round(3))
per_organ.round(3)

# %%
fig, axes = plt.subplots(1, len(ev.split.unique()), figsize=(5.5 * len(ev.split.unique()), 3.2), squeeze=False)
for ax, split in zip(axes[0], ev.split.unique()):
    sns.barplot(data=ev[ev.split == split], x="organ", y="Dice", hue="model", errorbar="sd", ax=ax)
    ax.set_title(f"{split}: Dice per organ, mean ± sd over {len(seeds)} seeds", fontsize=9)
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    ax.set_ylim(0, 1)
fig.tight_layout()

# %% [markdown]
# **What the text codes can tell apart.** Every class-specific head, and MoME's router, is told which class it is
# working on only through the class's text embedding. The cosine similarity of the prompt embeddings:

# %%
unit = torch.nn.functional.normalize(text.float(), dim=1)
cosine = pd.DataFrame((unit @ unit.T).numpy(), index=classes, columns=classes)
lower = {c.lower(): c for c in classes}
kidneys = (lower.get("left kidney"), lower.get("right kidney"))
display(cosine.round(3))

side = None
if all(kidneys):  # does a kidney head segment its own side or the other? (the router figure's volume, first seed)
    left, right = classes.index(kidneys[0]), classes.index(kidneys[1])
    side = pd.DataFrame([{"model": n, "head": classes[h],
                          "Dice with its own side": binary_dice(mp_["probability"][h] > 0.5, mp_["label"][h] > 0),
                          "Dice with the other side": binary_dice(mp_["probability"][h] > 0.5, mp_["label"][o] > 0)}
                         for n, mp_ in maps.items() for h, o in ((left, right), (right, left))]
                        ).set_index(["model", "head"])
side.round(3) if side is not None else None

# %% [markdown]
# ## 5. Where the router looks: weights per class over slices
#
# For one test volume (the first seed's models; a volume whose source labels the most organs), the router's weight for each expert (decoder scale) of each
# class, on the axial slice through the class's largest labelled area. Rows are classes, columns experts; each
# pixel is $w_{c,e}(x)$ (the rows sum to 1 over the experts at every pixel).

# %%
mp = maps[mome_config]
experts = CONFIGS[mome_config].experts
router = mp["router"]  # (C, E, D, H, W)
shown = [c for c in range(len(classes)) if mp["label"][c].any()]
if not shown:
    raise ValueError(f"the drawn test volume (index {map_volume}) has no labelled organ in its ground truth")
fig, axes = plt.subplots(len(shown), 2 + len(experts), figsize=(1.7 * (2 + len(experts)), 1.7 * len(shown)), squeeze=False)
for row, c in zip(axes, shown):
    z = int(mp["label"][c].sum(axis=(1, 2)).argmax())
    row[0].imshow(mp["image"][z], cmap="gray", vmin=0, vmax=1)
    row[0].contour(mp["label"][c][z], levels=[0.5], colors="red", linewidths=0.8)
    row[0].set_title(classes[c], fontsize=7)
    row[1].imshow(mp["probability"][c][z], cmap="magma", vmin=0, vmax=1)
    row[1].set_title("probability", fontsize=7)
    for e, name in enumerate(experts):
        row[2 + e].imshow(router[c, e, z], cmap="viridis", vmin=0, vmax=1)
        row[2 + e].set_title(f"w({name})", fontsize=7)
    for a in row:
        a.axis("off")
fig.tight_layout()

# %% [markdown]
# **The same, summarised:** the mean router weight of each expert inside each organ (labelled voxels) and in the
# background, over the test volume.

# %%
inside = {classes[c]: router[c][:, mp["label"][c] > 0].mean(1) for c in shown}
inside["background (all classes)"] = np.mean([router[c][:, mp["label"].max(0) == 0].mean(1) for c in range(len(classes))], axis=0)
weights_table = pd.DataFrame(inside, index=[f"w({e})" for e in experts]).T
fig, ax = plt.subplots(figsize=(1.2 * len(experts) + 2, 0.45 * len(weights_table) + 1))
sns.heatmap(weights_table, annot=True, fmt=".2f", cmap="viridis", vmin=0, vmax=1, cbar=False, ax=ax)
ax.set_title("mean router weight inside each organ", fontsize=9)
fig.tight_layout()

# %%
mean_tab = ev.groupby(["split", "model", "seed"]).Dice.mean().groupby(["split", "model"]).agg(["mean", "std"])


def dice_of(split, name):
    r = mean_tab.loc[(split, name)]
    return f"**{r['mean']:.3f} ± {r['std']:.3f}**"


winner = max((base_config, mome_config), key=lambda n: mean_tab.loc[("test", n), "mean"])
diff = mean_tab.loc[("test", mome_config), "mean"] - mean_tab.loc[("test", base_config), "mean"]
spread = mean_tab.loc["test", "std"].max()
verdict = (f"the two are within one seed standard deviation of each other (MoME - Universal = {diff:+.3f})" if abs(diff) <= spread
           else f"the higher one here is **{'MoME' if winner == mome_config else 'the Universal Model'}** ({diff:+.3f})")
held = f" On the held-out source: Universal Model {dice_of('held_out', base_config)}, MoME {dice_of('held_out', mome_config)}." \
    if "held_out" in volumes else ""
top = weights_table.drop(index="background (all classes)").idxmax(axis=1).value_counts()
kidney_text = "" if side is None else (
    f" The prompts for the left and the right kidney have cosine **{cosine.loc[kidneys[0], kidneys[1]]:.3f}**, so the "
    f"text-conditioned heads have little to tell the two sides apart: on the volume of the router figure, the kidney heads "
    f"reach Dice {side['Dice with its own side'].mean():.3f} with their own side and {side['Dice with the other side'].mean():.3f} "
    f"with the other side, on average over both models and both heads.")
Markdown(
    f"Mean Dice over organs, {len(seeds)} seeds, in-domain test volumes: Universal Model {dice_of('test', base_config)}, "
    f"MoME {dice_of('test', mome_config)}: {verdict}.{held} "
    f"Inside the organs the router gives the largest weight to {', '.join(f'{k} ({v} organs)' for k, v in top.items())}."
    + kidney_text
)

# %% [markdown]
# ## 6. Where this chapter deviates, and why
#
# * **MoME's architecture is a reconstruction** from its abstract (experts = the five SwinUNETR decoder outputs,
#   an MLP router on [expert features; text code], softmax per voxel, no load-balancing term since none is
#   stated). Every choice is the book's, not the paper's; there are no published MoME numbers to compare with.
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
#   6 classes, 90 steps of batch 2 at lr 3e-3 from random weights, no augmentation, constant learning rate. At this
#   CPU budget both models are far from converged: the small organs are barely learnt, and the comparison below
#   says how the two behave early in training, not how they end.
# * **Rehearsal profile** (`--profile rehearsal`, in `make test`): the `paper` profile's code path on tiny fixtures
#   in the real formats (`medmoe.papers.mome.fixtures`: NIfTI volumes and dataset lists in the Universal Model's
#   layout, a `txt_encoding.pth`, a `model_swinvit.pt`-format checkpoint), with the `_test` Swin UNETR (feature size
#   12, one block per stage), 16^3 volumes and 2 epochs. Only sizes change; its numbers mean nothing.
# * **Label transfer** happens after resampling (`medmoe.papers.mome.data`), not at native resolution as the
#   reference code; no organ-specific post-processing at inference.
# * **Held-out generalisation** on the phantoms is a source whose labels were never seen in training *and* whose
#   images come from a shifted "scanner"; the classes it labels are learnt from other sources.

# %%
metrics = {"seeds": seeds, "classes": classes}
for (split, name), r in mean_tab.iterrows():
    tag = "universal" if name == base_config else "mome"
    metrics[f"dice_{split}_{tag}"] = float(r["mean"])
    metrics[f"dice_{split}_{tag}_sd"] = float(r["std"])
for (split, organ, name), d in ev.groupby(["split", "organ", "model"]).Dice.mean().items():
    metrics[f"dice_{split}_{'universal' if name == base_config else 'mome'}[{organ}]"] = float(d)
metrics["params_m"] = {n: float(params.loc[n, "parameters (M)"]) for n in params.index}
metrics["router_weights_inside"] = {k: [float(x) for x in v] for k, v in weights_table.iterrows()}
save_results(run_dir, metrics, history=histories)
print(f"saved {len(metrics)} metrics to {run_dir}")
