"""The library's layout holds (issue "one folder per paper"): no import circle, layers import downwards, every
paper folder has the same parts, function-level imports say why, and notebooks import what the library has.

Book: *Adding a paper* (``book/adding_a_paper.md``) lists the rules these tests check.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from medmoe.papers import PAPERS, cards

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "medmoe"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, ast.AST, bool]]:
    """(imported medmoe module, node, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, ast.AST, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child, in_function) for a in child.names if a.name.split(".")[0] == "medmoe")
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative import
                    base = this.split(".") if is_pkg else this.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if mod.split(".")[0] != "medmoe":
                    continue
                for alias in child.names:  # `from medmoe.papers import primer` imports a module
                    sub = f"{mod}.{alias.name}"
                    out.append((sub if sub in MODULES else mod, child, in_function))
            visit(child, inner)

    visit(tree, False)
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = set()
        for mod, _, _ in _imports(path):
            while mod and mod not in MODULES:  # `from medmoe.x import name` where medmoe.x is a module
                mod = mod.rpartition(".")[0]
            if mod and mod != name:
                targets.add(mod)
        graph[name] = targets
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_imports():
    graph = _graph()
    assert "medmoe.engine" in graph["medmoe.papers.primer.recipe"]
    assert "medmoe.papers.primer.model" in graph["medmoe.papers.primer"]


def test_no_import_cycle():
    """Every import counts, at module level or inside a function (implicit parent-package imports do not)."""
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Which layer may import which: a module under a prefix may not import anything under the listed prefixes.
FORBIDDEN = {
    "medmoe.moe": ("medmoe.papers", "medmoe.repro", "medmoe.backbones", "medmoe.data", "medmoe.engine"),
    "medmoe.data": ("medmoe.papers", "medmoe.repro"),
    "medmoe.backbones": ("medmoe.papers", "medmoe.repro"),
    "medmoe.engine": ("medmoe.papers", "medmoe.repro"),
    "medmoe.metrics": ("medmoe.papers", "medmoe.repro"),
    "medmoe.utils": ("medmoe.papers", "medmoe.repro", "medmoe.data", "medmoe.backbones"),
    "medmoe.viz": ("medmoe.papers", "medmoe.repro"),
    "medmoe.claims": ("medmoe.papers", "medmoe.repro", "medmoe.data", "medmoe.backbones", "medmoe.engine"),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_downwards(layer):
    bad = [(m, t) for m, targets in _graph().items() if m == layer or m.startswith(layer + ".")
           for t in targets if any(t == f or t.startswith(f + ".") for f in FORBIDDEN[layer])]
    assert not bad, f"{layer} must not import {FORBIDDEN[layer]}: {bad}"


def test_papers_do_not_import_each_other():
    bad = []
    for mod, targets in _graph().items():
        m = re.match(r"medmoe\.papers\.(\w+)", mod)
        if not m:
            continue
        for t in targets:
            n = re.match(r"medmoe\.papers\.(\w+)", t)
            if n and n.group(1) != m.group(1):
                bad.append((mod, t))
    assert not bad, f"a paper folder imports another paper's code: {bad}"


def test_repro_reads_only_the_cards():
    """The runner and registry read the papers' cards, never a paper's model code (imports stay one-way).

    The one reach beyond a card is by name, at run time: a ``rehearsal`` profile's ``{fixtures}`` makes the runner
    call ``medmoe.papers.<name>.fixtures.write_rehearsal_fixtures`` (tested in tests/test_runner.py).
    """
    for mod, targets in _graph().items():
        if mod.startswith("medmoe.repro"):
            assert not [t for t in targets if t.startswith("medmoe.papers.")], mod


def test_function_level_imports_state_their_reason():
    missing = []
    for path in sorted(PKG.rglob("*.py")) + sorted((ROOT / "data_scripts").glob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here, before = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
                    if "#" not in here and "#" not in before:
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {here.strip()}")
    assert not missing, "imports inside functions need a comment saying why:\n" + "\n".join(missing)


@pytest.mark.parametrize("paper", PAPERS)
def test_paper_folder_has_its_parts(paper):
    folder = PKG / "papers" / paper
    for part in ("__init__.py", "model.py", "recipe.py", "card.yaml"):
        assert (folder / part).is_file(), f"medmoe/papers/{paper}/{part} is missing"
    card = next(c for c in cards() if c.name == paper)
    if card.datasets != ["phantoms"]:  # a paper that reads real data has its layouts and their arranging
        assert (folder / "data.py").is_file(), f"medmoe/papers/{paper}/data.py is missing"
    if "rehearsal" in card.profiles:  # the runner writes its {fixtures} with this module
        assert (folder / "fixtures.py").is_file(), f"medmoe/papers/{paper}/fixtures.py is missing"
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
    assert f"chapters/{card.notebook}" in doc, f"medmoe/papers/{paper}/__init__.py must link its chapter"


@pytest.mark.parametrize("paper", PAPERS)
def test_public_classes_link_to_the_book(paper):
    tree = ast.parse((PKG / "papers" / paper / "model.py").read_text())
    unlinked = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")
                and "Chapter" not in (ast.get_docstring(n) or "") and "chapter" not in (ast.get_docstring(n) or "")]
    assert not unlinked, f"medmoe/papers/{paper}/model.py: classes without a link to the chapter: {unlinked}"


def _library_names() -> set[str]:
    names = set()
    for path in PKG.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                names.add(node.name)
    return names


NOTEBOOKS = [c.notebook_path for c in cards()]


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebooks_import_rather_than_redefine(notebook):
    source = (ROOT / notebook).read_text()
    tree = ast.parse(re.sub(r"^(\s*)[%!]", r"\1#", source, flags=re.M))
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    clash = sorted(defined & _library_names())
    assert not clash, f"{notebook} redefines what medmoe has: {clash}"
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "fit" not in calls, f"{notebook} calls engine.fit directly; call the paper's recipe.train"
    assert "fingerprint" not in calls, f"{notebook} builds a run key by hand; use the injected run_key"
    assert "torch.cuda.is_available()" not in source, f"{notebook}: use medmoe.utils.resolve_device"


@pytest.mark.parametrize("card", cards(), ids=lambda c: c.name)
def test_notebook_takes_the_injected_run_key_and_names_its_folder(card):
    source = (ROOT / card.notebook_path).read_text()
    params = source.split('# %% tags=["parameters"]', 1)[1].split("# %%", 1)[0]
    assert re.search(r"^run_key = None\b", params, flags=re.M), f"{card.notebook_path}: parameters need run_key = None"
    assert len(re.findall(r"^run_key\s*=", source, flags=re.M)) == 1, f"{card.notebook_path} reassigns run_key"
    assert f"medmoe/papers/{card.name}/" in source, (
        f"{card.notebook_path} must say its code is in medmoe/papers/{card.name}/"
    )
