"""A run's data, recognised again on resume.

``genlab train`` records in config.json the sizes of the splits, the image shape and a SHA-256
of each split's uint8 pixels and labels; ``genlab train --resume`` loads the data again and
compares. Data that changed since (an image folder that lost or gained files, a replaced npz)
would make the checkpoint's position in its epoch point at other images, or past the end of the
epoch, so a resume refuses it with a message naming what changed.

Hashing is cheap next to loading: Fashion-MNIST's 70,000 images (55 MB) hash in about 0.04 s.
A split larger than ``SAMPLE_LIMIT`` bytes is hashed on a fixed, evenly spaced sample of its
images (all of its labels), so that the check stays well under a second for any data set.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunError

SAMPLE_LIMIT = 256 * 2**20  # bytes of pixels hashed per split at most


def _digest(split, limit: int) -> str:
    images = split.images
    n = int(images.shape[0])
    per_image = int(images[0].numel()) if n else 0
    if n and n * per_image > limit:  # a fixed sample: the same indices for the same count
        idx = torch.linspace(0, n - 1, max(1, limit // per_image)).round().long()
        images = images.index_select(0, idx)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images.cpu().numpy()).data)
    h.update(b"labels:" if split.labels is not None else b"no labels")
    if split.labels is not None:
        h.update(np.ascontiguousarray(split.labels.cpu().numpy()).data)
    return h.hexdigest()


def data_fingerprint(dataset, limit: int = SAMPLE_LIMIT) -> dict[str, Any]:
    """Sizes, image shape and the SHA-256 of each split (pixels, then labels) of ``dataset``."""
    return {"train_size": len(dataset.train), "test_size": len(dataset.test),
            "image_shape": list(dataset.image_shape), "sample_limit": limit,
            "train_sha256": _digest(dataset.train, limit), "test_sha256": _digest(dataset.test, limit)}


def check_same_data(recorded: dict[str, Any], dataset, run_dir: Path) -> None:
    """Raise a RunError naming what changed if ``dataset`` is not the data of the run whose
    config.json ``data`` entry is ``recorded``. Runs recorded without a fingerprint compare the
    sizes of the splits only."""
    old = recorded.get("fingerprint")
    if isinstance(old, dict):
        limit = old.get("sample_limit")
        new = data_fingerprint(dataset, limit if isinstance(limit, int) and limit > 0 else SAMPLE_LIMIT)
    else:
        old, new = recorded, {"train_size": len(dataset.train), "test_size": len(dataset.test)}
    changes = []
    for key, what in (("train_size", "training images"), ("test_size", "test images"), ("image_shape", "image shape")):
        if key in old and key in new and old[key] != new[key]:
            changes.append(f"{what}: {old[key]} when trained, {new[key]} now")
    if not changes:
        for key, what in (("train_sha256", "training"), ("test_sha256", "test")):
            if key in old and old[key] != new[key]:
                changes.append(f"the {what} images or labels differ (same number of images, other contents)")
    if changes:
        spec = recorded.get("spec", "?")
        raise RunError(f"the data {spec} changed since the run {run_dir} was trained: {'; '.join(changes)}. "
                       "A resume continues at a position in the old data: restore the data as it was, "
                       "or train a new run.")
