"""One folder per paper, each a chapter of the book, on top of the shared core (:mod:`medmoe.moe`,
:mod:`medmoe.backbones`, :mod:`medmoe.engine`, :mod:`medmoe.metrics`, :mod:`medmoe.data`).

Every folder ``medmoe/papers/<name>/`` has the same parts (book: *Adding a paper*):

* ``__init__.py`` -- links to the chapter; exports the four recipe verbs ``build``, ``train``, ``evaluate``,
  ``count`` and the model's ``CONFIGS`` (names ``<paper>_paper``, ``<paper>_quick``, ``<paper>_test``);
* ``model.py`` -- the paper's model and its base model, configurations as data, ``build_model(name, *,
  backbone=None, **overrides)``;
* ``recipe.py`` -- losses, step functions and the four verbs, every ``train`` wrapping :func:`medmoe.engine.fit`
  through :func:`medmoe.engine.train_loop`;
* ``data.py`` -- the paper's real file layouts, fixture writers in those layouts and its task datasets;
* ``prepare.py`` -- what ``data_scripts/`` calls to arrange downloads into those layouts (where there is one);
* ``card.yaml`` -- the chapter's notebook, profiles, registry cells and hardware (read by :func:`load_card`).

:data:`PAPERS` is the one list of papers; the runner, the registry, ``.ci/run`` and the tests discover everything
else from the folders. Importing this package loads no paper's code, only the cards.

Example:
    >>> [card.notebook for card in cards()]
    ['00_moe_primer', '01_mlmoe', '02_medmoe', '03_segmote', '04_mome']
    >>> card_for_notebook("03_segmote").paper
    'SegMoTE'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PAPERS", "Card", "load_card", "cards", "card_for_notebook"]

PAPERS: tuple[str, ...] = ("primer", "mlmoe", "medmoe", "segmote", "mome")
"""The folders under ``medmoe/papers/``, in chapter order: adding a paper adds its name here."""

_HERE = Path(__file__).resolve().parent
_REQUIRED = ("paper", "chapter", "notebook", "title", "hardware", "datasets", "profiles", "cells")


@dataclass(frozen=True)
class Card:
    """What ``medmoe/papers/<name>/card.yaml`` says about one paper (see the comment at the top of each card).

    Attributes:
        name: the folder name (``"mlmoe"``). paper: the paper's short name (``"MLMoE"``). chapter: its number.
        notebook: the notebook's stem (``"01_mlmoe"``, for ``notebooks/01_mlmoe.py``). title: the chapter title.
        hardware: ``{profile: what it needs}``. datasets: the data the chapter reads.
        profiles: ``{profile: {parameter: value}}``. cells: the paper's registry cells (raw mappings).
    """

    name: str
    paper: str
    chapter: int
    notebook: str
    title: str
    hardware: dict[str, str] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    cells: list[dict[str, Any]] = field(default_factory=list)

    @property
    def notebook_path(self) -> str:
        """The notebook's path relative to the repository root."""
        return f"notebooks/{self.notebook}.py"


@lru_cache(maxsize=None)
def load_card(name: str) -> Card:
    """The card of paper folder ``name``.

    Raises:
        ValueError: ``name`` is not in :data:`PAPERS`, or the card misses a field or has an unknown one.
        FileNotFoundError: the folder has no ``card.yaml``.
    """
    if name not in PAPERS:
        raise ValueError(f"unknown paper {name!r}; the papers are {list(PAPERS)} (medmoe.papers.PAPERS)")
    path = _HERE / name / "card.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"paper {name!r} has no card at {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in _REQUIRED if k not in raw]
    unknown = sorted(set(raw) - set(_REQUIRED))
    if missing or unknown:
        raise ValueError(
            f"{path}: missing field(s) {missing}, unknown field(s) {unknown}; a card has {list(_REQUIRED)}"
        )
    profiles = raw["profiles"]
    if not isinstance(profiles, dict) or not profiles:
        raise ValueError(f"{path}: 'profiles' must be a non-empty mapping of profile -> parameters")
    return Card(name=name, paper=str(raw["paper"]), chapter=int(raw["chapter"]), notebook=str(raw["notebook"]),
                title=str(raw["title"]), hardware=dict(raw["hardware"] or {}), datasets=list(raw["datasets"] or []),
                profiles={k: dict(v or {}) for k, v in profiles.items()}, cells=list(raw["cells"] or []))


def cards() -> list[Card]:
    """Every paper's card, in chapter order."""
    return sorted((load_card(name) for name in PAPERS), key=lambda c: c.chapter)


def card_for_notebook(stem: str) -> Card:
    """The card whose notebook is ``notebooks/<stem>.py``.

    Raises:
        ValueError: no paper's card names that notebook (listing the ones that exist).
    """
    for card in cards():
        if card.notebook == stem:
            return card
    raise ValueError(f"no paper card names notebook {stem!r}; the cards name {[c.notebook for c in cards()]} "
                     "(add the paper's folder to medmoe.papers.PAPERS)")
