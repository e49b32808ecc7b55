"""One Trainer for every model family.

The model owns its update rule (``train_step``); the Trainer owns everything around it:
batches, the random streams, progress, ``metrics.jsonl``, sample grids at fixed noise,
checkpoints, resume, Ctrl-C and non-finite losses. Only rank 0 (``RANK`` from torchrun)
logs and writes, so multi-process training slots in without touching this loop's shape.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.batches import BatchIterator
from ..errors import RunError
from ..fileio import atomic_write_bytes
from ..models.base import GenerativeModel
from ..viz.grid import save_grid
from . import checkpoint as ckpt


@dataclass
class TrainConfig:
    """How long and how to train; saved in the run's config.json."""

    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps in all
    max_seconds: float | None = None  # stop (with a checkpoint and a sample grid) after this much training time in all
    log_every: int = 50  # steps between metrics.jsonl lines
    sample_every: int = 1  # epochs between sample grids (0: only at the end)
    num_samples: int = 64  # images in each grid, at fixed noise
    drop_last: bool = False  # the seed's DataLoader keeps the last, smaller batch
    checkpoint_minutes: float = 10.0  # also checkpoint mid-epoch this often (long epochs lose little to a kill -9)
    device: str = "auto"


@dataclass
class TrainState:
    """Where a run stands; stored in every checkpoint."""

    step: int = 0
    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already trained on
    images_seen: int = 0
    train_seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _StopRequest:
    """First Ctrl-C (or SIGTERM): finish the current step, save, exit. Second Ctrl-C: abort now."""

    def __init__(self, announce):
        self.requested = False
        self._announce = announce
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self._announce(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                       "(press Ctrl-C again to abort without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Trains ``model`` on ``dataset`` (a ``genlab.data.Dataset``), writing into ``run_dir``."""

    def __init__(self, model: GenerativeModel, dataset, config: TrainConfig, run_dir: str | Path,
                 progress: bool = True):
        self.model, self.dataset, self.config = model, dataset, config
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.rank = int(os.environ.get("RANK", "0"))
        self.is_main = self.rank == 0
        self.device = resolve_device(config.device)
        self.model.to(self.device)
        self.optimizers = self.model.configure_optimizers()
        self.state = TrainState()
        self.shuffle = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)  # the model's own noise (z, eps) comes from the global stream
        self.checkpoint_path = self.run_dir / "checkpoints" / "last.safetensors"
        self.metrics_path = self.run_dir / "metrics.jsonl"

    # -- checkpoints ------------------------------------------------------------------------
    def _rng_state(self, shuffle_state: torch.Tensor) -> dict[str, torch.Tensor]:
        rng = {"torch": torch.get_rng_state(), "shuffle": shuffle_state}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def save(self, shuffle_state: torch.Tensor) -> None:
        if not self.is_main:
            return
        ckpt.save_checkpoint(self.checkpoint_path, self.model, self.optimizers, self._rng_state(shuffle_state),
                             vars(self.state))

    def restore(self) -> None:
        """Continue exactly where the last checkpoint stopped (weights, optimizers, RNG, position)."""
        tensors, meta = ckpt.read_checkpoint(self.checkpoint_path)
        ckpt.load_model_weights(self.model, tensors, self.checkpoint_path)
        ckpt.load_optimizers(self.optimizers, tensors, meta)
        rng = ckpt.rng_from_tensors(tensors)
        torch.set_rng_state(rng["torch"])
        self.shuffle.set_state(rng["shuffle"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.state = TrainState(**meta["state"])
        self._truncate_metrics(self.state.step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the checkpoint: those steps are about to be trained again."""
        if not (self.is_main and self.metrics_path.exists()):
            return
        lines = self.metrics_path.read_text().splitlines()
        keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        if len(keep) != len(lines):
            atomic_write_bytes(self.metrics_path, "".join(ln + "\n" for ln in keep).encode())

    # -- logging ----------------------------------------------------------------------------
    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _say(self, msg: str) -> None:
        """A line for the user (epoch summaries, stop notices); the bar alone follows ``progress``."""
        if self.is_main:
            tqdm.write(msg)

    def sample_grid(self, epoch: int | None = None) -> Path | None:
        """Samples at the run's fixed noise (same every epoch), saved as samples/epoch-XXXX.png
        (XXXX: ``epoch``, by default the number of completed epochs)."""
        if not self.is_main:
            return None
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.model.eval()
        images = self.model.sample(self.config.num_samples, generator=gen)
        self.model.train()
        epoch = self.state.epoch if epoch is None else epoch
        return save_grid(images, self.run_dir / "samples" / f"epoch-{epoch:04d}.png")

    def evaluate(self) -> dict[str, float]:
        test = self.dataset.test
        if len(test) == 0:
            return {}
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.model.eval()
        out = self.model.evaluate(test.images.to(self.device), None if test.labels is None
                                  else test.labels.to(self.device), generator=gen)
        self.model.train()
        return out

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> str:
        """Train until ``epochs`` (or ``max_steps``, or ``max_seconds`` of training time). Returns "completed",
        "max_steps", "max_seconds" or "interrupted"."""
        cfg, st = self.config, self.state
        train = self.dataset.train
        batches = BatchIterator(train.images.to(self.device),
                                None if train.labels is None else train.labels.to(self.device),
                                cfg.batch_size, self.shuffle, drop_last=cfg.drop_last)
        steps_per_epoch = len(batches)
        if steps_per_epoch == 0:
            raise RunError(f"batch size {cfg.batch_size} is larger than the {len(train)} training images "
                           "and drop_last is set: lower --batch-size.")
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        if st.step >= total:
            return "completed" if st.epoch >= cfg.epochs else "max_steps"
        if cfg.max_seconds is not None and st.train_seconds >= cfg.max_seconds:
            return "max_seconds"
        self.model.train()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=total, initial=st.step, unit="step", dynamic_ncols=True,
                   disable=not (self.progress and self.is_main and sys.stderr.isatty()), desc=self.run_dir.name)
        sums: dict[str, torch.Tensor] = {}
        count, window_images, window_start = 0, 0, time.perf_counter()
        check_every = 1 if self.device.type == "cpu" else cfg.log_every
        status = "completed"
        last_save = time.monotonic()

        def flush() -> None:
            nonlocal sums, count, window_images, window_start
            if count == 0:
                return
            now = time.perf_counter()
            rate = window_images / max(now - window_start, 1e-9)
            record = {"step": st.step, "epoch": round(st.step / steps_per_epoch, 4), "images": st.images_seen,
                      "time": round(st.train_seconds, 3), "img_per_s": round(rate, 1)}
            record.update({k: v.item() / count for k, v in sums.items()})
            self._write_metrics(record)
            bar.set_postfix_str("  ".join(f"{k} {record[k]:.4g}" for k in sums) + f"  {rate:,.0f} img/s")
            sums, count, window_images, window_start = {}, 0, 0, now

        with _StopRequest(self._say) as stop:
            while st.epoch < cfg.epochs and status == "completed":
                epoch_start_state = self.shuffle.get_state()
                t0 = time.perf_counter()
                for batch in batches.epoch(start=st.batch_in_epoch):
                    logs = self.model.train_step(batch, st.step, self.optimizers)
                    st.step += 1
                    st.batch_in_epoch += 1
                    n = batch.images.shape[0]
                    st.images_seen += n
                    window_images += n
                    for k, v in logs.items():
                        sums[k] = sums[k] + v if k in sums else v.clone()
                    count += 1
                    if st.step % check_every == 0:
                        self._check_finite(logs)
                    bar.update(1)
                    if st.step % cfg.log_every == 0:
                        st.train_seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        flush()
                    if time.monotonic() - last_save > 60 * cfg.checkpoint_minutes:
                        self.save(epoch_start_state)
                        last_save = time.monotonic()
                    if stop.requested:
                        status = "interrupted"
                    elif cfg.max_steps is not None and st.step >= cfg.max_steps:
                        status = "max_steps"
                    elif (cfg.max_seconds is not None
                          and st.train_seconds + time.perf_counter() - t0 >= cfg.max_seconds):
                        status = "max_seconds"
                    if status != "completed":
                        break
                st.train_seconds += time.perf_counter() - t0
                self._check_finite(sums)
                flush()
                if st.batch_in_epoch == steps_per_epoch:  # the epoch is complete
                    st.epoch += 1
                    st.batch_in_epoch = 0
                    epoch_start_state = self.shuffle.get_state()  # == the next epoch's start
                    self._end_of_epoch(last=st.epoch == cfg.epochs or status != "completed")
                else:  # stopped inside an epoch: the saved model's prior matches its weights
                    self._fit_prior()
                    if status == "max_seconds":
                        self._stopped_mid_epoch(steps_per_epoch)
                self.save(epoch_start_state)
        bar.close()
        return status

    def _fit_prior(self) -> dict[str, float]:
        """Models with a learned prior fitted to the encoded training set (``fit_prior``) refit it;
        the seconds it takes count as training time."""
        if not hasattr(self.model, "fit_prior"):
            return {}
        t0 = time.perf_counter()
        out = self.model.fit_prior(self.dataset.train.images, self.dataset.train.labels, seed=self.config.seed)
        self.state.train_seconds += time.perf_counter() - t0
        return out

    def _end_of_epoch(self, last: bool) -> None:
        cfg, st = self.config, self.state
        fit = self._fit_prior()
        record: dict[str, Any] = {"step": st.step, "epoch": st.epoch, "event": "epoch_end",
                                  "images": st.images_seen, "time": round(st.train_seconds, 3)}
        record.update(fit)
        record.update(self.evaluate())
        if last or (cfg.sample_every and st.epoch % cfg.sample_every == 0):
            path = self.sample_grid()
            if path is not None:
                record["samples"] = str(path.relative_to(self.run_dir))
        self._write_metrics(record)
        if not (last or cfg.epochs <= 20 or st.epoch % math.ceil(cfg.epochs / 20) == 0):
            return  # about 20 epoch lines per run
        extra = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float) and k != "time")
        self._say(f"epoch {st.epoch}/{cfg.epochs}  step {st.step}  {extra}".rstrip())

    def _stopped_mid_epoch(self, steps_per_epoch: int) -> None:
        """At the time limit inside an epoch: a grid of the epoch in progress (the epoch's own grid
        replaces it if the run is resumed) and a log line saying where the run stopped."""
        st = self.state
        record: dict[str, Any] = {"step": st.step, "epoch": round(st.step / steps_per_epoch, 4),
                                  "event": "max_seconds", "images": st.images_seen, "time": round(st.train_seconds, 3)}
        path = self.sample_grid(epoch=st.epoch + 1)
        if path is not None:
            record["samples"] = str(path.relative_to(self.run_dir))
        self._write_metrics(record)

    def _check_finite(self, logs: dict[str, torch.Tensor]) -> None:
        if not logs:
            return
        values = torch.stack([v.detach().float().reshape(()) for v in logs.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = {k: v.item() for k, v in logs.items() if not math.isfinite(v.item())}
        self._write_metrics({"step": self.state.step, "event": "non_finite_loss", **{k: str(v) for k, v in bad.items()}})
        last = (f"The last good checkpoint is {self.checkpoint_path}; it was left untouched."
                if self.checkpoint_path.exists() else "No checkpoint had been written yet.")
        raise RunError(f"training diverged: {', '.join(f'{k} = {v}' for k, v in bad.items())} at step "
                       f"{self.state.step} (epoch {self.state.epoch + 1}). {last} Try a lower learning rate "
                       "(--lr) or a different seed; resume with `genlab train --resume RUN`.")
