"""The seed document's variational autoencoder (Kingma & Welling 2014), as an MLP.

encoder  x -> h1 -> h2 -> (mu, logvar)         (the seed's fc1, fc2, fc31, fc32)
sample   z = mu + sigma * eps                   (reparameterization, losses.reparameterize)
decoder  z -> h2 -> h1 -> logits -> sigmoid     (the seed's fc4, fc5, fc6)
loss     BCE(sum) + KL = -ELBO                  (the seed's section 4.2)

Everything beyond the networks - the KL weight and its warm-up, the priors, IWAE training, the
likelihoods, conditioning, dynamic binarization, the moving average and the encoder refit - is
the VAE base class's (``vae_base.py``) and works the same for the convolutional VAE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import GenlabError
from ..nets import MLPDecoder, MLPEncoder
from .vae_base import VAE, VAEConfig


@dataclass
class MLPVAEConfig(VAEConfig):
    """Hyper-parameters of the MLP VAE. The defaults are the seed's: 784-512-256-64, Adam 1e-3."""

    z_dim: int = 64
    hidden: tuple[int, ...] = (512, 256)  # the encoder's hidden widths (and the decoder's, reversed, by default)
    decoder_hidden: tuple[int, ...] | None = None  # the decoder's own widths, from z outwards; None = reversed(hidden)
    activation: str = "relu"


class MLPVAE(VAE):
    """A VAE with fully connected encoder and decoder (Bernoulli decoder likelihood by default)."""

    batch_reduction: ClassVar[str] = "sum"  # the seed sums over the batch (reduction='sum')
    eval_batch_size: ClassVar[int] = 2000

    def build_encoder(self) -> MLPEncoder:
        if not self.config.hidden or any(int(w) < 1 for w in self.config.hidden):
            raise GenlabError(f"hidden must list at least one positive width; got {self.config.hidden}.")
        return MLPEncoder(self.image_shape, self.config.hidden, self.config.activation)

    def build_decoder(self, in_dim: int, out_channels: int) -> MLPDecoder:
        c = self.config
        widths = list(reversed(c.hidden)) if c.decoder_hidden is None else list(c.decoder_hidden)
        if not widths or any(int(w) < 1 for w in widths):
            raise GenlabError(f"decoder_hidden must list at least one positive width; got {c.decoder_hidden}.")
        return MLPDecoder(in_dim, out_channels, self.image_shape, widths, c.activation)
