"""Figures the chapters share: phantom galleries, expert load, routing-vs-label tables.

Explained in the book: *Chapter 0, the MoE primer* draws every one of them; the paper chapters reuse
them for their expert visualisations. Each function returns the matplotlib ``Figure`` (so a notebook shows
it) and never calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

__all__ = ["phantom_gallery", "expert_load_bars", "routing_heatmaps", "history_lines"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def phantom_gallery(items: Sequence[Mapping], *, wrap: int = 34, cols: int | None = None) -> plt.Figure:
    """Images with their lesion outline (red) and report as caption.

    Args:
        items: dataset items with ``image`` (C,H,W), ``mask`` (1,H,W), ``text`` and ``modality_name``.
    """
    cols = cols or len(items)
    rows = int(np.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, it in zip(axes.flat, items):
        img = _np(it["image"])
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.contour(_np(it["mask"])[0], levels=[0.5], colors="red", linewidths=1.0)
        words, lines, cur = str(it["text"]).split(), [], ""
        for w in words:
            if len(cur) + len(w) + 1 > wrap:
                lines.append(cur)
                cur = w
            else:
                cur = f"{cur} {w}".strip()
        lines.append(cur)
        ax.set_title(f"[{it.get('modality_name', '?')}]\n" + "\n".join(lines), fontsize=8.5)
    fig.tight_layout()
    return fig


def expert_load_bars(loads: Mapping[str, Sequence[float]], *, title: str = "Expert load") -> plt.Figure:
    """Grouped bars: fraction of inputs routed to each expert, one group per variant."""
    rows = [{"variant": v, "expert": str(i), "load": float(x)} for v, ls in loads.items() for i, x in enumerate(ls)]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    sns.barplot(data=pd.DataFrame(rows), x="variant", y="load", hue="expert", ax=ax, palette="viridis")
    n = len(next(iter(loads.values())))
    ax.axhline(1 / n, color="k", ls="--", lw=0.8, label="uniform")
    ax.set_ylabel("fraction of test images")
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(title="expert", fontsize=7, ncol=n + 1, loc="upper right")
    fig.tight_layout()
    return fig


def routing_heatmaps(tables: Mapping[str, np.ndarray], *, row_labels: Sequence[str], col_label: str = "expert",
                     annotate: Mapping[str, str] | None = None, cols: int = 3) -> plt.Figure:
    """One heat map per variant: rows = a known label (e.g. modality), columns = chosen expert, values = counts."""
    n = len(tables)
    cols = min(cols, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, tab) in zip(axes.flat, tables.items()):
        tab = _np(tab)
        sns.heatmap(tab, annot=True, fmt=".0f", cbar=False, cmap="mako", ax=ax, annot_kws={"fontsize": 8},
                    yticklabels=list(row_labels), xticklabels=[str(i) for i in range(tab.shape[1])])
        sub = f"\n{annotate[name]}" if annotate and name in annotate else ""
        ax.set_title(f"{name}{sub}", fontsize=9)
        ax.set_xlabel(col_label)
    fig.tight_layout()
    return fig


def history_lines(histories: Mapping[str, Sequence[Mapping]], *, key: str = "train_loss") -> plt.Figure:
    """Training curves from :func:`medmoe.engine.fit` histories, one line per variant."""
    rows = [{"variant": v, "epoch": h["epoch"], key: h[key]} for v, hist in histories.items() for h in hist if key in h]
    fig, ax = plt.subplots(figsize=(6, 3))
    sns.lineplot(data=pd.DataFrame(rows), x="epoch", y=key, hue="variant", marker="o", ax=ax)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
