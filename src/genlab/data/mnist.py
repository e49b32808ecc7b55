"""MNIST and Fashion-MNIST: where genlab looks for their IDX files, and reading them."""

from __future__ import annotations

import os
from pathlib import Path

from genlab.data import download as _dl
from genlab.data.idx import read_idx_pair
from genlab.errors import DataError

NAMES = ("mnist", "fashion-mnist")

CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}

#: Folders installed by system packages, searched after data_dir and the cache.
#: Debian's ``dataset-fashion-mnist`` installs /usr/share/datasets/fashion-mnist.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "mnist": [],
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
}

_SIZES = {"mnist": "about 11 MB", "fashion-mnist": "about 30 MB"}


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``name``'s IDX files, in order (duplicates removed).

    ``data_dir/<name>/`` comes before ``data_dir`` itself so that a data_dir holding both
    datasets in sub-folders never serves the wrong one; then ``default_cache_dir()/<name>``
    (which is ``$GENLAB_DATA/<name>`` when that is set), then SYSTEM_DIRS[name].
    """
    dirs: list[Path] = []
    if data_dir is not None:
        d = Path(os.path.abspath(os.path.expanduser(data_dir)))
        dirs += [d / name, d]
    dirs.append(_dl.default_cache_dir() / name)
    dirs += [Path(p) for p in SYSTEM_DIRS.get(name, [])]
    return list(dict.fromkeys(dirs))


def find_files(folder: Path) -> dict[str, Path]:
    """The IDX files present in ``folder``: stem -> path (the raw file preferred over ``.gz``)."""
    found = {}
    for stem in _dl.FILES:
        for cand in (folder / stem, folder / (stem + ".gz")):
            if cand.is_file():
                found[stem] = cand
                break
    return found


def locate(name: str, data_dir=None) -> tuple[dict[str, Path] | None, list[tuple[Path, str]]]:
    """(files of the first complete folder or None, [(folder, what was found there)] for every folder checked)."""
    checked = []
    for folder in search_dirs(name, data_dir):
        if not folder.is_dir():
            checked.append((folder, "no such folder"))
            continue
        files = find_files(folder)
        if len(files) == len(_dl.FILES):
            checked.append((folder, "complete"))
            return files, checked
        missing = [s for s in _dl.FILES if s not in files]
        checked.append((folder, "no IDX files" if not files else "missing " + ", ".join(missing)))
    return None, checked


def how_to_get(name: str) -> str:
    dest = _dl.default_cache_dir() / name
    env = _dl.MIRROR_ENV[name]
    lines = [
        "To get it, do one of:",
        f"  - let genlab download it ({_SIZES[name]}) into {dest}: keep downloading enabled and make sure "
        f"{', '.join(_dl.mirrors(name)) or '(no mirror)'} is reachable, or set {env} to another mirror;",
        f"  - put the four files ({', '.join(_dl.FILES)}, raw or .gz) in a folder and pass it as "
        "--data-dir (data_dir=...);",
        f"  - set GENLAB_DATA to a folder that has a '{name}/' sub-folder holding the files.",
    ]
    if name == "fashion-mnist":
        lines.append("  - on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
                     "(installs /usr/share/datasets/fashion-mnist).")
    return "\n".join(lines)


def load(name: str, data_dir=None, download: bool = True, progress: bool = True):
    """Return (train_images, train_labels, test_images, test_labels, origin) as numpy arrays."""
    files, checked = locate(name, data_dir)
    via = ""
    if files is None:
        looked = "\n".join(f"  - {folder} ({what})" for folder, what in checked)
        msg = (f"Dataset '{name}' was not found. genlab looked for its IDX files in:\n{looked}\n")
        if not download:
            raise DataError(msg + "Downloading was disabled.\n" + how_to_get(name))
        dest = _dl.default_cache_dir() / name
        try:
            via = _dl.fetch(name, dest, progress=progress)
        except DataError as e:
            raise DataError(msg + f"Downloading it into {dest} failed: {e}\n" + how_to_get(name)) from None
        files = find_files(dest)
        via = f", downloaded from {via}"
    train_x, train_y = read_idx_pair(files[_dl.FILES[0]], files[_dl.FILES[1]])
    test_x, test_y = read_idx_pair(files[_dl.FILES[2]], files[_dl.FILES[3]])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{files[_dl.FILES[0]]} holds {train_x.shape[2]}x{train_x.shape[3]} images but "
                        f"{files[_dl.FILES[2]]} holds {test_x.shape[2]}x{test_x.shape[3]}; "
                        "replace the mismatched file.")
    n_classes = len(CLASS_NAMES[name])
    for y, stem in ((train_y, _dl.FILES[1]), (test_y, _dl.FILES[3])):
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise DataError(f"{files[stem]} holds labels from {y.min()} to {y.max()}, but {name} has "
                            f"{n_classes} classes (0..{n_classes - 1}); replace the file.")
    folder = files[_dl.FILES[0]].parent
    names = ", ".join(p.name for p in files.values())
    return train_x, train_y, test_x, test_y, f"{folder} ({names}{via})"


__all__ = ["NAMES", "CLASS_NAMES", "SYSTEM_DIRS", "search_dirs", "find_files", "locate", "how_to_get", "load"]
