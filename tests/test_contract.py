"""The contract every registered paper configuration keeps (in the spirit of timm's ``tests/test_models.py``).

For every ``<paper>_test`` configuration in every ``medmoe/papers/<name>/model.py``: it builds through the one
``build_model(name, *, backbone=None, **overrides)`` signature, a forward pass on the model module's
``example_inputs`` gives the promised output shapes and finite values, a backward pass reaches the trainable
parameters, the recipe's ``count`` agrees with a direct count, and bad arguments raise a ``ValueError`` that
names the problem.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from medmoe.papers import PAPERS
from medmoe.utils import count_parameters


def _test_configs() -> list[tuple[str, str]]:
    out = []
    for paper in PAPERS:
        model_mod = importlib.import_module(f"medmoe.papers.{paper}.model")
        out += [(paper, name) for name in sorted(model_mod.CONFIGS) if name.endswith("_test")]
    return out


TEST_CONFIGS = _test_configs()


def test_every_paper_has_a_test_config():
    assert sorted({paper for paper, _ in TEST_CONFIGS}) == sorted(PAPERS)


@pytest.mark.parametrize("paper", PAPERS)
def test_every_paper_exports_the_recipe_template(paper):
    pkg = importlib.import_module(f"medmoe.papers.{paper}")
    for verb in ("build", "train", "evaluate", "count", "build_model", "CONFIGS"):
        assert hasattr(pkg, verb), f"medmoe.papers.{paper} must export {verb}"
    sig = inspect.signature(pkg.build_model)
    assert list(sig.parameters)[0] == "name"
    assert sig.parameters["backbone"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["backbone"].default is None
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    for name in pkg.CONFIGS:
        assert name.split("_")[-1] in ("paper", "quick", "test") or "_paper_" in name, (
            f"{paper}: configuration {name!r} is not named <model>_paper/_quick/_test")


@pytest.mark.parametrize(("paper", "name"), TEST_CONFIGS)
def test_forward_backward_shapes(paper, name):
    torch.manual_seed(0)
    pkg = importlib.import_module(f"medmoe.papers.{paper}")
    model_mod = importlib.import_module(f"medmoe.papers.{paper}.model")
    model = pkg.build_model(name)
    kwargs, shapes = model_mod.example_inputs(name, batch_size=2)
    model.train()
    out = model(**kwargs)
    assert shapes, "example_inputs must promise at least one output shape"
    for field, shape in shapes.items():
        value = getattr(out, field)
        assert tuple(value.shape) == tuple(shape), f"{name}: {field} has shape {tuple(value.shape)}, want {shape}"
        assert torch.isfinite(value.float()).all(), f"{name}: {field} is not finite"
    first = getattr(out, next(iter(shapes)))
    first.float().pow(2).mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, f"{name} has no trainable parameters"
    reached = [n for n, p in trainable if p.grad is not None and p.grad.abs().sum() > 0]
    assert reached, f"{name}: the backward pass reached no trainable parameter"


@pytest.mark.parametrize(("paper", "name"), TEST_CONFIGS)
def test_count_matches_direct_count(paper, name):
    pkg = importlib.import_module(f"medmoe.papers.{paper}")
    model = pkg.build_model(name)
    counts = pkg.count(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == count_parameters(model) > 0
    assert 0 < counts["trainable"] <= counts["total"]


@pytest.mark.parametrize(("paper", "name"), TEST_CONFIGS)
def test_bad_arguments_raise_clear_errors(paper, name):
    pkg = importlib.import_module(f"medmoe.papers.{paper}")
    model_mod = importlib.import_module(f"medmoe.papers.{paper}.model")
    with pytest.raises(ValueError, match="unknown"):
        pkg.build_model(f"{paper}_no_such_size")
    with pytest.raises(ValueError, match="no_such_field"):
        pkg.build_model(name, no_such_field=1)
    kwargs, _ = model_mod.example_inputs(name, batch_size=2)
    key = next(iter(kwargs))
    bad = dict(kwargs, **{key: kwargs[key][0]})  # drop the batch dimension of the first input
    with pytest.raises(ValueError):
        pkg.build_model(name)(**bad)
