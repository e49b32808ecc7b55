"""Fault suite for the dataset readers: malformed IDX, npz, image folders and CIFAR archives.

Every case asserts one rule: the reader returns correct data, or raises a DataError whose message
names the input; never another exception, never a hang, never memory beyond a bound.

* Hypothesis builds a valid file, then damages it (cuts, flipped or inserted bytes, forged header
  fields, garbage after the end), raw and gzip-compressed. "Correct data" is checked against a
  reference decoder written here, independently of genlab: whenever the reference can decode the
  damaged bytes, genlab must return the same array; whenever genlab returns, the reference agrees.
* Non-regular files (FIFOs, broken links) named like data files: a watchdog thread tries to open
  each FIFO for writing the whole time; that succeeds only if a reader has it open, so the test
  sees any reader that opens one (and unblocks it instead of hanging).
* Memory: the worst cases run in a child process whose address space is capped; its peak resident
  memory (VmHWM, reset before each case) must stay within a small multiple of the input's bytes.

Everything runs with GENLAB_MEMORY_LIMIT=64M, so headers declaring more are refused before
anything is allocated. Hypothesis is seeded (derandomize) and bounded.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from genlab.data import cifar, guard, load_dataset
from genlab.data import npz as npz_reader
from genlab.data.folder import load as load_folder
from genlab.data.idx import read_idx
from genlab.errors import DataError, GenlabError

FUZZ = settings(derandomize=True, max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMIT = "64M"


@pytest.fixture(scope="module", autouse=True)
def small_memory_limit():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(guard.ENV, LIMIT)
        yield


@contextlib.contextmanager
def workdir():
    with tempfile.TemporaryDirectory(prefix="genlab-fuzz-") as d:
        yield Path(d)


def outcome(fn, *names):
    """fn() or the DataError it raised; any other exception fails the test. ``names``: what a message must name."""
    try:
        return fn()
    except DataError as e:
        assert isinstance(e, GenlabError)
        assert any(str(n) in str(e) for n in names), f"message does not name the input: {e}"
        return e


# ---------------------------------------------------------------- damage applied to bytes

@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` with 0-3 of: a cut, flipped bytes, inserted bytes, bytes appended."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["cut", "flip", "insert", "append"]))
        if kind == "cut":
            del out[draw(st.integers(0, len(out))):]
        elif kind == "flip" and out:
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            i = draw(st.integers(0, len(out)))
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            out += draw(st.binary(min_size=1, max_size=64))
    return bytes(out)


# ---------------------------------------------------------------- IDX

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_encode(arr: np.ndarray, code: int) -> bytes:
    return (bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.astype(IDX_TYPES[code]).tobytes())


def reference_gunzip(data: bytes) -> bytes | None:
    """Every gzip member, then only zero padding; None if that is not what ``data`` is."""
    parts, rest = [], data
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            parts.append(d.decompress(rest) + d.flush())
        except zlib.error:
            return None
        if not d.eof:
            return None
        rest = d.unused_data
        if not rest.strip(b"\0"):
            return b"".join(parts)
        if rest[:2] != b"\x1f\x8b":
            return None


def reference_idx(data: bytes, gz: bool):
    """The array ``data`` encodes, or None if it is not a valid IDX file (a decoder independent of genlab's)."""
    if gz:
        data = reference_gunzip(data)
        if data is None:
            return None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_TYPES or not 1 <= data[3] <= 64:
        return None
    n = data[3]
    if len(data) < 4 + 4 * n:
        return None
    dims = struct.unpack(f">{n}I", data[4:4 + 4 * n])
    dtype = np.dtype(IDX_TYPES[data[2]])
    if len(data) != 4 + 4 * n + int(np.prod(dims, dtype=object)) * dtype.itemsize:
        return None
    return np.frombuffer(data, dtype, offset=4 + 4 * n).reshape(dims)


@st.composite
def idx_files(draw):
    code = draw(st.sampled_from(sorted(IDX_TYPES)))
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arr = rng.integers(-100, 100, shape) if code != 0x08 else rng.integers(0, 256, shape)
    raw = bytearray(idx_encode(np.asarray(arr), code))
    forge = draw(st.sampled_from(["none", "ndim", "dim", "code"]))
    if forge == "ndim":  # up to 255 dimensions: beyond numpy's 64
        raw[3] = draw(st.integers(0, 255))
    elif forge == "dim":  # any uint32: up to 4 GB per dimension
        k = draw(st.integers(0, len(shape) - 1))
        raw[4 + 4 * k:8 + 4 * k] = struct.pack(">I", draw(st.integers(0, 2**32 - 1)))
    elif forge == "code":
        raw[2] = draw(st.integers(0, 255))
    gz = draw(st.booleans())
    data = bytes(raw)
    if gz:
        cut = draw(st.integers(0, len(data)))  # sometimes two gzip members
        data = gzip.compress(data[:cut], mtime=0) + (gzip.compress(data[cut:], mtime=0) if cut < len(data) else b"")
        data += b"\0" * draw(st.integers(0, 3))
    return draw(damaged(data)), gz


@FUZZ
@given(idx_files())
def test_idx_damaged_files(case):
    data, gz = case
    with workdir() as d:
        path = d / ("x-idx3-ubyte" + (".gz" if gz else ""))
        path.write_bytes(data)
        got = outcome(lambda: read_idx(path), path)
    want = reference_idx(data, gz)
    if isinstance(got, DataError):
        declared = None if want is None else want.nbytes
        assert want is None or declared > guard.parse_bytes(LIMIT), f"valid file refused: {got}"
    else:
        assert want is not None and got.dtype == want.dtype.newbyteorder("=") and np.array_equal(got, want)
        assert got.flags.writeable and got.dtype.isnative


# ---------------------------------------------------------------- npz

def npy_bytes(shape, dtype="|u1", data: bytes = b"") -> bytes:
    """A .npy member written by hand: any header, any data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def zip_of(members: dict[str, bytes], compress: bool) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


LABEL_EDGES = [np.array([0, 1, 2**63], np.uint64), np.array([0, 10**9, 1], np.int64), np.array([0, -1, 1]),
               np.array([0.0, np.nan, 1.0]), np.array([0.5, 1.0, 2.0]), np.array([0, 1, 70_000], np.int32),
               np.array([True, False, True]), np.array(["a", "b", "c"])]


@st.composite
def npz_files(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n = 3
    images = rng.integers(0, 256, (n, 4, 5), dtype=np.uint8)
    labels = draw(st.sampled_from([np.array([0, 1, 2])] + LABEL_EDGES))
    kind = draw(st.sampled_from(["savez", "forged-shape", "forged-dtype", "huge-dir-size", "npy", "empty-zip"]))
    if kind == "savez":
        buf = io.BytesIO()
        (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, images=images, labels=labels)
        data = buf.getvalue()
    elif kind == "forged-shape":  # a tiny member whose header declares up to petabytes
        shape = draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=4))
        data = zip_of({"images.npy": npy_bytes(shape, data=images.tobytes()), "labels.npy": npy_bytes([3], "<i8")},
                      draw(st.booleans()))
    elif kind == "forged-dtype":
        descr = draw(st.sampled_from(["|O", "<U100000000", "|V8", "<c16", "|S0", ">f8", "<M8[s]"]))
        data = zip_of({"images.npy": npy_bytes([3, 4, 5], descr, images.tobytes())}, True)
    elif kind == "huge-dir-size":  # the zip directory claims a member inflates to terabytes
        data = bytearray(zip_of({"images.npy": npy_bytes([3, 4, 5], data=images.tobytes())}, True))
        at = data.rfind(b"PK\x01\x02")
        data[at + 24:at + 28] = struct.pack("<I", draw(st.integers(2**20, 2**32 - 1)))
        data = bytes(data)
    elif kind == "npy":
        data = npy_bytes([3, 4, 5], data=images.tobytes())
    else:
        data = zip_of({}, False)
    return draw(damaged(data)), kind


def check_npz_result(got, path: Path):
    train_x, train_y, test_x, test_y, names, origin = got
    assert train_x.dtype == np.uint8 and train_x.ndim == 4 and train_x.flags.c_contiguous
    reference = np.load(path, allow_pickle=False)  # numpy's reading of the same file must agree
    key = next(k for k in npz_reader.IMAGE_KEYS if k in reference.files)
    want = reference[key]
    assert np.array_equal(train_x.reshape(want.shape) if want.ndim == 3 else train_x, want) or want.dtype != np.uint8
    if train_y is not None:
        assert train_y.dtype == np.int64 and train_y.min(initial=0) >= 0 and train_y.max(initial=0) < guard.MAX_CLASSES


@FUZZ
@given(npz_files())
def test_npz_damaged_files(case):
    data, kind = case
    with workdir() as d:
        path = d / "data.npz"
        path.write_bytes(data)
        got = outcome(lambda: npz_reader.load(path), path)
        if not isinstance(got, DataError):
            check_npz_result(got, path)


@pytest.mark.parametrize("labels", LABEL_EDGES[:3] + LABEL_EDGES[5:6], ids=["uint64-2^63", "1e9", "negative", "70000"])
def test_npz_bad_labels_are_refused_by_name(tmp_path, labels):
    path = tmp_path / "l.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=labels)
    with pytest.raises(DataError, match=r"'labels' in .*l\.npz") as e:
        load_dataset(f"npz:{path}")
    assert "0..K-1" in str(e.value)


def test_label_far_beyond_the_number_of_images_is_refused(tmp_path):
    path = tmp_path / "sparse.npz"
    np.savez(path, images=np.zeros((10, 4, 4), np.uint8), labels=np.array([0] * 9 + [5000]))
    with pytest.raises(DataError, match=r"labels go up to 5000, but 10 images can have at most 1024 classes"):
        load_dataset(f"npz:{path}")
    np.savez(path, images=np.zeros((10, 4, 4), np.uint8), labels=np.array([0] * 9 + [1023]))
    assert load_dataset(f"npz:{path}").num_classes == 1024  # sparse but plausible: allowed


# ---------------------------------------------------------------- image folders

def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int, mode: int = 2) -> bytes:
    """A valid PNG header (IHDR with a correct CRC) declaring any size, with a few rows of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    rows = zlib.compress(bytes(min(width * 3 + 1, 4096) * 4))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


class FifoWatch:
    """Tries to open FIFOs for writing, without blocking, until stopped: that succeeds only while a
    reader has the FIFO open. Records every FIFO opened (a reader that should not have) and closes
    it at once, so the reader gets end-of-file instead of waiting forever."""

    def __init__(self, fifos):
        self.fifos, self.opened, self._stop = list(fifos), [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for f in self.fifos:
                try:
                    os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
                    self.opened.append(f)
                except OSError:  # ENXIO: no reader has it open
                    pass
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@st.composite
def image_folders(draw):
    """[(relative path, what to put there)]: good PNGs plus at most one bad entry."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    good = []
    for i in range(draw(st.integers(1, 3))):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(buf, "PNG")
        good.append((f"c{i % 2}/g{i}.png", buf.getvalue()))
    bad = draw(st.sampled_from(["none", "damaged", "huge-header", "fifo", "broken-link", "not-an-image", "eps"]))
    if bad == "damaged":
        entry = ("c0/bad.png", draw(damaged(good[0][1])))
    elif bad == "huge-header":
        w, h = draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1))
        entry = ("c1/huge.png", png_declaring(w, h))
    elif bad == "eps":  # PostScript named .png: must never reach Pillow's EPS plugin (Ghostscript)
        entry = ("c0/x.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 5 6\nshowpage\n")
    else:
        entry = ("c0/x.png", bad) if bad != "none" else None
    return good, entry


def build(root: Path, good, entry) -> list[Path]:
    fifos = []
    for rel, data in good:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    if entry is not None:
        rel, what = entry
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if what == "fifo":
            os.mkfifo(path)
            fifos.append(path)
        elif what == "broken-link":
            path.symlink_to(root / "nowhere.png")
        elif what == "not-an-image":
            path.write_bytes(b"just text, named .png")
        else:
            path.write_bytes(what)
    return fifos


@FUZZ
@given(image_folders(), st.sampled_from([None, 4]))
def test_image_folder_faults(case, size):
    good, entry = case
    with workdir() as root:
        fifos = build(root, good, entry)
        with FifoWatch(fifos) as watch:
            got = outcome(lambda: load_folder(root, image_size=size, progress=False),
                          *(str(root / entry[0]) if entry else root,))
        assert not watch.opened, f"a reader opened the FIFO {watch.opened}"
        if entry is not None and entry[1] in ("fifo", "broken-link", "not-an-image", "eps"):
            assert isinstance(got, DataError), "a non-image was read as an image"
            kind = {"fifo": "FIFO", "broken-link": "broken symbolic link"}.get(entry[1], "cannot read image")
            assert kind in str(got)
        if not isinstance(got, DataError):
            images = got[0]
            want = sorted(rel for rel, _ in good) + ([entry[0]] if entry and entry[0] not in dict(good) else [])
            assert len(images) == len(want) and images.dtype == np.uint8
            if entry is None and size is None:  # intact files: exactly Pillow's pixels, in sorted order
                ref = [np.asarray(Image.open(root / rel).convert("RGB")).transpose(2, 0, 1) for rel in want]
                assert np.array_equal(images, np.stack(ref))


def test_fifo_named_like_each_data_file_is_refused_unopened(tmp_path):
    """A FIFO as an image, as npz:PATH, as an IDX file and as a CIFAR batch: a clean error, never opened."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "a.png")
    os.mkfifo(folder / "x.png")
    os.mkfifo(tmp_path / "data.npz")
    os.mkfifo(tmp_path / "t10k-labels-idx1-ubyte")
    cif = tmp_path / "c" / cifar.FOLDER
    cif.mkdir(parents=True)
    for name in cifar.FILES[1:]:
        (cif / name).write_bytes(b"")
    os.mkfifo(cif / cifar.FILES[0])
    cases = [(lambda: load_dataset(f"folder:{folder}"), folder / "x.png"),
             (lambda: load_dataset(f"npz:{tmp_path / 'data.npz'}"), tmp_path / "data.npz"),
             (lambda: read_idx(tmp_path / "t10k-labels-idx1-ubyte"), tmp_path / "t10k-labels-idx1-ubyte"),
             (lambda: cifar._read_folder(cif), cif / cifar.FILES[0])]
    fifos = [folder / "x.png", tmp_path / "data.npz", tmp_path / "t10k-labels-idx1-ubyte", cif / cifar.FILES[0]]
    with FifoWatch(fifos) as watch:
        for fn, path in cases:
            with pytest.raises(DataError, match="FIFO") as e:
                fn()
            assert str(path) in str(e.value)
    assert not watch.opened


def test_image_size_beyond_memory_is_refused_before_allocating(monkeypatch):
    monkeypatch.setenv(guard.ENV, "2G")
    with pytest.raises(DataError) as e:
        load_dataset("digits", image_size=3000)
    msg = str(e.value)
    need = (1797 + 4 * 360) * 3000 * 3000  # uint8 images, and a float32 copy of the 360 test images
    assert "1,797 images of 1 x 3000 x 3000" in msg and f"would need about {guard.fmt_bytes(need)}" in msg
    assert "smaller --image-size" in msg and f"{guard.ENV}=2G" in msg
    monkeypatch.setenv(guard.ENV, "lots")
    with pytest.raises(DataError, match=f"{guard.ENV}='lots' is not a size"):
        load_dataset("digits", image_size=30)


# ---------------------------------------------------------------- CIFAR archives

N = 2  # records per batch file here


def cifar_archive(seed: int, members=None) -> tuple[bytes, tuple]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (6 * N, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 6 * N)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, name in enumerate(cifar.FILES):
            data = b"".join(bytes([int(y[j])]) + x[j].tobytes() for j in range(i * N, (i + 1) * N))
            info = tarfile.TarInfo(f"{cifar.FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in members or []:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue(), (x[:5 * N], y[:5 * N], x[5 * N:], y[5 * N:])


@FUZZ
@given(st.integers(0, 2**16), st.data())
def test_cifar_damaged_archives(seed, data):
    archive, (tx, ty, vx, vy) = cifar_archive(seed)
    bad = data.draw(damaged(archive))
    with workdir() as d, mock.patch.object(cifar, "RECORDS_PER_FILE", N):
        path = d / cifar.ARCHIVE
        path.write_bytes(bad)
        got = outcome(lambda: cifar._read_archive(path), path)
    if not isinstance(got, DataError):  # gzip's CRC covers every byte: success means the right data
        assert np.array_equal(np.concatenate([got[f][0] for f in cifar.TRAIN_FILES]), tx)
        assert np.array_equal(got[cifar.TEST_FILE][0], vx) and np.array_equal(got[cifar.TEST_FILE][1], vy)


def forged(name: str, kind: bytes, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


@pytest.mark.parametrize("extra, outcome_re", [
    ([(forged("data_batch_1.bin", tarfile.FIFOTYPE), None)], None),  # not a regular member: ignored
    ([(forged("x/test_batch.bin", tarfile.SYMTYPE, link="/etc/passwd"), None)], None),
    ([(forged("../../data_batch_2.bin", tarfile.CHRTYPE), None)], None),
    ([(forged("data_batch_3.bin", tarfile.LNKTYPE, link=f"{cifar.FOLDER}/test_batch.bin"), None)], None),
])
def test_cifar_archive_odd_members_are_never_read(tmp_path, extra, outcome_re):
    data, (tx, ty, vx, vy) = cifar_archive(1, extra)
    path = tmp_path / cifar.ARCHIVE
    path.write_bytes(data)
    with mock.patch.object(cifar, "RECORDS_PER_FILE", N):
        got = cifar._read_archive(path)
    assert np.array_equal(np.concatenate([got[f][0] for f in cifar.TRAIN_FILES]), tx)
    assert np.array_equal(got[cifar.TEST_FILE][0], vx)


def test_cifar_member_declaring_a_huge_size_is_refused_before_reading(tmp_path):
    """A batch member whose tar header claims 8 GB: refused from the header alone."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"{cifar.FOLDER}/data_batch_1.bin")
        info.size = 8 << 30
        tar.addfile(info)  # no data follows: the header alone lies
    path = tmp_path / cifar.ARCHIVE
    path.write_bytes(buf.getvalue())
    with pytest.raises(DataError) as e:
        cifar._read_archive(path)
    assert str(path) in str(e.value) and "data_batch_1.bin" in str(e.value) and str(8 << 30) in str(e.value)


# ---------------------------------------------------------------- memory of the worst cases (child process)

_CHILD = r'''
import json, os, resource, sys
from pathlib import Path
import numpy as np, PIL.Image, PIL.PngImagePlugin, tarfile, zipfile, gzip
from genlab.data import cifar, guard, load_dataset
from genlab.data import npz as npz_reader
from genlab.data.folder import load as load_folder
from genlab.data.idx import read_idx
from genlab.errors import DataError

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

cases = json.loads(sys.argv[1])
cifar.RECORDS_PER_FILE = 2
load_dataset("digits")  # sklearn and the split code imported before measuring
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + (3 << 30),) * 2)  # a regression fails, not the machine
out = {}
for name, kind, path in cases:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    base = status("VmRSS")
    fn = {"idx": lambda: read_idx(path), "npz": lambda: npz_reader.load(Path(path)),
          "folder": lambda: load_folder(Path(path), progress=False),
          "cifar": lambda: cifar._read_archive(Path(path)),
          "digits3000": lambda: load_dataset("digits", image_size=3000)}[kind]
    try:
        fn()
        result = "loaded"
    except DataError as e:
        result = "DataError: " + str(e)[:160]
    except BaseException as e:
        result = f"{type(e).__name__}: {e}"[:200]
    out[name] = {"peak": status("VmHWM") - base, "result": result}
print(json.dumps(out))
'''


def worst_cases(d: Path) -> list[tuple[str, str, str]]:
    """Inputs of a few hundred kB that, before the readers were bounded, each cost hundreds of MB to GBs."""
    zeros = bytes(1 << 20)

    def gz_stream(head: bytes, megabytes: int) -> bytes:
        """gzip of ``head`` and ``megabytes`` MB of zeros, made fast: after a full flush deflate blocks stand
        alone, so one compressed megabyte is repeated; the trailer's CRC and size cover the whole stream."""
        deflate = (lambda c: (lambda data: c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)))
        first = deflate(zlib.compressobj(9, zlib.DEFLATED, -15))(head)
        last = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = deflate(last)(zeros)
        crc = zlib.crc32(head)
        for _ in range(megabytes):
            crc = zlib.crc32(zeros, crc)
        size = (len(head) + megabytes * len(zeros)) & 0xFFFFFFFF
        return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first + block * megabytes + last.flush()
                + struct.pack("<II", crc, size))

    (d / "lying.gz").write_bytes(gz_stream(bytes([0, 0, 8, 1]) + struct.pack(">I", 10), 200))  # says 10 B, holds 200 MB
    (d / "declares-200MB.gz").write_bytes(gz_stream(bytes([0, 0, 8, 1]) + struct.pack(">I", 200 << 20), 200))
    (d / "declares-12GB.gz").write_bytes(gz_stream(bytes([0, 0, 8, 3]) + struct.pack(">3I", 3_000_000, 64, 64), 1))
    (d / "dims.idx").write_bytes(bytes([0, 0, 8, 200]) + bytes(800))
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.zeros((300, 512, 512), np.uint8), labels=np.zeros(300, np.int64))
    (d / "zeros-75MB.npz").write_bytes(buf.getvalue())
    (d / "forged.npz").write_bytes(zip_of({"images.npy": npy_bytes([10**5, 10**5, 10**3])}, True))
    np.savez(d / "label-1e9.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 10**9, 1]))
    for sub, (w, h, n) in {"png-81Mpx": (9000, 9000, 3), "png-25Mpx": (5000, 5000, 4)}.items():
        (d / sub).mkdir()
        for i in range(n):
            (d / sub / f"{i}.png").write_bytes(png_declaring(w, h))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"{cifar.FOLDER}/data_batch_1.bin")
        info.size = 8 << 30
        tar.addfile(info)
    (d / cifar.ARCHIVE).write_bytes(buf.getvalue())
    return [("IDX gz, header 10 B, stream 200 MB", "idx", "lying.gz"),
            ("IDX gz declaring 200 MB (limit 64 MB)", "idx", "declares-200MB.gz"),
            ("IDX gz declaring 12 GB, holding 1 MB", "idx", "declares-12GB.gz"),
            ("IDX with 200 dimensions", "idx", "dims.idx"),
            ("npz of 75 MB of zeros (limit 64 MB)", "npz", "zeros-75MB.npz"),
            ("npz header declaring 10^13 bytes", "npz", "forged.npz"),
            ("npz label 10^9", "npz", "label-1e9.npz"),
            ("PNGs declaring 9000x9000", "folder", "png-81Mpx"),
            ("PNGs of 5000x5000 zeros (limit 64 MB)", "folder", "png-25Mpx"),
            ("CIFAR member declaring 8 GB", "cifar", cifar.ARCHIVE),
            ("digits at --image-size 3000", "digits3000", "")]


def input_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir())
    return path.stat().st_size if path.is_file() else 0


def test_worst_cases_stay_within_a_small_multiple_of_their_input(tmp_path):
    cases = [(name, kind, str(tmp_path / rel) if rel else "") for name, kind, rel in worst_cases(tmp_path)]
    env = {**os.environ, guard.ENV: LIMIT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = []
    for name, kind, path in cases:
        r = report[name]
        size = input_bytes(Path(path)) if path else 0
        lines.append(f"{name:42s} input {size / 1024:9.0f} kB  peak +{r['peak'] / 2**20:7.1f} MB  {r['result'][:70]}")
        assert r["result"].startswith("DataError"), f"{name}: {r['result']}"
        assert r["peak"] <= 4 * size + (24 << 20), f"{name}: peak {r['peak']} for {size} input bytes"
    print("\n" + "\n".join(lines))
