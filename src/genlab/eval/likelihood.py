"""Likelihood metrics for VAEs: test-set ELBO and the importance-weighted NLL (Burda et al. 2015).

    log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,   z_k ~ q(z|x)

computed for a batch of images at once, with the K samples drawn in chunks so memory stays
bounded (about ``max_rows`` decoded images at a time) and a running logsumexp per image.

The seed VAE's decoder is Bernoulli. On grey data (pixels in (0, 1)) its "log-likelihood" is a
cross-entropy, not a normalised density, so the numbers are labelled ``bce-on-grey`` and no
bits/dim is given. With ``binarize=True`` the test images are binarised stochastically
(x ~ Bernoulli(pixel), fixed seed) - the protocol of Burda et al. 2015 (VAE, K = 5000: 86.76 nats
on MNIST) - and the NLL is a true discrete likelihood, so bits/dim = NLL / (D ln 2) is reported.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import GenlabError


def _is_binary(images: Tensor) -> bool:
    if images.dtype == torch.uint8:
        return bool(((images == 0) | (images == 255)).all())
    return bool(((images == 0) | (images == 1)).all())


@torch.no_grad()
def vae_likelihood(model, images: Tensor, k: int = 5000, binarize: bool = False, seed: int = 0,
                   batch_images: int = 500, max_rows: int = 32_768, progress: bool = False,
                   labels: Tensor | None = None, per_image: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """Test-set ELBO and IWAE NLL estimate (nats/image) of a VAE (``labels`` for conditional ones).

    ``images``: uint8 (N, C, H, W) (or float in [0, 1]). ``k``: importance samples per image
    (k = 1 gives only the ELBO's sample). Batched over ``batch_images`` images at once and over
    sample chunks of ``max_rows // batch_images`` samples. ELBO = the mean over the k
    samples of log p(x|z) - KL(q || p), the KL as the model's prior gives it (``Prior.elbo_kl``:
    closed form for N(0, I), else log q - log p at each sample, so the mean of log w). Every term
    comes from the model's ``importance_terms``; log p(z) is the prior genlab samples from, so the
    NLL is that of the model users sample.

    ``per_image``: a dict to fill with the per-image values (float64, (N,), in test-set order):
    ``neg_elbo`` always, ``nll_iwae`` when k > 1 - what a paired comparison of two models on the same
    images needs (``genlab compare`` reports the difference with its paired standard error).
    """
    if not model.has_likelihood:
        raise GenlabError(f"{type(model).__name__} has no pixel likelihood (encode and log_px_given_z); "
                          "likelihoods are for VAEs only.")
    if k < 1 or batch_images < 1:
        raise GenlabError(f"k and batch_images must be at least 1, got k={k}, batch_images={batch_images}.")
    model.eval()
    device = next(model.parameters()).device
    x_all = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    gen = torch.Generator().manual_seed(seed)
    if binarize:
        x_all = torch.bernoulli(x_all, generator=gen)
    binary = binarize or _is_binary(x_all)
    n = x_all.shape[0]
    d = x_all[0].numel()
    nll = torch.empty(n, dtype=torch.float64)
    elbo = torch.empty(n, dtype=torch.float64)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc=f"IWAE k={k}", unit="img", leave=False)
    for i in range(0, n, batch_images):
        x = x_all[i:i + batch_images].to(device)
        b = x.shape[0]
        y = None if labels is None else labels[i:i + batch_images].to(device)
        mu, logvar = model.encode(x, y)
        chunk = max(1, min(k, max_rows // b))
        lse = torch.full((b,), -math.inf, dtype=torch.float64, device=device)
        elbo_sum = torch.zeros(b, dtype=torch.float64, device=device)
        done = 0
        while done < k:
            s = min(chunk, k - done)
            eps = torch.randn((s, b, mu.shape[1]), generator=gen).to(device)
            log_px, log_pz, log_qz = model.importance_terms(x, y, eps, posterior=(mu, logvar))
            lw = log_px.double() + log_pz.double() - log_qz.double()  # log w = log p(x|z) + log p(z) - log q(z|x)
            lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
            elbo_sum += (log_px.double() - model.elbo_kl(mu, logvar, log_qz, log_pz).double()).sum(0)
            done += s
        nll[i:i + b] = -(lse - math.log(k)).cpu()
        elbo[i:i + b] = (elbo_sum / k).cpu()
        if bar is not None:
            bar.update(b)
    if bar is not None:
        bar.close()
    if per_image is not None:
        per_image["neg_elbo"] = -elbo
        if k > 1:
            per_image["nll_iwae"] = nll
    decoder = model.decoder_likelihood
    if decoder == "logistic":  # a distribution over the 256 levels of 8-bit pixels: bits/dim are meaningful
        kind, binary = "discretized logistic over 256 levels (normalised, 8-bit data)", True
    elif decoder == "gaussian":
        kind, binary = "gaussian density on [0, 1] pixels (continuous; not comparable with discrete NLLs)", False
    else:
        kind = ("bernoulli, stochastically binarized test set" if binarize else
                "bernoulli (data already binary)" if binary else "bce-on-grey (not a normalised likelihood)")
    out: dict[str, Any] = {
        "units": "nats/image", "n_images": int(n), "k": int(k), "binarized": bool(binarize),
        "binarize_seed": int(seed) if binarize else None, "likelihood": kind,
        "elbo": float(elbo.mean()), "neg_elbo": float(-elbo.mean()),
        "nll_iwae": float(nll.mean()) if k > 1 else None,
        "nll_iwae_stderr": float(nll.std() / math.sqrt(n)) if k > 1 and n > 1 else None,
        "bits_per_dim": float(nll.mean() / (d * math.log(2.0))) if (binary and k > 1) else None,
        "reference": ("Burda et al. 2015, VAE (1 stochastic layer) on binarized MNIST, k=5000: 86.76 nats"
                      if binarize else None),
    }
    return out
