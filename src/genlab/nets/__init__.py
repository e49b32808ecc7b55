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
    has_batchnorm,
)
from .ema import ema_update, warmed_up_ema_decay
from .mlp import MLPDecoder, MLPEncoder, mlp

__all__ = [
    "ConvDecoder",
    "ConvDiscriminator",
    "ConvEncoder",
    "ConvPlan",
    "MLPDecoder",
    "MLPEncoder",
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
    "warmed_up_ema_decay",
]
