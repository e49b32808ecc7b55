"""Faults around training: divergence before a checkpoint, resumes whose data or checkpoint no longer
fit, edited checkpoint metadata, a full disk, and kill -9 / SIGTERM at any point of a real run.

What each asserts: the last good checkpoint survives bit for bit, every complete log line survives,
every fault ends in a RunError that names the file or field (never a hang, never a traceback), and a
run resumed after any of them ends bit-identical to one that never stopped."""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save as st_save

import genlab
from genlab import fileio
from genlab.data import load_dataset
from genlab.errors import RunError
from genlab.models.vae import MLPVAE, MLPVAEConfig
from genlab.training import checkpoint as ckpt
from genlab.training.fingerprint import check_same_data, data_fingerprint
from genlab.training.trainer import Trainer, TrainConfig, finite_check_interval

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = {"hidden": (32,), "z_dim": 4}  # a small seed-style VAE: fast steps, a checkpoint of a few kB


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def no_hang():
    """Turns a hang into a failure (SIGALRM interrupts the Python loop) instead of a stuck suite."""
    def timeout(signum, frame):
        raise TimeoutError("no answer within 120 s: the call hangs")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def checkpoint_of(run: Path) -> Path:
    return run / "checkpoints" / "last.safetensors"


def assert_same_weights(a: Path, b: Path) -> None:
    """Model, optimizer and random-generator tensors of two runs' checkpoints are bit-identical."""
    ta, _ = ckpt.read_checkpoint(checkpoint_of(a))
    tb, _ = ckpt.read_checkpoint(checkpoint_of(b))
    assert ta.keys() == tb.keys() and any(k.startswith("optim/") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def rewrite_checkpoint(path: Path, meta, tensors: dict[str, torch.Tensor]) -> None:
    path.write_bytes(st_save(tensors, metadata={"genlab": json.dumps(meta)}))


# -- 1. divergence: the finite check runs before every save, on every device ----------------------

class PoisonedVAE(MLPVAE):
    """A VAE whose weights turn NaN in step ``poison_step`` (0-based), either before its forward pass
    (its loss is NaN) or after its update (its loss is finite, the weights it leaves are not). Just
    before, it copies the checkpoint files, written after the previous step."""

    poison_step, after_update, copies = 20, False, {}

    def train_step(self, batch, step, optimizers):
        if step == self.poison_step:
            folder = self.run_dir / "checkpoints"
            self.copies.update({p.name: p.read_bytes() for p in folder.iterdir()})
            if not self.after_update:
                self._poison()
        logs = super().train_step(batch, step, optimizers)
        if step == self.poison_step and self.after_update:
            self._poison()
        return logs

    def _poison(self):
        with torch.no_grad():
            self.decoder[0].weight.mul_(float("nan"))


def test_finite_checks_run_every_step_on_the_cpu_and_every_log_line_on_an_accelerator():
    assert finite_check_interval(torch.device("cpu"), 50) == 1
    assert finite_check_interval(torch.device("cuda"), 50) == 50
    assert finite_check_interval(torch.device("mps"), 7) == 7


@pytest.mark.parametrize("after_update", [False, True], ids=["nan-loss", "nan-weights-finite-loss"])
def test_a_nan_just_before_a_due_save_leaves_the_last_good_checkpoint_bit_identical(tmp_path, digits, after_update):
    # the accelerator's interval (a check every 50 steps) on the CPU; a checkpoint is due after every step
    model = PoisonedVAE(MLPVAEConfig(**SMALL), digits.image_shape)
    model.run_dir, model.after_update, model.copies = tmp_path, after_update, {}
    config = TrainConfig(epochs=3, log_every=50, checkpoint_minutes=0.0, sample_every=0)
    trainer = Trainer(model, digits, config, tmp_path, progress=False)
    trainer.check_every = finite_check_interval(torch.device("cuda"), config.log_every)
    assert trainer.check_every == 50
    with pytest.raises(RunError) as err:
        trainer.fit()
    message = str(err.value)
    assert "training diverged" in message and "step 21" in message
    assert f"last good checkpoint {checkpoint_of(tmp_path)} (step 20) is intact" in message
    if after_update:
        assert "weights became non-finite (model decoder.0.weight)" in message
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == sorted(model.copies) == ["last.json", "last.safetensors"]
    for name, data in model.copies.items():
        assert (folder / name).read_bytes() == data, name
    tensors, meta = ckpt.read_checkpoint(checkpoint_of(tmp_path))
    assert meta["state"]["step"] == 20
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


# -- 2. resumes whose data changed, or whose position is impossible --------------------------------

@pytest.fixture
def image_folder(tmp_path, digits):
    root = tmp_path / "images"
    root.mkdir()
    for i, img in enumerate(torch.cat([digits.train.images, digits.test.images])[:150]):
        Image.fromarray(img[0].numpy()).save(root / f"{i:03d}.png")
    return root


def train_on_folder(folder: Path, run: Path, max_steps: int | None = 12):
    return genlab.train("mlp-vae", f"folder:{folder}", out=run, epochs=3, batch_size=16, max_steps=max_steps,
                        progress=False, **SMALL)


@pytest.mark.parametrize("recorded", ["fingerprint", "sizes only (an older run)"])
def test_a_resume_on_an_image_folder_that_lost_files_is_refused(tmp_path, image_folder, no_hang, recorded):
    run = tmp_path / "run"
    part = train_on_folder(image_folder, run)
    assert part.status == "max_steps" and part.state.batch_in_epoch == 3  # 135 images: 9 batches an epoch
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["fingerprint"]["train_size"] == 135
    if recorded != "fingerprint":
        del config["data"]["fingerprint"]
        (run / "config.json").write_text(json.dumps(config))
    before = checkpoint_of(run).read_bytes()
    for p in sorted(image_folder.iterdir())[:100]:
        p.unlink()
    with pytest.raises(RunError, match=r"changed since the run .* training images: 135 when trained, 45 now"):
        genlab.resume(run, epochs=20, progress=False)
    assert checkpoint_of(run).read_bytes() == before


def test_a_resume_on_an_image_folder_whose_pixels_changed_is_refused(tmp_path, image_folder, no_hang):
    run = tmp_path / "run"
    train_on_folder(image_folder, run)
    first = sorted(image_folder.iterdir())[0]
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(first)  # same number of images, one other
    with pytest.raises(RunError, match="the (training|test) images or labels differ"):
        genlab.resume(run, progress=False)


def test_the_fingerprint_of_unchanged_data_matches_and_the_resume_is_exact(tmp_path, image_folder, no_hang):
    full = train_on_folder(image_folder, tmp_path / "full", max_steps=None)
    train_on_folder(image_folder, tmp_path / "part")
    resumed = genlab.resume(tmp_path / "part", progress=False)
    assert resumed.status == "completed" and resumed.state.step == full.state.step == 27
    assert_same_weights(tmp_path / "full", tmp_path / "part")


def test_a_large_split_is_fingerprinted_on_a_fixed_sample_that_still_sees_changes(digits):
    limit = 64 * 100  # bytes: 100 of the 8x8 images, evenly spaced from the first to the last
    fp = data_fingerprint(digits, limit=limit)
    assert fp == data_fingerprint(digits, limit=limit) != data_fingerprint(digits)
    changed = load_dataset("digits")
    changed.train.images[-1] = 255 - changed.train.images[-1]  # the last image is always in the sample
    assert data_fingerprint(changed, limit=limit)["train_sha256"] != fp["train_sha256"]
    assert data_fingerprint(changed, limit=limit)["test_sha256"] == fp["test_sha256"]
    with pytest.raises(RunError, match="the training images or labels differ"):
        check_same_data({"spec": "digits", "fingerprint": fp}, changed, Path("run"))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A small VAE on digits stopped at step 17 (epoch 2, batch 5): Adam state, a mid-epoch position."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    genlab.train("mlp-vae", "digits", out=run, epochs=3, max_steps=17, progress=False, **SMALL)
    return run


def copy_of(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# (epoch, batch_in_epoch, step) that no run on digits (12 batches an epoch) can have reached
IMPOSSIBLE_POSITIONS = [(1, 50, 62), (1, 13, 25), (1, 5, 16), (0, 5, 17), (7, 0, 17)]


@pytest.mark.parametrize("epoch,batch,step", IMPOSSIBLE_POSITIONS)
def test_a_checkpoint_position_the_data_cannot_reach_is_refused_not_looped_on(tmp_path, stopped_run, no_hang,
                                                                            epoch, batch, step):
    run = copy_of(stopped_run, tmp_path / "run")
    tensors, meta = ckpt.read_checkpoint(checkpoint_of(run))
    meta["state"].update(epoch=epoch, batch_in_epoch=batch, step=step)
    rewrite_checkpoint(checkpoint_of(run), meta, tensors)
    before = checkpoint_of(run).read_bytes()
    with pytest.raises(RunError, match=r"which this data cannot reach: its 1437 training images in batches of 128 "
                                       r"make 12 steps an epoch"):
        genlab.resume(run, epochs=20, progress=False)
    assert checkpoint_of(run).read_bytes() == before


def test_a_stop_request_during_the_epoch_end_stops_there(tmp_path, digits):
    class StopsWhileSampling(MLPVAE):
        def sample(self, n, generator=None, **kw):
            os.kill(os.getpid(), signal.SIGTERM)  # as if sent while the epoch's grid is drawn
            return super().sample(n, generator=generator, **kw)

    model = StopsWhileSampling(MLPVAEConfig(**SMALL), digits.image_shape)
    trainer = Trainer(model, digits, TrainConfig(epochs=5), tmp_path, progress=False)
    assert trainer.fit() == "interrupted"
    assert trainer.state.step == 12 and trainer.state.batch_in_epoch == 0  # no step of epoch 2
    _, meta = ckpt.read_checkpoint(checkpoint_of(tmp_path))
    assert meta["state"]["step"] == 12


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path):
    full = genlab.train("mlp-vae", "digits", out=tmp_path / "full", epochs=1, progress=False, **SMALL)
    genlab.train("mlp-vae", "digits", out=tmp_path / "lost", epochs=1, max_steps=5, progress=False, **SMALL)
    shutil.rmtree(tmp_path / "lost" / "checkpoints")  # config.json and log lines, no checkpoint: killed early
    (tmp_path / "lost" / "checkpoints").mkdir()
    (tmp_path / "lost" / "checkpoints" / ".last.safetensors.tmp-999999999").write_bytes(b"torn")
    resumed = genlab.resume(tmp_path / "lost", progress=False)
    assert resumed.status == "completed" and resumed.state.step == full.state.step == 12
    assert_same_weights(tmp_path / "full", tmp_path / "lost")
    assert [p.name for p in (tmp_path / "lost" / "checkpoints").iterdir()] != []
    assert not list((tmp_path / "lost").rglob(".*.tmp-*"))  # the dead writer's temporary file is gone
    steps = [r["step"] for r in fileio.read_jsonl(tmp_path / "lost" / "metrics.jsonl")]
    assert steps == [r["step"] for r in fileio.read_jsonl(tmp_path / "full" / "metrics.jsonl")]



def test_a_kill_between_an_epochs_log_line_and_its_checkpoint_logs_that_epoch_end_once(tmp_path, digits):
    """With a checkpoint taken inside the epoch at its last step, a kill after the epoch's
    ``epoch_end`` line but before the end-of-epoch checkpoint resumes at that same step: the epoch
    end is done again, and its first line must not stay beside the new one."""
    cfg = dict(epochs=2, checkpoint_minutes=0.0)  # a checkpoint after every step, inside the epoch too
    torch.manual_seed(0)
    reference = Trainer(MLPVAE(MLPVAEConfig(**SMALL), digits.image_shape), digits, TrainConfig(**cfg),
                        tmp_path / "reference", progress=False)
    reference.fit()

    class Killed(BaseException):
        pass

    torch.manual_seed(0)
    trainer = Trainer(MLPVAE(MLPVAEConfig(**SMALL), digits.image_shape), digits, TrainConfig(**cfg),
                      tmp_path / "run", progress=False)
    save = trainer.save

    def save_then_die_at_the_first_epoch_end(shuffle_state):
        if trainer.state.epoch == 1 and trainer.state.batch_in_epoch == 0:
            raise Killed  # the epoch_end line is written, the end-of-epoch checkpoint is not
        save(shuffle_state)

    trainer.save = save_then_die_at_the_first_epoch_end
    with pytest.raises(Killed):
        trainer.fit()
    on_disk = ckpt.read_checkpoint(checkpoint_of(tmp_path / "run"))[1]["state"]
    assert on_disk["batch_in_epoch"] == on_disk["step"] > 0 and on_disk["epoch"] == 0  # inside the epoch, at its end
    torch.manual_seed(0)
    resumed = Trainer(MLPVAE(MLPVAEConfig(**SMALL), digits.image_shape), digits, TrainConfig(**cfg),
                      tmp_path / "run", progress=False)
    resumed.restore()
    assert resumed.fit() == "completed"
    assert_same_weights(tmp_path / "reference", tmp_path / "run")
    ends = [r["step"] for r in fileio.read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("event") == "epoch_end"]
    assert ends == [r["step"] for r in fileio.read_jsonl(tmp_path / "reference" / "metrics.jsonl")
                    if r.get("event") == "epoch_end"]
    assert len(ends) == 2

# -- 3. checkpoint metadata with missing fields or wrong types -------------------------------------

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**70),
                        st.sampled_from([float("nan"), float("inf"), -1.0, 0.5, 1e300]), st.text(max_size=3), st.lists(st.integers(-2, 3), max_size=3), st.just({}), st.just({"0": 1}))


def json_paths(obj, prefix=()):
    """Every (path) to a value inside nested dicts and lists."""
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from json_paths(v, prefix + (k,))


def bad_tensors(shape):
    return st.sampled_from([torch.zeros(3), torch.zeros(shape, dtype=torch.int64) if shape else torch.zeros(2, 2),
                            torch.zeros(*shape, 2) if shape else torch.zeros(1), torch.zeros(0, dtype=torch.uint8)])


def try_to_resume(run: Path, digits) -> str:
    """restore() then one more step; the result must be success or a RunError, nothing else."""
    model = MLPVAE(MLPVAEConfig(**SMALL), digits.image_shape)
    trainer = Trainer(model, digits, TrainConfig(epochs=3), run, progress=False)
    try:
        trainer.restore()
        trainer.config.max_steps = trainer.state.step + 1
        trainer.fit()
    except RunError as e:
        return str(e)
    return ""


@settings(derandomize=True, max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_edited_checkpoint_metadata_gives_a_run_error_naming_the_checkpoint_and_field(stopped_run, digits, data):
    tensors, meta = ckpt.read_checkpoint(checkpoint_of(stopped_run))
    with tempfile.TemporaryDirectory() as folder:
        run = copy_of(stopped_run, Path(folder) / "run")
        path = data.draw(st.sampled_from([p for p in json_paths(meta) if p and p[0] != "format"]), label="path")
        parent = meta
        for key in path[:-1]:
            parent = parent[key]
        delete = data.draw(st.booleans(), label="delete") and isinstance(parent, dict)
        if delete:
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON_VALUES, label="value")
        edit_tensor = data.draw(st.booleans(), label="edit a tensor too")
        if edit_tensor:
            key = data.draw(st.sampled_from(sorted(k for k in tensors if not k.startswith("model/"))), label="tensor")
            if data.draw(st.booleans(), label="drop it"):
                del tensors[key]
            else:
                tensors[key] = data.draw(bad_tensors(tuple(tensors[key].shape)), label="bad tensor")
        rewrite_checkpoint(checkpoint_of(run), meta, tensors)
        message = try_to_resume(run, digits)
        if message:  # else the edit left a usable checkpoint (e.g. another learning rate)
            assert str(checkpoint_of(run)) in message, message
            if delete and not edit_tensor:
                assert str(path[-1]) in message or "cannot reach" in message, message


@pytest.mark.parametrize("edit,field", [
    (lambda m, t: m["state"].pop("batch_in_epoch"), "'state.batch_in_epoch' is missing"),
    (lambda m, t: m["state"].update(step="17"), "'state.step' is '17'"),
    (lambda m, t: m["state"].update(epoch=-1), "'state.epoch' is -1"),
    (lambda m, t: m["state"].update(train_seconds=float("nan")), "'state.train_seconds' is nan"),
    (lambda m, t: m.pop("optimizers"), "'optimizers' is missing"),
    (lambda m, t: m["optimizers"].pop("vae"), "'optimizers.vae' is missing"),
    (lambda m, t: m["optimizers"]["vae"]["param_groups"][0].update(lr="fast"), "param_groups[0].lr' is 'fast'"),
    (lambda m, t: m["optimizers"]["vae"]["param_groups"][0].update(betas=[0.9]), "param_groups[0].betas"),
    (lambda m, t: m["optimizers"]["vae"]["param_groups"][0].update(amsgrad=True), "param_groups[0].amsgrad' is True"),
    (lambda m, t: t.pop("rng/torch"), "'rng/torch' is missing"),
    (lambda m, t: t.update({"rng/shuffle": torch.zeros(5056)}), "'rng/shuffle' is torch.float32"),
    (lambda m, t: t.update({"optim/vae/0/exp_avg": torch.zeros(3)}), "'optim/vae/0/exp_avg' has shape (3,)"),
    (lambda m, t: t.pop("optim/vae/1/exp_avg_sq"), "parameter 1 of optimizer 'vae' lacks exp_avg_sq"),
    (lambda m, t: t.update({"optim/vae/x/step": torch.zeros(())}), "'optim/vae/x/step' does not name"),
    (lambda m, t: m.update(scalers=[1]), "'scalers'"),
])
def test_each_checkpoint_field_is_checked(tmp_path, stopped_run, digits, edit, field):
    run = copy_of(stopped_run, tmp_path / "run")
    tensors, meta = ckpt.read_checkpoint(checkpoint_of(run))
    edit(meta, tensors)
    rewrite_checkpoint(checkpoint_of(run), meta, tensors)
    message = try_to_resume(run, digits)
    assert f"checkpoint {checkpoint_of(run)} is not usable" in message and field in message, message


# -- 4. a full disk ---------------------------------------------------------------------------------

class DiskFull:
    """Fails the ``nth`` write whose file name contains ``name`` with ENOSPC, as a full disk does: for
    an atomic write at its fsync (the data are in the temporary file), for an appended log line after
    writing half of it. ``off()``: space freed again."""

    def __init__(self, monkeypatch, name: str, nth: int):
        self.name, self.nth, self.seen, self.fired = name, nth, 0, False
        self._fsync, self._write = os.fsync, os.write
        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(os, "write", self.write)
        self.active = True

    def off(self):
        self.active = False

    def _due(self, fd: int) -> bool:
        if not self.active or self.name not in os.readlink(f"/proc/self/fd/{fd}"):
            return False
        self.seen += 1
        self.fired = self.fired or self.seen == self.nth
        return self.seen == self.nth

    def fsync(self, fd):
        if self._due(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._fsync(fd)

    def write(self, fd, data):
        if self._due(fd):
            self._write(fd, bytes(data)[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._write(fd, data)


def same_run_fields(record: dict) -> dict:
    """A log line without its clock readings (the same in two runs of the same settings)."""
    return {k: v for k, v in record.items() if k not in ("time", "img_per_s")}


@pytest.mark.parametrize("name,nth,what", [
    (".last.safetensors.tmp-", 2, "the checkpoint"),  # the end of epoch 2
    (".last.json.tmp-", 2, "the checkpoint"),  # the safetensors file is already the new one
    (".epoch-0002.png.tmp-", 1, "the sample grid"),
    ("metrics.jsonl", 3, "metrics.jsonl"),  # the third line (step 24), half written
])
def test_a_full_disk_keeps_the_last_checkpoint_and_every_complete_line(tmp_path, monkeypatch, name, nth, what):
    full = genlab.train("mlp-vae", "digits", out=tmp_path / "full", epochs=3, progress=False, **SMALL)
    run = tmp_path / "run"
    disk = DiskFull(monkeypatch, name, nth)
    with pytest.raises(RunError) as err:
        genlab.train("mlp-vae", "digits", out=run, epochs=3, progress=False, **SMALL)
    assert disk.fired
    disk.off()
    step = 24 if name == ".last.json.tmp-" else 12
    first = str(err.value).split(";")[0]
    assert first.startswith("disk full writing ") and what in first, first
    assert f"the last good checkpoint {checkpoint_of(run)} (step {step}) is intact" in str(err.value)
    assert "genlab train --resume" in str(err.value)
    assert ckpt.read_checkpoint(checkpoint_of(run))[1]["state"]["step"] == step
    assert not list(run.rglob(".*.tmp-*"))
    lines = (run / "metrics.jsonl").read_bytes()
    assert lines.endswith(b"\n")
    got = [same_run_fields(json.loads(line)) for line in lines.splitlines()]  # no torn line
    reference = [same_run_fields(r) for r in fileio.read_jsonl(tmp_path / "full" / "metrics.jsonl")]
    assert got == reference[:len(got)] and len(got) >= (2 if name == "metrics.jsonl" else 3)
    resumed = genlab.resume(run, progress=False)  # space freed: the run goes on
    assert resumed.status == "completed" and resumed.state.step == full.state.step == 36
    assert_same_weights(tmp_path / "full", run)


def test_a_full_disk_while_resuming_gives_a_clear_error(tmp_path, monkeypatch, stopped_run):
    run = copy_of(stopped_run, tmp_path / "run")
    config = (run / "config.json").read_bytes()
    DiskFull(monkeypatch, ".config.json.tmp-", 1)
    with pytest.raises(RunError, match=r"disk full writing .*config.json; the last good checkpoint .* "
                                       r"\(step 17\) is intact"):
        genlab.resume(run, progress=False)
    assert (run / "config.json").read_bytes() == config


MOUNT_SCRIPT = r"""
set -e
mount -t tmpfs -o size=$SIZE tmpfs "$MNT"
set +e
"$PY" -m genlab train mlp-vae --set hidden=[512] --epochs 2 --out "$MNT/run" --no-progress > "$OUT/out" 2> "$OUT/err"
echo $? > "$OUT/rc"
cp -r "$MNT/run" "$OUT/run"
"""


def test_a_real_full_file_system_keeps_the_last_checkpoint(tmp_path):
    """On a small tmpfs (mounted in a private mount namespace, gone with it), the second checkpoint does
    not fit beside the first. Skipped only where no tmpfs can be mounted (no root, no user namespaces)."""
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    unshare = ["unshare", "-rm"] if os.geteuid() else ["unshare", "-m"]
    probe = subprocess.run(unshare + ["true"], capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode:
        pytest.skip(f"cannot make a private mount namespace for a tmpfs here: {probe and probe.stderr.strip()}")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PY": sys.executable, "MNT": str(mnt),
           "OUT": str(out), "SIZE": "3000k"}  # a checkpoint of this model is 2.0 MB: one fits, two do not
    done = subprocess.run(unshare + ["sh", "-c", MOUNT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (out / "rc").exists(), done.stderr
    err = (out / "err").read_text()
    assert (out / "rc").read_text().strip() == "2", err  # the CLI's exit status for a genlab error
    assert err.count("\n") == 1 and "disk full writing" in err and "Traceback" not in err, err
    assert f"the last good checkpoint {mnt}/run/checkpoints/last.safetensors (step 12) is intact" in err, err
    tensors, meta = ckpt.read_checkpoint(checkpoint_of(out / "run"))
    assert meta["state"]["step"] == 12 and len(tensors) > 10
    lines = (out / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line).get("event") for line in lines] == [None, "epoch_end", None, "epoch_end"]
    assert not list((out / "run").rglob(".*.tmp-*"))


# -- 5. kill -9 at random points, SIGTERM in the first epoch -----------------------------------------

# One process imports torch and genlab once, then forks a fresh training process for each request
# ("PRESET RUN" on stdin): a real process that trains, checkpoints and is killed, without paying the
# imports for every one of the many restarts. Its answers: the child's pid, then its wait status.
ZYGOTE = r"""
import os, shutil, sys, traceback
import torch
torch.set_num_threads(1)
import genlab
from genlab.data import load_dataset
from genlab.models import register_preset

register_preset("kill-test", "mlp-vae", "checkpoint after every step", model_config={"hidden": [32], "z_dim": 4},
                train={"epochs": 6, "log_every": 5, "checkpoint_minutes": 0.0})
register_preset("term-test", "mlp-vae", "a long first epoch", model_config={"hidden": [32], "z_dim": 4},
                train={"epochs": 1, "batch_size": 4, "log_every": 20})
load_dataset("digits")  # what the children need imported: the data's reader, the optimizer's compiler
torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
for line in sys.stdin:
    preset, run = line.split()
    pid = os.fork()
    if pid == 0:
        code = 4
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            if os.path.isfile(os.path.join(run, "config.json")):
                status = genlab.resume(run, progress=False).status
            else:
                shutil.rmtree(run, ignore_errors=True)
                status = genlab.train(preset, "digits", out=run, progress=False).status
            code = {"completed": 0, "interrupted": 130}.get(status, 3)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


class Zygote:
    def __init__(self, log: Path):
        self.log = log
        env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
        self.watchdog = threading.Timer(240, self.proc.kill)  # a bound on the whole test, never a hang
        self.watchdog.start()

    def start(self, preset: str, run: Path) -> int:
        self.proc.stdin.write(f"{preset} {run}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait(self) -> int:
        """The exit code of the last child; -N if signal N ended it."""
        return os.waitstatus_to_exitcode(int(self.proc.stdout.readline()))

    def run(self, preset: str, run: Path) -> int:
        self.start(preset, run)
        return self.wait()

    def close(self):
        self.watchdog.cancel()
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a test failed while a child ran
            self.proc.kill()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote") / "children.log")
    yield z
    z.close()


def process_state(pid: int) -> str:
    """R, S, T (stopped), Z ... from /proc; FileNotFoundError once the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def frozen_while_writing(pid: int, folder: Path, deadline: float) -> bool:
    """Wait for process ``pid`` to be writing a checkpoint file (its temporary file exists), then
    stop it there with SIGSTOP; True once it is stopped mid-write, False if it ended first."""
    names = [f".last.safetensors.tmp-{pid}", f".last.json.tmp-{pid}"]

    def writing() -> bool:
        return any((folder / n).exists() for n in names)

    try:
        while time.time() < deadline:
            if writing():
                os.kill(pid, signal.SIGSTOP)
                while process_state(pid) not in "TtZ":
                    time.sleep(0.0002)
                if writing():
                    return True
                os.kill(pid, signal.SIGCONT)  # the write had just finished: wait for the next one
            elif process_state(pid) == "Z":
                return False
            time.sleep(0.0002)
    except (FileNotFoundError, ProcessLookupError):  # it ended
        return False
    return False


def wait_for_step(pid: int, path: Path, step: int, deadline: float) -> None:
    """Until the checkpoint at ``path`` is at ``step`` or later (or process ``pid`` has ended)."""
    while time.time() < deadline and Path(f"/proc/{pid}").exists():
        if (ckpt.saved_step(path) or 0) >= step:
            return
        time.sleep(0.001)


def test_kill_9_at_random_points_then_resume_ends_bit_identical(tmp_path, zygote):
    assert zygote.run("kill-test", tmp_path / "reference") == 0  # 72 steps, a checkpoint after each
    run, rng = tmp_path / "run", random.Random(0)
    # two kills at a random moment of the start (loading, building, first steps), then one after each of
    # eight random steps; every other one the moment a checkpoint file is half written
    plan = [None, None] + sorted(rng.sample(range(2, 70), 8))
    kills, mid_write, stopped_at = 0, 0, []
    for attempt, step in enumerate(plan):
        pid = zygote.start("kill-test", run)
        if step is None:
            time.sleep(rng.uniform(0, 0.3))
        else:
            wait_for_step(pid, checkpoint_of(run), step, time.time() + 60)
            time.sleep(rng.uniform(0, 0.01))
            if attempt % 2:
                mid_write += frozen_while_writing(pid, run / "checkpoints", time.time() + 30)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = zygote.wait()
        assert code in (-signal.SIGKILL, 0), zygote.log.read_text()
        if code == 0:  # it finished first
            break
        kills += 1
        stopped_at.append(ckpt.saved_step(checkpoint_of(run)))
    assert zygote.run("kill-test", run) == 0  # the last resume finishes the run
    assert kills >= 8 and mid_write >= 3 and len(set(stopped_at)) >= 6, (kills, mid_write, stopped_at)
    assert_same_weights(tmp_path / "reference", run)
    assert not list(run.rglob(".*.tmp-*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # every line whole
    assert [r["step"] for r in records if r.get("event") == "epoch_end"] == [12, 24, 36, 48, 60, 72]


def test_sigterm_in_the_first_epoch_leaves_a_resumable_run(tmp_path, zygote):
    assert zygote.run("term-test", tmp_path / "reference") == 0
    run = tmp_path / "run"
    pid = zygote.start("term-test", run)
    deadline = time.time() + 60
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:  # training has begun
        time.sleep(0.002)
    os.kill(pid, signal.SIGTERM)
    assert zygote.wait() == 130  # "interrupted": it saved and returned
    _, meta = ckpt.read_checkpoint(checkpoint_of(run))
    assert meta["state"]["epoch"] == 0 and 0 < meta["state"]["batch_in_epoch"] < 360
    assert zygote.run("term-test", run) == 0
    assert_same_weights(tmp_path / "reference", run)


def test_a_full_disk_while_a_new_run_writes_its_config_is_a_clear_error(tmp_path, monkeypatch):
    import genlab.api

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(genlab.api, "write_run_config", full)
    with pytest.raises(RunError, match=r"disk full writing .*config\.json: the run could not start"):
        genlab.train("mlp-vae", "digits", out=tmp_path / "run", max_steps=1, progress=False, **SMALL)
    monkeypatch.undo()  # space freed: the same command now works in the same folder
    assert genlab.train("mlp-vae", "digits", out=tmp_path / "run", max_steps=1, progress=False,
                        **SMALL).state.step == 1
