"""MedMoE's losses, pretraining step and evaluation (book: *Chapter 2, MedMoE*).

Losses (MedMoE Sec. 4.4-4.6 as the released code computes them, which is GLoRIA's code; papers_spec 2.2):

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

Evaluation (absent from the released code; papers_spec 2.4's proposal): zero-shot classification by the cosine
of ``v_g`` with ``t_g`` of each class prompt (``similarity="local"`` or ``"both"`` add GLoRIA's local score);
linear probing of a logistic regression on frozen ``v_g`` with a fraction of the training labels; image-report
retrieval recall@K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medmoe.utils import check_rank

__all__ = [
    "Temperatures", "LossWeights", "gloria_attention", "global_similarity", "local_similarity",
    "global_contrastive_loss", "local_contrastive_loss", "ReportDataset", "pretrain_step", "pretrain",
    "embed_images", "zero_shot_predict", "linear_probe", "retrieval_recall", "word_attention",
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


def gloria_attention(words: torch.Tensor, regions: torch.Tensor, temp1: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
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


class ReportDataset(Dataset):
    """An image dataset with MedMoE's precomputed report features attached.

    The text encoder is frozen, so each report is encoded once (:func:`medmoe.papers.medmoe.model.encode_reports`).
    Items gain ``words (L, D)``, ``sentence (D,)`` and ``cap_len``; the base items must have ``image`` and
    ``modality``.
    """

    def __init__(self, dataset: Dataset, reports) -> None:
        if len(reports.words) != len(dataset):
            raise ValueError(f"{len(reports.words)} encoded reports for a dataset of {len(dataset)} items")
        self.dataset, self.reports = dataset, reports

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        r = self.reports
        return {"image": item["image"], "modality": item["modality"], "words": r.words[i],
                "sentence": r.sentence[i], "cap_len": r.cap_lens[i], "index": i}


def pretrain_step(model, batch, *, weights: LossWeights = LossWeights(), temps: Temperatures = Temperatures()
                  ) -> dict[str, torch.Tensor]:
    """One MedMoE pretraining step (Sec. 4.6): global + local + auxiliary losses, weighted as the code."""
    out = model(batch["image"], text_global=batch["sentence"])
    g0, g1 = global_contrastive_loss(out.global_, batch["sentence"], temps.temp3)
    l0, l1 = local_contrastive_loss(out.local, batch["words"], batch["cap_len"], temps)
    aux = model.aux_loss(out.gate, batch["modality"])
    loss = weights.local * (l0 + l1) + weights.global_ * (g0 + g1) + weights.aux * aux
    agree = (out.gate.indices[:, 0] == batch["modality"]).float().mean()
    return {"loss": loss, "global": (g0 + g1).detach(), "local": (l0 + l1).detach(), "aux": aux.detach(),
            "router_acc": agree}


def pretrain(model, train_ds, val_ds, *, out_dir, epochs: int, lr: float = 5e-5, batch_size: int = 32, seed: int = 0,
             grad_accum_steps: int = 1, max_grad_norm: float | None = 0.25, patience: int | None = 20,
             weights: LossWeights = LossWeights(), temps: Temperatures = Temperatures(), progress: bool = False,
             resume: bool = True, run_key: str | None = None, max_steps_per_epoch: int | None = None):
    """Pretrain with :func:`medmoe.engine.fit` as the released code: Adam (weight decay 0),
    ReduceLROnPlateau(factor 0.1, patience 10) on ``val_loss`` per epoch, gradient clipping 0.25, early stopping
    (patience 20) on ``val_loss``, DDP with ``find_unused_parameters`` (unselected experts get no gradient).
    The paper profile: ``lr=5e-5``, 32 per GPU on 8 GPUs, ``grad_accum_steps=10``, 10 epochs."""
    from torch.utils.data import DataLoader

    from medmoe.engine import TrainConfig, fit

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=10)
    cfg = TrainConfig(out_dir=out_dir, epochs=epochs, seed=seed, progress=progress, resume=resume,
                      grad_accum_steps=grad_accum_steps, max_grad_norm=max_grad_norm, early_stopping_patience=patience,
                      scheduler_interval="epoch", monitor="val_loss", run_key=run_key, find_unused_parameters=True,
                      max_steps_per_epoch=max_steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    return fit(model, opt, DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=g, drop_last=True),
               step_fn=lambda m, b: pretrain_step(m, b, weights=weights, temps=temps),
               val_loader=DataLoader(val_ds, batch_size=batch_size), config=cfg, scheduler=sched)


@torch.no_grad()
def embed_images(model, dataset, *, batch_size: int = 64, keep_local: bool = False) -> dict[str, torch.Tensor]:
    """Encode every image of ``dataset`` in eval mode: ``global (N, D)``, ``expert (N,)`` (the router's choice),
    ``label``/``modality`` (N,) when the items have them, ``local (N, D, h, w)`` with ``keep_local``."""
    from torch.utils.data import DataLoader

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list] = {"global": [], "expert": [], "local": [], "label": [], "modality": []}
    for batch in DataLoader(dataset, batch_size=batch_size):
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
    (papers_spec 2.4's proposal; the released code has no zero-shot code). ``prompt_global`` is ``(C, D)``, or
    ``(C, P, D)`` for ``P`` prompts per class, averaged after normalisation as CLIP's prompt ensembles."""
    if prompt_global.ndim == 3:
        prompt_global = F.normalize(prompt_global, dim=-1).mean(1)
    return global_similarity(image_global, prompt_global).argmax(dim=1)


def linear_probe(train_x: torch.Tensor, train_y: Sequence[int], test_x: torch.Tensor, test_y: Sequence[int], *,
                 fractions: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0, max_iter: int = 2000) -> dict[float, float]:
    """Linear probing (MedMoE Table 2): a logistic regression on frozen features, trained on a stratified
    ``fraction`` of the training labels (at least one per class), scored by accuracy on the test set.

    Features are standardised with the statistics of the labelled subset. Returns ``{fraction: accuracy}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from medmoe.papers.medmoe.evalsets import subsample_labels

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
    words = report.words[index, 1:n + 1][None].to(device)
    _, attn = gloria_attention(words, emb.local, temps.temp1)
    names = report.words_text[index][1:n + 1]
    keep = [i for i, w in enumerate(names) if w != "[SEP]"]
    return [names[i] for i in keep], attn[0, keep].cpu(), int(emb.gate.indices[0, 0])
