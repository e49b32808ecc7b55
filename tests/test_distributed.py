"""Training in several processes (torchrun, gloo, 2 CPU processes): a global batch split among the
processes trains the model that one process with the whole batch trains; rank 0 alone writes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import genlab
from genlab.data.batches import BatchIterator
from genlab.errors import GenlabError
from genlab.training import checkpoint as ckpt
from genlab.training.context import TrainingContext
from genlab.training.distributed import DistInfo
from genlab.training.trainer import TrainConfig, check_train_config

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def torchrun(*args, cwd=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "genlab", *map(str, args), "--no-progress"]
    return subprocess.run(cmd, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def checkpoint_tensors(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_checkpoint(run / "checkpoints" / "last.safetensors")[0]


def assert_same_training(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("rng/"):  # the same random streams, drawn the same number of times
            assert torch.equal(a[k], b[k]), k
        else:  # the same arithmetic up to the order of float sums (matmuls of 32 rows, not 64):
            # observed differences are 1e-7 to 7e-6 of each tensor's norm; a gradient summed
            # wrongly (half the batch, or twice it) would be 1e-1
            diff, size = (a[k] - b[k]).float().norm(), a[k].float().norm()
            assert diff <= 1e-4 * size + 1e-7, (k, diff / size)


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(ddp: list[dict], single: list[dict]) -> None:
    assert [(r["step"], r.get("event")) for r in ddp] == [(r["step"], r.get("event")) for r in single]
    for r, s in zip(ddp, single):
        assert r.keys() == s.keys() and r["images"] == s["images"]
        for k in ("loss", "d_loss", "g_loss", "test_elbo"):
            if k in s:
                assert abs(r[k] - s[k]) <= 1e-3 * abs(s[k]) + 1e-4, (k, r[k], s[k])


# ----------------------------------------------------------------------------- the pieces, in one process

def test_each_process_gets_a_disjoint_share_of_every_batch_and_together_the_whole_batch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    shares = []
    for rank in (0, 1):
        it = BatchIterator(images, None, 4, torch.Generator().manual_seed(0), rank=rank, world_size=2)
        shares.append([(b.images.flatten() * 255).round().long().tolist() for b in it.epoch()])
    single = BatchIterator(images, None, 4, torch.Generator().manual_seed(0))
    whole = [(b.images.flatten() * 255).round().long().tolist() for b in single.epoch()]
    # 10 images in batches of 4: 4 + 4 + 2, each split 2 / 2 (and 1 / 1)
    assert len(shares[0]) == len(shares[1]) == len(whole) == 3
    for a, b, w in zip(*shares, whole):
        assert not set(a) & set(b) and sorted(a + b) == sorted(w)
    # a last batch with fewer images than processes is dropped, so no process ever gets none
    odd = BatchIterator(torch.zeros(9, 1, 1, 1, dtype=torch.uint8), None, 4, torch.Generator(), world_size=2)
    assert len(odd) == 2 and len(BatchIterator(torch.zeros(9, 1, 1, 1, dtype=torch.uint8), None, 4,
                                               torch.Generator())) == 3


def test_noise_is_drawn_for_the_whole_batch_and_each_process_keeps_its_images_rows():
    single = TrainingContext("fp32", "cpu")
    single.begin_step(6, 6)
    torch.manual_seed(3)
    whole = single.randn(6, 4)
    iwae_whole = single.randn(5, 6, 4, batch_dim=1)
    for rank in (0, 1):
        ctx = TrainingContext("fp32", "cpu", DistInfo(rank=rank, world_size=2))
        ctx.begin_step(3, 6)
        torch.manual_seed(3)
        assert torch.equal(ctx.randn(3, 4), whole[rank::2])
        assert torch.equal(ctx.randn(5, 3, 4, batch_dim=1), iwae_whole[:, rank::2])
        # a mean over this process's 3 images weighs 3/6 of the batch mean; a sum adds up as it is
        loss = torch.tensor(2.0)
        assert ctx.scale(loss, "vae").item() == 1.0 and ctx.scale(loss, "vae", reduction="sum").item() == 2.0


# ----------------------------------------------------------------------------- two processes

def test_two_processes_with_half_the_batch_each_train_the_seed_vae_one_process_trains(tmp_path):
    r = torchrun("train", "seed-vae", "--data", "digits", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-12000:]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["seed-vae-digits"]  # one run folder, chosen by rank 0 (not one per process)
    ddp = tmp_path / "runs" / "seed-vae-digits"
    assert r.stdout.count("run folder:") == 1 and r.stdout.count("epoch 1/1") == 1  # rank 0 speaks for all
    single = genlab.train("seed-vae", "digits", out=tmp_path / "single", epochs=1, batch_size=64, device="cpu",
                          progress=False).run_dir
    assert_same_training(checkpoint_tensors(ddp), checkpoint_tensors(single))
    assert_same_metrics(metric_lines(ddp), metric_lines(single))  # written once, losses of the whole batch
    assert sorted(p.name for p in (ddp / "samples").iterdir()) == ["epoch-0001.png"]
    _, meta = ckpt.read_checkpoint(ddp / "checkpoints" / "last.safetensors")
    assert meta["state"]["step"] == 23 and meta["state"]["images_seen"] == 1437  # 22 x 64 + 29 (15 + 14)
    assert json.loads((ddp / "config.json").read_text())["train"]["batch_size"] == 64  # the global batch


def test_a_gan_stopped_and_resumed_in_two_processes_ends_as_one_process_trained_it_straight(tmp_path):
    # SiLU, not the preset's (Leaky)ReLU: at a kink, a pre-activation within rounding of zero takes
    # one slope in one run and the other slope in the other, and Adam magnifies that unit's small
    # gradient (seen once in 46 steps: one of D's 256 units off by 1e-3, the rest at 1e-6). With a
    # smooth network a difference in the order of float sums stays that size (1e-6 perturbation in
    # epoch 1 -> 2e-6 at the end), so the tolerance below separates it from a wrong gradient.
    part = tmp_path / "part"
    smooth = ("--set", "g_activation=silu", "--set", "d_activation=silu")
    r = torchrun("train", "seed-gan", "--data", "digits", "--epochs", "2", "--batch-size", "64", "--max-steps", "30",
                 *smooth, "--out", part)
    assert r.returncode == 0, r.stderr[-12000:]
    assert "stopped at --max-steps (30)" in r.stdout
    r = torchrun("train", "--resume", part)
    assert r.returncode == 0, r.stderr[-12000:]
    single = genlab.train("seed-gan", "digits", out=tmp_path / "single", epochs=2, batch_size=64, device="cpu",
                          progress=False, g_activation="silu", d_activation="silu").run_dir
    assert json.loads((part / "config.json").read_text())["model_config"]["d_activation"] == "silu"
    assert_same_training(checkpoint_tensors(part), checkpoint_tensors(single))
    lines = metric_lines(part)
    assert [r["step"] for r in lines if r.get("event") == "epoch_end"] == [23, 46]
    assert len(lines) == len({json.dumps(r, sort_keys=True) for r in lines})  # nothing written twice


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_to_rank_0_stops_every_process_at_the_same_step_with_one_checkpoint(tmp_path):
    # the two processes as torchrun starts them (its environment variables), so that each one's exit is seen
    run = tmp_path / "run"
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "genlab", "train", "seed-vae", "--epochs", "400", "--batch-size",
                               "64", "--out", str(run), "--no-progress", "--device", "cpu"],
                              env={**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        ckpt_file = run / "checkpoints" / "last.safetensors"
        deadline = time.time() + 90
        while not ckpt_file.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.1)
        assert ckpt_file.exists(), [p.communicate() for p in procs]
        procs[0].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [130, 130], outs
    assert "genlab train --resume" in outs[0][0] and outs[1][0] == ""  # rank 0 alone reports
    _, meta = ckpt.read_checkpoint(ckpt_file)
    lines = metric_lines(run)
    assert 0 < meta["state"]["step"] < 400 * 23 and lines[-1]["step"] == meta["state"]["step"]
    assert len(lines) == len({json.dumps(r, sort_keys=True) for r in lines})


def test_a_batch_that_does_not_divide_among_the_processes_is_refused():
    with pytest.raises(GenlabError, match="multiple of 2"):
        check_train_config(TrainConfig(batch_size=65), torch.device("cpu"), world_size=2)
