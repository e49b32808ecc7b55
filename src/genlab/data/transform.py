"""Array helpers shared by the sources: channel conversion, resizing, splitting.

All functions take and return uint8 numpy arrays shaped (N, C, H, W) unless stated otherwise.
They do no per-image Python work: resizing reproduces Pillow's LANCZOS resampler exactly
as two batched matrix products.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

from genlab.errors import DataError

_ONE = float(1 << 22)  # Pillow's fixed-point precision for 8-bit resampling
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS  # Pillow < 9.1 has no Resampling enum

#: Fraction of the images held out for testing when a source has no explicit split.
TEST_FRACTION = 0.1
#: Seed of the permutation used for every split genlab makes itself.
SPLIT_SEED = 0


def check_options(image_size, channels) -> None:
    """Raise DataError for an ``image_size`` / ``channels`` a user could have mistyped."""
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise DataError(f"image_size must be a positive integer (pixels per side), got {image_size!r}; "
                            "pass e.g. --image-size 32, or leave it out to keep the native size.")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}; "
                        "or leave it out to keep the native channels.")


def rgb_to_gray(rgb: np.ndarray, axis: int) -> np.ndarray:
    """ITU-R 601-2 luma with Pillow's fixed-point weights (same result as ``Image.convert('L')``)."""
    r, g, b = (np.take(rgb, i, axis=axis).astype(np.uint32) for i in range(3))
    gray = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    return np.expand_dims(gray.astype(np.uint8), axis)


def convert_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """Convert (N, C, H, W) between 1 and 3 channels; a no-op when ``channels`` is None or equal."""
    c = images.shape[1]
    if channels is None or channels == c:
        return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if c == 3 and channels == 1:
        return rgb_to_gray(images, axis=1)
    raise DataError(f"cannot convert images with {c} channels to {channels}")


def _lanczos(x: float) -> float:
    if not -3.0 <= x < 3.0:
        return 0.0

    def sinc(v: float) -> float:
        return 1.0 if v == 0.0 else math.sin(v * math.pi) / (v * math.pi)

    return sinc(x) * sinc(x / 3.0)


@functools.lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) fixed-point LANCZOS weights, computed exactly as Pillow's resampler does."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    k = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = [_lanczos((x - center + 0.5) / filterscale) for x in range(xmin, xmax)]
        total = 0.0
        for v in w:
            total += v
        for x, v in zip(range(xmin, xmax), w):
            v = v / total if total != 0.0 else v
            k[xx, x] = int(v * _ONE - 0.5) if v < 0 else int(v * _ONE + 0.5)
    return k


def _pass(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Resample the last axis of integer-valued float64 ``x`` with fixed-point weights ``k``; round and clip."""
    y = x @ k.T  # exact: integer products and sums stay far below 2**53
    return np.clip(np.floor((y + _ONE / 2) / _ONE), 0, 255)


def resize(images: np.ndarray, size: int | None) -> np.ndarray:
    """Resize (N, C, H, W) uint8 images to (N, C, size, size) with Pillow's LANCZOS filter.

    Uses Pillow's LANCZOS filter with Pillow's fixed-point weights, one pass per axis, each
    rounded to 8 bits, as matrix products over the whole batch (fast: no per-image Python).
    The result is identical to ``Image.resize((size, size), LANCZOS)`` for square images and
    whenever neither side shrinks; when both sides of a non-square image shrink, Pillow may run
    the passes in the other order, which can change pixels by the intermediate rounding.
    Non-square images are stretched, not cropped. A no-op when ``size`` is None or already met.
    """
    n, c, h, w = images.shape
    if size is None or (h == size and w == size):
        return images
    out = np.empty((n, c, size, size), dtype=np.uint8)
    kw = _weights(w, size) if w != size else None
    kh = _weights(h, size) if h != size else None
    step = max(1, (8 << 20) // (c * max(h, size) * max(w, size) * 8))  # ~64 MB of float64 per chunk
    vertical_first = h > size > w  # Pillow's order in this case; otherwise horizontal first
    for lo in range(0, n, step):
        x = images[lo:lo + step].astype(np.float64)
        for axis in (("h", "w") if vertical_first else ("w", "h")):
            if axis == "w" and kw is not None:
                x = _pass(x, kw)
            elif axis == "h" and kh is not None:
                x = _pass(x.swapaxes(2, 3), kh).swapaxes(2, 3)
        out[lo:lo + step] = x
    return out


def apply(images: np.ndarray, image_size: int | None, channels: int | None) -> np.ndarray:
    """Convert channels and resize, doing the cheaper-first order; returns a contiguous array."""
    if channels is not None and channels < images.shape[1]:
        images = resize(convert_channels(images, channels), image_size)
    else:
        images = convert_channels(resize(images, image_size), channels)
    return np.ascontiguousarray(images)


def split_indices(n: int, n_test: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test indices: a ``default_rng(SPLIT_SEED)`` permutation, last ``n_test`` are test.

    ``n_test`` defaults to 10% of ``n`` (rounded), at least 1 and at most ``n - 1``.
    Both index arrays keep the permutation's order.
    """
    if n_test is None:
        n_test = min(max(1, int(round(n * TEST_FRACTION))), n - 1)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return perm[: n - n_test], perm[n - n_test:]
