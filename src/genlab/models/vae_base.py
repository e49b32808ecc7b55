"""The variational autoencoder (Kingma & Welling 2014), whatever its networks.

encoder    x -> features (+ onehot(y)) -> (mu, logvar)                      q(z | x [, y])
decoder    z (+ onehot(y)) -> distribution parameters per pixel               p(x | z [, y])
likelihood by name: "bernoulli" (logits), "gaussian" (learned per-pixel or fixed variance),
           "logistic" (discretized logistic on the 256 pixel values, Salimans et al. 2017)
objective  -ELBO = E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z)), beta warmed up linearly from 0
           (beta-VAE: Higgins et al. 2017; warm-up: Bowman et al. 2016, Sønderby et al. 2016);
           or with iwae_k > 1 the importance-weighted bound of Burda et al. 2015.
conditional  label y into both networks (Sohn et al. 2015, the CVAE).
prior      "normal" N(0, I), "gmm" fitted to the encoded training set, "mog" trained with the
           model (``priors.py``).
options    ``binarize``: dynamic binarization, a fresh x ~ Bernoulli(pixel) every step (the
           binarized-MNIST protocol of the IWAE literature); ``ema_decay``: an exponential moving
           average of every network (Polyak & Juditsky 1992), used in eval mode (sampling, encoding,
           likelihoods, the prior's fit); ``encoder_refit_from_step`` / ``encoder_refit_fraction``:
           a last phase that trains only the encoder, on the true ELBO, so that a model trained with
           a KL weight below 1 gets a proposal fit for its likelihood estimate (the amortisation gap,
           Cremer et al. 2018) while its samples stay exactly as they were; declared as data
           (``phases()``, ``models/phases.py``), which ``train_step`` reads.

``VAE`` owns everything defined through ``encode`` and ``log_px_given_z``: the loss terms, the
ELBO, the IWAE bound, reconstruction, evaluation, the training step and sampling. An architecture
subclasses it with its config and two builders: ``build_encoder()``, a module from images
(B, C, H, W) to flat features (B, ``out_features``), and ``build_decoder(in_dim, out_channels)``,
a module from (B, in_dim) to (B, out_channels, H, W) unbounded maps (``nets.MLPEncoder`` /
``MLPDecoder``, ``nets.ConvEncoder`` / ``ConvDecoder``). The posterior heads, the prior and the
moving average are the base class's, created in that order after the two networks.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import GenlabError
from ..nets import ema_update, has_batchnorm, one_hot, require_labels, warmed_up_ema_decay
from . import losses
from .base import Batch, GenerativeModel, adam, as_float_images, randn
from .phases import Phase, drop_frozen_grads
from .priors import LatentPriorMixin, check_prior

LOGVAR_MIN = -9.0  # a learned Gaussian variance below (1/90)^2 would let the density grow without bound
LOG_SCALE_MIN = -7.0  # the logistic's scale floor (well below one pixel bin, 1/255)
DECODER_MAPS = {"bernoulli": 1, "gaussian": 2, "logistic": 2}  # output maps per image channel


@dataclass
class VAEConfig:
    """The hyper-parameters every VAE has, whatever its networks (an architecture's config adds its own)."""

    z_dim: int = 32
    likelihood: str = "bernoulli"  # "bernoulli", "gaussian" or "logistic"
    gaussian_std: float = 0.0  # fixed sigma of the Gaussian decoder; 0 = learned per pixel
    beta: float = 1.0  # weight of the KL term; 1 is the true ELBO (beta-VAE: > 1)
    kl_warmup_steps: int = 0  # beta rises linearly from 0 over this many steps (Sønderby et al. 2016); 0 = none
    iwae_k: int = 1  # importance samples of the training bound; 1 = the ELBO
    conditional: bool = False  # the CVAE: q(z | x, y) and p(x | z, y)
    binarize: bool = False  # dynamic binarization: train on x ~ Bernoulli(pixel), a fresh draw every step
    prior: str = "normal"  # "normal" (N(0, I)), "gmm" (a mixture fitted to the encoded training set) or
    # "mog" (a mixture of diagonal Gaussians trained with the model, Tomczak & Welling 2018)
    prior_components: int = 10  # mixture components of prior="gmm" (10 in Ghosh et al. 2020) or "mog"
    prior_fit_images: int = 20_000  # training images encoded for each fit (a seeded subset)
    prior_fit_every: int = 1  # epochs between fits (the last epoch and a stop always fit); sampling-only cost
    ema_decay: float = 0.0  # EMA of the weights, used in eval mode (sampling, likelihoods, prior fit); 0 = off
    encoder_refit_from_step: int = 0  # from this training step on, only the encoder trains, on the true ELBO
    # (KL weight 1), decoder and prior frozen: a tighter proposal for the likelihood, the samples unchanged; 0 = off
    encoder_refit_fraction: float = 0.0  # the same phase over the last this fraction of the training budget
    # (steps, epochs or --max-minutes, whichever ends the run: the Trainer's budget progress); 0 = off
    lr: float = 1e-3


class VAE(LatentPriorMixin, GenerativeModel):
    """A VAE with the networks its subclass builds (``build_encoder``, ``build_decoder``)."""

    family = "vae"
    encodes = True
    # how the training loss reduces over the batch: "sum" (the seed's BCE(sum) + KL) or "mean"
    batch_reduction: ClassVar[str] = "mean"
    eval_batch_size: ClassVar[int] = 1000  # images per forward pass of ``evaluate``
    _NETS = ("encoder", "mu_head", "logvar_head", "decoder")  # what the moving average keeps

    def __init__(self, config: VAEConfig, image_shape, num_classes: int = 0):
        super().__init__(config, image_shape, num_classes)
        c = config
        self._check_config(num_classes)
        self.label_dim = num_classes if c.conditional else 0
        self.maps = 1 if c.likelihood == "gaussian" and c.gaussian_std > 0 else DECODER_MAPS[c.likelihood]
        self.encoder = self.build_encoder()
        self.mu_head = nn.Linear(self.encoder.out_features + self.label_dim, c.z_dim)
        self.logvar_head = nn.Linear(self.encoder.out_features + self.label_dim, c.z_dim)
        self.decoder = self.build_decoder(c.z_dim + self.label_dim, self.maps * self.image_shape[0])
        self.prior = self.make_prior(c.z_dim)
        if self.refits_encoder and has_batchnorm(self.decoder):
            raise GenlabError("encoder_refit_from_step / encoder_refit_fraction keep the samples as they were by "
                              "freezing the decoder, but the decoder's BatchNorm statistics would keep moving: use "
                              "it without batchnorm.")
        self.averaged = None  # the moving average of the four networks, by name (ema_decay > 0)
        if c.ema_decay > 0:
            self.averaged = nn.ModuleDict({name: copy.deepcopy(getattr(self, name)) for name in self._NETS})
            self.averaged.requires_grad_(False)

    # -- what an architecture provides -------------------------------------------------------
    def build_encoder(self) -> nn.Module:
        """Images (B, C, H, W) in [0, 1] -> features (B, out_features); the module has ``out_features``."""
        raise NotImplementedError

    def build_decoder(self, in_dim: int, out_channels: int) -> nn.Module:
        """(B, in_dim) -> (B, out_channels, H, W) unbounded maps (logits, then scales for two-map likelihoods)."""
        raise NotImplementedError

    def _check_config(self, num_classes: int) -> None:
        """A clear error for settings that cannot work, before any network is built."""
        c = self.config
        if c.likelihood not in DECODER_MAPS:
            raise GenlabError(f"unknown likelihood {c.likelihood!r}; choose one of: {', '.join(DECODER_MAPS)}")
        if c.gaussian_std < 0:
            raise GenlabError(f"gaussian_std is the fixed sigma of the Gaussian decoder (0 = learned); got "
                              f"{c.gaussian_std}.")
        if c.conditional and num_classes < 2:
            raise GenlabError("a conditional VAE needs a labelled dataset (at least 2 classes); this one has "
                              f"{num_classes}. Set conditional=false, or use labelled data.")
        if c.iwae_k < 1:
            raise GenlabError(f"iwae_k must be at least 1, got {c.iwae_k}.")
        if not 0.0 <= c.ema_decay < 1.0:
            raise GenlabError(f"ema_decay is the moving average's decay, in [0, 1) (0 = off); got {c.ema_decay}.")
        check_prior(c.prior, c.prior_components, c.prior_fit_images, c.conditional, c.prior_fit_every)
        if c.encoder_refit_from_step < 0:
            raise GenlabError(f"encoder_refit_from_step is a training step (0 = off); got {c.encoder_refit_from_step}.")
        if not 0.0 <= c.encoder_refit_fraction < 1.0:
            raise GenlabError("encoder_refit_fraction is the last fraction of the training budget given to the encoder "
                              f"refit, in [0, 1) (0 = off); got {c.encoder_refit_fraction}.")
        if self.refits_encoder and (c.prior == "gmm" or c.ema_decay > 0):
            raise GenlabError("encoder_refit_from_step / encoder_refit_fraction keep the samples as they were by "
                              "freezing decoder and prior, but prior=gmm is refitted to the encoder's codes and "
                              "ema_decay keeps averaging the decoder: use it with prior=normal or prior=mog and "
                              "ema_decay=0.")

    # -- the networks --------------------------------------------------------------------------
    def _net(self, name: str) -> nn.Module:
        """The network ``name``: its moving average in eval mode when one is kept, else the trained one."""
        if self.averaged is not None and not self.training:
            return self.averaged[name]
        return getattr(self, name)

    def ema_decay_at(self, step: int) -> float:
        """The decay of the moving average's update at training step ``step`` (0-based), warmed up
        (``nets.warmed_up_ema_decay``)."""
        return warmed_up_ema_decay(self.config.ema_decay, step)

    def _with_labels(self, h: Tensor, labels: Tensor | None) -> Tensor:
        if not self.label_dim:
            return h
        return torch.cat([h, one_hot(require_labels(labels, "this VAE"), self.label_dim)], dim=1)

    # -- the VAE's own interface -------------------------------------------------------------
    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z | x [, y]) = N(mu, diag(exp(logvar))) for images x in [0, 1]."""
        h = self._with_labels(self._net("encoder")(x), labels)
        return self._net("mu_head")(h), self._net("logvar_head")(h)

    def decoder_output(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The decoder's raw maps (B, maps * C, H, W): logits of the mean first, then scales."""
        return self._net("decoder")(self._with_labels(z, labels))

    def decode_logits(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Bernoulli logits of p(x|z); other likelihoods: use log_px_given_z."""
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
        out = losses.fp32(out)  # the likelihood in float32 under mixed precision
        if c.likelihood == "bernoulli":
            return losses.bernoulli_nll(out, x)
        ch = self.image_shape[0]
        mean = torch.sigmoid(out[:, :ch])
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

    @property
    def decoder_likelihood(self) -> str:
        """The config's ``likelihood``: the p(x|z) that ``log_px_given_z`` evaluates."""
        return self.config.likelihood

    @property
    def refits_encoder(self) -> bool:
        """Whether training ends with the encoder refit (``encoder_refit_from_step`` or ``encoder_refit_fraction``)."""
        return self.config.encoder_refit_from_step > 0 or self.config.encoder_refit_fraction > 0

    def phases(self) -> tuple[Phase, ...]:
        """The encoder refit, where the config asks for it: from ``encoder_refit_from_step`` or the last
        ``encoder_refit_fraction`` of the budget, whichever comes first, decoder and prior frozen and the KL
        weight 1 (Cremer et al. 2018, the amortisation gap: p(z) and p(x|z), the model that is sampled and
        whose likelihood is reported, stay as they are while q(z|x) fits the true ELBO)."""
        if not self.refits_encoder:
            return ()
        cfg = self.config
        return (Phase("encoder-refit",
                      from_step=cfg.encoder_refit_from_step if cfg.encoder_refit_from_step > 0 else None,
                      from_progress=1.0 - cfg.encoder_refit_fraction if cfg.encoder_refit_fraction > 0 else None,
                      frozen=("decoder", "prior"), beta=1.0),)

    def beta_at(self, step: int) -> float:
        """The KL weight of training step ``step``: the phase's in a phase that sets one (the encoder refit:
        1, the true ELBO), else ``beta`` warmed up over ``kl_warmup_steps`` (losses.warmed_up_beta)."""
        return self._beta_in(self.phase_at(step), step)

    def _beta_in(self, phase: Phase | None, step: int) -> float:
        """``beta_at`` for a step whose phase (or None) is already known."""
        if phase is not None and phase.beta is not None:
            return phase.beta
        return losses.warmed_up_beta(self.config.beta, self.config.kl_warmup_steps, step)

    def loss_terms(self, x: Tensor, labels: Tensor | None = None, noise: Tensor | None = None,
                   beta: float | None = None) -> dict[str, Tensor]:
        """Per-image reconstruction NLL, KL (analytic for N(0, I), one-sample for prior="mog") and negative
        (beta-)ELBO, one sample of z (``noise``: its standard-normal draw); ``beta``: the config's."""
        mu, logvar = self.encode(x, labels)
        z = losses.reparameterize(mu, logvar, noise)  # z = mu + sigma * eps  (K&W 2014, eq. 10)
        recon = -self.log_px_given_z(x, z, labels)
        kl = self.kl_to_prior(z, mu, logvar)  # K&W 2014, appendix B, for N(0, I)
        b = self.config.beta if beta is None else beta
        return {"recon": recon, "kl": kl, "neg_elbo": losses.negative_elbo(recon, kl, b)}

    def importance_terms(self, x: Tensor, labels: Tensor | None = None, noise: Tensor | None = None, k: int = 1,
                         posterior: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The three log densities of the importance weights at z_i = mu + sigma * eps_i ~ q(z|x):
        (log p(x|z_i), log p(z_i), log q(z_i|x)), each of shape (k, B), in nats.

        ``noise`` (k, B, z_dim) fixes the draws eps_i (else k fresh ones); ``posterior`` = (mu, logvar)
        of x when it is encoded already. The one place the IWAE objective, the ELBO and the evaluation's
        likelihoods get their terms from; log p(z) is the prior the model samples from.
        """
        mu, logvar = self.encode(x, labels) if posterior is None else posterior
        if noise is None:
            noise = torch.randn(k, *mu.shape, device=mu.device)
        k = noise.shape[0]
        z = losses.reparameterize(mu, logvar, noise)  # (k, B, z_dim)
        flat_labels = None if labels is None else labels.repeat(k)
        log_px = self.log_px_given_z(x.repeat(k, 1, 1, 1), z.flatten(0, 1), flat_labels).view(k, -1)
        return log_px, self.log_prior(z), losses.log_normal(z, mu, logvar)

    def log_weights(self, x: Tensor, labels: Tensor | None = None, noise: Tensor | None = None,
                    k: int = 1, beta: float = 1.0) -> Tensor:
        """log w_i = log p(x|z_i) + beta * (log p(z_i) - log q(z_i|x)), z_i ~ q(z|x), shape (k, B).

        ``noise`` (k, B, z_dim) fixes the draws. beta = 1 gives the importance weights of Burda
        et al. 2015; other values scale the prior-to-posterior ratio the way beta scales the KL.
        """
        log_px, log_pz, log_qz = self.importance_terms(x, labels, noise, k)
        return log_px + beta * (log_pz - log_qz)

    def iwae_bound(self, x: Tensor, labels: Tensor | None = None, k: int = 1, noise: Tensor | None = None,
                   beta: float = 1.0) -> Tensor:
        """L_k = log (1/k) sum_i w_i per image (Burda et al. 2015, eq. 8); k = 1: the ELBO with a
        one-sample (Monte Carlo) KL."""
        return losses.iwae_bound(self.log_weights(x, labels, noise, k, beta))

    @torch.no_grad()
    def elbo(self, x: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Single-sample ELBO estimate per image, in nats: log p(x|z) - KL(q(z|x) || p(z)), a lower bound
        on log p(x) under the prior the model samples from (the KL as ``Prior.elbo_kl`` gives it)."""
        mu, logvar = self.encode(x, labels)
        noise = randn((1, *mu.shape), generator, mu.device)
        log_px, log_pz, log_qz = self.importance_terms(x, labels, noise, posterior=(mu, logvar))
        return (log_px - self.elbo_kl(mu, logvar, log_qz, log_pz))[0]

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode the posterior mean: the model's reconstruction of x, in [0, 1]."""
        mu, _ = self.encode(x, labels)
        return self.decode(mu, labels)

    # -- the common interface ----------------------------------------------------------------
    def configure_optimizers(self):
        return {"vae": adam([p for p in self.parameters() if p.requires_grad], lr=self.config.lr)}

    def _reduce(self, per_image: Tensor) -> Tensor:
        return per_image.sum() if self.batch_reduction == "sum" else per_image.mean()

    def train_step(self, batch: Batch, step: int, optimizers) -> dict[str, Tensor]:
        ctx = self.step_context
        c = self.config
        x, labels = batch.images, batch.labels if self.label_dim else None
        n = x.shape[0]
        if c.binarize:  # the binarized-MNIST protocol of the IWAE literature
            x = ctx.bernoulli(x)
        phase = self.phase_at(step)
        beta = self._beta_in(phase, step)
        parts: dict[str, Tensor] = {}  # the objective's parts, logged after the loss
        if c.iwae_k > 1:  # maximise L_k (Burda et al. 2015, eq. 8)
            noise = ctx.randn(c.iwae_k, n, c.z_dim, device=x.device, batch_dim=1)
            with ctx.autocast():
                bound = self.iwae_bound(x, labels, noise=noise, beta=beta)
            loss = -self._reduce(bound)
            parts["iwae_bound"] = bound.detach().mean()
        else:  # minimise -ELBO = recon + beta * KL
            noise = ctx.randn(n, c.z_dim, device=x.device)  # the reparameterization's noise
            with ctx.autocast():
                terms = self.loss_terms(x, labels, noise=noise, beta=beta)
            loss = self._reduce(terms["neg_elbo"])
            parts.update(recon=terms["recon"].detach().mean(), kl=terms["kl"].detach().mean())
        opt = optimizers["vae"]
        opt.zero_grad(set_to_none=True)
        ctx.backward(loss, "vae", reduction=self.batch_reduction)
        drop_frozen_grads(self, phase)  # the encoder refit's decoder and prior
        ctx.step(opt, "vae")
        if self.averaged is not None:
            decay = self.ema_decay_at(step)
            for name in self._NETS:
                ema_update(self.averaged[name], getattr(self, name), decay)
        logs = {"loss": loss.detach() / n if self.batch_reduction == "sum" else loss.detach(), **parts}  # per image
        if c.kl_warmup_steps > 0 or self.refits_encoder:  # the KL weight varies: log it
            logs["beta"] = torch.tensor(beta, device=x.device)
        return logs

    @torch.no_grad()
    def decode_latent(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The decoder's mean image at z (sample() draws z from the prior: N(0, I), or the mixture)."""
        return self.decode(z, labels if self.label_dim else None)

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None,
                 batch_size: int | None = None) -> dict[str, float]:
        """Test ELBO per image (nats); with the discrete logistic likelihood also bits/dim,
        -ELBO / (C * H * W * log 2), an upper bound on the model's true bits/dim. With ``binarize``
        the test images are binarized stochastically, seeded by ``generator``."""
        batch_size = batch_size or self.eval_batch_size
        total = torch.zeros((), dtype=torch.float64, device=images.device)
        for i in range(0, images.shape[0], batch_size):
            x = as_float_images(images[i:i + batch_size])
            if self.config.binarize:
                x = torch.bernoulli(x, generator=generator)
            y = labels[i:i + batch_size] if self.label_dim and labels is not None else None
            total += self.elbo(x, y, generator).double().sum()
        elbo = (total / images.shape[0]).item()
        out = {"test_elbo": elbo}
        if self.config.likelihood == "logistic":
            out["test_bits_per_dim"] = -elbo / (self.x_dim * math.log(2.0))
        return out
