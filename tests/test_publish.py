"""Publishing: the two workflows (validated offline against the GitHub workflow schema), the one URL setting that
every Colab badge, install cell and launch button comes from (medmoe.repro.links), the Colab install cell keeping
Colab's torch, and the repository's LICENSE, CITATION.cff and contributing notes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medmoe.repro import links

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"


def _check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with one of its vendored schemas: no network is needed (nor used)."""
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, files)],
                          capture_output=True, text=True)


def _workflow(name: str) -> dict:
    return yaml.load((WORKFLOWS / name).read_text(), Loader=yaml.BaseLoader)  # BaseLoader: `on` stays a string


def _runs(workflow: dict) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "run" in step]


def _uses(workflow: dict) -> list[str]:
    return [step["uses"].split("@")[0] for job in workflow["jobs"].values() for step in job.get("steps", [])
            if "uses" in step]


# ---------------------------------------------------------------- workflows
def test_workflows_pass_the_github_workflow_schema(tmp_path):
    files = [WORKFLOWS / "ci.yml", WORKFLOWS / "book.yml"]
    done = _check_jsonschema("vendor.github-workflows", *files)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"  # the check is not a no-op
    broken.write_text((WORKFLOWS / "ci.yml").read_text().replace("runs-on:", "runs_on:"))
    assert _check_jsonschema("vendor.github-workflows", broken).returncode != 0


def _readme_targets() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set-up"):]
    block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
    return re.findall(r"^make (\w+)", block, re.M)


def test_ci_runs_the_readmes_two_commands_on_python_311_with_pip_cache():
    assert _readme_targets() == ["book", "test"]
    ci = _workflow("ci.yml")
    assert [r.strip() for r in _runs(ci)] == [f"make {t}" for t in _readme_targets()]
    steps = [s for job in ci["jobs"].values() for s in job["steps"]]
    setup = [s for s in steps if s.get("uses", "").startswith("actions/setup-python@")]
    assert setup and setup[0]["with"]["python-version"] == "3.11" and setup[0]["with"]["cache"] == "pip"
    assert all(job["runs-on"].startswith("ubuntu") for job in ci["jobs"].values())


def test_book_workflow_builds_the_quick_book_and_deploys_it_with_the_pages_actions():
    book = _workflow("book.yml")
    runs = " ".join(_runs(book))
    assert re.search(r"\bmake book\b", runs) and "PROFILE=quick" in runs and set(_readme_targets()) >= {"book"}
    assert {"actions/configure-pages", "actions/upload-pages-artifact", "actions/deploy-pages"} <= set(_uses(book))
    upload = [s for j in book["jobs"].values() for s in j["steps"] if s.get("uses", "").startswith("actions/upload-p")]
    assert upload[0]["with"]["path"] == "book/_build/html"
    assert book["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    assert book["concurrency"]["group"] == "pages" and book["concurrency"]["cancel-in-progress"] == "false"
    deploy = book["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert "sync-links --rev" in runs  # the published links point at the commit the book was built from


# ---------------------------------------------------------------- one URL setting
def test_every_notebook_carries_only_the_generated_links():
    """Fails after the repository block of book/_config.yml changes until `make sync` (medmoe sync-links) runs."""
    problems = links.link_problems(ROOT)
    assert not problems, "run `make sync` (or `.venv/bin/medmoe sync-links`):\n" + "\n".join(problems)


def test_the_url_is_written_once():
    url, _ = links.settings(ROOT)
    owner_name = url.removeprefix("https://github.com/")
    config = (ROOT / "book" / "_config.yml").read_text()
    assert config.count(owner_name) == 1
    for path in [ROOT / "README.md", ROOT / "pyproject.toml", *sorted((ROOT / "book").glob("*.md")),
                 *sorted(WORKFLOWS.glob("*.yml"))]:
        assert owner_name not in path.read_text(), f"{path.relative_to(ROOT)} writes the repository's address"


OLD_BADGE = ("[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             "(https://colab.research.google.com/github/medmoe-book/medmoe-book/blob/main/notebooks/{stem}.ipynb)")
OLD_INSTALL = '    # !pip install -q "medmoe{extra} @ git+https://github.com/medmoe-book/medmoe-book"'


def _copy_of_the_repo(tmp_path: Path, url: str, branch: str) -> Path:
    (tmp_path / "book").mkdir()
    config = (ROOT / "book" / "_config.yml").read_text()
    config = re.sub(r"(?m)^  url: .*$", f"  url: {url}", config, count=1)
    config = re.sub(r"(?m)^  branch: .*$", f"  branch: {branch}", config, count=1)
    (tmp_path / "book" / "_config.yml").write_text(config)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copy(ROOT / "CITATION.cff", tmp_path / "CITATION.cff")
    new = tmp_path / "notebooks" / "05_comparison.py"  # a chapter added later, with the old pattern
    new.write_text("# %% [markdown]\n# # Comparison\n#\n# " + OLD_BADGE.format(stem="05_comparison") +
                   "\n\n# %%\nimport sys\nif 'google.colab' in sys.modules:\n" + OLD_INSTALL.format(extra="") +
                   "\n    pass\n")
    return tmp_path


def test_sync_links_regenerates_every_link_from_the_setting_and_is_idempotent(tmp_path):
    root = _copy_of_the_repo(tmp_path, "https://github.com/someone/fork", "v2.0")
    assert links.link_problems(root)
    changed = links.sync_links(root)
    assert {p.name for p in changed} >= {"05_comparison.py", "00_moe_primer.py", "00_moe_primer.ipynb",
                                         "CITATION.cff"}
    assert links.link_problems(root) == []
    assert links.sync_links(root) == []  # idempotent
    new = (root / "notebooks" / "05_comparison.py").read_text()
    assert ("https://colab.research.google.com/github/someone/fork/blob/v2.0/notebooks/05_comparison.ipynb"
            in new)
    assert '!pip install -q "medmoe @ git+https://github.com/someone/fork@v2.0"' in new
    mlmoe = (root / "notebooks" / "01_mlmoe.ipynb").read_text()
    assert '\\"medmoe[offline-text] @ git+https://github.com/someone/fork@v2.0\\"' in mlmoe
    json.loads(mlmoe)  # still a valid notebook

    changed = links.sync_links(root, rev="0123abc")  # the book workflow: pin to the commit
    assert links.settings(root) == ("https://github.com/someone/fork", "0123abc")
    assert yaml.safe_load((root / "book" / "_config.yml").read_text())["repository"]["branch"] == "0123abc"
    assert links.link_problems(root) == []
    assert "@0123abc" in (root / "notebooks" / "04_mome.py").read_text()


def test_link_check_catches_another_address(tmp_path):
    root = _copy_of_the_repo(tmp_path, "https://github.com/someone/fork", "main")
    links.sync_links(root)
    nb = root / "notebooks" / "02_medmoe.py"
    nb.write_text(nb.read_text() + "\n# see https://github.com/medmoe-book/medmoe-book/issues\n")
    problems = links.link_problems(root)
    assert len(problems) == 1 and "02_medmoe.py: another address" in problems[0]
    nb.write_text(nb.read_text().replace("blob/main/notebooks/02_medmoe", "blob/main/notebooks/03_segmote"))
    assert any("02_medmoe.py: Colab badge" in p for p in links.link_problems(root))


def test_the_book_reads_the_setting_and_its_launch_buttons_open_the_committed_notebooks():
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    assert config["repository"]["path_to_book"] == "book" and config["html"]["use_repository_button"] is True
    assert config["launch_buttons"]["colab_url"] == links.COLAB
    assert "medmoe.repro.links" in config["sphinx"]["extra_extensions"]
    buttons = [{"type": "group", "buttons": [
        {"text": "Colab", "url": "https://colab.research.google.com/github/o/r/blob/v1/book/chapters/01_mlmoe.ipynb"},
        {"text": ".ipynb", "url": "../_sources/chapters/01_mlmoe.ipynb"}]}]
    context = {"header_buttons": buttons}
    links._chapter_launch_buttons(None, "chapters/01_mlmoe", "page.html", context, None)
    urls = [b["url"] for b in context["header_buttons"][0]["buttons"]]
    assert urls == ["https://colab.research.google.com/github/o/r/blob/v1/notebooks/01_mlmoe.ipynb",
                    "../_sources/chapters/01_mlmoe.ipynb"]


@pytest.mark.slow
def test_colab_install_cell_resolves_without_replacing_torch(tmp_path):
    """The notebooks' install command, with the git address swapped for a wheel built from this checkout, in an
    environment that already has torch and torchvision (as Colab has): pip must not install either (--dry-run).

    The environment holds torch's and torchvision's installed-package records (dist-info) copied from this venv, so
    pip sees them as installed without copying GBs. Resolving the other packages reads PyPI, as Colab does.
    """
    import torch
    import torchvision

    source = tmp_path / "source"  # a copy, so the build leaves no medmoe.egg-info in the checkout
    shutil.copytree(ROOT / "medmoe", source / "medmoe", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next(wheels.glob("medmoe-*.whl"))
    env_dir = tmp_path / "colab"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = next(env_dir.glob("lib/python3*/site-packages"))
    for module in (torch, torchvision):
        dist = next(Path(module.__file__).resolve().parent.parent.glob(f"{module.__name__}-*.dist-info"))
        shutil.copytree(dist, site / dist.name)
    commands = set()
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        commands |= set(re.findall(r'!pip install (-q "medmoe(?:\[[\w,-]+\])? @ )git\+[^"]+"', nb.read_text()))
    assert commands, "no install cell found"
    for prefix in sorted(commands):
        spec = prefix.removeprefix("-q ").strip('"') + wheel.resolve().as_uri()
        report = tmp_path / "report.json"
        done = subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install",
                               "--dry-run", "-q", "--report", str(report), spec], capture_output=True, text=True,
                              cwd=tmp_path, env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                                                 "PIP_CONFIG_FILE": os.devnull})
        assert done.returncode == 0, done.stderr[-3000:]
        installed = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                     for i in json.loads(report.read_text())["install"]}
        assert "medmoe" in installed, " ".join(sorted(installed))
        assert "torch" not in installed and "torchvision" not in installed, (spec, installed.get("torch"))


# ---------------------------------------------------------------- repository files
def test_citation_cff_validates_and_cites_the_four_papers():
    done = _check_jsonschema("vendor.citation-file-format", ROOT / "CITATION.cff")
    assert done.returncode == 0, done.stdout + done.stderr
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    bib = (ROOT / "book" / "references.bib").read_text()
    titles = []
    for key in ("liu2025mlmoe", "chopra2025medmoe", "rezvani2025mome", "lu2026segmote"):
        entry = bib[bib.index("{" + key + ","):]
        titles.append(re.search(r"title\s*=\s*\{(.*?)\},\n", entry).group(1).replace("{", "").replace("}", ""))
    assert sorted(r["title"] for r in cff["references"]) == sorted(titles)


def test_license_covers_the_code_and_leaves_data_and_weights_their_own():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text and "END OF TERMS AND CONDITIONS" in text
    assert "Datasets and pretrained weights are NOT covered" in text
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["license"] == "Apache-2.0"
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_readme_says_how_to_contribute():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Contributing"):]
    for needed in ("make sync", "Adding a paper", "medmoe run notebooks/"):
        assert needed in section
