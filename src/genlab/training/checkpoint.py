"""Checkpoints that never unpickle code: tensors in safetensors, everything else in JSON.

One file, ``checkpoints/last.safetensors``, holds the model weights, every optimizer's state
tensors and the random-number-generator states; its safetensors metadata carries the JSON
training state (step, epoch, position in the epoch, optimizer hyper-parameters, and under fp16
the GradScalers' loss scales). Writing it
is atomic (temporary file, fsync, ``os.replace``), so a kill at any moment leaves either the
previous checkpoint or the new one, never a torn file. ``last.json`` beside it is a readable
copy of the metadata for people; loading never needs it.

Reading checks every field it uses (the training state, each optimizer's entry and state
tensors, the random-number-generator states) and names the checkpoint and the field in a
``RunError`` when one is missing or of the wrong type or shape.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
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


def _bad(path: Path, field: str, problem: str) -> RunError:
    return RunError(f"checkpoint {path} is not usable: {field} {problem}. It was not written by this genlab or "
                    "was edited; restore it from a copy, or delete the run's checkpoints folder to start over.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    """The JSON kind of an optimizer setting, for comparing a saved value with the current one."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if _is_number(v):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "a list"
    return type(v).__name__


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
        meta = _header_meta(raw)
    except (SafetensorError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise RunError(f"checkpoint {path} is corrupt or not a genlab checkpoint ({e}). "
                       "Delete it to start over, or restore it from a copy.") from None
    if not isinstance(meta, dict):
        raise _bad(path, "its metadata", f"is {_kind(meta)}, not a JSON object")
    if meta.get("format") != FORMAT:
        raise RunError(f"checkpoint {path} has format {meta.get('format')!r}; this genlab reads {FORMAT!r}.")
    return tensors, meta


def _header_meta(raw: bytes) -> Any:
    """The genlab metadata in a safetensors file's header (``raw``: the file, or its start)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return json.loads(header["__metadata__"]["genlab"])


def saved_step(path: Path) -> int | None:
    """The training step of the checkpoint at ``path`` as its header says, reading only the header;
    None if there is no readable checkpoint there. For messages about what is on disk."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > 100_000_000:
                return None
            step = _header_meta(n.to_bytes(8, "little") + f.read(n))["state"]["step"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return step if _is_int(step) else None


def state_from_meta(meta: dict[str, Any], path: Path, cls: type) -> Any:
    """The training state (an instance of the dataclass ``cls``, whose fields are ints and floats) from
    the checkpoint metadata ``meta``: every field present, integers whole and non-negative, floats
    finite and non-negative."""
    state = meta.get("state")
    if not isinstance(state, dict):
        raise _bad(path, "the field 'state'", "is missing" if state is None else f"is {_kind(state)}, not an object")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        field = f"state.{f.name}"
        if f.name not in state:
            raise _bad(path, f"the field {field!r}", "is missing")
        v = state[f.name]
        if hints[f.name] is int and not (_is_int(v) and v >= 0):
            raise _bad(path, f"the field {field!r}", f"is {v!r}; it must be a whole number >= 0")
        if hints[f.name] is float and not (_is_number(v) and math.isfinite(v) and v >= 0):
            raise _bad(path, f"the field {field!r}", f"is {v!r}; it must be a finite number >= 0")
        values[f.name] = v
    unknown = sorted(set(state) - set(values))
    if unknown:
        raise _bad(path, "the field 'state'", f"has unknown entries {', '.join(map(repr, unknown))}")
    return cls(**values)


def load_model_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise RunError(f"checkpoint {path} does not fit the model in config.json: {e}") from None


# how an optimizer computes, not what: the current optimizer's choice wins over the checkpoint's
# (a run saved with the for-loop Adam resumes with the fused one, and a fused one on a device without it)
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def _check_optimizer(name: str, opt: torch.optim.Optimizer, entry: Any, tensors: dict[str, torch.Tensor],
                     path: Path) -> None:
    """Raise a RunError naming the field where the saved entry of optimizer ``name`` does not fit
    ``opt``: its settings (same keys, same kinds of value, same number of parameters per group) and
    its state (one entry per parameter index, each tensor of its parameter's shape or a scalar, the
    same fields for every parameter)."""
    where = f"optimizers.{name}"
    if not isinstance(entry, dict):
        raise _bad(path, f"the field {where!r}", "is missing" if entry is None else f"is {_kind(entry)}, not an object")
    groups = entry.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(opt.param_groups):
        raise _bad(path, f"the field '{where}.param_groups'",
                   f"is {groups!r:.80}; it must list {len(opt.param_groups)} parameter group(s)")
    params = []
    for i, (saved, current) in enumerate(zip(groups, opt.param_groups)):
        field = f"{where}.param_groups[{i}]"
        if not isinstance(saved, dict):
            raise _bad(path, f"the field {field!r}", f"is {_kind(saved)}, not an object")
        ids = saved.get("params")
        if not (isinstance(ids, list) and all(_is_int(x) for x in ids) and len(ids) == len(current["params"])):
            raise _bad(path, f"the field '{field}.params'",
                       f"is {ids!r:.80}; it must list {len(current['params'])} parameter indices")
        for key, value in current.items():
            if key in ("params", "initial_lr") or key in IMPLEMENTATION_FLAGS:
                continue
            if key not in saved:
                raise _bad(path, f"the field '{field}.{key}'", "is missing")
            got = saved[key]
            if value is not None and _kind(got) != _kind(value):
                raise _bad(path, f"the field '{field}.{key}'", f"is {got!r:.80}; it must be {_kind(value)}")
            if isinstance(value, (bool, str)) and got != value:  # a variant of the optimizer (amsgrad, ...)
                raise _bad(path, f"the field '{field}.{key}'", f"is {got!r}; the model's optimizer has {value!r}")
            if isinstance(value, (list, tuple)) and (len(got) != len(value) or not all(map(_is_number, got))):
                raise _bad(path, f"the field '{field}.{key}'", f"is {got!r:.80}; it must be {len(value)} numbers")
        if "initial_lr" in saved and not _is_number(saved["initial_lr"]):
            raise _bad(path, f"the field '{field}.initial_lr'", f"is {saved['initial_lr']!r:.80}; it must be a number")
        params += current["params"]
    scalars = entry.get("scalars", {})
    if not isinstance(scalars, dict):
        raise _bad(path, f"the field '{where}.scalars'", f"is {_kind(scalars)}, not an object")
    fields: dict[int, set[str]] = {}
    for idx, values in scalars.items():
        if not (idx.isdigit() and int(idx) < len(params)) or not isinstance(values, dict):
            raise _bad(path, f"the field '{where}.scalars.{idx}'",
                       f"must be an object of values for one of the {len(params)} parameters (0 to {len(params) - 1})")
        fields.setdefault(int(idx), set()).update(values)
    prefix = f"optim/{name}/"
    for key, t in tensors.items():
        if not key.startswith(prefix):
            continue
        idx, _, field = key[len(prefix):].partition("/")
        if not (idx.isdigit() and int(idx) < len(params) and field):
            raise _bad(path, f"the tensor {key!r}", f"does not name one of the {len(params)} parameters")
        shape = tuple(params[int(idx)].shape)
        if t.dim() and (tuple(t.shape) != shape or not t.is_floating_point()):
            raise _bad(path, f"the tensor {key!r}",
                       f"has shape {tuple(t.shape)} ({t.dtype}); its parameter has shape {shape}")
        fields.setdefault(int(idx), set()).add(field)
    if fields:
        expected = set().union(*fields.values())
        for idx, have in sorted(fields.items()):
            if have != expected:
                raise _bad(path, f"the state of parameter {idx} of optimizer {name!r}",
                           f"lacks {', '.join(sorted(expected - have))}")


def load_optimizers(optimizers: dict[str, torch.optim.Optimizer], tensors, meta,
                    path: Path | str = "(unnamed)") -> None:
    saved = meta.get("optimizers")
    if not isinstance(saved, dict):
        raise _bad(path, "the field 'optimizers'",
                   "is missing" if saved is None else f"is {_kind(saved)}, not an object")
    for name, opt in optimizers.items():
        _check_optimizer(name, opt, saved.get(name), tensors, path)
    for name, opt in optimizers.items():
        sd = _optimizer_from_flat(name, saved[name], tensors)
        for saved_group, current in zip(sd["param_groups"], opt.param_groups):
            saved_group.setdefault("initial_lr", saved_group["lr"])  # checkpoints from before the schedules
            for flag in IMPLEMENTATION_FLAGS:
                if flag in current:
                    saved_group[flag] = current[flag]
                else:
                    saved_group.pop(flag, None)
        try:
            opt.load_state_dict(sd)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise _bad(path, f"the field 'optimizers.{name}'", f"does not load ({e})") from None


def rng_from_tensors(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The random-number-generator states: "torch" and "shuffle" (CPU generators) always, "cuda" if
    saved; each a 1-D uint8 tensor, the CPU ones of the CPU generator's state size."""
    rng = {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}
    size = torch.get_rng_state().numel()
    for name in ("torch", "shuffle"):
        if name not in rng:
            raise _bad(path, f"the tensor 'rng/{name}'", "is missing")
    for name, t in rng.items():
        want = size if name in ("torch", "shuffle") else t.numel()
        if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != want or not want:
            raise _bad(path, f"the tensor 'rng/{name}'", f"is {t.dtype} of shape {tuple(t.shape)}; a generator "
                       f"state is uint8 of shape ({want or 'n'},)")
    return rng
