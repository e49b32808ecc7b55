"""The Trainer's parts: the metrics log window, and the lifecycle hooks it calls on every model."""
import time

import pytest
import torch

from genlab import fileio
from genlab.data import load_dataset
from genlab.models.base import GenerativeModel
from genlab.models.vae import MLPVAE, MLPVAEConfig
from genlab.training.metrics_log import MetricsWindow
from genlab.training.trainer import TrainConfig, Trainer

SMALL = {"hidden": (32,), "z_dim": 4}


def test_the_window_logs_the_mean_of_each_loss_and_then_starts_empty():
    window = MetricsWindow()
    assert window.flush({"step": 0}, {}) is None  # no step since the last line: no line
    window.add({"loss": torch.tensor(1.0), "kl": torch.tensor(4.0)}, images=10)
    window.add({"loss": torch.tensor(3.0), "kl": torch.tensor(2.0)}, images=10)
    line = window.flush({"step": 2, "epoch": 0.5}, {"lr_factor": 0.9})
    assert list(line.record) == ["step", "epoch", "img_per_s", "lr_factor", "loss", "kl"]
    assert line.record["loss"] == 2.0 and line.record["kl"] == 3.0 and line.record["img_per_s"] > 0
    assert line.losses == ["loss", "kl"]
    assert line.progress_text().startswith("loss 2  kl 3  ") and line.progress_text().endswith(" img/s")
    assert window.count == 0 and window.sums == {} and window.images == 0
    assert window.flush({"step": 2}, {}) is None


def test_a_warm_up_step_counts_in_the_means_but_not_in_img_per_s():
    window = MetricsWindow()
    before = window.start
    time.sleep(0.01)
    window.add({"loss": torch.tensor(5.0)}, images=10, timed=False)
    assert window.images == 0 and window.start > before  # the timing restarts after the warm-up step
    line = window.flush({"step": 1}, {})
    assert "img_per_s" not in line.record and line.record["loss"] == 5.0
    assert line.progress_text() == "loss 5"


def test_the_window_averages_across_processes_through_the_given_function():
    window = MetricsWindow()
    window.add({"loss": torch.tensor(2.0)}, images=4)
    line = window.flush({"step": 1}, {}, mean_across=lambda totals: totals * 0.5)  # as if another process had 0
    assert line.record["loss"] == 1.0


def test_a_non_finite_loss_stays_in_the_window_sums():
    window = MetricsWindow()
    window.add({"loss": torch.tensor(float("nan"))}, images=4)
    window.add({"loss": torch.tensor(1.0)}, images=4)
    assert torch.isnan(window.sums["loss"])


class HookedVAE(MLPVAE):
    """Records every lifecycle hook call the Trainer makes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def on_epoch_end(self, train_images, train_labels, *, epoch, last, seed):
        self.calls.append(("epoch_end", epoch, last, seed, train_images.shape[0]))
        return {"hook_figure": 1.5}

    def on_stop(self, train_images, train_labels, *, seed):
        self.calls.append(("stop", seed, train_images.shape[0]))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_the_trainer_calls_the_epoch_end_hook_after_every_epoch_and_logs_what_it_returns(tmp_path, digits):
    model = HookedVAE(MLPVAEConfig(**SMALL), digits.image_shape)
    config = TrainConfig(epochs=3, seed=7, sample_every=0)
    assert Trainer(model, digits, config, tmp_path, progress=False).fit() == "completed"
    n = len(digits.train)
    assert model.calls == [("epoch_end", 1, False, 7, n), ("epoch_end", 2, False, 7, n), ("epoch_end", 3, True, 7, n)]
    ends = [r for r in fileio.read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "epoch_end"]
    assert [r["epoch"] for r in ends] == [1, 2, 3] and all(r["hook_figure"] == 1.5 for r in ends)


def test_a_stop_inside_an_epoch_calls_the_stop_hook_once_before_the_checkpoint(tmp_path, digits):
    model = HookedVAE(MLPVAEConfig(**SMALL), digits.image_shape)
    saved = []
    trainer = Trainer(model, digits, TrainConfig(epochs=3, max_steps=5, sample_every=0), tmp_path, progress=False)
    trainer.on_save = lambda: saved.append(list(model.calls))
    assert trainer.fit() == "max_steps"
    assert model.calls == [("stop", 0, len(digits.train))]
    assert saved == [model.calls]  # the hook ran before the (only) checkpoint was written


def test_a_stop_at_an_epochs_last_step_ends_that_epoch_as_the_last(tmp_path, digits):
    model = HookedVAE(MLPVAEConfig(**SMALL), digits.image_shape)  # digits: 1437 images, 12 steps of 128 an epoch
    trainer = Trainer(model, digits, TrainConfig(epochs=3, max_steps=12, sample_every=0), tmp_path, progress=False)
    assert trainer.fit() == "max_steps"
    assert [c[:3] for c in model.calls] == [("epoch_end", 1, True)]


def test_the_base_class_hooks_do_nothing():
    model = GenerativeModel(None, (1, 8, 8))
    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    assert model.on_epoch_end(images, None, epoch=1, last=True, seed=0) == {}
    assert model.on_stop(images, None, seed=0) is None


def test_the_hooks_seconds_count_as_training_time(tmp_path, digits):
    class SlowHookVAE(HookedVAE):
        def on_epoch_end(self, *args, **kwargs):
            time.sleep(0.3)  # a lower bound on the time the line must include, whatever the machine's speed
            return super().on_epoch_end(*args, **kwargs)

    model = SlowHookVAE(MLPVAEConfig(**SMALL), digits.image_shape)
    trainer = Trainer(model, digits, TrainConfig(epochs=1, sample_every=0), tmp_path, progress=False)
    trainer.fit()
    [end] = [r for r in fileio.read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "epoch_end"]
    assert end["time"] >= 0.3 and trainer.state.train_seconds >= 0.3
