"""MedMoE's recipe: the losses, the pretraining step and the four verbs (build, train, evaluate, count).

Explained in the book: *Chapter 2, MedMoE* (``chapters/02_medmoe``), sections 4 "Pretraining: global + local
contrast and the auxiliary loss", 5 "Does the router follow the modality?", 6 "What the words attend to" and 7
"Zero-shot classification (Table 1) and linear probing (Table 2)"; the cost of Table 3 is in section 3. The same
four verbs as every paper's recipe:

* :func:`build` -- the model (:func:`medmoe.papers.medmoe.model.build_model`), optionally with a pretrained Swin
  and MedCLIP's weights;
* :func:`train` -- pretraining with :func:`medmoe.engine.train_loop` (the released code's optimiser, schedule,
  clipping and early stopping), one step of :func:`pretrain_step` per batch;
* :func:`evaluate` -- image embeddings and routing, zero-shot, linear-probe and retrieval numbers;
* :func:`count` -- parameter counts (:func:`cost` adds Table 3's FLOPs).

Losses (MedMoE Sec. 4.4-4.6 as the released code's ``src/losses.py`` computes them, which is GLoRIA's
``gloria/loss/gloria_loss.py``):

* global: ``L_global`` (Sec. 4.4, first equation) -- cosine similarity of ``v_g`` and ``t_g`` times
  ``temp3 = 10`` (tau = 0.1) over the batch, cross-entropy over rows *plus* over columns;
* local: for each report, every word attends over the ``H/4 x W/4`` regions of every image of the batch (GLoRIA's
  double softmax: over words, then ``x temp1 = 4`` and over regions), giving a context ``c_i`` per word (Sec. 4.4,
  ``a_ij`` and ``c_i``); ``log sum_words exp(temp2 * cos(word, c))`` (``temp2 = 5``) is an image-report score, and
  ``temp3 x`` those scores go through the same two-way cross-entropy. The paper's ``L_local`` contrasts ``c_i``
  with the *other words of the same report*; the code contrasts whole image-report pairs (this module follows
  the code; the chapter says so);
* ``L_aux`` (Sec. 4.5): the router's cross-entropy against the modality label (:meth:`MedMoE.aux_loss`);
* total (Sec. 4.6) as the code weights it: ``0.5 (L_l0 + L_l1) + 0.5 (L_g0 + L_g1) + 2.0 L_aux``, i.e. the paper's
  ``L_global + L_local + lambda L_aux`` with lambda = 4, scaled by 0.5.

Controls (Chapter 2, sections 5 and 8): :func:`routing_specialisation` measures the routing against shuffled
routing (NMI and Hungarian one-to-one matching), :func:`scale_attention` collects the scale weights beta; with
``num_experts=1`` the same model and :func:`pretrain_step` are the chapter's K = 1 control (``L_aux`` = 0).

Evaluation (our proposal: the released code's ``src/eval.py`` and ``src/eval_zs.py`` are empty): zero-shot
classification by the cosine of ``v_g`` with ``t_g`` of each class prompt (and, beside it, by GLoRIA's local score,
:func:`local_similarity`); linear probing of a logistic regression on frozen ``v_g`` with a fraction of the training
labels; image-report retrieval recall@K. The datasets (:class:`~medmoe.papers.medmoe.data.ReportDataset`, the
UniMed tables and the evaluation sets) live in :mod:`medmoe.papers.medmoe.data` and
:mod:`medmoe.papers.medmoe.evalsets`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medmoe.backbones import LoadReport, build_swin, load_medclip_swin
from medmoe.backbones.encoders import load_medclip_text
from medmoe.engine import FitResult, TrainConfig, make_loader, train_loop
from medmoe.moe import contingency, normalized_mutual_information
from medmoe.papers.medmoe.data import ReportDataset
from medmoe.papers.medmoe.evalsets import subsample_labels
from medmoe.papers.medmoe.model import CONFIGS, MedMoE, MedMoEConfig, ReportEmbeddings, build_model
from medmoe.utils import check_rank, count_parameters, resolve_config

__all__ = [
    "Temperatures", "LossWeights", "gloria_attention", "global_similarity", "local_similarity",
    "global_contrastive_loss", "local_contrastive_loss", "pretrain_step", "embed_images", "zero_shot_predict",
    "prompt_class_scores", "linear_probe", "retrieval_recall", "word_attention", "routing_specialisation",
    "scale_attention", "build", "load_text_weights", "accumulation_steps", "train", "evaluate", "count", "cost",
]


@dataclass(frozen=True)
class Temperatures:
    """GLoRIA's three temperatures as the code uses them (multipliers): attention sharpness ``temp1 = 4``, word
    score ``temp2 = 5``, logit scale ``temp3 = 10`` (the paper's tau = 0.1)."""

    temp1: float = 4.0
    temp2: float = 5.0
    temp3: float = 10.0


@dataclass(frozen=True)
class LossWeights:
    """Weights of the released code: ``local * (L_l0 + L_l1) + global_ * (L_g0 + L_g1) + aux * L_aux``."""

    local: float = 0.5
    global_: float = 0.5
    aux: float = 2.0


def gloria_attention(words: torch.Tensor, regions: torch.Tensor,
                     temp1: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-to-region attention and the attended context (MedMoE Sec. 4.4, ``a_ij`` and ``c_i``; GLoRIA's code).

    The code's order of operations: ``s = regions^T words`` (B, M, W); softmax over the words; then ``x temp1`` and
    softmax over the M regions; ``c = regions a``.

    Args:
        words: ``(B, W, D)`` word embeddings (one report repeated over the batch, or one per image).
        regions: ``(B, D, H, W')`` local image features.

    Returns:
        ``(context (B, W, D), attention (B, W, H, W'))``; attention sums to 1 over the regions.
    """
    check_rank(words, 3, "words")
    check_rank(regions, 4, "regions")
    b, d, h, w = regions.shape
    if words.shape[0] != b or words.shape[2] != d:
        raise ValueError(f"words {tuple(words.shape)} must be (B={b}, W, D={d}) to attend over regions "
                         f"{tuple(regions.shape)}")
    ctx = regions.flatten(2)  # (B, D, M)
    s = torch.bmm(ctx.transpose(1, 2), words.transpose(1, 2))  # (B, M, W)
    a = s.softmax(dim=-1)  # over words
    a = (a.transpose(1, 2) * temp1).softmax(dim=-1)  # (B, W, M), over regions
    context = torch.bmm(a, ctx.transpose(1, 2))  # (B, W, D)
    return context, a.reshape(b, -1, h, w)


def global_similarity(image_global: torch.Tensor, text_global: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``(N_images, N_texts)`` of ``v_g`` and ``t_g``."""
    check_rank(image_global, 2, "image_global")
    check_rank(text_global, 2, "text_global")
    return F.normalize(image_global, dim=-1, eps=1e-8) @ F.normalize(text_global, dim=-1, eps=1e-8).T


def local_similarity(local: torch.Tensor, words: torch.Tensor, cap_lens: torch.Tensor,
                     temps: Temperatures = Temperatures()) -> torch.Tensor:
    """GLoRIA's image-report local score ``(N_images, N_texts)``: ``log sum_w exp(temp2 cos(t_w, c_w))``.

    Report ``j`` contributes its positions ``1 .. cap_lens[j]`` (words and ``[SEP]``); each attends over every
    image's regions as :func:`gloria_attention` (computed for all pairs at once, padded words masked out of the
    softmax over words). Not multiplied by ``temp3``.
    """
    check_rank(local, 4, "local")
    check_rank(words, 3, "words")
    if local.shape[1] != words.shape[2]:
        raise ValueError(f"local {tuple(local.shape)} and words {tuple(words.shape)} must have the same width D")
    cap_lens = torch.as_tensor(cap_lens, device=words.device)
    if cap_lens.shape != (words.shape[0],):
        raise ValueError(f"cap_lens must have shape ({words.shape[0]},), got {tuple(cap_lens.shape)}")
    if int(cap_lens.min()) < 1 or int(cap_lens.max()) >= words.shape[1]:
        raise ValueError(f"cap_lens must lie in [1, {words.shape[1] - 1}], got {cap_lens.tolist()}")
    n_words = int(cap_lens.max())
    w = words[:, 1:n_words + 1]  # (T, W, D)
    valid = torch.arange(n_words, device=w.device)[None, :] < cap_lens[:, None]  # (T, W)
    ctx = local.flatten(2)  # (I, D, M)
    s = torch.einsum("idm,twd->itmw", ctx, w)
    s = s.masked_fill(~valid[None, :, None, :], float("-inf")).softmax(dim=-1)  # over words
    a = (s.transpose(2, 3) * temps.temp1).softmax(dim=-1)  # (I, T, W, M), over regions
    context = torch.einsum("itwm,idm->itwd", a, ctx)
    cos = F.cosine_similarity(w[None], context, dim=-1, eps=1e-8)  # (I, T, W)
    cos = (cos * temps.temp2).masked_fill(~valid[None], float("-inf"))
    return torch.logsumexp(cos, dim=-1)


def _two_way_ce(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.T, labels)


def global_contrastive_loss(image_global: torch.Tensor, text_global: torch.Tensor,
                            temp3: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_global`` (MedMoE Sec. 4.4): image-to-report and report-to-image cross-entropy of ``temp3 x cos``.

    Example:
        >>> v = torch.eye(3); l0, l1 = global_contrastive_loss(v, v)
        >>> round(l0.item(), 4) == round(l1.item(), 4) and l0.item() < 1e-3
        True
    """
    if image_global.shape != text_global.shape:
        raise ValueError(f"image_global {tuple(image_global.shape)} and text_global {tuple(text_global.shape)} "
                         "must both be (B, D)")
    return _two_way_ce(global_similarity(image_global, text_global) * temp3)


def local_contrastive_loss(local: torch.Tensor, words: torch.Tensor, cap_lens: torch.Tensor,
                           temps: Temperatures = Temperatures()) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_local`` as the code computes it (GLoRIA): two-way cross-entropy of ``temp3 x`` :func:`local_similarity`."""
    if local.shape[0] != words.shape[0]:
        raise ValueError(f"{local.shape[0]} images but {words.shape[0]} reports")
    return _two_way_ce(local_similarity(local, words, cap_lens, temps) * temps.temp3)


def pretrain_step(model, batch, *, weights: LossWeights = LossWeights(), temps: Temperatures = Temperatures()
                  ) -> dict[str, torch.Tensor]:
    """One MedMoE pretraining step (Sec. 4.6): global + local + auxiliary losses, weighted as the code.

    The report features go through :meth:`~medmoe.papers.medmoe.model.MedMoE.project_text` (the identity unless
    the configuration has a text projection). With one expert (``K = 1``, the chapter's control) there is nothing
    to route: ``L_aux`` is 0 (a cross-entropy over one class) and the modality labels are not read.
    """
    sentence, words = model.project_text(batch["sentence"]), model.project_text(batch["words"])
    out = model(batch["image"], text_global=sentence)
    g0, g1 = global_contrastive_loss(out.global_, sentence, temps.temp3)
    l0, l1 = local_contrastive_loss(out.local, words, batch["cap_len"], temps)
    if model.config.num_experts == 1:
        aux = out.global_.new_zeros(())
    else:
        aux = model.aux_loss(out.gate, batch["modality"])
    loss = weights.local * (l0 + l1) + weights.global_ * (g0 + g1) + weights.aux * aux
    agree = (out.gate.indices[:, 0] == batch["modality"]).float().mean()
    return {"loss": loss, "global": (g0 + g1).detach(), "local": (l0 + l1).detach(), "aux": aux.detach(),
            "router_acc": agree}


@torch.no_grad()
def embed_images(model, dataset, *, batch_size: int = 64, keep_local: bool = False) -> dict[str, torch.Tensor]:
    """Encode every image of ``dataset`` in eval mode: ``global (N, D)``, ``expert (N,)`` (the router's choice),
    ``label``/``modality`` (N,) when the items have them, ``local (N, D, h, w)`` with ``keep_local``."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list] = {"global": [], "expert": [], "local": [], "label": [], "modality": []}
    for batch in make_loader(dataset, batch_size):
        emb = model(batch["image"].to(device))
        out["global"].append(emb.global_.cpu())
        out["expert"].append(emb.gate.indices[:, 0].cpu())
        if keep_local:
            out["local"].append(emb.local.cpu())
        for key in ("label", "modality"):
            if key in batch:
                out[key].append(torch.as_tensor(batch[key]))
    model.train(was)
    return {k: torch.cat(v) for k, v in out.items() if v}


def zero_shot_predict(image_global: torch.Tensor, prompt_global: torch.Tensor) -> torch.Tensor:
    """Zero-shot class predictions ``(N,)``: the class whose prompt's ``t_g`` has the largest cosine with ``v_g``
    (our proposal; the released code's zero-shot script ``src/eval_zs.py`` is empty). ``prompt_global`` is
    ``(C, D)``, or ``(C, P, D)`` for ``P`` prompts per class, averaged after normalisation as CLIP's prompt
    ensembles."""
    if prompt_global.ndim == 3:
        prompt_global = F.normalize(prompt_global, dim=-1).mean(1)
    return global_similarity(image_global, prompt_global).argmax(dim=1)


def prompt_class_scores(similarity: torch.Tensor, prompt_class: torch.Tensor | Sequence[int], *,
                        num_classes: int | None = None) -> torch.Tensor:
    """Per-class zero-shot scores ``(N, C)`` from image-prompt similarities ``(N, P)``: the mean over each class's
    prompts (``prompt_class[p]`` is the class of prompt ``p``), how the chapter scores prompt ensembles.

    Example:
        >>> prompt_class_scores(torch.tensor([[1.0, 3.0, 0.0]]), [0, 0, 1]).tolist()
        [[2.0, 0.0]]
    """
    check_rank(similarity, 2, "similarity")
    owner = torch.as_tensor(prompt_class, device=similarity.device)
    if owner.shape != (similarity.shape[1],):
        raise ValueError(f"prompt_class must give one class per prompt ({similarity.shape[1]}), got shape "
                         f"{tuple(owner.shape)}")
    n = int(owner.max()) + 1 if num_classes is None else num_classes
    empty = [c for c in range(n) if not bool((owner == c).any())]
    if empty:
        raise ValueError(f"classes {empty} have no prompt")
    return torch.stack([similarity[:, owner == c].mean(1) for c in range(n)], 1)


def linear_probe(train_x: torch.Tensor, train_y: Sequence[int], test_x: torch.Tensor, test_y: Sequence[int], *,
                 fractions: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0,
                 max_iter: int = 2000) -> dict[float, float]:
    """Linear probing (MedMoE Table 2): a logistic regression on frozen features, trained on a stratified
    ``fraction`` of the training labels (at least one per class), scored by accuracy on the test set.

    Features are standardised with the statistics of the labelled subset. Returns ``{fraction: accuracy}``.
    """
    # lazy: scikit-learn takes seconds to import and only the linear probe needs it
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler  # lazy: as the line above

    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("features and labels must have the same number of rows")
    result = {}
    for frac in fractions:
        idx = subsample_labels(train_y.tolist(), fraction=frac, seed=seed)
        scaler = StandardScaler().fit(train_x[idx])
        clf = LogisticRegression(max_iter=max_iter, random_state=seed)
        clf.fit(scaler.transform(train_x[idx]), train_y[idx])
        result[float(frac)] = float((clf.predict(scaler.transform(test_x)) == test_y).mean())
    return result


def retrieval_recall(similarity: torch.Tensor, *, ks: Sequence[int] = (1, 5, 10),
                     groups: Sequence[Any] | None = None) -> dict[str, float]:
    """Image-to-report and report-to-image recall@K from a square similarity matrix (image i pairs with report i).

    ``groups`` (one key per pair, e.g. the report string) counts a retrieved item as correct when its key equals
    the query's -- on data where many images share the same report text, an identical report is a correct answer.
    Returns ``{"i2t_R@K": ..., "t2i_R@K": ...}``.
    """
    check_rank(similarity, 2, "similarity")
    n = similarity.shape[0]
    if similarity.shape[1] != n:
        raise ValueError(f"similarity must be square (image i pairs with report i), got {tuple(similarity.shape)}")
    if groups is None:
        key = torch.arange(n)
    else:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} pairs")
        codes = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        key = torch.tensor([codes[g] for g in groups])
    out = {}
    for name, sim in (("i2t", similarity), ("t2i", similarity.T)):
        order = sim.argsort(dim=1, descending=True)
        hit = key[order] == key[:, None]
        for k in ks:
            out[f"{name}_R@{k}"] = float(hit[:, :k].any(dim=1).float().mean())
    return out


@torch.no_grad()
def word_attention(model, image: torch.Tensor, report, *, index: int = 0,
                   temps: Temperatures = Temperatures()) -> tuple[list[str], torch.Tensor, int]:
    """Word-level attention maps like MedMoE Fig. 3: each word of report ``index`` of ``report``
    (:class:`ReportEmbeddings`) attending over the selected expert's ``V_local`` of ``image`` ``(C, H, W)``.

    Returns ``(words, maps (W, h, w), expert)``: the words (pieces joined, ``[SEP]`` dropped), their attention
    maps (each sums to 1) and the expert the router chose.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    emb = model(image[None].to(device))
    model.train(was)
    n = int(report.cap_lens[index])
    words = model.project_text(report.words[index, 1:n + 1][None].to(device))
    _, attn = gloria_attention(words, emb.local, temps.temp1)
    names = report.words_text[index][1:n + 1]
    keep = [i for i, w in enumerate(names) if w != "[SEP]"]
    return [names[i] for i in keep], attn[0, keep].cpu(), int(emb.gate.indices[0, 0])


def routing_specialisation(expert: torch.Tensor, modality: torch.Tensor, *, num_experts: int,
                           num_modalities: int | None = None, n_perm: int = 200, seed: int = 0) -> dict[str, Any]:
    """How much of the modality the router's choice carries, against chance (Chapter 2, section 5).

    * ``nmi``: :func:`medmoe.moe.normalized_mutual_information` of expert and modality, and ``nmi_null``: the same
      for the routing decisions shuffled over the images ``n_perm`` times (same expert counts, so a router that
      sends everything to one expert scores 0 in both);
    * ``matched``: one-to-one matching accuracy -- the Hungarian assignment
      (``scipy.optimize.linear_sum_assignment``) of experts to modalities that covers the most images, divided by
      the number of images; ``matched_null`` under the same shuffles. A router that sends every image to one
      expert scores ``1 / #modalities`` at most, unlike "the share sent to each modality's most frequent expert".

    Example:
        >>> e = torch.tensor([2, 0, 1] * 10); m = torch.tensor([0, 1, 2] * 10)
        >>> r = routing_specialisation(e, m, num_experts=3, n_perm=20)
        >>> round(r["nmi"], 3), r["matched"], r["matched_null_mean"] < 0.6
        (1.0, 1.0, True)
        >>> routing_specialisation(torch.zeros(30, dtype=torch.long), m, num_experts=3, n_perm=5)["matched"]
        0.3333333333333333
    """
    from scipy.optimize import linear_sum_assignment  # why: scipy is heavy and only this measure needs it

    expert, modality = torch.as_tensor(expert).reshape(-1), torch.as_tensor(modality).reshape(-1)
    if expert.numel() != modality.numel() or expert.numel() == 0:
        raise ValueError(f"expert and modality must label the same (non-zero) number of images, got "
                         f"{expert.numel()} and {modality.numel()}")
    n_mod = int(modality.max()) + 1 if num_modalities is None else num_modalities

    def matched(e: torch.Tensor) -> float:
        table = contingency(modality, e, num_a=n_mod, num_b=num_experts).numpy()
        rows, cols = linear_sum_assignment(table, maximize=True)
        return float(table[rows, cols].sum() / table.sum())

    g = torch.Generator().manual_seed(seed)
    perms = [expert[torch.randperm(expert.numel(), generator=g)] for _ in range(n_perm)]
    nmi_null = [float(normalized_mutual_information(e, modality)) for e in perms]
    matched_null = [matched(e) for e in perms]
    return {"nmi": float(normalized_mutual_information(expert, modality)), "nmi_null": nmi_null,
            "nmi_null_mean": float(np.mean(nmi_null)), "nmi_null_p95": float(np.percentile(nmi_null, 95)),
            "matched": matched(expert), "matched_null": matched_null,
            "matched_null_mean": float(np.mean(matched_null)),
            "matched_null_p95": float(np.percentile(matched_null, 95))}


@torch.no_grad()
def scale_attention(model: MedMoE, dataset: Any, *, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The scale weights beta of the chosen expert (Sec. 4.3, ``beta_k^(l)``), per image (Chapter 2, section 5b).

    Returns ``beta (N, L)`` (the mean over the ``H/4 x W/4`` locations), ``expert (N,)``, ``modality (N,)`` and,
    when the items carry a lesion ``mask (1, H, W)``, ``beta_lesion (N, L)`` and ``beta_background (N, L)``: the mean
    over the locations whose ``H/4`` cell holds a lesion pixel, and over the others (NaN where there is none).
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list] = {"beta": [], "expert": [], "modality": [], "beta_lesion": [], "beta_background": []}
    for batch in make_loader(dataset, batch_size):
        emb = model(batch["image"].to(device))
        beta = emb.scale_weights.cpu()  # (B, P0, L)
        out["beta"].append(beta.mean(1))
        out["expert"].append(emb.gate.indices[:, 0].cpu())
        out["modality"].append(torch.as_tensor(batch["modality"]))
        if "mask" in batch:
            side = emb.local.shape[-1]
            cell = F.adaptive_max_pool2d(batch["mask"].float(), side).flatten(1) > 0  # (B, P0)
            for key, sel in (("beta_lesion", cell), ("beta_background", ~cell)):
                w = sel.float()[..., None]
                out[key].append((beta * w).sum(1) / w.sum(1))  # NaN for an image without such locations
    model.train(was)
    return {k: torch.cat(v) for k, v in out.items() if v}


# ----------------------------------------------------------------------------------------------------------
# The four verbs
# ----------------------------------------------------------------------------------------------------------


def build(name: str | MedMoEConfig = "medmoe_paper", *, backbone: nn.Module | None = None,
          swin_weights: str | os.PathLike | None = None, medclip_checkpoint: str | os.PathLike | None = None,
          **overrides) -> MedMoE:
    """:func:`~medmoe.papers.medmoe.model.build_model`, with the Swin initialised as the paper profile does it.

    ``swin_weights`` (a local folder of ``microsoft/swin-tiny-patch4-window7-224``) initialises the Swin
    (:func:`medmoe.backbones.build_swin`'s ``pretrained``); ``medclip_checkpoint`` (MedCLIP's ``pytorch_model.bin``
    or its folder) then overwrites it with MedCLIP's vision tower (:func:`medmoe.backbones.load_medclip_swin`, which
    warns about missing keys). What was loaded is kept as ``model.medclip_report`` (a
    :class:`~medmoe.backbones.LoadReport`, ``None`` without a checkpoint); the text tower of the same checkpoint
    goes into the text encoder with :func:`load_text_weights`. Without either, or with an explicit ``backbone``, it
    is ``build_model``.

    Raises:
        ValueError: ``backbone`` together with ``swin_weights`` or ``medclip_checkpoint``; anything
            ``build_model`` refuses.

    Example:
        >>> m = build("medmoe_test", num_experts=2)
        >>> m.config.num_experts, m.medclip_report
        (2, None)
    """
    report = None
    if swin_weights or medclip_checkpoint:
        if backbone is not None:
            raise ValueError("give either a backbone or swin_weights / medclip_checkpoint to build one, not both")
        cfg = resolve_config(name, CONFIGS, overrides, what="MedMoE")
        backbone = build_swin(cfg.swin, pretrained=swin_weights or None)
        if medclip_checkpoint:
            report = load_medclip_swin(backbone, medclip_checkpoint)
    model = build_model(name, backbone=backbone, **overrides)
    model.medclip_report = report
    return model


def load_text_weights(encoder, medclip_checkpoint: str | os.PathLike) -> LoadReport:
    """Initialise the text encoder's BERT from MedCLIP's ``text_model`` weights, as the released code initialises
    Bio_ClinicalBERT; returns the :class:`~medmoe.backbones.LoadReport`.

    ``encoder`` is a :class:`~medmoe.backbones.TextEncoder` built from a local Bio_ClinicalBERT folder (which gives
    the configuration and the tokenizer); its backbone is overwritten by
    :func:`medmoe.backbones.encoders.load_medclip_text` and its feature cache cleared.
    """
    report = load_medclip_text(encoder.backbone, medclip_checkpoint)
    encoder.clear_cache()
    return report


def accumulation_steps(effective_batch: int, batch_size: int, processes: int | None = None) -> int:
    """Gradient accumulation steps that give ``effective_batch`` samples per optimiser step.

    The released code: 32 per GPU x 8 GPUs x 10 accumulation steps = 2,560 per step
    (``configs/experiment/pretraining_medmoe.yaml`` and the trainer configs; the paper's "global batch size of 256
    ... gradient accumulation with 10 steps"). On one GPU at batch 32 that is 80 steps;
    the contrastive negatives stay the 32 of one micro-batch either way (the code does not all-gather).
    ``processes`` defaults to ``WORLD_SIZE`` (set by ``accelerate launch``), else 1.

    Raises:
        ValueError: ``effective_batch`` is not a positive multiple of ``batch_size x processes``.

    Example:
        >>> accumulation_steps(2560, 32, 1), accumulation_steps(2560, 32, 8)
        (80, 10)
    """
    processes = int(os.environ.get("WORLD_SIZE", "1")) if processes is None else processes
    for what, v in (("effective_batch", effective_batch), ("batch_size", batch_size), ("processes", processes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be a positive int, got {v!r}")
    per_step = batch_size * processes
    if effective_batch % per_step:
        raise ValueError(f"effective_batch={effective_batch} is not a multiple of batch_size x processes = "
                         f"{batch_size} x {processes} = {per_step}; change batch_size or effective_batch")
    return effective_batch // per_step


def train(model: nn.Module, train_set: Any, val_set: Any = None, *, out_dir: Any, epochs: int, lr: float,
          batch_size: int, seed: int = 0, run_key: str | None = None, grad_accum_steps: int = 1,
          max_grad_norm: float | None = 0.25, patience: int | None = 20, weights: LossWeights = LossWeights(),
          temps: Temperatures = Temperatures(), progress: bool = False, resume: bool = True,
          max_steps_per_epoch: int | None = None) -> FitResult:
    """Pretrain MedMoE (its one training stage) with :func:`medmoe.engine.train_loop`, as the released code:
    Adam (weight decay 0), ReduceLROnPlateau (factor 0.1, patience 10) on ``val_loss`` per epoch, gradient clipping
    0.25, early stopping (``patience`` 20) on ``val_loss``, DDP with ``find_unused_parameters`` (unselected experts
    get no gradient), the last incomplete training batch dropped, validation in batches of ``batch_size`` (the
    contrastive losses depend on the batch). Without ``val_set`` the training loss takes ``val_loss``'s place.

    ``train_set`` and ``val_set`` are :class:`~medmoe.papers.medmoe.data.ReportDataset` s. The paper profile:
    ``lr=5e-5``, 10 epochs, 2,560 samples per optimiser step (the code's 32 per GPU x 8 GPUs x 10 accumulation
    steps; :func:`accumulation_steps` gives 80 at batch 32 on one GPU).
    """
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=10)
    config = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, progress=progress, resume=resume,
                         grad_accum_steps=grad_accum_steps, max_grad_norm=max_grad_norm,
                         early_stopping_patience=patience, scheduler_interval="epoch",
                         monitor="val_loss" if val_set is not None else "train_loss", run_key=run_key,
                         find_unused_parameters=True, max_steps_per_epoch=max_steps_per_epoch)
    return train_loop(model, opt, train_set, step_fn=lambda m, b: pretrain_step(m, b, weights=weights, temps=temps),
                      config=config, batch_size=batch_size, val_set=val_set, val_batch_size=batch_size,
                      scheduler=sched, drop_last=True)


@torch.no_grad()
def evaluate(model: MedMoE, data: Any, *, batch_size: int = 64, prompts: ReportEmbeddings | None = None,
             prompt_class: torch.Tensor | Sequence[int] | None = None, probe_train: Any = None,
             fractions: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0, reports: ReportEmbeddings | None = None,
             groups: Sequence[Any] | None = None, ks: Sequence[int] = (1, 5, 10), keep_local: bool = False,
             temps: Temperatures = Temperatures()) -> dict[str, Any]:
    """Embed every image of ``data`` (:func:`embed_images`) and compute the chapter's numbers on it.

    Args:
        data: items with ``image`` and, as the numbers need them, ``modality`` and ``label``.
        prompts: encoded class prompts (:func:`~medmoe.papers.medmoe.model.encode_reports`) for zero-shot
            classification of ``label``; ``prompt_class`` gives each prompt's class (default: prompt ``p`` is class
            ``p``). A class's score is the mean over its prompts (:func:`prompt_class_scores`).
        probe_train: a labelled training set for the linear probe (:func:`linear_probe` with ``fractions`` and
            ``seed``), tested on ``data``.
        reports: the reports paired with ``data``'s images (image i with report i) for retrieval; by default
            ``data.reports`` when ``data`` is a :class:`~medmoe.papers.medmoe.data.ReportDataset`. ``groups`` and
            ``ks`` go to :func:`retrieval_recall`.
        keep_local: also return ``local``.

    Returns:
        :func:`embed_images`' ``global``, ``expert``, ``label``/``modality`` (and ``local``), plus, as the inputs
        allow: ``router_agreement`` (the share of images sent to their modality's most frequent expert) and
        ``router_nmi`` (:func:`medmoe.moe.normalized_mutual_information` of expert and modality);
        ``zero_shot_global`` and ``zero_shot_local`` (accuracies by :func:`global_similarity` and GLoRIA's
        :func:`local_similarity`) and the predictions behind them (``zero_shot_global_pred``,
        ``zero_shot_local_pred``, for a label-permutation baseline); ``linear_probe`` (``{fraction: accuracy}``);
        ``retrieval`` (recall@K).

    Raises:
        ValueError: prompts or a probe for items without ``label``.
    """
    emb = embed_images(model, data, batch_size=batch_size, keep_local=keep_local or prompts is not None)
    out: dict[str, Any] = dict(emb)
    if "modality" in emb:
        table = contingency(emb["modality"], emb["expert"], num_b=model.config.num_experts)
        out["router_agreement"] = float(table.max(dim=1).values.sum() / table.sum())
        out["router_nmi"] = float(normalized_mutual_information(emb["expert"], emb["modality"]))
    if (prompts is not None or probe_train is not None) and "label" not in emb:
        raise ValueError("zero-shot classification and the linear probe need items with a 'label'")
    if prompts is not None:
        owner = torch.arange(len(prompts.sentence)) if prompt_class is None else torch.as_tensor(prompt_class)
        device = next(model.parameters()).device
        p_sentence = model.project_text(prompts.sentence.to(device)).cpu()
        p_words = model.project_text(prompts.words.to(device))
        sims = {"global": global_similarity(emb["global"], p_sentence.to(emb["global"])),
                "local": local_similarity(emb["local"].to(device), p_words, prompts.cap_lens, temps).cpu()}
        for name, sim in sims.items():
            pred = prompt_class_scores(sim, owner).argmax(1)
            out[f"zero_shot_{name}"] = float((pred == emb["label"]).float().mean())
            out[f"zero_shot_{name}_pred"] = pred
        if not keep_local:
            del out["local"]
    if probe_train is not None:
        tr = embed_images(model, probe_train, batch_size=batch_size)
        out["linear_probe"] = linear_probe(tr["global"], tr["label"].tolist(), emb["global"], emb["label"].tolist(),
                                           fractions=fractions, seed=seed)
    if reports is None and isinstance(data, ReportDataset):
        reports = data.reports
    if reports is not None:
        device = next(model.parameters()).device
        sim = global_similarity(emb["global"], model.project_text(reports.sentence.to(device)).cpu())
        out["retrieval"] = retrieval_recall(sim, ks=ks, groups=groups)
    return out


def count(model: MedMoE) -> dict[str, int]:
    """Parameters: ``total``, ``trainable``, ``backbone`` (the Swin), ``router``, ``experts`` (all of them) and
    ``one_expert`` (Table 3 counts all experts; one runs per image).

    Example:
        >>> c = count(build("medmoe_test"))
        >>> c["total"] == c["backbone"] + c["router"] + c["experts"], c["experts"] == 3 * c["one_expert"]
        (True, True)
    """
    return {"total": count_parameters(model), "trainable": count_parameters(model, trainable_only=True),
            "backbone": count_parameters(model.backbone), "router": count_parameters(model.router),
            "experts": count_parameters(model.experts), "one_expert": count_parameters(model.experts[0]),
            "text_projection": count_parameters(model.text_proj) if model.text_proj is not None else 0}


@torch.no_grad()
def cost(model: MedMoE) -> dict[str, float]:
    """Table 3's cost: parameters in millions (:func:`count`) and multiply-accumulates in G of one random image at
    ``config.image_size`` with one expert active, by ``torch.utils.flop_counter`` (which counts two FLOPs per
    multiply-accumulate; Table 3's "GFLOPs" are MACs, the convention behind the usual 4.5 G of Swin-T).

    Returns:
        ``backbone_params_m``, ``router_params_m``, ``expert_params_m`` (one expert), ``params_m`` (all),
        ``backbone_gmacs`` (the Swin) and ``gmacs`` (the whole model).
    """
    was = model.training
    model.eval()
    size = model.config.image_size
    with FlopCounterMode(display=False) as fc:
        model(torch.rand(1, 3, size, size, device=next(model.parameters()).device))
    model.train(was)
    backbone = sum(fc.get_flop_counts().get(f"{type(model).__name__}.backbone", {}).values())
    n = count(model)
    return {"backbone_params_m": n["backbone"] / 1e6, "router_params_m": n["router"] / 1e6,
            "expert_params_m": n["one_expert"] / 1e6, "params_m": n["total"] / 1e6,
            "backbone_gmacs": backbone / 2e9, "gmacs": fc.get_total_flops() / 2e9}
