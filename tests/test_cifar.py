"""Tests of the cifar10 source on small CIFAR-10-format binary batches made here (3 records a file)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genlab.data import cifar, dataset_status, load_dataset
from genlab.data import download as dl
from genlab.data.sources import parse_spec
from genlab.errors import DataError

N = 3  # records per batch file here (10,000 in the real files)
NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()  # batches.meta.txt


@pytest.fixture(autouse=True)
def isolated(offline, monkeypatch):
    """Offline (conftest.py) with small batch files."""
    monkeypatch.setattr(cifar, "RECORDS_PER_FILE", N)
    return offline


def batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The binary format written out record by record: label byte, R plane, G plane, B plane."""
    return b"".join(bytes([int(y)]) + x[0].tobytes() + x[1].tobytes() + x[2].tobytes()
                    for x, y in zip(images, labels))


def make_files(seed=0) -> tuple[dict[str, bytes], tuple[np.ndarray, ...]]:
    """{file name: bytes} for the six batch files, and (train_x, train_y, test_x, test_y) they hold."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (6 * N, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 6 * N).astype(np.int64)
    files = {name: batch_bytes(x[i * N:(i + 1) * N], y[i * N:(i + 1) * N]) for i, name in enumerate(cifar.FILES)}
    return files, (x[:5 * N], y[:5 * N], x[5 * N:], y[5 * N:])


def write_folder(folder: Path, seed=0, meta=True):
    files, expected = make_files(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if meta:
        (folder / "batches.meta.txt").write_text("\n".join(NAMES) + "\n\n")
    return expected


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", **kw):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def write_archive(path: Path, seed=0, skip=(), decoys=True):
    """A cifar-10-binary.tar.gz like upstream's (plus decoy members genlab must not read)."""
    files, expected = make_files(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, cifar.FOLDER, type=tarfile.DIRTYPE)
        if decoys:  # a link and a directory named like batch files come first: neither may be read
            add_member(tar, "data_batch_1.bin", type=tarfile.SYMTYPE, linkname=f"{cifar.FOLDER}/test_batch.bin")
            add_member(tar, "x/data_batch_2.bin", type=tarfile.DIRTYPE)
        add_member(tar, f"{cifar.FOLDER}/batches.meta.txt", "\n".join(NAMES).encode())
        for name, data in files.items():
            if name not in skip:
                add_member(tar, f"{cifar.FOLDER}/{name}", data)
        add_member(tar, f"{cifar.FOLDER}/readme.html", b"<html></html>")
    return expected


def assert_same(ds, expected):
    train_x, train_y, test_x, test_y = expected
    assert ds.name == "cifar10" and ds.image_shape == (3, 32, 32)
    assert tuple(ds.train.images.shape) == (5 * N, 3, 32, 32) and tuple(ds.test.images.shape) == (N, 3, 32, 32)
    assert np.array_equal(ds.train.images.numpy(), train_x) and np.array_equal(ds.test.images.numpy(), test_x)
    assert np.array_equal(ds.train.labels.numpy(), train_y) and np.array_equal(ds.test.labels.numpy(), test_y)
    assert ds.num_classes == 10 and ds.class_names == NAMES


# ---------------------------------------------------------------- reading


def test_spec_aliases():
    for spec in ("cifar10", "CIFAR-10", "cifar_10", " Cifar10 "):
        assert parse_spec(spec) == ("cifar10", None)


def test_record_layout_exact(monkeypatch):
    """Label byte first, then the R, G and B planes, each row-major 32x32."""
    red = (np.arange(1024) % 251).astype(np.uint8)  # pixel (r, c) = (32 r + c) % 251
    record = bytes([7]) + red.tobytes() + bytes([1] * 1024) + bytes([200] * 1024)
    monkeypatch.setattr(cifar, "RECORDS_PER_FILE", 2)
    images, labels = cifar.parse_batch(record + bytes([9]) + bytes(range(256)) * 12, "test")
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [7, 9]
    assert images[0, 0, 0, 1] == 1 and images[0, 0, 1, 0] == 32 and images[0, 0, 7, 27] == (7 * 32 + 27) % 251
    assert (images[0, 1] == 1).all() and (images[0, 2] == 200).all()
    assert images[1, 0, 0, 5] == 5 and images[1, 1, 0, 0] == 0 and images[1, 2, 31, 31] == 255


def test_extracted_folder(tmp_path):
    expected = write_folder(tmp_path / "mine" / cifar.FOLDER)
    ds = load_dataset("cifar10", data_dir=tmp_path / "mine", download=False)
    assert_same(ds, expected)
    assert ds.train.images.is_contiguous() and ds.test.images.numpy().flags.writeable
    assert str(tmp_path / "mine" / cifar.FOLDER) in ds.origin and "test_batch.bin" in ds.origin


def test_bin_files_directly_and_search_order(tmp_path, isolated):
    mine = tmp_path / "mine"
    flat = write_folder(mine, seed=1, meta=False)
    assert_same(load_dataset("Cifar-10", data_dir=mine, download=False), flat)
    sub = write_folder(mine / "cifar10" / cifar.FOLDER, seed=2)  # data_dir/cifar10/ comes before data_dir
    assert_same(load_dataset("cifar10", data_dir=mine, download=False), sub)
    cached = write_archive(isolated / "cifar10" / cifar.ARCHIVE, seed=3)  # the cache comes last
    assert_same(load_dataset("cifar10", data_dir=tmp_path / "empty", download=False), cached)
    assert_same(load_dataset("cifar10", download=False), cached)


def test_archive_read_in_place(tmp_path):
    archive = tmp_path / "mine" / "cifar10" / cifar.ARCHIVE
    expected = write_archive(archive)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    ds = load_dataset("CIFAR_10", data_dir=tmp_path / "mine", download=False)
    assert_same(ds, expected)  # the decoy link to test_batch.bin was not read as data_batch_1.bin
    assert ds.origin.startswith(str(archive))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing extracted


def test_image_size_and_channels(tmp_path):
    train_x = write_folder(tmp_path / "mine")[0]
    ds = load_dataset("cifar10", data_dir=tmp_path / "mine", image_size=16, channels=1, download=False)
    assert tuple(ds.train.images.shape) == (5 * N, 1, 16, 16) and tuple(ds.test.images.shape) == (N, 1, 16, 16)
    lanczos = getattr(Image, "Resampling", Image).LANCZOS
    for i in (0, 5 * N - 1):
        pil = Image.fromarray(train_x[i].transpose(1, 2, 0), "RGB").convert("L").resize((16, 16), lanczos)
        assert np.array_equal(ds.train.images[i, 0].numpy(), np.asarray(pil))
    assert ds.num_classes == 10


# ---------------------------------------------------------------- errors


def test_truncated_and_wrong_size_files(tmp_path):
    folder = tmp_path / "mine"
    write_folder(folder)
    path = folder / "data_batch_3.bin"
    good = path.read_bytes()
    path.write_bytes(good[:-1])
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", data_dir=folder, download=False)
    msg = str(e.value)
    assert str(path) in msg and f"{3 * 3073 - 1} bytes" in msg and "3073-byte records" in msg
    assert "truncated" in msg and "binary version" in msg
    path.write_bytes(good + good[:3073])  # a whole record too many
    with pytest.raises(DataError, match=r"data_batch_3\.bin holds 4 records, but a CIFAR-10 batch file holds 3"):
        load_dataset("cifar10", data_dir=folder, download=False)


def test_bad_label(tmp_path):
    folder = tmp_path / "mine"
    write_folder(folder)
    data = bytearray((folder / "test_batch.bin").read_bytes())
    data[3073] = 10  # the label byte of record 1
    (folder / "test_batch.bin").write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", data_dir=folder, download=False)
    msg = str(e.value)
    assert str(folder / "test_batch.bin") in msg and "record 1 has label 10" in msg and "0..9" in msg


def test_missing_batches(tmp_path, isolated):
    mine = tmp_path / "mine"
    write_folder(mine / cifar.FOLDER)
    (mine / cifar.FOLDER / "data_batch_4.bin").unlink()
    (mine / cifar.FOLDER / "test_batch.bin").unlink()
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", data_dir=mine, download=False)
    msg = str(e.value)
    assert f"  - {mine} (missing data_batch_4.bin, test_batch.bin in {cifar.FOLDER}/)" in msg
    for folder in (mine / "cifar10", isolated / "cifar10"):
        assert f"  - {folder} (no such folder)" in msg
    assert "Downloading was disabled" in msg and "GENLAB_CIFAR10_MIRROR" in msg and "--data-dir" in msg
    assert "binary version" in msg and cifar.ARCHIVE in msg
    archive = mine / cifar.ARCHIVE  # a complete folder or the archive is needed: here the archive lacks one
    write_archive(archive, skip=("data_batch_5.bin",))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", data_dir=mine, download=False)
    assert f"{archive} lacks data_batch_5.bin" in str(e.value) and "delete" in str(e.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_archive(tmp_path, damage):
    archive = tmp_path / "mine" / cifar.ARCHIVE
    write_archive(archive)
    data = archive.read_bytes()
    archive.write_bytes(data[:len(data) // 2] if damage == "truncate" else b"not a gzip file" * 100)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", data_dir=tmp_path / "mine", download=False)
    msg = str(e.value)
    assert f"{archive} is truncated or corrupt" in msg and f"delete {archive} so that genlab downloads it again" in msg


# ---------------------------------------------------------------- downloads (local HTTP server: `server` in conftest.py)

def test_download_verifies_and_keeps_archive(server, monkeypatch, isolated):
    root, url = server
    expected = write_archive(root / "c10" / cifar.ARCHIVE, seed=4)
    data = (root / "c10" / cifar.ARCHIVE).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(dl.KNOWN, "cifar10", {cifar.ARCHIVE: dl.Known(len(data), sha, hashlib.md5(data).hexdigest())})
    monkeypatch.setenv("GENLAB_CIFAR10_MIRROR", f"{url}nothing-here/, {url}c10")  # a 404 first; no trailing slash
    ds = load_dataset("cifar10", progress=False)
    assert_same(ds, expected)
    cached = isolated / "cifar10"
    assert [p.name for p in cached.iterdir()] == [cifar.ARCHIVE]  # kept as it is, no temp files
    assert dl.sha256_of(cached / cifar.ARCHIVE) == sha
    assert ds.origin.startswith(str(cached / cifar.ARCHIVE)) and f"downloaded from {url}c10/" in ds.origin
    monkeypatch.setenv("GENLAB_CIFAR10_MIRROR", dl.MIRRORS["cifar10"][0])  # a closed port: now read from the cache
    assert_same(load_dataset("cifar10", download=False), expected)


def test_download_checksum_mismatch_keeps_nothing(server, monkeypatch, isolated):
    root, url = server
    write_archive(root / cifar.ARCHIVE)
    data = (root / cifar.ARCHIVE).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    bad = "0123456789abcdef" * 4
    monkeypatch.setitem(dl.KNOWN, "cifar10", {cifar.ARCHIVE: dl.Known(len(data), bad, hashlib.md5(data).hexdigest())})
    monkeypatch.setitem(dl.MIRRORS, "cifar10", [url])
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", progress=False)
    msg = str(e.value)
    assert f"{url}{cifar.ARCHIVE}" in msg and bad in msg and actual in msg
    assert "not found" in msg and str(isolated / "cifar10") in msg
    assert not isolated.exists() or not any(isolated.rglob("*"))  # no archive, no temp file, no empty folder


def test_download_unreachable(isolated):
    dead = dl.MIRRORS["cifar10"][0]
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", progress=False)
    msg = str(e.value)
    assert f"could not download {dead}{cifar.ARCHIVE}" in msg and f"Downloading it into {isolated / 'cifar10'}" in msg
    assert "GENLAB_CIFAR10_MIRROR" in msg and "cifar.html" in msg
    assert not (isolated / "cifar10").exists()


def test_dataset_status(tmp_path, isolated):
    row = {r["name"]: r for r in dataset_status()}["cifar10"]
    assert not row["available"] and str(isolated / "cifar10") in row["where"]
    assert "GENLAB_CIFAR10_MIRROR" in row["how"] and cifar.ARCHIVE in row["how"]
    write_archive(isolated / "cifar10" / cifar.ARCHIVE)
    row = {r["name"]: r for r in dataset_status()}["cifar10"]
    assert row["available"] and row["where"] == str(isolated / "cifar10" / cifar.ARCHIVE)
    write_folder(tmp_path / "mine" / cifar.FOLDER)
    row = {r["name"]: r for r in dataset_status(data_dir=tmp_path / "mine")}["cifar10"]
    assert row["available"] and row["where"] == str(tmp_path / "mine" / cifar.FOLDER)
