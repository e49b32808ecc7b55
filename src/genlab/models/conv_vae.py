"""Convolutional VAEs (Kingma & Welling 2014) with the variants practitioners reach for.

encoder    x -> strided convs -> features (+ onehot(y)) -> (mu, logvar)      q(z | x [, y])
decoder    z (+ onehot(y)) -> linear -> transposed convs -> distribution parameters per pixel

The networks are DCGAN's discriminator body and generator (``nets.ConvEncoder`` /
``ConvDecoder``), sized from (C, H, W), with optional BatchNorm. The objective and its variants
(likelihoods, beta and its warm-up, IWAE, conditioning, the priors, binarization, the moving
average, the encoder refit) are the VAE base class's (``vae_base.py``), shared with the MLP VAE.

Beside the common interface, a VAE offers encode, decode, reconstruct, elbo and
``log_px_given_z(x, z, labels=None)`` -> log p(x|z) per image: with encode it is all an
importance-weighted log-likelihood estimator needs (log p(x) ~ L_k for large k).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..nets import ConvDecoder, ConvEncoder
from .priors import PRIORS  # noqa: F401  (re-exported)
from .vae_base import DECODER_MAPS, LOG_SCALE_MIN, LOGVAR_MIN, VAE, VAEConfig  # noqa: F401  (re-exported)


@dataclass
class ConvVAEConfig(VAEConfig):
    """Hyper-parameters of the convolutional VAE (defaults: the "conv-vae" preset)."""

    width: int = 32  # channels at full resolution; doubled at each halving (capped at 8x)
    batchnorm: bool = False  # BatchNorm in both networks (makes log p(x|z) depend on the mode)


class ConvVAE(VAE):
    """A VAE with convolutional encoder and decoder, sized from (C, H, W)."""

    def build_encoder(self) -> ConvEncoder:
        return ConvEncoder(self.image_shape, self.config.width, self.config.batchnorm)

    def build_decoder(self, in_dim: int, out_channels: int) -> ConvDecoder:
        return ConvDecoder(in_dim, out_channels, self.image_shape, self.config.width, self.config.batchnorm)
