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
Safety
  * Every image file must be a regular file (or a symlink to one): a FIFO, socket, device or broken
    symlink named like an image is refused with a DataError naming it, without being opened (a
    FIFO would block the read forever). It is refused rather than skipped because skipping would
    silently change the dataset.
  * Only the formats of EXTENSIONS are decoded, whatever the file holds (``FORMATS``).
  * Every file's header is read before any pixels are decoded: an image larger than
    MAX_IMAGE_PIXELS (after JPEG draft reduction when ``image_size`` is given) is refused, and the
    whole folder's decoded memory is estimated and checked against :mod:`genlab.data.guard`'s limit,
    so a small file declaring a huge image never gets decoded.
Decoding runs in a thread pool (fewer threads when images are large, to bound the memory decoding
takes); the order is the sorted relative paths, so results are deterministic.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from genlab.data import guard
from genlab.data.transform import _LANCZOS, rgb_to_gray, split_indices
from genlab.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ROOT_CLASS = "."
#: Pillow formats decoded (the ones EXTENSIONS name; MPO is how Pillow reads many cameras' JPEGs).
FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP", "TIFF")
#: The most pixels one image may have once decoded: 2**25, e.g. 8192 x 4096.
MAX_IMAGE_PIXELS = 1 << 25
#: Memory decoding one image may take per pixel (Pillow's buffer, conversions, alpha compositing).
DECODE_BYTES_PER_PIXEL = 24
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
    """(H, W, C+1) with alpha last -> (H, W, C) over white: (color * a + 255 * (255 - a) + 127) // 255.

    Computed in uint16, in place: the sum is at most 255 * 255 + 127 = 65152 < 2**16.
    """
    alpha = arr[..., -1:].astype(np.uint16)
    out = arr[..., :-1].astype(np.uint16)
    out *= alpha
    np.subtract(255, alpha, out=alpha)
    alpha *= 255
    out += alpha
    out += 127
    out //= 255
    return out.astype(np.uint8)


def _gray_palette(im: Image.Image) -> bool:
    pal = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    return bool(len(pal)) and bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())


def _pixels(im: Image.Image) -> tuple[np.ndarray, bool]:
    """An opened image -> ((H, W, 1 or 3) uint8, is_grayscale)."""
    mode = im.mode
    alpha = "A" in mode or "a" in mode or "transparency" in im.info
    if mode in _WIDE:
        a = np.asarray(im).clip(0, 65535).astype(np.int32)  # a * 255 + 32767 < 2**31
        a *= 255
        a += 32767
        a //= 65535
        return a.astype(np.uint8)[..., None], True
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


@functools.lru_cache(maxsize=1)
def _formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin: Image.open(formats=...) looks each name up
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _open(path: Path, f) -> Image.Image:
    return Image.open(f, formats=_formats())


def _probe(path: Path, size: int | None):
    """Read one file's header only: ((width, height) as it will be decoded, mode), or the exception."""
    try:
        with guard.open_regular(path, "image") as f, _open(path, f) as im:
            if size is not None and im.format == "JPEG" and im.mode in ("L", "RGB"):
                im.draft(im.mode, (size, size))  # the reduced scale decoding will use
            return tuple(im.size), im.mode
    except Exception as e:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        return e


def _too_big(path: Path, wh) -> DataError | None:
    w, h = wh
    if w * h > MAX_IMAGE_PIXELS:
        return DataError(f"image {path} is {w} x {h} pixels ({w * h / 1e6:.1f} megapixels); genlab decodes images "
                         f"of at most {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels. Downscale the file (e.g. to at most "
                         "4096 pixels a side), or remove it from the folder.")
    return None


def _decode(path: Path, size: int | None, channels: int | None):
    """Decode one file; returns (array HWC, is_gray) or the exception."""
    try:
        with guard.open_regular(path, "image") as f, _open(path, f) as im:
            if size is not None and im.format == "JPEG" and im.mode in ("L", "RGB"):
                im.draft(im.mode, (size, size))  # decode at a reduced scale (still >= size)
            big = _too_big(path, im.size)  # checked again: the file may have changed since it was probed
            if big is not None:
                return big
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


def _raise_bad(paths: list[Path], results: list) -> None:
    bad = [(p, r) for p, r in zip(paths, results) if isinstance(r, BaseException)]
    if bad:
        p, e = bad[0]
        if isinstance(e, DataError):
            raise e
        more = f" ({len(bad) - 1} more files failed too)" if len(bad) > 1 else ""
        raise DataError(f"cannot read image {p}: {type(e).__name__}: {e}{more}. "
                        "Remove the file from the folder or replace it with a valid image.")


_GRAY_MODES = _GRAY | {"I;16", "I;16B", "I;16L", "I;16N"}


def _check_memory(root: Path, paths, headers, image_size, channels, workers: int) -> int:
    """Check the memory decoding the folder will take (DataError if too much); return the threads to use.

    Counted: every decoded image held until all are decoded, the (N, C, H, W) array they are copied
    into (2 bytes per final pixel), the float32 copy of the test split that evaluation makes, and
    DECODE_BYTES_PER_PIXEL per pixel for each image being decoded at once.
    """
    n = len(paths)
    if channels is None:  # palette images may turn out gray, but count them as colour
        channels = 1 if all(mode in _GRAY_MODES for _, mode in headers) else 3
    h, w = (image_size, image_size) if image_size is not None else headers[0][0][::-1]
    per = channels * h * w
    n_test = len(split_indices(n)[1]) if n > 1 else 0
    biggest = max(wh[0] * wh[1] for wh, _ in headers)
    limit, _ = guard.memory_limit()
    decode_each = biggest * DECODE_BYTES_PER_PIXEL
    workers = max(1, min(workers, (limit // 4) // max(1, decode_each)))  # big images: fewer at once
    need = 2 * n * per + 4 * n_test * per + workers * decode_each
    guard.check_memory(need, f"reading {n:,} images of {channels} x {h} x {w} (C x H x W) from {root}",
                       "Use a smaller --image-size (image_size=...)" + (", or --channels 1" if channels == 3 else "")
                       + ", or fewer or smaller images.")
    return workers


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

    for p in paths:  # a FIFO or device named like an image is refused before anything is opened
        guard.check_regular(p, "image")

    workers = max(1, min(16, 2 * (os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:
        headers = list(pool.map(_probe, paths, [image_size] * len(paths)))
    _raise_bad(paths, headers)
    for p, (wh, _) in zip(paths, headers):
        big = _too_big(p, wh)
        if big is not None:
            raise big
    if image_size is None:
        sizes: dict[tuple[int, int], Path] = {}
        for p, (wh, _) in zip(paths, headers):
            sizes.setdefault(wh, p)
        if len(sizes) > 1:
            examples = "; ".join(f"{w}x{h} ({p})" for (w, h), p in list(sizes.items())[:3])
            raise DataError(f"images in {root} have {len(sizes)} different sizes (e.g. {examples}); "
                            "pass --image-size N (image_size=N) to resize them all to N x N.")
    workers = _check_memory(root, paths, headers, image_size, channels, workers)

    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(_decode, paths, [image_size] * len(paths), [channels] * len(paths)),
                            total=len(paths), desc=f"reading {root.name}", unit="img",
                            disable=not progress or len(paths) < 1000, leave=False))
    _raise_bad(paths, results)

    arrays, grays = [r[0] for r in results], [r[1] for r in results]
    del results
    if image_size is None:
        sizes = {}
        for p, a in zip(paths, arrays):
            sizes.setdefault(a.shape[:2], p)
        if len(sizes) > 1:  # the files changed since their headers were read
            examples = "; ".join(f"{w}x{h} ({p})" for (h, w), p in list(sizes.items())[:3])
            raise DataError(f"images in {root} have {len(sizes)} different sizes (e.g. {examples}); "
                            "pass --image-size N (image_size=N) to resize them all to N x N.")
    if channels is None:
        channels = 1 if all(grays) else 3
    h, w = arrays[0].shape[:2]
    images = np.empty((len(arrays), channels, h, w), dtype=np.uint8)
    for i, a in enumerate(arrays):
        images[i] = _to_channels(a, channels).transpose(2, 0, 1)
        arrays[i] = None  # each decoded image is freed once copied: at most one extra copy at a time

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
