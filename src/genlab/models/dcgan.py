"""Convolutional GANs: DCGAN (Radford et al. 2016) and its well-known training variants.

generator      z (+ onehot(y)) -> linear -> base grid -> transposed convs x2 each -> sigmoid
discriminator  strided convs /2 each -> features phi(x) -> logit (+ <embed(y), phi(x)>, the
               projection discriminator of Miyato & Koyama 2018, when conditional)
losses         by name from ``losses.GAN_LOSSES``: non-saturating (DCGAN), least-squares (LSGAN),
               wasserstein + gradient penalty (WGAN-GP), hinge + spectral norm (SNGAN)
regularisers   gradient penalty (Gulrajani et al. 2017), R1 (Mescheder et al. 2018),
               spectral normalization of D (Miyato et al. 2018)
training       the seed's alternation: D step(s) on real and fake, then a G step through the
               frozen D every ``n_critic`` steps; optionally an EMA of G's weights for sampling
               (Yazici et al. 2019; Karras et al. 2018).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import GenlabError
from ..nets import (
    ConvDecoder,
    ConvDiscriminator,
    dcgan_init,
    ema_update,
    has_batchnorm,
    one_hot,
    require_labels,
)
from ..nets.augment import DiffAugment
from ..nets.ema import warmed_up_ema_decay
from . import losses
from .base import Batch, GenerativeModel, adam

PROBABILITY_LOSSES = ("minimax", "non-saturating")  # losses whose D output is a logit of D(x)


@dataclass
class DCGANConfig:
    """Hyper-parameters of the convolutional GAN. The defaults are DCGAN's (Radford et al. 2016):
    z of 100 dimensions, Adam 2e-4 with beta1 = 0.5, BatchNorm in both networks."""

    z_dim: int = 100
    width: int = 64  # channels at full resolution; doubled at each halving (capped at 8x)
    upsample: str = "transposed"  # G's x2 steps: "transposed" (DCGAN) or "nearest" (+ 3x3 conv)
    loss: str = "non-saturating"  # a name in losses.GAN_LOSSES
    d_batchnorm: bool = True  # DCGAN's D; must be off with spectral_norm, gp_weight or r1_gamma
    spectral_norm: bool = False  # spectral normalization of every D weight (SNGAN)
    gp_weight: float = 0.0  # lambda of the WGAN-GP gradient penalty (10 in the paper); 0 = off
    r1_gamma: float = 0.0  # gamma of the R1 penalty on real data; 0 = off
    n_critic: int = 1  # discriminator steps per generator step (5 for WGAN-GP)
    lr: float = 2e-4
    d_lr: float = 0.0  # the discriminator's learning rate; 0 = same as lr
    beta1: float = 0.5
    beta2: float = 0.999
    ema_decay: float = 0.0  # EMA of the generator's weights, used by sample(); 0 = off
    conditional: bool = False  # class-conditional G (one-hot input) and projection D
    # DiffAugment (Zhao et al. 2020) policy of D's inputs, real and fake: a comma-separated subset of
    # color, translation, cutout (nets/augment.py); "" = off
    augment: str = ""


class DCGAN(GenerativeModel):
    """A GAN with DCGAN's convolutional generator and discriminator, sized from (C, H, W)."""

    family = "gan"

    def __init__(self, config: DCGANConfig, image_shape, num_classes: int = 0):
        super().__init__(config, image_shape, num_classes)
        c = config
        if c.conditional and num_classes < 2:
            raise GenlabError("a conditional GAN needs a labelled dataset (at least 2 classes); this one has "
                              f"{num_classes}. Use an unconditional preset (dcgan, sngan) or labelled data.")
        if c.d_batchnorm and (c.gp_weight > 0 or c.r1_gamma > 0 or c.spectral_norm):
            raise GenlabError("set d_batchnorm to false with gp_weight, r1_gamma or spectral_norm: the penalties "
                              "are per image and BatchNorm mixes the images of a batch; spectral normalization "
                              "replaces it.")
        if c.n_critic < 1:
            raise GenlabError(f"n_critic must be at least 1, got {c.n_critic}.")
        self.loss = losses.gan_loss(c.loss)
        self.augment = DiffAugment(c.augment)
        self.label_dim = num_classes if c.conditional else 0
        self.generator = dcgan_init(ConvDecoder(c.z_dim + self.label_dim, self.image_shape[0], self.image_shape,
                                                c.width, batchnorm=True, upsample=c.upsample))
        self.discriminator = ConvDiscriminator(self.image_shape, c.width, self.label_dim, c.d_batchnorm,
                                               c.spectral_norm)
        self.generator_ema = None
        if c.ema_decay > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        # the generator loss of the latest G step, logged on the D-only steps too (checkpointed, so a
        # resumed run logs what an uninterrupted one would)
        self.register_buffer("last_g_loss", torch.zeros(()))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.generator_ema is not None:  # only ever sampled from: BatchNorm uses its copied statistics
            self.generator_ema.eval()
        return self

    # -- the GAN's own interface -------------------------------------------------------------
    def generate(self, z: Tensor, labels: Tensor | None = None, ema: bool = False) -> Tensor:
        """G(z, y): images in [0, 1] (the EMA generator when ``ema`` and one is kept)."""
        if self.label_dim:
            z = torch.cat([z, one_hot(labels, self.label_dim)], dim=1)
        net = self.generator_ema if ema and self.generator_ema is not None else self.generator
        return torch.sigmoid(net(z))

    def discriminate(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """D's output per image: a logit of D(x) for the minimax losses, a score otherwise."""
        return self.discriminator(x, labels if self.label_dim else None)

    def ema_decay_at(self, step: int) -> float:
        """The EMA decay after ``step`` (:func:`~genlab.nets.ema.warmed_up_ema_decay`), counted in
        generator updates."""
        return warmed_up_ema_decay(self.config.ema_decay, (step + 1) // self.config.n_critic)

    # -- the common interface ----------------------------------------------------------------
    def configure_optimizers(self):
        c = self.config
        betas = (c.beta1, c.beta2)
        return {
            "d": adam(self.discriminator.parameters(), lr=c.d_lr or c.lr, betas=betas),
            "g": adam(self.generator.parameters(), lr=c.lr, betas=betas),
        }

    def _real_and_fake_logits(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        n = real.shape[0]
        if has_batchnorm(self.discriminator):  # separate batches, so BatchNorm never mixes real and fake
            return self.discriminate(real, labels), self.discriminate(fake, labels)
        both = self.discriminate(torch.cat([real, fake]), None if labels is None else torch.cat([labels, labels]))
        return both.split([n, n])

    def train_step(self, batch: Batch, step: int, optimizers) -> dict[str, Tensor]:
        c = self.config
        ctx = self.step_context
        real = batch.images
        labels = require_labels(batch.labels, "this GAN") if self.label_dim else None
        n = real.shape[0]
        opt_d, opt_g = optimizers["d"], optimizers["g"]
        # D step: score real and generated images, update D only.
        z = ctx.randn(n, c.z_dim, device=real.device)
        if c.r1_gamma > 0:
            real = real.detach().requires_grad_(True)  # R1 differentiates D(x) with respect to x
        real_images = real
        with ctx.autocast():
            fake = self.generate(z, labels).detach()
            if self.augment:  # D sees real and fake through the same random augmentation (their own draws)
                # R1's gradient is then taken through it, with respect to the un-augmented real images
                # (as DiffAugment and ADA do); the gradient penalty interpolates the augmented images
                real, fake = self.augment(real, ctx), self.augment(fake, ctx)
            real_logits, fake_logits = (t.float() for t in self._real_and_fake_logits(real, fake, labels))
        d_loss = self.loss.d_loss(real_logits, fake_logits)
        logs: dict[str, Tensor] = {}
        if c.gp_weight > 0:  # lambda * E[(||grad D(x_hat)|| - 1)^2]  (Gulrajani et al. 2017, eq. 3)
            eps = ctx.rand(n, device=real.device)
            gp = losses.gradient_penalty(lambda x: self.discriminate(x, labels), real, fake, eps)  # in fp32
            d_loss = d_loss + c.gp_weight * gp
            logs["gp"] = gp.detach()
        if c.r1_gamma > 0:  # gamma / 2 * E[||grad_x D(x)||^2]  (Mescheder et al. 2018, eq. 9)
            if ctx.precision == "fp32":
                r1 = losses.r1_penalty(real_logits, real_images)
            else:  # the penalty in fp32: D(x) again, outside autocast, for its gradient with respect to x
                r1 = losses.r1_penalty(losses.in_fp32(lambda x: self.discriminate(x, labels), real), real_images)
            d_loss = d_loss + 0.5 * c.r1_gamma * r1
            logs["r1"] = r1.detach()
        opt_d.zero_grad(set_to_none=True)
        ctx.backward(d_loss, "d")
        ctx.step(opt_d, "d")
        # G step every n_critic-th step: generate again, score with the frozen D, update G only.
        if (step + 1) % c.n_critic == 0:
            self.discriminator.requires_grad_(False)
            z = ctx.randn(n, c.z_dim, device=real.device)
            with ctx.autocast():
                fake = self.generate(z, labels)
                if self.augment:  # G's gradient flows back through the augmentation
                    fake = self.augment(fake, ctx)
                fake_scores = self.discriminate(fake, labels).float()
            g_loss = self.loss.g_loss(fake_scores)
            opt_g.zero_grad(set_to_none=True)
            ctx.backward(g_loss, "g")
            ctx.step(opt_g, "g")
            self.discriminator.requires_grad_(True)
            if self.generator_ema is not None:
                ema_update(self.generator_ema, self.generator, self.ema_decay_at(step))
            self.last_g_loss.copy_(g_loss.detach())
        with torch.no_grad():
            to_stat = torch.sigmoid if c.loss in PROBABILITY_LOSSES else (lambda t: t)
            logs.update(d_loss=d_loss.detach(), g_loss=self.last_g_loss.clone(),
                        d_real=to_stat(real_logits.detach()).mean(), d_fake=to_stat(fake_logits.detach()).mean())
        return logs

    @torch.no_grad()
    def decode_latent(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """G(z, y) of the EMA generator if kept (else G)."""
        return self.generate(z, labels.to(self.device) if labels is not None else None, ema=True)
