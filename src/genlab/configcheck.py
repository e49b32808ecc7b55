"""Checks of configuration values and of memory before large allocations.

Config dataclasses (a model's config, ``TrainConfig``) are filled from JSON: ``--set KEY=VALUE``
on the command line and the sections of a run's ``config.json``, which a user may edit. Python does
not check dataclass field types, so a wrong type used to surface later as a TypeError deep in torch.
:func:`check_fields` checks each value against the field's type hint before the dataclass is built:

* ``int`` (a JSON integer, or a float with an integral value; never a bool), ``float`` (any finite
  number: NaN and infinities are refused), ``bool`` (``true`` / ``false`` only), ``str``;
* ``tuple[int, ...]`` / ``tuple[X, Y]`` / ``list[X]`` (a JSON list; tuples come back as tuples);
* ``X | None`` / ``Optional[X]``, ``Literal[...]`` choices; other hints are not checked.

On top of the types, the value ranges and choices of genlab's own configs are known here
(``_RULES``: widths and sizes at least 1, learning rates positive, decays in [0, 1), a loss among
the known ones ...), and a dataclass field may declare its own with ``field(metadata={"min": 1,
"max": ..., "choices": (...)})``. Every error names the field, the value given and what is expected.

Memory: :func:`check_memory` refuses an allocation estimated above genlab's memory limit
(:mod:`genlab.memory`; ``GENLAB_MEMORY_LIMIT`` overrides it, e.g. ``8G``), saying how much it would
take and what to change. :func:`model_size` counts a model's parameters and buffers by building it on
PyTorch's ``meta`` device, which allocates nothing.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import memory as _memory
from .errors import GenlabError

INT_LIMIT = 2 ** 63  # what a torch int64 (seeds, step counters) holds
SIZE_LIMIT = 2 ** 31 - 1  # widths, latent sizes, counts: beyond this no network can be built anyway


@dataclass(frozen=True)
class Rule:
    """What a field accepts beyond its type: a closed range, a lower bound that excludes the bound
    itself (``above``), or a list of choices (computed lazily: ``choices`` may be a callable)."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    items: bool = False  # the bounds apply to each item of a list/tuple field


def _activations() -> tuple[str, ...]:
    from .nets.mlp import ACTIVATIONS

    return tuple(ACTIVATIONS)


def _gan_losses() -> tuple[str, ...]:
    from .models.losses import GAN_LOSSES

    return tuple(GAN_LOSSES)


def _precisions() -> tuple[str, ...]:
    from .training.context import AUTO, PRECISIONS

    return (*PRECISIONS, AUTO)


def _lr_schedules() -> tuple[str, ...]:
    from .training.trainer import LR_SCHEDULES

    return tuple(LR_SCHEDULES)


_SIZE = Rule(min=1, max=SIZE_LIMIT)
_COUNT = Rule(min=0, max=SIZE_LIMIT)
_WIDTHS = Rule(min=1, max=SIZE_LIMIT, items=True)
_WEIGHT = Rule(min=0.0)
_LR = Rule(above=0.0)
_DECAY = Rule(min=0.0, below=1.0)
_FRACTION = Rule(min=0.0, below=1.0)

# Ranges and choices of genlab's own configs, by class name then field. Settings that a model's own
# constructor already refuses with a clear message (prior, prior_fit_every, likelihood, upsample, n_critic,
# iwae_k, encoder_refit_*) are left to it; their types are still checked here.
_RULES: dict[str, dict[str, Rule]] = {
    "MLPVAEConfig": {
        "hidden": _WIDTHS, "decoder_hidden": _WIDTHS, "z_dim": _SIZE, "activation": Rule(choices=_activations),
        "lr": _LR, "beta": _WEIGHT, "kl_warmup_steps": _COUNT, "prior_components": _COUNT,
        "prior_fit_images": _COUNT, "ema_decay": _DECAY,
    },
    "MLPGANConfig": {
        "z_dim": _SIZE, "hidden": _SIZE, "g_activation": Rule(choices=_activations),
        "d_activation": Rule(choices=_activations), "loss": Rule(choices=_gan_losses), "lr": _LR,
        "beta1": _DECAY, "beta2": _DECAY,
    },
    "ConvVAEConfig": {
        "z_dim": _SIZE, "width": _SIZE, "gaussian_std": _WEIGHT, "beta": _WEIGHT, "kl_warmup_steps": _COUNT,
        "iwae_k": Rule(max=SIZE_LIMIT), "prior_components": _COUNT, "prior_fit_images": _COUNT, "lr": _LR,
    },
    "DCGANConfig": {
        "z_dim": _SIZE, "width": _SIZE, "loss": Rule(choices=_gan_losses), "gp_weight": _WEIGHT,
        "r1_gamma": _WEIGHT, "n_critic": Rule(max=SIZE_LIMIT), "lr": _LR, "d_lr": _WEIGHT,
        "beta1": _DECAY, "beta2": _DECAY, "ema_decay": _DECAY,
    },
    "VAEGANConfig": {
        "z_dim": _SIZE, "width": _SIZE, "gamma": _WEIGHT, "beta": _WEIGHT, "loss": Rule(choices=_gan_losses),
        "lr": _LR, "beta1": _DECAY, "beta2": _DECAY,
    },
    "TrainConfig": {
        "epochs": _SIZE, "batch_size": _SIZE, "seed": Rule(min=-2 ** 63, max=2 ** 64 - 1), "max_steps": _SIZE,
        "max_seconds": Rule(above=0.0), "log_every": _SIZE, "sample_every": _COUNT, "num_samples": _SIZE,
        "checkpoint_minutes": Rule(min=0.0), "precision": Rule(choices=_precisions),
        "lr_schedule": Rule(choices=_lr_schedules),
    },
}


def _rule_for(cls: type, f: dataclasses.Field) -> Rule | None:
    meta = f.metadata or {}
    if any(k in meta for k in ("min", "max", "choices")):
        return Rule(min=meta.get("min"), max=meta.get("max"), choices=meta.get("choices"))
    if cls.__module__.startswith("genlab."):
        return _RULES.get(cls.__name__, {}).get(f.name)
    return None


# ----------------------------------------------------------------------------- values


def show(value: Any, limit: int = 60) -> str:
    """A value as a user would write it (JSON-like), cut to ``limit`` characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float) and not math.isfinite(value):
        text = str(value)
    else:
        text = repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Mismatch(Exception):
    """A value that does not fit a hint: ``expected`` says what would."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(_describe(a) for a in inner)
        return f"{text} or null" if len(inner) < len(args) else text
    if origin is typing.Literal:
        return "one of " + ", ".join(show(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            example = ", e.g. [512, 256]" if args[0] is int else ""
            return f"a list of {_plural(args[0])}{example}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} items ({', '.join(_describe(a) for a in args)})"
    if origin is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict or hint is dict:
        return "a JSON object"
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(hint, _describe(hint))


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` (lists to tuples, integral floats to int), or _Mismatch."""
    if hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch("null")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a)
            except _Mismatch:
                pass
        raise _Mismatch(_describe(hint))
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch(_describe(hint))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("true or false")
    if hint is int:
        if isinstance(value, bool):
            raise _Mismatch("an integer")
        if isinstance(value, int):
            if not -INT_LIMIT <= value < 2 * INT_LIMIT:
                raise _Mismatch("an integer of at most 64 bits")
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return _coerce(int(value), int)
        raise _Mismatch("an integer")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch("a number")
        try:
            out = float(value)
        except OverflowError:
            raise _Mismatch("a finite number") from None
        if not math.isfinite(out):
            raise _Mismatch("a finite number (not NaN or infinite)")
        return out
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("a string")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(_describe(hint))
        if origin is list:
            item = args[0] if args else Any
            return [_coerce(v, item) for v in value]
        if len(args) == 2 and args[1] is Ellipsis:
            try:
                return tuple(_coerce(v, args[0]) for v in value)
            except _Mismatch:
                raise _Mismatch(_describe(hint)) from None
        if args and len(value) != len(args):
            raise _Mismatch(_describe(hint))
        try:
            return tuple(_coerce(v, a) for v, a in zip(value, args)) if args else tuple(value)
        except _Mismatch:
            raise _Mismatch(_describe(hint)) from None
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch("a JSON object")
    return value  # a hint this checker does not know: left to the class


def _number_text(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _check_rule(value: Any, rule: Rule) -> str | None:
    """What is wrong with ``value`` under ``rule`` (None: nothing)."""
    if value is None:
        return None
    if rule.items and isinstance(value, (list, tuple)):
        if not value:
            return "a list of at least one item"
        for v in value:
            problem = _check_rule(v, dataclasses.replace(rule, items=False))
            if problem:
                return f"every item {problem.removeprefix('a value ')}"
        return None
    if rule.choices is not None:
        choices = rule.choices() if callable(rule.choices) else rule.choices
        if value not in choices:
            return "one of " + ", ".join(show(c) for c in choices)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    parts = []
    if rule.min is not None:
        parts.append(f">= {_number_text(rule.min)}")
    if rule.above is not None:
        parts.append(f"> {_number_text(rule.above)}")
    if rule.below is not None:
        parts.append(f"< {_number_text(rule.below)}")
    if rule.max is not None:
        parts.append(f"<= {_number_text(rule.max)}")
    ok = ((rule.min is None or value >= rule.min) and (rule.above is None or value > rule.above)
          and (rule.below is None or value < rule.below) and (rule.max is None or value <= rule.max))
    return None if ok else "a value " + " and ".join(parts)


def check_fields(cls: type, values: Any, *, what: str, error: type[GenlabError] = GenlabError,
                 hint: str = "", sep: str = " ") -> dict[str, Any]:
    """``values`` (a JSON object) checked and converted for dataclass ``cls``: every key a field,
    every value of the field's type (lists become tuples for tuple fields) and within its rule.

    Raises ``error`` naming ``what`` (e.g. "model 'mlp-vae' setting", "/run/config.json: train"; joined
    to the field name by ``sep``), the field, the value and what it expects, then ``hint`` (what to do)."""
    tail = f" {hint}" if hint else ""
    if not isinstance(values, Mapping):
        raise error(f"{what} must be a JSON object of settings, got {show(values)}.{tail}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    bad_keys = [k for k in values if not isinstance(k, str)]
    unknown = sorted(str(k) for k in values if k not in fields or k in bad_keys)
    if unknown:
        raise error(f"{what}: unknown setting(s) {', '.join(show(k, 40) for k in unknown)}; the settings are: "
                    f"{', '.join(sorted(fields))}.{tail}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations of a user's class: types not checked
        hints = {}
    out: dict[str, Any] = {}
    for key, value in values.items():
        f = fields[key]
        try:
            v = _coerce(value, hints.get(key, Any))
        except _Mismatch as m:
            raise error(f"{what}{sep}{key} = {show(value)} is not valid: expected {m.expected}.{tail}") from None
        rule = _rule_for(cls, f)
        problem = _check_rule(v, rule) if rule is not None else None
        if problem:
            raise error(f"{what}{sep}{key} = {show(value)} is not valid: expected {problem}.{tail}")
        out[key] = v
    return out


def build_dataclass(cls: type, values: Any, *, what: str, error: type[GenlabError] = GenlabError,
                    hint: str = "", sep: str = " "):
    """``cls(**check_fields(...))``: the dataclass, or one clear ``error``."""
    return cls(**check_fields(cls, values, what=what, error=error, hint=hint, sep=sep))


def check_number(value: Any, option: str, *, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None, integer: bool = False) -> None:
    """A clear error for a numeric command-line option out of range, or not finite (NaN, inf)."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise GenlabError(f"{option} must be a finite number, got {value}.")
    parts, ok = [], True
    if minimum is not None:
        parts.append(f"at least {_number_text(minimum)}")
        ok &= value >= minimum
    if above is not None:
        parts.append(f"greater than {_number_text(above)}")
        ok &= value > above
    if maximum is not None:
        parts.append(f"at most {_number_text(maximum)}")
        ok &= value <= maximum
    if not ok:
        raise GenlabError(f"{option} must be {' and '.join(parts)}, got {_number_text(value)}.")


# ----------------------------------------------------------------------------- memory

def check_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse to allocate about ``nbytes`` for ``what`` beyond genlab's memory limit
    (:mod:`genlab.memory`): a GenlabError saying how much, the limit and ``fix``."""
    _memory.check_memory(nbytes, what, fix)


def model_size(build: Callable[[], Any]) -> int:
    """Elements in the parameters and buffers of the module ``build()`` returns, built on the meta
    device (no memory; the global random generator is not advanced). A configuration whose networks
    cannot even be laid out (sizes that overflow) raises a GenlabError."""
    import torch

    try:
        with torch.device("meta"):
            module = build()
    except GenlabError:
        raise
    except (RuntimeError, ValueError, OverflowError) as e:
        raise GenlabError(f"these settings give networks too large to build ({e}); use smaller widths.") from None
    return sum(t.numel() for t in module.parameters()) + sum(t.numel() for t in module.buffers())


# ----------------------------------------------------------------------------- run folders' config.json


@dataclass
class DataRecord:
    """The ``data`` section of a run's config.json: the source and what the model was built for."""

    spec: str
    image_shape: tuple[int, int, int]
    num_classes: int = 0
    data_dir: str | None = None
    image_size: int | None = None
    channels: int | None = None
    class_names: list | None = None
    train_size: int | None = None
    test_size: int | None = None
    origin: Any = None


_RULES["DataRecord"] = {"image_shape": _WIDTHS, "num_classes": _COUNT, "image_size": _SIZE,
                        "channels": Rule(choices=(1, 3)), "train_size": _COUNT, "test_size": _COUNT}

_TOP_LEVEL = {"name": str, "model": str, "model_config": dict, "train": dict, "data": dict}


def check_run_config(config: Any, path: Path, run_format: str) -> dict[str, Any]:
    """A run's parsed config.json, checked section by section; the ``train`` and ``data`` sections come
    back converted (integral floats to int). Raises RunError naming ``path``, the field, the value and
    the type expected. ``model_config`` comes back with renamed settings under their current names
    (``models.registry.stored_settings``) and is checked against the model's config class when that model
    is registered (an unknown model is reported when the model is built)."""
    from .errors import RunError
    from .models.registry import MODELS, make_config, stored_settings
    from .training.trainer import TrainConfig

    fix = "Fix the file or restore it from a copy."
    if not isinstance(config, dict):
        raise RunError(f"{path} is not a genlab run config: it holds {show(config)}, not a JSON object. {fix}")
    if config.get("format") != run_format:
        raise RunError(f"{path} has format {show(config.get('format'))}; this genlab reads {run_format!r}.")
    for key, kind in _TOP_LEVEL.items():
        if key not in config:
            raise RunError(f"{path} has no {key!r} section; a run's config.json has {', '.join(_TOP_LEVEL)}. {fix}")
        if not isinstance(config[key], kind):
            raise RunError(f"{path}: {key} = {show(config[key])} is not valid: expected "
                           f"{_describe(kind)}. {fix}")
    data = dict(config["data"])
    known = {f.name for f in dataclasses.fields(DataRecord)}
    extra = {k: v for k, v in data.items() if k not in known}  # fields of newer genlab versions: kept as they are
    for key in ("spec", "image_shape"):
        if key not in data:
            raise RunError(f"{path}: the data section has no {key!r}. {fix}")
    checked = check_fields(DataRecord, {k: v for k, v in data.items() if k in known}, what=f"{path}: data",
                           error=RunError, hint=fix, sep=".")
    train = check_fields(TrainConfig, config["train"], what=f"{path}: train", error=RunError, hint=fix, sep=".")
    # settings stored under a name they had before a rename are read under the current one (models.registry)
    model_config = stored_settings(config["model"], config["model_config"], what=f"{path}: model_config",
                                   error=RunError, hint=fix)
    if config["model"] in MODELS:
        make_config(config["model"], model_config, what=f"{path}: model_config", error=RunError, hint=fix, sep=".")
    return {**config, "model_config": model_config,
            "data": {**data, **{k: list(v) if isinstance(v, tuple) else v for k, v in checked.items()}, **extra},
            "train": {**config["train"], **train}}


def coerce(value: Any, hint: Any) -> Any:
    """``value`` converted to type ``hint`` by the rules of :func:`check_fields` (finite numbers, integral
    floats to int, lists to tuples ...); a ValueError saying what was expected when it does not fit."""
    try:
        return _coerce(value, hint)
    except _Mismatch as m:
        raise ValueError(f"expected {m.expected}, got {show(value)}") from None
