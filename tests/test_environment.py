"""The install files agree: environment.yml mirrors requirements.txt; pyproject accepts ranges."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

from medmoe.env import environment

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, version = re.split(r"==", line)
            out[name.lower().replace("_", "-")] = version
    return out


def test_environment_yml_mirrors_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_part = next(d["pip"] for d in deps if isinstance(d, dict))
    assert _pins(pip_part) == req
    assert all("==" in line for line in pip_part)


def test_pyproject_uses_ranges_and_declares_cli():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = meta["project"]["dependencies"]
    assert not any("==" in d for d in deps), "the package must accept ranges so Colab's torch is kept"
    names = {re.split(r"[<>=!]", d)[0] for d in deps}
    assert {"torch", "timm", "transformers", "segment-anything", "monai", "accelerate"} <= names
    assert meta["project"]["scripts"]["medmoe"] == "medmoe.repro.cli:main"


def test_environment_record_has_versions_and_device():
    env = environment()
    assert env["packages"]["torch"] and env["packages"]["medmoe"]
    assert env["device"] in ("cpu",) or "GPU" in env["device"] or env["device"]
    assert env["python"].startswith("3.")
