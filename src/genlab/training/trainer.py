"""One Trainer for every model family.

The model owns its update rule (``train_step``); the Trainer owns everything around it:
batches, the random streams, progress, ``metrics.jsonl``, sample grids at fixed noise,
checkpoints, resume, Ctrl-C and non-finite losses, and how fast a step runs: the training
precision and several processes (``context.TrainingContext``, handed to the model as
``model.step_context``), torch.compile and channels-last (``speed``). It knows no model family:
what a model does outside its steps it does in its lifecycle hooks (``GenerativeModel.on_epoch_end``,
``on_stop``), which the Trainer calls on every model. The budget and the learning-rate schedule
are pure functions (``schedule``); the log window is ``metrics_log.MetricsWindow``.

Under torchrun (``distributed``) every process runs this loop on its share of each batch;
rank 0 alone logs, evaluates, samples and writes, and the decisions to stop (Ctrl-C/SIGTERM to
any process, the time limit, a non-finite loss) and to checkpoint mid-epoch are taken by all
processes together every ``log_every`` steps, so every collective is reached by all of them.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from ..data.batches import BatchIterator
from ..errors import GenlabError, RunError
from ..fileio import append_line, atomic_write_bytes, disk_full, read_jsonl, write_error_cause
from ..models.base import GenerativeModel
from ..viz.grid import save_grid
from . import checkpoint as ckpt
from . import distributed, speed
from .context import TrainingContext, check_precision, resolve_precision
from .metrics_log import MetricsWindow
from .run import Run
from .schedule import (
    LR_SCHEDULES,
    budget_progress,
    lr_factor,
    set_lr_factor,
    total_steps,
)


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
    precision: str = "fp32"  # "fp32", "bf16" (autocast on CPU or GPU), "fp16" (autocast + loss scaling, CUDA) or
    # "auto" (bf16 where the device has it natively, else fp32: context.fast_bf16; resolved before training)
    compile: bool = False  # torch.compile the model's networks (warm-up logged apart, not in img/s)
    channels_last: bool = False  # NHWC weights and batches for convolutional models
    lr_schedule: str = "constant"  # "constant", or "linear" / "cosine" decay to 0 at the end of the budget (lr_factor)


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


def finite_check_interval(device: torch.device, log_every: int) -> int:
    """Steps between checks that the losses are finite (besides the check before every checkpoint):
    every step on the CPU, where reading a loss costs nothing, and every ``log_every`` steps on an
    accelerator, where reading one waits for the device to finish its queued work."""
    return 1 if device.type == "cpu" else max(1, int(log_every))


def check_train_config(config: TrainConfig, device: torch.device, world_size: int = 1) -> None:
    """Clear errors for settings this device or process count cannot train with, before a run
    folder is made."""
    if config.epochs < 1 or config.batch_size < 1:
        raise GenlabError("--epochs and --batch-size must be at least 1.")
    if config.lr_schedule not in LR_SCHEDULES:
        raise GenlabError(f"unknown --lr-schedule {config.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")
    if config.batch_size % world_size:
        raise GenlabError(f"--batch-size {config.batch_size} is the batch of all {world_size} processes together "
                          f"and must divide evenly among them: use a multiple of {world_size}.")
    check_precision(config.precision, device)
    if config.compile:
        speed.check_compile(device)


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


class _Decision(NamedTuple):
    """What the loop does after a step (``Trainer._decide``): checkpoint inside the epoch (``save``), and
    stop (``status``: "interrupted", "max_steps" or "max_seconds") or go on (None)."""

    save: bool
    status: str | None


class Trainer:
    """Trains ``model`` on ``dataset`` (a ``genlab.data.Dataset``), writing into ``run_dir``."""

    def __init__(self, model: GenerativeModel, dataset, config: TrainConfig, run_dir: str | Path,
                 progress: bool = True, device: str | torch.device | None = None):
        self.model, self.dataset, self.config = model, dataset, config
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.dist = distributed.current()
        self.rank, self.world_size, self.is_main = self.dist.rank, self.dist.world_size, self.dist.is_main
        # ``device`` (this process's, e.g. cuda:LOCAL_RANK under torchrun) overrides config.device
        self.device = resolve_device(str(device) if device is not None else config.device)
        config.precision = resolve_precision(config.precision, self.device)
        check_train_config(config, self.device, self.world_size)
        self.context = TrainingContext(config.precision, self.device, self.dist)
        self.model.to(self.device)
        self.channels_last = config.channels_last and speed.uses_convolutions(self.model)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        elif config.channels_last:
            self._say("--channels-last: this model has no convolutions; its memory layout stays as it is")
        self.optimizers = self.model.configure_optimizers()
        for opt in self.optimizers.values():  # the schedule scales each group's own rate (restored on resume)
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        self.model.step_context = self.context
        self.compiled = speed.compile_networks(self.model) if config.compile else []
        self.state = TrainState()
        self.lr_factor = 1.0  # the schedule's last factor (lr_factor), logged as lr_factor
        self.shuffle = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)  # the model's own noise (z, eps) comes from the global stream
        self.layout = Run(self.run_dir)  # the run folder's file names
        self.checkpoint_path, self.metrics_path = self.layout.checkpoint_path, self.layout.metrics_path
        self.on_save = None  # called with no arguments after each checkpoint is written (rank 0)
        self.check_every = finite_check_interval(self.device, config.log_every)  # steps between finite checks
        self._checked_step = 0  # the step up to which the losses are known to be finite
        # the loop's running state, set up by _begin when fit starts
        self._bar: tqdm | None = None
        self._window = MetricsWindow()  # the steps since the last metrics.jsonl line
        self._total_steps = 0  # the run's budget in steps (epochs, or max_steps)
        self._stretch_start = 0.0  # perf_counter() when the training time was last banked in state.train_seconds
        self._budget_seconds = 0.0  # the training time budget_progress reads under torchrun (agreed)
        self._last_save = 0.0  # time.monotonic() of the last mid-epoch checkpoint
        self._warming_up = False  # the next step is a torch.compile warm-up

    # -- checkpoints ------------------------------------------------------------------------
    def _rng_state(self, shuffle_state: torch.Tensor) -> dict[str, torch.Tensor]:
        rng = {"torch": torch.get_rng_state(), "shuffle": shuffle_state}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def save(self, shuffle_state: torch.Tensor) -> None:
        """Checkpoint the run, after checking that every tensor it would write is finite (every
        process checks its own copy of the weights, the same in all of them, so all stop together)."""
        self._check_weights_finite()
        if not self.is_main:
            return
        try:
            ckpt.save_checkpoint(self.checkpoint_path, self.model, self.optimizers, self._rng_state(shuffle_state),
                                 vars(self.state), scalers=self.context.scaler_states())
        except OSError as e:
            raise self.write_failed(e, f"the checkpoint {self.checkpoint_path}") from None
        if self.on_save is not None:
            self.on_save()

    def restore(self) -> None:
        """Continue exactly where the last checkpoint stopped (weights, optimizers, RNG, position).
        Every field is checked before use (a RunError names the checkpoint and the field); whether
        the position fits the data is checked when training starts (``_check_position``). A run with
        no checkpoint yet is started over by ``genlab.resume``, not restored."""
        path = self.checkpoint_path
        tensors, meta = ckpt.read_checkpoint(path)
        state = ckpt.state_from_meta(meta, path, TrainState)
        rng = ckpt.rng_from_tensors(tensors, path)
        scalers = meta.get("scalers", {})
        if not (isinstance(scalers, dict) and all(isinstance(v, dict) for v in scalers.values())):
            raise RunError(f"checkpoint {path} is not usable: the field 'scalers' is {scalers!r:.80}, not an object "
                           "of loss-scaler states. Restore it from a copy, or delete the run's checkpoints folder.")
        ckpt.load_model_weights(self.model, tensors, path)
        ckpt.load_optimizers(self.optimizers, tensors, meta, path)
        if self.channels_last:
            speed.match_optimizer_layout(self.optimizers)
        try:
            self.context.load_scaler_states(scalers)
            torch.set_rng_state(rng["torch"])
            self.shuffle.set_state(rng["shuffle"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise RunError(f"checkpoint {path} is not usable: its loss-scaler or random-generator states do not "
                           f"load ({e}). Restore it from a copy, or delete the run's checkpoints folder.") from None
        self.state = state
        self._checked_step = state.step
        # a checkpoint taken inside an epoch (batch_in_epoch > 0) precedes that epoch's end, even at the
        # same step: the end-of-epoch work (its log line among it) is done again after the resume
        self._truncate_metrics(self.state.step, epoch_end_done=self.state.batch_in_epoch == 0)

    def _check_position(self, steps_per_epoch: int) -> None:
        """The restored position must be one this data can reach: at most ``steps_per_epoch`` batches
        into the epoch, and ``step`` = epoch x steps_per_epoch + batch_in_epoch. A checkpoint of data
        that has since shrunk or grown (or an edited one) fails here instead of looping forever."""
        st, cfg = self.state, self.config
        expected = st.epoch * steps_per_epoch + st.batch_in_epoch
        if st.batch_in_epoch <= steps_per_epoch and st.step == expected:
            return
        raise RunError(f"checkpoint {self.checkpoint_path} stopped at step {st.step}, epoch {st.epoch + 1}, batch "
                       f"{st.batch_in_epoch}, which this data cannot reach: its {len(self.dataset.train)} training "
                       f"images in batches of {cfg.batch_size} make {steps_per_epoch} steps an epoch"
                       + (f" (so that position would be step {expected})." if st.batch_in_epoch <= steps_per_epoch
                          else ".")
                       + " The training data changed since the checkpoint was written, or the checkpoint was "
                       "edited: resume with the data the run was trained on, or start a new run.")

    def _truncate_metrics(self, step: int, epoch_end_done: bool = True) -> None:
        """Drop log lines written after the checkpoint: those steps are about to be trained again
        (and, unless ``epoch_end_done``, the end of the epoch at ``step``, which is about to be redone)."""
        if not (self.is_main and self.metrics_path.exists()):
            return
        lines = self.metrics_path.read_bytes().split(b"\n")
        records = read_jsonl(self.metrics_path)  # a torn or garbled line is dropped here too
        keep = [r for r in records if isinstance(r.get("step", 0), (int, float)) and r.get("step", 0) <= step
                and (epoch_end_done or r.get("step") != step or r.get("event") != "epoch_end")]
        if len(keep) != sum(1 for ln in lines if ln.strip()):
            try:
                atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep).encode())
            except OSError as e:
                raise self.write_failed(e, self.metrics_path) from None

    def write_failed(self, e: OSError, what: str | Path) -> RunError:
        """The error for a failed write (a full disk, mostly): what failed, that the last checkpoint
        (whatever is on disk now) is intact, and how to go on."""
        full = disk_full(e)
        return RunError(f"{write_error_cause(e)} writing {what}; {self._last_good()} "
                        f"{'Free space' if full else 'Fix that'} and "
                        f"resume with `genlab train --resume {self.run_dir}`.")

    def _last_good(self) -> str:
        """A sentence on the checkpoint now on disk, read from its header."""
        step = ckpt.saved_step(self.checkpoint_path)
        if step is None and not self.checkpoint_path.exists():
            return "no checkpoint had been written yet (a resume starts the run over)."
        if step is None:
            return f"the checkpoint {self.checkpoint_path} was left as it was."
        return f"the last good checkpoint {self.checkpoint_path} (step {step}) is intact."

    # -- logging ----------------------------------------------------------------------------
    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.is_main:
            try:
                append_line(self.metrics_path, json.dumps(record))
            except OSError as e:  # append_line has cut the partial line: every complete line survives
                raise self.write_failed(e, self.metrics_path) from None

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
        path = self.layout.epoch_grid(epoch)
        try:
            return save_grid(images, path)
        except OSError as e:
            raise self.write_failed(e, f"the sample grid {path}") from None

    def evaluate(self) -> dict[str, float]:
        test = self.dataset.test
        if len(test) == 0 or not self.is_main:
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
        # -- where the run stands: its batches, its budget, and whether any of it is left
        batches = self._batches()
        steps_per_epoch = len(batches)
        self._check_position(steps_per_epoch)
        total = total_steps(cfg.epochs, steps_per_epoch, cfg.max_steps)
        if st.step >= total:
            return "completed" if st.epoch >= cfg.epochs else "max_steps"
        if cfg.max_seconds is not None and st.train_seconds >= cfg.max_seconds:
            return "max_seconds"
        self._begin(total)
        status = "completed"
        with _StopRequest(self._say) as stop:
            while st.epoch < cfg.epochs and status == "completed":
                if stop.requested and not self.dist.active:  # one that came during the last epoch's end
                    status = "interrupted"  # (its checkpoint is saved); under torchrun: at the next agreement
                    break
                epoch_start = self.shuffle.get_state()  # a checkpoint inside the epoch replays it from here
                self._stretch_start = time.perf_counter()
                # -- the steps: train, decide (stop? checkpoint?), log, checkpoint, stop
                for batch in batches.epoch(start=st.batch_in_epoch):
                    self._train_step(batch, batches.global_size(st.batch_in_epoch))
                    decision = self._decide(stop.requested)
                    self._bar.update(1)
                    if st.step % cfg.log_every == 0:
                        self._log_step(steps_per_epoch)
                    if decision.save:
                        self.save(epoch_start)
                        self._last_save = time.monotonic()
                    if decision.status is not None:
                        status = decision.status
                        break
                # -- the end of the epoch, or of a stop inside it: checks, log line, hooks, grid, checkpoint
                status = self._finish_steps(status, stop.requested, steps_per_epoch)
                self._end_epoch_or_stop(status, steps_per_epoch)
                self.save(epoch_start if st.batch_in_epoch else self.shuffle.get_state())  # the epoch resumed into
        self._bar.close()
        return status

    # -- the loop's parts, in the order it runs them ------------------------------------------
    def _batches(self) -> BatchIterator:
        """This process's batches of the training set, on the device, shuffled by ``self.shuffle``."""
        cfg, train = self.config, self.dataset.train
        batches = BatchIterator(train.images.to(self.device),
                                None if train.labels is None else train.labels.to(self.device),
                                cfg.batch_size, self.shuffle, drop_last=cfg.drop_last,
                                rank=self.rank, world_size=self.world_size, channels_last=self.channels_last)
        if len(batches) == 0:
            raise RunError(f"batch size {cfg.batch_size} is larger than the {len(train)} training images "
                           "and drop_last is set: lower --batch-size.")
        return batches

    def _begin(self, total: int) -> None:
        """Set up the loop: rank 0's weights in every process, train mode, the run folder, the progress
        bar and the loop's running state (an empty log window, the clocks, the budget)."""
        if self.dist.active:  # every process starts from rank 0's weights, as DDP does
            distributed.broadcast_module(self.model)
        self.model.train()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._bar = tqdm(total=total, initial=self.state.step, unit="step", dynamic_ncols=True, desc=self.run_dir.name,
                         disable=not (self.progress and self.is_main and sys.stderr.isatty()))
        self._total_steps = total
        self._window = MetricsWindow()
        self._last_save = time.monotonic()
        self._warming_up = bool(self.compiled)  # the first step compiles: timed apart
        # training time as the budget's progress reads it under torchrun: the processes' mean, agreed every
        # log_every steps, so that every process sets the same rate and phase (one process reads its clock)
        self._budget_seconds = self.state.train_seconds

    def _elapsed(self) -> float:
        """Training time so far: ``state.train_seconds`` (banked at log lines and epoch ends) and the
        stretch since it was last banked."""
        return self.state.train_seconds + time.perf_counter() - self._stretch_start

    def _bank_time(self) -> None:
        now = time.perf_counter()
        self.state.train_seconds += now - self._stretch_start
        self._stretch_start = now

    def _train_step(self, batch, images: int) -> None:
        """One step of the model's update rule, at the budget's progress and the schedule's rate;
        ``images``: the step's images in all processes together."""
        cfg, st, ctx = self.config, self.state, self.context
        ctx.begin_step(batch.images.shape[0], images)
        seconds = self._budget_seconds if self.dist.active else self._elapsed()
        ctx.budget_progress = budget_progress(st.step, self._total_steps, seconds, cfg.max_seconds)
        if cfg.lr_schedule != "constant":
            self.lr_factor = lr_factor(cfg.lr_schedule, ctx.budget_progress)
            set_lr_factor(self.optimizers, self.lr_factor)
        warmup, self._warming_up = self._warming_up, False
        logs = self._compile_warmup_step(batch) if warmup else self.model.train_step(batch, st.step, self.optimizers)
        ctx.end_step()
        st.step += 1
        st.batch_in_epoch += 1
        st.images_seen += images
        self._window.add(logs, images, timed=not warmup)  # a warm-up step is not part of img/s

    def _decide(self, stop_requested: bool) -> _Decision:
        """After each step: stop or go on, and whether a mid-epoch checkpoint is due. One process decides
        every step, checking its losses every ``check_every`` steps, at each log line and before a save;
        under torchrun the processes decide together every ``log_every`` steps (``_agree``, which checks
        every process's losses) and go on between, so that every collective is reached by all of them."""
        cfg, st = self.config, self.state
        stop = stop_requested
        time_up = cfg.max_seconds is not None and self._elapsed() >= cfg.max_seconds
        save = time.monotonic() - self._last_save > 60 * cfg.checkpoint_minutes
        log_step = st.step % cfg.log_every == 0
        if self.dist.active:  # (the window's sums: every step since the last decision)
            stop, time_up, save = self._agree(self._window.sums, stop, time_up, save) if log_step else (False,) * 3
        elif st.step % self.check_every == 0 or log_step or save:
            self._check_finite(self._window.sums)
        if stop:
            return _Decision(save, "interrupted")
        if cfg.max_steps is not None and st.step >= cfg.max_steps:
            return _Decision(save, "max_steps")
        return _Decision(save, "max_seconds" if time_up else None)

    def _log_step(self, steps_per_epoch: int) -> None:
        """Every ``log_every`` steps: bank the training time and write the window's line; under torchrun
        with a time limit, agree on the training time the budget's progress reads."""
        self._bank_time()
        self._write_log_line(steps_per_epoch)
        if self.config.max_seconds and self.dist.active:
            self._budget_seconds = float(distributed.mean_across(
                torch.tensor([self.state.train_seconds], dtype=torch.float64, device=self.device)))

    def _write_log_line(self, steps_per_epoch: int) -> None:
        """The log window's line in metrics.jsonl and on the progress bar (nothing if the window is empty)."""
        st = self.state
        extra = {} if self.config.lr_schedule == "constant" else {"lr_factor": round(self.lr_factor, 5)}
        line = self._window.flush(self._position(round(st.step / steps_per_epoch, 4)), extra,
                                  distributed.mean_across if self.dist.active else None)
        if line is not None:
            self._write_metrics(line.record)
            self._bar.set_postfix_str(line.progress_text())

    def _position(self, epoch: float, **event: str) -> dict[str, Any]:
        """The start of a metrics.jsonl record: where the run stands (``epoch``: completed or fractional)."""
        st = self.state
        return {"step": st.step, "epoch": epoch, **event, "images": st.images_seen, "time": round(st.train_seconds, 3)}

    def _finish_steps(self, status: str, stop_requested: bool, steps_per_epoch: int) -> str:
        """After an epoch's steps (all of them, or up to a stop): bank the time, check the losses (under
        torchrun: agree once more, also on a stop request, which turns "completed" into "interrupted")
        and the weights, and write the window's line. Returns the status."""
        st = self.state
        self._bank_time()
        if self.dist.active:  # also a point where the processes agree on a stop request
            if self._agree(self._window.sums, stop_requested, False, False)[0] and status == "completed":
                status = "interrupted"
        else:
            self._check_finite(self._window.sums)
        self._check_weights_finite()  # before the epoch's evaluation and sample grid
        self._write_log_line(steps_per_epoch)
        if status == "completed" and st.batch_in_epoch != steps_per_epoch:  # never loop without progress
            raise RunError(f"epoch {st.epoch + 1} ended after {st.batch_in_epoch} of its {steps_per_epoch} "
                           "batches: the run's position does not fit its data; start a new run.")
        return status

    def _end_epoch_or_stop(self, status: str, steps_per_epoch: int) -> None:
        """A complete epoch: count it and do its end (``_end_of_epoch``). A stop inside one: the model's
        ``on_stop`` hook (so the saved model is consistent), and at the time limit a grid and a log line."""
        st = self.state
        if st.batch_in_epoch == steps_per_epoch:
            st.epoch += 1
            st.batch_in_epoch = 0
            self._end_of_epoch(last=st.epoch == self.config.epochs or status != "completed")
        else:
            self._model_hook(self.model.on_stop)
            if status == "max_seconds":
                self._stopped_mid_epoch(steps_per_epoch)

    def _compile_warmup_step(self, batch) -> dict[str, torch.Tensor]:
        """The first step of a compiled model: compiles its networks. Timed and logged apart."""
        t = time.perf_counter()
        try:
            logs = self.model.train_step(batch, self.state.step, self.optimizers)
        except Exception as e:
            if speed.is_compile_error(e):
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise GenlabError(f"torch.compile failed on this platform ({first[:300]}). "
                                  "Train without --compile.") from e
            raise
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t
        self._write_metrics({"step": self.state.step + 1, "event": "compile_warmup", "seconds": round(seconds, 3),
                             "networks": self.compiled})
        self._say(f"torch.compile warm-up: {seconds:.1f} s for the first step ({', '.join(self.compiled)}); "
                  "not counted in img/s")
        return logs

    def _agree(self, logs: dict[str, torch.Tensor], stop: bool, time_up: bool, save_due: bool) -> tuple[bool, bool, bool]:
        """torchrun: (stop, time limit, checkpoint due) as any process sees them, the same answer in
        every process; a non-finite loss in any process stops every process."""
        finite = self._all_finite(logs)
        stop, time_up, save_due, diverged = distributed.any_true([stop, time_up, save_due, not finite], self.device)
        if diverged:
            self._diverged(logs, here=not finite)
        self._checked_step = self.state.step
        return stop, time_up, save_due

    def _model_hook(self, hook, **kwargs: Any) -> dict[str, float] | None:
        """Call one of the model's lifecycle hooks (``GenerativeModel.on_epoch_end``, ``on_stop``) with the
        training set and the run's seed; the seconds it takes count as training time."""
        t0 = time.perf_counter()
        out = hook(self.dataset.train.images, self.dataset.train.labels, seed=self.config.seed, **kwargs)
        self.state.train_seconds += time.perf_counter() - t0
        return out

    def _end_of_epoch(self, last: bool) -> None:
        """After a complete epoch: the model's ``on_epoch_end`` hook, the evaluation, a sample grid when
        one is due, the epoch's line in metrics.jsonl and (about 20 times a run) on the terminal."""
        cfg, st = self.config, self.state
        figures = self._model_hook(self.model.on_epoch_end, epoch=st.epoch, last=last) or {}
        record: dict[str, Any] = self._position(st.epoch, event="epoch_end")  # its time includes the hook's
        record.update(figures)
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
        record: dict[str, Any] = self._position(round(st.step / steps_per_epoch, 4), event="max_seconds")
        path = self.sample_grid(epoch=st.epoch + 1)
        if path is not None:
            record["samples"] = str(path.relative_to(self.run_dir))
        self._write_metrics(record)

    @staticmethod
    def _all_finite(logs: dict[str, torch.Tensor]) -> bool:
        if not logs:
            return True
        values = torch.stack([v.detach().float().reshape(()) for v in logs.values()])
        return bool(torch.isfinite(values).all())

    def _check_finite(self, logs: dict[str, torch.Tensor]) -> None:
        """``logs``: the losses summed since the last log line (a non-finite one stays non-finite in the sum)."""
        if not self._all_finite(logs):
            self._diverged(logs, here=True)
        self._checked_step = self.state.step

    def _check_weights_finite(self) -> None:
        """Stop (as for a non-finite loss) if a weight or an optimizer state tensor is not finite,
        so that a checkpoint never holds NaN weights: a step can turn the weights non-finite while
        its own loss, computed before the update, is still finite."""
        named = [(f"model {k}", v) for k, v in self.model.state_dict().items()]
        for name, opt in self.optimizers.items():
            named += [(f"optimizer {name} {k}", v) for state in opt.state.values() for k, v in state.items()]
        named = [(k, v) for k, v in named if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
        if not named:
            return
        finite = torch.stack([torch.isfinite(v).all() for _, v in named])
        if not bool(finite.all()):
            first = named[int((~finite).nonzero()[0])][0]
            self._diverged({}, here=True, what=f"the weights became non-finite ({first})")

    def _diverged(self, logs: dict[str, torch.Tensor], here: bool, what: str | None = None) -> None:
        bad = {k: v.item() for k, v in logs.items() if not math.isfinite(v.item())} if here else {}
        if what is None:
            what = (", ".join(f"{k} = {v}" for k, v in bad.items()) if bad
                    else "a loss in another process became non-finite")
        step, since = self.state.step, self._checked_step + 1
        when = f"at step {step}" if since >= step else f"between steps {since} and {step}"
        try:
            self._write_metrics({"step": step, "event": "non_finite_loss", **{k: str(v) for k, v in bad.items()}})
        except RunError:  # a full disk: the divergence is the error to report
            pass
        last = self._last_good()
        raise RunError(f"training diverged: {what} {when} (epoch {self.state.epoch + 1}). "
                       f"{last[0].upper()}{last[1:]} Try a lower learning rate (--lr) or a different "
                       "seed, or resume with `genlab train --resume RUN`.")
