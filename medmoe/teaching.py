"""Small helpers the chapters use to *show* the library's own code and to state generated results.

Explained in the book: every chapter's "the layer, on a toy batch" section shows a class or function of the library
with :func:`show_source` (the same text a reader finds in the file), then runs it; the summary of every chapter is
rendered with :func:`markdown`.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

__all__ = ["show_source", "source_location", "markdown"]

_ROOT = Path(__file__).resolve().parent.parent


def source_location(obj) -> str:
    """``medmoe/papers/x/model.py, lines a-b``: where ``obj`` is defined, relative to the repository.

    >>> from medmoe.moe import dispatch_combine
    >>> source_location(dispatch_combine).startswith("medmoe/moe/dispatch.py, lines ")
    True
    """
    obj = inspect.unwrap(obj)
    try:
        path = Path(inspect.getsourcefile(obj)).resolve()
    except TypeError as e:
        raise TypeError(f"cannot show the source of {obj!r}: it is not a Python function, class or method") from e
    lines, start = inspect.getsourcelines(obj)
    try:
        shown = path.relative_to(_ROOT).as_posix()
    except ValueError:  # installed elsewhere (site-packages): the module path still tells where it lives
        shown = f"{obj.__module__.replace('.', '/')}.py"
    return f"{shown}, lines {start}-{start + len(lines) - 1}"


def _without_docstrings(src: str) -> str:
    """``src`` (dedented Python) with the docstrings of its functions and classes removed, the code kept."""
    tree = ast.parse(src)
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str) and len(node.body) > 1:
                drop.update(range(first.lineno, first.end_lineno + 1))
    return "\n".join(line for i, line in enumerate(src.splitlines(), start=1) if i not in drop)


def show_source(*objs, dedent: bool = True, docstrings: bool = False):
    """The source of each of ``objs`` (classes, functions, methods), as one highlighted Python block.

    Each block starts with a comment naming the file and lines it comes from, so the page shows exactly the code
    the run uses. Docstrings are left out unless ``docstrings=True`` (the page explains the code in prose; the file
    keeps them). In a notebook the returned :class:`IPython.display.Code` renders with syntax highlighting.

    >>> from medmoe.moe import dispatch_combine
    >>> code = show_source(dispatch_combine).data
    >>> "def dispatch_combine" in code, "Args:" in code, "Args:" in show_source(dispatch_combine, docstrings=True).data
    (True, False, True)
    """
    from IPython.display import Code  # lazy: IPython is only needed where a notebook shows code

    if not objs:
        raise ValueError("show_source needs at least one class, function or method")
    parts = []
    for obj in objs:
        src = textwrap.dedent(inspect.getsource(inspect.unwrap(obj))) if dedent or not docstrings else \
            inspect.getsource(inspect.unwrap(obj))
        if not docstrings:
            src = _without_docstrings(src)
        note = "" if docstrings else " (docstrings left out)"
        parts.append(f"# {source_location(obj)}{note}\n" + src.rstrip())
    return Code("\n\n\n".join(parts), language="python")


def markdown(text: str):
    """``text`` as rendered Markdown in a notebook (for sentences generated from a run's numbers).

    >>> markdown("**42**").data
    '**42**'
    """
    from IPython.display import Markdown  # lazy: IPython is only needed where a notebook renders text

    if not isinstance(text, str) or not text.strip():
        raise ValueError("markdown() needs a non-empty string")
    return Markdown(text)
