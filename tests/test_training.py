"""The Trainer: learning on real data, exact resume, Ctrl-C, non-finite losses, safe checkpoints."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import genlab
from genlab.data import Dataset, ImageSplit, load_dataset
from genlab.errors import RunError
from genlab.models import MODELS, build_model, register_model
from genlab.models.vae import MLPVAE, MLPVAEConfig
from genlab.training import checkpoint as ckpt
from genlab.training.trainer import Trainer, TrainConfig

SRC = str(Path(__file__).resolve().parents[1] / "src")


def held_out_neg_elbo(model, dataset) -> float:
    model.eval()
    out = model.evaluate(dataset.test.images, generator=torch.Generator().manual_seed(0))
    model.train()
    return -out["test_elbo"]


def test_seed_vae_lowers_the_held_out_negative_elbo_on_digits(tmp_path):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("mlp-vae", {}, data.image_shape)
    before = held_out_neg_elbo(model, data)
    Trainer(model, data, TrainConfig(epochs=15, sample_every=0), tmp_path, progress=False).fit()
    after = held_out_neg_elbo(model, data)
    assert after < 0.75 * before, (before, after)


def subset(data: Dataset, n_train: int, n_test: int) -> Dataset:
    return Dataset(data.name, ImageSplit(data.train.images[:n_train], data.train.labels[:n_train]),
                   ImageSplit(data.test.images[:n_test], data.test.labels[:n_test]), data.num_classes,
                   data.class_names, data.origin)


def test_seed_vae_lowers_the_held_out_negative_elbo_on_fashion_mnist(tmp_path):
    data = subset(load_dataset("fashion-mnist", progress=False), 6000, 1000)
    torch.manual_seed(0)
    model = build_model("mlp-vae", {}, data.image_shape)
    before = held_out_neg_elbo(model, data)  # ~ 784 log 2 = 543 nats for an untrained decoder
    Trainer(model, data, TrainConfig(epochs=2, sample_every=0), tmp_path, progress=False).fit()
    after = held_out_neg_elbo(model, data)
    assert after < 0.7 * before, (before, after)


def mean_pairwise_distance(x: torch.Tensor) -> float:
    flat = x.flatten(1)
    d = torch.cdist(flat, flat)
    n = flat.shape[0]
    return (d.sum() / (n * (n - 1))).item()


def test_seed_gan_samples_are_varied_not_collapsed(tmp_path):
    data = load_dataset("digits")
    res = genlab.train("seed-gan", "digits", out=tmp_path / "gan", epochs=100, progress=False)
    samples = res.model.sample(300, generator=torch.Generator().manual_seed(1))
    real = data.test.images[:300].float() / 255
    spread, real_spread = mean_pairwise_distance(samples), mean_pairwise_distance(real)
    assert spread > 0.6 * real_spread, (spread, real_spread)
    # and not just noise: a pixel's mean over samples follows the digits' layout
    corr = torch.corrcoef(torch.stack([samples.mean(0).flatten(), real.mean(0).flatten()]))[0, 1]
    assert corr > 0.7, corr


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors, _ = ckpt.read_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    return tensors


@pytest.mark.parametrize("preset", ["seed-vae", "seed-gan"])
def test_a_resumed_run_ends_bit_identical_to_one_that_never_stopped(tmp_path, preset):
    # digits: 1437 training images -> 12 batches of 128 per epoch; stop in the middle of epoch 2
    full = genlab.train(preset, "digits", out=tmp_path / "full", epochs=3, progress=False)
    part = genlab.train(preset, "digits", out=tmp_path / "part", epochs=3, max_steps=17, progress=False)
    assert part.status == "max_steps" and part.state.step == 17 and part.state.batch_in_epoch == 5
    resumed = genlab.resume(tmp_path / "part", progress=False)
    assert resumed.status == "completed" and resumed.state.step == full.state.step == 36
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert a.keys() == b.keys()
    assert any(k.startswith("optim/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the log was not duplicated by the restart
    steps = [line for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines() if '"epoch_end"' in line]
    assert len(steps) == 3


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "genlab", "train", "seed-vae", "--epochs", "400", "--out", str(run), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt_file = run / "checkpoints" / "last.safetensors"
    deadline = time.time() + 60
    while not ckpt_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert ckpt_file.exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "genlab train --resume" in out
    _, meta = ckpt.read_checkpoint(ckpt_file)
    stopped_at = meta["state"]["step"]
    assert 0 < stopped_at < 400 * 12
    done = subprocess.run([sys.executable, "-m", "genlab", "train", "--resume", str(run), "--epochs",
                           str(meta["state"]["epoch"] + 2), "--no-progress"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _, meta = ckpt.read_checkpoint(ckpt_file)
    assert meta["state"]["step"] > stopped_at and meta["state"]["batch_in_epoch"] == 0


class ExplodingVAE(MLPVAE):
    """The seed VAE whose weights turn to NaN at step 20 (after the first epoch's checkpoint)."""

    def train_step(self, batch, step, optimizers):
        if step == 20:
            with torch.no_grad():
                self.decoder[0].weight.mul_(float("nan"))
        return super().train_step(batch, step, optimizers)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    register_model("exploding-vae-test", ExplodingVAE, MLPVAEConfig)
    try:
        with pytest.raises(RunError, match="last good checkpoint") as err:
            genlab.train("exploding-vae-test", "digits", out=tmp_path / "run", epochs=5, progress=False)
        assert "step 21" in str(err.value) and "--lr" in str(err.value)
        tensors, meta = ckpt.read_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
        assert meta["state"]["step"] == 12  # the end of epoch 1, before the NaN
        assert all(torch.isfinite(t).all() for k, t in tensors.items() if t.is_floating_point())
        model = genlab.load(tmp_path / "run")  # still usable
        assert torch.isfinite(model.sample(4)).all()
    finally:
        MODELS.pop("exploding-vae-test")


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    genlab.train("seed-vae", "digits", out=tmp_path / "run", epochs=1, progress=False)
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    before = path.read_bytes()
    model = build_model("mlp-vae", {}, (1, 8, 8))

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, model, model.configure_optimizers(), {}, {"step": 99})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.json", "last.safetensors"]  # no temp file left


def test_a_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    genlab.train("seed-vae", "digits", out=tmp_path / "run", epochs=1, progress=False)
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(RunError, match="corrupt"):
        genlab.load(tmp_path / "run")


def test_an_existing_run_folder_is_never_overwritten_by_accident(tmp_path):
    genlab.train("seed-vae", "digits", out=tmp_path / "run", epochs=1, progress=False)
    with pytest.raises(RunError, match="--resume"):
        genlab.train("seed-vae", "digits", out=tmp_path / "run", epochs=1, progress=False)
    auto = genlab.train("seed-vae", "digits", epochs=1, progress=False, runs_root=tmp_path / "runs")
    again = genlab.train("seed-vae", "digits", epochs=1, progress=False, runs_root=tmp_path / "runs")
    assert auto.run_dir.name == "seed-vae-digits" and again.run_dir.name == "seed-vae-digits-2"


def test_a_run_folder_alone_is_enough_to_load_and_sample(tmp_path):
    res = genlab.train("seed-vae", "digits", out=tmp_path / "run", epochs=1, progress=False)
    model = genlab.load(tmp_path / "run")
    x = model.sample(8)
    assert x.shape == (8, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    for a, b in zip(res.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(RunError, match="does not exist"):
        genlab.load(tmp_path / "nope")
