"""The Python API: ``genlab.train``, ``genlab.resume``, ``genlab.load``.

    >>> import genlab
    >>> result = genlab.train("seed-vae", data="digits", epochs=2)
    >>> model = genlab.load(result.run_dir)
    >>> images = model.sample(16)          # float in [0, 1], shape (16, 1, 8, 8)
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .configcheck import build_dataclass
from .data import load_dataset
from .errors import GenlabError, RunError
from .fileio import remove_orphan_tmp, write_error_cause
from .models.base import GenerativeModel
from .models.registry import MODELS, build_model, make_config, resolve
from .training import distributed
from .training.context import resolve_precision
from .training.fingerprint import check_same_data, data_fingerprint
from .training.lock import (Claim, FolderLock, check_replaceable, describe_holder, holds_files, live_holder, say,
                            settle_leftover)
from .training.lock import replace as replace_folder
from .training.run import RUN_KIND, Run, load, next_free_dir, write_run_config
from .training.trainer import Trainer, TrainConfig, TrainState, check_train_config, resolve_device

__all__ = ["train", "resume", "load", "TrainResult"]


@dataclass
class TrainResult:
    run_dir: Path
    model: GenerativeModel
    status: str  # "completed", "max_steps", "max_seconds" or "interrupted"
    state: TrainState
    samples: Path | None  # the newest sample grid

    def __repr__(self) -> str:
        return f"TrainResult(run_dir={str(self.run_dir)!r}, status={self.status!r}, step={self.state.step})"


def _latest_samples(run: Run) -> Path | None:
    grids = run.epoch_grids()
    return grids[-1] if grids else None


def _data_record(dataset, spec_options: dict[str, Any]) -> dict[str, Any]:
    return {"spec": dataset.name, **spec_options, "image_shape": list(dataset.image_shape),
            "num_classes": dataset.num_classes, "class_names": dataset.class_names,
            "train_size": len(dataset.train), "test_size": len(dataset.test), "origin": dataset.origin,
            "fingerprint": data_fingerprint(dataset)}  # compared on resume (training.fingerprint)


# The field of a GAN's config (and the VAE-GAN's) that names its adversarial loss pair, a key of
# models.losses.GAN_LOSSES. Runs of the MLP GAN written before it had this name store it as ``g_loss``:
# models.registry.RENAMED_SETTINGS reads those as ``loss``.
ADVERSARIAL_LOSS_FIELD = "loss"


def adversarial_loss_setting(model: str, loss: str) -> dict[str, str]:
    """The model setting ``{"loss": loss}`` that makes the model or preset ``model`` train with the GAN
    loss pair ``loss``. An unknown loss, or a model without an adversarial loss (a plain VAE), is a
    GenlabError."""
    from .models.losses import GAN_LOSSES

    if loss not in GAN_LOSSES:
        raise GenlabError(f"unknown GAN loss {loss!r}; choose one of: {', '.join(GAN_LOSSES)}.")
    entry = MODELS[resolve(model).model]
    if ADVERSARIAL_LOSS_FIELD not in {f.name for f in dataclasses.fields(entry.config_cls)}:
        raise GenlabError(f"{model} ({entry.name}) has no adversarial loss to choose; the GAN loss applies to GANs "
                          "and the VAE-GAN (see `genlab models`).")
    return {ADVERSARIAL_LOSS_FIELD: loss}


def _on_main(work):
    """``work()`` on rank 0 (the process that writes the run folder); its value there, None elsewhere.
    Under torchrun the other processes learn whether it failed, and fail with the same message,
    instead of waiting at the next collective for a rank 0 that has stopped."""
    info = distributed.current()
    value = error = None
    if info.is_main:
        try:
            value = work()
        except Exception as e:  # noqa: BLE001 - reported to the other processes, then raised here
            error = e
    message = distributed.broadcast_object(None if error is None else str(error)) if info.active else None
    if error is not None:
        raise error
    if message is not None:
        raise RunError(f"rank 0 could not prepare the run folder: {message}")
    return value


def _claim_run_dir(out: str | Path | None, default_name: str, runs_root: str | Path, overwrite: bool) -> Claim:
    """The folder of a new run, created (an exclusive mkdir: two starts never share one) and locked.

    ``out`` may name a folder that does not exist or is empty. One that holds files is used only with
    ``overwrite``, and only when it is a genlab run folder that may be deleted (never ``/``, the home
    folder, the working directory or an ancestor of it): it is then moved aside and deleted once the
    new run's first checkpoint is written (``genlab.training.lock``). Nothing is written into a folder
    that holds files before it is known to be a run folder."""
    if out is None:
        run_dir = next_free_dir(Path(runs_root) / default_name)
        return Claim(FolderLock(run_dir).acquire())
    run_dir = Path(out)
    if run_dir.is_symlink() and not run_dir.exists():
        raise RunError(f"--out {run_dir} is a symbolic link to nothing; remove it or choose another --out.")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} is a file, not a folder; choose another --out.")
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        pass
    except OSError as e:
        raise RunError(f"cannot create the run folder {run_dir} ({e.strerror}); choose another --out.") from None
    else:
        lock = FolderLock(run_dir).acquire()
        return Claim(lock, settle_leftover(lock, RUN_KIND))
    if holds_files(run_dir):
        if not overwrite:
            holder = live_holder(run_dir)
            if holder is not None:
                raise RunError(f"{run_dir} is a run in training: {describe_holder(holder)} is writing to it. Choose "
                               "another --out, or wait until it ends.")
            raise RunError(f"{run_dir} already holds files. Continue that run with `genlab train --resume "
                           f"{run_dir}`, choose another --out, or pass --overwrite to replace it.")
        check_replaceable(run_dir, RUN_KIND)  # before anything (the lock file) is written into it
    lock = FolderLock(run_dir).acquire()
    try:
        if holds_files(run_dir):  # again, now that no other writer can change it
            if not overwrite:
                raise RunError(f"{run_dir} was just written by another process; choose another --out.")
            return replace_folder(lock, RUN_KIND)
        remove_orphan_tmp(run_dir)
        return Claim(lock, settle_leftover(lock, RUN_KIND))
    except BaseException:
        lock.release()
        raise


def _claim_existing_run(run_dir: Path) -> Claim:
    """The lock on the run folder a resume writes, and its leftovers dealt with: the temporary files
    of writers that died mid-write are removed, and a run replaced by an earlier --overwrite and
    kept aside is deleted when this run has a checkpoint (else kept until it has one)."""
    lock = FolderLock(run_dir).acquire()
    try:
        removed = remove_orphan_tmp(run_dir)
        if removed:
            say(f"removed {len(removed)} unfinished temporary file(s) left in {run_dir} by a process that died "
                f"while writing: {', '.join(str(p.relative_to(run_dir)) for p in removed[:5])}"
                f"{' ...' if len(removed) > 5 else ''}")
        return Claim(lock, settle_leftover(lock, RUN_KIND))
    except BaseException:
        lock.release()
        raise


def _forget_unsaved_start(run: Run) -> None:
    """A run restarted from scratch: the log lines and sample grids of the start that never saved a
    checkpoint describe steps that are about to be trained again."""
    run.metrics_path.unlink(missing_ok=True)
    for grid in run.epoch_grids():
        grid.unlink()


def train(model: str = "seed-vae", data: str = "digits", *, out: str | Path | None = None,
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None, seed: int = 0,
          max_steps: int | None = None, max_seconds: float | None = None, data_dir: str | Path | None = None,
          image_size: int | None = None, channels: int | None = None, device: str = "auto", progress: bool = True,
          overwrite: bool = False, runs_root: str | Path = "runs", precision: str | None = None, compile: bool = False,
          channels_last: bool = False, lr_schedule: str | None = None, gan_loss: str | None = None,
          **model_settings: Any) -> TrainResult:
    """Train a model or preset (see ``genlab models``) on a data source (see ``genlab datasets``).

    ``model_settings`` override fields of the model's config dataclass (e.g. ``z_dim=32``). ``gan_loss``
    (a name in ``models.losses.GAN_LOSSES``) sets the adversarial loss of any GAN (and the VAE-GAN): the
    model setting ``loss`` (:func:`adversarial_loss_setting`).
    ``max_steps`` / ``max_seconds`` stop the run early (with a checkpoint) after that many steps / seconds
    of training time in all. ``precision`` ("fp32", "bf16", "fp16" on a CUDA GPU, or "auto": bf16 where
    the device computes it natively, else fp32; None: the preset's, fp32 unless it says otherwise), ``compile``
    (torch.compile) and ``channels_last`` choose how fast it runs; they are saved with the run.
    ``lr_schedule`` ("constant", "linear" or "cosine"; None: the preset's) decays every optimizer's
    learning rate to 0 at the end of the budget: the last epoch, ``max_steps`` or ``max_seconds``,
    whichever comes first.
    Without ``out`` the run goes to ``runs/<model>-<data>`` (``-2``, ``-3`` … if taken). ``overwrite``
    replaces the run folder ``out``: only a genlab run folder, never ``/``, the home folder, the
    working directory or an ancestor of it; the old run is moved to ``.<name>.replaced`` beside it
    and deleted once the new run's first checkpoint is written. The run folder is locked while the
    run trains: a second writer is refused (see ``genlab.training.lock``).

    Under torchrun (``torchrun --nproc-per-node N``) every process calls this alike: they train
    together (see ``genlab.training.distributed``), ``batch_size`` is the batch of all of them, and
    rank 0 alone writes the run folder.
    """
    dist, this_device = distributed.setup(device)
    preset = resolve(model)
    if gan_loss is not None:
        model_settings = {**model_settings, **adversarial_loss_setting(model, gan_loss)}
    settings = {**preset.model_config, **model_settings}
    if lr is not None:
        settings["lr"] = lr
    model_cfg = make_config(preset.model, settings)
    overrides = {"epochs": epochs, "batch_size": batch_size, "max_steps": max_steps, "max_seconds": max_seconds,
                 "precision": precision, "lr_schedule": lr_schedule}
    # checked against TrainConfig's field types before any data is read (genlab.train(epochs="3") names the field)
    train_cfg = build_dataclass(TrainConfig, {**preset.train, **{k: v for k, v in overrides.items() if v is not None},
                                              "seed": seed, "device": device, "compile": bool(compile),
                                              "channels_last": bool(channels_last)},
                                what="training setting", sep=" ")
    with distributed.main_first():  # a download or a cache is made once
        dataset = load_dataset(data, data_dir=data_dir, image_size=image_size, channels=channels,
                               progress=progress and dist.is_main)
    train_cfg.precision = resolve_precision(train_cfg.precision, resolve_device(this_device))  # "auto": as trained
    check_train_config(train_cfg, resolve_device(this_device), dist.world_size)
    if max_seconds is not None and max_seconds <= 0:
        raise GenlabError(f"the training time limit must be positive, got {max_seconds} s.")
    data_tag = dataset.name.split(":", 1)[0] if ":" in dataset.name else dataset.name
    torch.manual_seed(seed)  # weight initialisation
    net = build_model(preset.model, model_cfg, dataset.image_shape, dataset.num_classes)

    def claim() -> Claim:
        held = _claim_run_dir(out, f"{preset.name}-{data_tag}", runs_root, overwrite)
        try:
            write_run_config(held.folder, name=preset.name, model=preset.model, model_config=model_cfg,
                             train=train_cfg,
                             data=_data_record(dataset, {"data_dir": None if data_dir is None
                                                         else str(Path(data_dir).resolve()),
                                                         "image_size": image_size, "channels": channels}),
                             parameters=net.parameter_count())
        except OSError as e:
            held.release()
            raise RunError(f"{write_error_cause(e)} writing {Run(held.folder).config_path}: the run could not "
                           "start. Free space (or fix that) and run the command again.") from None
        except BaseException:
            held.release()
            raise
        return held

    held = _on_main(claim)  # rank 0 alone locks and writes the folder
    run_dir = Path(distributed.broadcast_object(None if held is None else str(held.folder)))
    with held or contextlib.nullcontext():  # the lock is held until the training returns
        trainer = Trainer(net, dataset, train_cfg, run_dir, progress=progress, device=this_device)
        if held is not None:
            trainer.on_save = held.saved  # the first checkpoint makes the run it replaced deletable
        status = trainer.fit()
    return TrainResult(run_dir, net.eval(), status, trainer.state, _latest_samples(Run(run_dir)))


def resume(run_dir: str | Path, *, epochs: int | None = None, max_steps: int | None = None,
           max_seconds: float | None = None, device: str | None = None, progress: bool = True,
           precision: str | None = None, compile: bool | None = None,
           channels_last: bool | None = None) -> TrainResult:
    """Continue a stopped run from its last checkpoint; ``epochs`` may extend it, ``max_steps`` /
    ``max_seconds`` (steps / training seconds in all, counting those before the stop) limit it.
    ``precision``, ``compile`` and ``channels_last`` default to the run's own; under torchrun every
    process resumes from the same checkpoint. A run stopped before its first checkpoint (killed
    after it wrote config.json) is trained from the start with its saved settings: the same run a
    fresh ``train`` with those settings gives. The run folder is locked while it trains, and the
    temporary files of writers that died mid-write are removed first."""
    run = Run(run_dir)
    changes = {"epochs": epochs, "max_steps": max_steps, "max_seconds": max_seconds, "device": device,
               "precision": precision, "compile": compile, "channels_last": channels_last}
    train_cfg = _continued_config(run, **changes)  # a run folder: only then is it locked
    dist, this_device = distributed.setup(train_cfg.device)
    check_train_config(train_cfg, resolve_device(this_device), dist.world_size)
    held = _on_main(lambda: _claim_existing_run(run.folder))
    with held or contextlib.nullcontext():  # the lock is held until the training returns
        # read again under the lock: another writer may have replaced the run since
        run.read_config()
        return _resume_locked(run, held, changes, dist, this_device, progress)


def _continued_config(run: Run, *, epochs, max_steps, max_seconds, device, precision, compile,
                      channels_last) -> TrainConfig:
    """The training settings of a resumed run: its own, with the changes a resume may make."""
    values = dataclasses.asdict(run.train_config())
    if epochs is not None:
        values["epochs"] = epochs
    values["max_steps"] = max_steps  # a stop at max_steps (or max_seconds) is not a limit for the continuation
    values["max_seconds"] = max_seconds
    if device is not None:
        values["device"] = device
    for name, value in (("precision", precision), ("compile", compile), ("channels_last", channels_last)):
        if value is not None:
            values[name] = value
    return build_dataclass(TrainConfig, values, what="training setting", sep=" ")


def _resume_locked(run: Run, held: Claim | None, changes: dict[str, Any], dist, this_device: str,
                   progress: bool) -> TrainResult:
    config = run.config
    train_cfg = _continued_config(run, **changes)
    check_train_config(train_cfg, resolve_device(this_device), dist.world_size)
    with distributed.main_first():
        dataset = run.dataset(progress=progress and dist.is_main)
    check_same_data(config["data"], dataset, run.folder)
    # a run stopped before its first checkpoint has nothing to continue from: it starts from scratch
    fresh = distributed.broadcast_object(not run.has_checkpoint() if dist.is_main else None)
    if fresh:
        torch.manual_seed(train_cfg.seed)  # the same initial weights as `genlab train` gives with this seed
    net = run.build_model()
    trainer = Trainer(net, dataset, train_cfg, run.folder, progress=progress, device=this_device)
    if fresh:
        if dist.is_main:
            say(f"{run.folder} has no checkpoint yet (it stopped before its first save): training it from the start "
                "with its saved settings.")
            _forget_unsaved_start(run)
    else:
        trainer.restore()
    if held is not None:
        trainer.on_save = held.saved
    if dist.is_main:
        try:
            run.write_config({**config, "train": dataclasses.asdict(train_cfg)})
        except OSError as e:
            raise trainer.write_failed(e, run.config_path) from None
    status = trainer.fit()
    return TrainResult(run.folder, net.eval(), status, trainer.state, _latest_samples(run))
