"""The architecture diagrams (``medmoe.diagrams``) build, are diagrams (boxes and arrows), carry their chapter's
symbols, and keep every label readable: no two texts overlap and none leaves the figure.

Book: every chapter's architecture section shows its diagram (*Chapter 0* the primer's MoE layer).
"""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import BoxStyle, FancyArrowPatch, FancyBboxPatch
from matplotlib.text import Text

from medmoe.diagrams import DIAGRAMS, KINDS

#: Symbols each diagram must show (any one spelling of each: the rendered glyph or its mathtext).
SYMBOLS = {
    "primer": [("\\tau", "τ"), ("g_i",), ("E_N",), ("CV",), ("f_i",), ("z-loss",)],
    "mlmoe": [("\\tau", "τ"), ("f_t^i",), ("L_{div}",), ("L_{dis}",), ("\\Phi_u",), ("virtual",), ("❄",)],
    "medmoe": [("\\beta", "β"), ("L_{aux}",), ("L_{global}",), ("L_{local}",), ("k^*",), ("v_g",), ("❄",)],
    "segmote": [("W_g",), ("W_n",), ("CV",), ("PPT",), ("expert",), ("t^*",), ("❄",)],
    "mome": [("w_{c,e}",), ("u_c",), ("\\theta_c",), ("dec4",), ("CLIP",), ("partial-label",), ("❄",)],
}


def _texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


@pytest.fixture(params=sorted(DIAGRAMS))
def diagram(request):
    fig = DIAGRAMS[request.param]()
    yield request.param, fig
    plt.close(fig)


def test_the_chapters_have_their_diagram():
    assert sorted(DIAGRAMS) == ["medmoe", "mlmoe", "mome", "primer", "segmote"]
    assert set(SYMBOLS) == set(DIAGRAMS)


def test_diagram_is_boxes_and_arrows(diagram):
    name, fig = diagram
    patches = fig.axes[0].patches
    assert sum(isinstance(p, FancyBboxPatch) for p in patches) >= 5, name
    assert sum(isinstance(p, FancyArrowPatch) for p in patches) >= 4, name
    modules = [p for p in patches if isinstance(p, FancyBboxPatch) and isinstance(p.get_boxstyle(), BoxStyle.Round)]
    faces = {matplotlib.colors.to_hex(p.get_facecolor(), keep_alpha=True) for p in modules if p.get_facecolor()[3]}
    allowed = {matplotlib.colors.to_hex(KINDS[k][0] + "ff", keep_alpha=True) for k in KINDS}
    assert {f[:7] for f in faces} <= {a[:7] for a in allowed}, f"{name}: box colours outside the visual language"


def test_diagram_shows_its_symbols(diagram):
    name, fig = diagram
    text = "\n".join(t.get_text() for t in _texts(fig))
    missing = [spellings for spellings in SYMBOLS[name] if not any(s in text for s in spellings)]
    assert not missing, f"{name}: missing {missing}"


def test_texts_do_not_overlap_or_leave_the_figure(diagram):
    name, fig = diagram
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
    w, h = fig.bbox.width, fig.bbox.height
    outside = [s for s, b in boxes if b.x0 < 0 or b.y0 < 0 or b.x1 > w or b.y1 > h]
    assert not outside, f"{name}: cut off: {outside}"
    overlaps = [(s1, s2) for (s1, b1), (s2, b2) in itertools.combinations(boxes, 2)
                if b1.x0 < b2.x1 - 1 and b2.x0 < b1.x1 - 1 and b1.y0 < b2.y1 - 1 and b2.y0 < b1.y1 - 1]
    assert not overlaps, f"{name}: overlapping texts: {overlaps}"


@pytest.mark.parametrize("options", [{"shapes": False}, {"title": False}, {"figsize": (12, 5.4)}])
def test_options(options):
    for fn in DIAGRAMS.values():
        fig = fn(**options)
        assert fig.get_size_inches().tolist() == list(options.get("figsize", (10, 4.5)))
        plt.close(fig)
    with pytest.raises(TypeError):
        DIAGRAMS["primer"]((10, 4.5))  # keyword-only
