"""The seed document's GAN (Goodfellow et al. 2014) with MLP generator and discriminator.

generator      z -> h -> h -> x, ReLU, sigmoid output (images in [0, 1])
discriminator  x -> h -> h -> 1 logit; D(x) = sigmoid(logit) is the seed's probability
training       the seed's steps 2a-2f: a discriminator step on real and generated images,
               then a generator step through the frozen discriminator (``train_step``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..nets import mlp
from ..nets.augment import DiffAugment
from . import losses
from .base import Batch, GenerativeModel, adam


@dataclass
class MLPGANConfig:
    """Hyper-parameters of the MLP GAN.

    Defaults are chosen to give varied samples (measurements in docs/seed-presets.md): the
    non-saturating generator loss (the minimax one starves G of gradient early on), Adam with
    beta1 = 0.5 (Radford et al. 2016) and lr 1e-3 (with 2e-4 this small MLP GAN had not left
    its collapsed start after 10 Fashion-MNIST epochs; with 1e-3 it covers the classes), and
    LeakyReLU in the discriminator so that its gradient reaches every input.
    """

    z_dim: int = 100
    hidden: int = 256
    g_activation: str = "relu"
    d_activation: str = "leaky_relu"
    loss: str = "non-saturating"  # the (D, G) loss pair of models.losses.GAN_LOSSES; "minimax" is eq. 1 of the seed
    lr: float = 1e-3
    beta1: float = 0.5
    beta2: float = 0.999
    # DiffAugment (Zhao et al. 2020) policy of D's inputs, real and fake: a comma-separated subset of
    # color, translation, cutout (nets/augment.py); "" = off
    augment: str = ""


class MLPGAN(GenerativeModel):
    family = "gan"

    def __init__(self, config: MLPGANConfig, image_shape, num_classes: int = 0):
        super().__init__(config, image_shape, num_classes)
        h = config.hidden
        self.generator = mlp([config.z_dim, h, h, self.x_dim], config.g_activation)
        self.discriminator = mlp([self.x_dim, h, h, 1], config.d_activation)
        self.loss = losses.gan_loss(config.loss)
        self.augment = DiffAugment(config.augment)

    def generate(self, z: Tensor) -> Tensor:
        """G(z): images in [0, 1]."""
        return torch.sigmoid(self.generator(z)).view(-1, *self.image_shape)

    def discriminate(self, x: Tensor) -> Tensor:
        """Logit of D(x), the probability that x is real."""
        return self.discriminator(x.flatten(1)).squeeze(1)

    def configure_optimizers(self):
        c = self.config
        betas = (c.beta1, c.beta2)
        return {
            "d": adam(self.discriminator.parameters(), lr=c.lr, betas=betas),
            "g": adam(self.generator.parameters(), lr=c.lr, betas=betas),
        }

    def train_step(self, batch: Batch, step: int, optimizers) -> dict[str, Tensor]:
        ctx = self.step_context
        real = batch.images
        n = real.shape[0]
        opt_d, opt_g = optimizers["d"], optimizers["g"]
        # 2a) noise -> a batch of fakes; 2b) D scores real and fake; 2c) update D only.
        z = ctx.randn(n, self.config.z_dim, device=real.device)
        with ctx.autocast():
            fake = self.generate(z).detach()
            if self.augment:  # D sees real and fake through the same random augmentation (their own draws)
                real, fake = self.augment(real, ctx), self.augment(fake, ctx)
            # one pass over real and fake together: the same D(x) per image, one larger matmul
            real_logits, fake_logits = self.discriminate(torch.cat([real, fake])).float().split([n, n])
        d_loss = self.loss.d_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        ctx.backward(d_loss, "d")
        ctx.step(opt_d, "d")
        # 2d) freeze D, generate again; 2e) the frozen D scores them; 2f) update G only.
        self.discriminator.requires_grad_(False)
        z = ctx.randn(n, self.config.z_dim, device=real.device)
        with ctx.autocast():
            fake = self.generate(z)
            if self.augment:  # G's gradient flows back through the augmentation
                fake = self.augment(fake, ctx)
            fake_logits_g = self.discriminate(fake).float()
        g_loss = self.loss.g_loss(fake_logits_g)
        opt_g.zero_grad(set_to_none=True)
        ctx.backward(g_loss, "g")
        ctx.step(opt_g, "g")
        self.discriminator.requires_grad_(True)
        with torch.no_grad():
            d_real = torch.sigmoid(real_logits).mean()
            d_fake = torch.sigmoid(fake_logits).mean()
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "d_real": d_real, "d_fake": d_fake}

    @torch.no_grad()
    def decode_latent(self, z: Tensor, labels=None) -> Tensor:
        return self.generate(z)
