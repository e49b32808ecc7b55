"""CIFAR-10, binary version: where genlab looks for it, and reading it.

CIFAR-10 (A. Krizhevsky, 2009, "Learning Multiple Layers of Features from Tiny Images", tech. report,
University of Toronto): 60,000 RGB 32x32 images in 10 classes, 50,000 for training, 10,000 for testing.
genlab reads only the *binary* version, ``cifar-10-binary.tar.gz``, never the python (pickle) one.
Its folder ``cifar-10-batches-bin/`` holds ``data_batch_1.bin`` … ``data_batch_5.bin`` (train) and
``test_batch.bin``, each 10,000 records of 3073 bytes: a label byte (0-9), then 1024 red, 1024 green
and 1024 blue bytes, each plane a 32x32 image in row-major order. ``batches.meta.txt`` lists the
class names, the same as CLASS_NAMES; it is not needed. The archive is read in place with
:mod:`tarfile`: only regular-file members whose base name is a batch file are read, nothing is
extracted.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from genlab.data import download as _dl
from genlab.data import guard as _guard
from genlab.errors import DataError

NAME = "cifar10"
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
FILES: tuple[str, ...] = (*TRAIN_FILES, TEST_FILE)
CLASS_NAMES: list[str] = ["airplane", "automobile", "bird", "cat", "deer",
                          "dog", "frog", "horse", "ship", "truck"]
SHAPE = (3, 32, 32)
RECORD = 1 + SHAPE[0] * SHAPE[1] * SHAPE[2]  # 3073 bytes: label, then the R, G and B planes
#: Records in every batch file of the real dataset (tests set it to make small files).
RECORDS_PER_FILE = 10_000
HOME_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
_SIZE = "about 170 MB"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched, in order: ``data_dir/cifar10/``, ``data_dir``, ``default_cache_dir()/cifar10``."""
    dirs: list[Path] = []
    if data_dir is not None:
        d = Path(os.path.abspath(os.path.expanduser(data_dir)))
        dirs += [d / NAME, d]
    dirs.append(_dl.default_cache_dir() / NAME)
    return list(dict.fromkeys(dirs))


def find(folder: Path) -> tuple[Path | None, str]:
    """(what to read in ``folder``: a folder holding all six .bin files or the archive, else None; what was found).

    Preferred in this order: ``folder/cifar-10-batches-bin/``, the .bin files in ``folder``, the archive.
    """
    partial = ""
    for d in (folder / FOLDER, folder):
        present = [f for f in FILES if (d / f).is_file()]
        if len(present) == len(FILES):
            return d, "complete"
        if present and not partial:
            partial = "missing " + ", ".join(f for f in FILES if f not in present)
            partial += f" in {FOLDER}/" if d != folder else ""
    if (folder / ARCHIVE).is_file():
        return folder / ARCHIVE, f"archive {ARCHIVE}"
    return None, partial or "no CIFAR-10 files"


def locate(data_dir=None) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the first folder or archive to read, or None; [(folder, what was found there)] for every folder checked)."""
    checked = []
    for folder in search_dirs(data_dir):
        if not folder.is_dir():
            checked.append((folder, "no such folder"))
            continue
        source, what = find(folder)
        checked.append((folder, what))
        if source is not None:
            return source, checked
    return None, checked


def how_to_get() -> str:
    dest = _dl.default_cache_dir() / NAME
    return "\n".join([
        "To get it, do one of:",
        f"  - let genlab download {ARCHIVE} ({_SIZE}) into {dest}: keep downloading enabled and make sure "
        f"{', '.join(_dl.mirrors(NAME)) or '(no mirror)'} is reachable, or set {_dl.MIRROR_ENV[NAME]} to "
        "another mirror;",
        f"  - download {ARCHIVE} (the binary version, not the python one) from {HOME_PAGE} and put it, or "
        f"the {FOLDER}/ folder it holds, in a folder passed as --data-dir (data_dir=...);",
        f"  - set GENLAB_DATA to a folder that has a '{NAME}/' sub-folder holding them.",
    ])


def _check_size(size: int, where: str, fix: str) -> int:
    """The number of records in a batch of ``size`` bytes; DataError unless it is a whole, expected number."""
    n, rest = divmod(size, RECORD)
    if rest or n == 0:
        raise DataError(f"{where} is {size} bytes, not a whole number of {RECORD}-byte records (a label byte and "
                        f"3072 pixel bytes): it is truncated, or not a batch of the CIFAR-10 binary version; {fix}")
    if RECORDS_PER_FILE and n != RECORDS_PER_FILE:
        raise DataError(f"{where} holds {n} records, but a CIFAR-10 batch file holds {RECORDS_PER_FILE} "
                        f"({RECORDS_PER_FILE * RECORD} bytes); {fix}")
    return n


def parse_batch(data: bytes, where: str, fix: str = "replace the file.") -> tuple[np.ndarray, np.ndarray]:
    """One batch file's bytes -> (images uint8 (N, 3, 32, 32) read-only view of ``data``, labels int64 (N,))."""
    n = _check_size(len(data), where, fix)
    records = np.frombuffer(data, np.uint8).reshape(n, RECORD)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= len(CLASS_NAMES))
    if len(bad):
        raise DataError(f"{where}: record {bad[0]} has label {labels[bad[0]]} ({len(bad)} records are out of range), "
                        f"but CIFAR-10 labels are 0..{len(CLASS_NAMES) - 1}: the file is corrupt or not from "
                        f"the CIFAR-10 binary version; {fix}")
    return records[:, 1:].reshape(n, *SHAPE), labels.astype(np.int64)


def _read_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    fix = f"replace it with the file from a fresh {ARCHIVE} ({HOME_PAGE})."
    batches = {}
    for name in FILES:
        path = folder / name
        try:
            with _guard.open_regular(path, "CIFAR-10 batch file") as f:  # never a FIFO or device
                _check_size(os.fstat(f.fileno()).st_size, str(path), fix)  # before reading a file of the wrong size
                data = f.read()
        except OSError as e:
            raise DataError(f"cannot read {path} ({e.strerror or e}); check the file and its permissions.") from None
        batches[name] = parse_batch(data, str(path), fix)
    return batches


def _read_archive(archive: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    fix = f"delete {archive} so that genlab downloads it again, or replace it with a fresh copy."
    batches = {}
    try:
        with _guard.open_regular(archive, "CIFAR-10 archive") as f, tarfile.open(fileobj=f, mode="r:gz") as tar:
            for member in tar:  # one forward pass through the compressed stream
                name = PurePosixPath(member.name).name
                if name not in FILES or name in batches or not member.isfile():
                    continue
                where = f"{archive} (member {member.name})"
                _check_size(member.size, where, fix)  # before reading a member of the wrong size
                data = tar.extractfile(member).read()
                batches[name] = parse_batch(data, where, fix)
            while tar.fileobj.read(1 << 20):  # to the end of the gzip stream, where its CRC is checked
                pass
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, UnicodeError) as e:
        raise DataError(f"{archive} is truncated or corrupt ({str(e) or type(e).__name__}); {fix}") from None
    except OSError as e:
        raise DataError(f"cannot read {archive} ({e.strerror or e}); check the file and its permissions.") from None
    missing = [f for f in FILES if f not in batches]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}: it is not the CIFAR-10 binary version "
                        f"({ARCHIVE}, whose {FOLDER}/ folder holds {', '.join(FILES)}); {fix}")
    return batches


def load(data_dir=None, download: bool = True, progress: bool = True):
    """Return (train_images, train_labels, test_images, test_labels, origin) as numpy arrays.

    Images are uint8 (N, 3, 32, 32), labels int64 (N,): 50,000 train and 10,000 test images in the real files.
    """
    source, checked = locate(data_dir)
    via = ""
    if source is None:
        looked = "\n".join(f"  - {folder} ({what})" for folder, what in checked)
        msg = (f"Dataset '{NAME}' was not found. genlab looked for the CIFAR-10 binary version ({FOLDER}/, "
               f"its six .bin files, or {ARCHIVE}) in:\n{looked}\n")
        if not download:
            raise DataError(msg + "Downloading was disabled.\n" + how_to_get())
        dest = _dl.default_cache_dir() / NAME
        try:
            base = _dl.fetch_file(NAME, ARCHIVE, dest, progress=progress)
        except DataError as e:
            raise DataError(msg + f"Downloading it into {dest} failed: {e}\n" + how_to_get()) from None
        source, via = dest / ARCHIVE, f", downloaded from {base}"
    batches = _read_archive(source) if source.is_file() else _read_folder(source)
    train_x = np.concatenate([batches[f][0] for f in TRAIN_FILES])
    train_y = np.concatenate([batches[f][1] for f in TRAIN_FILES])
    test_x, test_y = np.concatenate([batches[TEST_FILE][0]]), batches[TEST_FILE][1]  # a writable copy
    return train_x, train_y, test_x, test_y, f"{source} ({', '.join(FILES)}{via})"


__all__ = ["NAME", "ARCHIVE", "FOLDER", "FILES", "CLASS_NAMES", "RECORD", "RECORDS_PER_FILE", "search_dirs",
           "find", "locate", "how_to_get", "parse_batch", "load"]
