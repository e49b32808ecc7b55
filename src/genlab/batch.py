"""The training batch: what the data layer hands out and every model's ``train_step`` takes.

It lives at the top of the package, below both ``genlab.data`` and ``genlab.models``, so that the
data layer never imports the models (``genlab.models.base.Batch`` is this same class)."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Batch(NamedTuple):
    """A training batch: float images in [0, 1], shape (B, C, H, W), and int64 labels or None."""

    images: Tensor
    labels: Tensor | None = None
