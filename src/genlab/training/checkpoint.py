"""Checkpoints that never unpickle code: tensors in safetensors, everything else in JSON.

One file, ``checkpoints/last.safetensors``, holds the model weights, every optimizer's state
tensors and the random-number-generator states; its safetensors metadata carries the JSON
training state (step, epoch, position in the epoch, optimizer hyper-parameters, and under fp16
the GradScalers' loss scales). Writing it
is atomic (temporary file, fsync, ``os.replace``), so a kill at any moment leaves either the
previous checkpoint or the new one, never a torn file. ``last.json`` beside it is a readable
copy of the metadata for people; loading never needs it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import RunError
from ..fileio import atomic_write_bytes, atomic_write_json

FORMAT = "genlab-checkpoint-1"


def _optimizer_to_flat(name: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict:
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"optim/{name}/{idx}/{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(name: str, meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim/{name}/"
    for key, val in tensors.items():
        if key.startswith(prefix):
            idx, field = key[len(prefix):].split("/", 1)
            state.setdefault(int(idx), {})[field] = val
    for idx, fields in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(fields)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    rng: dict[str, torch.Tensor], state: dict[str, Any],
                    scalers: dict[str, dict[str, Any]] | None = None) -> None:
    """Write model, optimizers, RNG states, the JSON ``state`` and the GradScalers' states
    (``GradScaler.state_dict()``: numbers only) atomically to ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model/{k}"] = v.detach().cpu().contiguous()
    optim_meta = {name: _optimizer_to_flat(name, opt, tensors) for name, opt in optimizers.items()}
    for k, v in rng.items():
        tensors[f"rng/{k}"] = v.cpu().contiguous()
    meta = {"format": FORMAT, "state": state, "optimizers": optim_meta}
    if scalers:
        meta["scalers"] = scalers
    data = st_save(tensors, metadata={"genlab": json.dumps(meta)})
    path = Path(path)
    atomic_write_bytes(path, data)
    atomic_write_json(path.with_suffix(".json"), meta)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a checkpoint, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}: the run has not saved one yet (it is written at the "
                       "end of every epoch), or the folder is not a genlab run.")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        meta = json.loads(header["__metadata__"]["genlab"])
    except (SafetensorError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise RunError(f"checkpoint {path} is corrupt or not a genlab checkpoint ({e}). "
                       "Delete it to start over, or restore it from a copy.") from None
    if meta.get("format") != FORMAT:
        raise RunError(f"checkpoint {path} has format {meta.get('format')!r}; this genlab reads {FORMAT!r}.")
    return tensors, meta


def load_model_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise RunError(f"checkpoint {path} does not fit the model in config.json: {e}") from None


# how an optimizer computes, not what: the current optimizer's choice wins over the checkpoint's
# (a run saved with the for-loop Adam resumes with the fused one, and a fused one on a device without it)
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizers(optimizers: dict[str, torch.optim.Optimizer], tensors, meta) -> None:
    for name, opt in optimizers.items():
        sd = _optimizer_from_flat(name, meta["optimizers"][name], tensors)
        for saved, current in zip(sd["param_groups"], opt.param_groups):
            for flag in IMPLEMENTATION_FLAGS:
                if flag in current:
                    saved[flag] = current[flag]
                else:
                    saved.pop(flag, None)
        opt.load_state_dict(sd)


def rng_from_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}
