"""Run folders: everything needed to rebuild, sample from, evaluate and resume a model, without pickle.

    runs/<name>/config.json                  model name + config, training config, data spec
    runs/<name>/checkpoints/last.safetensors (+ last.json, a readable copy of its metadata)
    runs/<name>/metrics.jsonl                one JSON line per logged step and per epoch
    runs/<name>/samples/epoch-XXXX.png       samples at fixed noise, every epoch
    runs/<name>/eval.json                    the last ``genlab eval`` (+ eval.likelihood.safetensors)

:class:`Run` is the one place that knows these names: genlab's own code reaches a run's files, config,
model and data through it. ``genlab.load`` stays the user's one-liner for the model.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..configcheck import build_dataclass, check_run_config
from ..errors import RunError
from ..fileio import atomic_write_json, read_jsonl
from ..models.base import GenerativeModel
from ..models.registry import build_model
from . import checkpoint as ckpt
from .lock import FolderKind, holds_files

if TYPE_CHECKING:  # imported where used: the Trainer reads its file names from this module
    from .trainer import TrainConfig

RUN_FORMAT = "genlab-run-1"


# the layout of a run folder, relative to it
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoints/last.safetensors"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
EVAL_FILE = "eval.json"

RUN_KIND = FolderKind("run folder", CONFIG_FILE, RUN_FORMAT, CHECKPOINT_FILE,
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


def likelihood_file_for(eval_path: str | Path) -> Path:
    """Where the per-image likelihoods of the evaluation in ``eval_path`` live: beside it, same stem
    (``RUN/eval.json`` -> ``RUN/eval.likelihood.safetensors``; a comparison's ``evals/NAME.json`` alike)."""
    return Path(eval_path).with_suffix(".likelihood.safetensors")


class Run:
    """A run folder: where its files are, and what they hold.

    Nothing is read when a Run is made; ``config`` is read (and checked against the run format,
    ``configcheck.check_run_config``) on first use and kept; ``read_config()`` reads it again.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._config: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"

    # -- the layout
    @property
    def config_path(self) -> Path:
        return self.folder / CONFIG_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    @property
    def metrics_path(self) -> Path:
        return self.folder / METRICS_FILE

    @property
    def samples_dir(self) -> Path:
        return self.folder / SAMPLES_DIR

    @property
    def eval_path(self) -> Path:
        return self.folder / EVAL_FILE

    @property
    def likelihood_path(self) -> Path:
        """The per-image likelihoods written beside ``eval.json`` by an evaluation of a VAE."""
        return likelihood_file_for(self.eval_path)

    def epoch_grid(self, epoch: int) -> Path:
        """The sample grid the Trainer writes at the end of ``epoch`` (and at a time-limit stop inside it)."""
        return self.samples_dir / f"epoch-{epoch:04d}.png"

    def epoch_grids(self) -> list[Path]:
        """The per-epoch sample grids, oldest first."""
        return sorted(self.samples_dir.glob("epoch-*.png"))

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    # -- what the files hold
    @property
    def config(self) -> dict[str, Any]:
        """config.json, checked; read once."""
        if self._config is None:
            self._config = read_run_config(self.folder)
        return self._config

    def read_config(self) -> dict[str, Any]:
        """config.json read again (another writer may have replaced the run since it was first read)."""
        self._config = read_run_config(self.folder)
        return self._config

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.config_path, config)
        self._config = config

    @property
    def name(self) -> str:
        """The preset (or model) name the run was trained as, e.g. ``seed-vae``."""
        return self.config["name"]

    def train_config(self) -> TrainConfig:
        return train_config_from(self.config)

    def metrics(self) -> list[dict[str, Any]]:
        """The lines of metrics.jsonl (a torn or foreign line is skipped; no file: no lines)."""
        return read_jsonl(self.metrics_path)

    def checkpoint_state(self) -> dict[str, Any] | None:
        """The training counters of the checkpoint (checked: a RunError names a bad field), or None
        when the run has no checkpoint yet."""
        from .trainer import TrainState

        if not self.has_checkpoint():
            return None
        path = self.checkpoint_path
        return dataclasses.asdict(ckpt.state_from_meta(ckpt.read_checkpoint(path)[1], path, TrainState))

    def build_model(self) -> GenerativeModel:
        """The run's model with freshly initialised weights (from the global torch generator)."""
        return model_from_config(self.config)

    def load_model(self, device: str | torch.device = "cpu") -> GenerativeModel:
        """The trained model (weights of the last checkpoint) on ``device``, in eval mode."""
        model = self.build_model()
        tensors, _ = ckpt.read_checkpoint(self.checkpoint_path)
        ckpt.load_model_weights(model, tensors, self.checkpoint_path)
        return model.to(device).eval()

    def dataset(self, progress: bool = True):
        """The dataset the run was trained on, loaded again from the spec in config.json."""
        return load_run_dataset(self.config, progress=progress)


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
    Run(run_dir).write_config(config)
    return config


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json, checked against the run format; a RunError says what is wrong and what to do."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
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
    from .trainer import TrainConfig

    return build_dataclass(TrainConfig, config["train"], what="the run's train settings", error=RunError)


def model_from_config(config: dict[str, Any]) -> GenerativeModel:
    data = config["data"]
    return build_model(config["model"], config["model_config"], tuple(data["image_shape"]), data.get("num_classes", 0))


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> GenerativeModel:
    """The trained model of a run folder (weights of its last checkpoint), in eval mode.

    For the user's convenience the model carries ``run_dir`` and ``run_config`` attributes (genlab's
    own code goes through :class:`Run` instead).
    """
    run = Run(run_dir)
    model = run.load_model(device)
    model.run_dir = run.folder
    model.run_config = run.config
    return model


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
