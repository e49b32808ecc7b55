"""Image grids as PNG, with Pillow (no torchvision)."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..fileio import atomic_write_bytes


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, min_cell: int = 32,
               pad_value: int = 255) -> Image.Image:
    """Tile float images in [0, 1], shape (N, C, H, W), into one Pillow image.

    Small images are enlarged by an integer factor (nearest neighbour, so pixels stay
    honest) until a cell is at least ``min_cell`` pixels: 8x8 digits become 32x32.
    ``nrow`` images per row (default: a near-square grid).
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    n, c, h, w = x.shape
    scale = max(1, math.ceil(min_cell / max(h, w)))
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        h, w = h * scale, w * scale
    ncol = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / ncol)
    grid = np.full((rows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, np.uint8)
    arr = x.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, k = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[top:top + h, left:left + w] = arr[i]
    return Image.fromarray(grid[..., 0] if c == 1 else grid, "L" if c == 1 else "RGB")


def save_grid(images: torch.Tensor, path: str | Path, **kwargs) -> Path:
    """Write ``image_grid(images)`` as a PNG (atomically); returns the path."""
    buf = io.BytesIO()
    image_grid(images, **kwargs).save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def paired_rows(originals: torch.Tensor, others: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Interleave two image sets row by row (a row of originals, then the same images' partners),
    padding a short last row with white; tile the result with ``nrow=per_row``."""
    rows = []
    for i in range(0, originals.shape[0], per_row):
        a, b = originals[i:i + per_row].cpu(), others[i:i + per_row].cpu()
        if a.shape[0] < per_row:
            pad = torch.ones(per_row - a.shape[0], *a.shape[1:])
            a, b = torch.cat([a, pad]), torch.cat([b, pad])
        rows += [a, b]
    return torch.cat(rows)
