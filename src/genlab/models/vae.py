"""The seed document's variational autoencoder (Kingma & Welling 2014), as an MLP.

encoder  x -> h1 -> h2 -> (mu, logvar)         (the seed's fc1, fc2, fc31, fc32)
sample   z = mu + sigma * eps                   (reparameterization, losses.reparameterize)
decoder  z -> h2 -> h1 -> logits -> sigmoid     (the seed's fc4, fc5, fc6)
loss     BCE(sum) + KL = -ELBO                  (the seed's section 4.2)

Beyond the seed: a KL weight ``beta``, warmed up from 0 over ``kl_warmup_steps``; with
``prior="gmm"``, a Gaussian mixture fitted to the encoded training set after every
(``prior_fit_every``-th) epoch for sampling and likelihoods (ex-post density estimation, Ghosh
et al. 2020; see ``priors.py``), as for the convolutional VAE; with ``prior="mog"`` a mixture
prior trained with the model (Tomczak & Welling 2018); and with
``ema_decay`` an exponential moving average of every weight (Polyak & Juditsky 1992), which the
model uses in eval mode: for sampling, encoding, likelihoods and the prior's fit; with
``encoder_refit_from_step`` a last phase that trains only the encoder, on the true ELBO, so that a
model trained with a KL weight below 1 gets a proposal fit for its likelihood estimate (the
amortisation gap, Cremer et al. 2018) while its samples stay exactly as they were.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import GenlabError
from ..nets import ema_update, mlp
from . import losses
from .base import Batch, GenerativeModel, adam, as_float_images, randn
from .priors import FittedPriorMixin, check_prior


@dataclass
class MLPVAEConfig:
    """Hyper-parameters of the MLP VAE. The defaults are the seed's: 784-512-256-64, Adam 1e-3."""

    hidden: tuple[int, ...] = (512, 256)  # the encoder's hidden widths (and the decoder's, reversed, by default)
    decoder_hidden: tuple[int, ...] | None = None  # the decoder's own widths, from z outwards; None = reversed(hidden)
    z_dim: int = 64
    activation: str = "relu"
    lr: float = 1e-3
    beta: float = 1.0  # weight of the KL term; 1 is the true ELBO
    kl_warmup_steps: int = 0  # beta rises linearly from 0 over this many steps (Sønderby et al. 2016); 0 = none
    binarize: bool = False  # dynamic binarization: train on x ~ Bernoulli(pixel), a fresh draw every step
    prior: str = "normal"  # "normal" (N(0, I), the seed's), "gmm" (a mixture fitted to the encoded training set) or
    # "mog" (a mixture of diagonal Gaussians trained with the model, Tomczak & Welling 2018)
    prior_components: int = 10  # mixture components of prior="gmm" or "mog"
    prior_fit_images: int = 20_000  # training images encoded for each fit (a seeded subset)
    prior_fit_every: int = 1  # epochs between fits (the last epoch and a stop always fit); sampling-only cost
    ema_decay: float = 0.0  # EMA of the weights, used in eval mode (sampling, likelihoods, prior fit); 0 = off
    encoder_refit_from_step: int = 0  # from this training step on, only the encoder trains, on the true ELBO
    # (KL weight 1), decoder and prior frozen: a tighter proposal for the likelihood, the samples unchanged; 0 = off
    encoder_refit_fraction: float = 0.0  # the same phase over the last this fraction of the training budget
    # (steps, epochs or --max-minutes, whichever ends the run: the Trainer's budget progress); 0 = off


class MLPVAE(FittedPriorMixin, GenerativeModel):
    """A VAE with fully connected encoder and decoder and a Bernoulli decoder likelihood."""

    family = "vae"

    def __init__(self, config: MLPVAEConfig, image_shape, num_classes: int = 0):
        super().__init__(config, image_shape, num_classes)
        check_prior(config.prior, config.prior_components, config.prior_fit_images, fit_every=config.prior_fit_every)
        if config.encoder_refit_from_step < 0:
            raise GenlabError(f"encoder_refit_from_step is a training step (0 = off); got {config.encoder_refit_from_step}.")
        if not 0.0 <= config.encoder_refit_fraction < 1.0:
            raise GenlabError("encoder_refit_fraction is the last fraction of the training budget given to the encoder "
                              f"refit, in [0, 1) (0 = off); got {config.encoder_refit_fraction}.")
        if self.refits_encoder and (config.prior == "gmm" or config.ema_decay > 0):
            raise GenlabError("encoder_refit_from_step / encoder_refit_fraction keep the samples as they were by "
                              "freezing decoder and prior, but prior=gmm is refitted to the encoder's codes and "
                              "ema_decay keeps averaging the decoder: use it with prior=normal or prior=mog and "
                              "ema_decay=0.")
        hidden = list(config.hidden)
        self.encoder = mlp([self.x_dim, *hidden], config.activation, last_act=True)
        self.mu_head = nn.Linear(hidden[-1], config.z_dim)
        self.logvar_head = nn.Linear(hidden[-1], config.z_dim)
        dec_hidden = list(reversed(hidden)) if config.decoder_hidden is None else list(config.decoder_hidden)
        if not dec_hidden or any(int(w) < 1 for w in dec_hidden):
            raise GenlabError(f"decoder_hidden must list at least one positive width; got {config.decoder_hidden}.")
        self.decoder = mlp([config.z_dim, *dec_hidden, self.x_dim], config.activation)
        self.prior = self.make_prior(config.z_dim)
        self.averaged = None  # the EMA of the four networks, by name (ema_decay > 0)
        if config.ema_decay > 0:
            self.averaged = nn.ModuleDict({name: copy.deepcopy(getattr(self, name)) for name in self._NETS})
            self.averaged.requires_grad_(False)

    _NETS = ("encoder", "mu_head", "logvar_head", "decoder")

    def _net(self, name: str) -> nn.Module:
        """The network ``name``: its moving average in eval mode when one is kept, else the trained one."""
        if self.averaged is not None and not self.training:
            return self.averaged[name]
        return getattr(self, name)

    def ema_decay_at(self, step: int) -> float:
        """The decay of the update made at ``step`` (0-based): min(ema_decay, (1 + step) / (10 + step)), so the
        average forgets the random initialization within the first few hundred steps (as the GANs' EMA)."""
        return min(self.config.ema_decay, (1.0 + step) / (10.0 + step))

    # -- the VAE's own interface -------------------------------------------------------------
    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z|x) = N(mu, diag(exp(logvar))) for images x in [0, 1] (``labels``: unused, unconditional)."""
        h = self._net("encoder")(x.flatten(1))
        return self._net("mu_head")(h), self._net("logvar_head")(h)

    def decode_logits(self, z: Tensor) -> Tensor:
        return self._net("decoder")(z).view(-1, *self.image_shape)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean image, in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def log_px_given_z(self, x: Tensor, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(x|z) per image, in nats (Bernoulli decoder); z of shape (B, z_dim) for x of (B, C, H, W)."""
        return -losses.bernoulli_nll(self.decode_logits(z), x)

    @property
    def refits_encoder(self) -> bool:
        """Whether training ends with the encoder refit (``encoder_refit_from_step`` or ``encoder_refit_fraction``)."""
        return self.config.encoder_refit_from_step > 0 or self.config.encoder_refit_fraction > 0

    def refits_encoder_at(self, step: int) -> bool:
        """Whether training step ``step`` is one of the encoder refit's: from ``encoder_refit_from_step`` on, or
        once the step context's budget progress has reached 1 - ``encoder_refit_fraction``."""
        cfg = self.config
        if 0 < cfg.encoder_refit_from_step <= step:
            return True
        return cfg.encoder_refit_fraction > 0 and self.step_context.budget_progress >= 1.0 - cfg.encoder_refit_fraction

    def beta_at(self, step: int) -> float:
        """The KL weight of training step ``step``: ``beta`` warmed up over ``kl_warmup_steps`` (losses.warmed_up_beta);
        1 in the encoder refit's steps, whose objective is the true ELBO."""
        if self.refits_encoder_at(step):
            return 1.0
        return losses.warmed_up_beta(self.config.beta, self.config.kl_warmup_steps, step)

    def loss_terms(self, x: Tensor, noise: Tensor | None = None, beta: float | None = None) -> dict[str, Tensor]:
        """Per-image reconstruction NLL, KL and negative (beta-)ELBO (one sample of z); ``beta``: the config's."""
        mu, logvar = self.encode(x)
        z = losses.reparameterize(mu, logvar, noise)
        recon = losses.bernoulli_nll(self.decode_logits(z), x)
        kl = self.kl_to_prior(z, mu, logvar)
        beta = self.config.beta if beta is None else beta
        return {"recon": recon, "kl": kl, "neg_elbo": losses.negative_elbo(recon, kl, beta)}

    @torch.no_grad()
    def elbo(self, x: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Single-sample ELBO estimate per image, in nats (a lower bound on log p(x)); KL in closed
        form for N(0, I), a one-sample estimate for a fitted mixture prior."""
        mu, logvar = self.encode(x)
        noise = randn(tuple(mu.shape), generator, mu.device)
        if not self.has_standard_normal_prior:
            return self.elbo_with_prior(x, mu, logvar, noise, self.log_px_given_z)
        z = losses.reparameterize(mu, logvar, noise)
        recon = losses.bernoulli_nll(self.decode_logits(z), x)
        return -(recon + losses.gaussian_kl(mu, logvar))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode the posterior mean: the model's reconstruction of x, in [0, 1]."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    # -- the common interface ----------------------------------------------------------------
    def configure_optimizers(self):
        return {"vae": adam([p for p in self.parameters() if p.requires_grad], lr=self.config.lr)}

    def train_step(self, batch: Batch, step: int, optimizers) -> dict[str, Tensor]:
        ctx = self.step_context
        x = batch.images
        n = x.shape[0]
        if self.config.binarize:  # the binarized-MNIST protocol of the IWAE literature
            x = ctx.bernoulli(x)
        eps = ctx.randn(n, self.config.z_dim, device=x.device)  # the reparameterization's noise
        with ctx.autocast():
            terms = self.loss_terms(x, noise=eps, beta=self.beta_at(step))
        loss = terms["neg_elbo"].sum()  # the seed sums over the batch (reduction='sum')
        opt = optimizers["vae"]
        opt.zero_grad(set_to_none=True)
        ctx.backward(loss, "vae", reduction="sum")
        if self.refits_encoder_at(step):
            # the refit (Cremer et al. 2018, the amortisation gap): p(z) and p(x|z) - the model that is sampled
            # and whose likelihood is reported - stay as they are; Adam skips a parameter without a gradient
            for module in (self.decoder, self.prior):
                for p in (module.parameters() if module is not None else ()):
                    p.grad = None
        ctx.step(opt, "vae")
        if self.averaged is not None:
            decay = self.ema_decay_at(step)
            for name in self._NETS:
                ema_update(self.averaged[name], getattr(self, name), decay)
        logs = {"loss": loss.detach() / n, "recon": terms["recon"].detach().mean(), "kl": terms["kl"].detach().mean()}
        if self.config.kl_warmup_steps > 0 or self.refits_encoder:
            logs["beta"] = torch.tensor(self.beta_at(step))
        return logs

    @torch.no_grad()
    def decode_latent(self, z: Tensor, labels=None) -> Tensor:
        return self.decode(z)  # sample() draws z ~ p(z): N(0, I), or the fitted mixture

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels=None, generator=None, batch_size: int = 2000) -> dict[str, float]:
        total = torch.zeros((), dtype=torch.float64, device=images.device)
        for i in range(0, images.shape[0], batch_size):
            x = as_float_images(images[i:i + batch_size])
            if self.config.binarize:  # stochastic binarization of the test set, seeded by `generator`
                x = torch.bernoulli(x, generator=generator)
            total += self.elbo(x, generator=generator).double().sum()
        return {"test_elbo": (total / images.shape[0]).item()}
