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

from genlab.data import guard
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


#: The most dimensions an IDX file may declare (numpy's own limit; genlab uses 1 and 3).
MAX_DIMS = 64
_CHUNK = 1 << 20  # bytes read or inflated per step


class _Stream:
    """The decompressed bytes of an IDX file, read in bounded steps.

    Raw files are read as they are; gzip files (every member, then optional zero padding) are
    inflated on demand, never more than asked for, so a header can be checked before the data
    it declares is inflated.
    """

    def __init__(self, f, path: Path):
        self.f, self.path = f, path
        self.pending = f.read(2)
        self.gz = self.pending == b"\x1f\x8b"
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gz else None
        self.ended = False  # every gzip member is finished (only zero padding, if anything, follows)

    def _compressed(self) -> bytes:
        data, self.pending = self.pending or self.f.read(_CHUNK), b""
        return data

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the data)."""
        if not self.gz:
            head, self.pending = self.pending[:n], self.pending[n:]
            return head + (self.f.read(n - len(head)) if n > len(head) else b"")
        out = []
        while n > 0 and not self.ended:
            if self.d.eof:
                self._next_member()
                continue
            src = self.d.unconsumed_tail or self._compressed()
            if not src:
                raise DataError(f"{self.path} is a truncated gzip file: the compressed stream ends early. {_FIX}")
            try:
                part = self.d.decompress(src, n)
            except zlib.error as e:
                raise DataError(f"{self.path} is a corrupt gzip file ({e}). {_FIX}") from None
            out.append(part)
            n -= len(part)
        return b"".join(out)

    def _next_member(self) -> None:
        rest = self.d.unused_data
        while len(rest) < 2:
            more = self.f.read(_CHUNK)
            if not more:
                break
            rest += more
        if rest[:2] == b"\x1f\x8b":
            self.d, self.pending = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
            return
        while rest:  # gzip allows zero padding after the last member; anything else is garbage
            if rest.strip(b"\x00"):
                raise DataError(f"{self.path} is a corrupt gzip file: garbage follows the compressed data. {_FIX}")
            rest = self.f.read(_CHUNK)
        self.ended = True

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` as far as the data goes; return the number of bytes written."""
        if not self.gz:
            got = 0
            if self.pending:
                k = len(self.pending[:len(buf)])
                buf[:k], self.pending = self.pending[:k], self.pending[k:]
                got = k
            while got < len(buf):
                k = self.f.readinto(buf[got:])
                if not k:
                    break
                got += k
            return got
        got = 0
        while got < len(buf):
            part = self.read(min(_CHUNK, len(buf) - got))
            if not part:
                break
            buf[got:got + len(part)] = part
            got += len(part)
        return got


def _open(path: Path):
    try:
        return guard.open_regular(path, "IDX file")
    except DataError as e:
        if "not found" in str(e) and not os.path.islink(path):
            raise DataError(f"IDX file not found: {path}") from None
        raise


def _wrong_length(path: Path, shape: str, dtype: np.dtype, declared: int, actual: int, has: str):
    what = "truncated" if actual < declared else "too long"
    raise DataError(f"{path} is {what}: its header declares {shape} values of {dtype.itemsize} byte(s) "
                    f"= {declared} bytes of data, but {has} bytes after the header. {_FIX}")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a writable numpy array in native byte order.

    Raises DataError naming the file when it is missing or not a regular file, not IDX (wrong
    magic), uses an unknown type code or more than MAX_DIMS dimensions, declares more data than
    memory allows (:mod:`genlab.data.guard`), is shorter or longer than its header declares, or
    is corrupt gzip. The header is read and checked first; then exactly the declared number of
    bytes is read (inflated) into the result, and one more byte to tell a file that is too long,
    so memory stays at the declared size whatever the file holds.
    """
    path = Path(path)
    with _open(path) as f:
        try:
            return _read(_Stream(f, path), path)
        except OSError as e:
            raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from None


def _read(s: _Stream, path: Path) -> np.ndarray:
    if not s.gz and path.name.lower().endswith(".gz"):
        start = s.pending + s.f.read(2)
        raise DataError(f"{path} is named .gz but is not gzip-compressed (it starts with bytes "
                        f"{bytes(start[:4]).hex(' ')}). {_FIX}")
    magic = s.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise DataError(f"{path} is not an IDX file: wrong magic number {magic.hex(' ') or '(empty file)'} "
                        "(IDX files start with two zero bytes, a type code and the number of dimensions). "
                        f"Check that it is the right file. {_FIX}")
    code, ndim = magic[2], magic[3]
    if code not in DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in DTYPES)
        raise DataError(f"{path} uses IDX type code 0x{code:02X}, which is not supported (known: {known}). {_FIX}")
    if ndim == 0:
        raise DataError(f"{path} declares 0 dimensions, so it holds no data. {_FIX}")
    if ndim > MAX_DIMS:
        raise DataError(f"{path} declares {ndim} dimensions; genlab reads IDX files of at most {MAX_DIMS} "
                        f"(images have 3, labels 1). The file is corrupt or not a dataset file. {_FIX}")
    raw = s.read(4 * ndim)
    header = 4 + 4 * ndim
    if len(raw) < 4 * ndim:
        raise DataError(f"{path} is truncated: its {ndim}-dimensional header needs {header} bytes "
                        f"but the file has {4 + len(raw)}. {_FIX}")
    dims = struct.unpack(f">{ndim}I", raw)
    dtype = DTYPES[code]
    count = math.prod(dims)
    declared = count * dtype.itemsize
    shape = " x ".join(map(str, dims))
    guard.check_memory(declared, f"{path} (its header declares {shape} values of {dtype.itemsize} byte(s))",
                       "Check that it is the right file; a dataset this large needs a machine with more memory.")
    if not s.gz:  # the size on disk tells a wrong length before anything is allocated
        actual = os.fstat(s.f.fileno()).st_size - header
        if actual != declared:
            _wrong_length(path, shape, dtype, declared, actual, f"the file has {actual}")
    try:  # pages are committed as they are written, so a truncated file costs only what it holds
        arr = np.empty(count, dtype=dtype)
    except MemoryError:
        raise DataError(f"{path} declares {shape} values of {dtype.itemsize} byte(s) ({declared} bytes), more "
                        f"memory than this process may allocate. {_FIX}") from None
    buf = memoryview(arr.view(np.uint8)) if count else memoryview(bytearray(0))
    actual = s.readinto(buf)
    if actual < declared:
        _wrong_length(path, shape, dtype, declared, actual, f"the file has {actual}")
    if s.read(1):  # for gzip this also reaches the end of the last member, where its CRC is checked
        _wrong_length(path, shape, dtype, declared, actual + 1, "the file has more")
    arr = arr.reshape(dims)
    if dtype.byteorder == ">":
        arr = arr.byteswap(inplace=True).view(dtype.newbyteorder("="))  # in place: no second copy
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
