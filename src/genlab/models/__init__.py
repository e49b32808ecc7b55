"""Generative models behind one interface (``GenerativeModel``), registered by name."""
from .base import Batch, GenerativeModel
from .gan import MLPGAN, MLPGANConfig
from .registry import MODELS, PRESETS, Preset, build_model, register_model, register_preset, resolve
from .vae import MLPVAE, MLPVAEConfig
from . import zoo  # noqa: E402,F401  (registers genlab's models)
from . import presets  # noqa: E402,F401  (registers genlab's presets, after the models they name)

__all__ = [
    "Batch", "GenerativeModel", "MLPGAN", "MLPGANConfig", "MLPVAE", "MLPVAEConfig",
    "MODELS", "PRESETS", "Preset", "build_model", "register_model", "register_preset", "resolve",
]
