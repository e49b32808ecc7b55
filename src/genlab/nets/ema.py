"""Exponential moving averages of weights (Polyak & Juditsky 1992), as the GANs and VAEs keep them."""
from __future__ import annotations

import torch
from torch import nn


def warmed_up_ema_decay(decay: float, updates: int) -> float:
    """The decay of the average's next update after ``updates`` updates of the online weights:
    min(decay, (1 + t) / (10 + t)), so that the average forgets the random initialization within
    the first few hundred updates instead of carrying it for 1 / (1 - decay) of them."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, decay: float) -> None:
    """Exponential moving average of weights: w_ema = decay * w_ema + (1 - decay) * w, and
    buffers (BatchNorm statistics, spectral-norm vectors) copied from ``online``."""
    for e, w in zip(ema.parameters(), online.parameters()):
        e.mul_(decay).add_(w, alpha=1.0 - decay)
    for e, b in zip(ema.buffers(), online.buffers()):
        e.copy_(b)
