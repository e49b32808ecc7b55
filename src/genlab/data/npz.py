"""``npz:PATH``: images (and optionally labels and a test split) saved with ``numpy.savez``.

Keys (the first present wins)
  images: ``images``, ``x``, ``arr_0``       labels: ``labels``, ``y`` (``arr_1`` when images are ``arr_0``)
  optional: ``test_images`` + ``test_labels`` (explicit test split), ``class_names`` (1-D strings)
Layouts: (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}; when both axis 1 and axis 3
could be channels, channels-last is assumed. dtypes: uint8; other integers in 0..255; floats in
[0, 1] (scaled by 255 and rounded). Labels: integers >= 0, shape (N,) or (N, 1).
"""

from __future__ import annotations

import contextlib
import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as fmt

from genlab.data import guard
from genlab.errors import DataError

IMAGE_KEYS = ("images", "x", "arr_0")
LABEL_KEYS = ("labels", "y")
_SAVE = "Save it with numpy.savez(path, images=..., labels=...)."


#: Most bytes deflate can expand one compressed byte to (1032:1 in theory), with slack for tiny members:
#: a zip entry claiming more than this is corrupt or forged, whatever its .npy header says.
_DEFLATE_RATIO, _DEFLATE_SLACK = 1100, 1 << 16
_MEMBER_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, RuntimeError,
                  NotImplementedError, SyntaxError, TypeError, struct.error)


class _Npz:
    """The arrays of an .npz (zip) file, each read only after its .npy header has been checked.

    ``numpy.load`` allocates whatever shape a member's header declares before reading its data;
    here the declared size is first compared with the member's size in the zip directory (which
    deflate bounds by the compressed size) and with the memory limit (:mod:`genlab.data.guard`).
    """

    def __init__(self, f, path: Path, save: str = _SAVE):
        self.path, self.save = path, save  # save: how to write a good file, for the errors
        self.zip = zipfile.ZipFile(f)
        self.members = {}
        for info in self.zip.infolist():
            if not info.is_dir():
                self.members.setdefault(info.filename.removesuffix(".npy"), info)
        self.files = list(self.members)

    def __contains__(self, key: str) -> bool:
        return key in self.members

    def get(self, key: str, copies: int = 1) -> np.ndarray:
        """Array ``key``; ``copies`` is how many arrays of its size the caller will hold at once."""
        path, info = self.path, self.members[key]
        where = f"array '{key}' in {path}"
        if info.compress_type == zipfile.ZIP_DEFLATED and \
                info.file_size > _DEFLATE_RATIO * info.compress_size + _DEFLATE_SLACK:
            raise DataError(f"{where} claims {info.file_size} bytes stored in {info.compress_size} compressed bytes, "
                            f"more than deflate can hold: the file is corrupt. {self.save}")
        try:
            with self.zip.open(info) as m:
                version = fmt.read_magic(m)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(m)
                elif version == (2, 0):
                    shape, fortran, dtype = fmt.read_array_header_2_0(m)
                else:
                    raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
                if dtype.hasobject:
                    raise DataError(f"{where} holds Python objects, which genlab never loads (they could run "
                                    f"code). {self.save}")
                count = math.prod(shape)
                declared = count * dtype.itemsize
                room = info.file_size - m.tell()
                if declared != room:
                    what = "truncated" if declared > room else "corrupt"
                    raise DataError(f"{where} is {what}: its header declares shape {shape} of {dtype} "
                                    f"({declared} bytes) but the member holds {max(room, 0)} bytes of data. {self.save}")
                guard.check_memory(copies * declared, f"{where} (shape {shape}, {dtype})",
                                   "Check that it is the right file, or load a part of the data.")
                try:
                    arr = np.empty(count, dtype=dtype)
                except MemoryError:
                    raise DataError(f"{where} (shape {shape}, {dtype}) needs more memory than this process may "
                                    "allocate.") from None
                buf, got = memoryview(arr.view(np.uint8)) if count and dtype.itemsize else memoryview(b""), 0
                while got < len(buf):
                    k = m.readinto(buf[got:got + (1 << 20)])
                    if not k:
                        raise DataError(f"{where} is truncated: {got} of its {declared} bytes are there. {self.save}")
                    got += k
                m.read(1)  # the end of the member: zipfile checks its CRC here
        except DataError:
            raise
        except _MEMBER_ERRORS as e:
            raise DataError(f"cannot read {where} ({str(e) or type(e).__name__}); the file is corrupt or not "
                            f"saved by numpy. {self.save}") from None
        if fortran:
            return arr.reshape(shape[::-1]).transpose()
        return arr.reshape(shape)


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
        out = np.empty(a.shape, dtype=np.uint8)
        step = max(1, (16 << 20) // max(1, a[0].size * 8))  # ~16 MB of float temporaries at a time
        for lo in range(0, len(a), step):  # never a float copy of the whole array
            out[lo:lo + step] = np.rint(a[lo:lo + step].astype(np.float64 if a.itemsize > 4 else np.float32) * 255)
        return out
    raise DataError(f"'{key}' in {path} has dtype {a.dtype}; images must be uint8 (0..255) or float (0..1).")


def _labels(a: np.ndarray, path: Path, key: str, n: int, images_key: str) -> np.ndarray:
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise DataError(f"'{key}' in {path} has shape {a.shape}; labels must be 1-D, one per image.")
    if len(a) != n:
        raise DataError(f"'{key}' in {path} has {len(a)} labels but '{images_key}' has {n} images; "
                        "they must have one label per image.")
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    if a.dtype.kind not in "iuf":
        raise DataError(f"'{key}' in {path} has dtype {a.dtype}; labels must be integers (class indices).")
    if not len(a):
        return a.astype(np.int64)
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise DataError(f"'{key}' in {path} holds non-integer float labels; labels must be class indices 0..K-1.")
    lo, hi = a.min(), a.max()  # compared in the array's own dtype: uint64 values >= 2**63 stay positive
    if lo < 0:
        raise DataError(f"'{key}' in {path} holds negative labels (min {lo}); use class indices 0..K-1.")
    if hi >= guard.MAX_CLASSES:
        raise DataError(f"'{key}' in {path} holds label {hi}, but genlab allows at most {guard.MAX_CLASSES} "
                        f"classes (labels 0..{guard.MAX_CLASSES - 1}); renumber the classes 0..K-1.")
    return a.astype(np.int64)


@contextlib.contextmanager
def open_npz(path: Path, what: str = "npz file", save: str = _SAVE):
    """The arrays of the .npz at ``path`` (:class:`_Npz`), opened only if it is a regular file and a
    zip archive; DataError naming ``path`` otherwise. ``save`` says how to write a good one."""
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{what} not found: {path}.")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an .npz file. {save}")
    with guard.open_regular(path, what) as f:
        try:
            start = f.read(6)
            f.seek(0)
            if start == b"\x93NUMPY":
                raise DataError(f"{path} is a .npy file holding one array, not an .npz archive. {save}")
            z = _Npz(f, path, save)
        except DataError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, struct.error,
                NotImplementedError) as e:
            raise DataError(f"{path} is not a readable .npz file ({str(e) or type(e).__name__}). {save}") from None
        with z.zip:
            yield z


def load(path: Path):
    """Return (train_x, train_y, test_x or None, test_y or None, class_names or None, origin)."""
    if not path.exists() and not path.is_symlink():
        raise DataError(f"npz file not found: {path}. Check the path given as npz:PATH.")
    if path.is_dir():
        raise DataError(f"{path} is a folder; use folder:{path} for a folder of images, or give npz: a .npz file.")
    with open_npz(path, ".npz file") as z:
        return _load(z, path)


def _load(z: _Npz, path: Path):
    keys = list(z.files)
    ikey = next((k for k in IMAGE_KEYS if k in keys), None)
    if ikey is None:
        raise DataError(f"{path} has no images array: looked for keys {', '.join(IMAGE_KEYS)} but found "
                        f"{', '.join(keys) if keys else 'no arrays'}. {_SAVE}")
    lkeys = LABEL_KEYS + (("arr_1",) if ikey == "arr_0" else ())
    lkey = next((k for k in lkeys if k in keys), None)
    train_x = _images(z.get(ikey, copies=2), path, ikey)
    train_y = _labels(z.get(lkey), path, lkey, len(train_x), ikey) if lkey else None
    test_x = test_y = None
    if "test_images" in keys:
        test_x = _images(z.get("test_images", copies=2), path, "test_images")
        if test_x.shape[1:] != train_x.shape[1:]:
            raise DataError(f"in {path}, 'test_images' are {test_x.shape[1:]} (C, H, W) but '{ikey}' are "
                            f"{train_x.shape[1:]}; both splits need the same image shape.")
        if "test_labels" in keys:
            test_y = _labels(z.get("test_labels"), path, "test_labels", len(test_x), "test_images")
        if (test_y is None) != (train_y is None):
            have, lack = ("'test_labels'", f"'{lkey}'") if train_y is None else (f"'{lkey}'", "'test_labels'")
            raise DataError(f"{path} has {have} but no {lack}; label both splits or neither.")
    elif "test_labels" in keys:
        raise DataError(f"{path} has 'test_labels' but no 'test_images'; add the test images or drop the labels.")
    class_names = None
    if "class_names" in keys:
        names = z.get("class_names")
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"'class_names' in {path} must be a 1-D array of strings, got {names.dtype} "
                            f"{names.shape}.")
        if len(names) > guard.MAX_CLASSES:
            raise DataError(f"'class_names' in {path} has {len(names)} names, but genlab allows at most "
                            f"{guard.MAX_CLASSES} classes.")
        class_names = [str(s) for s in names.astype(str)]
    used = ", ".join(k for k in (ikey, lkey, "test_images" if test_x is not None else None,
                                 "test_labels" if test_y is not None else None) if k)
    return train_x, train_y, test_x, test_y, class_names, f"{path} (arrays: {used})"
