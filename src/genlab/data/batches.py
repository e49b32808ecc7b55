"""Batches as slices of one device-resident uint8 tensor: no per-sample Python, no workers."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from ..batch import Batch


class BatchIterator:
    """Shuffled mini-batches of ``images`` (uint8, (N, C, H, W), already on the training device).

    Each epoch draws one permutation from ``generator`` (CPU, seeded by the run), gathers a
    batch with one indexing op and converts it to float in [0, 1] on the device. ``start``
    skips the first batches of an epoch, so a resumed run sees exactly the batches it missed.

    Under torchrun, ``rank``/``world_size`` give each process a disjoint share of every batch:
    every process draws the same permutation (same seed), cuts the same global batches of
    ``batch_size`` images and keeps positions rank, rank + world_size, ... of each. A last
    batch with fewer images than processes is dropped (a process must never get none).
    ``channels_last`` hands out NHWC-strided batches (for convolutional models).
    """

    def __init__(self, images: Tensor, labels: Tensor | None, batch_size: int, generator: torch.Generator,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, channels_last: bool = False):
        if images.dtype != torch.uint8:
            raise TypeError("BatchIterator expects uint8 images")
        self.images, self.labels = images, labels
        self.batch_size, self.drop_last = int(batch_size), drop_last
        self.generator = generator
        self.rank, self.world_size = rank, world_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        n = self.images.shape[0]
        if self.drop_last or 0 < n % self.batch_size < self.world_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def global_size(self, b: int) -> int:
        """Images in batch ``b`` of an epoch, over all processes."""
        return min(self.batch_size, self.images.shape[0] - b * self.batch_size)

    def epoch(self, start: int = 0) -> Iterator[Batch]:
        perm = torch.randperm(self.images.shape[0], generator=self.generator).to(self.images.device)
        for b in range(start, len(self)):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            if self.world_size > 1:
                idx = idx[self.rank::self.world_size]
            x = self.images.index_select(0, idx).float().div_(255.0)
            if self.memory_format is not torch.contiguous_format:
                x = x.contiguous(memory_format=self.memory_format)
            y = self.labels.index_select(0, idx) if self.labels is not None else None
            yield Batch(x, y)
