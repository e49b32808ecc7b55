"""``npz:PATH``: images (and optionally labels and a test split) saved with ``numpy.savez``.

Keys (the first present wins)
  images: ``images``, ``x``, ``arr_0``       labels: ``labels``, ``y`` (``arr_1`` when images are ``arr_0``)
  optional: ``test_images`` + ``test_labels`` (explicit test split), ``class_names`` (1-D strings)
Layouts: (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}; when both axis 1 and axis 3
could be channels, channels-last is assumed. dtypes: uint8; other integers in 0..255; floats in
[0, 1] (scaled by 255 and rounded). Labels: integers >= 0, shape (N,) or (N, 1).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from genlab.errors import DataError

IMAGE_KEYS = ("images", "x", "arr_0")
LABEL_KEYS = ("labels", "y")
_SAVE = "Save it with numpy.savez(path, images=..., labels=...)."


def _get(z, key: str, path: Path) -> np.ndarray:
    try:
        return z[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise DataError(f"cannot read array '{key}' from {path} ({e}); the file is corrupt or holds "
                        f"Python objects. {_SAVE}") from None


def _images(a: np.ndarray, path: Path, key: str) -> np.ndarray:
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[3] in (1, 3):
            a = a.transpose(0, 3, 1, 2)
        elif a.shape[1] not in (1, 3):
            raise DataError(f"'{key}' in {path} has shape {a.shape}: 4-D images need 1 or 3 channels, "
                            "as (N, H, W, C) or (N, C, H, W). Convert RGBA or other channel counts first.")
    else:
        raise DataError(f"'{key}' in {path} has shape {a.shape}: images must be (N, H, W), (N, H, W, C) "
                        "or (N, C, H, W).")
    if a.shape[0] == 0 or a.size == 0:
        raise DataError(f"'{key}' in {path} holds no images (shape {a.shape}).")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise DataError(f"'{key}' in {path} is {a.dtype} with values from {lo} to {hi}; integer images "
                            "must be in 0..255 (or save floats in [0, 1]).")
        return np.ascontiguousarray(a, dtype=np.uint8)
    if a.dtype.kind == "f":
        lo, hi = a.min(), a.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise DataError(f"'{key}' in {path} contains NaN or infinite values; fix the data before saving.")
        if lo < 0 or hi > 1:
            raise DataError(f"'{key}' in {path} holds floats from {lo:g} to {hi:g}; float images must be in "
                            "[0, 1]. If they are 0..255, save them as uint8.")
        return np.ascontiguousarray(np.rint(a.astype(np.float64 if a.itemsize > 4 else np.float32) * 255)
                                    .astype(np.uint8))
    raise DataError(f"'{key}' in {path} has dtype {a.dtype}; images must be uint8 (0..255) or float (0..1).")


def _labels(a: np.ndarray, path: Path, key: str, n: int, images_key: str) -> np.ndarray:
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise DataError(f"'{key}' in {path} has shape {a.shape}; labels must be 1-D, one per image.")
    if len(a) != n:
        raise DataError(f"'{key}' in {path} has {len(a)} labels but '{images_key}' has {n} images; "
                        "they must have one label per image.")
    if a.dtype.kind == "f" and len(a) and np.isfinite(a).all() and (a == np.round(a)).all():
        a = a.astype(np.int64)
    if a.dtype.kind not in "iub":
        raise DataError(f"'{key}' in {path} has dtype {a.dtype}; labels must be integers (class indices).")
    if len(a) and a.min() < 0:
        raise DataError(f"'{key}' in {path} holds negative labels (min {a.min()}); use class indices 0..K-1.")
    return a.astype(np.int64)


def load(path: Path):
    """Return (train_x, train_y, test_x or None, test_y or None, class_names or None, origin)."""
    if not path.exists():
        raise DataError(f"npz file not found: {path}. Check the path given as npz:PATH.")
    if path.is_dir():
        raise DataError(f"{path} is a folder; use folder:{path} for a folder of images, or give npz: a .npz file.")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a readable .npz file ({e}). {_SAVE}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is a .npy file holding one array, not an .npz archive. {_SAVE}")
    with z:
        keys = list(z.files)
        ikey = next((k for k in IMAGE_KEYS if k in keys), None)
        if ikey is None:
            raise DataError(f"{path} has no images array: looked for keys {', '.join(IMAGE_KEYS)} but found "
                            f"{', '.join(keys) if keys else 'no arrays'}. {_SAVE}")
        lkeys = LABEL_KEYS + (("arr_1",) if ikey == "arr_0" else ())
        lkey = next((k for k in lkeys if k in keys), None)
        train_x = _images(_get(z, ikey, path), path, ikey)
        train_y = _labels(_get(z, lkey, path), path, lkey, len(train_x), ikey) if lkey else None
        test_x = test_y = None
        if "test_images" in keys:
            test_x = _images(_get(z, "test_images", path), path, "test_images")
            if test_x.shape[1:] != train_x.shape[1:]:
                raise DataError(f"in {path}, 'test_images' are {test_x.shape[1:]} (C, H, W) but '{ikey}' are "
                                f"{train_x.shape[1:]}; both splits need the same image shape.")
            if "test_labels" in keys:
                test_y = _labels(_get(z, "test_labels", path), path, "test_labels", len(test_x), "test_images")
            if (test_y is None) != (train_y is None):
                have, lack = ("'test_labels'", f"'{lkey}'") if train_y is None else (f"'{lkey}'", "'test_labels'")
                raise DataError(f"{path} has {have} but no {lack}; label both splits or neither.")
        elif "test_labels" in keys:
            raise DataError(f"{path} has 'test_labels' but no 'test_images'; add the test images or drop the labels.")
        class_names = None
        if "class_names" in keys:
            names = _get(z, "class_names", path)
            if names.ndim != 1 or names.dtype.kind not in "US":
                raise DataError(f"'class_names' in {path} must be a 1-D array of strings, got {names.dtype} "
                                f"{names.shape}.")
            class_names = [str(s) for s in names.astype(str)]
    used = ", ".join(k for k in (ikey, lkey, "test_images" if test_x is not None else None,
                                 "test_labels" if test_y is not None else None) if k)
    return train_x, train_y, test_x, test_y, class_names, f"{path} (arrays: {used})"
