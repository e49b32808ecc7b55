"""Every loss genlab trains with, as pure functions of tensors.

Conventions: images are float in [0, 1]; a discriminator returns *logits* (its probability
is ``D(x) = sigmoid(logit)``), because ``log sigmoid`` computed from logits is exact where
``log(D(x))`` of a saturated probability is not. Per-image losses are summed over pixels
(nats per image); the reduction over the batch is the caller's choice.

Mixed precision: every loss is computed in float32 (bf16/fp16 inputs from an autocast forward
pass are cast up first; float32 and float64 pass through untouched), and the gradient penalties
run their critic pass and their gradient in float32 with autocast off.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)
_HALF = (torch.float16, torch.bfloat16)


def fp32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is a 16-bit float (an autocast output); any other tensor as it is."""
    return t.float() if t.dtype in _HALF else t


def in_fp32(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn(x)`` with autocast off and x in float32 (the output cast to float32 too): for the passes
    whose gradients a penalty differentiates, where 16-bit rounding would swamp the signal."""
    with torch.autocast(x.device.type, enabled=False):
        return fp32(fn(fp32(x)))

# ----------------------------------------------------------------------------- VAE


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ) per row, summed over latent dimensions.

    Kingma & Welling 2014, Appendix B:  -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2).
    """
    mu, logvar = fp32(mu), fp32(logvar)
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
    logits, x = fp32(logits), fp32(x)
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_nll(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """-log N(x; mean, diag(exp(logvar))) per image (sum over pixels), in nats.

    -log p(x) = 1/2 * sum( log(2 pi) + log sigma^2 + (x - mean)^2 / sigma^2 ). ``logvar`` broadcasts
    against x (a fixed variance is a scalar tensor). A density on [0, 1], not a probability of the
    8-bit pixel values: compare it with the discrete likelihoods only after dequantization.
    """
    x, mean, logvar = fp32(x), fp32(mean), fp32(logvar)
    nll = 0.5 * (LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar))
    return nll.expand_as(x).flatten(1).sum(1)


def _log_sigmoid_difference(a: Tensor, b: Tensor) -> Tensor:
    """log(sigmoid(a) - sigmoid(b)) for a > b, accurate in both tails.

    log(s(a) - s(b)) = log s(a) + log(1 - exp(log s(b) - log s(a))), and in the right tail the
    symmetry s(a) - s(b) = s(-b) - s(-a) keeps both log-sigmoids away from log(1) = 0.
    """
    flip = (a + b) > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_sa, log_sb = F.logsigmoid(a), F.logsigmoid(b)
    # the clamp keeps log finite (and its gradient defined) when the bin's mass underflows
    return log_sa + torch.log(-torch.expm1(log_sb - log_sa).clamp(max=-1e-30))


def discretized_logistic_nll(x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256) -> Tensor:
    """-log P(x) per image (sum over pixels), in nats, for 8-bit pixels x in {0, 1/255, ..., 1}.

    Salimans et al. 2017 (PixelCNN++, eq. 2) with one logistic per pixel: the probability of a
    pixel is the logistic's mass on its bin of width 1/255 centred on x,
        P(x) = sigma((x + 1/510 - mean) / s) - sigma((x - 1/510 - mean) / s),
    except that the first bin reaches down to -inf (P(0) = sigma((1/510 - mean) / s)) and the last
    up to +inf (P(1) = 1 - sigma((1 - 1/510 - mean) / s)), so the 256 probabilities sum to 1 and
    nll / (C*H*W * log 2) is a true bits/dim.
    """
    x, mean, log_scale = fp32(x), fp32(mean), fp32(log_scale)
    half_bin = 0.5 / (bins - 1)
    inv_s = torch.exp(-log_scale)
    upper = (x - mean + half_bin) * inv_s
    lower = (x - mean - half_bin) * inv_s
    log_p_first = F.logsigmoid(upper)  # x = 0: the mass below the first bin's upper edge
    log_p_last = F.logsigmoid(-lower)  # x = 1: the mass above the last bin's lower edge
    log_p_mid = _log_sigmoid_difference(upper, lower)
    log_p = torch.where(x < half_bin, log_p_first, torch.where(x > 1 - half_bin, log_p_last, log_p_mid))
    return -log_p.flatten(1).sum(1)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension (the latent log-density)."""
    z, mu, logvar = fp32(z), fp32(mu), fp32(logvar)
    return -0.5 * torch.sum(LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar), dim=-1)


def iwae_bound(log_weights: Tensor) -> Tensor:
    """The importance-weighted bound L_k = log (1/k) sum_i w_i per image (Burda et al. 2015, eq. 8).

    ``log_weights`` has shape (k, B): log w_i = log p(x, z_i) - log q(z_i | x), z_i ~ q(z|x).
    k = 1 is the single-sample ELBO; L_k <= L_{k+1} <= log p(x) in expectation (their Theorem 1).
    """
    k = log_weights.shape[0]
    return torch.logsumexp(log_weights, dim=0) - math.log(k)


def warmed_up_beta(beta: float, warmup_steps: int, step: int) -> float:
    """The KL weight at training step ``step`` (0-based): ``beta``, reached linearly from 0 over the first
    ``warmup_steps`` steps (none when <= 0). The warm-up lets the decoder learn to use the latent code
    before the KL term prices it, which keeps more latent units active (Bowman et al. 2016; Sønderby et
    al. 2016)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, (step + 1) / warmup_steps)


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
    real_logits, fake_logits = fp32(real_logits), fp32(fake_logits)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def minimax_g_loss(fake_logits: Tensor) -> Tensor:
    """The generator's side of the minimax game: minimise E_z[log(1 - D(G(z)))] (eq. 1).

    Its gradient vanishes when D confidently rejects the fakes (early training).
    """
    fake_logits = fp32(fake_logits)
    return -F.softplus(fake_logits).mean()


def non_saturating_g_loss(fake_logits: Tensor) -> Tensor:
    """Maximise E_z[log D(G(z))] instead (Goodfellow et al. 2014, section 3): the same fixed
    point, but strong gradients exactly when D rejects the fakes."""
    fake_logits = fp32(fake_logits)
    return F.softplus(-fake_logits).mean()


def least_squares_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Least-squares GAN, discriminator (Mao et al. 2017, eq. 9 with a = 0, b = 1):
    1/2 E_x[(D(x) - 1)^2] + 1/2 E_z[D(G(z))^2], D the raw output (no sigmoid)."""
    real_logits, fake_logits = fp32(real_logits), fp32(fake_logits)
    return 0.5 * (real_logits - 1.0).pow(2).mean() + 0.5 * fake_logits.pow(2).mean()


def least_squares_g_loss(fake_logits: Tensor) -> Tensor:
    """Least-squares GAN, generator (Mao et al. 2017, eq. 9 with c = 1): 1/2 E_z[(D(G(z)) - 1)^2]."""
    fake_logits = fp32(fake_logits)
    return 0.5 * (fake_logits - 1.0).pow(2).mean()


def wasserstein_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """WGAN critic (Arjovsky et al. 2017, eq. 3): maximise E_x[D(x)] - E_z[D(G(z))], i.e. minimise
    E_z[D(G(z))] - E_x[D(x)]. Meaningful only for a Lipschitz critic: add ``gradient_penalty``
    (or use spectral normalization)."""
    real_logits, fake_logits = fp32(real_logits), fp32(fake_logits)
    return fake_logits.mean() - real_logits.mean()


def wasserstein_g_loss(fake_logits: Tensor) -> Tensor:
    """WGAN generator (Arjovsky et al. 2017, eq. 3): minimise -E_z[D(G(z))]."""
    fake_logits = fp32(fake_logits)
    return -fake_logits.mean()


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge loss, discriminator (Lim & Ye 2017; Miyato et al. 2018, eq. 16):
    E_x[max(0, 1 - D(x))] + E_z[max(0, 1 + D(G(z)))]."""
    real_logits, fake_logits = fp32(real_logits), fp32(fake_logits)
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """Hinge loss, generator (Miyato et al. 2018, eq. 17): -E_z[D(G(z))]."""
    fake_logits = fp32(fake_logits)
    return -fake_logits.mean()


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor,
                     eps: Tensor | None = None) -> Tensor:
    """WGAN-GP's penalty (Gulrajani et al. 2017, eq. 3): E_xhat[(||grad_xhat D(xhat)||_2 - 1)^2]
    at xhat = eps * x + (1 - eps) * G(z), eps ~ U[0, 1] per image (their Algorithm 1).

    Built with ``create_graph=True`` so that the penalty can be back-propagated into the critic;
    the caller multiplies by lambda (10 in the paper). ``eps`` (shape (B,) or broadcastable to the
    images) may be given for reproducibility; otherwise it comes from the global RNG. The critic
    pass and the gradient are float32 with autocast off, whatever the training precision.
    """
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device)
    eps = eps.reshape(-1, *([1] * (real.dim() - 1))) if eps.dim() == 1 else eps
    x_hat = (eps * fp32(real.detach()) + (1.0 - eps) * fp32(fake.detach())).requires_grad_(True)
    (grad,) = torch.autograd.grad(in_fp32(critic, x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


def r1_penalty(real_logits: Tensor, real: Tensor) -> Tensor:
    """R1 regulariser (Mescheder et al. 2018, eq. 9 without the gamma/2): E_x[||grad_x D(x)||^2]
    on real data. ``real`` must have ``requires_grad`` set before ``real_logits = D(real)``; the
    caller multiplies by gamma / 2. Under mixed precision compute the logits for it with
    ``in_fp32(D, real)``, so that the gradient is a float32 one."""
    (grad,) = torch.autograd.grad(fp32(real_logits).sum(), real, create_graph=True)
    return fp32(grad).pow(2).flatten(1).sum(1).mean()


class GANLoss(NamedTuple):
    """An adversarial objective as a (discriminator loss, generator loss) pair."""

    d_loss: Callable[[Tensor, Tensor], Tensor]
    g_loss: Callable[[Tensor], Tensor]


GAN_LOSSES: dict[str, GANLoss] = {
    "minimax": GANLoss(minimax_d_loss, minimax_g_loss),
    "non-saturating": GANLoss(minimax_d_loss, non_saturating_g_loss),
    "least-squares": GANLoss(least_squares_d_loss, least_squares_g_loss),
    "wasserstein": GANLoss(wasserstein_d_loss, wasserstein_g_loss),
    "hinge": GANLoss(hinge_d_loss, hinge_g_loss),
}


def gan_loss(name: str) -> GANLoss:
    """Look up an adversarial loss pair by name (see ``GAN_LOSSES``)."""
    try:
        return GAN_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown GAN loss {name!r}; choose one of: {', '.join(GAN_LOSSES)}") from None


LOG2 = math.log(2.0)
