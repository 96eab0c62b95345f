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
* ``card.yaml`` -- the chapter's notebook, profiles, registry cells, hardware and the files its paper profile reads
  (``inputs``), read by :func:`load_card`;
* ``fixtures.py`` -- where the chapter has a ``rehearsal`` profile: ``write_rehearsal_fixtures(root)`` writes tiny
  data and weights in the real formats, so the paper path runs end to end in CI.

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

__all__ = ["PAPERS", "Card", "load_card", "cards", "card_for_notebook", "resolve_extends"]

PAPERS: tuple[str, ...] = ("primer", "mlmoe", "medmoe", "segmote", "mome")
"""The folders under ``medmoe/papers/``, in chapter order: adding a paper adds its name here."""

_HERE = Path(__file__).resolve().parent
_REQUIRED = ("paper", "chapter", "notebook", "title", "hardware", "datasets", "profiles", "cells")
_OPTIONAL = ("inputs",)
_INPUT_FIELDS = ("path", "what", "command", "when", "unless")


@dataclass(frozen=True)
class Card:
    """What ``medmoe/papers/<name>/card.yaml`` says about one paper (see the comment at the top of each card).

    Attributes:
        name: the folder name (``"mlmoe"``). paper: the paper's short name (``"MLMoE"``). chapter: its number.
        notebook: the notebook's stem (``"01_mlmoe"``, for ``notebooks/01_mlmoe.py``). title: the chapter title.
        hardware: ``{profile: what it needs}``. datasets: the data the chapter reads.
        profiles: ``{profile: {parameter: value}}``, with ``extends:`` already resolved. cells: the paper's registry
        cells (raw mappings). inputs: the files and folders a run reads, each ``{path, what, command[, when,
        unless]}`` (checked by the runner before a notebook starts, :func:`medmoe.repro.runner.check_inputs`).
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
    inputs: list[dict[str, Any]] = field(default_factory=list)

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
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise ValueError(f"{path}: missing field(s) {missing}, unknown field(s) {unknown}; a card has "
                         f"{list(_REQUIRED)} and optionally {list(_OPTIONAL)}")
    profiles = raw["profiles"]
    if not isinstance(profiles, dict) or not profiles:
        raise ValueError(f"{path}: 'profiles' must be a non-empty mapping of profile -> parameters")
    inputs = list(raw.get("inputs") or [])
    for i, entry in enumerate(inputs):
        bad = sorted(set(entry) - set(_INPUT_FIELDS)) if isinstance(entry, dict) else ["(not a mapping)"]
        lacking = [k for k in ("path", "what", "command") if not isinstance(entry, dict) or k not in entry]
        if bad or lacking:
            raise ValueError(f"{path}: inputs[{i}] has unknown field(s) {bad} and lacks {lacking}; an input has "
                             f"{list(_INPUT_FIELDS)} (path, what and command required)")
    return Card(name=name, paper=str(raw["paper"]), chapter=int(raw["chapter"]), notebook=str(raw["notebook"]),
                title=str(raw["title"]), hardware=dict(raw["hardware"] or {}), datasets=list(raw["datasets"] or []),
                profiles=resolve_extends(profiles, where=str(path)), cells=list(raw["cells"] or []), inputs=inputs)


def resolve_extends(profiles: dict[str, Any], *, where: str = "card") -> dict[str, dict[str, Any]]:
    """Profiles with ``extends: <other>`` resolved: the other profile's values, updated by the profile's own.

    A ``rehearsal`` profile is ``{extends: paper, ...}``: the paper path with tiny sizes, so the two cannot drift.

    Example:
        >>> resolve_extends({"paper": {"epochs": 100, "lr": 0.1}, "rehearsal": {"extends": "paper", "epochs": 1}})
        {'paper': {'epochs': 100, 'lr': 0.1}, 'rehearsal': {'epochs': 1, 'lr': 0.1}}
        >>> resolve_extends({"a": {"extends": "b"}, "b": {"extends": "a"}})
        Traceback (most recent call last):
        ...
        ValueError: card: profile 'a' extends in a circle: a -> b -> a
    """
    raw = {k: dict(v or {}) for k, v in profiles.items()}
    out: dict[str, dict[str, Any]] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
        if name in chain:
            raise ValueError(f"{where}: profile {chain[0]!r} extends in a circle: {' -> '.join(chain + (name,))}")
        if name not in raw:
            raise ValueError(f"{where}: profile {chain[-1]!r} extends unknown profile {name!r}; "
                             f"the profiles are {sorted(raw)}")
        values = dict(raw[name])
        base = values.pop("extends", None)
        return {**resolve(str(base), chain + (name,)), **values} if base is not None else values

    for name in raw:
        out[name] = resolve(name, ())
    return out


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
