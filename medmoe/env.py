"""The environment a run happened in: package versions, device, git commit, memory.

Recorded with every run by :mod:`medmoe.repro.runner` (book: *Environment and commands*), so every number in
the book can be traced to the software and hardware that produced it.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

__all__ = ["environment", "peak_memory_mb", "KEY_PACKAGES"]

KEY_PACKAGES = (
    "medmoe", "torch", "torchvision", "numpy", "timm", "transformers", "segment-anything", "monai",
    "accelerate", "matplotlib", "seaborn", "papermill", "jupytext", "nbval", "jupyter-book",
)


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (and its finished children), plus peak CUDA memory if any."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = {"cpu_rss_mb": round(max(self_kb, child_kb) / 1024, 1)}
    try:
        import torch  # lazy: the environment record is written even where torch is missing or broken

        if torch.cuda.is_available():
            out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except ImportError:  # pragma: no cover
        pass
    return out


def environment() -> dict:
    """A JSON-serialisable record of the software and hardware.

    Example:
        >>> env = environment()
        >>> {"python", "cpu_count", "device", "git_commit", "packages"} <= set(env)
        True
    """
    env: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {p: _version(p) for p in KEY_PACKAGES},
        "git_commit": _git_commit(Path(__file__).resolve().parent.parent),
    }
    try:
        import torch  # lazy: the environment record is written even where torch is missing or broken

        cuda = torch.cuda.is_available()
        env["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
        env["cuda"] = torch.version.cuda if cuda else None
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        env["device"] = "unknown (torch missing)"
    return env
