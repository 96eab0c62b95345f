"""The shared training loop: learning, history files, early stopping, checkpoints, resume, accumulation."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medmoe.engine import FitResult, TrainConfig, fit, load_best, resolve_mixed_precision

# ----------------------------------------------------------------------------- tiny problems


def _regression_data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def mse_step(model: nn.Module, batch) -> dict:
    x, y = batch
    return {"loss": nn.functional.mse_loss(model(x), y)}


def _mlp(seed: int = 123) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))


def _cfg(tmp_path, name: str = "run", **kw) -> TrainConfig:
    kw.setdefault("progress", False)
    return TrainConfig(out_dir=tmp_path / name, **kw)


class ScriptedEval:
    """eval_fn returning a fixed sequence of val_loss values and remembering each epoch's weights."""

    def __init__(self, values: list[float], key: str = "val_loss") -> None:
        self.values, self.key, self.calls, self.weights = values, key, 0, []

    def __call__(self, model, val_loader) -> dict[str, float]:
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        value = self.values[self.calls]
        self.calls += 1
        return {self.key: value}


# ----------------------------------------------------------------------------- learning and files


def test_loss_goes_down_and_history_files(tmp_path):
    data = _regression_data()
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    res = fit(
        model,
        opt,
        DataLoader(data, batch_size=8, shuffle=True),
        step_fn=mse_step,
        val_loader=DataLoader(data, batch_size=16),
        config=_cfg(tmp_path, epochs=4, progress=True),  # bars and summary lines must not break anything
    )
    assert isinstance(res, FitResult)
    losses = [row["train_loss"] for row in res.history]
    assert losses[-1] < 0.2 * losses[0]
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]
    assert res.epochs_run == 4 and not res.stopped_early and res.monitor == "val_loss"

    out = tmp_path / "run"
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {"epoch", "lr", "train_loss", "val_loss", "time_s"} <= set(rows[0])
    assert float(rows[2]["train_loss"]) == pytest.approx(history[2]["train_loss"])
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 4 and len(state["history"]) == 4
    assert not (out / "last.tmp").exists() and not (out / "last.old").exists()


def test_extra_logs_are_averaged_and_grad_norm_logged(tmp_path):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        out = mse_step(model, batch)
        out["batch_index"] = float(calls["n"])  # 1, 2, 3, 4 in epoch 1 -> mean 2.5
        out["half"] = torch.tensor(0.5)
        return out

    model = nn.Linear(4, 1)
    res = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        DataLoader(_regression_data(32), batch_size=8),
        step_fn=step,
        config=_cfg(tmp_path, epochs=1, max_grad_norm=1.0),
    )
    row = res.history[0]
    assert row["train_batch_index"] == pytest.approx(2.5)
    assert row["train_half"] == pytest.approx(0.5)
    assert row["train_grad_norm"] > 0
    assert res.monitor == "train_loss"  # no validation: the training loss is monitored


def test_max_steps_per_epoch_counts_optimizer_steps(tmp_path):
    seen = []

    def step(model, batch):
        seen.append(1)
        return mse_step(model, batch)

    model = nn.Linear(4, 1)
    fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        DataLoader(_regression_data(64), batch_size=4),  # 16 batches
        step_fn=step,
        config=_cfg(tmp_path, epochs=2, grad_accum_steps=2, max_steps_per_epoch=3),
    )
    assert len(seen) == 2 * 3 * 2  # epochs x optimizer steps x batches per step


def test_step_scheduler_follows_optimizer_steps(tmp_path):
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    res = fit(
        model,
        opt,
        DataLoader(_regression_data(32), batch_size=4),  # 8 batches = 4 optimizer steps with accum 2
        step_fn=mse_step,
        scheduler=sched,
        config=_cfg(tmp_path, epochs=3, grad_accum_steps=2),
    )
    assert [row["lr"] for row in res.history] == pytest.approx([1.0, 0.5**4, 0.5**8])


# ----------------------------------------------------------------------------- early stopping and best checkpoint


def test_early_stopping_and_best_checkpoint(tmp_path):
    data = _regression_data(32)
    # Best at epoch 3, then 2 epochs without improvement -> stop after epoch 5 (patience 2).
    scripted = ScriptedEval([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1])
    model = nn.Linear(4, 1)
    res = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        DataLoader(data, batch_size=8, shuffle=True),
        step_fn=mse_step,
        val_loader=DataLoader(data, batch_size=8),
        eval_fn=scripted,
        config=_cfg(tmp_path, epochs=10, early_stopping_patience=2),
    )
    assert res.stopped_early and res.epochs_run == 5 and scripted.calls == 5
    assert res.best_epoch == 3 and res.best_metric == 3.0
    assert len(res.history) == 5

    best_info = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best_info == {"epoch": 3, "monitor": "val_loss", "value": 3.0}
    # The saved weights are those of epoch 3, not of the last epoch.
    restored = load_best(nn.Linear(4, 1), tmp_path / "run")
    for key, value in restored.state_dict().items():
        assert torch.equal(value, scripted.weights[2][key])
        assert not torch.equal(value, scripted.weights[4][key])


def test_early_stopping_respects_min_epochs(tmp_path):
    data = _regression_data(32)
    scripted = ScriptedEval([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1])
    model = nn.Linear(4, 1)
    res = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        DataLoader(data, batch_size=8),
        step_fn=mse_step,
        val_loader=DataLoader(data, batch_size=8),
        eval_fn=scripted,
        config=_cfg(tmp_path, epochs=10, early_stopping_patience=2, min_epochs=7),
    )
    assert res.stopped_early and res.epochs_run == 7 and res.best_epoch == 3


def test_mode_max_with_custom_metric(tmp_path):
    data = _regression_data(32)
    scripted = ScriptedEval([0.1, 0.5, 0.4, 0.3], key="val_dice")
    model = nn.Linear(4, 1)
    res = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        DataLoader(data, batch_size=8),
        step_fn=mse_step,
        val_loader=DataLoader(data, batch_size=8),
        eval_fn=scripted,
        config=_cfg(tmp_path, epochs=4, monitor="val_dice", mode="max"),
    )
    assert res.best_epoch == 2 and res.best_metric == 0.5 and not res.stopped_early


# ----------------------------------------------------------------------------- resume


def _resume_setup():
    """Fresh model/optimizer/scheduler/loaders, identical every call (Adam + dropout + shuffling)."""
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    data = _regression_data(40)
    train = DataLoader(data, batch_size=8, shuffle=True)
    val = DataLoader(data, batch_size=20)
    return model, opt, sched, train, val


def _run(tmp_path, name, epochs, step_fn=mse_step):
    model, opt, sched, train, val = _resume_setup()
    res = fit(
        model,
        opt,
        train,
        step_fn=step_fn,
        val_loader=val,
        scheduler=sched,
        config=_cfg(tmp_path, name, epochs=epochs, scheduler_interval="epoch"),
    )
    return model, res


def _same_history(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert {k: v for k, v in row_a.items() if k != "time_s"} == {k: v for k, v in row_b.items() if k != "time_s"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    model, res = _run(tmp, "A", epochs=5)
    return model, res


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, uninterrupted):
    model_a, res_a = uninterrupted
    calls = {"n": 0}

    def crashing_step(model, batch):
        calls["n"] += model.training  # validation calls step_fn too; count training batches
        if calls["n"] == 2 * 5 + 3:  # third training batch of epoch 3 (5 batches per epoch)
            raise RuntimeError("simulated interruption")
        return mse_step(model, batch)

    with pytest.raises(RuntimeError, match="simulated interruption"):
        _run(tmp_path, "B", epochs=5, step_fn=crashing_step)
    state = json.loads((tmp_path / "B" / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 2

    torch.manual_seed(999)  # a different global RNG state must not matter: it is restored
    model_b, res_b = _run(tmp_path, "B", epochs=5)
    assert res_b.resumed_from == 2 and res_b.epochs_run == 5
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)  # bit-identical
    _same_history(res_a.history, res_b.history)
    assert len(json.loads((tmp_path / "B" / "history.json").read_text())) == 5
    assert res_b.best_epoch == res_a.best_epoch and res_b.best_metric == res_a.best_metric


def test_extending_a_finished_run_equals_uninterrupted_run(tmp_path, uninterrupted):
    model_a, res_a = uninterrupted
    _run(tmp_path, "C", epochs=2)
    model_c, res_c = _run(tmp_path, "C", epochs=5)
    assert res_c.resumed_from == 2
    for pa, pc in zip(model_a.parameters(), model_c.parameters()):
        assert torch.equal(pa, pc)
    _same_history(res_a.history, res_c.history)
    with open(tmp_path / "C" / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_resume_after_crash_during_checkpoint_swap(tmp_path, uninterrupted):
    # A crash between "last -> last.old" and "last.tmp -> last", while a newer save was half written.
    model_a, res_a = uninterrupted
    _run(tmp_path, "G", epochs=2)
    os.replace(tmp_path / "G" / "last", tmp_path / "G" / "last.old")
    (tmp_path / "G" / "last.tmp").mkdir()
    (tmp_path / "G" / "last.tmp" / "model.safetensors").write_text("half written")  # no trainer_state.json
    model_g, res_g = _run(tmp_path, "G", epochs=5)
    assert res_g.resumed_from == 2
    for pa, pg in zip(model_a.parameters(), model_g.parameters()):
        assert torch.equal(pa, pg)
    assert sorted(p.name for p in (tmp_path / "G").iterdir() if p.name.startswith("last")) == ["last"]


def test_finished_run_returns_stored_result(tmp_path):
    model_a, res_a = _run(tmp_path, "D", epochs=2)
    calls = {"n": 0}

    def counting_step(model, batch):
        calls["n"] += 1
        return mse_step(model, batch)

    model_b, res_b = _run(tmp_path, "D", epochs=2, step_fn=counting_step)
    assert calls["n"] == 0 and res_b.resumed_from == 2
    assert res_b.history == res_a.history
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)  # the last weights are loaded into the fresh model


def test_resume_false_starts_over(tmp_path):
    _run(tmp_path, "E", epochs=2)
    model, opt, sched, train, val = _resume_setup()
    res = fit(
        model, opt, train, step_fn=mse_step,
        config=_cfg(tmp_path, "E", epochs=1, resume=False, monitor="val_loss"), val_loader=val,
    )
    assert res.resumed_from == 0 and len(res.history) == 1


def test_resume_with_different_monitor_is_refused(tmp_path):
    _run(tmp_path, "F", epochs=1)
    model, opt, _, train, val = _resume_setup()
    with pytest.raises(ValueError, match="monitored 'val_loss'"):
        fit(
            model, opt, train, step_fn=mse_step, val_loader=val,
            config=_cfg(tmp_path, "F", epochs=2, monitor="train_loss"),
        )


# ----------------------------------------------------------------------------- gradient accumulation


def test_grad_accumulation_matches_bigger_batch(tmp_path):
    data = _regression_data(32)

    def train(batch_size: int, accum: int) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        fit(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            DataLoader(data, batch_size=batch_size, shuffle=True),  # same seed -> same permutation
            step_fn=mse_step,
            config=_cfg(tmp_path, f"bs{batch_size}", epochs=3, grad_accum_steps=accum),
        )
        return model

    small = train(4, 2)
    big = train(8, 1)
    for ps, pb in zip(small.parameters(), big.parameters()):
        torch.testing.assert_close(ps, pb, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- validation of arguments


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 2.5),
        ("grad_accum_steps", 0),
        ("mixed_precision", "fp8"),
        ("max_grad_norm", 0.0),
        ("early_stopping_patience", 0),
        ("mode", "maximize"),
        ("min_epochs", -1),
        ("seed", -3),
        ("max_steps_per_epoch", 0),
        ("scheduler_interval", "batch"),
        ("min_delta", -0.1),
    ],
)
def test_bad_config_raises_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(out_dir=tmp_path, **{field: value})


def test_bad_fit_arguments(tmp_path):
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(_regression_data(16), batch_size=8)
    with pytest.raises(ValueError, match="val_dice"):
        fit(model, opt, loader, step_fn=mse_step, config=_cfg(tmp_path, monitor="val_dice"))
    with pytest.raises(ValueError, match="'loss'"):
        fit(model, opt, loader, step_fn=lambda m, b: {"mse": 1.0}, config=_cfg(tmp_path, "x"))
    with pytest.raises(ValueError, match="requires? grad"):
        fit(model, opt, loader, step_fn=lambda m, b: {"loss": torch.tensor(1.0)}, config=_cfg(tmp_path, "y"))
    with pytest.raises(ValueError, match="val_auc"):
        fit(
            model, opt, loader, step_fn=mse_step, val_loader=loader, eval_fn=lambda m, v: {"val_dice": 1.0},
            config=_cfg(tmp_path, "z", monitor="val_auc"),
        )
    with pytest.raises(TypeError, match="TrainConfig"):
        fit(model, opt, loader, step_fn=mse_step, config={"out_dir": tmp_path})


def test_load_best_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="best"):
        load_best(nn.Linear(4, 1), tmp_path / "nowhere")


def test_mixed_precision_resolution_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    assert resolve_mixed_precision("auto") == "no"
    assert resolve_mixed_precision("no") == "no"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_mixed_precision("bf16") == "no"
    assert any("CUDA" in str(w.message) for w in caught)


def test_fit_after_an_accelerator_with_other_precision(tmp_path):
    # AcceleratorState is a process-wide singleton; a plain second Accelerator with another
    # mixed precision raises. fit() resets it, so notebooks can mix runs.
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # earlier tests initialised it with "no"
    Accelerator(mixed_precision="bf16")  # CPU autocast in bf16 exists, so this works without a GPU
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(mixed_precision="no")  # the quirk fit() works around
    model = nn.Linear(4, 1)
    res = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        DataLoader(_regression_data(16), batch_size=8),
        step_fn=mse_step,
        config=_cfg(tmp_path, epochs=1, mixed_precision="no"),
    )
    assert res.epochs_run == 1


# ----------------------------------------------------------------------------- several processes (DDP on CPU, gloo)

_DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from medmoe.engine import TrainConfig, fit

    root = sys.argv[1]

    def run(name, epochs):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        y = x.sum(1, keepdim=True)
        step = lambda m, b: {"loss": nn.functional.mse_loss(m(b[0]), b[1])}
        res = fit(model, opt, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), step_fn=step,
                  val_loader=DataLoader(TensorDataset(x, y), batch_size=8),
                  config=TrainConfig(out_dir=f"{root}/{name}", epochs=epochs, progress=False))
        return [p.detach().flatten().tolist() for p in model.parameters()], res

    params_a, res_a = run("A", 3)
    run("B", 2)
    params_b, res_b = run("B", 3)
    out = {"world": dist.get_world_size(), "a": params_a, "b": params_b, "resumed": res_b.resumed_from,
           "val_a": [r["val_loss"] for r in res_a.history], "val_b": [r["val_loss"] for r in res_b.history]}
    with open(f"{root}/rank{dist.get_rank()}.json", "w") as f:
        json.dump(out, f)
    """
)


@pytest.mark.slow
def test_two_processes_agree_and_resume(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(_DDP_SCRIPT)
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["world"] == 2
    assert rank0["a"] == rank1["a"]  # DDP keeps the replicas identical
    assert rank0["resumed"] == 2
    assert rank0["b"] == rank0["a"] and rank0["val_b"] == rank0["val_a"]  # resume == uninterrupted
    assert {p.name for p in (tmp_path / "B" / "last").iterdir()} >= {"random_states_0.pkl", "random_states_1.pkl"}
    assert len(json.loads((tmp_path / "B" / "history.json").read_text())) == 3


def test_checkpoint_of_another_run_is_never_resumed(tmp_path):
    loader = DataLoader(_regression_data(), batch_size=16, shuffle=True)
    model = _mlp()
    fit(model, torch.optim.SGD(model.parameters(), lr=0.05), loader, step_fn=mse_step,
        config=_cfg(tmp_path, epochs=2, run_key="lr=0.05"))
    other = _mlp()
    with pytest.raises(ValueError, match="belongs to another run"):
        fit(other, torch.optim.SGD(other.parameters(), lr=0.5), loader, step_fn=mse_step,
            config=_cfg(tmp_path, epochs=3, run_key="lr=0.5"))
    same = _mlp()  # the same key resumes and extends
    res = fit(same, torch.optim.SGD(same.parameters(), lr=0.05), loader, step_fn=mse_step,
              config=_cfg(tmp_path, epochs=3, run_key="lr=0.05"))
    assert res.resumed_from == 2 and len(res.history) == 3


def test_a_step_that_calls_other_model_methods_trains_under_ddp(tmp_path):
    """Under DDP, fit runs the whole step_fn inside DDP's forward (_StepModule): a step that calls a method other
    than forward (as SegMoTE's encode/decode) still synchronises its gradients."""
    script = tmp_path / "ddp_methods.py"
    script.write_text(textwrap.dedent(
        """
        import json, sys, torch
        import torch.distributed as dist
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset
        from medmoe.engine import TrainConfig, fit

        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)
            def encode(self, x):
                return torch.relu(self.a(x))
            def head(self, h):
                return self.b(h)

        torch.manual_seed(1)
        model = Two()
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)); y = x.sum(1, keepdim=True)
        step = lambda m, b: {"loss": nn.functional.mse_loss(m.head(m.encode(b[0])), b[1])}
        fit(model, torch.optim.SGD(model.parameters(), lr=0.05), DataLoader(TensorDataset(x, y), batch_size=8,
            shuffle=True), step_fn=step, config=TrainConfig(out_dir=sys.argv[1] + "/run", epochs=2, progress=False))
        with open(f"{sys.argv[1]}/rank{dist.get_rank()}.json", "w") as f:
            json.dump([p.detach().flatten().tolist() for p in model.parameters()], f)
        """))
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    assert rank0 == json.loads((tmp_path / "rank1.json").read_text())  # gradients were averaged across ranks
