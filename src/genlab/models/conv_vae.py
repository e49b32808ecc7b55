"""Convolutional VAEs (Kingma & Welling 2014) with the variants practitioners reach for.

encoder    x -> strided convs -> features (+ onehot(y)) -> (mu, logvar)      q(z | x [, y])
decoder    z (+ onehot(y)) -> linear -> transposed convs -> distribution parameters per pixel
likelihood by name: "bernoulli" (logits), "gaussian" (learned per-pixel or fixed variance),
           "logistic" (discretized logistic on the 256 pixel values, Salimans et al. 2017)
objective  -ELBO = E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z)), beta warmed up linearly from 0
           (beta-VAE: Higgins et al. 2017; warm-up: Bowman et al. 2016, Sonderby et al. 2016);
           or with iwae_k > 1 the importance-weighted bound of Burda et al. 2015.
conditional  label y into both networks (Sohn et al. 2015, the CVAE).
prior      "normal": p(z) = N(0, I); "gmm": after every epoch a Gaussian mixture is fitted to
           codes z ~ q(z|x) of (a seeded subset of) the training images and replaces N(0, I) for
           sampling and likelihoods - ex-post density estimation (Ghosh et al. 2020, section 4),
           which fills the "holes" between the aggregate posterior and N(0, I). Training itself
           regularises q towards N(0, I). "mog": a mixture of diagonal Gaussians trained with the
           model (Tomczak & Welling 2018), the KL term a one-sample estimate.

Beside the common interface, a VAE offers encode, decode, reconstruct, elbo and
``log_px_given_z(x, z, labels=None)`` -> log p(x|z) per image: with encode it is all an
importance-weighted log-likelihood estimator needs (log p(x) ~ L_k for large k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import GenlabError
from ..nets import ConvDecoder, ConvEncoder, one_hot, require_labels
from . import losses
from .base import Batch, GenerativeModel, adam, as_float_images, randn
from .priors import PRIORS, FittedPriorMixin, check_prior  # noqa: F401  (PRIORS: re-exported)

LOGVAR_MIN = -9.0  # a learned Gaussian variance below (1/90)^2 would let the density grow without bound
LOG_SCALE_MIN = -7.0  # the logistic's scale floor (well below one pixel bin, 1/255)
DECODER_MAPS = {"bernoulli": 1, "gaussian": 2, "logistic": 2}  # output maps per image channel


@dataclass
class ConvVAEConfig:
    """Hyper-parameters of the convolutional VAE (defaults: the "conv-vae" preset)."""

    z_dim: int = 32
    width: int = 32  # channels at full resolution; doubled at each halving (capped at 8x)
    likelihood: str = "bernoulli"  # "bernoulli", "gaussian" or "logistic"
    gaussian_std: float = 0.0  # fixed sigma of the Gaussian decoder; 0 = learned per pixel
    beta: float = 1.0  # weight of the KL term; 1 is the true ELBO (beta-VAE: > 1)
    kl_warmup_steps: int = 0  # beta rises linearly from 0 over this many steps; 0 = no warm-up
    iwae_k: int = 1  # importance samples of the training bound; 1 = the ELBO
    conditional: bool = False  # the CVAE: q(z | x, y) and p(x | z, y)
    batchnorm: bool = False  # BatchNorm in both networks (makes log p(x|z) depend on the mode)
    prior: str = "normal"  # "normal" (N(0, I)), "gmm" (a mixture fitted to the encoded training set) or "mog" (trained)
    prior_components: int = 10  # mixture components of prior="gmm" (10 in Ghosh et al. 2020) or "mog"
    prior_fit_images: int = 20_000  # training images encoded for each fit (a seeded subset)
    prior_fit_every: int = 1  # epochs between fits (the last epoch and a stop always fit); sampling-only cost
    lr: float = 1e-3


class ConvVAE(FittedPriorMixin, GenerativeModel):
    """A VAE with convolutional encoder and decoder, sized from (C, H, W)."""

    family = "vae"

    def __init__(self, config: ConvVAEConfig, image_shape, num_classes: int = 0):
        super().__init__(config, image_shape, num_classes)
        c = config
        if c.likelihood not in DECODER_MAPS:
            raise GenlabError(f"unknown likelihood {c.likelihood!r}; choose one of: {', '.join(DECODER_MAPS)}")
        if c.conditional and num_classes < 2:
            raise GenlabError("a conditional VAE needs a labelled dataset (at least 2 classes); this one has "
                              f"{num_classes}. Use conv-vae, or labelled data.")
        if c.iwae_k < 1:
            raise GenlabError(f"iwae_k must be at least 1, got {c.iwae_k}.")
        check_prior(c.prior, c.prior_components, c.prior_fit_images, c.conditional, c.prior_fit_every)
        self.label_dim = num_classes if c.conditional else 0
        self.maps = 1 if c.likelihood == "gaussian" and c.gaussian_std > 0 else DECODER_MAPS[c.likelihood]
        self.encoder = ConvEncoder(self.image_shape, c.width, c.batchnorm)
        self.mu_head = nn.Linear(self.encoder.out_features + self.label_dim, c.z_dim)
        self.logvar_head = nn.Linear(self.encoder.out_features + self.label_dim, c.z_dim)
        self.decoder = ConvDecoder(c.z_dim + self.label_dim, self.maps * self.image_shape[0], self.image_shape,
                                   c.width, c.batchnorm)
        self.prior = self.make_prior(c.z_dim)

    # -- the VAE's own interface -------------------------------------------------------------
    def _with_labels(self, h: Tensor, labels: Tensor | None) -> Tensor:
        if not self.label_dim:
            return h
        return torch.cat([h, one_hot(require_labels(labels, "this VAE"), self.label_dim)], dim=1)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z | x [, y]) = N(mu, diag(exp(logvar))) for images x in [0, 1]."""
        h = self._with_labels(self.encoder(x), labels)
        return self.mu_head(h), self.logvar_head(h)

    def decoder_output(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The decoder's raw maps (B, maps * C, H, W): logits of the mean first, then scales."""
        return self.decoder(self._with_labels(z, labels))

    def decode_logits(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Bernoulli logits of p(x|z) (the MLPVAE interface); other likelihoods: use log_px_given_z."""
        if self.config.likelihood != "bernoulli":
            raise GenlabError(f"this VAE's decoder is {self.config.likelihood}, not Bernoulli: it has no "
                              "logits; score images with log_px_given_z(x, z, labels).")
        return self.decoder_output(z, labels)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The decoder's mean image, in [0, 1]."""
        return torch.sigmoid(self.decoder_output(z, labels)[:, :self.image_shape[0]])

    def nll(self, out: Tensor, x: Tensor) -> Tensor:
        """-log p(x|z) per image from the decoder's maps ``out``, in nats (the named likelihood)."""
        c = self.config
        ch = self.image_shape[0]
        out = losses.fp32(out)  # the likelihood in float32 under mixed precision
        mean = torch.sigmoid(out[:, :ch])
        if c.likelihood == "bernoulli":
            return losses.bernoulli_nll(out, x)
        if c.likelihood == "gaussian":
            if c.gaussian_std > 0:
                logvar = torch.full((), 2.0 * math.log(c.gaussian_std), device=x.device)
            else:
                logvar = out[:, ch:].clamp(min=LOGVAR_MIN)
            return losses.gaussian_nll(x, mean, logvar)
        return losses.discretized_logistic_nll(x, mean, out[:, ch:].clamp(min=LOG_SCALE_MIN))

    def log_px_given_z(self, x: Tensor, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(x|z [, y]) per image, in nats; z of shape (B, z_dim) for x of (B, C, H, W)."""
        return -self.nll(self.decoder_output(z, labels), x)

    def beta_at(self, step: int) -> float:
        """beta after ``step`` training steps: linear warm-up from 0 over kl_warmup_steps (losses.warmed_up_beta)."""
        return losses.warmed_up_beta(self.config.beta, self.config.kl_warmup_steps, step)

    def loss_terms(self, x: Tensor, labels: Tensor | None = None, noise: Tensor | None = None,
                   beta: float | None = None) -> dict[str, Tensor]:
        """Per-image reconstruction NLL, KL (analytic for N(0, I), one-sample for prior="mog") and negative
        (beta-)ELBO, one sample of z."""
        mu, logvar = self.encode(x, labels)
        z = losses.reparameterize(mu, logvar, noise)  # z = mu + sigma * eps  (K&W 2014, eq. 10)
        recon = -self.log_px_given_z(x, z, labels)
        kl = self.kl_to_prior(z, mu, logvar)  # K&W 2014, appendix B, for N(0, I)
        b = self.config.beta if beta is None else beta
        return {"recon": recon, "kl": kl, "neg_elbo": losses.negative_elbo(recon, kl, b)}

    def log_weights(self, x: Tensor, labels: Tensor | None = None, noise: Tensor | None = None,
                    k: int = 1, beta: float = 1.0) -> Tensor:
        """log w_i = log p(x|z_i) + beta * (log p(z_i) - log q(z_i|x)), z_i ~ q(z|x), shape (k, B).

        ``noise`` (k, B, z_dim) fixes the draws. beta = 1 gives the importance weights of Burda
        et al. 2015; other values scale the prior-to-posterior ratio the way beta scales the KL.
        """
        mu, logvar = self.encode(x, labels)
        if noise is None:
            noise = torch.randn(k, *mu.shape, device=mu.device)
        k = noise.shape[0]
        z = losses.reparameterize(mu, logvar, noise)  # (k, B, z_dim)
        flat_labels = None if labels is None else labels.repeat(k)
        log_px = self.log_px_given_z(x.repeat(k, 1, 1, 1), z.flatten(0, 1), flat_labels).view(k, -1)
        log_pz = self.log_prior(z)  # N(0, I), or the fitted mixture
        log_qz = losses.log_normal(z, mu, logvar)
        return log_px + beta * (log_pz - log_qz)

    def iwae_bound(self, x: Tensor, labels: Tensor | None = None, k: int = 1, noise: Tensor | None = None,
                   beta: float = 1.0) -> Tensor:
        """L_k = log (1/k) sum_i w_i per image (Burda et al. 2015, eq. 8); k = 1: the ELBO with a
        one-sample (Monte Carlo) KL."""
        return losses.iwae_bound(self.log_weights(x, labels, noise, k, beta))

    @torch.no_grad()
    def elbo(self, x: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Single-sample ELBO estimate per image, in nats: a lower bound on log p(x) (KL in closed
        form for N(0, I), a one-sample estimate for a fitted mixture prior)."""
        mu, logvar = self.encode(x, labels)
        noise = randn(tuple(mu.shape), generator, mu.device)
        if self.has_standard_normal_prior:
            return -self.loss_terms(x, labels, noise, beta=1.0)["neg_elbo"]
        return self.elbo_with_prior(x, mu, logvar, noise, lambda x_, z: self.log_px_given_z(x_, z, labels))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode the posterior mean: the model's reconstruction of x, in [0, 1]."""
        mu, _ = self.encode(x, labels)
        return self.decode(mu, labels)

    # -- the common interface ----------------------------------------------------------------
    def configure_optimizers(self):
        return {"vae": adam(self.parameters(), lr=self.config.lr)}

    def train_step(self, batch: Batch, step: int, optimizers) -> dict[str, Tensor]:
        ctx = self.step_context
        x, labels = batch.images, batch.labels if self.label_dim else None
        n = x.shape[0]
        beta = self.beta_at(step)
        logs: dict[str, Tensor] = {}
        if self.config.iwae_k > 1:  # maximise L_k (Burda et al. 2015, eq. 8)
            noise = ctx.randn(self.config.iwae_k, n, self.config.z_dim, device=x.device, batch_dim=1)
            with ctx.autocast():
                bound = self.iwae_bound(x, labels, noise=noise, beta=beta)
            loss = -bound.mean()
            logs["iwae_bound"] = bound.detach().mean()
        else:  # minimise -ELBO = recon + beta * KL
            noise = ctx.randn(n, self.config.z_dim, device=x.device)
            with ctx.autocast():
                terms = self.loss_terms(x, labels, noise=noise, beta=beta)
            loss = terms["neg_elbo"].mean()
            logs.update(recon=terms["recon"].detach().mean(), kl=terms["kl"].detach().mean())
        opt = optimizers["vae"]
        opt.zero_grad(set_to_none=True)
        ctx.backward(loss, "vae")
        ctx.step(opt, "vae")
        logs["loss"] = loss.detach()
        logs["beta"] = torch.tensor(beta, device=x.device)
        return logs

    @torch.no_grad()
    def decode_latent(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The decoder's mean image at z (sample() draws z from the prior)."""
        return self.decode(z, labels if self.label_dim else None)

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None,
                 batch_size: int = 1000) -> dict[str, float]:
        """Test ELBO per image (nats); with the discrete logistic likelihood also bits/dim,
        -ELBO / (C * H * W * log 2), an upper bound on the model's true bits/dim."""
        total = torch.zeros((), dtype=torch.float64, device=images.device)
        for i in range(0, images.shape[0], batch_size):
            x = as_float_images(images[i:i + batch_size])
            y = labels[i:i + batch_size] if self.label_dim and labels is not None else None
            total += self.elbo(x, y, generator).double().sum()
        elbo = (total / images.shape[0]).item()
        out = {"test_elbo": elbo}
        if self.config.likelihood == "logistic":
            out["test_bits_per_dim"] = -elbo / (self.x_dim * math.log(2.0))
        return out
