"""Small helpers shared across the library: seeding, the device, parameter counts, argument checks."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import numpy as np
import torch

__all__ = ["seed_everything", "default_device", "resolve_device", "count_parameters", "check_rank", "check_last_dim",
           "resolve_config", "natural_key"]


def seed_everything(seed: int, *, deterministic: bool = False) -> int:
    """Seed Python, NumPy and torch (all devices); optionally ask torch for deterministic kernels.

    Returns the seed so it can be recorded. ``PYTHONHASHSEED`` is set for child processes.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return seed


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device a notebook's ``device`` parameter names: ``"auto"`` is :func:`default_device`, anything else is
    passed to ``torch.device``.

    Raises:
        ValueError: a name ``torch.device`` does not know (``"gpu"``), or ``"cuda"`` without a visible GPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    return dev


def count_parameters(module: torch.nn.Module | Iterable[torch.nn.Parameter], *, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of a module or of an iterable of parameters; with ``trainable_only``, only
    those with ``requires_grad``. Shared parameters are counted once.

    Example:
        >>> lin = torch.nn.Linear(3, 2)
        >>> count_parameters(lin), count_parameters([lin.weight])
        (8, 6)
        >>> _ = lin.bias.requires_grad_(False)
        >>> count_parameters(lin, trainable_only=True)
        6
    """
    params = module.parameters() if isinstance(module, torch.nn.Module) else module
    unique = {id(p): p for p in params}
    return sum(p.numel() for p in unique.values() if p.requires_grad or not trainable_only)


def check_rank(x: torch.Tensor, ranks: int | tuple[int, ...], name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x.ndim`` is not one of ``ranks``."""
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{name} must have rank {want}, got shape {tuple(x.shape)} (rank {x.ndim})")


def check_last_dim(x: torch.Tensor, size: int, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if the last dimension of ``x`` is not ``size``."""
    if x.shape[-1] != size:
        raise ValueError(f"{name} must have last dimension {size}, got shape {tuple(x.shape)}")


def resolve_config(name, configs: dict, overrides: dict, *, what: str, aliases: dict[str, str] | None = None):
    """A model configuration (a frozen dataclass) from a registered ``name`` or a config instance, with fields
    overridden by ``overrides`` (lists become tuples, as configs are data). Used by every ``build_model``.

    ``aliases`` maps documented older names to registered ones (SegMoTE's ``"sam_b"`` -> ``"segmote_paper"``).

    Raises:
        ValueError: an unknown name (listing the known ones) or unknown field names (listing the fields).
    """
    aliases = aliases or {}
    if is_dataclass(name) and not isinstance(name, type):
        cfg = name
    elif name in configs or name in aliases:
        cfg = configs[aliases.get(name, name)]
    else:
        known = sorted(configs) + [f"{a} (= {t})" for a, t in sorted(aliases.items())]
        raise ValueError(f"unknown {what} configuration {name!r}: use one of {known}")
    known = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {type(cfg).__name__} field(s) {unknown}; the fields are {sorted(known)}")
    return replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def natural_key(path: str | os.PathLike[str]) -> list[object]:
    """Sort key of a path's name treating digit runs as numbers (``IMG-2`` before ``IMG-10``), case-insensitive.

    Example:
        >>> sorted(["b10.png", "b2.png"], key=natural_key)
        ['b2.png', 'b10.png']
    """
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", Path(path).name)]
