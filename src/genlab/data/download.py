"""Cache folder and checksum-verified downloads (the MNIST-style IDX files, the CIFAR-10 archive).

Downloads go to a temporary file next to the destination and are moved into place with
``os.replace`` only after their MD5 matches, so a failed or partial download never leaves a
file that looks complete. Only downloads are checksummed: files found locally (e.g. Debian's
recompressed ``.gz`` files) are validated structurally by :mod:`genlab.data.idx` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from genlab.errors import DataError

#: The four IDX files of an MNIST-style dataset (each may be stored raw or as ``<name>.gz``).
FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Base URLs tried in order; ``<base><file>`` is fetched (the file names are the keys of MD5[name]).
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

#: Upstream MD5 of each downloaded file.
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},  # the binary version
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


def download_file(url: str, dest: str | os.PathLike, md5: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically, checking ``md5`` (hex) when given.

    Raises DataError naming the URL when the server cannot be reached, the transfer breaks
    off, or the checksum differs (then with expected and actual MD5). On any failure the
    temporary file is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DataError(f"cannot write to {dest.parent} ({e.strerror or e}); set GENLAB_DATA to a writable "
                        "folder, or put the files there yourself.") from None
    try:
        h = hashlib.md5(usedforsecurity=False)
        received = 0
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=TIMEOUT)
            except (OSError, ValueError, http.client.HTTPException) as e:
                raise DataError(f"could not download {url}: {_reason(e)}") from None
            with resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                          disable=not progress) as bar:
                    try:
                        while chunk := resp.read(_CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
                    except (OSError, http.client.HTTPException) as e:
                        raise DataError(f"download of {url} broke off after {received} bytes: {_reason(e)}") from None
        if total is not None and received != total:
            raise DataError(f"download of {url} is incomplete: got {received} of {total} bytes")
        actual = h.hexdigest()
        if md5 is not None and actual != md5.lower():
            raise DataError(f"checksum mismatch for {url}: expected MD5 {md5.lower()}, got {actual}. "
                            "The mirror served a different or corrupt file; nothing was saved.")
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


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
            download_file(base + file, dest_dir / file, MD5[name][file], progress=progress)
        except DataError as e:
            failures.append(str(e))
            continue
        return base
    raise DataError(f"could not download {file} from any mirror:\n" + "\n".join(f"    - {f}" for f in failures))


def fetch_file(name: str, file: str, dest_dir: str | os.PathLike, progress: bool = True) -> str:
    """Download one ``file`` of ``name`` (a key of MD5[name]) into ``dest_dir``; return the mirror used.

    Every mirror is tried in turn; DataError lists every attempt if all fail, and a ``dest_dir``
    created here is removed again.
    """
    dest_dir = Path(dest_dir)
    urls = _mirrors_or_error(name, file)
    with _removed_on_failure(dest_dir):
        return _from_any_mirror(name, file, dest_dir, urls, progress)
