"""Building blocks sized from the image shape (C, H, W)."""
from .conditioning import ProjectionHead, cycle_labels, one_hot, require_labels
from .conv import (
    ConvDecoder,
    ConvDiscriminator,
    ConvEncoder,
    ConvPlan,
    apply_spectral_norm,
    conv_plan,
    dcgan_init,
    ema_update,
    has_batchnorm,
)
from .mlp import mlp

__all__ = [
    "ConvDecoder",
    "ConvDiscriminator",
    "ConvEncoder",
    "ConvPlan",
    "ProjectionHead",
    "apply_spectral_norm",
    "conv_plan",
    "cycle_labels",
    "dcgan_init",
    "ema_update",
    "has_batchnorm",
    "mlp",
    "one_hot",
    "require_labels",
]
