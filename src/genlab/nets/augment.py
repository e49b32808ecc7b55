"""Differentiable augmentation of a GAN's discriminator inputs (DiffAugment, Zhao et al. 2020).

With few training images a discriminator memorises them and its feedback to the generator
degrades. DiffAugment shows D only augmented images, real and generated alike, in both the
discriminator's and the generator's step. Because every operation is differentiable with respect
to the pixels, the generator's gradient flows back through the augmentation, and because the fakes
are augmented exactly like the reals, the augmentation does not leak into the samples (G is not
pushed to draw translated or cut-out images: D never sees an un-augmented image to compare).

A policy is a comma-separated list of operation names, applied in the order given, each with its
own random parameters per image (Zhao et al. 2020, section 3 and their released policy
"color,translation,cutout"):

``color``        brightness: add b ~ U(-1/4, 1/4) to every pixel (images in [0, 1]: the paper's
                 U(-1/2, 1/2) on its [-1, 1] scale); saturation (3 channels only): scale each
                 pixel's deviation from its own channel mean by s ~ U(0, 2); contrast: scale the
                 deviation from the image's mean by c ~ U(1/2, 3/2). No clipping, as in the paper.
``translation``  shift by whole pixels, up to 1/8 of the height and width each way (rounded),
                 the uncovered border filled with 0.
``cutout``       zero a square of half the image's height and width (rounded), its centre uniform
                 over the image, the part that falls outside the image dropped.

Images are float in [0, 1], (B, C, H, W), as every genlab discriminator sees them. The random
parameters come from the model's ``StepContext`` (``ctx.rand``, one row per image), the stream every
other per-image noise of a ``train_step`` comes from: a run is reproducible, resumes bit-identically,
and under torchrun each image gets the parameters it would get in a single process (so call
:class:`DiffAugment` on one batch-sized tensor at a time, never on real and fake concatenated).
The operations below take their parameters as arguments, so that they can be tested and
differentiated with fixed ones.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import GenlabError

AUGMENT_OPS = ("color", "translation", "cutout")
"""The operation names a policy may use, in the order of the paper's policy."""

TRANSLATION_RATIO = 1 / 8  # largest shift, as a fraction of the image's height / width
CUTOUT_RATIO = 1 / 2  # side of the cut-out square, as a fraction of the image's height / width
BRIGHTNESS = 0.25  # b ~ U(-BRIGHTNESS, BRIGHTNESS) on the [0, 1] pixel scale


class _Draws(Protocol):
    """What the augmentation needs of a ``StepContext``: per-image uniform noise."""

    def rand(self, *shape: int, device: torch.device | None = None, batch_dim: int = 0) -> Tensor: ...


def parse_policy(policy: str, field: str = "augment") -> tuple[str, ...]:
    """The operation names of the comma-separated ``policy`` ("" or blanks: none). Raises a
    GenlabError naming ``field``, the value and the allowed names for anything else."""
    if not isinstance(policy, str):
        raise GenlabError(f"{field} = {policy!r} is not valid: expected a comma-separated list of "
                          f"{', '.join(AUGMENT_OPS)} (or \"\" for no augmentation).")
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    bad = [name for name in names if name not in AUGMENT_OPS]
    if bad:
        raise GenlabError(f"{field} = {policy!r} is not valid: unknown augmentation {', '.join(map(repr, bad))}; "
                          f"use a comma-separated list of {', '.join(AUGMENT_OPS)} (e.g. "
                          f"\"{','.join(AUGMENT_OPS)}\", Zhao et al. 2020), or \"\" for none.")
    if len(set(names)) < len(names):
        raise GenlabError(f"{field} = {policy!r} is not valid: an augmentation is named twice.")
    return names


def _rounded(size: int, ratio: float) -> int:
    """``size * ratio`` rounded half up, as a pixel count."""
    return int(size * ratio + 0.5)


def _per_image(t: Tensor, x: Tensor) -> Tensor:
    """One value per image, (B,), shaped (B, 1, 1, 1) and in x's dtype to broadcast over x."""
    return t.to(x.dtype).view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------- the operations


def translate(x: Tensor, shift_y: Tensor, shift_x: Tensor) -> Tensor:
    """x shifted by whole pixels, per image: ``out[b, :, i, j] = x[b, :, i - shift_y[b], j - shift_x[b]]``,
    0 where that falls outside the image (positive shifts move the content down and right).

    One gather from the image padded with a border of zeros: exact (no interpolation), and its
    gradient is the pixel's incoming gradient where it survives, 0 where it was shifted out."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device) - shift_y.view(-1, 1)).clamp(-1, h) + 1  # row in the padded image
    cols = (torch.arange(w, device=x.device) - shift_x.view(-1, 1)).clamp(-1, w) + 1
    index = (rows.unsqueeze(2) * (w + 2) + cols.unsqueeze(1)).view(b, 1, h * w).expand(b, c, h * w)
    return F.pad(x, (1, 1, 1, 1)).flatten(2).gather(2, index).view(b, c, h, w)


def cutout(x: Tensor, top: Tensor, left: Tensor, size: tuple[int, int]) -> Tensor:
    """x with the rows ``top[b] .. top[b] + size[0] - 1`` by columns ``left[b] .. left[b] + size[1] - 1``
    of each image set to 0 (the part inside the image; ``top`` / ``left`` may be negative)."""
    _, _, h, w = x.shape
    rows = torch.arange(h, device=x.device) - top.view(-1, 1)  # (B, H): row offset into the square
    cols = torch.arange(w, device=x.device) - left.view(-1, 1)
    inside = ((rows >= 0) & (rows < size[0])).unsqueeze(2) & ((cols >= 0) & (cols < size[1])).unsqueeze(1)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def brightness(x: Tensor, shift: Tensor) -> Tensor:
    """x + shift[b] on every pixel of image b."""
    return x + _per_image(shift, x)


def saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Each pixel's deviation from its own mean over the channels, scaled by factor[b] (0: grey)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * _per_image(factor, x) + mean


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Each pixel's deviation from the image's mean (over channels and pixels), scaled by factor[b]."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_image(factor, x) + mean


# ----------------------------------------------------------------------------- random parameters


def _uniform_int(u: Tensor, low: int, high: int) -> Tensor:
    """Integers uniform in [low, high] from u ~ U[0, 1)."""
    count = high - low + 1
    return (u * count).floor().long().clamp_(max=count - 1) + low


def random_color(x: Tensor, ctx: _Draws) -> Tensor:
    """Brightness, then saturation (3-channel images only: for one channel it is the identity), then
    contrast, each with its own factor per image."""
    n = x.shape[0]
    x = brightness(x, (ctx.rand(n, device=x.device) * 2 - 1) * BRIGHTNESS)
    if x.shape[1] == 3:
        x = saturation(x, ctx.rand(n, device=x.device) * 2)
    return contrast(x, ctx.rand(n, device=x.device) + 0.5)


def random_translation(x: Tensor, ctx: _Draws) -> Tensor:
    """A shift of up to 1/8 of the height and width each way (rounded), uniform per image."""
    n, _, h, w = x.shape
    u = ctx.rand(n, 2, device=x.device)
    sh, sw = _rounded(h, TRANSLATION_RATIO), _rounded(w, TRANSLATION_RATIO)
    return translate(x, _uniform_int(u[:, 0], -sh, sh), _uniform_int(u[:, 1], -sw, sw))


def random_cutout(x: Tensor, ctx: _Draws) -> Tensor:
    """A square of half the height and width (rounded) zeroed per image. Its centre is uniform over
    the image: H positions for an odd side, H + 1 (the corners included) for an even one, so that the
    square may hang over each border by up to half its side alike."""
    n, _, h, w = x.shape
    u = ctx.rand(n, 2, device=x.device)
    size = (_rounded(h, CUTOUT_RATIO), _rounded(w, CUTOUT_RATIO))
    top = _uniform_int(u[:, 0], 0, h - size[0] % 2) - size[0] // 2
    left = _uniform_int(u[:, 1], 0, w - size[1] % 2) - size[1] // 2
    return cutout(x, top, left, size)


_RANDOM_OPS = {"color": random_color, "translation": random_translation, "cutout": random_cutout}


class DiffAugment:
    """The augmentation a GAN's discriminator sees its inputs through: ``augment(x, ctx)`` applies the
    policy's operations in order, with parameters drawn from ``ctx`` per image. An empty policy is
    the identity (``x`` itself, no random numbers drawn) and is false in a boolean context.

    ``policy``: comma-separated names from ``AUGMENT_OPS``; ``field`` names the setting in errors."""

    def __init__(self, policy: str = "", field: str = "augment"):
        self.ops = parse_policy(policy, field)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, x: Tensor, ctx: _Draws) -> Tensor:
        for name in self.ops:
            x = _RANDOM_OPS[name](x, ctx)
        return x

    def __repr__(self) -> str:
        return f"DiffAugment({','.join(self.ops)!r})"
