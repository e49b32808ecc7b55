"""``folder:PATH``: a folder of image files, optionally with one sub-folder per class.

Layout rules
  * Files are found recursively; only these extensions are read (any case): EXTENSIONS.
    Other files are ignored, and so are hidden files and folders (names starting with '.').
    Symlinked folders are followed (each real folder once).
  * The first-level sub-folder an image sits in (at any depth below it) is its class;
    ``class_names`` are those sub-folder names, sorted. Sub-folders without images are no class.
  * Only root-level images, no class sub-folders: unlabelled (labels None, num_classes 0).
  * Root-level images *and* class sub-folders: the root images form one more class named
    ROOT_CLASS ('.'), a name no sub-folder can have.
Pixels
  * Size: ``image_size`` resizes every image to a square (stretching, no crop, LANCZOS);
    without it all images must share one size (else DataError asking for --image-size).
  * Channels: ``channels`` converts; without it the result is 1 channel when every image is
    grayscale (modes 1, L, LA, I, I;16*, F, or a palette of grays) and 3 otherwise.
  * Transparency (RGBA, LA, palette transparency) is composited onto a white background.
  * 16-bit grayscale is scaled to 8 bits (v * 255 / 65535, rounded).
Decoding runs in a thread pool; the order is the sorted relative paths, so results are deterministic.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from genlab.data.transform import _LANCZOS, rgb_to_gray
from genlab.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ROOT_CLASS = "."
_GRAY = {"1", "L", "LA", "La", "F", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_WIDE = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def scan(root: Path) -> list[Path]:
    """Image files below ``root`` (see the module rules), sorted by their relative path."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(EXTENSIONS):
                found.append(Path(dirpath, f))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _composite_white(arr: np.ndarray) -> np.ndarray:
    """(H, W, C+1) with alpha last -> (H, W, C) over white."""
    color, alpha = arr[..., :-1].astype(np.uint32), arr[..., -1:].astype(np.uint32)
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _gray_palette(im: Image.Image) -> bool:
    pal = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    return bool(len(pal)) and bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())


def _pixels(im: Image.Image) -> tuple[np.ndarray, bool]:
    """An opened image -> ((H, W, 1 or 3) uint8, is_grayscale)."""
    mode = im.mode
    alpha = "A" in mode or "a" in mode or "transparency" in im.info
    if mode in _WIDE:
        a = np.asarray(im).astype(np.int64).clip(0, 65535)
        return ((a * 255 + 32767) // 65535).astype(np.uint8)[..., None], True
    if mode in ("P", "PA"):
        arr = _composite_white(np.asarray(im.convert("RGBA"))) if alpha else np.asarray(im.convert("RGB"))
        return (arr[..., :1], True) if _gray_palette(im) else (arr, False)
    if mode in _GRAY:
        if alpha:
            return _composite_white(np.asarray(im.convert("LA"))), True
        return np.asarray(im.convert("L"))[..., None], True
    if alpha:
        return _composite_white(np.asarray(im.convert("RGBA"))), False
    return np.asarray(im.convert("RGB")), False


def _decode(path: Path, size: int | None, channels: int | None):
    """Decode one file; returns (array HWC, is_gray) or the exception."""
    try:
        with Image.open(path) as im:
            if size is not None and im.format == "JPEG" and im.mode in ("L", "RGB"):
                im.draft(im.mode, (size, size))  # decode at a reduced scale (still >= size)
            arr, gray = _pixels(im)
        if size is not None and arr.shape[:2] != (size, size):
            src = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
            arr = np.asarray(src.resize((size, size), _LANCZOS)).reshape(size, size, -1)
        if channels is not None:
            arr = _to_channels(arr, channels)
        return arr, gray
    except Exception as e:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        return e


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    if arr.shape[2] == channels:
        return arr
    return np.repeat(arr, 3, axis=2) if channels == 3 else rgb_to_gray(arr, axis=2)


def load(root: Path, image_size: int | None = None, channels: int | None = None, progress: bool = True):
    """Return (images (N, C, H, W) uint8, labels (N,) int64 or None, class_names or None, origin)."""
    if not root.exists():
        raise DataError(f"image folder not found: {root}. Check the path given as folder:PATH.")
    if not root.is_dir():
        hint = f" For a .npz file use npz:{root}." if root.suffix.lower() == ".npz" else ""
        raise DataError(f"{root} is a file, not a folder; folder:PATH needs a folder of images.{hint}")
    paths = scan(root)
    if not paths:
        raise DataError(f"no images found in {root}: genlab reads files ending in {', '.join(EXTENSIONS)} "
                        "(any case, in the folder and its sub-folders; hidden files are skipped). "
                        "Add images or point folder: at the right folder.")

    workers = max(1, min(16, 2 * (os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(_decode, paths, [image_size] * len(paths), [channels] * len(paths)),
                            total=len(paths), desc=f"reading {root.name}", unit="img",
                            disable=not progress or len(paths) < 1000, leave=False))
    bad = [(p, r) for p, r in zip(paths, results) if isinstance(r, BaseException)]
    if bad:
        p, e = bad[0]
        more = f" ({len(bad) - 1} more files failed too)" if len(bad) > 1 else ""
        raise DataError(f"cannot read image {p}: {type(e).__name__}: {e}{more}. "
                        "Remove the file from the folder or replace it with a valid image.")

    arrays = [r[0] for r in results]
    if image_size is None:
        sizes: dict[tuple[int, int], Path] = {}
        for p, a in zip(paths, arrays):
            sizes.setdefault(a.shape[:2], p)
        if len(sizes) > 1:
            examples = "; ".join(f"{w}x{h} ({p})" for (h, w), p in list(sizes.items())[:3])
            raise DataError(f"images in {root} have {len(sizes)} different sizes (e.g. {examples}); "
                            "pass --image-size N (image_size=N) to resize them all to N x N.")
    if channels is None:
        channels = 1 if all(r[1] for r in results) else 3
        arrays = [_to_channels(a, channels) for a in arrays]
    images = np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))

    rel = [p.relative_to(root).parts for p in paths]
    groups = [parts[0] if len(parts) > 1 else None for parts in rel]
    if all(g is None for g in groups):
        labels, class_names = None, None
    else:
        groups = [ROOT_CLASS if g is None else g for g in groups]
        class_names = sorted(set(groups))
        index = {c: i for i, c in enumerate(class_names)}
        labels = np.fromiter((index[g] for g in groups), dtype=np.int64, count=len(groups))
    return images, labels, class_names, f"{len(paths)} image files under {root}"
