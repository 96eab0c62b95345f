r"""Training throughput of every chapter's paper-size model, and the wall time it projects for the paper profile.

Part of "Ready for a GPU" (the book's environment page). For each chapter (MLMoE, MedMoE, SegMoTE, MoME) and each
model its ``paper`` profile trains (a *phase*: e.g. MLMoE's two stages and its base model), this script

* builds the model by the paper's build path (``medmoe.papers.<x>.build``) in the paper-size configuration
  (``<paper>_paper``; ``--size test`` or a run on the CPU takes the ``<paper>_test`` configurations) with **randomly
  initialised backbones**: the pretrained weights are not on disk here, and the cost of a step does not depend
  on the values;
* runs ``--warmup`` + ``--steps`` real training steps through the recipe's own step function
  (``medmoe.papers.<x>.recipe``: loss, ``backward``, the recipe's optimizer), on one synthetic batch of the
  paper's shapes and batch size made on the CPU and moved to the device every step, as a DataLoader's would be;
  bf16 autocast on CUDA (what :func:`medmoe.engine.resolve_mixed_precision` picks there), full precision on CPU;
* times the ``--steps`` steps after the warm-up (``torch.cuda.synchronize`` on both sides), and reports samples/s,
  the peak memory (``torch.cuda.max_memory_allocated`` on CUDA; the process's peak RSS on CPU) and the projected
  wall time of the paper profile: samples per epoch x epochs x runs / samples/s, summed over the phases.

**The projection covers training steps only**: no data loading or augmentation, no frozen text encoder (the
chapters encode the reports once), no validation or evaluation, no checkpoints, and it assumes the profile runs
every epoch (MLMoE and MedMoE stop early with patience 20, so theirs is an upper bound). Samples per epoch come
from the papers (table :data:`PHASES`, each number with its source); epochs, batch size and seeds from the paper
profile in ``medmoe/papers/<x>/card.yaml`` (the notebook's default where the profile does not set them). On the
CPU with the ``_test`` configurations the projection only shows that the arithmetic runs: it is not the paper's
cost.

It is a script, not a test (its numbers depend on the machine). On this CPU, in about 15 seconds::

    python -m medmoe.benchmarks.paper_steps

On one GPU (the paper-size configurations, then the ``cuda`` tests), in the device tool's image, which has
torch but not monai, segment-anything or nibabel: their wheels travel in ``.whl`` (``carry: [".whl"]``) and the
repository is imported from the working tree (no ``pip install -e``); outputs land in ``$OUT``; about 3 minutes on
an H100, at most 7.5 (the two ``timeout`` s)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:$PWD || exit 1; export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=8; \
    set -o pipefail; nvidia-smi > $OUT/nvidia-smi.txt; \
    timeout 300 python3 -m medmoe.benchmarks.paper_steps --device cuda --steps 20 --warmup 3 \
      --out $OUT/paper_steps.json --markdown $OUT/paper_steps.md 2>&1 | tee $OUT/paper_steps.log; \
    timeout 150 python3 -m pytest -m cuda -p no:cacheprovider tests/test_cuda.py 2>&1 | tee $OUT/pytest_cuda.log

(``.whl`` holds ``monai==1.6.1``, ``segment-anything==1.0`` and ``nibabel==5.4.2``: ``make gpu-wheels`` downloads
them with ``pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ...``.) With a virtual
environment that has the package installed, ``python -m medmoe.benchmarks.paper_steps --device cuda`` and
``pytest -m cuda`` are enough.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import gc
import json
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from medmoe.env import environment
from medmoe.papers import load_card

__all__ = ["Phase", "PHASES", "PAPER_ORDER", "box_masks", "profile_parameters", "run_phase", "run", "markdown", "main"]

PAPER_ORDER: tuple[str, ...] = ("mlmoe", "medmoe", "segmote", "mome")
"""The chapters this script measures (the primer has no paper profile)."""

NOTE = ("Projected hours cover training steps only (synthetic batches of the paper's shapes, random-init backbones): "
        "no data loading or augmentation, no frozen text encoder, no validation, evaluation or checkpoints; every "
        "epoch is assumed to run (early stopping would shorten MLMoE and MedMoE).")


# ----------------------------------------------------------------------------- what each phase is
@dataclass(frozen=True)
class Phase:
    """One model that a paper profile trains, and what its cost is made of.

    Attributes:
        paper: the folder under ``medmoe/papers``.
        name: what the chapter calls this training run.
        config: the paper-size configuration; ``test_config`` the one for CPU runs and tests.
        setup: ``setup(config_name, params, test, overrides) -> (model, cpu_batch, step_fn, optimizer)``, in
            this module; ``test_overrides`` are the config fields it overrides at the test size.
        samples_per_epoch: training items per epoch in the paper's setting; ``samples_source`` cites it.
        epochs_key: the profile parameter that gives the epochs of this phase.
        runs: how many times the profile trains it: an int, or a profile parameter (``"n_seeds"``; a bool one such
            as ``"train_base"`` counts 1 or 0).
    """

    paper: str
    name: str
    config: str
    test_config: str
    setup: Callable[..., tuple[Any, dict[str, Any], Callable, torch.optim.Optimizer]]
    samples_per_epoch: int
    samples_source: str
    epochs_key: str = "epochs"
    runs: int | str = "n_seeds"
    test_overrides: tuple[tuple[str, Any], ...] = ()


def box_masks(b: int, side: int, *, dims: int = 2, generator: torch.Generator) -> torch.Tensor:
    """``(b, 1, side, ...)`` binary masks, one random box per item (never empty: the prompt samplers need a box)."""
    out = torch.zeros((b, 1) + (side,) * dims)
    for i in range(b):
        lo = torch.randint(0, side // 2, (dims,), generator=generator)
        hi = lo + torch.randint(side // 8 + 1, side // 2 + 1, (dims,), generator=generator)
        out[(i, 0) + tuple(slice(int(a), int(z)) for a, z in zip(lo, hi))] = 1.0
    return out


# MLMoE (chapter 1). Batch: image (B, 1, S, S), mask (B, 1, S, S), the frozen CXR-BERT's report features
# (B, text_len, text_in_width) = (B, 24, 768) at paper size, computed once by the chapter (not timed).
def _mlmoe_stage1(config: str, params: dict[str, Any], test: bool, overrides: dict[str, Any]):
    from medmoe.papers.mlmoe import build  # why: each chapter's code is imported only when its phase runs
    from medmoe.papers.mlmoe.recipe import SegLoss, text_present_step  # why: as above

    model = build(config, **overrides)
    side, b, g = 64 if test else int(params["image_size"]), int(params["batch_size"]), torch.Generator().manual_seed(0)
    c = model.config
    batch = {"image": torch.randn(b, 1, side, side, generator=g), "mask": box_masks(b, side, generator=g),
             "text_features": torch.randn(b, c.text_len, c.text_in_width, generator=g)}
    div = float(params["div_weight"]) if c.num_experts else 0.0  # the notebook trains Ariadne with div_weight=0
    step = partial(text_present_step, seg_loss=SegLoss(dice_only=bool(params.get("dice_only", False))), div_weight=div)
    # recipe.train, stage "text_present": AdamW on the trainable parameters at the profile's lr
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(params["lr"]))
    return model, batch, step, opt


def _mlmoe_stage2(config: str, params: dict[str, Any], test: bool, overrides: dict[str, Any]):
    from medmoe.papers.mlmoe.recipe import SegLoss, distillation_step  # why: imported only when this phase runs

    model, batch, _, _ = _mlmoe_stage1(config, params, test, overrides)
    with torch.no_grad():  # the teacher's fused features, precomputed once by the chapter (TeacherDataset)
        model.eval()
        batch["teacher"] = [f.detach() for f in model(batch["image"], batch["text_features"]).fused]
        model.train()
    params_ = model.start_distillation(adapters=bool(params.get("distill_adapters", True)))
    step = partial(distillation_step, seg_loss=SegLoss(dice_only=bool(params.get("dice_only", False))),
                   dis_weight=float(params.get("dis_weight", 1.0)))
    opt = torch.optim.AdamW(params_, lr=float(params["distill_lr"]))  # recipe.train, stage "text_absent"
    return model, batch, step, opt


# MedMoE (chapter 2). Batch: image (B, 3, S, S) in [0, 1], modality (B,), the frozen Bio_ClinicalBERT's words
# (B, L, D) with L = 25 (the chapter's max_length) and D = width, sentence (B, D) = mean of words, cap_len (B,).
def _medmoe(config: str, params: dict[str, Any], test: bool, overrides: dict[str, Any]):
    from medmoe.papers.medmoe import build  # why: imported only when this phase runs
    from medmoe.papers.medmoe.recipe import pretrain_step  # why: as above

    model = build(config, **overrides)
    c, b, g, length = model.config, int(params["batch_size"]), torch.Generator().manual_seed(0), 25
    words = torch.randn(b, length, c.width, generator=g)
    batch = {"image": torch.rand(b, 3, c.image_size, c.image_size, generator=g),
             "modality": torch.randint(0, c.num_experts, (b,), generator=g), "words": words,
             "sentence": words.mean(1), "cap_len": torch.randint(2, length - 1, (b,), generator=g)}
    # recipe.train: Adam, weight decay 0 (the released code); clipping at 0.25 is applied by run_phase
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=float(params["lr"]), weight_decay=0.0)
    return model, batch, pretrain_step, opt


# SegMoTE (chapter 3). The paper profile sets cache=false: the frozen SAM encoder runs on every batch, so the
# batch holds the images (B, 3, S, S) in [0, 1], one (image, class) mask (B, 1, S, S) each and group_a (B,).
def _segmote(config: str, params: dict[str, Any], test: bool, overrides: dict[str, Any]):
    from medmoe.papers.segmote import build  # why: imported only when this phase runs
    from medmoe.papers.segmote.recipe import LOSSES, segmote_step  # why: as above

    model = build(config, **{"num_experts": int(params["num_experts"]),
                             "num_expert_tokens": int(params["num_expert_tokens"]), **overrides})
    side, b, g = model.config.image_size, int(params["batch_size"]), torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, 3, side, side, generator=g), "mask": box_masks(b, side, generator=g),
             "group_a": torch.arange(b) % 2 == 0}
    step = partial(segmote_step, loss_fn=LOSSES[str(params["loss"])](),
                   balance_weight=float(params.get("balance_weight", 0.01)), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=float(params["lr"]))  # recipe.train, stage "segmote"
    return model, batch, step, opt


# MoME / Universal Model (chapter 4). Batch: roi^3 patches image (B, 1, R, R, R), multi-label targets
# (B, C, R, R, R) and labelled (B, C) (the partial labels); the class text embeddings (C, text_dim) are a buffer.
def _mome(config: str, params: dict[str, Any], test: bool, overrides: dict[str, Any]):
    from medmoe.papers.mome import build  # why: imported only when this phase runs
    from medmoe.papers.mome.recipe import train_step  # why: as above

    model = build(config, **overrides)
    c, b, g = model.config, int(params["batch_size"]), torch.Generator().manual_seed(0)
    model.set_text_embeddings(torch.randn(c.num_classes, c.text_dim, generator=g))
    r = c.roi_size
    label = torch.cat([box_masks(b, r, dims=3, generator=g) for _ in range(c.num_classes)], dim=1)
    labelled = torch.rand(b, c.num_classes, generator=g) < 0.5
    labelled[:, 0] = True
    batch = {"image": torch.rand(b, 1, r, r, r, generator=g), "label": label, "labelled": labelled}
    opt = torch.optim.AdamW(model.parameters(), lr=float(params["lr"]),
                            weight_decay=float(params.get("weight_decay", 1e-5)))  # recipe.train
    return model, batch, train_step, opt


#: Every phase of every paper profile. Samples per epoch, with their sources:
#: * MLMoE: QaTa-COV19's official training set (7,145 images) split 80/20 into train/validation "following previous
#:   work" (MLMoE Sec. III-A2; LViT's split is 5,716 / 1,429). Ariadne's Thread is trained once (the notebook's
#:   ``train_base``: first seed only), MLMoE once per seed; stage 2 runs ``distill_epochs``.
#: * MedMoE: "UniMed (5.3M)" image-text pairs (MedMoE Table 1). The chapter's three caption tables are a subset, so
#:   this is an upper bound; the chapter holds 2 % out for validation and test.
#: * SegMoTE: MedSeg-HQ's 154,569 masks (SegMoTE Sec. 3.6), one (image, class) item each; what
#:   ``data_scripts/build_medseg_hq.py`` builds from public data is smaller.
#: * MoME / Universal Model: "10 public CT datasets (3,410 scans)" (MoME abstract); one random patch per volume per
#:   epoch (:class:`medmoe.papers.mome.data.RandomPatches`). ``prepare_universal.py`` builds AMOS + MSD +
#:   TotalSegmentator, a different set of scans.
PHASES: tuple[Phase, ...] = (
    Phase("mlmoe", "Ariadne's Thread (base), text present", "ariadne_paper", "mlmoe_test", _mlmoe_stage1, 5716,
          "QaTa-COV19 train split, 80% of 7,145 (MLMoE Sec. III-A2)", runs="train_base",
          test_overrides=(("num_experts", 0),)),
    Phase("mlmoe", "MLMoE stage 1, text present", "mlmoe_paper", "mlmoe_test", _mlmoe_stage1, 5716,
          "QaTa-COV19 train split, 80% of 7,145 (MLMoE Sec. III-A2)"),
    Phase("mlmoe", "MLMoE stage 2, distillation", "mlmoe_paper", "mlmoe_test", _mlmoe_stage2, 5716,
          "QaTa-COV19 train split, 80% of 7,145 (MLMoE Sec. III-A2)", epochs_key="distill_epochs"),
    Phase("medmoe", "MedMoE pretraining", "medmoe_paper", "medmoe_test", _medmoe, 5_300_000,
          "UniMed, 5.3M pairs (MedMoE Table 1; the book's tables are a subset)"),
    Phase("segmote", "SegMoTE on frozen SAM ViT-B", "segmote_paper", "segmote_test", _segmote, 154_569,
          "MedSeg-HQ, 154,569 masks (SegMoTE Sec. 3.6)"),
    Phase("mome", "Universal Model", "universal_paper", "universal_test", _mome, 3410,
          "3,410 CT scans, 1 patch each (MoME abstract)"),
    Phase("mome", "MoME", "mome_paper", "mome_test", _mome, 3410,
          "3,410 CT scans, 1 patch each (MoME abstract)"),
)


# ----------------------------------------------------------------------------- the profile's numbers
def profile_parameters(paper: str) -> dict[str, Any]:
    """The paper profile's parameters: the notebook's defaults updated by ``card.yaml``'s ``paper`` profile
    (:func:`medmoe.repro.runner.resolve_parameters`); the card's profile alone when the notebook is not on disk.

    Example:
        >>> p = profile_parameters("mome")
        >>> p["batch_size"], p["mome_config"]
        (2, 'mome_paper')
    """
    card = load_card(paper)
    notebook = Path(__file__).resolve().parents[2] / card.notebook_path
    if not notebook.is_file():
        return dict(card.profiles["paper"])
    try:
        from medmoe.repro.runner import resolve_parameters  # why: reads the notebook (jupytext) only when it exists

        return resolve_parameters(notebook, "paper")[2]
    except ImportError:  # a GPU image without jupytext: read the percent notebook's parameters cell directly
        return {**_parameters_cell(notebook), **card.profiles["paper"]}


def _parameters_cell(notebook: Path) -> dict[str, Any]:
    """The literal assignments of a jupytext percent notebook's cell tagged ``parameters`` (no jupytext needed)."""
    lines, cell, inside = notebook.read_text().splitlines(), [], False
    for line in lines:
        if line.startswith("# %%"):
            if inside:
                break
            inside = '"parameters"' in line
        elif inside:
            cell.append(line)
    out = {}
    for node in ast.parse("\n".join(cell)).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


# ----------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(v):
        if torch.is_tensor(v):
            return v.to(device)
        if isinstance(v, list):
            return [move(x) for x in v]
        return v
    return {k: move(v) for k, v in batch.items()}


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def run_phase(phase: Phase, *, device: torch.device, test: bool, steps: int, warmup: int,
              params: dict[str, Any] | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Build ``phase``'s model, run ``warmup`` + ``steps`` training steps, time the last ``steps``; return the row.
    ``batch_size`` replaces the profile's (e.g. to find what fits a smaller GPU); the row says which was used.

    Raises:
        ValueError: ``steps < 1`` or ``warmup < 0``.
        FloatingPointError: a step's loss is not finite.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    params = dict(profile_parameters(phase.paper) if params is None else params)
    if batch_size is not None:
        params["batch_size"] = batch_size
    config = phase.test_config if test else phase.config
    overrides = dict(phase.test_overrides) if test else {}
    torch.manual_seed(0)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model, cpu_batch, step_fn, opt = phase.setup(config, params, test, overrides)
    model.to(device).train()
    clip = 0.25 if phase.paper == "medmoe" else None  # MedMoE's gradient clipping (recipe.train)
    amp = device.type == "cuda"
    trainable = [p for group in opt.param_groups for p in group["params"]]
    losses, t0 = [], 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        batch = _to(cpu_batch, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            out = step_fn(model, batch)
        loss = out["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, clip)
        opt.step()
        if i >= warmup:
            losses.append(loss.detach())
    _sync(device)
    seconds = time.perf_counter() - t0
    last = [float(x) for x in losses]
    if not all(torch.isfinite(torch.tensor(last))):
        raise FloatingPointError(f"{phase.paper} / {phase.name}: a training loss is not finite: {last}")
    batch_size = int(params["batch_size"])
    sps = steps * batch_size / seconds
    if device.type == "cuda":
        memory, memory_kind = torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    else:
        memory, memory_kind = _peak_rss_mb(), "peak RSS of the process so far"
    epochs = int(params[phase.epochs_key])
    runs = phase.runs if isinstance(phase.runs, int) else int(params[phase.runs])
    samples = phase.samples_per_epoch * epochs * runs
    card_profile = load_card(phase.paper).profiles.get("paper", {})

    def source(key: str) -> str:
        return f"{key} = {params[key]} ({'card.yaml paper profile' if key in card_profile else 'notebook default'})"

    side = {"mlmoe": 64 if test else params.get("image_size")}.get(phase.paper)
    cfg = getattr(model, "config", None)
    side = side or getattr(cfg, "image_size", None) or getattr(cfg, "roi_size", None)
    del model, opt, batch, cpu_batch
    return {
        "paper": phase.paper, "phase": phase.name,
        "config": config + "".join(f" {k}={v}" for k, v in overrides.items()), "device": _device_name(device),
        "date": _dt.date.today().isoformat(), "precision": "bf16 autocast" if amp else "fp32",
        "weights": "random init", "input_side": side, "batch_size": batch_size, "steps": steps, "warmup": warmup,
        "seconds": seconds, "samples_per_s": sps, "final_loss": last[-1],
        "peak_memory_mb": memory, "memory_kind": memory_kind,
        "samples_per_epoch": phase.samples_per_epoch, "samples_source": phase.samples_source,
        "epochs": epochs, "epochs_source": source(phase.epochs_key),
        "runs": runs, "runs_source": source(phase.runs) if isinstance(phase.runs, str) else f"{runs} (fixed)",
        "projected_samples": samples, "projected_hours": samples / sps / 3600,
        "projection": f"{phase.samples_per_epoch:,} x {epochs} epochs x {runs} run(s) / {sps:.3g} samples/s",
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def run(*, papers: tuple[str, ...] = PAPER_ORDER, device: str = "auto", size: str = "auto", steps: int | None = None,
        warmup: int | None = None, batch_size: int | None = None, log=print) -> dict[str, Any]:
    """Measure every phase of ``papers``; return ``{"note", "size", "environment", "rows", "totals", "failed"}``
    (a phase that raises is logged with its traceback and listed in ``failed``; the others still run).

    ``size``: ``"paper"`` (``<paper>_paper`` configurations), ``"test"`` or ``"auto"`` (paper on CUDA, test on the
    CPU). ``steps`` / ``warmup`` default to 20 / 3 on CUDA and 2 / 1 on the CPU; ``batch_size`` replaces the paper
    profile's batch size (``None``: keep it).

    Raises:
        ValueError: an unknown paper, size or device.
    """
    unknown = sorted(set(papers) - set(PAPER_ORDER))
    if unknown:
        raise ValueError(f"unknown paper(s) {unknown}; choose from {list(PAPER_ORDER)}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA GPU here (torch.cuda.is_available() is False)")
    if size not in ("auto", "paper", "test"):
        raise ValueError(f"size must be auto, paper or test, got {size!r}")
    test = (dev.type != "cuda") if size == "auto" else size == "test"
    steps = steps if steps is not None else (20 if dev.type == "cuda" else 2)
    warmup = warmup if warmup is not None else (3 if dev.type == "cuda" else 1)
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for phase in PHASES:
        if phase.paper not in papers:
            continue
        try:
            row = run_phase(phase, device=dev, test=test, steps=steps, warmup=warmup, batch_size=batch_size)
        except Exception as e:  # one phase failing (an OOM, a device mix-up) must not hide the others' numbers
            log(f"{phase.paper:8s} {phase.name:40s} FAILED:\n{traceback.format_exc()}", flush=True)
            failed.append({"paper": phase.paper, "phase": phase.name, "error": f"{type(e).__name__}: {e}"})
            continue
        log(f"{row['paper']:8s} {row['phase']:40s} {row['config']:16s} {row['samples_per_s']:9.3g} samples/s  "
            f"{row['peak_memory_mb']:8.0f} MiB  {row['projected_hours']:9.2f} h", flush=True)
        rows.append(row)
    totals = {}
    for row in rows:
        t = totals.setdefault(row["paper"], {"projected_hours": 0.0, "phases": []})
        t["projected_hours"] += row["projected_hours"]
        t["phases"].append(row["phase"])
    note = NOTE + ("" if not test else " These are the _test configurations: the hours are not the paper's cost.")
    return {"note": note, "size": "test" if test else "paper", "environment": environment(), "rows": rows,
            "totals": totals, "failed": failed}


def markdown(report: dict[str, Any]) -> str:
    """The report as two markdown tables (per phase, per paper) and the note."""
    rows = report["rows"]
    head = ("| paper | phase | config | device | date | batch | input | samples/s | peak memory (MiB) | "
            "projection | projected h |\n|---|---|---|---|---|---:|---:|---:|---:|---|---:|\n")
    body = "".join(
        f"| {r['paper']} | {r['phase']} | {r['config']} | {r['device']} | {r['date']} | {r['batch_size']} | "
        f"{r['input_side']} | {r['samples_per_s']:.3g} | {r['peak_memory_mb']:.0f} | {r['projection']} | "
        f"{r['projected_hours']:.2f} |\n" for r in rows)
    totals = "| paper | projected training hours (all phases) |\n|---|---:|\n" + "".join(
        f"| {p} | {t['projected_hours']:.2f} |\n" for p, t in report["totals"].items())
    mem = rows[0]["memory_kind"] if rows else ""
    sources = "".join(f"- {r['paper']}, {r['phase']}: samples per epoch {r['samples_per_epoch']:,} "
                      f"({r['samples_source']}); epochs: {r['epochs_source']}; runs: {r['runs_source']}\n"
                      for r in rows)
    failed = "".join(f"- FAILED {f['paper']}, {f['phase']}: {f['error']}\n" for f in report.get("failed", []))
    return (f"{head}{body}\n{totals}\nPeak memory: {mem}. {report['note']}\n\nNumbers used:\n{sources}"
            + (f"\n{failed}" if failed else ""))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m medmoe.benchmarks.paper_steps", description=__doc__.split("\n")[0])
    ap.add_argument("--papers", nargs="+", default=list(PAPER_ORDER), choices=PAPER_ORDER)
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    ap.add_argument("--size", default="auto", choices=("auto", "paper", "test"),
                    help="configurations: paper-size, _test, or auto (paper on CUDA, test on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per phase (CUDA 20, CPU 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (CUDA 3, CPU 1)")
    ap.add_argument("--batch-size", type=int, default=None, help="replace the paper profile's batch size")
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    ap.add_argument("--markdown", type=Path, default=None, help="write the markdown tables here")
    args = ap.parse_args(argv)
    report = run(papers=tuple(args.papers), device=args.device, size=args.size, steps=args.steps, warmup=args.warmup,
                 batch_size=args.batch_size)
    table = markdown(report)
    print("\n" + table)
    for path, text in ((args.out, json.dumps(report, indent=2, default=str)), (args.markdown, table)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")
    if report["failed"]:
        raise SystemExit(f"{len(report['failed'])} phase(s) failed: " + "; ".join(
            f"{f['paper']} / {f['phase']}: {f['error']}" for f in report["failed"]))
    return report


if __name__ == "__main__":
    main()
