"""Where the project lives, written once: every Colab badge, Colab install cell and launch button comes from it.

Explained in the book: *Environment and commands*. The one setting is the ``repository`` block of
``book/_config.yml`` (Jupyter Book's own keys):

* ``url``: the repository (``https://github.com/<owner>/<name>``);
* ``branch``: the revision the notebooks and the book point to: a branch, a tag or a commit.

``medmoe sync-links`` (run by ``make sync``) regenerates from it, in every ``notebooks/NN_name.py`` and its paired
``.ipynb``:

* the Colab badge: ``https://colab.research.google.com/github/<owner>/<name>/blob/<rev>/notebooks/NN_name.ipynb``;
* the Colab install cell: ``pip install -q "medmoe @ git+<url>@<rev>"``, so the notebook opened from ``<rev>``
  installs the library of the same revision. The package's own requirements (``pyproject.toml``) are ranges that
  Colab's torch satisfies, so pip keeps Colab's torch.

It also writes the ``repository-code`` address of ``CITATION.cff``.

``medmoe sync-links --rev <commit>`` writes that revision into ``book/_config.yml`` too (the book workflow pins the
published book to the commit it was built from). The theme's repository and launch buttons read the same block;
:func:`setup` (a Sphinx extension listed in ``book/_config.yml``) points a chapter's Colab launch button at the
committed ``notebooks/NN_name.ipynb`` rather than at ``book/chapters/``, which holds build outputs only.
:func:`link_problems` is what the tests use: every link in a notebook must be the generated one.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

__all__ = ["CONFIG", "settings", "colab_url", "install_target", "rewrite", "link_problems", "sync_links", "setup"]

CONFIG = Path("book") / "_config.yml"
COLAB = "https://colab.research.google.com"
NOTEBOOK_GLOB = "[0-9][0-9]_*"

# What the generator owns in a notebook: the badge's Colab address (up to the notebook's name) and the `git+` address
# of the install cell (up to its closing quote, in the .py and in the .ipynb's JSON alike).
_BADGE = re.compile(re.escape(COLAB) + r"/github/[^)\s\"\\]*?/notebooks/(?P<name>[^)\s\"\\/]+\.ipynb)")
_INSTALL = re.compile(r"git\+(?:https?|ssh|file)://[^\s\"\\]+")
_CITATION = Path("CITATION.cff")
_CITATION_LINE = re.compile(r'^repository-code:.*$', re.M)
_BRANCH_LINE = re.compile(r"^(?P<indent>[ \t]+)branch:[ \t]*(?P<value>\S+)[ \t]*$", re.M)


def settings(root: str | Path = ".") -> tuple[str, str]:
    """``(url, rev)`` from ``book/_config.yml``'s ``repository`` block (``url``, ``branch``).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / "book").mkdir()
        >>> _ = (d / CONFIG).write_text("repository:\\n  url: https://github.com/o/r/\\n  branch: v1.0\\n")
        >>> settings(d)
        ('https://github.com/o/r', 'v1.0')
    """
    config = yaml.safe_load((Path(root) / CONFIG).read_text()) or {}
    repo = config.get("repository") or {}
    url, rev = repo.get("url"), repo.get("branch")
    if not url or not rev:
        raise ValueError(f"{Path(root) / CONFIG} must set repository.url and repository.branch")
    url = str(url).rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"repository.url must be https://github.com/<owner>/<name> (Colab opens GitHub), got {url}")
    return url, str(rev)


def colab_url(url: str, rev: str, notebook: str) -> str:
    """The Colab address of ``notebooks/<notebook>.ipynb`` at ``rev``.

    Example:
        >>> colab_url("https://github.com/o/r", "main", "00_moe_primer")
        'https://colab.research.google.com/github/o/r/blob/main/notebooks/00_moe_primer.ipynb'
    """
    owner_name = url.removeprefix("https://github.com/")
    return f"{COLAB}/github/{owner_name}/blob/{rev}/notebooks/{Path(notebook).stem}.ipynb"


def install_target(url: str, rev: str) -> str:
    """What the install cell gives pip after ``medmoe @`` (or ``medmoe[extra] @``).

    Example:
        >>> install_target("https://github.com/o/r", "v0.1.0")
        'git+https://github.com/o/r@v0.1.0'
    """
    return f"git+{url}@{rev}"


def rewrite(text: str, url: str, rev: str) -> str:
    """``text`` (a notebook's .py or .ipynb) with its badge and install address generated from ``url`` and ``rev``.

    Idempotent, and the notebook's name comes from the badge itself.

    Example:
        >>> line = "[![Open in Colab](x.svg)](https://colab.research.google.com/github/a/b/blob/main/notebooks/01_x.ipynb)"
        >>> rewrite(line, "https://github.com/o/r", "v1").endswith("/github/o/r/blob/v1/notebooks/01_x.ipynb)")
        True
        >>> rewrite('# !pip install -q "medmoe[extra] @ git+https://github.com/a/b"', "https://github.com/o/r", "v1")
        '# !pip install -q "medmoe[extra] @ git+https://github.com/o/r@v1"'
    """
    text = _BADGE.sub(lambda m: colab_url(url, rev, m.group("name")), text)
    return _INSTALL.sub(install_target(url, rev), text)


def notebooks(root: str | Path = ".") -> list[Path]:
    """Every chapter notebook, ``notebooks/NN_name.py`` and ``.ipynb`` (the new ones too)."""
    folder = Path(root) / "notebooks"
    return sorted(p for p in folder.glob(NOTEBOOK_GLOB) if p.suffix in (".py", ".ipynb"))


def link_problems(root: str | Path = ".") -> list[str]:
    """Every badge, install cell or address of the project in the notebooks that is not the generated one.

    Each notebook must carry exactly one Colab badge (of itself) and one install address, both from
    ``book/_config.yml``; and no other address of a GitHub repository or of Colab.
    """
    url, rev = settings(root)
    problems: list[str] = []
    for path in notebooks(root):
        text = path.read_text()
        where = path.relative_to(root) if path.is_relative_to(root) else path
        badges = [m.group(0) for m in _BADGE.finditer(text)]
        want = colab_url(url, rev, path.stem)
        if badges != [want]:
            problems.append(f"{where}: Colab badge {badges or 'missing'}, expected one: {want}")
        installs = _INSTALL.findall(text)
        if installs != [install_target(url, rev)]:
            problems.append(f"{where}: install address {installs or 'missing'}, expected one: "
                            f"{install_target(url, rev)}")
        rest = _INSTALL.sub("", _BADGE.sub("", text))
        for other in re.findall(r"(?:https?://)?(?:github\.com|colab\.research\.google\.com)/[^\s)\"\\]*", rest):
            if other.rstrip("/") != COLAB.removeprefix("https://") and "colab-badge.svg" not in other:
                problems.append(f"{where}: another address: {other}")
    citation = Path(root) / _CITATION
    if citation.is_file() and _CITATION_LINE.findall(citation.read_text()) != [f'repository-code: "{url}"']:
        problems.append(f"{_CITATION}: repository-code is not \"{url}\"")
    return problems


def sync_links(root: str | Path = ".", rev: str | None = None) -> list[Path]:
    """Regenerate every notebook's badge and install address from ``book/_config.yml``; return the files changed.

    ``rev`` (e.g. a commit) replaces ``repository.branch`` in ``book/_config.yml`` first, so the book's launch
    buttons agree with the notebooks. Files are written only when their text changes.
    """
    root = Path(root)
    changed: list[Path] = []
    if rev is not None:
        config = root / CONFIG
        text = config.read_text()
        block = re.search(r"^repository:[ \t]*\n((?:[ \t]+.*\n?)+)", text, re.M)
        if block is None or not _BRANCH_LINE.search(block.group(1)):
            raise ValueError(f"{config}: no `branch:` line in the repository block to set to {rev}")
        new_block = _BRANCH_LINE.sub(lambda m: f"{m.group('indent')}branch: {rev}", block.group(1), count=1)
        new = text[: block.start(1)] + new_block + text[block.end(1):]
        if new != text:
            config.write_text(new)
            changed.append(config)
    url, rev = settings(root)
    citation = root / _CITATION
    if citation.is_file():
        text = citation.read_text()
        new = _CITATION_LINE.sub(f'repository-code: "{url}"', text)
        if new != text:
            citation.write_text(new)
            changed.append(citation)
    for path in notebooks(root):
        text = path.read_text()
        new = rewrite(text, url, rev)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


# ---------------------------------------------------------------- Sphinx: launch buttons of the chapters
_CHAPTER_PATH = re.compile(r"(/blob/[^/]+/)book/chapters/")


def _point_at_notebooks(obj):
    """``obj`` (the theme's header buttons) with every ``.../blob/<rev>/book/chapters/`` address on ``notebooks/``.

    Example:
        >>> _point_at_notebooks([{"buttons": [{"url": "https://c/github/o/r/blob/v1/book/chapters/01_x.ipynb"}]}])
        [{'buttons': [{'url': 'https://c/github/o/r/blob/v1/notebooks/01_x.ipynb'}]}]
    """
    if isinstance(obj, dict):
        return {k: _CHAPTER_PATH.sub(r"\1notebooks/", v) if k == "url" and isinstance(v, str)
                else _point_at_notebooks(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_point_at_notebooks(v) for v in obj]
    return obj


def _chapter_launch_buttons(app, pagename, templatename, context, doctree) -> None:
    if "header_buttons" in context and pagename.startswith("chapters/"):
        context["header_buttons"] = _point_at_notebooks(context["header_buttons"])


def setup(app):
    """Sphinx extension: a chapter's launch buttons open the committed ``notebooks/NN_name.ipynb``.

    The theme builds them as ``<repository>/blob/<branch>/book/chapters/NN_name.ipynb``, a build output that is not
    in the repository; this runs after the theme (priority 502) and swaps the path.
    """
    app.connect("html-page-context", _chapter_launch_buttons, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
