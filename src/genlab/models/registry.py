"""Models and presets by name: the tables and the functions that fill and read them.

A *model* is a class plus its config dataclass; a *preset* is a named choice of model,
model hyper-parameters and training settings (``seed-vae`` reproduces the seed document).
genlab's own are registered in ``models/zoo.py`` (models) and ``models/presets.py`` (presets).
Users add their own with :func:`register_model` / :func:`register_preset`, without editing
genlab; a run folder records the model name, so the registration must happen (import your
module) before ``genlab.load`` of such a run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..configcheck import build_dataclass, check_memory, model_size, show
from ..errors import GenlabError
from .base import GenerativeModel


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[GenerativeModel]
    config_cls: type
    description: str


@dataclass(frozen=True)
class Preset:
    """A named model + settings. ``description`` says what it is (``genlab models`` prints it), ``why``
    in one line why genlab offers it and chose its settings (docs/presets.md prints both)."""

    name: str
    model: str
    description: str
    model_config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides: epochs, batch_size, ...
    why: str = ""


MODELS: dict[str, ModelEntry] = {}
PRESETS: dict[str, Preset] = {}


def register_model(name: str, cls: type[GenerativeModel], config_cls: type, description: str = "") -> None:
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config class for model {name!r} must be a dataclass")
    MODELS[name] = ModelEntry(name, cls, config_cls, description or (cls.__doc__ or "").strip().split("\n")[0])


def register_preset(name: str, model: str, description: str, model_config: dict | None = None,
                    train: dict | None = None, why: str = "") -> None:
    """Register preset ``name``: ``model`` (registered first) with ``model_config`` and the training
    settings ``train`` (TrainConfig fields: epochs, batch_size, precision ...); ``why`` is one line."""
    if model not in MODELS:
        raise KeyError(f"preset {name!r} names unknown model {model!r}")
    if "\n" in why:
        raise ValueError(f"preset {name!r}: 'why' is one line; measurements belong in the docs")
    PRESETS[name] = Preset(name, model, description, dict(model_config or {}), dict(train or {}), why)


def resolve(name: str) -> Preset:
    """A preset by name; a bare model name is a preset with that model's defaults."""
    if name in PRESETS:
        return PRESETS[name]
    if name in MODELS:
        return Preset(name, name, MODELS[name].description)
    known = ", ".join(sorted(set(PRESETS) | set(MODELS)))
    raise GenlabError(f"unknown model or preset {name!r}. Known: {known} (see `genlab models`).")


RENAMED_SETTINGS: dict[str, dict[str, str]] = {
    "mlp-gan": {"g_loss": "loss"},  # one name for the adversarial loss pair, as in every other GAN's config
}
"""Settings of genlab's models that have been renamed, by model name: ``{model: {old name: new name}}``.

A run folder's config.json keeps the names its settings had when it was written, and must load, sample,
evaluate and resume after a rename: :func:`stored_settings` reads the old names there as the new ones.
Settings given now (``--set``, ``genlab.train(**settings)``, a preset) must use the new name:
:func:`make_config` refuses an old one, naming the new, so that each setting has one name in scripts
and docs. A rename is one entry here; the config dataclass has only the new field."""


def stored_settings(model: str, values: Any, *, what: str, error: type[GenlabError] = GenlabError,
                    hint: str = "") -> Any:
    """A model config section stored by an earlier genlab (``values``, the ``model_config`` of a run's
    config.json) with its renamed settings (:data:`RENAMED_SETTINGS`) under their current names; the
    other settings, and a ``values`` that is not a JSON object (checked later), come back as they are.
    A section holding both the old and the new name of a setting raises ``error`` naming ``what``."""
    renamed = RENAMED_SETTINGS.get(model, {})
    if not isinstance(values, dict) or not any(old in values for old in renamed):
        return values
    out = dict(values)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            tail = f" {hint}" if hint else ""
            raise error(f"{what} holds both {old!r} and {new!r}, two names of one setting ({old!r} is its name "
                        f"before it was renamed {new!r}); keep only {new!r}.{tail}")
        out[new] = out.pop(old)
    return out


def make_config(model: str, values: dict[str, Any], *, what: str | None = None, error: type[GenlabError] = GenlabError,
                hint: str = "", sep: str = " "):
    """Build model ``model``'s config dataclass from JSON-like values, each checked against the field's
    type and range (``genlab.configcheck``; lists become tuples). A bad value raises ``error`` naming
    ``what`` (default "model 'NAME' setting"), the field, the value and the type expected; a setting under
    its name before a rename (:data:`RENAMED_SETTINGS`) is refused naming its current one (a stored
    run's section goes through :func:`stored_settings` first)."""
    if model not in MODELS:
        raise GenlabError(f"unknown model {model!r}; registered: {', '.join(sorted(MODELS))}. "
                          "If it is your own model, import the module that registers it first.")
    entry = MODELS[model]
    what = what or f"model {model!r} setting"
    for old, new in RENAMED_SETTINGS.get(model, {}).items():
        if isinstance(values, dict) and old in values:
            tail = f" {hint}" if hint else ""
            value = values[old] if isinstance(values[old], str) else show(values[old])
            raise error(f"{what}{sep}{old}: this setting is now called {new!r}; write {new}={value} instead.{tail}")
    return build_dataclass(entry.config_cls, values, what=what, error=error, hint=hint, sep=sep)


TRAINING_MEMORY_FACTOR = 4  # float32 weights, their gradients and Adam's two moments


def build_model(model: str, config: dict[str, Any] | Any, image_shape, num_classes: int = 0) -> GenerativeModel:
    """Instantiate ``model`` for images of shape (C, H, W).

    The networks are first laid out on the meta device to count their parameters: settings that
    would need more memory than is available to train (weights, gradients and Adam's moments) are
    refused with the size, before anything is allocated."""
    if model not in MODELS:
        raise GenlabError(f"unknown model {model!r}; registered: {', '.join(sorted(MODELS))}. "
                          "If it is your own model, import the module that registers it first.")
    entry = MODELS[model]
    cfg = config if isinstance(config, entry.config_cls) else make_config(model, dict(config))
    shape = tuple(int(s) for s in image_shape)
    n = model_size(lambda: entry.cls(cfg, shape, num_classes))
    check_memory(n * 4 * TRAINING_MEMORY_FACTOR, f"model {model!r} with {n:,} parameters and buffers (float32 "
                 "weights, gradients and Adam's two moments)",
                 "Use smaller widths or latent size (hidden, width, z_dim ...: --set, or for a trained run the "
                 "model_config of its config.json) or smaller images (--image-size).")
    return entry.cls(cfg, shape, num_classes)
