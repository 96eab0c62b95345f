"""Architecture diagrams, drawn in code: one for the primer and one per paper chapter.

Explained in the book: every chapter opens its "architecture" section with its own diagram --
*Chapter 0, the MoE primer* shows :func:`moe_layer`, Chapter 1 :func:`mlmoe`, Chapter 2 :func:`medmoe`, Chapter 3
:func:`segmote` and Chapter 4 :func:`mome` (:data:`DIAGRAMS` maps the chapter names to them).

They are diagrams, not plots: boxes for modules, arrows for data flow, tensor shapes in small grey text and the
equations' symbols as labels. They are drawn with matplotlib patches (``FancyBboxPatch`` boxes,
``FancyArrowPatch`` arrows) and mathtext, so they render offline, in the HTML book and on Colab, with no image file
to ship. They draw what the *book* builds (``medmoe/papers/<name>/model.py`` and :mod:`medmoe.moe`), at the
paper configuration's sizes; where that differs from a paper's own figure, the docstring says so. None copies a
paper's figure: each docstring names the figure it corresponds to.

One visual language throughout (:data:`KINDS`): blue for inputs and data, grey with a snowflake for frozen
modules, green for trainable modules, orange for experts, purple for routers and gates, red for losses (dashed
arrows for what only feeds a loss). Each function returns the matplotlib ``Figure`` and never calls
``plt.show()``; keyword-only options: ``figsize``, ``title`` (draw the title line) and ``shapes`` (draw the grey
tensor shapes).

Example:
    >>> fig = mlmoe(shapes=False)
    >>> sorted(DIAGRAMS) == ["medmoe", "mlmoe", "mome", "primer", "segmote"]
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path

__all__ = ["KINDS", "moe_layer", "mlmoe", "medmoe", "segmote", "mome", "DIAGRAMS"]

#: Box kinds: ``(face colour, edge colour, legend label)``. "op" (a parameter-free operation) has no legend entry.
KINDS: dict[str, tuple[str, str, str]] = {
    "data": ("#dbeafe", "#2563eb", "input / data"),
    "frozen": ("#e5e7eb", "#6b7280", "frozen \u2744"),
    "trainable": ("#dcfce7", "#16a34a", "trainable"),
    "expert": ("#ffedd5", "#ea580c", "expert"),
    "router": ("#ede9fe", "#7c3aed", "router / gate"),
    "loss": ("#fee2e2", "#dc2626", "loss"),
    "op": ("#ffffff", "#374151", ""),
}
_GREY = "#6b7280"
_INK = "#1f2937"
_ARROW = "#374151"
#: The canvas in data units (an axes filling the figure); 1 unit = 0.1 inch at the default size (10, 4.5).
_W, _H = 100.0, 45.0
_SIZE = (10.0, 4.5)
SNOW = "\u2744"


@dataclass(frozen=True)
class _Box:
    x: float
    y: float
    w: float
    h: float

    def at(self, fx: float, fy: float) -> tuple[float, float]:
        return (self.x + fx * self.w, self.y + fy * self.h)

    @property
    def left(self) -> tuple[float, float]:
        return self.at(0, 0.5)

    @property
    def right(self) -> tuple[float, float]:
        return self.at(1, 0.5)

    @property
    def top(self) -> tuple[float, float]:
        return self.at(0.5, 1)

    @property
    def bottom(self) -> tuple[float, float]:
        return self.at(0.5, 0)


class _Canvas:
    """A figure with one axes spanning it, in ``_W x _H`` data units, and the drawing helpers."""

    def __init__(self, figsize: Sequence[float], title: str | None, shapes: bool, kinds: Sequence[str]) -> None:
        self.fig = plt.figure(figsize=tuple(figsize))
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, _W)
        self.ax.set_ylim(0, _H)
        self.ax.axis("off")
        self.shapes = shapes
        if title:
            self.ax.text(1, 43.6, title, fontsize=10.5, weight="bold", color=_INK, ha="left", va="center")
        handles = [Patch(facecolor=KINDS[k][0], edgecolor=KINDS[k][1], label=KINDS[k][2]) for k in kinds]
        self.ax.legend(handles=handles, loc="upper right", bbox_to_anchor=(0.995, 0.995), ncol=len(handles),
                       fontsize=7, frameon=False, handlelength=1.3, handleheight=0.9, columnspacing=0.9,
                       handletextpad=0.4, borderaxespad=0.2)

    def box(self, x: float, y: float, w: float, h: float, label: str, kind: str = "trainable", *,
            sub: str | None = None, size: float = 8, subsize: float = 6.5, alpha: float = 1.0, weight: str = "normal",
            ls: str = "-", label_fy: float | None = None, sub_fy: float | None = None) -> _Box:
        """A rounded box with a label and, below it, a grey sub-label (a shape, or a short note)."""
        face, edge, _ = KINDS[kind]
        self.ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.7", facecolor=face,
                                         edgecolor=edge, linewidth=1.2, linestyle=ls, alpha=alpha, zorder=2))
        b = _Box(x, y, w, h)
        show_sub = sub is not None and (self.shapes or kind not in ("data",))
        ly = label_fy if label_fy is not None else (0.64 if show_sub else 0.5)
        self.ax.text(*b.at(0.5, ly), label, fontsize=size, color=_INK, ha="center", va="center", weight=weight,
                     zorder=4, alpha=max(alpha, 0.6))
        if show_sub:
            self.ax.text(*b.at(0.5, sub_fy if sub_fy is not None else 0.27), sub, fontsize=subsize, color=_GREY,
                         ha="center", va="center", zorder=4)
        return b

    def frame(self, x: float, y: float, w: float, h: float, title: str, *, size: float = 7.5) -> _Box:
        """A dashed, unfilled group frame with its title inside the top-left corner."""
        self.ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=1.0", facecolor="none",
                                         edgecolor="#9ca3af", linewidth=1.0, linestyle=(0, (4, 3)), zorder=1))
        self.ax.text(x + 1.0, y + h - 1.2, title, fontsize=size, color=_INK, ha="left", va="center", style="italic",
                     zorder=4)
        return _Box(x, y, w, h)

    def arrow(self, *points: tuple[float, float], kind: str = "flow", lw: float = 1.1) -> FancyArrowPatch:
        """An arrow through ``points`` (straight segments); ``kind="loss"`` is dashed red, ``"side"`` dashed grey."""
        color = {"flow": _ARROW, "loss": KINDS["loss"][1], "side": _GREY}[kind]
        style = "-" if kind == "flow" else (0, (3, 2))
        common = dict(arrowstyle="-|>", mutation_scale=9, color=color, linewidth=lw, linestyle=style, zorder=3)
        if len(points) == 2:
            a = FancyArrowPatch(posA=points[0], posB=points[1], shrinkA=0, shrinkB=0, **common)
        else:
            a = FancyArrowPatch(path=Path(list(points)), **common)
        self.ax.add_patch(a)
        return a

    def text(self, x: float, y: float, s: str, *, size: float = 6.5, color: str = _GREY, ha: str = "center",
             va: str = "center", **kw) -> None:
        self.ax.text(x, y, s, fontsize=size, color=color, ha=ha, va=va, zorder=4, **kw)

    def shape(self, x: float, y: float, s: str, **kw) -> None:
        """A grey tensor-shape annotation, drawn only with ``shapes=True``."""
        if self.shapes:
            self.text(x, y, s, **kw)


_LEGEND = ("data", "frozen", "trainable", "expert", "router", "loss")


def moe_layer(*, figsize: Sequence[float] = _SIZE, title: bool = True, shapes: bool = True) -> Figure:
    """The primer's diagram: one mixture-of-experts layer, from gate to combine, with the balance losses.

    Corresponds to no paper figure (the primer has no paper); it is the generic sparsely gated layer of Shazeer et
    al. (2017, Fig. 1) as :mod:`medmoe.moe` builds it: the gate (:class:`~medmoe.moe.SoftGate`,
    :class:`~medmoe.moe.NoisyTopKGate`, :class:`~medmoe.moe.HardRouter` give one ``GateOutput``), the dispatch that
    groups inputs per expert (:func:`~medmoe.moe.dispatch_combine`), the weighted combine, and the three balance
    losses of :mod:`medmoe.moe.losses` as side notes. In the primer's toy model an "input" is one image's pooled
    feature and an expert a small conv head.
    """
    c = _Canvas(figsize, "Primer \u00b7 one mixture-of-experts layer" if title else None, shapes,
                ("data", "expert", "router", "loss"))
    x = c.box(1, 16, 8, 7, "input $x$", "data", sub="(B, D)", size=8.5)
    gate = c.box(12, 28.5, 27, 9.5, r"gate  $g(x)=\mathrm{softmax}(W_g\,x\,/\,\tau)$", "router",
                 sub="noisy top-k adds $(\\mathrm{softplus}(W_n x)+\\epsilon)\\,z$ to the logits\n"
                     "probs $p$, logits $l$: (B, N)", size=8, label_fy=0.72, sub_fy=0.32)
    topk = c.box(42, 30, 12, 6.5, "top-$k$", "router", sub="indices (B, k)")
    c.arrow(x.top, (5, 33.25), gate.left)
    c.arrow(gate.right, topk.left)
    c.text(76.5, 39.5, "soft gate: all $N$ experts, $k=N$   \u00b7   noisy top-k: $k$ of $N$   \u00b7   "
                       "hard router: argmax, $k=1$", size=6.5)

    # dispatch: tokens coloured by their expert, then grouped per expert
    c.box(28, 10.5, 26, 16, "", "op")
    c.text(41, 25, "dispatch: group the inputs by expert", size=7, color=_INK)
    palette = ("#fb923c", "#f59e0b", "#c2410c", "#fdba74")
    route = (0, 2, 1, 0, 3, 1, 0, 2)
    for i, e in enumerate(route):
        c.ax.add_patch(FancyBboxPatch((30.5 + 2.6 * i, 20.5), 1.9, 1.9, boxstyle="square,pad=0",
                                      facecolor=palette[e], edgecolor="white", linewidth=0.5, zorder=3))
    c.text(41, 18.9, "sort by expert index, split by count", size=6)
    gx = 30.0
    names = ("$E_1$", "$E_2$", "$E_3$", "$E_N$")
    for e in range(4):
        n = route.count(e)
        for j in range(n):
            c.ax.add_patch(FancyBboxPatch((gx + 2.2 * j, 13.8), 1.9, 1.9, boxstyle="square,pad=0",
                                          facecolor=palette[e], edgecolor="white", linewidth=0.5, zorder=3))
        c.text(gx + (2.2 * n - 0.3) / 2, 12.3, names[e], size=6.5, color=_INK)
        gx += 2.2 * n + 1.6
    c.arrow((41, 18.0), (41, 16.2), lw=0.9)
    c.arrow(x.right, (28, 19.5))
    c.arrow(topk.bottom, (48, 26.5))

    ey = (22.0, 17.5, 13.0, 7.0)
    experts = []
    for i, (y, name) in enumerate(zip(ey, ("$E_1$", "$E_2$", "$E_3$", "$E_N$"))):
        experts.append(c.box(59, y, 9, 3.6, name, "expert", size=8))
        c.arrow((54, 24.5 - 3.0 * i if i < 3 else 12.0), experts[-1].left, lw=0.9)
    c.text(63.5, 11.3, r"$\vdots$", size=8, color=_INK)
    c.shape(63.5, 5.6, "each on its share $(n_i, D)$")
    comb = c.box(72, 12, 16, 11, "combine", "op", sub=r"$y=\sum_i\, g_i(x)\,E_i(x)$", size=8, subsize=8,
                 label_fy=0.72, sub_fy=0.35)
    for e in experts:
        c.arrow(e.right, (72, 17.5), lw=0.9)
    y = c.box(91, 14.5, 8, 6, "output $y$", "data", sub="(B, D')")
    c.arrow(comb.right, y.left)
    c.arrow(topk.right, (80, 33.25), comb.top)
    c.text(67, 34.6, "weights $g_i(x)$: $k$ non-zero, (B, N)", size=6.5)

    # balance losses on the gate: side notes
    c.text(1, 7.4, "balance losses, from the gate's $p$, $l$, $g$ (side notes):", size=7, color=_INK, ha="left")
    c.box(1, 0.8, 17, 5.2, r"$\mathrm{CV}^2(\mathrm{imp})+\mathrm{CV}^2(\mathrm{load})$", "loss",
          sub="Shazeer et al. 2017 (SegMoTE)", size=7.5, subsize=6)
    c.box(20, 0.8, 13, 5.2, r"Switch: $N\sum_i f_i\,P_i$", "loss", sub="Fedus et al. 2022", size=7.5, subsize=6)
    c.box(35, 0.8, 17, 5.2, r"z-loss: $\overline{(\log\sum_i e^{l_i})^2}$", "loss", sub="Zoph et al. 2022",
          size=7.5, subsize=6)
    return c.fig


def mlmoe(*, figsize: Sequence[float] = _SIZE, title: bool = True, shapes: bool = True) -> Figure:
    """Chapter 1's diagram: Ariadne's Thread with MLMoE's text experts in every guide stage, and the text-absent stage.

    Corresponds to MLMoE's Fig. 1 (panels (1) text-present training, (2) the MLMoE module, (3) text-absent training
    with the virtual prompt), redrawn for what :mod:`medmoe.papers.mlmoe.model` builds: ConvNeXt-T encoder, a frozen
    CXR-BERT, three guide stages (768->384, 384->192, 192->96 channels; 24, 12, 9 text tokens) and a subpixel head.
    In each stage the N text experts ``f_t^i = ReLU(Conv(f_t W_t^i))`` (Eq. 2) replace Ariadne's ``text_project``,
    a soft gate over pooled text (+) pooled image with a learnable temperature tau (Eq. 3) mixes them into ``f'_t``
    (Eq. 4), which the cross-attention reads (Eq. 5); ``L_div`` (Eq. 6). The text-absent stage trains only the
    virtual prompt P (24 x 768) and the bottleneck adapters, distilled from the text-present model (``L_dis``).
    """
    c = _Canvas(figsize, "Chapter 1 \u00b7 MLMoE (text-guided segmentation)" if title else None, shapes, _LEGEND)
    img = c.box(1, 31, 8.5, 7, "image $x$", "data", sub="1\u00d7224\u00d7224")
    enc = c.box(12.5, 30, 13, 9, "ConvNeXt-T\nencoder", "trainable", sub="96@56\u00b2 \u2026 768@7\u00b2",
                label_fy=0.62, sub_fy=0.2)
    guides = []
    for i, (cin, cout, n) in enumerate(((768, 384, 24), (384, 192, 12), (192, 96, 9))):
        guides.append(c.box(28 + 14 * i, 30, 11, 9, f"guide {i + 1}\n+ MLMoE", "trainable",
                            sub=f"{cin}\u2192{cout}, L={n}", label_fy=0.62, sub_fy=0.2))
    head = c.box(70, 30, 9, 9, "subpixel\nhead", "trainable", sub="\u00d74 up", label_fy=0.62, sub_fy=0.2)
    mask = c.box(82, 31, 9, 7, r"mask $\hat{y}$", "data", sub="1\u00d7224\u00b2")
    c.arrow(img.right, enc.left)
    c.arrow(enc.right, guides[0].left)
    for a, b in zip(guides, guides[1:] + [head]):
        c.arrow(a.right, b.left)
    c.arrow(head.right, mask.left)
    for g in guides[1:]:  # skip connections from the encoder
        c.arrow(enc.at(0.7, 1), (enc.at(0.7, 1)[0], 40.6), (g.at(0.3, 1)[0], 40.6), g.at(0.3, 1), kind="side",
                lw=0.8)
    c.shape(62, 41.4, "encoder skips 384@14\u00b2, 192@28\u00b2, 96@56\u00b2", size=6)
    seg = c.box(93, 31, 6, 7, "$L_{dice}$\n$+L_{ce}$", "loss", size=7.5)
    c.arrow(mask.right, seg.left, kind="loss")

    rep = c.box(1, 20, 9, 6.5, "report", "data", sub="24 tokens")
    bert = c.box(12.5, 20, 13.5, 6.5, f"CXR-BERT {SNOW}", "frozen", sub="last hidden state")
    c.arrow(rep.right, bert.left)
    c.arrow(bert.right, (33, 23.25), (33, 30))
    c.text(33.6, 27.6, "$f_t$ to every stage", size=6.5, ha="left")
    c.shape(33.6, 25.9, "(B, 24, 768)", ha="left")

    # MLMoE inside one guide stage
    c.frame(44, 1, 55, 27.5, r"inside guide stage $s$:  text experts $f_t^i=\mathrm{ReLU}(\mathrm{Conv}(f_t\,W_t^i))$")
    ft = c.box(45.5, 15.5, 7.5, 5.5, "$f_t$", "data", sub="24\u00d7768", size=9)
    ey = (20.3, 16.1, 9.8)
    experts = [c.box(56, y, 9.5, 3.4, name, "expert", size=8.5)
               for y, name in zip(ey, ("$f_t^1$", "$f_t^2$", "$f_t^N$"))]
    c.text(60.75, 13.9, r"$\vdots$", size=8, color=_INK)
    for e in experts:
        c.arrow(ft.right, e.left, lw=0.9)
    mix = c.box(69, 13, 11, 6.5, "mix" + (" (B, $L_s$, $C_s$)" if shapes else ""), "op",
                sub=r"$f'_t=\sum_i g_i\,f_t^i$", size=7.5, subsize=7.5)
    for e in experts:
        c.arrow(e.right, mix.left, lw=0.9)
    fv = c.box(83.5, 21, 15, 4.6, r"$f'_v=f_v+\mathrm{LN}(\mathrm{MSA}(f_v))$", "trainable", size=7)
    mca = c.box(83.5, 12.5, 15, 7, r"MCA$(f'_t,\,f'_v)$", "trainable", sub=r"$f_m=f'_v+\mathrm{LN}(\mathrm{MCA})$",
                size=8, subsize=7)
    c.arrow(fv.bottom, mca.top)
    c.arrow(mix.right, mca.left)
    gate = c.box(45.5, 2.2, 32.5, 6, r"gate $g=\mathrm{softmax}(\Psi(\bar f_t\oplus\bar f_v)\,/\,\tau)$", "router",
                 sub="learnable temperature $\\tau$ \u00b7 g: (B, N)", size=7.5)
    c.arrow((48, 15.5), (48, 8.2))
    c.arrow(fv.right, (99.4, fv.right[1]), (99.4, 10.6), (76.5, 10.6), (76.5, 8.2), kind="side", lw=0.9)
    c.text(90, 11.4, r"pooled $\bar f_v$", size=6.5, color=_INK)
    c.arrow((mix.bottom[0], 8.2), mix.bottom)
    c.text(73.8, 10.4, "$g_i$", size=7, color=_INK, ha="right")
    div = c.box(80.5, 2.2, 18, 6, r"$L_{div}=\mathbb{E}_x[H(g)]-H(\mathbb{E}_x[g])$", "loss", size=7,
                sub="summed over the 3 stages", subsize=6)
    c.arrow(gate.at(1, 0.3), div.at(0, 0.3), kind="loss")

    # the text-absent stage
    c.frame(1, 1, 41, 16.5, "text absent (stage 2): only $P$ and the adapters train")
    vp = c.box(2.5, 8, 9.5, 6.5, "virtual\nprompt $P$", "trainable", sub="24\u00d7768", label_fy=0.62, sub_fy=0.17)
    net = c.box(15, 8, 12, 6.5, f"stage-1 net {SNOW}", "frozen", sub="no text encoder")
    ad = c.box(30, 8, 11, 6.5, "adapters", "trainable", sub=r"$\hat f_m+\Phi_u(\Phi_d(\hat f_m))$", subsize=6.5)
    c.arrow(vp.right, net.left)
    c.arrow(net.right, ad.left)
    dis = c.box(19, 1.8, 22, 4.6, r"$L_{dis}=\mathbb{E}_x\Vert f_m-\hat f_m\Vert_2$", "loss", size=7.5)
    c.arrow(ad.bottom, (35.5, 6.4), kind="loss")
    c.text(2.5, 4.1, r"teacher $f_m$ (real text)", size=6.5, color=_INK, ha="left")
    c.arrow((14.5, 4.1), dis.left, kind="loss")
    return c.fig


def medmoe(*, figsize: Sequence[float] = _SIZE, title: bool = True, shapes: bool = True) -> Figure:
    """Chapter 2's diagram: Swin-T scales, a hard top-1 modality router, multi-scale experts, GLoRIA's two losses.

    Corresponds to MedMoE's Fig. 2 ("Overall architecture of MedMoE"), redrawn for what
    :mod:`medmoe.papers.medmoe.model` builds (the released code's layout): a trainable Swin-T gives four maps
    ``F^(1..4)`` at H/4 .. H/32; a router ``768 -> 128 -> K`` on the pooled last hidden state picks one of K = 6
    experts (hard top-1, trained only by ``L_aux``, the cross-entropy against the modality label); the chosen
    expert projects each scale, aligns it to 56 x 56 and fuses the scales with per-location weights
    ``beta_k^(l)`` (Sec. 4.3) into ``V_local``; ``v_g`` is its mean. The frozen Bio_ClinicalBERT gives the word
    features ``T`` and the report embedding ``t_g``; GLoRIA's global and local contrastive losses (Sec. 4.4).
    """
    c = _Canvas(figsize, "Chapter 2 \u00b7 MedMoE (vision-language pretraining)" if title else None, shapes,
                _LEGEND)
    img = c.box(1, 31, 8, 7, "image", "data", sub="3\u00d7224\u00d7224")
    swin = c.box(12, 28.5, 11, 11, "Swin-T", "trainable", sub="MedCLIP init", size=8.5)
    c.arrow(img.right, swin.left)
    maps = []
    for i, (ch, side) in enumerate(((96, 56), (192, 28), (384, 14), (768, 7))):
        maps.append(c.box(27, 37.2 - 3.3 * i, 11, 2.7, f"$F^{{({i + 1})}}$: {ch}@{side}\u00b2", "data", size=7))
    for m in maps:
        c.arrow(swin.right, m.left, lw=0.8)
    router = c.box(10.5, 14.5, 19, 9.5, "router: hard top-1", "router",
                   sub="$\\alpha=\\mathrm{softmax}(W_2\\,\\mathrm{ReLU}(W_1\\bar v))$\n$k^*=\\arg\\max_k\\,\\alpha_k$"
                       "   (K = 6)", size=8, subsize=6.8, label_fy=0.8, sub_fy=0.38)
    c.arrow(swin.bottom, (17.5, 24))
    c.text(18.3, 26.3, r"$\bar v$ = mean of last hidden", size=6.5, ha="left")
    c.shape(18.3, 25.0, "(B, 768)", ha="left")
    aux = c.box(10.5, 4, 19, 6.5, r"$L_{aux}=\mathrm{CE}(\alpha,\,y_{mod})$", "loss",
                sub="modality label: X-ray, CT, MRI, \u2026", size=8, subsize=6)
    c.arrow(router.bottom, aux.top, kind="loss")

    c.box(43, 37.6, 27, 2.8, "expert 1 (not chosen for this image)", "expert", size=6.5, alpha=0.45)
    ek = c.box(43, 23.4, 27, 13.4, "", "expert", weight="bold")
    c.text(56.5, 35.2, "expert $k^*$ (selected)", size=8, color=_INK, weight="bold")
    c.text(56.5, 32.6, "per scale: 1\u00d71 conv + ReLU \u2192 $D$, align to 56\u00b2", size=6.5, color=_INK)
    c.text(56.5, 29.6, r"$\beta_k^{(\ell)}=\mathrm{softmax}_\ell\ \mathrm{MLP}(F_k^{(\ell)})$", size=8, color=_INK)
    c.text(56.5, 26.3, r"$V_k=\sum_\ell\ \beta_k^{(\ell)}\,F_k^{(\ell)}$", size=8.5, color=_INK)
    c.shape(56.5, 24.4, "\u03b2: (B, 3136, 4) \u00b7 V: (B, 3136, 768)", size=6)
    c.box(43, 19.8, 27, 2.8, "expert K (not chosen)", "expert", size=6.5, alpha=0.45)
    for m in maps:
        c.arrow(m.right, (43, m.right[1]), lw=0.8)
    c.arrow(router.right, (39.5, router.right[1]), (39.5, 25.5), (43, 25.5))
    c.text(40.1, 21.5, "$k^*$", size=7.5, color=_INK, ha="left")

    vloc = c.box(74, 30.5, 11.5, 6.3, "$V_{local}$", "data", sub="(B, 768, 56, 56)", size=8.5)
    vg = c.box(74, 21.5, 11.5, 6, r"$v_g$ = mean", "data", sub="(B, 768)", size=8.5)
    c.arrow(ek.at(1, 0.68), vloc.left)
    c.arrow(vloc.bottom, vg.top)
    lloc = c.box(89, 30.5, 8.6, 6.3, "$L_{local}$", "loss", sub="words\u2194regions", size=8.5)
    lglo = c.box(89, 21.5, 8.6, 6, "$L_{global}$", "loss", sub=r"$\cos(v_g,t_g)$", size=8.5)
    c.arrow(vloc.right, lloc.left, kind="loss")
    c.arrow(vg.right, lglo.left, kind="loss")

    rep = c.box(36, 4, 9, 6.5, "report", "data", sub="\u2264 25 tokens")
    bert = c.box(48, 3.5, 16, 7.5, f"Bio_ClinicalBERT {SNOW}", "frozen", sub="sum of last 4 layers, words",
                 size=7.5)
    c.arrow(rep.right, bert.left)
    tg = c.box(67, 9.6, 15, 4.6, "report $t_g$", "data", sub="(B, 768)", size=7.5)
    words = c.box(67, 2.8, 15, 4.6, "words $T$", "data", sub="(B, 25, 768)", size=7.5)
    c.arrow(bert.at(1, 0.75), tg.left)
    c.arrow(bert.at(1, 0.25), words.left)
    c.arrow(words.right, (99.3, words.right[1]), (99.3, lloc.right[1]), lloc.right, kind="loss")
    c.arrow(tg.right, (lglo.bottom[0], tg.right[1]), lglo.bottom, kind="loss")
    c.text(56.5, 16.5, r"$\mathcal{L}=L_{global}+L_{local}+\lambda\,L_{aux}$", size=8, color=_INK)
    c.text(56.5, 14.6, "the router learns from $L_{aux}$ only (hard choice, weight 1)", size=6.2)
    return c.fig


def segmote(*, figsize: Sequence[float] = _SIZE, title: bool = True, shapes: bool = True) -> Figure:
    """Chapter 3's diagram: a frozen SAM, expert tokens routed by MoTE in each decoder layer, and PPT.

    Corresponds to SegMoTE's Fig. 2 (overview: frozen encoder, PPT, decoder layers with MoTE) with the PPT of
    Fig. 3, redrawn for what :mod:`medmoe.papers.segmote.model` builds: SAM ViT-B's image and prompt encoders and
    mask decoder stay frozen (256-wide, 512 px input, 32 x 32 embedding); T = 4 learnable expert tokens join SAM's
    output tokens; in each of the decoder's two layers the expert tokens skip SAM's MLP and go through MoTE: a
    noisy top-1 router over E = 4 experts per token (Eq. 1-4; a ``D -> 64`` expert, weighted by the router's
    confidence p, then shared ``64 -> 64 -> 64 -> D`` maps), with the balance loss ``CV^2(imp) + CV^2(load)``
    (Eq. 7-9). The token whose best logit is largest in the last layer gives the mask. PPT (Sec. 3.4) replaces
    the box or point prompt by Q = 2 tokens computed from the image, for prompt-free use.
    """
    c = _Canvas(figsize, "Chapter 3 \u00b7 SegMoTE (token experts in a frozen SAM)" if title else None, shapes,
                _LEGEND)
    img = c.box(1, 32, 8, 6.5, "image", "data", sub="3\u00d7512\u00d7512")
    enc = c.box(12, 31, 14, 8.5, f"SAM ViT-B\nimage encoder {SNOW}", "frozen", sub="\u2192 256\u00d732\u00d732",
                size=7.5, label_fy=0.64, sub_fy=0.18)
    c.arrow(img.right, enc.left)
    pr = c.box(1, 21.5, 8, 6, "box /\npoint", "data", size=7.5)
    penc = c.box(12, 21.5, 14, 6, f"prompt encoder {SNOW}", "frozen", sub="2 sparse tokens", size=7.5)
    c.arrow(pr.right, penc.left)
    emb2 = c.box(1, 11, 8, 6, "image\nembedding", "data", size=7)
    ppt = c.box(12, 10, 14, 8, "PPT (prompt-free)", "trainable", sub="$Q=2$ queries attend over\nLN(image) + xy",
                size=7.5, label_fy=0.75, sub_fy=0.32)
    c.arrow(emb2.right, ppt.left, kind="side")
    c.text(19, 19.8, "or", size=7, color=_INK, style="italic")

    tok = c.box(29, 10, 12, 19, "", "op")
    c.text(35, 27.6, "tokens", size=7.5, color=_INK)
    rows = (("IoU", "frozen"), ("mask \u00d74", "frozen"), ("expert \u00d7T", "expert"), ("prompt", "data"))
    for i, (name, kind) in enumerate(rows):
        c.box(30, 22.5 - 3.6 * i, 10, 2.8, name, kind, size=6.5)
    c.shape(35, 11.0, "(B, 5+T+2, 256)", size=6)
    c.arrow(penc.right, (29, penc.right[1]))
    c.arrow(ppt.right, (29, ppt.right[1]))

    c.frame(44, 10, 31, 31, f"SAM mask decoder {SNOW}: one two-way layer")
    sa = c.box(46, 33, 13, 3.6, f"self-attn {SNOW}", "frozen", size=7)
    t2i = c.box(46, 27.6, 13, 3.6, f"token\u2192image {SNOW}", "frozen", size=7)
    mlp = c.box(46, 20.8, 13, 4.6, f"SAM MLP {SNOW}", "frozen", sub="other tokens", size=7)
    mote = c.box(61, 20.8, 12.5, 4.6, "MoTE", "router", sub="expert tokens", size=8)
    i2t = c.box(46, 14, 13, 3.6, f"image\u2192token {SNOW}", "frozen", size=7)
    c.arrow(tok.at(1, 0.7), (43.2, tok.at(1, 0.7)[1]), (43.2, sa.left[1]), sa.left)
    c.arrow(enc.at(1, 0.8), (61, enc.at(1, 0.8)[1]), (61, t2i.right[1]), t2i.right)
    c.arrow(sa.bottom, t2i.bottom[0:1] + (31.2,))
    c.arrow(t2i.bottom, mlp.top)
    c.arrow((55, 27.6), (55, 26.6), (67.25, 26.6), mote.top)
    c.arrow(mlp.bottom, i2t.top)
    c.arrow(mote.bottom, (67.25, 15.8), i2t.right)
    c.text(67.25, 12.8, "\u00d72 layers", size=7, color=_INK)
    c.shape(61.8, 33.5, "keys: 32\u00b2\nimage tokens", size=6, ha="left")

    # MoTE in detail
    c.frame(77, 10, 22, 31, "MoTE, per expert token")
    rt = c.box(78, 31, 20, 6.5, "noisy router, top-1", "router",
               sub="$\\tilde L=XW_g+$\n$(\\mathrm{softplus}(XW_n)+\\epsilon)\\odot Z$", size=7.5, label_fy=0.8,
               sub_fy=0.36, subsize=6.5)
    for j, name in enumerate(("$e_1$", "$e_2$", "$e_E$")):
        c.box(78 + 7 * j, 24.6, 6, 3.6, name, "expert", size=7.5)
    c.text(97.8, 23.2, "$D\\to64$ each", size=6, ha="right")
    c.box(78, 16.6, 20, 5.2, r"$\times p$, then 64$\to$64$\to$64$\to D$", "trainable",
          sub="replaces the token", size=7)
    c.arrow(rt.bottom, (88, 28.2))
    c.arrow((88, 24.6), (88, 21.8))
    c.text(88, 13.8, "$c_{b,t}=\\max_e\\,\\tilde L_{b,t,e}$\nselected $t^*=\\arg\\max_t\\, c_{b,t}$", size=6.5,
           color=_INK)
    c.arrow(mote.right, (78, mote.right[1]), kind="side", lw=0.8)

    heads = c.box(44, 1.5, 17, 6.5, "expert heads", "trainable", sub="hyper-MLP \u00b7 HQ features", size=7.5)
    masks = c.box(64, 1.5, 11, 6.5, "$T$ masks", "data", sub="(B, T, 128\u00b2)", size=7.5)
    pick = c.box(78, 1.5, 8, 6.5, "pick $t^*$", "router", sub="mask", size=7.5)
    loss = c.box(88.5, 1.5, 10.5, 6.5, r"$L_{seg}$", "loss", sub="+ 0.01 $L_{balance}$", size=8)
    c.arrow((52.5, 14), heads.top)
    c.arrow(heads.right, masks.left)
    c.arrow(masks.right, pick.left)
    c.arrow(pick.right, loss.left, kind="loss")
    c.box(1, 1.5, 40, 5.2, r"$L_{balance}=\mathrm{CV}^2(\mathrm{imp})+\mathrm{CV}^2(\mathrm{load})$", "loss",
          sub="Eq. 7-9, over batch and tokens; the last layer's", size=7.5, subsize=6)
    return c.fig


def mome(*, figsize: Sequence[float] = _SIZE, title: bool = True, shapes: bool = True) -> Figure:
    """Chapter 4's diagram: decoder-layer experts fused per class and voxel by a text-guided router, class heads.

    MoME's paper body is not public, so this corresponds to no paper figure: it draws the book's reconstruction
    (:mod:`medmoe.papers.mome.model`) from the abstract ("multi-scale decoder-layer experts", "CLIP-based
    embeddings", "text-guided router ... pixel-wise fusion across scales", "class-specific segmentation heads") on
    top of the CLIP-Driven Universal Model (Liu et al., ICCV 2023, Fig. 2), whose parts it keeps: Swin UNETR, the
    class-name text embeddings (``txt_encoding``, CLIP ViT-B/32, frozen), ``text_to_vision``, the controller that
    turns [GAP(dec4); u_c] into the 153 parameters of each class's dynamic head, and the partial-label loss. The
    experts are the decoder outputs dec3, dec2, dec1, dec0 and out (the paper configuration's five), each
    projected to 8 channels and upsampled to the patch; the router gives ``w_{c,e}(x)`` per class and voxel, and
    class c's head reads ``F_c(x) = sum_e w_{c,e}(x) E_e(x)``.
    """
    c = _Canvas(figsize, "Chapter 4 \u00b7 MoME (the book's reconstruction)" if title else None, shapes, _LEGEND)
    ct = c.box(1, 31, 8, 7, "CT patch", "data", sub="1\u00d796\u00b3", size=7.5)
    enc = c.box(12, 30, 12, 9, "Swin UNETR\nencoder", "trainable", sub="SSL init", size=7.5, label_fy=0.62,
                sub_fy=0.2)
    c.arrow(ct.right, enc.left)
    levels = (("dec4", "768@3\u00b3"), ("dec3", "384@6\u00b3"), ("dec2", "192@12\u00b3"), ("dec1", "96@24\u00b3"),
              ("dec0", "48@48\u00b3"), ("out", "48@96\u00b3"))
    decs = [c.box(27 + 12.4 * i, 31, 10, 7, name, "trainable", sub=shape, size=8)
            for i, (name, shape) in enumerate(levels)]
    c.arrow(enc.right, decs[0].left)
    for a, b in zip(decs, decs[1:]):
        c.arrow(a.right, b.left)
    experts = []
    for i, d in enumerate(decs[1:]):
        e = c.box(d.x, 19.5, 10, 5.5, f"$E_{i + 1}$", "expert", sub="\u21928 ch, \u219196\u00b3", size=8.5)
        c.arrow(d.bottom, e.top)
        experts.append(e)
    c.text(63, 27.2, "experts =\ndecoder-layer outputs", size=6.5, color=_INK)

    names = c.box(12, 20.5, 10.5, 5, "class names", "data", sub="C classes", size=7)
    clip = c.box(25, 19.5, 11, 6, f"CLIP text {SNOW}", "frozen", sub="(C, 512)", size=7)
    c.arrow(names.right, clip.left)
    c.text(17.25, 18.5, "\u201cA computerized tomography\nof a {organ}\u201d", size=6)
    t2v = c.box(25, 10, 11, 6, "Linear+ReLU", "trainable", sub="$u_c$: (C, 256)", size=7)
    c.arrow(clip.bottom, t2v.top)
    ctrl = c.box(1, 9.5, 17, 7, "controller", "trainable", sub="[GAP(dec4); $u_c$] \u2192 $\\theta_c$\n153 per class",
                 size=7.5, label_fy=0.75, sub_fy=0.33)
    c.arrow(decs[0].at(0.15, 0), (28.5, 27.8), (9.5, 27.8), ctrl.top)
    c.arrow(t2v.left, ctrl.right)
    router = c.box(39, 9.5, 60, 7, "", "router")
    c.text(69, 14.6, r"text-guided router:  $w_{c,e}(x)=\mathrm{softmax}_e\,"
                     r"(W_2\,\mathrm{ReLU}(W_v\,V(x)+W_t\,u_c+b_1)+b_2)$", size=7.5, color=_INK)
    c.text(69, 11.4, r"$F_c(x)=\sum_e\ w_{c,e}(x)\,E_e(x)$   per class $c$ and voxel $x$", size=7.5, color=_INK)
    for e in experts:
        c.arrow(e.bottom, (e.bottom[0], 16.5), lw=0.9)
    c.arrow(t2v.right, router.left)
    head = c.box(14, 1, 33, 6.5, r"dynamic head$_c$: 8$\to$8$\to$8$\to$1 on $F_c$", "trainable",
                 sub="logits (B, C, 96\u00b3), a sigmoid per class", size=7.5)
    c.arrow(ctrl.bottom, (9.5, 4.25), head.left)
    c.arrow((44, 9.5), (44, 7.5))
    c.shape(45, 8.5, "$F_c$: (B, C, 8, 96\u00b3)", size=6, ha="left")
    loss = c.box(52, 1, 47, 6.5, "masked partial-label loss: Dice + BCE", "loss",
                 sub="only over the (volume, class) pairs its source data set labels", size=7.5)
    c.arrow(head.right, loss.left, kind="loss")
    return c.fig


#: The diagrams by chapter name: the primer and the four papers.
DIAGRAMS: dict[str, Callable[..., Figure]] = {
    "primer": moe_layer,
    "mlmoe": mlmoe,
    "medmoe": medmoe,
    "segmote": segmote,
    "mome": mome,
}
