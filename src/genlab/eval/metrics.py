"""Sample-quality metrics, all computed in the evaluator's feature space (see evaluator.py).

Which code computes what:

* FID  - torchmetrics ``FrechetInceptionDistance`` fed with precomputed evaluator features
  through a pass-through feature module (so the CNN runs once per image set, not once per metric).
  ``frechet_distance`` (scipy ``sqrtm``) is the hand-written closed form, kept as a cross-check.
* KID  - torchmetrics ``KernelInceptionDistance`` the same way (unbiased MMD^2, cubic polynomial
  kernel, mean and std over random subsets; its subset draw is seeded here).
* IS   - hand-written ``exp(E_x KL(p(y|x) || p(y)))`` over all samples in one split (torchmetrics'
  InceptionScore averages over 10 splits and wants a logits module; one split is the exact definition).
* Precision / recall / density / coverage (Naeem et al. 2020, k = 5) - hand-written, batched
  ``torch.cdist`` (torchmetrics has none).
* Class histogram of the evaluator's predicted labels; a class is *covered* when it receives at
  least ``1 / (4 * num_classes)`` of the samples (a quarter of its fair share).
* Memorisation - in the evaluator's feature space: each sample's L2 distance to its nearest
  training image, against the same distance for test images (which the model never saw).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

PRDC_K = 5


# ----------------------------------------------------------------------------- FID / KID


class _FeaturePassThrough(nn.Module):
    """A 'feature extractor' for torchmetrics whose input already is the evaluator's features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: Tensor) -> Tensor:
        return x


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)), via scipy.linalg.sqrtm (hand-written check)."""
    from scipy import linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise slightly
        eps = np.eye(cov1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """FID between two feature sets (N, D) with torchmetrics (features pass straight through)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_FeaturePassThrough(real.shape[1]), normalize=True)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_from_features(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float, int]:
    """(KID mean, KID std, subset size used) with torchmetrics; the subset size shrinks to the smaller set."""
    from torchmetrics.image.kid import KernelInceptionDistance

    import warnings

    size = int(min(subset_size, real.shape[0], fake.shape[0]))
    with warnings.catch_warnings():  # "will save all extracted features": they are 128-d here
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(feature=_FeaturePassThrough(real.shape[1]), subsets=subsets,
                                         subset_size=size, normalize=True)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchmetrics draws the subsets from the global generator
        mean, std = metric.compute()
    return float(mean), float(std), size


# ----------------------------------------------------------------------------- IS, classes


def inception_score(probs: Tensor) -> float:
    """Classifier Inception Score exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x); one split."""
    p = probs.double().clamp_min(0)
    p = p / p.sum(1, keepdim=True)
    py = p.mean(0, keepdim=True)
    kl = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(py.clamp_min(1e-300))),
                     torch.zeros_like(p)).sum(1)
    return float(torch.exp(kl.mean()))


def class_histogram(logits: Tensor, num_classes: int) -> dict[str, Any]:
    """Counts of the evaluator's predicted labels and how many classes are covered (>= 1/(4K) of samples)."""
    pred = logits.argmax(1)
    counts = torch.bincount(pred, minlength=num_classes)[:num_classes]
    n = max(1, int(pred.numel()))
    threshold = n / (4.0 * num_classes)
    return {"class_histogram": [int(c) for c in counts],
            "classes_covered": int((counts.double() >= threshold).sum()),
            "num_classes": int(num_classes),
            "class_coverage_rule": f"a class is covered if it gets >= 1/(4*{num_classes}) of the samples "
                                   f"(>= {threshold:.1f} of {n})"}


# ----------------------------------------------------------------------------- PRDC


def _kth_nn_radius(x: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Distance from each row of x to its k-th nearest other row (self excluded), batched."""
    out = torch.empty(x.shape[0], dtype=x.dtype)
    kk = min(k + 1, x.shape[0])
    for i in range(0, x.shape[0], chunk):
        d = torch.cdist(x[i:i + chunk], x)
        out[i:i + chunk] = d.topk(kk, dim=1, largest=False).values[:, -1]
    return out


def prdc(real: Tensor, fake: Tensor, k: int = PRDC_K, chunk: int = 2048) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours.

    precision: fraction of fakes inside some real k-NN ball; recall: fraction of reals inside some
    fake k-NN ball; density: mean number of real balls containing a fake, / k; coverage: fraction of
    reals whose own k-NN ball contains at least one fake. One fake x real distance pass, in chunks.
    """
    real, fake = real.float(), fake.float()
    r_real = _kth_nn_radius(real, k, chunk)
    r_fake = _kth_nn_radius(fake, k, chunk)
    in_real_ball = torch.zeros(fake.shape[0], dtype=torch.bool)
    density_count = torch.zeros((), dtype=torch.float64)
    real_hit_by_fake_ball = torch.zeros(real.shape[0], dtype=torch.bool)
    nearest_fake = torch.full((real.shape[0],), float("inf"))
    for i in range(0, fake.shape[0], chunk):
        d = torch.cdist(fake[i:i + chunk], real)  # (c, Nr)
        inside = d <= r_real[None, :]
        in_real_ball[i:i + chunk] = inside.any(1)
        density_count += inside.sum(dtype=torch.float64)
        real_hit_by_fake_ball |= (d <= r_fake[i:i + chunk, None]).any(0)
        nearest_fake = torch.minimum(nearest_fake, d.min(0).values)
    return {"precision": float(in_real_ball.float().mean()),
            "recall": float(real_hit_by_fake_ball.float().mean()),
            "density": float(density_count / (k * fake.shape[0])),
            "coverage": float((nearest_fake <= r_real).float().mean())}


# ----------------------------------------------------------------------------- memorisation


def _nn_distance(x: Tensor, bank: Tensor, chunk: int = 512) -> Tensor:
    out = torch.empty(x.shape[0])
    for i in range(0, x.shape[0], chunk):
        out[i:i + chunk] = torch.cdist(x[i:i + chunk].float(), bank.float()).min(1).values
    return out


def memorization(sample_feats: Tensor, test_feats: Tensor, train_feats: Tensor) -> dict[str, float]:
    """Nearest-training-image distances (evaluator feature space, L2) of samples vs of test images.

    ``fraction_closer_than_test_p1``: share of samples nearer to a training image than the 1st
    percentile of test-to-train distances; about 0.01 for a model that generalises like the test
    set, near 1 for a model that copies its training images.
    """
    s = _nn_distance(sample_feats, train_feats)
    t = _nn_distance(test_feats, train_feats)
    p1 = float(torch.quantile(t.double(), 0.01))
    return {"space": "evaluator features (L2)",
            "median_sample_to_train": float(s.median()), "median_test_to_train": float(t.median()),
            "test_to_train_p1": p1, "fraction_closer_than_test_p1": float((s < p1).float().mean()),
            "n_samples_checked": int(s.numel()), "n_test_checked": int(t.numel())}


# ----------------------------------------------------------------------------- all together


def _subset(n_total: int, n: int, seed: int) -> Tensor | None:
    if n >= n_total:
        return None
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def feature_metrics(fake_feats: Tensor, fake_logits: Tensor, real_feats: Tensor, *, num_classes: int,
                    train_feats: Tensor | None = None, test_feats: Tensor | None = None, seed: int = 0,
                    kid_subsets: int = 100, kid_subset_size: int = 1000, memo_n: int = 5000) -> dict[str, Any]:
    """Every sample metric from precomputed features: fakes (samples) against reals (the reference)."""
    if fake_feats.shape[0] < 2 or real_feats.shape[0] < 2:
        raise ValueError("need at least 2 samples and 2 reference images")
    out: dict[str, Any] = {"fid": fid_from_features(real_feats, fake_feats)}
    kid_mean, kid_std, kid_size = kid_from_features(real_feats, fake_feats, kid_subsets, kid_subset_size, seed)
    out.update(kid=kid_mean, kid_std=kid_std, kid_subset_size=kid_size, kid_subsets=kid_subsets)
    out["inception_score"] = inception_score(torch.softmax(fake_logits.double(), 1))
    out.update(prdc(real_feats, fake_feats, PRDC_K))
    out["prdc_k"] = PRDC_K
    out.update(class_histogram(fake_logits, num_classes))
    if train_feats is not None and test_feats is not None:
        si = _subset(fake_feats.shape[0], memo_n, seed + 1)
        ti = _subset(test_feats.shape[0], memo_n, seed + 2)
        out["memorization"] = memorization(fake_feats if si is None else fake_feats[si],
                                           test_feats if ti is None else test_feats[ti], train_feats)
    return out


def _reference(dataset, evaluator, reference: str, max_ref: int, seed: int) -> tuple[Tensor, int]:
    if reference not in ("test", "train"):
        from ..errors import GenlabError

        raise GenlabError(f"reference must be 'test' or 'train', got {reference!r}.")
    feats, _ = evaluator.split_features(dataset, reference)
    idx = _subset(feats.shape[0], max_ref, seed + 3)
    return (feats if idx is None else feats[idx]), int(feats.shape[0])


def protocol(evaluator, dataset, n_samples: int, reference: str, ref_used: int, ref_total: int,
             seed: int) -> dict[str, Any]:
    return {"evaluator_fingerprint": evaluator.fingerprint,
            "evaluator_weights_sha256": evaluator.weights_sha256,
            "evaluator_arch": evaluator.info.get("arch"),
            "evaluator_test_accuracy": evaluator.info.get("test_accuracy"),
            "feature_space": evaluator.describe(),
            "dataset": dataset.name,
            "n_samples": int(n_samples), "reference": reference, "reference_size": int(ref_used),
            "reference_split_size": int(ref_total), "seed": int(seed),
            "prdc_k": PRDC_K, "fid": "torchmetrics FrechetInceptionDistance on evaluator features",
            "kid": "torchmetrics KernelInceptionDistance (cubic polynomial kernel, unbiased MMD^2)"}


def evaluate_images(samples: Tensor, dataset, evaluator, reference: str = "test", seed: int = 0,
                    max_reference: int = 10_000, memo_n: int = 5000) -> dict[str, Any]:
    """All sample metrics for ``samples`` (float in [0, 1] or uint8, (N, C, H, W)) against a dataset split.

    The reference split is subsampled (seeded) to ``max_reference`` images; the memorisation check
    uses up to ``memo_n`` samples and test images against the whole training split.
    """
    fake_feats, fake_logits = evaluator.features_and_logits(samples)
    real_feats, ref_total = _reference(dataset, evaluator, reference, max_reference, seed)
    train_feats, _ = evaluator.split_features(dataset, "train")
    test_feats, _ = evaluator.split_features(dataset, "test")
    metrics = feature_metrics(fake_feats, fake_logits, real_feats, num_classes=dataset.num_classes,
                              train_feats=train_feats, test_feats=test_feats, seed=seed, memo_n=memo_n)
    return {"protocol": protocol(evaluator, dataset, samples.shape[0], reference, real_feats.shape[0], ref_total,
                                 seed), "metrics": metrics}


# ----------------------------------------------------------------------------- calibration


def gaussian_blur(images: Tensor, sigma: float = 1.0) -> Tensor:
    """Blur float images (N, C, H, W) with a Gaussian of ``sigma`` pixels (reflect padding)."""
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    c = images.shape[1]
    pad_mode = "reflect" if min(images.shape[-2:]) > r else "replicate"
    out = torch.nn.functional.pad(images, (r, r, 0, 0), mode=pad_mode)
    out = torch.nn.functional.conv2d(out, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = torch.nn.functional.pad(out, (0, 0, r, r), mode=pad_mode)
    return torch.nn.functional.conv2d(out, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c).clamp(0, 1)


def calibrate(dataset, evaluator, n: int = 10_000, seed: int = 0, reference: str = "test",
              max_reference: int = 10_000) -> list[dict[str, Any]]:
    """Scores of known image sets, to read real results against. Rows: ``real-train`` (the floor),
    ``uniform-noise``, ``blurred-train`` (Gaussian sigma = 1 px), ``half-classes`` (training images of
    classes 0..K/2-1 only, so fewer images), ``single-image`` (one training image repeated). All rows but
    half-classes have ``min(n, len(train))`` images. Each row has name, description, n, metrics."""
    gen = torch.Generator().manual_seed(seed)
    train = dataset.train
    n_real = min(n, len(train))
    idx = torch.randperm(len(train), generator=gen)[:n_real]
    real = train.images[idx].float() / 255.0
    half = train.labels[idx] < max(1, dataset.num_classes // 2)
    sets = [
        ("real-train", "training images (the floor)", real),
        ("uniform-noise", "uniform noise in [0, 1]", torch.rand((n_real, *dataset.image_shape), generator=gen)),
        ("blurred-train", "training images blurred, Gaussian sigma = 1 px", gaussian_blur(real, 1.0)),
        ("half-classes", f"training images of classes 0..{max(1, dataset.num_classes // 2) - 1} only", real[half]),
        ("single-image", "one training image repeated", real[:1].expand(n_real, *dataset.image_shape).contiguous()),
    ]
    real_feats, ref_total = _reference(dataset, evaluator, reference, max_reference, seed)
    train_feats, _ = evaluator.split_features(dataset, "train")
    test_feats, _ = evaluator.split_features(dataset, "test")
    rows = []
    for name, what, images in sets:
        f, lg = evaluator.features_and_logits(images)
        m = feature_metrics(f, lg, real_feats, num_classes=dataset.num_classes, train_feats=train_feats,
                            test_feats=test_feats, seed=seed)
        rows.append({"name": name, "description": what, "n": int(images.shape[0]), "metrics": m})
    return rows
