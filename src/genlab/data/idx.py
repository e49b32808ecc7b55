"""Reader and writer for the IDX format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order, big-endian. Files may be
gzip-compressed; compression is detected from the content, not the name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from genlab.errors import DataError

#: IDX type code -> numpy dtype (as stored: big-endian).
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}
_FIX = "Delete it and download it again (or reinstall the package that provided it)."


def _gunzip(data: bytes | bytearray, path: Path) -> bytes:
    """Decompress every gzip member of ``data``, with errors that name ``path``."""
    parts, rest = [], data
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            parts.append(d.decompress(rest))
            parts.append(d.flush())
        except zlib.error as e:
            raise DataError(f"{path} is a corrupt gzip file ({e}). {_FIX}") from None
        if not d.eof:
            raise DataError(f"{path} is a truncated gzip file: the compressed stream ends early. {_FIX}")
        rest = d.unused_data
        if not rest.strip(b"\x00"):  # gzip allows zero padding after the last member
            return b"".join(parts)
        if rest[:2] != b"\x1f\x8b":
            raise DataError(f"{path} is a corrupt gzip file: {len(rest)} bytes of garbage follow "
                            f"the compressed data. {_FIX}")


def _read_bytes(path: Path) -> bytes | bytearray:
    try:
        with open(path, "rb") as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            n = f.readinto(buf)
            del buf[n:]
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not an IDX file") from None
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    if buf[:2] == b"\x1f\x8b":
        return _gunzip(buf, path)
    if path.name.lower().endswith(".gz"):
        raise DataError(f"{path} is named .gz but is not gzip-compressed (it starts with bytes "
                        f"{bytes(buf[:4]).hex(' ')}). {_FIX}")
    return buf


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a writable numpy array in native byte order.

    Raises DataError naming the file when it is missing, not IDX (wrong magic), uses an
    unknown type code, is shorter or longer than its header declares, or is corrupt gzip.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file: wrong magic number {bytes(data[:4]).hex(' ') or '(empty file)'} "
                        "(IDX files start with two zero bytes, a type code and the number of dimensions). "
                        f"Check that it is the right file. {_FIX}")
    code, ndim = data[2], data[3]
    if code not in DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in DTYPES)
        raise DataError(f"{path} uses IDX type code 0x{code:02X}, which is not supported (known: {known}). {_FIX}")
    if ndim == 0:
        raise DataError(f"{path} declares 0 dimensions, so it holds no data. {_FIX}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: its {ndim}-dimensional header needs {header} bytes "
                        f"but the file has {len(data)}. {_FIX}")
    dims = struct.unpack(f">{ndim}I", bytes(data[4:header]))
    dtype = DTYPES[code]
    count = math.prod(dims)
    declared = count * dtype.itemsize
    actual = len(data) - header
    if actual != declared:
        what = "truncated" if actual < declared else "too long"
        shape = " x ".join(map(str, dims))
        raise DataError(f"{path} is {what}: its header declares {shape} values of {dtype.itemsize} byte(s) "
                        f"= {declared} bytes of data, but the file has {actual} bytes after the header. {_FIX}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    if dtype.byteorder == ">" or not arr.flags.writeable:
        arr = arr.astype(dtype.newbyteorder("="))  # copies: native order and writable
    return arr


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    path = Path(path)
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of "
                         + ", ".join(str(d.newbyteorder('=')) for d in DTYPES.values()))
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    body = np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + body
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def read_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file (N, H, W) uint8 and its labels file (N,); return (N, 1, H, W) uint8 and (N,) int64."""
    images_path, labels_path = Path(images_path), Path(labels_path)
    images = read_idx(images_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{images_path} should hold uint8 images shaped (N, H, W) but holds "
                        f"{images.dtype} values shaped {images.shape}. Check that it is an images file.")
    labels = read_idx(labels_path)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{labels_path} should hold integer labels shaped (N,) but holds "
                        f"{labels.dtype} values shaped {labels.shape}. Check that it is a labels file.")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
                        "the two files must come from the same release. Replace the mismatched file.")
    return images[:, None], labels.astype(np.int64)
