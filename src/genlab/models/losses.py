"""Every loss genlab trains with, as pure functions of tensors.

Conventions: images are float in [0, 1]; a discriminator returns *logits* (its probability
is ``D(x) = sigmoid(logit)``), because ``log sigmoid`` computed from logits is exact where
``log(D(x))`` of a saturated probability is not. Per-image losses are summed over pixels
(nats per image); the reduction over the batch is the caller's choice.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------- VAE


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ) per row, summed over latent dimensions.

    Kingma & Welling 2014, Appendix B:  -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2).
    """
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def reparameterize(mu: Tensor, logvar: Tensor, noise: Tensor | None = None) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): the reparameterization trick (Kingma & Welling 2014, eq. 10).

    Sampling becomes a deterministic, differentiable function of (mu, logvar) and outside noise.
    """
    if noise is None:
        noise = torch.randn_like(mu)
    return mu + noise * torch.exp(0.5 * logvar)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) for a Bernoulli decoder, per image (sum over pixels), in nats.

    Equals the seed's ``binary_cross_entropy(sigmoid(logits), x, reduction='sum')`` per image;
    for grey targets x in (0, 1) it is the cross-entropy, not a normalised likelihood.
    """
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def negative_elbo(recon_nll: Tensor, kl: Tensor, beta: float = 1.0) -> Tensor:
    """-ELBO = E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z))  (the seed's section 4.2; beta = 1)."""
    return recon_nll + beta * kl


# ----------------------------------------------------------------------------- GAN
#
# The seed's value function (Goodfellow et al. 2014, eq. 1):
#     min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))]
# With D(x) = sigmoid(l):  log D = -softplus(-l)  and  log(1 - D) = -softplus(l).


def minimax_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-V(D, G): the discriminator maximises V, i.e. minimises -E[log D(x)] - E[log(1 - D(G(z)))].

    At D = 1/2 everywhere (logits 0) this is 2 log 2, the value at the game's equilibrium.
    """
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def minimax_g_loss(fake_logits: Tensor) -> Tensor:
    """The generator's side of the minimax game: minimise E_z[log(1 - D(G(z)))] (eq. 1).

    Its gradient vanishes when D confidently rejects the fakes (early training).
    """
    return -F.softplus(fake_logits).mean()


def non_saturating_g_loss(fake_logits: Tensor) -> Tensor:
    """Maximise E_z[log D(G(z))] instead (Goodfellow et al. 2014, section 3): the same fixed
    point, but strong gradients exactly when D rejects the fakes."""
    return F.softplus(-fake_logits).mean()


class GANLoss(NamedTuple):
    """An adversarial objective as a (discriminator loss, generator loss) pair."""

    d_loss: Callable[[Tensor, Tensor], Tensor]
    g_loss: Callable[[Tensor], Tensor]


GAN_LOSSES: dict[str, GANLoss] = {
    "minimax": GANLoss(minimax_d_loss, minimax_g_loss),
    "non-saturating": GANLoss(minimax_d_loss, non_saturating_g_loss),
}


def gan_loss(name: str) -> GANLoss:
    """Look up an adversarial loss pair by name (see ``GAN_LOSSES``)."""
    try:
        return GAN_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown GAN loss {name!r}; choose one of: {', '.join(GAN_LOSSES)}") from None


LOG2 = math.log(2.0)
