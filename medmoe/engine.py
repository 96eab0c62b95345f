"""The one training loop every chapter shares, built on Hugging Face Accelerate.

The same call runs on a laptop CPU, one GPU, or several GPUs under ``accelerate launch`` (DDP).
A chapter supplies only what is specific to its paper: the model, the optimizer, the data and a
``step_fn`` that turns one batch into a loss. :func:`fit` does the rest -- gradient accumulation,
mixed precision, clipping, validation, early stopping, checkpoints, resumption and the history
files a chapter plots.

Explained in the book: *Chapter 0, the MoE primer* (which trains its six routing variants with it) and
*Environment and commands*; every paper chapter (1-4) trains through it too.

Files written under ``config.out_dir`` (by the main process only)::

    last/                 full state after the latest epoch (accelerator.save_state) + trainer_state.json
    best/model.pt         state_dict of the best epoch so far (by config.monitor)
    best/best.json        {"epoch": ..., "monitor": ..., "value": ...}
    history.json/.csv     one row per epoch: epoch, lr, train_*, val_*, time_s

Resuming: calling :func:`fit` again with the same ``out_dir`` continues after the last finished
epoch and ends with exactly the parameters an uninterrupted run would have had (same data
order, same optimizer/scheduler/RNG state).

Accelerate details worth knowing (they explain some lines below):

* The data order is fixed per epoch: ``DataLoaderConfiguration(use_seedable_sampler=True,
  data_seed=seed)`` replaces a shuffling sampler by one seeded with ``seed + epoch``, and
  :func:`fit` calls ``train_loader.set_epoch(epoch)`` itself: ``load_state`` does not restore the
  loader's epoch counter, so without it a resumed run would replay epoch 0's order.
* ``AcceleratorState`` and ``GradientState`` are process-wide singletons. A notebook that calls
  :func:`fit` twice with different mixed precision would get "AcceleratorState has already been
  initialized"; :func:`fit` resets ``AcceleratorState`` when the precision changes and
  ``GradientState`` always (``PartialState``, which holds the distributed process group, is kept).
* Several processes on a machine without GPUs (``torchrun --nproc_per_node 2``, gloo) need
  ``ACCELERATE_USE_CPU=true``; without it each process silently trains alone, so :func:`fit`
  refuses to start.
* A scheduler stepped every optimizer step (``scheduler_interval="step"``) is wrapped by
  ``accelerator.prepare``: it skips accumulation micro-batches and, under DDP, advances
  ``num_processes`` times per step. So define it for the single-process number of optimizer
  steps, ``epochs * ceil(len(train_loader) / grad_accum_steps)`` with the loader as you built it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    extract_model_from_parallel,
    set_seed,
)
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

__all__ = ["TrainConfig", "FitResult", "fit", "make_loader", "train_loop", "load_best", "resolve_mixed_precision"]

StepFn = Callable[[nn.Module, Any], Mapping[str, Any]]
EvalFn = Callable[[nn.Module, Any], Mapping[str, float]]

_MIXED_PRECISION = ("no", "fp16", "bf16", "auto")
_RESERVED_KEYS = ("epoch", "lr", "time_s")
_STATE_FILE = "trainer_state.json"


# ----------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Everything :func:`fit` needs besides the model, optimizer, data and step function.

    Args:
        out_dir: where checkpoints and history go (created if missing).
        epochs: total number of epochs (counting those before a resume).
        grad_accum_steps: batches per optimizer step; the loss is divided by it.
        mixed_precision: ``"no"``, ``"fp16"``, ``"bf16"`` or ``"auto"`` (bf16 on a CUDA GPU that
            supports it, else ``"no"``). Always ``"no"`` on CPU.
        max_grad_norm: clip the global gradient norm to this value (``None``: no clipping). When
            set, the pre-clipping norm is logged as ``train_grad_norm``.
        early_stopping_patience: stop after this many epochs without improvement of ``monitor``
            (``None``: never stop early).
        monitor: history key that decides the best epoch and early stopping. ``None`` means
            ``"val_loss"`` when there is validation, else ``"train_loss"``.
        mode: ``"min"`` or ``"max"`` -- whether smaller or larger ``monitor`` is better.
        min_delta: an improvement must beat the best value by more than this.
        min_epochs: never stop early before this many epochs.
        seed: seeds Python/NumPy/torch and the per-epoch shuffle.
        resume: continue from ``out_dir/last`` when a checkpoint is there.
        run_key: a fingerprint of what defines the run (model, data, hyperparameters; e.g.
            :func:`medmoe.repro.runner.fingerprint`). A checkpoint saved under another key is never resumed: ``fit``
            raises instead of silently continuing a different experiment.
        progress: show tqdm progress bars and one summary line per epoch.
        max_steps_per_epoch: cap on optimizer steps per epoch (quick smoke runs); ``None``: whole loader.
        scheduler_interval: ``"step"`` (call ``scheduler.step()`` after every optimizer step) or
            ``"epoch"`` (once per epoch, after validation; ``ReduceLROnPlateau`` gets ``monitor``).
        find_unused_parameters: passed to DDP (several processes only). On by default, because every model in
            this book is a sparse mixture: a batch can leave a top-k expert unselected, and DDP without it stops
            with "Expected to have finished reduction" (MedMoE's code trains with it on too). Turn it off for a
            model whose every parameter gets a gradient in every step; DDP then skips one graph traversal.

    Example:
        >>> cfg = TrainConfig(out_dir="runs/demo", epochs=3, mode="max", monitor="val_dice")
        >>> cfg.epochs
        3
    """

    out_dir: str | Path
    epochs: int = 10
    grad_accum_steps: int = 1
    mixed_precision: str = "auto"
    max_grad_norm: float | None = None
    early_stopping_patience: int | None = None
    monitor: str | None = None
    mode: str = "min"
    min_delta: float = 0.0
    min_epochs: int = 0
    seed: int = 0
    resume: bool = True
    progress: bool = True
    max_steps_per_epoch: int | None = None
    scheduler_interval: str = "step"
    run_key: str | None = None
    find_unused_parameters: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)

        def positive_int(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")

        positive_int("epochs")
        positive_int("grad_accum_steps")
        positive_int("early_stopping_patience", allow_none=True)
        positive_int("max_steps_per_epoch", allow_none=True)
        if not isinstance(self.min_epochs, int) or self.min_epochs < 0:
            raise ValueError(f"TrainConfig.min_epochs must be a non-negative int, got {self.min_epochs!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TrainConfig.seed must be a non-negative int, got {self.seed!r}")
        if self.mixed_precision not in _MIXED_PRECISION:
            raise ValueError(
                f"TrainConfig.mixed_precision must be one of {_MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"TrainConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"TrainConfig.mode must be 'min' or 'max', got {self.mode!r}")
        if not self.min_delta >= 0:
            raise ValueError(f"TrainConfig.min_delta must be >= 0, got {self.min_delta!r}")
        if self.monitor is not None and (not isinstance(self.monitor, str) or not self.monitor):
            raise ValueError(f"TrainConfig.monitor must be a non-empty string or None, got {self.monitor!r}")
        if self.scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"TrainConfig.scheduler_interval must be 'step' or 'epoch', got {self.scheduler_interval!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (``out_dir`` as a string)."""
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per epoch (``epoch`` counts from 1), also in ``out_dir/history.json``.
        best_metric: best value of ``monitor`` (``None`` if no epoch gave a finite value).
        best_epoch: the epoch (from 1) where it was reached.
        stopped_early: whether early stopping ended the run.
        epochs_run: epochs completed in total, including those before a resume.
        out_dir: the run directory.
        monitor: the history key that was monitored.
        resumed_from: epochs already completed when this call started (0 for a fresh run).
    """

    history: list[dict[str, float]]
    best_metric: float | None
    best_epoch: int | None
    stopped_early: bool
    epochs_run: int
    out_dir: Path
    monitor: str = "val_loss"
    resumed_from: int = 0
    best_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.best_path = self.out_dir / "best" / "model.pt"


def resolve_mixed_precision(requested: str) -> str:
    """Turn ``TrainConfig.mixed_precision`` into what ``Accelerator`` gets.

    ``"auto"`` becomes ``"bf16"`` on a CUDA GPU that supports it and ``"no"`` otherwise; any
    request becomes ``"no"`` without a CUDA GPU (with a warning if fp16/bf16 was asked for).

    Example:
        >>> resolve_mixed_precision("no")
        'no'
    """
    if requested not in _MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {_MIXED_PRECISION}, got {requested!r}")
    has_cuda = torch.cuda.is_available()
    if requested == "auto":
        return "bf16" if has_cuda and torch.cuda.is_bf16_supported() else "no"
    if requested != "no" and not has_cuda:
        warnings.warn(f"mixed_precision={requested!r} needs a CUDA GPU; training in full precision", stacklevel=3)
        return "no"
    return requested


# ----------------------------------------------------------------------------- small helpers


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file, then rename it over ``path`` (never a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _write_history(out_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite ``history.json`` and ``history.csv`` from the in-memory history (atomically)."""
    _write_json_atomic(out_dir / "history.json", history)
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    tmp = out_dir / "history.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, out_dir / "history.csv")


def _find_checkpoint(out_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The most advanced complete checkpoint under ``out_dir``, with its trainer state.

    A checkpoint is complete when its ``trainer_state.json`` exists (it is written last). Saving
    goes ``last.tmp`` -> ``last`` (old one parked as ``last.old``), so after a crash mid-save one
    of the three names still holds a complete checkpoint.
    """
    found = None
    for name in ("last", "last.tmp", "last.old"):
        state_file = out_dir / name / _STATE_FILE
        if not state_file.is_file():
            continue
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if found is None or state["epoch"] > found[1]["epoch"]:
            found = (out_dir / name, state)
    return found


def _is_improvement(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _check_step_output(out: Any, *, training: bool) -> Mapping[str, Any]:
    """``step_fn`` must return a mapping with a scalar tensor ``"loss"`` (plus scalar logs)."""
    if not isinstance(out, Mapping) or "loss" not in out:
        got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
        raise ValueError(f"step_fn must return a dict with a 'loss' entry, got {got}")
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"step_fn's 'loss' must be a scalar tensor, got {shape}")
    if training and not loss.requires_grad:
        raise ValueError("step_fn's 'loss' does not require grad: was it computed under torch.no_grad() or detached?")
    for key, value in out.items():
        if key in _RESERVED_KEYS:
            raise ValueError(f"step_fn returned the reserved key {key!r}; rename it")
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"step_fn's {key!r} must be a scalar, got shape {tuple(value.shape)}")
        elif not isinstance(value, (int, float)):
            raise ValueError(f"step_fn's {key!r} must be a scalar tensor or number, got {type(value).__name__}")
    return out


class _Means:
    """Running per-key means of scalar logs, kept on the device (no GPU sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, logs: Mapping[str, Any]) -> None:
        for key, value in logs.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().float().reshape(())
            else:
                value = torch.tensor(float(value))
            self.sums[key] = self.sums.get(key, 0.0) + value.to(self.device)
            self.counts[key] = self.counts.get(key, 0) + 1

    def reduce(self, accelerator: Accelerator, prefix: str) -> dict[str, float]:
        """Means over batches, averaged over processes, as ``{prefix + key: float}``."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        means = torch.stack([self.sums[k] / self.counts[k] for k in keys])
        means = accelerator.reduce(means, reduction="mean")
        return {prefix + k: float(v) for k, v in zip(keys, means.tolist())}


def _sync_dict(accelerator: Accelerator, values: Mapping[str, float]) -> dict[str, float]:
    """Average ``eval_fn``'s scalar results over processes so every rank takes the same decisions."""
    if not isinstance(values, Mapping):
        raise ValueError(f"eval_fn must return a dict of floats, got {type(values).__name__}")
    for key, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"eval_fn's {key!r} must be a float or scalar tensor, got {shape}")
    keys = sorted(values)
    if accelerator.num_processes == 1 or not keys:
        return {k: float(values[k]) for k in keys}
    t = torch.tensor([float(values[k]) for k in keys], device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))


def _make_accelerator(config: TrainConfig) -> Accelerator:
    """A fresh ``Accelerator`` for this run (see the module notes on the singletons)."""
    precision = resolve_mixed_precision(config.mixed_precision)
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision:
        AcceleratorState._reset_state()  # keeps PartialState, i.e. the distributed process group
    GradientState._reset_state()  # forget dataloaders left active by an interrupted earlier fit
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum_steps,
        mixed_precision=precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)],
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and accelerator.num_processes == 1:
        # Without a GPU, Accelerate only goes multi-process on CPU when told to; otherwise every
        # launched process would train alone and all of them would write the same out_dir.
        raise RuntimeError(
            f"launched with WORLD_SIZE={world_size} but Accelerate set up a single process; "
            "on a machine without GPUs set ACCELERATE_USE_CPU=true for multi-process CPU training"
        )
    return accelerator


def _num_batches(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


# ----------------------------------------------------------------------------- one epoch


def _train_one_epoch(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable,
    step_fn: StepFn,
    step_scheduler: Any,
    config: TrainConfig,
    epoch: int,
    show: bool,
) -> dict[str, float]:
    model.train()
    if hasattr(train_loader, "set_epoch"):
        train_loader.set_epoch(epoch)  # shuffle order = f(seed + epoch), also after a resume
    means = _Means(accelerator.device)
    optimizer_steps = 0
    total = _num_batches(train_loader)
    if total is not None and config.max_steps_per_epoch is not None:
        total = min(total, config.max_steps_per_epoch * config.grad_accum_steps)
    bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not show)
    stopped_inside = False
    for i, batch in enumerate(train_loader):
        with accelerator.accumulate(model):
            out = _check_step_output(step_fn(model, batch), training=True)
            accelerator.backward(out["loss"])
            logs = dict(out)
            if accelerator.sync_gradients and config.max_grad_norm is not None:
                logs["grad_norm"] = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()  # a no-op while accumulating (accelerate decides)
            if step_scheduler is not None:
                step_scheduler.step()  # also skipped while accumulating
            optimizer.zero_grad()
        means.add(logs)
        bar.update()
        if show and i % 10 == 0:
            bar.set_postfix(loss=f"{out['loss'].item():.4f}")
        if accelerator.sync_gradients:
            optimizer_steps += 1
            if config.max_steps_per_epoch is not None and optimizer_steps >= config.max_steps_per_epoch:
                stopped_inside = True
                break
    bar.close()
    if stopped_inside and hasattr(train_loader, "end"):
        train_loader.end()  # leaving an accelerate loader early: tell GradientState we are out
    if not means.sums:
        raise ValueError("train_loader produced no batches")
    return means.reduce(accelerator, prefix="train_")


@torch.no_grad()
def _default_eval(
    accelerator: Accelerator, model: nn.Module, val_loader: Iterable, step_fn: StepFn, show: bool
) -> dict[str, float]:
    """Mean of ``step_fn``'s outputs over the validation loader, keys prefixed ``val_``."""
    means = _Means(accelerator.device)
    for batch in tqdm(val_loader, desc="validation", leave=False, disable=not show, total=_num_batches(val_loader)):
        means.add(_check_step_output(step_fn(model, batch), training=False))
    if not means.sums:
        raise ValueError("val_loader produced no batches")
    return means.reduce(accelerator, prefix="val_")


class _StepModule(nn.Module):
    """``step_fn(model, batch)`` as a module's forward, so that DDP wraps the whole training step (see :func:`fit`).

    Its one child is the model, so ``parameters()`` are the model's and the optimizer's."""

    def __init__(self, model: nn.Module, step_fn: StepFn) -> None:
        super().__init__()
        self.model = model
        self.step_fn = step_fn

    def forward(self, batch: Any) -> Mapping[str, Any]:
        return self.step_fn(self.model, batch)


def _call_stepper(stepper: nn.Module, batch: Any) -> Mapping[str, Any]:
    return stepper(batch)  # DDP(_StepModule).forward: the step runs inside DDP's forward


# ----------------------------------------------------------------------------- checkpoints


def _save_best(accelerator: Accelerator, model: nn.Module, out_dir: Path, info: dict[str, Any]) -> None:
    state_dict = accelerator.get_state_dict(model)  # unwrapped; gathered under FSDP/DeepSpeed
    if accelerator.is_main_process:
        best_dir = out_dir / "best"
        best_dir.mkdir(parents=True, exist_ok=True)
        tmp = best_dir / "model.pt.tmp"
        torch.save(state_dict, tmp)
        os.replace(tmp, best_dir / "model.pt")
        _write_json_atomic(best_dir / "best.json", info)
    accelerator.wait_for_everyone()


def _save_last(accelerator: Accelerator, out_dir: Path, trainer_state: dict[str, Any]) -> None:
    """Full state to ``last.tmp``, ``trainer_state.json`` last, then swap it in as ``last``."""
    tmp, last, old = out_dir / "last.tmp", out_dir / "last", out_dir / "last.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process writes its own RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json_atomic(tmp / _STATE_FILE, trainer_state)
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(last, old)
        os.replace(tmp, last)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------- fit


@dataclass
class _Progress:
    """Where a run stands after an epoch: what :func:`fit` checkpoints and what a resume restores."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    since_best: int = 0
    epoch: int = 0  # epochs completed
    stopped_early: bool = False

    def finished(self, epochs: int) -> bool:
        return self.stopped_early or self.epoch >= epochs

    def result(self, out_dir: Path, monitor: str, resumed_from: int) -> FitResult:
        return FitResult(self.history, self.best_metric, self.best_epoch, self.stopped_early, self.epoch, out_dir,
                         monitor, resumed_from)


def _resume(accelerator: Accelerator, out_dir: Path, config: TrainConfig, monitor: str, show: bool) -> _Progress:
    """Restore the last checkpoint in ``out_dir`` (model, optimizer, scheduler, RNG states) and its progress;
    a fresh :class:`_Progress` when there is none.

    Raises:
        ValueError: the checkpoint belongs to another ``run_key`` or monitored another metric.
    """
    found = _find_checkpoint(out_dir)
    if found is None:
        return _Progress()
    path, state = found
    if config.run_key is not None and state.get("run_key") != config.run_key:
        raise ValueError(
            f"checkpoint in {path} belongs to another run (run_key {state.get('run_key')!r}, this run "
            f"{config.run_key!r}): its model, data or hyperparameters differ, so it is not resumed; "
            f"use another out_dir or resume=False"
        )
    if state["monitor"] != monitor or state["mode"] != config.mode:
        raise ValueError(
            f"checkpoint in {path} monitored {state['monitor']!r} ({state['mode']}), this run monitors "
            f"{monitor!r} ({config.mode}); use another out_dir or resume=False"
        )
    accelerator.load_state(str(path))  # model, optimizer, scheduler, RNG states
    progress = _Progress(history=state["history"], best_metric=state["best_metric"], best_epoch=state["best_epoch"],
                         since_best=state["epochs_since_improvement"], epoch=state["epoch"],
                         stopped_early=state["stopped_early"])
    if show and progress.finished(config.epochs):
        tqdm.write(f"[medmoe] {out_dir}: run already finished at epoch {progress.epoch}; nothing to do")
    elif show:
        tqdm.write(f"[medmoe] resuming {out_dir} after epoch {progress.epoch}")
    return progress


def _end_of_epoch(accelerator: Accelerator, model: nn.Module, scheduler: Any, out_dir: Path, config: TrainConfig,
                  monitor: str, progress: _Progress, row: dict[str, float], show: bool) -> None:
    """After one epoch: record ``row``, keep the best model, step an epoch scheduler, decide on early stopping
    and write the checkpoint that a resume starts from (``progress`` is updated in place).

    Raises:
        FloatingPointError: the training loss diverged. ValueError: ``monitor`` is not in ``row``.
    """
    epoch = int(row["epoch"]) - 1
    progress.history.append(row)
    progress.epoch = epoch + 1
    if not math.isfinite(row["train_loss"]):
        raise FloatingPointError(f"train_loss is {row['train_loss']} in epoch {epoch + 1}; training diverged")
    if monitor not in row:
        raise ValueError(f"monitor {monitor!r} is not among this epoch's results {sorted(row)}")
    value = float(row[monitor])
    if _is_improvement(value, progress.best_metric, config.mode, config.min_delta):
        progress.best_metric, progress.best_epoch, progress.since_best = value, epoch + 1, 0
        _save_best(accelerator, model, out_dir, {"epoch": epoch + 1, "monitor": monitor, "value": value})
    else:
        progress.since_best += 1
    if scheduler is not None and config.scheduler_interval == "epoch":
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(value)
        else:
            scheduler.step()
    patience = config.early_stopping_patience
    progress.stopped_early = (patience is not None and progress.since_best >= patience
                              and epoch + 1 >= config.min_epochs)
    trainer_state = {
        "epoch": epoch + 1,
        "best_metric": progress.best_metric,
        "best_epoch": progress.best_epoch,
        "epochs_since_improvement": progress.since_best,
        "stopped_early": progress.stopped_early,
        "monitor": monitor,
        "mode": config.mode,
        "run_key": config.run_key,
        "history": progress.history,
        "config": config.to_dict(),
    }
    _save_last(accelerator, out_dir, trainer_state)
    if accelerator.is_main_process:
        _write_history(out_dir, progress.history)
    if show:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "time_s"))
        tqdm.write(f"epoch {epoch + 1}/{config.epochs}: {shown} ({row['time_s']:.1f}s)")
        if progress.stopped_early:
            tqdm.write(f"early stopping: no improvement of {monitor} for {progress.since_best} epochs "
                       f"(best epoch {progress.best_epoch})")


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable,
    *,
    step_fn: StepFn,
    config: TrainConfig,
    val_loader: Iterable | None = None,
    eval_fn: EvalFn | None = None,
    scheduler: Any = None,
) -> FitResult:
    """Train ``model`` for ``config.epochs`` epochs; checkpoint, validate, stop early, resume.

    The model is trained in place (it may be moved to the accelerator's device); after
    :func:`fit` it holds the *last* epoch's weights -- :func:`load_best` gives the best ones.

    Args:
        model: the network.
        optimizer: an optimizer over ``model``'s parameters.
        train_loader: a ``torch.utils.data.DataLoader``. Shuffling loaders are re-seeded every
            epoch with ``config.seed + epoch``; batches arrive on the right device.
        step_fn: ``step_fn(model, batch) -> {"loss": scalar tensor, **logs}``. Other entries
            (scalar tensors or floats) are averaged per epoch into the history as ``train_<key>``.
        config: a :class:`TrainConfig`.
        val_loader: optional validation loader.
        eval_fn: ``eval_fn(model, val_loader) -> {name: float}``, called once per epoch in eval
            mode under ``torch.no_grad()``; its keys go into the history unchanged (name them
            ``val_*``). Default when ``val_loader`` is given: the mean of ``step_fn``'s outputs,
            as ``val_loss`` and ``val_<key>``. Under DDP ``val_loader`` is sharded; the values
            returned on each process are averaged (gather inside ``eval_fn`` for exact global
            metrics, e.g. with ``accelerate.utils.gather``). An ``eval_fn`` without a
            ``val_loader`` is still called (with ``None``), e.g. when it brings its own data.
        scheduler: optional LR scheduler, stepped as ``config.scheduler_interval`` says.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: bad arguments, or ``config.monitor`` missing from an epoch's results.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> x = torch.randn(32, 3); y = x @ torch.tensor([1.0, -2.0, 0.5])
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> def step(model, batch):
        ...     xb, yb = batch
        ...     return {"loss": torch.nn.functional.mse_loss(model(xb).squeeze(-1), yb)}
        >>> import tempfile
        >>> res = fit(model, opt, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
        ...           step_fn=step, config=TrainConfig(out_dir=tempfile.mkdtemp(), epochs=3, progress=False))
        >>> len(res.history), res.monitor
        (3, 'train_loss')
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(step_fn):
        raise TypeError(f"step_fn must be callable, got {type(step_fn).__name__}")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable or None, got {type(eval_fn).__name__}")
    has_val = val_loader is not None or eval_fn is not None
    monitor = config.monitor or ("val_loss" if has_val else "train_loss")
    if monitor.startswith("val_") and not has_val:
        raise ValueError(f"TrainConfig.monitor={monitor!r} needs a val_loader or an eval_fn")
    if scheduler is not None and config.scheduler_interval == "step":
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ValueError("ReduceLROnPlateau needs TrainConfig.scheduler_interval='epoch'")

    out_dir = Path(config.out_dir)
    accelerator = _make_accelerator(config)
    set_seed(config.seed)
    show = config.progress and accelerator.is_main_process
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)

    if accelerator.num_processes > 1:
        # DDP synchronises gradients for what runs inside its forward. A step_fn may call the model's other
        # methods (SegMoTE's encode/decode, MedMoE's aux_loss), so the whole step becomes the forward of one
        # wrapper module; step_fn still receives the plain model. One process keeps the plain model (no wrapper).
        stepper, optimizer, train_loader = accelerator.prepare(_StepModule(model, step_fn), optimizer, train_loader)
        model = extract_model_from_parallel(stepper).model
    else:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        stepper = None
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    step_scheduler = None
    if scheduler is not None:
        if config.scheduler_interval == "step":
            step_scheduler = scheduler = accelerator.prepare(scheduler)
        else:
            accelerator.register_for_checkpointing(scheduler)

    # ---- resume: the progress of an interrupted run with the same run_key, or a fresh start
    progress = _resume(accelerator, out_dir, config, monitor, show) if config.resume else _Progress()
    resumed_from = progress.epoch
    if progress.finished(config.epochs):
        return progress.result(out_dir, monitor, resumed_from)

    # ---- epochs: train one epoch, validate, then the end-of-epoch bookkeeping
    for epoch in range(progress.epoch, config.epochs):
        t0 = time.perf_counter()
        row: dict[str, float] = {"epoch": epoch + 1, "lr": float(optimizer.param_groups[0]["lr"])}
        row.update(
            _train_one_epoch(accelerator, model if stepper is None else stepper, optimizer, train_loader,
                             step_fn if stepper is None else _call_stepper, step_scheduler, config, epoch, show)
        )
        if has_val:
            model.eval()
            if eval_fn is not None:
                with torch.no_grad():
                    val = _sync_dict(accelerator, eval_fn(model, val_loader))
            else:
                val = _default_eval(accelerator, model, val_loader, step_fn, show)
            clash = [k for k in val if k in row]
            if clash:
                raise ValueError(f"eval_fn returned keys that clash with training logs: {clash}")
            row.update(val)
        row["time_s"] = time.perf_counter() - t0
        _end_of_epoch(accelerator, model, scheduler, out_dir, config, monitor, progress, row, show)
        if progress.stopped_early:
            break

    accelerator.wait_for_everyone()
    return progress.result(out_dir, monitor, resumed_from)


def load_best(model: nn.Module, out_dir: str | Path, *, strict: bool = True) -> nn.Module:
    """Load the best epoch's weights (``out_dir/best/model.pt``) into ``model`` and return it.

    Raises:
        FileNotFoundError: no best checkpoint under ``out_dir``.

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> load_best(torch.nn.Linear(3, 1), out)
        Traceback (most recent call last):
        FileNotFoundError: no best checkpoint at ...
        >>> best = torch.nn.Linear(3, 1)
        >>> _ = Path(out, "best").mkdir(); torch.save(best.state_dict(), Path(out, "best", "model.pt"))
        >>> torch.equal(load_best(torch.nn.Linear(3, 1), out).weight, best.weight)
        True
    """
    path = Path(out_dir) / "best" / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"no best checkpoint at {path}; run fit(..., config=TrainConfig(out_dir={str(out_dir)!r})) first"
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    extract_model_from_parallel(model).load_state_dict(state_dict, strict=strict)
    return model


def make_loader(dataset: Any, batch_size: int, seed: int | None = None, *, drop_last: bool = False,
                collate_fn: Callable | None = None, own_generator: bool = True) -> DataLoader:
    """The one way the library turns a dataset into batches.

    ``seed`` given: shuffled, with its own ``torch.Generator`` seeded by ``seed`` (:func:`fit` re-seeds the order
    of every epoch with ``seed + epoch`` anyway); ``seed=None``: in order, for validation and evaluation.

    ``own_generator=False`` shuffles without a generator of its own: the order under :func:`fit` is the same, but
    each epoch's iterator then draws its base seed from the global torch RNG, which shifts every later global
    draw (e.g. a noisy gate's noise). The primer's runs were made that way, so its recipe keeps it.

    Raises:
        ValueError: ``batch_size`` is not a positive int.

    Example:
        >>> [b.tolist() for b in make_loader(torch.arange(5), batch_size=2)]
        [[0, 1], [2, 3], [4]]
        >>> sorted(torch.cat(list(make_loader(torch.arange(5), batch_size=2, seed=0))).tolist())
        [0, 1, 2, 3, 4]
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if seed is None:
        return DataLoader(dataset, batch_size=batch_size, drop_last=drop_last, collate_fn=collate_fn)
    generator = torch.Generator().manual_seed(seed) if own_generator else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=drop_last,
                      collate_fn=collate_fn)


def train_loop(model: nn.Module, optimizer: torch.optim.Optimizer, train_set: Any, *, step_fn: StepFn,
               config: TrainConfig, batch_size: int, val_set: Any = None, val_batch_size: int = 64,
               eval_fn: EvalFn | None = None, scheduler: Any = None, drop_last: bool = False,
               collate_fn: Callable | None = None, own_generator: bool = True) -> FitResult:
    """:func:`fit` on datasets: what every paper's ``recipe.train`` calls, so all of them train the same way.

    The training loader is ``make_loader(train_set, batch_size, seed=config.seed)``; the validation loader (when
    ``val_set`` is given) is ``make_loader(val_set, val_batch_size)``, in order. Everything else is :func:`fit`.
    ``own_generator``: see :func:`make_loader`.
    """
    train_loader = make_loader(train_set, batch_size, seed=config.seed, drop_last=drop_last, collate_fn=collate_fn,
                               own_generator=own_generator)
    val_loader = None if val_set is None else make_loader(val_set, val_batch_size, collate_fn=collate_fn)
    return fit(model, optimizer, train_loader, step_fn=step_fn, config=config, val_loader=val_loader, eval_fn=eval_fn,
               scheduler=scheduler)
