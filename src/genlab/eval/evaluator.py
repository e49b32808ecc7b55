"""The evaluator network: a small CNN classifier trained on the dataset itself.

Inception weights cannot be downloaded offline, so genlab measures samples in the feature
space of this classifier (its 128-d penultimate layer) instead. Every number computed in that
space is therefore comparable only with numbers from the *same* evaluator, identified by its
fingerprint: sha256 over the dataset's train+test image bytes and labels and ``ARCH_VERSION``.
The fingerprint names the data and the architecture, not the trained weights: the same training run
on another CPU gives a slightly different network (Fashion-MNIST, seed 0: 92.53 % test accuracy on
an AMD EPYC, 92.59 % on an Intel Xeon), and its FIDs differ in the decimals. So every result also
records ``weights_sha256`` (sha256 over the state dict's names and bytes), and a comparison reuses an
evaluation only when both match.

Cache layout (never pickle)::

    <cache>/evaluators/<fingerprint>/weights.safetensors   the network's state dict
    <cache>/evaluators/<fingerprint>/evaluator.json        architecture, accuracy, training record
    <cache>/evaluators/<fingerprint>/features-<split>.safetensors   reference features (tagged with the weights)

``<cache>`` is ``$GENLAB_CACHE`` if set, else ``$XDG_CACHE_HOME/genlab``, else ``~/.cache/genlab``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import GenlabError
from ..fileio import atomic_write_bytes, atomic_write_json

ARCH_VERSION = "genlab-evaluator-cnn-v2"  # bump when the net or its training recipe changes
FEATURE_DIM = 128


def evaluator_cache_root() -> Path:
    """``$GENLAB_CACHE/evaluators`` if set, else ``$XDG_CACHE_HOME/genlab/evaluators``, else ``~/.cache/...``."""
    env = os.environ.get("GENLAB_CACHE", "").strip()
    if env:
        return Path(os.path.abspath(os.path.expanduser(env))) / "evaluators"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(os.path.expanduser(xdg)) if xdg and os.path.isabs(os.path.expanduser(xdg)) else Path.home() / ".cache"
    return base / "genlab" / "evaluators"


def _stage_plan(h: int, w: int) -> list[tuple[int, bool]]:
    """(out_channels, pool_after) per conv stage: 32 -> 64 -> 128, halving the size while it stays >= 2,
    plus extra 128-channel stages for large images until the map is at most 8 pixels on a side."""
    plan: list[tuple[int, bool]] = []
    size = min(h, w)
    for ch in (32, 64):
        pool = size >= 4
        plan.append((ch, pool))
        size = size // 2 if pool else size
    while size > 8:
        plan.append((128, True))
        size //= 2
    plan.append((128, False))
    return plan


class EvaluatorNet(nn.Module):
    """conv-BN-ReLU stages (sized from (C, H, W)) -> adaptive avg pool 3x3 -> fc 128 + ReLU (features) -> head."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, feature_dim: int = FEATURE_DIM):
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        self.image_shape = (c, h, w)
        self.num_classes = int(num_classes)
        self.num_features = int(feature_dim)  # read by torchmetrics for custom feature modules
        layers: list[nn.Module] = []
        cin = c
        for cout, pool in _stage_plan(h, w):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        layers.append(nn.AdaptiveAvgPool2d(3))
        self.body = nn.Sequential(*layers)
        self.feature = nn.Sequential(nn.Flatten(), nn.Linear(cin * 9, feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.feature(self.body(x * 2.0 - 1.0))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.forward_features(x)))


def fingerprint(dataset) -> str:
    """sha256 over the train and test image bytes and labels, the image shape and ARCH_VERSION."""
    h = hashlib.sha256()
    h.update(ARCH_VERSION.encode())
    h.update(json.dumps([list(dataset.image_shape), int(dataset.num_classes)]).encode())
    for split in (dataset.train, dataset.test):
        h.update(b"images")
        h.update(str(tuple(split.images.shape)).encode())
        h.update(split.images.contiguous().numpy().tobytes())
        h.update(b"labels")
        if split.labels is not None:
            h.update(split.labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint_matches(dataset, fp: str) -> bool:
    """Whether ``dataset`` has fingerprint ``fp`` (memoised on the dataset object by identity)."""
    memo = getattr(dataset, "_genlab_fingerprint", None)
    if memo is None or memo[0] is not dataset.train.images or memo[1] is not dataset.test.images:
        memo = (dataset.train.images, dataset.test.images, fingerprint(dataset))
        try:
            object.__setattr__(dataset, "_genlab_fingerprint", memo)
        except (AttributeError, TypeError):
            pass
    return memo[2] == fp


def _to_float(images: Tensor) -> Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


class Evaluator:
    """A trained EvaluatorNet plus its record. ``features`` / ``logits`` take float images in [0, 1]
    (uint8 is converted) of the dataset's shape, run in eval mode without grad, in batches."""

    def __init__(self, net: EvaluatorNet, info: dict[str, Any], path: Path | None = None):
        self.net = net.eval()
        self.info = info
        self.path = path
        self.fingerprint: str = info["fingerprint"]
        self.trained_now = False  # True when get_evaluator had to train it in this process
        self._split_cache: dict[str, tuple[Tensor, Tensor]] = {}
        self._weights_sha256: str | None = None

    @property
    def weights_sha256(self) -> str:
        """sha256 over the network's state dict (names, dtypes, shapes and bytes, in name order):
        which trained network this is. Two evaluators of one fingerprint can differ in it."""
        if self._weights_sha256 is None:
            self._weights_sha256 = weights_digest(self.net)
        return self._weights_sha256

    @property
    def feature_dim(self) -> int:
        return self.net.num_features

    def describe(self) -> str:
        return (f"genlab CNN classifier trained on {self.info.get('dataset', '?')}, "
                f"{self.feature_dim}-d penultimate layer, not Inception")

    def _check(self, images: Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[1:]) != self.net.image_shape:
            raise GenlabError(f"the evaluator expects images of shape (N, {', '.join(map(str, self.net.image_shape))}), "
                              f"got {tuple(images.shape)}; give images of the dataset's shape.")

    @torch.no_grad()
    def features_and_logits(self, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
        self._check(images)
        self.net.eval()
        feats, logits = [], []
        for i in range(0, images.shape[0], batch_size):
            f = self.net.forward_features(_to_float(images[i:i + batch_size]))
            feats.append(f)
            logits.append(self.net.head(f))
        if not feats:
            return torch.zeros(0, self.feature_dim), torch.zeros(0, self.net.num_classes)
        return torch.cat(feats), torch.cat(logits)

    def features(self, images: Tensor, batch_size: int = 1000) -> Tensor:
        return self.features_and_logits(images, batch_size)[0]

    def logits(self, images: Tensor, batch_size: int = 1000) -> Tensor:
        return self.features_and_logits(images, batch_size)[1]

    def split_features(self, dataset, split: str) -> tuple[Tensor, Tensor]:
        """(features, logits) of a dataset split ("train" or "test"): computed once, kept in memory and,
        for a cached evaluator, in ``<folder>/features-<split>.safetensors`` (same fingerprint = same data;
        the file is tagged with the weights' sha256, so a retrained network computes its own)."""
        if split in self._split_cache:
            return self._split_cache[split]
        from safetensors import safe_open
        from safetensors.torch import save

        n = len(getattr(dataset, split))
        file = None if self.path is None else Path(self.path) / f"features-{split}.safetensors"
        if file is not None and file.is_file() and fingerprint_matches(dataset, self.fingerprint):
            try:
                with safe_open(str(file), "pt") as f:  # features of this very network, not of a retrained one
                    if (f.metadata() or {}).get("weights_sha256") == self.weights_sha256:
                        feats, logits = f.get_tensor("features"), f.get_tensor("logits")
                        if feats.shape[0] == n:
                            self._split_cache[split] = (feats, logits)
                            return self._split_cache[split]
            except (OSError, KeyError, RuntimeError, ValueError):
                pass  # recompute below
        feats, logits = self.features_and_logits(getattr(dataset, split).images)
        self._split_cache[split] = (feats, logits)
        if file is not None and fingerprint_matches(dataset, self.fingerprint):
            try:
                atomic_write_bytes(file, save({"features": feats.contiguous(), "logits": logits.contiguous()},
                                              metadata={"weights_sha256": self.weights_sha256}))
            except OSError:
                pass  # a read-only cache only costs time
        return self._split_cache[split]

    @torch.no_grad()
    def accuracy(self, split) -> float:
        pred = self.logits(split.images).argmax(1)
        return float((pred == split.labels).float().mean())


def weights_digest(net: nn.Module) -> str:
    """sha256 over a network's state dict: each name, dtype and shape, then the tensor's bytes."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _augment(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Random integer translations by up to ``max_shift`` pixels (zero fill), one per image."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    p = max_shift
    xp = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * p)
    xp = torch.gather(xp, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return torch.gather(xp, 3, cols)


def default_epochs(n_train: int) -> int:
    """Between 8 and 20 epochs: 20 for small sets (digits), 8 for 60k-image sets (Fashion-MNIST: 92.5 %)."""
    return int(min(20, max(8, round(100_000 / max(1, n_train)))))


def train_evaluator(dataset, *, epochs: int | None = None, batch_size: int = 256, lr: float = 3e-3,
                    seed: int = 0, augment: bool = True, progress: bool = True) -> Evaluator:
    """Train a fresh evaluator on ``dataset.train`` (Adam, one-cycle LR, +-1..2 pixel shifts) and
    measure its accuracy on ``dataset.test``. Does not touch the cache (see :func:`get_evaluator`)."""
    if dataset.num_classes < 2 or dataset.train.labels is None:
        raise GenlabError(f"dataset {dataset.name} has no class labels; the evaluator is a classifier and needs "
                          "labelled training data (folder:PATH with one sub-folder per class, or npz with labels).")
    t0 = time.perf_counter()
    epochs = default_epochs(len(dataset.train)) if epochs is None else int(epochs)
    c, h, w = dataset.image_shape
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EvaluatorNet((c, h, w), dataset.num_classes)
    x_all, y_all = dataset.train.images, dataset.train.labels
    n = len(x_all)
    steps_per_epoch = math.ceil(n / batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    max_shift = (max(1, min(h, w) // 28) if augment else 0)
    bar = None
    if progress:
        print(f"genlab: training the evaluator CNN for {dataset.name} ({n} images, {epochs} epochs); "
              "it is cached for later evaluations.", flush=True)
        try:
            from tqdm import tqdm
            bar = tqdm(total=epochs * steps_per_epoch, desc="evaluator", unit="step", leave=False)
        except ImportError:  # pragma: no cover
            bar = None
    net.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                x = _augment(_to_float(x_all[idx]), max_shift, gen)
                loss = F.cross_entropy(net(x), y_all[idx], label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    net.eval()
    info = {"format": "genlab-evaluator-1", "arch": ARCH_VERSION, "fingerprint": fingerprint(dataset),
            "dataset": dataset.name, "image_shape": [c, h, w], "num_classes": dataset.num_classes,
            "feature_dim": FEATURE_DIM, "train_size": n, "test_size": len(dataset.test),
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "augment": augment,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": torch.__version__}
    ev = Evaluator(net, info)
    info["train_seconds"] = round(time.perf_counter() - t0, 1)
    info["train_accuracy"] = ev.accuracy(dataset.train)
    info["test_accuracy"] = ev.accuracy(dataset.test) if dataset.test.labels is not None and len(dataset.test) else None
    if progress:
        print(f"genlab: evaluator test accuracy {info['test_accuracy']:.4f} ({info['train_seconds']} s)", flush=True)
    return ev


def save_evaluator(ev: Evaluator, folder: Path) -> None:
    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in ev.net.state_dict().items()}
    ev.info["weights_sha256"] = ev.weights_sha256
    atomic_write_bytes(folder / "weights.safetensors", save(state, metadata={"fingerprint": ev.fingerprint}))
    atomic_write_json(folder / "evaluator.json", ev.info)  # written last: its presence marks a complete entry
    ev.path = folder


class EvaluatorCacheError(GenlabError):
    """A cached evaluator that cannot be used (torn, edited or of another architecture); ``reason`` says
    why, without the advice to delete it (get_evaluator retrains it instead)."""

    def __init__(self, reason: str):
        super().__init__(f"{reason}; delete that folder and it will be retrained.")
        self.reason = reason


def load_evaluator(folder: Path) -> Evaluator:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        info = json.loads((folder / "evaluator.json").read_bytes().decode("utf-8"))
        if not isinstance(info, dict):
            raise ValueError("evaluator.json is not a JSON object")
        if info.get("arch") != ARCH_VERSION:
            raise EvaluatorCacheError(f"{folder} holds an evaluator of architecture {info.get('arch')!r}, "
                                      f"this genlab uses {ARCH_VERSION!r}")
        net = EvaluatorNet(tuple(info["image_shape"]), info["num_classes"], info.get("feature_dim", FEATURE_DIM))
        net.load_state_dict(load_file(str(folder / "weights.safetensors")))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, RecursionError, SafetensorError) as e:
        raise EvaluatorCacheError(f"the cached evaluator in {folder} is unreadable ({type(e).__name__}: {e})") from None
    ev = Evaluator(net, info, folder)
    recorded = info.get("weights_sha256")
    if recorded is not None and recorded != ev.weights_sha256:
        raise EvaluatorCacheError(f"the cached evaluator in {folder} has weights that are not the ones its "
                                  f"evaluator.json records (sha256 {ev.weights_sha256[:12]}, recorded "
                                  f"{str(recorded)[:12]})")
    info["weights_sha256"] = ev.weights_sha256  # caches written before the digest was recorded
    return ev


def get_evaluator(dataset, *, train_if_missing: bool = True, progress: bool = True,
                  cache_dir: str | Path | None = None, **train_options) -> Evaluator:
    """The cached evaluator for ``dataset`` (by fingerprint), training and caching it if missing.

    ``cache_dir`` overrides :func:`evaluator_cache_root`. ``train_options`` go to :func:`train_evaluator`.
    The returned object's ``trained_now`` says whether it was trained by this call.
    """
    root = Path(cache_dir) if cache_dir is not None else evaluator_cache_root()
    fp = fingerprint(dataset)
    folder = root / fp
    if (folder / "evaluator.json").is_file() and (folder / "weights.safetensors").is_file():
        try:
            return load_evaluator(folder)
        except GenlabError as e:
            if not train_if_missing:
                raise
            # a cache entry is derived data: a torn or edited one is replaced, not left to fail every evaluation
            print(f"genlab: {getattr(e, 'reason', e)}; retraining it.", file=sys.stderr, flush=True)
    if not train_if_missing:
        raise GenlabError(f"no evaluator is cached for {dataset.name} (looked in {folder}); "
                          "allow training it (train_if_missing=True) - it takes a few CPU minutes at most.")
    ev = train_evaluator(dataset, progress=progress, **train_options)
    save_evaluator(ev, folder)
    ev.trained_now = True
    return ev
