"""Latent-space tools on the common model interface (``latent_dim``, ``prior_sample``, ``decode_latent``).

* interpolation between two latents, linear (lerp) or spherical (slerp: Shoemake 1985, "Animating
  rotation with quaternion curves"; recommended for Gaussian latents by White 2016, "Sampling
  generative networks"), between test images' posterior means (VAEs) or prior draws (any model);
* traversal: one latent dimension varied at a time around a base latent (VAEs: by default the
  dimensions that carry the most KL on the test set, the ones the model actually uses);
* the truncation trick (Brock et al. 2019, "Large scale GAN training ...", section 3.1): latent
  components with |z| > T are resampled, trading diversity for typicality.

Every function returns images as float in [0, 1], (N, C, H, W), ready for ``viz.grid``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import GenlabError
from ..models.base import GenerativeModel, as_float_images

METHODS = ("lerp", "slerp")
# Below this sin(angle) two latents are treated as parallel and slerp falls back to lerp.
SLERP_PARALLEL_EPS = 1e-6
# Rounds of resampling before the remaining components of a truncated draw are taken by inverse CDF.
TRUNCATION_RESAMPLE_ROUNDS = 200
# Test images over which the KL per latent dimension is averaged to rank a VAE's dimensions for traversal.
KL_RANKING_IMAGES = 2000


# ----------------------------------------------------------------------------- interpolation

def lerp(a: Tensor, b: Tensor, t: Tensor | float) -> Tensor:
    """(1 - t) a + t b, broadcasting t over the last dimension of a and b."""
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.dim():
        t = t.unsqueeze(-1)
    return (1 - t) * a + t * b


def slerp(a: Tensor, b: Tensor, t: Tensor | float) -> Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016, eq. 1) between rows of a and b (..., D):

        slerp(a, b; t) = sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b,   cos w = <a, b> / (|a| |b|)

    t = 0 gives a, t = 1 gives b, and between unit vectors the path stays on the unit sphere. For
    (nearly) parallel or antiparallel rows, where the great circle is undefined or sin w ~ 0, lerp is used.
    """
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.dim():
        t = t.unsqueeze(-1)
    a64, b64, t64 = a.double(), b.double(), t.double()
    cos = (a64 * b64).sum(-1, keepdim=True) / (a64.norm(dim=-1, keepdim=True) * b64.norm(dim=-1, keepdim=True)
                                               ).clamp_min(1e-30)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    so = torch.sin(omega)
    parallel = so.abs() < SLERP_PARALLEL_EPS
    safe = torch.where(parallel, torch.ones_like(so), so)
    out = torch.sin((1 - t64) * omega) / safe * a64 + torch.sin(t64 * omega) / safe * b64
    out = torch.where(parallel, (1 - t64) * a64 + t64 * b64, out)
    return out.to(a.dtype)


def interpolate(a: Tensor, b: Tensor, steps: int, method: str = "slerp") -> Tensor:
    """``steps`` latents from a to b inclusive for each pair of rows: (P, D), (P, D) -> (P, steps, D)."""
    if method not in METHODS:
        raise GenlabError(f"unknown interpolation method {method!r}; choose one of: {', '.join(METHODS)}.")
    if steps < 2:
        raise GenlabError(f"an interpolation needs at least 2 steps (its two ends), got {steps}.")
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device)
    fn = lerp if method == "lerp" else slerp
    return fn(a[:, None, :], b[:, None, :], t[None, :])


# ----------------------------------------------------------------------------- helpers

def standard_normal_prior(model: GenerativeModel) -> bool:
    """Whether the model samples z from N(0, I), so truncation is meaningful: what the model declares in
    ``has_standard_normal_prior``, unless a class overrides ``prior_sample`` below the class that makes
    that declaration (a user's subclass with a prior of its own), which is taken to have a prior of its own."""
    mro = type(model).__mro__

    def definer(name: str) -> int:
        return next(i for i, cls in enumerate(mro) if name in cls.__dict__)

    if definer("prior_sample") < definer("has_standard_normal_prior"):
        return False
    return bool(model.has_standard_normal_prior)


def row_labels(model: GenerativeModel, rows: int, label: int | None = None) -> Tensor | None:
    """One class label per row for a conditional model (``label`` for all, else 0, 1, 2 ...), else None."""
    if not model.conditional:
        if label is not None:
            raise GenlabError(f"this model ({type(model).__name__}) is unconditional; --label needs a conditional "
                              "one (cgan, cvae).")
        return None
    if label is not None:
        check_label(model, label)
        return torch.full((rows,), int(label), dtype=torch.long)
    return torch.arange(rows) % model.num_classes


def check_label(model: GenerativeModel, label: int) -> None:
    if not 0 <= label < model.num_classes:
        raise GenlabError(f"--label must be between 0 and {model.num_classes - 1}, got {label}.")


def image_split(dataset):
    """The split latent tools read images from: test, or train where a dataset has no test split."""
    return dataset.test if len(dataset.test) else dataset.train


def check_indices(indices: list[int], n: int, what: str = "--images") -> None:
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise GenlabError(f"{what}: index {bad[0]} is out of range; the test split has {n} images (0..{n - 1}).")


@torch.no_grad()
def posterior_means(model: GenerativeModel, images: Tensor, labels: Tensor | None = None) -> Tensor:
    """mu of q(z | x [, y]) for images (uint8 or float in [0, 1]); only for models with an encoder."""
    if not model.encodes:
        raise GenlabError(f"{type(model).__name__} is a {model.family.upper()}: GANs have no encoder, so images "
                          "cannot be mapped to latents. Interpolate between noise vectors (--random) instead.")
    x = as_float_images(images).to(model.device)
    y = labels.to(model.device) if (labels is not None and model.conditional) else None
    mu, _ = model.encode(x, y)
    return mu


@torch.no_grad()
def decode(model: GenerativeModel, z: Tensor, labels: Tensor | None = None) -> Tensor:
    """decode_latent on the model's device, with labels only for conditional models; result on CPU."""
    y = labels.to(model.device) if (labels is not None and model.conditional) else None
    return model.decode_latent(z.to(model.device), y).float().cpu().clamp(0, 1)


# ----------------------------------------------------------------------------- pictures

@torch.no_grad()
def interpolation_images(model: GenerativeModel, z0: Tensor, z1: Tensor, steps: int = 8,
                         methods: tuple[str, ...] = ("slerp",), labels: Tensor | None = None,
                         ends: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, int]:
    """Rows of decoded interpolations: for each pair (z0[i], z1[i]) one row per method, ``steps`` images
    from z0 to z1. ``labels`` (one per pair) condition conditional models; ``ends`` (two image tensors,
    one image per pair) are shown before and after each row, e.g. the images z0 and z1 encode.
    Returns (images, images per row)."""
    paths = [interpolate(z0.float().cpu(), z1.float().cpu(), steps, m) for m in methods]  # each (P, S, D)
    per_pair = []
    for i in range(z0.shape[0]):
        for path in paths:
            y = None if labels is None else labels[i:i + 1].repeat(steps)
            imgs = decode(model, path[i], y)
            if ends is not None:
                imgs = torch.cat([as_float_images(ends[0][i:i + 1]).cpu(), imgs, as_float_images(ends[1][i:i + 1]).cpu()])
            per_pair.append(imgs)
    return torch.cat(per_pair), steps + (2 if ends is not None else 0)


@torch.no_grad()
def kl_per_dimension(model: GenerativeModel, images: Tensor, labels: Tensor | None = None,
                     batch_size: int = 500) -> Tensor:
    """Average KL(q(z_d | x) || N(0, 1)) per latent dimension over ``images`` (nats), for models with an
    encoder: dimensions near 0 are unused ("collapsed") by the posterior (Burda et al. 2015, "active units")."""
    total = torch.zeros(model.latent_dim, dtype=torch.float64)
    for i in range(0, images.shape[0], batch_size):
        x = as_float_images(images[i:i + batch_size]).to(model.device)
        y = None if (labels is None or not model.conditional) else labels[i:i + batch_size].to(model.device)
        mu, logvar = model.encode(x, y)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
        total += kl.double().sum(0).cpu()
    return (total / max(1, images.shape[0])).float()


@torch.no_grad()
def traversal_images(model: GenerativeModel, base: Tensor, dims: list[int], value_range: float = 3.0,
                     steps: int = 9, labels: Tensor | None = None) -> Tensor:
    """One row per dimension in ``dims``: ``base`` (latent_dim,) with that dimension set to ``steps`` values
    evenly spaced in [-value_range, value_range], the others fixed. ``labels``: one per row (conditional)."""
    if steps < 2:
        raise GenlabError(f"a traversal needs at least 2 steps, got {steps}.")
    if value_range <= 0:
        raise GenlabError(f"--range must be positive, got {value_range}.")
    bad = [d for d in dims if not 0 <= d < model.latent_dim]
    if bad:
        raise GenlabError(f"latent dimension {bad[0]} does not exist: this model's latents have "
                          f"{model.latent_dim} dimensions (0..{model.latent_dim - 1}).")
    values = torch.linspace(-value_range, value_range, steps)
    rows = []
    for r, d in enumerate(dims):
        z = base.float().cpu().reshape(1, -1).repeat(steps, 1)
        z[:, d] = values
        y = None if labels is None else labels[r:r + 1].repeat(steps)
        rows.append(decode(model, z, y))
    return torch.cat(rows)


# ----------------------------------------------------------------------------- what the commands draw

def _data(dataset: Any | Callable[[], Any]):
    """A dataset, or a function that loads it: called only where images are needed (a GAN's pictures
    need none, so its data is never read)."""
    return dataset() if callable(dataset) else dataset


@dataclass
class Endpoints:
    """The two ends of each interpolation path: latents z0, z1 (P, D), a class per path for conditional
    models, the images they encode (shown at both ends) when they come from images, and a description."""

    z0: Tensor
    z1: Tensor
    labels: Tensor | None
    ends: tuple[Tensor, Tensor] | None
    what: str


def interpolation_endpoints(model: GenerativeModel, dataset: Any | Callable[[], Any], pairs: int,
                            generator: torch.Generator, *, indices: list[int] | None = None,
                            from_prior: bool = False, label: int | None = None) -> Endpoints:
    """The ends of ``pairs`` interpolation paths. Models with an encoder: the posterior means of test
    images, pairs ``indices`` (I, J, K, L ... -> I->J, K->L) or random pairs drawn with ``generator``;
    ``from_prior``, and every model without an encoder: two draws from the prior per path.
    ``label`` gives every path of a conditional model that class (default: an image's own class, or
    0, 1, 2 ... for prior draws)."""
    encoder = model.encodes
    if indices is not None and not encoder:
        raise GenlabError(f"{type(model).__name__} is a GAN: GANs have no encoder, so --images cannot be mapped "
                          "to latents. Omit --images to interpolate between noise vectors.")
    if pairs < 1:
        raise GenlabError(f"--pairs must be at least 1, got {pairs}.")
    if label is not None:
        row_labels(model, 1, label)  # checks the label (and that the model is conditional)
    if not encoder or from_prior:
        z = model.prior_sample(2 * pairs, generator)
        return Endpoints(z[:pairs], z[pairs:], row_labels(model, pairs, label), None,
                         "between random latents from the prior")
    split = image_split(_data(dataset))
    if indices is not None:
        if len(indices) < 2 or len(indices) % 2:
            raise GenlabError(f"--images takes pairs of test-image indices, I,J or I,J,K,L; got "
                              f"{','.join(map(str, indices))!r}.")
        check_indices(indices, len(split))
        i, j = torch.tensor(indices[0::2]), torch.tensor(indices[1::2])
    else:
        if 2 * pairs > len(split):
            raise GenlabError(f"--pairs {pairs} needs {2 * pairs} test images; there are {len(split)}.")
        perm = torch.randperm(len(split), generator=generator)[:2 * pairs]
        i, j = perm[:pairs], perm[pairs:]
    y_i = None if split.labels is None else split.labels[i]
    y_j = None if split.labels is None else split.labels[j]
    labels = None
    if model.conditional:
        labels = row_labels(model, len(i), label) if label is not None else y_i
    path_names = ", ".join(f"{a}->{b}" for a, b in zip(i.tolist(), j.tolist()))
    return Endpoints(posterior_means(model, split.images[i], y_i), posterior_means(model, split.images[j], y_j),
                     labels, (split.images[i], split.images[j]),
                     f"between the posterior means of test images {path_names} (originals at both ends)")


def interpolation(model: GenerativeModel, dataset: Any | Callable[[], Any], *, pairs: int = 4, steps: int = 8,
                  methods: tuple[str, ...] = ("slerp",), seed: int = 0, indices: list[int] | None = None,
                  from_prior: bool = False, label: int | None = None) -> tuple[Tensor, int, Endpoints]:
    """What ``genlab interpolate`` draws: rows of decoded interpolations between the ends of
    :func:`interpolation_endpoints` (seeded by ``seed``), one row per pair and method.
    Returns (images, images per row, the endpoints)."""
    ends = interpolation_endpoints(model, dataset, pairs, torch.Generator().manual_seed(seed), indices=indices,
                                   from_prior=from_prior, label=label)
    images, per_row = interpolation_images(model, ends.z0, ends.z1, steps, methods, labels=ends.labels, ends=ends.ends)
    return images, per_row, ends


def ranked_dimensions(model: GenerativeModel, dataset: Any | Callable[[], Any], top: int) -> tuple[list[int], str]:
    """The ``top`` latent dimensions to traverse and how they were chosen: for a model with an encoder
    those with the largest average KL on the first KL_RANKING_IMAGES test images (the ones it uses), for
    others 0..top-1 (a GAN's noise dimensions have no order)."""
    if top < 1:
        raise GenlabError(f"--top must be at least 1, got {top}.")
    k = min(top, model.latent_dim)
    if not model.encodes:
        return list(range(k)), f"0..{k - 1} (a GAN's noise dimensions have no order; choose others with --dims)"
    split = image_split(_data(dataset))
    n = min(len(split), KL_RANKING_IMAGES)
    kl = kl_per_dimension(model, split.images[:n], None if split.labels is None else split.labels[:n])
    dims = kl.argsort(descending=True)[:k].tolist()
    return dims, (f"the {k} with the largest average KL on {n} test images: "
                  + ", ".join(f"{d} ({kl[d]:.2f} nats)" for d in dims))


@dataclass
class Traversal:
    """What ``genlab traverse`` drew: the images (one row per dimension), the dimensions and how they
    were chosen, and the base latent's description."""

    images: Tensor
    dims: list[int]
    how: str
    base: str


def traversal(model: GenerativeModel, dataset: Any | Callable[[], Any], *, dims: list[int] | None = None,
              top: int = 8, image: int | None = None, seed: int = 0, value_range: float = 3.0, steps: int = 9,
              label: int | None = None) -> Traversal:
    """One row per latent dimension (``dims``, else :func:`ranked_dimensions` ``top``) varied over
    [-value_range, value_range] around a base latent: the posterior mean of test image ``image``
    (models with an encoder), else a prior draw seeded by ``seed``. ``label``: the class of every row
    of a conditional model (default: the base image's class, else 0, 1, 2 ...)."""
    encoder = model.encodes
    if image is not None and not encoder:
        raise GenlabError(f"{type(model).__name__} is a GAN: GANs have no encoder, so --image cannot give a base "
                          "latent. Omit --image to start from a prior draw.")
    data = _data(dataset) if encoder else None
    split = image_split(data) if encoder else None
    base_label = None
    if image is not None:
        check_indices([image], len(split), "--image")
        y = None if split.labels is None else split.labels[image:image + 1]
        base = posterior_means(model, split.images[image:image + 1], y)[0]
        base_label = None if y is None or not model.conditional else int(y[0])  # the image's class, if used
        base_what = f"the posterior mean of test image {image}"
    else:
        base = model.prior_sample(1, torch.Generator().manual_seed(seed))[0]
        base_what = f"a prior draw (seed {seed})"
    if dims is not None:
        how = "as given"
    else:
        dims, how = ranked_dimensions(model, data, top)
    labels = row_labels(model, len(dims), label if label is not None else base_label)
    return Traversal(traversal_images(model, base, dims, value_range, steps, labels), dims, how, base_what)


SAMPLE_BATCH = 10_000  # images decoded at once by draw_samples: the networks' activations stay small


def sample_count(model: GenerativeModel, n: int, label: int | None = None, per_class: int | None = None) -> int:
    """How many images :func:`draw_samples` gives for these options (``per_class`` per class, else ``n``),
    checked before anything of that size is allocated: ``label`` and ``per_class`` need a conditional model."""
    if (label is not None or per_class) and not model.conditional:
        raise GenlabError(f"this model ({type(model).__name__}) is unconditional; --label and --per-class need a "
                          "conditional one, e.g. `genlab train cgan` or `genlab train cvae`.")
    return model.num_classes * per_class if per_class else n


def draw_samples(model: GenerativeModel, n: int, *, seed: int = 0, label: int | None = None,
                 per_class: int | None = None, truncation: float | None = None, device: str | torch.device = "cpu",
                 class_names: list[str] | None = None) -> tuple[Tensor, int | None]:
    """What ``genlab sample`` draws: ``n`` samples (or ``per_class`` of every class, one row per class), all
    of class ``label`` for a conditional model if given, from the truncated prior with ``truncation``
    (:func:`truncated_samples`), seeded by ``seed``; in batches of SAMPLE_BATCH. Returns (images on CPU,
    images per row of a grid: ``per_class``, else None for a near-square grid)."""
    n = sample_count(model, n, label, per_class)
    gen = torch.Generator(device=device).manual_seed(seed)
    labels, nrow = None, None
    if per_class:
        labels, nrow = torch.arange(model.num_classes).repeat_interleave(per_class), per_class
    elif label is not None:
        k = model.num_classes
        if not 0 <= label < k:
            names = class_names or list(range(k))
            raise GenlabError(f"--label must be between 0 and {k - 1} (classes: {', '.join(map(str, names))})")
        labels = torch.full((n,), label, dtype=torch.long)
    trunc_gen = torch.Generator().manual_seed(seed)
    parts = []
    for i in range(0, n, SAMPLE_BATCH):
        m = min(SAMPLE_BATCH, n - i)
        y = None if labels is None else labels[i:i + m]
        if truncation is None:
            parts.append(model.sample(m, labels=y, generator=gen).cpu())
        else:
            parts.append(truncated_samples(model, m, truncation, labels=y, generator=trunc_gen).cpu())
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), nrow


def truncated_normal(n: int, dim: int, threshold: float, generator: torch.Generator | None = None) -> Tensor:
    """N(0, I) draws (n, dim) whose components with |z| > threshold are resampled until none is
    (the truncation trick, Brock et al. 2019). For tiny thresholds, components still outside after
    TRUNCATION_RESAMPLE_ROUNDS rounds are drawn by inverse CDF from the same truncated normal."""
    if not threshold > 0:
        raise GenlabError(f"--truncation must be greater than 0, got {threshold}.")
    z = torch.randn(n, dim, generator=generator)
    for _ in range(TRUNCATION_RESAMPLE_ROUNDS):
        bad = z.abs() > threshold
        k = int(bad.sum())
        if k == 0:
            return z
        z[bad] = torch.randn(k, generator=generator)
    bad = z.abs() > threshold
    lo = torch.special.ndtr(torch.tensor(-threshold, dtype=torch.float64))
    u = lo + (1 - 2 * lo) * torch.rand(int(bad.sum()), generator=generator, dtype=torch.float64)
    z[bad] = torch.special.ndtri(u).clamp(-threshold, threshold).float()
    return z


@torch.no_grad()
def truncated_samples(model: GenerativeModel, n: int, threshold: float, labels: Tensor | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
    """``n`` images decoded from truncated N(0, I) latents; only for models whose prior is N(0, I)."""
    if not standard_normal_prior(model):
        raise GenlabError(f"{type(model).__name__} draws its latents from its own (learned) prior, not N(0, I): "
                          "the truncation trick is not defined for it. Sample without --truncation.")
    z = truncated_normal(n, model.latent_dim, threshold, generator)
    if model.conditional and labels is None:
        labels = torch.arange(n) % model.num_classes
    return decode(model, z, labels)
