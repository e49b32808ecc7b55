"""The learning-rate schedule: decayed to 0 at the end of the budget (epochs, steps or time)."""
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genlab
from genlab.errors import GenlabError
from genlab.models.vae import MLPVAE
from genlab.training import checkpoint as ckpt
from genlab.training.schedule import budget_progress, lr_factor, total_steps

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_the_schedules_closed_forms():
    assert [lr_factor("constant", p) for p in (0, 0.5, 1)] == [1.0, 1.0, 1.0]
    assert [lr_factor("linear", p) for p in (0, 0.25, 1)] == [1.0, 0.75, 0.0]
    assert lr_factor("cosine", 0) == 1.0
    assert lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor("cosine", 0.25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor("cosine", 1) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("linear", 1.7) == 0.0 and lr_factor("linear", -1) == 1.0  # clamped to the budget
    with pytest.raises(GenlabError, match="unknown learning-rate schedule 'step'"):
        lr_factor("step", 0.5)


def optimizer_groups(run_dir: Path) -> list[dict]:
    _, meta = ckpt.read_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    return meta["optimizers"]["vae"]["param_groups"]


def test_a_linear_schedule_decays_every_step_to_the_end_of_the_epochs(tmp_path):
    # digits: 1437 training images -> 12 steps of 128 per epoch, 24 in all
    res = genlab.train("seed-vae", "digits", out=tmp_path / "run", epochs=2, lr_schedule="linear", progress=False)
    [group] = optimizer_groups(res.run_dir)
    assert group["initial_lr"] == 1e-3
    assert group["lr"] == pytest.approx(1e-3 * (1 - 23 / 24))  # the rate of the last (24th) step
    logged = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    factors = [r["lr_factor"] for r in logged if "lr_factor" in r]
    assert factors and factors == sorted(factors, reverse=True) and factors[-1] < 0.1
    assert json.loads((res.run_dir / "config.json").read_text())["train"]["lr_schedule"] == "linear"
    # the constant default leaves the rate alone and logs no factor
    res = genlab.train("seed-vae", "digits", out=tmp_path / "const", epochs=1, progress=False)
    [group] = optimizer_groups(res.run_dir)
    assert group["lr"] == group["initial_lr"] == 1e-3
    assert "lr_factor" not in (res.run_dir / "metrics.jsonl").read_text()


def test_under_a_time_limit_the_schedule_follows_whichever_limit_comes_first():
    assert budget_progress(10, total_steps=100, seconds=50.0, max_seconds=100.0) == 0.5  # time is the tighter budget
    assert budget_progress(10, total_steps=100, seconds=5.0, max_seconds=100.0) == 0.1  # steps are
    assert budget_progress(10, total_steps=100, seconds=500.0, max_seconds=None) == 0.1  # no time limit: steps alone
    assert budget_progress(0, total_steps=0, seconds=0.0, max_seconds=None) == 0.0  # an empty budget divides by 1


def test_the_step_budget_is_the_epochs_or_max_steps_whichever_is_smaller():
    assert total_steps(epochs=3, steps_per_epoch=12, max_steps=None) == 36
    assert total_steps(epochs=3, steps_per_epoch=12, max_steps=20) == 20
    assert total_steps(epochs=3, steps_per_epoch=12, max_steps=100) == 36


def test_a_time_budget_decays_the_rate_to_near_zero_by_its_end(tmp_path, step_clock):
    step_clock("mlp-vae", 0.125)  # each step takes 1/8 s of training time (tests/conftest.py): 32 in 4 s
    res = genlab.train("seed-vae", "digits", out=tmp_path / "run", epochs=100_000, max_seconds=4.0,
                       lr_schedule="cosine", progress=False)
    assert res.status == "max_seconds" and res.state.step == 32
    [group] = optimizer_groups(res.run_dir)
    # the rate of the last step, which began at 31/32 of the time budget (its share of the epochs is far less)
    assert group["lr"] == pytest.approx(group["initial_lr"] * lr_factor("cosine", 31 / 32), rel=1e-9)
    assert group["lr"] < 0.01 * group["initial_lr"]


def press_ctrl_c_during_step(step_to_stop: int):
    """MLPVAE.train_step that sends this process SIGINT (a real Ctrl-C) during ``step_to_stop``, once."""
    train_step, pressed = MLPVAE.train_step, []

    def wrapped(self, batch, step, optimizers):
        if step == step_to_stop and not pressed:
            pressed.append(step)
            signal.raise_signal(signal.SIGINT)
        return train_step(self, batch, step, optimizers)
    return wrapped


def test_a_run_interrupted_under_a_schedule_resumes_bit_identical(tmp_path, monkeypatch):
    full = genlab.train("seed-vae", "digits", out=tmp_path / "full", epochs=3, lr_schedule="linear", progress=False)
    monkeypatch.setattr(MLPVAE, "train_step", press_ctrl_c_during_step(16))
    part = genlab.train("seed-vae", "digits", out=tmp_path / "part", epochs=3, lr_schedule="linear", progress=False)
    assert part.status == "interrupted" and part.state.step == 17
    monkeypatch.undo()
    resumed = genlab.resume(tmp_path / "part", progress=False)
    assert resumed.status == "completed" and resumed.state.step == full.state.step == 36
    a, _ = ckpt.read_checkpoint(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b, _ = ckpt.read_checkpoint(tmp_path / "part" / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert optimizer_groups(tmp_path / "full") == optimizer_groups(tmp_path / "part")


def test_the_cli_takes_a_schedule_and_refuses_one_on_resume(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "genlab", "train", "seed-vae", "--epochs", "1", "--out", str(run), "--no-progress"]
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*cmd, "--lr-schedule", "cosine"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "config.json").read_text())["train"]["lr_schedule"] == "cosine"
    again = subprocess.run([sys.executable, "-m", "genlab", "train", "--resume", str(run), "--lr-schedule", "linear"],
                           env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume continues a run with its own settings" in again.stderr
    bad = subprocess.run([*cmd, "--lr-schedule", "step", "--overwrite"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'step'" in bad.stderr
