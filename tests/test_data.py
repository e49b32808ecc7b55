"""Tests of genlab.data on real data: sklearn digits, Debian's Fashion-MNIST, and files made here."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.data import SOURCES, Dataset, ImageSplit, dataset_status, default_cache_dir, load_dataset
from genlab.data import download as dl
from genlab.data import mnist as mn
from genlab.data import transform
from genlab.data.idx import read_idx, read_idx_pair, write_idx
from genlab.data.sources import parse_spec
from genlab.errors import DataError, GenlabError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
STEMS = dl.FILES


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def isolated(offline):
    """Cache in tmp_path, no proxies, and default mirrors that can never reach the internet (conftest.py)."""
    return offline


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding written out by hand (independent of genlab's writer)."""
    arr = np.asarray(arr)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def make_idx_set(folder: Path, n_train=12, n_test=5, size=(28, 28), gz=True, seed=0):
    """Write the four MNIST-style files; return (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (rng.integers(0, 256, (n_train, *size), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, *size), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))
    for stem, arr in zip(STEMS, arrays):
        data = idx_bytes(arr)
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def assert_same(ds: Dataset, arrays):
    tx, ty, vx, vy = arrays
    assert np.array_equal(ds.train.images.numpy(), tx[:, None]) and np.array_equal(ds.train.labels.numpy(), ty)
    assert np.array_equal(ds.test.images.numpy(), vx[:, None]) and np.array_equal(ds.test.labels.numpy(), vy)


def png(path: Path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)


# ---------------------------------------------------------------- cache dir, specs

def test_sources_and_default_cache_dir(monkeypatch, tmp_path):
    assert SOURCES == ("digits", "mnist", "fashion-mnist", "cifar10", "folder:PATH", "npz:PATH")
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENLAB_DATA", "~/data")
    assert default_cache_dir() == tmp_path / "home" / "data"
    monkeypatch.delenv("GENLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "genlab" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "genlab" / "data"


def test_spec_parsing_and_options(monkeypatch, tmp_path):
    assert parse_spec("MNIST") == ("mnist", None)
    assert parse_spec(" Fashion_MNIST ") == ("fashion-mnist", None)
    monkeypatch.chdir(tmp_path)
    assert parse_spec("folder:imgs") == ("folder", tmp_path / "imgs")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_spec("npz:~/d.npz") == ("npz", tmp_path / "d.npz")
    with pytest.raises(DataError) as e:
        load_dataset("svhn")
    msg = str(e.value)
    assert "'svhn'" in msg and all(s.split(":")[0] in msg for s in SOURCES)
    (tmp_path / "pics").mkdir()
    with pytest.raises(DataError, match="did you mean folder:pics"):
        load_dataset("pics")
    with pytest.raises(DataError, match="no path"):
        load_dataset("npz:")
    for bad in ({"image_size": 0}, {"image_size": 2.5}, {"channels": 2}, {"channels": True}):
        with pytest.raises(DataError):
            load_dataset("digits", **bad)
    assert issubclass(DataError, GenlabError) and issubclass(DataError, ValueError)


# ---------------------------------------------------------------- digits

def test_digits_shapes_split_and_determinism():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert ds.name == "digits" and "load_digits" in ds.origin
    assert (len(ds.train), len(ds.test)) == (1437, 360)
    assert ds.train.images.shape == (1437, 1, 8, 8) and ds.test.images.shape == (360, 1, 8, 8)
    assert ds.image_shape == (1, 8, 8)
    for split in (ds.train, ds.test):
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert split.labels.dtype == torch.int64 and split.labels.shape == (len(split),)
    assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]
    # the specified split: default_rng(0) permutation, last 360 are test; values round(v * 255 / 16)
    bunch = load_digits()
    expected = np.array([[round(v * 255 / 16) for v in img.ravel()] for img in bunch.images], np.uint8)
    perm = np.random.default_rng(0).permutation(1797)
    assert np.array_equal(ds.test.images.numpy().reshape(360, 64), expected[perm[1437:]])
    assert np.array_equal(ds.train.images.numpy().reshape(1437, 64), expected[perm[:1437]])
    assert np.array_equal(ds.test.labels.numpy(), bunch.target[perm[1437:]])
    assert ds.train.images.max() == 255 and ds.train.images.min() == 0
    again = load_dataset("digits")
    assert torch.equal(again.train.images, ds.train.images) and torch.equal(again.test.labels, ds.test.labels)


def test_digits_resize_and_channels_match_pillow():
    base = load_dataset("digits")
    ds = load_dataset("digits", image_size=16, channels=3)
    assert ds.image_shape == (3, 16, 16) and ds.train.images.is_contiguous()
    x = ds.train.images
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    for i in (0, 5, 100):
        ref = Image.fromarray(base.train.images[i, 0].numpy()).resize((16, 16), Image.LANCZOS)
        assert np.array_equal(x[i, 0].numpy(), np.asarray(ref))
    small = load_dataset("digits", image_size=4)
    assert small.image_shape == (1, 4, 4) and torch.equal(small.train.labels, base.train.labels)


def test_batch_resize_and_gray_match_pillow():
    rng = np.random.default_rng(0)
    # square images, and non-square ones where at most one side shrinks: identical to Pillow
    for h, w, size, c in [(28, 28, 32, 1), (28, 28, 14, 3), (9, 9, 64, 1), (64, 64, 7, 3), (33, 33, 32, 1),
                          (30, 17, 23, 1), (17, 30, 23, 3), (5, 9, 12, 1)]:
        x = rng.integers(0, 256, (4, c, h, w), dtype=np.uint8)
        x[0] = 255  # saturated: exercises clipping of LANCZOS overshoot
        got = transform.resize(x, size)
        for i in range(4):
            src = x[i, 0] if c == 1 else np.ascontiguousarray(x[i].transpose(1, 2, 0))
            ref = np.asarray(Image.fromarray(src).resize((size, size), Image.LANCZOS)).reshape(size, size, c)
            assert np.array_equal(got[i], ref.transpose(2, 0, 1)), (h, w, size, c, i)
    rgb = rng.integers(0, 256, (2, 3, 5, 6), dtype=np.uint8)
    gray = transform.convert_channels(rgb, 1)
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(rgb[1].transpose(1, 2, 0))).convert("L"))
    assert gray.shape == (2, 1, 5, 6) and np.array_equal(gray[1, 0], ref)


# ---------------------------------------------------------------- Fashion-MNIST (Debian package)

def test_fashion_mnist_from_debian_package():
    # CI installs dataset-fashion-mnist; a missing package must fail this test, not skip it.
    assert all((FASHION_DIR / (s + ".gz")).is_file() for s in STEMS), \
        f"{FASHION_DIR} is missing: apt-get install dataset-fashion-mnist"
    ds = load_dataset("fashion-mnist", download=False, progress=False)  # cache is an empty tmp dir
    assert ds.name == "fashion-mnist" and str(FASHION_DIR) in ds.origin
    assert (len(ds.train), len(ds.test)) == (60000, 10000) and ds.image_shape == (1, 28, 28)
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.is_contiguous()
    assert ds.num_classes == 10 and ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert torch.equal(torch.bincount(ds.train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(ds.test.labels), torch.full((10,), 1000))
    assert int(ds.train.labels[0]) == 9 and int(ds.test.labels[0]) == 9  # both start with an ankle boot
    assert 60 < ds.train.images.float().mean() < 85  # Fashion-MNIST's mean pixel is about 73


# ---------------------------------------------------------------- IDX format

def test_idx_round_trip_raw_and_gz(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    (tmp_path / "a").write_bytes(idx_bytes(images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "l.gz").write_bytes(gzip.compress(idx_bytes(labels)[:6]) + gzip.compress(idx_bytes(labels)[6:]))
    for name in ("a", "a.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8 and np.array_equal(got, images) and got.flags.writeable
    assert np.array_equal(read_idx(tmp_path / "l.gz"), labels)  # multi-member gzip
    x, y = read_idx_pair(tmp_path / "a.gz", tmp_path / "l.gz")
    assert x.shape == (7, 1, 5, 3) and y.dtype == np.int64 and np.array_equal(y, labels)
    # the writer produces exactly the hand-made encoding, and other IDX types survive a round trip
    write_idx(tmp_path / "w", images)
    assert (tmp_path / "w").read_bytes() == idx_bytes(images)
    for arr in (np.arange(-6, 6, dtype=np.int32).reshape(3, 4), np.linspace(0, 1, 5, dtype=np.float32),
                np.array([-300, 7], np.int16), np.array([[1.5, -2.25]], np.float64)):
        write_idx(tmp_path / "t.gz", arr)
        back = read_idx(tmp_path / "t.gz")
        assert back.dtype == arr.dtype and np.array_equal(back, arr)


@pytest.mark.parametrize("case, pattern", [
    ("truncated", r"truncated: .*3 x 4 x 4 .* 48 bytes of data, but the file has 40"),
    ("too_long", r"too long: .*48 bytes of data, but the file has 50"),
    ("magic", r"wrong magic number 12 34 08 03"),
    ("dtype", r"type code 0x0A"),
    ("gzip_corrupt", r"corrupt gzip"),
    ("gzip_truncated", r"truncated gzip"),
    ("not_gzip", r"named \.gz but is not gzip"),
    ("empty", r"wrong magic number \(empty file\)"),
    ("missing", r"IDX file not found"),
])
def test_idx_errors_name_the_file(tmp_path, case, pattern):
    good = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    noise = np.random.default_rng(0).integers(0, 256, (50, 40), dtype=np.uint8)  # long enough to cut or damage
    gz = gzip.compress(idx_bytes(noise), compresslevel=1)
    corrupt = bytearray(gz)
    corrupt[len(gz) // 2:len(gz) // 2 + 20] = b"\xff" * 20  # past the header
    content = {
        "truncated": good[:-8], "too_long": good + b"\0\0", "magic": b"\x12\x34" + good[2:],
        "dtype": good[:2] + b"\x0a" + good[3:], "gzip_corrupt": bytes(corrupt),
        "gzip_truncated": gz[: len(gz) // 2], "not_gzip": good, "empty": b"", "missing": None,
    }[case]
    path = tmp_path / (f"{case}-idx3-ubyte" + (".gz" if case.startswith(("gzip", "not_gzip")) else ""))
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_idx_count_mismatch_names_both_files(tmp_path):
    folder = tmp_path / "mnist"
    make_idx_set(folder, n_train=6)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(DataError) as e:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert "6 images" in msg and "5 labels" in msg
    assert str(folder / "train-images-idx3-ubyte.gz") in msg and str(folder / "train-labels-idx1-ubyte.gz") in msg


# ---------------------------------------------------------------- MNIST-style folders

def test_mnist_from_data_dir_raw_and_gz(tmp_path):
    arrays = make_idx_set(tmp_path / "d" / "mnist", gz=True, seed=1)
    ds = load_dataset("mnist", data_dir=tmp_path / "d", download=False)
    assert_same(ds, arrays)
    assert ds.name == "mnist" and ds.class_names == [str(i) for i in range(10)] and ds.num_classes == 10
    assert str(tmp_path / "d" / "mnist") in ds.origin
    raw = make_idx_set(tmp_path / "flat", gz=False, seed=2)  # files directly in data_dir, uncompressed
    assert_same(load_dataset("mnist", data_dir=tmp_path / "flat", download=False), raw)
    make_idx_set(tmp_path / "flat" / "mnist", seed=3)  # data_dir/<name>/ wins over data_dir itself
    assert not torch.equal(load_dataset("mnist", data_dir=tmp_path / "flat").train.images,
                           torch.from_numpy(raw[0][:, None]))


def test_missing_dataset_lists_every_folder_searched(tmp_path, monkeypatch, isolated):
    monkeypatch.setitem(mn.SYSTEM_DIRS, "fashion-mnist", [tmp_path / "usr-share"])
    data_dir = tmp_path / "dd"
    data_dir.mkdir()
    (data_dir / "train-images-idx3-ubyte.gz").write_bytes(b"")  # a partial set is not enough
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", data_dir=data_dir, download=False)
    msg = str(e.value)
    for folder in (data_dir / "fashion-mnist", data_dir, isolated / "fashion-mnist", tmp_path / "usr-share"):
        assert f"  - {folder} (" in msg
    assert "missing train-labels-idx1-ubyte" in msg and "Downloading was disabled" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "GENLAB_DATA" in msg and "--data-dir" in msg
    assert not (isolated / "fashion-mnist").exists()


# ---------------------------------------------------------------- downloads (local HTTP server: `server` in conftest.py)

def serve_set(root: Path, name: str, monkeypatch, seed=4):
    arrays = make_idx_set(root / name, seed=seed)
    known = {s + ".gz": known_of((root / name / (s + ".gz")).read_bytes()) for s in STEMS}
    monkeypatch.setitem(dl.KNOWN, name, known)
    return arrays, known


def known_of(data: bytes) -> dl.Known:
    return dl.Known(len(data), hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())


def test_download_verifies_and_caches(server, monkeypatch, isolated):
    root, url = server
    arrays, known = serve_set(root, "mnist", monkeypatch)
    # first mirror has no files (HTTP 404), the second one serves them; no trailing slash on purpose
    monkeypatch.setitem(dl.MIRRORS, "mnist", [url + "nothing-here/", url + "mnist"])
    ds = load_dataset("mnist", progress=True)
    assert_same(ds, arrays)
    cached = isolated / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(known)  # four .gz files, no temp files
    assert all(dl.sha256_of(cached / f) == k.sha256 and dl.md5_of(cached / f) == k.md5 for f, k in known.items())
    assert "downloaded from " + url + "mnist/" in ds.origin and str(cached) in ds.origin
    monkeypatch.setitem(dl.MIRRORS, "mnist", [closed_port_url()])  # now served from the cache
    assert_same(load_dataset("mnist", download=False), arrays)


def test_download_mirror_from_environment(server, monkeypatch, isolated):
    root, url = server
    monkeypatch.setitem(mn.SYSTEM_DIRS, "fashion-mnist", [])  # ignore the Debian copy here
    arrays, _ = serve_set(root, "fm", monkeypatch, seed=5)
    monkeypatch.setitem(dl.KNOWN, "fashion-mnist", dl.KNOWN.pop("fm"))
    monkeypatch.setenv("GENLAB_FASHION_MNIST_MIRROR", url + "fm/")
    ds = load_dataset("fashion-mnist", progress=False)
    assert_same(ds, arrays)
    assert (isolated / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


@pytest.mark.parametrize("digest", ["sha256", "md5"])
def test_download_checksum_mismatch_keeps_nothing(server, monkeypatch, isolated, digest):
    root, url = server
    _, known = serve_set(root, "mnist", monkeypatch)
    file = "train-labels-idx1-ubyte.gz"
    good = getattr(known[file], digest)
    bad = "0123456789abcdef" * (len(good) // 16)
    monkeypatch.setitem(dl.KNOWN["mnist"], file, known[file]._replace(**{digest: bad}))
    monkeypatch.setitem(dl.MIRRORS, "mnist", [url + "mnist/"])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", progress=False)
    msg = str(e.value)
    assert f"{url}mnist/{file}" in msg and {"sha256": "SHA-256", "md5": "MD5"}[digest] in msg
    assert bad in msg and good in msg
    assert "not found" in msg and str(isolated / "mnist") in msg
    left = sorted(p.name for p in (isolated / "mnist").iterdir())
    assert left == ["train-images-idx3-ubyte.gz"]  # verified before the failure; no partial or temp file


def test_download_refuses_an_announced_size_over_the_known_one(server, monkeypatch, isolated):
    root, url = server
    _, known = serve_set(root, "mnist", monkeypatch)
    file = "t10k-images-idx3-ubyte.gz"
    (root / "mnist" / file).write_bytes((root / "mnist" / file).read_bytes() + bytes(1 << 20))  # 1 MB too long
    monkeypatch.setitem(dl.MIRRORS, "mnist", [url + "mnist/"])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", progress=False)
    msg = str(e.value)
    assert f"{url}mnist/{file} is announced as {known[file].size + (1 << 20)} bytes" in msg
    assert f"{file} is {known[file].size} bytes" in msg
    assert not any(p.name.startswith(f".{file}") for p in (isolated / "mnist").iterdir())  # no temp file left


class _Endless(http.server.BaseHTTPRequestHandler):
    """Serves an endless stream of zeros with no Content-Length (a broken or hostile mirror)."""

    sent = 0

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        block = bytes(1 << 16)
        try:
            while _Endless.sent < (64 << 20):  # the test fails if genlab reads this far
                self.wfile.write(block)
                _Endless.sent += len(block)
        except OSError:  # genlab hung up: what is wanted
            pass

    def log_message(self, *args):
        pass


def test_download_stops_at_the_known_size(monkeypatch, isolated):
    _Endless.sent = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        size = 100_000
        monkeypatch.setitem(dl.KNOWN, "mnist", {s + ".gz": dl.Known(size, "0" * 64, "0" * 32) for s in STEMS})
        monkeypatch.setitem(dl.MIRRORS, "mnist", [f"http://127.0.0.1:{httpd.server_address[1]}/"])
        with pytest.raises(DataError) as e:
            load_dataset("mnist", progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    msg = str(e.value)
    assert f"sent more than the {size} bytes of train-images-idx3-ubyte.gz" in msg and "stopped" in msg
    assert _Endless.sent < (64 << 20)  # the server was cut off long before it could fill anything
    assert not (isolated / "mnist").exists()  # nothing kept, not even the temporary file


def test_known_files_table():
    assert set(dl.KNOWN) == set(dl.MIRRORS) == set(dl.MIRROR_ENV)
    for name in ("mnist", "fashion-mnist"):
        assert sorted(dl.KNOWN[name]) == sorted(s + ".gz" for s in STEMS)
    for files in dl.KNOWN.values():
        for k in files.values():
            assert k.size > 0 and len(k.sha256) == 64 and len(k.md5) == 32
            assert int(k.sha256, 16) >= 0 and int(k.md5, 16) >= 0 and k.sha256 == k.sha256.lower()


def test_download_unreachable_mirror(monkeypatch, isolated):
    dead = closed_port_url()
    monkeypatch.setitem(dl.MIRRORS, "mnist", [dead])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", progress=False)
    msg = str(e.value)
    assert f"could not download {dead}train-images-idx3-ubyte.gz" in msg
    assert "GENLAB_MNIST_MIRROR" in msg and str(isolated / "mnist") in msg
    assert not (isolated / "mnist").exists()  # not even an empty folder is left


# ---------------------------------------------------------------- folders of images

def test_folder_classes_sizes_and_channels(tmp_path):
    root = tmp_path / "imgs"
    red, blue = np.zeros((6, 9, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    blue[..., 2] = 255
    png(root / "cats" / "a.png", red)
    png(root / "cats" / "B.PNG", np.full((8, 8), 100))
    png(root / "dogs" / "c.png", blue)
    png(root / "dogs" / "deep" / "d.bmp", blue)
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "cats" / ".hidden.png").write_bytes(b"junk")  # hidden files are skipped
    (root / "empty").mkdir()  # no images: not a class
    with pytest.raises(DataError, match="--image-size") as e:
        load_dataset(f"folder:{root}")
    assert str(root) in str(e.value)
    ds = load_dataset(f"folder:{root}", image_size=8, progress=False)
    assert ds.name == f"folder:{root}" and ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
    assert ds.image_shape == (3, 8, 8) and (len(ds.train), len(ds.test)) == (3, 1)
    x = torch.cat([ds.train.images, ds.test.images]).numpy().astype(int)
    y = torch.cat([ds.train.labels, ds.test.labels]).numpy()
    mean = x.mean(axis=(2, 3))
    kinds = sorted((tuple(np.round(m).astype(int)), int(lab)) for m, lab in zip(mean, y))
    assert kinds == [((0, 0, 255), 1), ((0, 0, 255), 1), ((100, 100, 100), 0), ((255, 0, 0), 0)]
    gray = load_dataset(f"folder:{root}", image_size=4, channels=1, progress=False)
    assert gray.image_shape == (1, 4, 4)
    values = sorted(int(v) for v in torch.cat([gray.train.images, gray.test.images]).float().mean((1, 2, 3)))
    assert values == [29, 29, 76, 100]  # Pillow's luma of blue and red


def test_folder_unlabelled_grayscale_split(tmp_path, monkeypatch):
    for i in range(20):
        png(tmp_path / "flat" / f"{i:02d}.png", np.full((5, 7), i * 10))
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("folder:flat", progress=False)
    assert ds.name == f"folder:{tmp_path / 'flat'}" and str(tmp_path / "flat") in ds.origin
    assert ds.train.labels is None and ds.test.labels is None and ds.num_classes == 0 and ds.class_names is None
    assert ds.image_shape == (1, 5, 7) and (len(ds.train), len(ds.test)) == (18, 2)
    allv = sorted(int(v) for v in torch.cat([ds.train.images, ds.test.images])[:, 0, 0, 0])
    assert allv == [i * 10 for i in range(20)]
    assert torch.equal(load_dataset("folder:flat", progress=False).test.images, ds.test.images)


def test_folder_root_images_with_subfolders_and_alpha(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, 3] = 0  # fully transparent black -> white
    rgba[2:, :, 3] = 255  # opaque black
    png(tmp_path / "m" / "loose.png", rgba, "RGBA")
    png(tmp_path / "m" / "k" / "x.png", np.full((4, 4), 7))
    png(tmp_path / "m" / "k" / "y.png", np.full((4, 4), 9))
    ds = load_dataset(f"folder:{tmp_path / 'm'}", progress=False)
    assert ds.class_names == [".", "k"] and ds.num_classes == 2 and ds.image_shape == (3, 4, 4)
    x = torch.cat([ds.train.images, ds.test.images])
    y = torch.cat([ds.train.labels, ds.test.labels])
    loose = x[y == 0]
    assert len(loose) == 1 and (loose[0, :, :2] == 255).all() and (loose[0, :, 2:] == 0).all()


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        load_dataset(f"folder:{tmp_path / 'nope'}")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "file.npz").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder.*npz:"):
        load_dataset(f"folder:{tmp_path / 'file.npz'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no images found in .*empty.*\.png, \.jpg"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    png(tmp_path / "bad" / "ok.png", np.zeros((3, 3)))
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="Remove the file") as e:
        load_dataset(f"folder:{tmp_path / 'bad'}", progress=False)
    assert str(tmp_path / "bad" / "broken.png") in str(e.value)
    png(tmp_path / "one" / "only.png", np.zeros((3, 3)))
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(f"folder:{tmp_path / 'one'}", progress=False)


# ---------------------------------------------------------------- npz files

def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(2)
    hw = rng.integers(0, 256, (30, 6, 5), dtype=np.uint8)
    labels = np.arange(30) % 4
    np.savez(tmp_path / "hw.npz", images=hw, labels=labels)
    ds = load_dataset(f"npz:{tmp_path / 'hw.npz'}")
    assert ds.name == f"npz:{tmp_path / 'hw.npz'}" and ds.image_shape == (1, 6, 5)
    assert (len(ds.train), len(ds.test)) == (27, 3) and ds.num_classes == 4 and ds.class_names == ["0", "1", "2", "3"]
    x = torch.cat([ds.train.images, ds.test.images])[:, 0].numpy()
    y = torch.cat([ds.train.labels, ds.test.labels]).numpy()
    order = np.argsort([int(np.flatnonzero((hw == img).all(axis=(1, 2)))[0]) for img in x])
    assert np.array_equal(x[order], hw) and np.array_equal(y[order], labels)

    hwc = rng.random((10, 4, 3, 3))
    np.savez(tmp_path / "hwc.npz", x=hwc, y=np.ones(10, np.int32))
    ds = load_dataset(f"npz:{tmp_path / 'hwc.npz'}")
    assert ds.image_shape == (3, 4, 3) and ds.num_classes == 2
    got = torch.cat([ds.train.images, ds.test.images]).numpy()
    want = np.rint(hwc * 255).astype(np.uint8).transpose(0, 3, 1, 2)
    assert sorted(map(bytes, got)) == sorted(map(bytes, want))

    chw = rng.integers(0, 256, (5, 3, 4, 6), dtype=np.uint8)
    test = rng.integers(0, 256, (2, 3, 4, 6), dtype=np.uint8)
    np.savez(tmp_path / "chw.npz", images=chw, test_images=test)
    ds = load_dataset(f"npz:{tmp_path / 'chw.npz'}", channels=1)
    assert ds.image_shape == (1, 4, 6) and (len(ds.train), len(ds.test)) == (5, 2) and ds.num_classes == 0
    assert np.array_equal(ds.test.images.numpy(), transform.convert_channels(test, 1))

    np.savez(tmp_path / "pos.npz", hw, labels, class_names=np.array(list("abcde")))
    ds = load_dataset(f"npz:{tmp_path / 'pos.npz'}", image_size=12)
    assert ds.image_shape == (1, 12, 12) and ds.class_names == list("abcde") and ds.num_classes == 5


@pytest.mark.parametrize("arrays, pattern", [
    ({"pixels": np.zeros((3, 4, 4), np.uint8), "targets": np.zeros(3)},
     r"no images array: looked for keys images, x, arr_0 but found pixels, targets"),
    ({"images": np.zeros((10, 4, 4), np.uint8), "labels": np.zeros(12, int)}, r"12 labels but 'images' has 10 images"),
    ({"images": np.full((3, 4, 4), 1.5)}, r"floats from 1\.5 to 1\.5; float images must be in \[0, 1\]"),
    ({"images": np.full((3, 4, 4), np.nan)}, r"NaN"),
    ({"images": np.zeros((3, 4), np.uint8)}, r"shape \(3, 4\)"),
    ({"images": np.zeros((3, 5, 5, 4), np.uint8)}, r"need 1 or 3 channels"),
    ({"images": np.zeros((3, 4, 4), np.uint8), "test_labels": np.zeros(2, int)}, r"'test_labels' but no 'test_images'"),
])
def test_npz_errors(tmp_path, arrays, pattern):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=pattern) as e:
        load_dataset(f"npz:{path}")
    assert str(path) in str(e.value)


def test_npz_file_errors(tmp_path):
    with pytest.raises(DataError, match="npz file not found") as e:
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    assert str(tmp_path / "missing.npz") in str(e.value)
    (tmp_path / "text.npz").write_text("hello, not a zip")
    with pytest.raises(DataError, match="not a readable .npz file") as e:
        load_dataset(f"npz:{tmp_path / 'text.npz'}")
    assert str(tmp_path / "text.npz") in str(e.value)
    np.save(tmp_path / "one.npy", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DataError, match="is a .npy file"):
        load_dataset(f"npz:{tmp_path / 'one.npy'}")


# ---------------------------------------------------------------- status, containers

def test_dataset_status(tmp_path, isolated):
    rows = dataset_status()
    assert [r["name"] for r in rows] == list(SOURCES)
    assert all(set(r) == {"name", "available", "where", "how"} for r in rows)
    by = {r["name"]: r for r in rows}
    assert by["digits"]["available"] and by["fashion-mnist"]["available"]
    assert by["fashion-mnist"]["where"] == str(FASHION_DIR)
    assert not by["mnist"]["available"] and str(isolated / "mnist") in by["mnist"]["where"]
    assert "download" in by["mnist"]["how"]
    make_idx_set(isolated / "mnist")
    assert {r["name"]: r for r in dataset_status()}["mnist"]["available"]
    make_idx_set(tmp_path / "mine" / "mnist")
    mine = {r["name"]: r for r in dataset_status(data_dir=tmp_path / "mine")}["mnist"]
    assert mine["available"] and mine["where"] == str(tmp_path / "mine" / "mnist")


def test_image_split_validates():
    split = ImageSplit(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.arange(3))
    assert len(split) == 3
    with pytest.raises(ValueError):
        ImageSplit(torch.zeros(3, 1, 2, 2), None)
    with pytest.raises(ValueError):
        ImageSplit(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.arange(2))


def test_the_data_layer_imports_nothing_from_the_models():
    """data/ sits below models/: every data module imports without loading any genlab.models module, and
    the batches it hands out are the models' own Batch class."""
    code = ("import importlib, pkgutil, sys, genlab.data\n"
            "for m in pkgutil.iter_modules(genlab.data.__path__): importlib.import_module('genlab.data.' + m.name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('genlab.models')))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": src}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    from genlab.batch import Batch
    from genlab.data.batches import BatchIterator
    from genlab.models import base

    assert base.Batch is Batch
    it = BatchIterator(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), None, 2, torch.Generator().manual_seed(0))
    assert all(type(b) is Batch for b in it.epoch())
