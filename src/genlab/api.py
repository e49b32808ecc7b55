"""The Python API: ``genlab.train``, ``genlab.resume``, ``genlab.load``.

    >>> import genlab
    >>> result = genlab.train("seed-vae", data="digits", epochs=2)
    >>> model = genlab.load(result.run_dir)
    >>> images = model.sample(16)          # float in [0, 1], shape (16, 1, 8, 8)
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import load_dataset
from .errors import GenlabError, RunError
from .fileio import atomic_write_json
from .fileio import remove_orphan_tmp
from .models.base import GenerativeModel
from .models.registry import build_model, make_config, resolve
from .training import distributed
from .training.context import resolve_precision
from .training.fingerprint import check_same_data, data_fingerprint
from .training.run import load, load_run_dataset, model_from_config, next_free_dir, read_run_config, train_config_from, write_run_config
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


def _latest_samples(run_dir: Path) -> Path | None:
    grids = sorted((run_dir / "samples").glob("epoch-*.png"))
    return grids[-1] if grids else None


def _data_record(dataset, spec_options: dict[str, Any]) -> dict[str, Any]:
    return {"spec": dataset.name, **spec_options, "image_shape": list(dataset.image_shape),
            "num_classes": dataset.num_classes, "class_names": dataset.class_names,
            "train_size": len(dataset.train), "test_size": len(dataset.test), "origin": dataset.origin,
            "fingerprint": data_fingerprint(dataset)}  # compared on resume (training.fingerprint)


def _prepare_run_dir(out: str | Path | None, default_name: str, runs_root: str | Path, overwrite: bool) -> Path:
    if out is None:
        return next_free_dir(Path(runs_root) / default_name)
    run_dir = Path(out)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(f"{run_dir} already holds files. Continue that run with `genlab train --resume "
                           f"{run_dir}`, choose another --out, or pass --overwrite to replace it.")
        if not (run_dir / "config.json").exists():
            raise RunError(f"refusing to overwrite {run_dir}: it is not a genlab run folder (no config.json).")
        shutil.rmtree(run_dir)
    return run_dir


def train(model: str = "seed-vae", data: str = "digits", *, out: str | Path | None = None,
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None, seed: int = 0,
          max_steps: int | None = None, max_seconds: float | None = None, data_dir: str | Path | None = None,
          image_size: int | None = None, channels: int | None = None, device: str = "auto", progress: bool = True,
          overwrite: bool = False, runs_root: str | Path = "runs", precision: str | None = None, compile: bool = False,
          channels_last: bool = False, lr_schedule: str | None = None, **model_settings: Any) -> TrainResult:
    """Train a model or preset (see ``genlab models``) on a data source (see ``genlab datasets``).

    ``model_settings`` override fields of the model's config dataclass (e.g. ``g_loss="minimax"``).
    ``max_steps`` / ``max_seconds`` stop the run early (with a checkpoint) after that many steps / seconds
    of training time in all. ``precision`` ("fp32", "bf16", "fp16" on a CUDA GPU, or "auto": bf16 where
    the device computes it natively, else fp32; None: the preset's, fp32 unless it says otherwise), ``compile``
    (torch.compile) and ``channels_last`` choose how fast it runs; they are saved with the run.
    ``lr_schedule`` ("constant", "linear" or "cosine"; None: the preset's) decays every optimizer's
    learning rate to 0 at the end of the budget: the last epoch, ``max_steps`` or ``max_seconds``,
    whichever comes first.
    Without ``out`` the run goes to ``runs/<model>-<data>`` (``-2``, ``-3`` … if taken).

    Under torchrun (``torchrun --nproc-per-node N``) every process calls this alike: they train
    together (see ``genlab.training.distributed``), ``batch_size`` is the batch of all of them, and
    rank 0 alone writes the run folder.
    """
    dist, this_device = distributed.setup(device)
    preset = resolve(model)
    with distributed.main_first():  # a download or a cache is made once
        dataset = load_dataset(data, data_dir=data_dir, image_size=image_size, channels=channels,
                               progress=progress and dist.is_main)
    settings = {**preset.model_config, **model_settings}
    if lr is not None:
        settings["lr"] = lr
    model_cfg = make_config(preset.model, settings)
    overrides = {"epochs": epochs, "batch_size": batch_size, "max_steps": max_steps, "max_seconds": max_seconds,
                 "precision": precision, "lr_schedule": lr_schedule}
    train_cfg = TrainConfig(**{**preset.train, **{k: v for k, v in overrides.items() if v is not None},
                               "seed": seed, "device": device, "compile": bool(compile),
                               "channels_last": bool(channels_last)})
    train_cfg.precision = resolve_precision(train_cfg.precision, resolve_device(this_device))  # "auto": as trained
    check_train_config(train_cfg, resolve_device(this_device), dist.world_size)
    if max_seconds is not None and max_seconds <= 0:
        raise GenlabError(f"the training time limit must be positive, got {max_seconds} s.")
    data_tag = dataset.name.split(":", 1)[0] if ":" in dataset.name else dataset.name
    torch.manual_seed(seed)  # weight initialisation
    net = build_model(preset.model, model_cfg, dataset.image_shape, dataset.num_classes)
    run_dir = None
    if dist.is_main:
        run_dir = _prepare_run_dir(out, f"{preset.name}-{data_tag}", runs_root, overwrite)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(run_dir, name=preset.name, model=preset.model, model_config=model_cfg, train=train_cfg,
                         data=_data_record(dataset, {"data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
                                                     "image_size": image_size, "channels": channels}),
                         parameters=net.parameter_count())
    run_dir = Path(distributed.broadcast_object(None if run_dir is None else str(run_dir)))
    trainer = Trainer(net, dataset, train_cfg, run_dir, progress=progress, device=this_device)
    status = trainer.fit()
    return TrainResult(run_dir, net.eval(), status, trainer.state, _latest_samples(run_dir))


def resume(run_dir: str | Path, *, epochs: int | None = None, max_steps: int | None = None,
           max_seconds: float | None = None, device: str | None = None, progress: bool = True,
           precision: str | None = None, compile: bool | None = None,
           channels_last: bool | None = None) -> TrainResult:
    """Continue a stopped run from its last checkpoint; ``epochs`` may extend it, ``max_steps`` /
    ``max_seconds`` (steps / training seconds in all, counting those before the stop) limit it.
    ``precision``, ``compile`` and ``channels_last`` default to the run's own; under torchrun every
    process resumes from the same checkpoint."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    train_cfg = train_config_from(config)
    if epochs is not None:
        train_cfg.epochs = epochs
    train_cfg.max_steps = max_steps  # a stop at max_steps (or max_seconds) is not a limit for the continuation
    train_cfg.max_seconds = max_seconds
    if device is not None:
        train_cfg.device = device
    for name, value in (("precision", precision), ("compile", compile), ("channels_last", channels_last)):
        if value is not None:
            setattr(train_cfg, name, value)
    dist, this_device = distributed.setup(train_cfg.device)
    check_train_config(train_cfg, resolve_device(this_device), dist.world_size)
    with distributed.main_first():
        dataset = load_run_dataset(config, progress=progress and dist.is_main)
    check_same_data(config["data"], dataset, run_dir)
    torch.manual_seed(train_cfg.seed)  # train()'s initial weights, for a run killed before its first checkpoint
    net = model_from_config(config)
    trainer = Trainer(net, dataset, train_cfg, run_dir, progress=progress, device=this_device)
    trainer.restore(missing_ok=True)
    if dist.is_main:
        remove_orphan_tmp(run_dir)  # temporary files of writers killed mid-write
        config["train"] = dataclasses.asdict(train_cfg)
        try:
            atomic_write_json(run_dir / "config.json", config)
        except OSError as e:
            raise trainer.write_failed(e, run_dir / "config.json") from None
    status = trainer.fit()
    return TrainResult(run_dir, net.eval(), status, trainer.state, _latest_samples(run_dir))
