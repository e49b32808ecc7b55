"""Run folders: everything needed to rebuild, sample from and resume a model, without pickle.

    runs/<name>/config.json                 model name + config, training config, data spec
    runs/<name>/checkpoints/last.safetensors (+ last.json, a readable copy of its metadata)
    runs/<name>/metrics.jsonl               one JSON line per logged step and per epoch
    runs/<name>/samples/epoch-XXXX.png      samples at fixed noise, every epoch
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch

from ..configcheck import build_dataclass, check_run_config
from ..errors import RunError
from ..fileio import atomic_write_json
from ..models.base import GenerativeModel
from ..models.registry import build_model
from . import checkpoint as ckpt
from .lock import FolderKind, holds_files
from .trainer import TrainConfig

RUN_FORMAT = "genlab-run-1"


RUN_KIND = FolderKind("run folder", "config.json", RUN_FORMAT, "checkpoints/last.safetensors",
                      keys=("model", "model_config", "train", "data"))


def next_free_dir(base: Path) -> Path:
    """Create and return ``base`` if it is free, else ``base-2``, ``base-3`` …: a new run never
    overwrites an old one. Each name is taken with an exclusive mkdir, so two processes starting
    at once never get the same folder."""
    base = Path(base)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the runs folder {base.parent} ({e.strerror}); choose another with "
                       "--out.") from None
    i = 1
    while True:
        candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            i += 1
        except OSError as e:
            raise RunError(f"cannot create the run folder {candidate} ({e.strerror}); choose another with "
                           "--out.") from None


def write_run_config(run_dir: Path, *, name: str, model: str, model_config: Any, train: TrainConfig,
                     data: dict[str, Any], parameters: int) -> dict[str, Any]:
    from .. import __version__

    config = {
        "format": RUN_FORMAT,
        "genlab_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": name,
        "model": model,
        "model_config": dataclasses.asdict(model_config),
        "train": dataclasses.asdict(train),
        "data": data,
        "parameters": parameters,
    }
    atomic_write_json(run_dir / "config.json", config)
    return config


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.exists():
        raise RunError(f"run folder {run_dir} does not exist. Train one with `genlab train MODEL --out {run_dir}`.")
    if not path.is_file():
        if run_dir.is_dir() and not holds_files(run_dir):
            raise RunError(f"{run_dir} holds no run yet (a start that stopped before it wrote config.json); "
                           f"start it with `genlab train MODEL --out {run_dir}`.")
        raise RunError(f"{run_dir} is not a genlab run folder: it has no config.json.")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RunError(f"{path} is not UTF-8 text ({e}); restore it from a copy.") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise RunError(f"{path} is not valid JSON ({e}); restore it from a copy.") from None
    return check_run_config(config, path, RUN_FORMAT)


def train_config_from(config: dict[str, Any]) -> TrainConfig:
    return build_dataclass(TrainConfig, config["train"], what="the run's train settings", error=RunError)


def model_from_config(config: dict[str, Any]) -> GenerativeModel:
    data = config["data"]
    return build_model(config["model"], config["model_config"], tuple(data["image_shape"]), data.get("num_classes", 0))


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> GenerativeModel:
    """The trained model of a run folder (weights of its last checkpoint), in eval mode.

    The returned model carries ``run_dir`` and ``run_config`` attributes.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    model = model_from_config(config)
    path = run_dir / "checkpoints" / "last.safetensors"
    tensors, _ = ckpt.read_checkpoint(path)
    ckpt.load_model_weights(model, tensors, path)
    model.run_dir = run_dir
    model.run_config = config
    return model.to(device).eval()


def load_run_dataset(config: dict[str, Any], progress: bool = True):
    """The dataset a run was trained on, loaded again from the spec in its config.json."""
    from ..data import load_dataset

    data = config["data"]
    dataset = load_dataset(data["spec"], data_dir=data.get("data_dir"), image_size=data.get("image_size"),
                           channels=data.get("channels"), progress=progress)
    if list(dataset.image_shape) != list(data["image_shape"]):
        raise RunError(f"the data {data['spec']} now has image shape {dataset.image_shape}, but the run was "
                       f"trained on {tuple(data['image_shape'])}; it needs the same data.")
    return dataset
