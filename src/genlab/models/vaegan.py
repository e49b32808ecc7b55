"""VAE-GAN (Larsen et al. 2016): a VAE whose reconstruction error is measured in a
discriminator's feature space, and whose decoder is also a GAN generator.

encoder        x -> strided convs -> (mu, logvar)                          q(z|x)
decoder = G    z -> linear -> transposed convs -> sigmoid                  x~ = Dec(z), x_p = Dec(z_p)
discriminator  x -> strided convs -> Dis_l(x) (the last conv layer) -> logit
losses         L_prior  = KL(q(z|x) || p(z))                                 (their eq. 3)
               L_llike  = -E_q[log N(Dis_l(x) | Dis_l(x~), I)]
                        = 1/2 ||Dis_l(x) - Dis_l(x~)||^2 + const             (their eqs. 5-6)
               L_GAN    = log Dis(x) + log(1 - Dis(x~)) + log(1 - Dis(x_p))   (their section 2.2:
                          samples from the prior as fakes beside the reconstructions)
updates        (their Algorithm 1) encoder: L_prior + L_llike; decoder: gamma * L_llike - L_GAN;
               discriminator: -L_GAN. Each network receives only its own loss's gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nets import ConvDecoder, ConvDiscriminator, ConvEncoder, dcgan_init
from ..nets.augment import DiffAugment
from . import losses
from .base import Batch, GenerativeModel, adam, as_float_images


@dataclass
class VAEGANConfig:
    """Hyper-parameters of the VAE-GAN. gamma weighs content (the feature-space reconstruction)
    against style (the GAN loss) in the decoder's update."""

    z_dim: int = 64
    width: int = 32  # channels at full resolution; doubled at each halving (capped at 8x)
    gamma: float = 1e-2  # decoder loss = gamma * L_llike + generator loss
    beta: float = 1.0  # weight of L_prior in the encoder's loss
    loss: str = "non-saturating"  # the adversarial loss pair (losses.GAN_LOSSES); the paper's is "minimax"
    spectral_norm: bool = False
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    # DiffAugment (Zhao et al. 2020) policy of D's inputs in L_GAN, real and fake: a comma-separated subset
    # of color, translation, cutout (nets/augment.py); "" = off. L_llike compares un-augmented features.
    augment: str = ""


class VAEGAN(GenerativeModel):
    """Encoder, decoder/generator and discriminator trained with three optimizers (Larsen et al. 2016)."""

    family = "vae"
    encodes = True  # q(z|x); no pixel likelihood (its reconstruction error is in the discriminator's features)

    def __init__(self, config: VAEGANConfig, image_shape, num_classes: int = 0):
        super().__init__(config, image_shape, num_classes)
        c = config
        self.loss = losses.gan_loss(c.loss)
        self.augment = DiffAugment(c.augment)
        self.encoder = ConvEncoder(self.image_shape, c.width)
        self.mu_head = nn.Linear(self.encoder.out_features, c.z_dim)
        self.logvar_head = nn.Linear(self.encoder.out_features, c.z_dim)
        self.decoder = dcgan_init(ConvDecoder(c.z_dim, self.image_shape[0], self.image_shape, c.width))
        self.discriminator = ConvDiscriminator(self.image_shape, c.width, spectral_norm=c.spectral_norm, init=False)

    # -- the VAE's own interface -------------------------------------------------------------
    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z|x) = N(mu, diag(exp(logvar)))."""
        h = self.encoder(x)
        return self.mu_head(h), self.logvar_head(h)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Dec(z): images in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        mu, _ = self.encode(x)
        return self.decode(mu)

    # -- the common interface ----------------------------------------------------------------
    def _encoder_parameters(self):
        return [*self.encoder.parameters(), *self.mu_head.parameters(), *self.logvar_head.parameters()]

    def configure_optimizers(self):
        c = self.config
        betas = (c.beta1, c.beta2)
        return {
            "enc": adam(self._encoder_parameters(), lr=c.lr, betas=betas),
            "dec": adam(self.decoder.parameters(), lr=c.lr, betas=betas),
            "d": adam(self.discriminator.parameters(), lr=c.lr, betas=betas),
        }

    def train_step(self, batch: Batch, step: int, optimizers) -> dict[str, Tensor]:
        c = self.config
        ctx = self.step_context
        x = batch.images
        n = x.shape[0]
        eps = ctx.randn(n, c.z_dim, device=x.device)
        z_p = ctx.randn(n, c.z_dim, device=x.device)
        with ctx.autocast():
            mu, logvar = self.encode(x)
            x_tilde = self.decode(losses.reparameterize(mu, logvar, eps))  # x~ = Dec(z), z ~ q(z|x)
            x_p = self.decode(z_p)  # x_p = Dec(z_p), z_p ~ p(z)
            # Discriminator: ascend L_GAN on x vs both kinds of fakes (one pass; no BatchNorm in D), each
            # batch through the augmentation when there is one (its own draws per batch and image).
            d_inputs = [x, x_tilde.detach(), x_p.detach()]
            if self.augment:
                d_inputs = [self.augment(t, ctx) for t in d_inputs]
            logits = self.discriminator(torch.cat(d_inputs)).float()
        d_loss = self.loss.d_loss(logits[:n], logits[n:])
        opt_d = optimizers["d"]
        opt_d.zero_grad(set_to_none=True)
        ctx.backward(d_loss, "d")
        ctx.step(opt_d, "d")
        # Encoder and decoder through the frozen, updated discriminator: one pass gives Dis_l of
        # x, x~ and x_p, and the logits of the fakes from the same features.
        self.discriminator.requires_grad_(False)
        with ctx.autocast():
            if self.augment:  # L_llike on the images as they are; L_GAN on augmented fakes, G's gradient through it
                f_real, f_tilde = self.discriminator.features(torch.cat([x, x_tilde])).split([n, n])
                fake_logits = self.discriminator(torch.cat([self.augment(x_tilde, ctx), self.augment(x_p, ctx)]))
            else:
                f_real, f_tilde, f_prior = self.discriminator.features(torch.cat([x, x_tilde, x_p])).split([n, n, n])
                fake_logits = self.discriminator.head(torch.cat([f_tilde, f_prior]))
        f_real, f_tilde = losses.fp32(f_real), losses.fp32(f_tilde)
        llike = 0.5 * (f_tilde - f_real.detach()).pow(2).sum(1).mean()  # L_llike^{Dis_l}, eqs. 5-6
        prior = losses.gaussian_kl(mu, logvar).mean()  # L_prior, eq. 3
        g_loss = self.loss.g_loss(fake_logits)  # the decoder's L_GAN
        enc_params, dec_params = self._encoder_parameters(), list(self.decoder.parameters())
        # each network gets only its own loss's gradient (Algorithm 1), so take the terms apart
        # (one loss scale, "vae", for the encoder's and the decoder's terms alike):
        g_llike = torch.autograd.grad(ctx.scale(llike, "vae"), enc_params + dec_params, retain_graph=True)
        g_prior = torch.autograd.grad(ctx.scale(prior, "vae"), enc_params, retain_graph=True)
        g_gan = torch.autograd.grad(ctx.scale(g_loss, "vae"), dec_params)  # stops at the decoder: never reaches the encoder
        ne = len(enc_params)
        for p, gl, gp in zip(enc_params, g_llike[:ne], g_prior):
            p.grad = gl + c.beta * gp  # encoder: beta * L_prior + L_llike
        for p, gl, gg in zip(dec_params, g_llike[ne:], g_gan):
            p.grad = c.gamma * gl + gg  # decoder: gamma * L_llike - L_GAN (as a generator loss)
        ctx.step(optimizers["enc"], "vae")
        ctx.step(optimizers["dec"], "vae")
        self.discriminator.requires_grad_(True)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "llike": llike.detach(),
                "kl": prior.detach()}

    @torch.no_grad()
    def decode_latent(self, z: Tensor, labels=None) -> Tensor:
        return self.decode(z)  # Dec(z); sample() draws z ~ N(0, I)

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels=None, generator=None, batch_size: int = 1000) -> dict[str, float]:
        """Mean squared pixel error of the reconstructions (the model has no pixel likelihood)."""
        total = torch.zeros((), dtype=torch.float64, device=images.device)
        for i in range(0, images.shape[0], batch_size):
            x = as_float_images(images[i:i + batch_size])
            total += (self.reconstruct(x) - x).pow(2).flatten(1).mean(1).double().sum()
        return {"test_recon_mse": (total / images.shape[0]).item()}
