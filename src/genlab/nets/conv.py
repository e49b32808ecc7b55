"""Convolutional stacks sized from the image shape (C, H, W): DCGAN's generator and
discriminator (Radford et al. 2016), which double as a VAE's decoder and encoder.

The spatial plan: halve the height while it is even and larger than 7, giving a base size
(28 -> 14 -> 7, 32 -> 4, 64 -> 4, 8 -> 4) and a number of stride-2 stages. The generator
projects z to (channels, base, base) and doubles the resolution once per stage with a
transposed convolution (kernel 4, stride 2, padding 1: exactly x2); the discriminator mirrors
it with strided convolutions (exactly /2). Widths double as the resolution halves
(``width`` at full resolution, capped at 8 * width), as in DCGAN.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import GenlabError
from .conditioning import ProjectionHead
from .ema import ema_update  # noqa: F401  (its home before nets/ema.py)

MAX_WIDTH_MULTIPLIER = 8
MAX_BASE = 16


class ConvPlan(NamedTuple):
    """How a (C, H, W) image is built: ``stages`` stride-2 steps from a (base_h, base_w) grid."""

    channels: int
    stages: int
    base_h: int
    base_w: int

    def widths(self, width: int) -> list[int]:
        """Feature channels from full resolution (index 0) down to the base grid (index stages - 1)."""
        return [width * min(2 ** i, MAX_WIDTH_MULTIPLIER) for i in range(self.stages)]


def conv_plan(image_shape: tuple[int, int, int]) -> ConvPlan:
    """The plan for ``image_shape``, or a GenlabError naming the sizes that work."""
    c, h, w = (int(s) for s in image_shape)
    stages, base = 0, h
    while base % 2 == 0 and base > 7:
        base //= 2
        stages += 1
    ok = stages > 0 and base <= MAX_BASE and w % (2 ** stages) == 0 and 1 <= w // 2 ** stages <= MAX_BASE
    if not ok:
        raise GenlabError(
            f"the convolutional networks cannot be built for {h}x{w} images: they halve the size "
            f"while it is even and above 7, and need at least one halving and a base of at most "
            f"{MAX_BASE} pixels (and the width to halve as often). Sizes that work include 8, 12, 16, 20, "
            "24, 28, 32, 48, 64, 96 and 128; resize the data, e.g. with --image-size 32.")
    return ConvPlan(c, stages, base, w // 2 ** stages)


def _transposed(in_ch: int, out_ch: int, bias: bool) -> list[nn.Module]:
    """x2 by a transposed convolution, kernel 4, stride 2, padding 1 (DCGAN)."""
    return [nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=bias)]


def _nearest(in_ch: int, out_ch: int, bias: bool) -> list[nn.Module]:
    """x2 by nearest-neighbour resizing then a 3x3 convolution, which cannot draw the checkerboard
    patterns of uneven transposed-convolution overlap (Odena et al. 2016); about 2x the compute."""
    return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=bias)]


UPSAMPLERS = {"transposed": _transposed, "nearest": _nearest}


class ConvDecoder(nn.Module):
    """z (B, in_dim) -> (B, out_channels, H, W) unbounded outputs (logits or distribution parameters).

    DCGAN's generator: linear projection to the base grid, then per stage an upsampling that
    doubles the resolution (``upsample``: "transposed" convolution, or "nearest" + 3x3 conv),
    BatchNorm (optional) and ReLU; the last stage outputs ``out_channels`` maps with no
    normalization or activation.
    """

    def __init__(self, in_dim: int, out_channels: int, image_shape, width: int = 64, batchnorm: bool = True,
                 upsample: str = "transposed"):
        super().__init__()
        if upsample not in UPSAMPLERS:
            raise GenlabError(f"unknown upsample {upsample!r}; choose one of: {', '.join(UPSAMPLERS)}")
        plan = conv_plan(image_shape)
        widths = plan.widths(width)
        self.plan = plan
        self.base_channels = widths[-1]
        self.project = nn.Linear(in_dim, widths[-1] * plan.base_h * plan.base_w, bias=not batchnorm)
        self.project_act = nn.Sequential(
            *([nn.BatchNorm2d(widths[-1])] if batchnorm else []), nn.ReLU())
        up = UPSAMPLERS[upsample]
        blocks: list[nn.Module] = []
        for i in reversed(range(1, plan.stages)):  # widths[i] -> widths[i - 1], resolution x2
            blocks += [*up(widths[i], widths[i - 1], not batchnorm),
                       *([nn.BatchNorm2d(widths[i - 1])] if batchnorm else []), nn.ReLU()]
        blocks += up(widths[0], out_channels, True)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(-1, self.base_channels, self.plan.base_h, self.plan.base_w)
        return self.blocks(self.project_act(h))


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> flat features (B, ``out_features``): DCGAN's discriminator body.

    Per stage a stride-2 convolution (kernel 4) that halves the resolution, BatchNorm
    (optional, never on the first stage, as in DCGAN) and LeakyReLU(0.2). The last stage's
    activations, flattened, are the features: the discriminator's logit head, a projection
    head or a VAE's posterior heads read them.
    """

    def __init__(self, image_shape, width: int = 64, batchnorm: bool = False):
        super().__init__()
        plan = conv_plan(image_shape)
        widths = plan.widths(width)
        self.plan = plan
        layers: list[nn.Module] = []
        in_ch = plan.channels
        for i, out_ch in enumerate(widths):
            norm = batchnorm and i > 0
            layers += [nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not norm),
                       *([nn.BatchNorm2d(out_ch)] if norm else []), nn.LeakyReLU(0.2)]
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.out_features = widths[-1] * plan.base_h * plan.base_w

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).flatten(1)


class ConvDiscriminator(nn.Module):
    """DCGAN's discriminator: ``ConvEncoder`` features phi(x), then a logit (a projection head
    when ``num_classes`` > 0). ``spectral_norm`` normalizes every weight (Miyato et al. 2018)."""

    def __init__(self, image_shape, width: int = 64, num_classes: int = 0, batchnorm: bool = False,
                 spectral_norm: bool = False, init: bool = True):
        super().__init__()
        if batchnorm and spectral_norm:
            raise GenlabError("choose BatchNorm or spectral normalization for the discriminator, not both.")
        self.body = ConvEncoder(image_shape, width, batchnorm)
        self.head = ProjectionHead(self.body.out_features, num_classes)
        if init:
            dcgan_init(self)
        if spectral_norm:
            apply_spectral_norm(self)

    def features(self, x: Tensor) -> Tensor:
        """phi(x): the last convolutional stage, flattened (B, F)."""
        return self.body(x)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The logit (B,), an unbounded score of how real x (with label y) looks."""
        return self.head(self.body(x), labels)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) of every Linear, Conv and Embedding weight in
    ``module``: W / sigma(W), sigma estimated by one power iteration per training forward pass.
    Uses torch's parametrization; returns the module (changed in place)."""
    for m in list(module.modules()):
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
            spectral_norm(m)
    return module


@torch.no_grad()
def dcgan_init(module: nn.Module) -> nn.Module:
    """Radford et al. 2016, section 4: weights ~ N(0, 0.02); BatchNorm scales ~ N(1, 0.02), shifts 0.
    Call before ``apply_spectral_norm`` (which re-parametrizes the weights)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
