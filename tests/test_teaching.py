"""Every chapter teaches the same way (book: every chapter page): prerequisites and links first, the MoE layer's own
code run on a toy batch, displayed equations, set-up cells hidden, and a Summary and Exercises at the end whose
commands run (each `-p NAME` is a parameter of the notebook it names)."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest

from medmoe.papers import cards
from medmoe.repro.runner import notebook_parameters

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = [c.notebook_path for c in cards()] + ["notebooks/05_comparison.py"]
EXERCISE = re.compile(r"`medmoe run (notebooks/\S+?\.py)((?:\s+-p\s+\S+\s+[^`\s]+)+)`")


def _cells(path: str):
    return jupytext.read(ROOT / path).cells


def _markdown(path: str) -> str:
    return "\n".join(c.source for c in _cells(path) if c.cell_type == "markdown")


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}")
    nxt = text.find("\n## ", start + 1)
    return text[start: nxt if nxt != -1 else None]


def test_the_comparison_chapter_is_in_the_book():
    assert "chapters/05_comparison" in (ROOT / "book/_toc.yml").read_text()
    assert "notebooks/05_comparison.py" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapter_ends_with_summary_and_runnable_exercises(path):
    text = _markdown(path)
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[-2:] == ["Summary", "Exercises"], f"{path} must end with ## Summary, ## Exercises: {headings}"
    found = EXERCISE.findall(_section(text, "Exercises"))
    assert len(found) >= 3, f"{path}: at least 3 exercises as `medmoe run notebooks/NN_x.py -p name value` commands"
    for notebook, pairs in found:
        assert (ROOT / notebook).is_file(), f"{path}: an exercise runs {notebook}, which does not exist"
        params = notebook_parameters(jupytext.read(ROOT / notebook))
        names = re.findall(r"-p\s+(\S+)\s+\S+", pairs)
        unknown = sorted(set(names) - set(params))
        assert not unknown, f"{path}: exercise `{notebook}{pairs}` sets {unknown}, not parameters of {notebook}"


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapter_opens_with_prerequisites_and_links(path):
    opening = "\n".join(c.source for c in _cells(path)[:3] if c.cell_type == "markdown")
    assert "**Prerequisites.**" in opening, f"{path}: the opening needs a **Prerequisites.** line"
    links = set(re.findall(r"\]\((0\d_[a-z_]+)\.ipynb", opening))
    others = {Path(p).stem for p in CHAPTERS} - {Path(path).stem}
    assert links & others, f"{path}: the opening must link to other chapters ({sorted(others)})"
    if not path.endswith("00_moe_primer.py"):
        assert "00_moe_primer" in links, f"{path}: the prerequisites must link to the primer's sections"
    assert "medmoe/" in opening, f"{path}: the opening must say where the chapter's code lives"


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapter_shows_the_library_code_it_runs(path):
    code = "\n".join(c.source for c in _cells(path) if c.cell_type == "code")
    assert "show_source(" in code, f"{path}: show the library's own code with medmoe.teaching.show_source"


@pytest.mark.parametrize("path", [p for p in CHAPTERS if "05_comparison" not in p])
def test_chapter_displays_its_equations(path):
    text = _markdown(path)
    assert text.count("$$") >= 2 * 3, f"{path}: the losses and routing need displayed equations ($$ ... $$)"


@pytest.mark.parametrize("path", CHAPTERS)
def test_set_up_cells_are_hidden_on_the_page(path):
    code = [c for c in _cells(path) if c.cell_type == "code"]
    imports = next(c for c in code if re.search(r"^(from|import) ", c.source, flags=re.M)
                   and "parameters" not in c.metadata.get("tags", []) and "google.colab" not in c.source)
    assert "hide-cell" in imports.metadata.get("tags", []), f"{path}: tag the imports cell hide-cell"
    saving = [c for c in code if "save_results(" in c.source]
    assert saving and "hide-cell" in saving[-1].metadata.get("tags", []), f"{path}: tag the save_results cell hide-cell"
