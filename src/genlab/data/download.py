"""Cache folder and checksum-verified downloads (the MNIST-style IDX files, the CIFAR-10 archive).

Downloads go to a temporary file next to the destination and are moved into place with
``os.replace`` only after their size, SHA-256 and MD5 match, so a failed or partial download never
leaves a file that looks complete. The known size bounds every transfer: a server that announces or
sends more is cut off at once, so a wrong mirror cannot fill the disk. Only downloads are
checksummed: files found locally (e.g. Debian's recompressed ``.gz`` files) are validated
structurally by :mod:`genlab.data.idx` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.error
import shutil
import urllib.request
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from genlab.errors import DataError

#: The four IDX files of an MNIST-style dataset (each may be stored raw or as ``<name>.gz``).
FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Base URLs tried in order; ``<base><file>`` is fetched (the file names are the keys of KNOWN[name]).
#: An environment variable from MIRROR_ENV (one URL, or several separated by commas/spaces)
#: replaces the list.
MIRRORS: dict[str, list[str]] = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}
MIRROR_ENV: dict[str, str] = {
    "mnist": "GENLAB_MNIST_MIRROR",
    "fashion-mnist": "GENLAB_FASHION_MNIST_MIRROR",
    "cifar10": "GENLAB_CIFAR10_MIRROR",
}

class Known(NamedTuple):
    """What a downloaded file must be: its exact size in bytes, SHA-256 and MD5 (hex)."""

    size: int
    sha256: str
    md5: str


#: Every file genlab downloads. Sizes and SHA-256 as recorded in TensorFlow Datasets' checksum files
#: (url_checksums/mnist.txt, fashion_mnist.txt, cifar10.txt); MD5 as published with the datasets
#: (and used by torchvision). Both digests must match; the size bounds the transfer.
KNOWN: dict[str, dict[str, Known]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": Known(
            9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte.gz": Known(
            28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte.gz": Known(
            1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte.gz": Known(
            4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ec29112dd5afa0611ce80d1b7f02629c"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": Known(
            26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte.gz": Known(
            29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte.gz": Known(
            4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte.gz": Known(
            5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "bb300cfdad3c16e7a12a480ee83cd310"),
    },
    "cifar10": {  # the binary version
        "cifar-10-binary.tar.gz": Known(
            170052171, "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            "c32a1d4ab5d03f1284b67883e8d87530"),
    },
}

#: Seconds to wait for a connection or for the next block of data.
TIMEOUT = 30.0
_CHUNK = 1 << 16


def default_cache_dir() -> Path:
    """``$GENLAB_DATA`` if set, else ``$XDG_CACHE_HOME/genlab/data``, else ``~/.cache/genlab/data``.

    The folder is not created here.
    """
    env = os.environ.get("GENLAB_DATA", "").strip()
    if env:
        return Path(os.path.abspath(os.path.expanduser(env)))
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(os.path.expanduser(xdg)) if xdg and os.path.isabs(os.path.expanduser(xdg)) else Path.home() / ".cache"
    return base / "genlab" / "data"


def mirrors(name: str) -> list[str]:
    """The base URLs to try for ``name``, each ending in '/'."""
    env = os.environ.get(MIRROR_ENV.get(name, ""), "").strip()
    urls = env.replace(",", " ").split() if env else list(MIRRORS.get(name, []))
    return [u if u.endswith("/") else u + "/" for u in urls]


def md5_of(path: str | os.PathLike) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e) or type(e).__name__


def download_file(url: str, dest: str | os.PathLike, known: Known | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically; with ``known``, check its size, SHA-256 and MD5.

    Raises DataError naming the URL when the server cannot be reached, the transfer breaks off,
    the server announces (Content-Length) or sends more bytes than ``known.size``, the file is
    shorter, a digest differs (with the expected and actual values), or the disk lacks room for
    it. Never more than ``known.size + 1`` bytes are read. On any failure the temporary file is
    removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if known is not None and shutil.disk_usage(dest.parent).free < known.size:
            free = shutil.disk_usage(dest.parent).free
            raise DataError(f"{dest.parent} has {free} bytes free, but {dest.name} needs {known.size}; free some "
                            "space or set GENLAB_DATA to a folder on a disk with room.")
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DataError(f"cannot write to {dest.parent} ({e.strerror or e}); set GENLAB_DATA to a writable "
                        "folder, or put the files there yourself.") from None
    try:
        sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        received = 0
        cap = None if known is None else known.size + 1  # one byte more tells a file that is too long
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=TIMEOUT)
            except (OSError, ValueError, http.client.HTTPException) as e:
                raise DataError(f"could not download {url}: {_reason(e)}") from None
            with resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if known is not None and total is not None and total != known.size:
                    raise DataError(f"{url} is announced as {total} bytes, but {dest.name} is {known.size} bytes: "
                                    "the mirror serves a different file; nothing was downloaded.")
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                          disable=not progress) as bar:
                    try:
                        while chunk := resp.read(_CHUNK if cap is None else min(_CHUNK, cap - received)):
                            out.write(chunk)
                            sha.update(chunk)
                            md5.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
                            if cap is not None and received >= cap:
                                raise DataError(f"{url} sent more than the {known.size} bytes of {dest.name}: "
                                                "the mirror serves a different file; the download was stopped.")
                    except (OSError, http.client.HTTPException) as e:
                        raise DataError(f"download of {url} broke off after {received} bytes: {_reason(e)}") from None
        if total is not None and received != total:
            raise DataError(f"download of {url} is incomplete: got {received} of {total} bytes")
        if known is not None:
            if received != known.size:
                raise DataError(f"download of {url} is incomplete: got {received} of {known.size} bytes")
            for name, want, got in (("SHA-256", known.sha256, sha.hexdigest()), ("MD5", known.md5, md5.hexdigest())):
                if want and got != want.lower():
                    raise DataError(f"checksum mismatch for {url}: expected {name} {want.lower()}, got {got}. "
                                    "The mirror served a different or corrupt file; nothing was saved.")
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mirrors_or_error(name: str, what: str) -> list[str]:
    urls = mirrors(name)
    if not urls:
        raise DataError(f"no download mirror is configured for {name}; set {MIRROR_ENV.get(name, 'a mirror')} "
                        f"to a base URL that serves {what}.")
    return urls


@contextlib.contextmanager
def _removed_on_failure(dest_dir: Path):
    """Leave no empty cache folder behind: a ``dest_dir`` this call creates is removed if it fails."""
    created = not dest_dir.exists()
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                dest_dir.rmdir()
        raise


def fetch(name: str, dest_dir: str | os.PathLike, progress: bool = True) -> str:
    """Download the missing ``.gz`` IDX files of ``name`` into ``dest_dir``; return the mirror(s) used.

    Each file is tried on every mirror in turn; DataError lists every attempt if all fail.
    """
    dest_dir = Path(dest_dir)
    urls = _mirrors_or_error(name, "the .gz IDX files")
    used: list[str] = []
    with _removed_on_failure(dest_dir):
        _fetch_missing(name, dest_dir, urls, used, progress)
    return ", ".join(used) if used else "(all files were already present)"


def _fetch_missing(name: str, dest_dir: Path, urls: list[str], used: list[str], progress: bool) -> None:
    for stem in FILES:
        gz = stem + ".gz"
        if (dest_dir / stem).is_file() or (dest_dir / gz).is_file():
            continue
        base = _from_any_mirror(name, gz, dest_dir, urls, progress)
        if base not in used:
            used.append(base)


def _from_any_mirror(name: str, file: str, dest_dir: Path, urls: list[str], progress: bool) -> str:
    """Download ``file`` into ``dest_dir`` from the first mirror that serves it intact; return that mirror."""
    failures = []
    for base in urls:
        try:
            download_file(base + file, dest_dir / file, KNOWN[name][file], progress=progress)
        except DataError as e:
            failures.append(str(e))
            continue
        return base
    raise DataError(f"could not download {file} from any mirror:\n" + "\n".join(f"    - {f}" for f in failures))


def fetch_file(name: str, file: str, dest_dir: str | os.PathLike, progress: bool = True) -> str:
    """Download one ``file`` of ``name`` (a key of KNOWN[name]) into ``dest_dir``; return the mirror used.

    Every mirror is tried in turn; DataError lists every attempt if all fail, and a ``dest_dir``
    created here is removed again.
    """
    dest_dir = Path(dest_dir)
    urls = _mirrors_or_error(name, file)
    with _removed_on_failure(dest_dir):
        return _from_any_mirror(name, file, dest_dir, urls, progress)
