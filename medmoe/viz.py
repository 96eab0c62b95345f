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

__all__ = ["phantom_gallery", "expert_load_bars", "routing_heatmaps", "history_lines", "scale_weight_heatmaps",
           "router_weight_bars", "word_attribution_heatmaps"]


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


# --- medmoe (issue 13)


def scale_weight_heatmaps(tables: Mapping[str, pd.DataFrame], *, uniform: float | None = None,
                          title: str = "scale attention beta") -> plt.Figure:
    """Chapter 2 (MedMoE): one heat map per table of mean scale weights beta; rows are (modality, expert) pairs or
    any labels, columns the Swin scales (finest first). ``uniform`` (1 / #scales) centres the colour map, so a
    cell above it (red) is a scale the expert weights more than an even blend would."""
    n = len(tables)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n + 0.6, 0.45 * max(len(t) for t in tables.values()) + 1.6),
                             squeeze=False)
    for ax, (name, tab) in zip(axes.flat, tables.items()):
        sns.heatmap(tab.astype(float), annot=True, fmt=".2f", cbar=False, cmap="RdBu_r", center=uniform, ax=ax,
                    annot_kws={"fontsize": 8})
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(title + (f" (uniform blend: {uniform:.2f})" if uniform else ""), fontsize=10)
    fig.tight_layout()
    return fig


# --- mome (issue 13)


def router_weight_bars(weights: pd.DataFrame, *, title: str = "mean router weight", ylabel: str = "weight",
                       ax: plt.Axes | None = None) -> plt.Figure:
    """Mean router weight per expert (columns) for each row (an organ, the background...), as grouped bars, with
    the uniform router's weight 1/E drawn as a dashed reference line: a bar above it is an expert the router
    prefers there, a bar below one it avoids.

    Explained in the book: *Chapter 4, MoME*, section 5 "Where the router looks".

    Example:
        >>> fig = router_weight_bars(pd.DataFrame({"w(a)": [0.7, 0.2], "w(b)": [0.3, 0.8]}, index=["liver", "bg"]))
        >>> len(fig.axes[0].lines)  # the 1/E line
        1
    """
    if weights.shape[1] < 1:
        raise ValueError("weights needs one column per expert")
    fig = ax.figure if ax is not None else plt.subplots(figsize=(1.1 * len(weights) + 2.5, 2.8))[1].figure
    ax = ax if ax is not None else fig.axes[0]
    long = weights.rename_axis("row").reset_index().melt(id_vars="row", var_name="expert", value_name="weight")
    sns.barplot(data=long, x="row", y="weight", hue="expert", errorbar=None, ax=ax)
    uniform = 1.0 / weights.shape[1]
    ax.axhline(uniform, color="black", linestyle="--", linewidth=0.9, label=f"uniform 1/E = {uniform:.2f}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


# --- mlmoe (issue 13)
def word_attribution_heatmaps(panels: Sequence[tuple[Sequence[str], object, str]], *,
                              row_label: str = "expert") -> plt.Figure:
    """Signed word attributions, one heat map per panel ``(words, (N, W) values, title)``: rows are experts, columns
    words; each row is scaled by its largest absolute value (so experts compare by pattern, not size), red positive,
    blue negative. MLMoE's Fig. 3 as gradient x input (Chapter 1)."""
    n = len(panels)
    rows = max(_np(a).shape[0] for _, a, _ in panels) if panels else 1
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.0 + 0.42 * rows * n), squeeze=False)
    for ax, (words, attr, title) in zip(axes[:, 0], panels):
        a = _np(attr).astype(float)
        scale = np.abs(a).max(axis=1, keepdims=True)
        a = a / np.where(scale > 0, scale, 1.0)
        sns.heatmap(a, ax=ax, cmap="RdBu_r", vmin=-1, vmax=1, center=0, cbar=False, xticklabels=list(words),
                    yticklabels=[f"{row_label} {i + 1}" for i in range(a.shape[0])])
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
