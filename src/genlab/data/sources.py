"""Dataset containers, spec parsing and the ``load_dataset`` / ``dataset_status`` entry points.

Specs: ``digits``, ``mnist``, ``fashion-mnist`` (also ``fashion_mnist``, ``fashionmnist``; any case),
``cifar10`` (also ``cifar-10``, ``cifar_10``), ``folder:PATH`` and ``npz:PATH`` (``~`` expanded;
relative paths are relative to the current directory, not to ``data_dir``, which only concerns
mnist/fashion-mnist/cifar10).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.data import cifar as _cifar
from genlab.data import folder as _folder
from genlab.data import guard as _guard
from genlab.data import mnist as _mnist
from genlab.data import npz as _npz
from genlab.data import transform as _t
from genlab.errors import DataError

#: Labels may go up to max(MIN_CLASS_ROOM, 2 x the number of images) - 1 (and below guard.MAX_CLASSES):
#: a label far beyond the number of images is a corrupt file, not a class.
MIN_CLASS_ROOM = 1024

SOURCES: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "folder:PATH", "npz:PATH")
_ALIASES = {"digits": "digits", "mnist": "mnist", "fashion-mnist": "fashion-mnist",
            "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar10": "cifar10", "cifar-10": "cifar10"}
_VALID = ("digits (scikit-learn 8x8 digits, offline), mnist, fashion-mnist, cifar10 (CIFAR-10, binary version), "
          "folder:PATH (a folder of images, sub-folders = classes), npz:PATH (a numpy .npz file)")


@dataclass
class ImageSplit:
    """One split: ``images`` uint8 (N, C, H, W) contiguous on CPU; ``labels`` int64 (N,) or None."""

    images: torch.Tensor
    labels: torch.Tensor | None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ImageSplit.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels is not None and (self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),)):
            raise ValueError(f"ImageSplit.labels must be int64 ({len(self.images)},), got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Dataset:
    """A loaded dataset. ``class_names`` is None exactly when ``num_classes`` is 0 (unlabelled)."""

    name: str
    train: ImageSplit
    test: ImageSplit
    num_classes: int
    class_names: list[str] | None
    origin: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


def parse_spec(spec) -> tuple[str, Path | None]:
    """``spec`` -> (kind, absolute path or None); kind is digits, mnist, fashion-mnist, cifar10, folder or npz."""
    if not isinstance(spec, (str, os.PathLike)):
        raise DataError(f"dataset spec must be a string, got {spec!r}. Valid sources: {_VALID}.")
    text = os.fspath(spec).strip()
    kind, sep, rest = text.partition(":")
    if sep and kind.strip().lower() in ("folder", "npz"):
        kind = kind.strip().lower()
        if not rest.strip():
            raise DataError(f"dataset spec '{text}' has no path; write {kind}:/path/to/"
                            f"{'images' if kind == 'folder' else 'data.npz'}.")
        return kind, Path(os.path.abspath(os.path.expanduser(rest.strip())))
    key = text.lower().replace("_", "-")
    if key in _ALIASES:
        return _ALIASES[key], None
    hint = ""
    local = os.path.expanduser(text)
    if text and os.path.isdir(local):
        hint = f" '{text}' is a folder: did you mean folder:{text}?"
    elif text and os.path.isfile(local) and text.lower().endswith(".npz"):
        hint = f" '{text}' is a file: did you mean npz:{text}?"
    raise DataError(f"unknown dataset '{text}'. Valid sources: {_VALID}.{hint}")


def _digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    tr, te = _t.split_indices(len(images), 360)
    return images[tr], labels[tr], images[te], labels[te]


def _split(x: np.ndarray, y: np.ndarray | None, where: str):
    if len(x) < 2:
        raise DataError(f"{where} has only {len(x)} image; genlab needs at least 2 to make a train/test split.")
    tr, te = _t.split_indices(len(x))
    return x[tr], None if y is None else y[tr], x[te], None if y is None else y[te]


def _as_split(x: np.ndarray, y: np.ndarray | None, image_size, channels) -> ImageSplit:
    x = _t.apply(x, image_size, channels)
    return ImageSplit(torch.from_numpy(x), None if y is None else torch.from_numpy(np.ascontiguousarray(y, np.int64)))


def check_memory(n_train: int, n_test: int, shape, image_size, channels, name: str) -> None:
    """DataError (:func:`genlab.data.guard.check_memory`) if a dataset of ``n_train + n_test`` images of
    ``shape`` (C, H, W), resized to ``image_size`` and converted to ``channels``, would not fit in memory.

    Counted: the uint8 images made by resizing or converting (none when neither changes them), and
    the float32 copy of the test split that evaluation makes.
    """
    c, h, w = (int(v) for v in shape)
    out_c = channels or c
    out_h, out_w = (image_size, image_size) if image_size else (h, w)
    per = out_c * out_h * out_w
    changed = (out_c, out_h, out_w) != (c, h, w)
    need = (n_train + n_test) * per * changed + 4 * n_test * per
    if need:
        size = f"{out_c} x {out_h} x {out_w}"
        _guard.check_memory(
            need, f"{name} as {n_train + n_test:,} images of {size} (C x H x W) with a float copy of its "
            f"{n_test:,} test images",
            "Use a smaller --image-size (image_size=...)" + (", or --channels 1" if out_c == 3 else "")
            + ", or a dataset with fewer images.")


def load_dataset(spec: str, data_dir: str | os.PathLike | None = None, image_size: int | None = None,
                 channels: int | None = None, download: bool = True, progress: bool = True) -> Dataset:
    """Load a dataset by spec (see SOURCES) as uint8 tensors, optionally resized / channel-converted.

    ``data_dir`` is searched for mnist/fashion-mnist IDX files and CIFAR-10's binary batches;
    ``download`` allows fetching those into ``default_cache_dir()``; ``progress`` shows tqdm bars
    for downloads and large folders.
    Every user error raises :class:`genlab.errors.DataError`.
    """
    _t.check_options(image_size, channels)
    kind, path = parse_spec(spec)
    class_names = None
    if kind == "digits":
        x, y, tx, ty = _digits()
        name, origin, class_names = "digits", "scikit-learn load_digits", [str(i) for i in range(10)]
    elif kind in _mnist.NAMES:
        x, y, tx, ty, origin = _mnist.load(kind, data_dir, download=download, progress=progress)
        name, class_names = kind, list(_mnist.CLASS_NAMES[kind])
    elif kind == _cifar.NAME:
        x, y, tx, ty, origin = _cifar.load(data_dir, download=download, progress=progress)
        name, class_names = kind, list(_cifar.CLASS_NAMES)
    elif kind == "folder":
        images, labels, class_names, origin = _folder.load(path, image_size, channels, progress)
        x, y, tx, ty = _split(images, labels, str(path))
        del images, labels  # the split's copies replace them
        name = f"folder:{path}"
    else:
        x, y, tx, ty, class_names, origin = _npz.load(path)
        if tx is None:
            x, y, tx, ty = _split(x, y, str(path))
        name = f"npz:{path}"
    if y is None:
        num_classes, class_names = 0, None
    else:
        top = int(max(y.max(initial=-1), ty.max(initial=-1))) + 1
        most = min(_guard.MAX_CLASSES, max(MIN_CLASS_ROOM, 2 * (len(y) + len(ty))))
        if top > most:
            raise DataError(f"{origin}: labels go up to {top - 1}, but {len(y) + len(ty)} images can have at most "
                            f"{most} classes here (class indices 0..K-1 with K at most max({MIN_CLASS_ROOM}, "
                            f"2 x the number of images) and at most {_guard.MAX_CLASSES}); renumber the classes "
                            "0..K-1.")
        if class_names is not None and len(class_names) < top:
            raise DataError(f"{origin}: labels go up to {top - 1} but only {len(class_names)} class names are given; "
                            "give one name per class.")
        num_classes = len(class_names) if class_names is not None else top
        class_names = class_names if class_names is not None else [str(i) for i in range(num_classes)]
    check_memory(len(x), len(tx), x.shape[1:], image_size, channels, name)
    return Dataset(name=name, train=_as_split(x, y, image_size, channels), test=_as_split(tx, ty, image_size, channels),
                   num_classes=num_classes, class_names=class_names, origin=origin)


def dataset_status(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """One dict per entry of SOURCES: name, available, where (found at / looked in), how (to get or use it).

    Only checks that files exist; their contents are validated when loaded.
    """
    out = [{"name": "digits", "available": True, "where": "bundled with scikit-learn (sklearn.datasets.load_digits)",
            "how": "ready: 1797 grayscale 8x8 digits, 10 classes, no download needed"}]
    for name in _mnist.NAMES:
        files, checked = _mnist.locate(name, data_dir)
        if files is not None:
            out.append({"name": name, "available": True, "where": str(checked[-1][0]),
                        "how": "ready: 70000 grayscale 28x28 images, 10 classes"})
        else:
            looked = "; ".join(f"{d} ({what})" for d, what in checked)
            out.append({"name": name, "available": False, "where": f"not found (looked in: {looked})",
                        "how": _mnist.how_to_get(name).replace("\n", " ")})
    source, checked = _cifar.locate(data_dir)
    if source is not None:
        out.append({"name": _cifar.NAME, "available": True, "where": str(source),
                    "how": "ready: 60000 RGB 32x32 images, 10 classes (binary version)"})
    else:
        looked = "; ".join(f"{d} ({what})" for d, what in checked)
        out.append({"name": _cifar.NAME, "available": False, "where": f"not found (looked in: {looked})",
                    "how": _cifar.how_to_get().replace("\n", " ")})
    out.append({"name": "folder:PATH", "available": True, "where": "any folder of images you point it at",
                "how": f"folder:/path/to/images with files ending in {', '.join(_folder.EXTENSIONS)}; "
                       "one sub-folder per class for labels; mixed sizes need --image-size"})
    out.append({"name": "npz:PATH", "available": True, "where": "any .npz file you point it at",
                "how": "npz:/path/to/data.npz saved with numpy.savez(path, images=(N,H,W[,C]) uint8 or float 0..1, "
                       "labels=(N,) ints, optionally test_images=..., test_labels=...)"})
    return out
