"""genlab's models by name: the seed's MLP VAE and GAN, and the zoo of convolutional VAEs and GANs,
conditional models and hybrids. Their presets are in ``models/presets.py``."""
from .conv_vae import ConvVAE, ConvVAEConfig
from .dcgan import DCGAN, DCGANConfig
from .gan import MLPGAN, MLPGANConfig
from .registry import register_model
from .vae import MLPVAE, MLPVAEConfig
from .vaegan import VAEGAN, VAEGANConfig

register_model("mlp-vae", MLPVAE, MLPVAEConfig, "VAE with MLP encoder/decoder (Bernoulli likelihood by default)")
register_model("mlp-gan", MLPGAN, MLPGANConfig, "GAN with MLP generator and discriminator")
register_model("conv-gan", DCGAN, DCGANConfig,
               "convolutional GAN (DCGAN nets) with a choice of loss, spectral norm, GP/R1, EMA, conditioning")
register_model("conv-vae", ConvVAE, ConvVAEConfig,
               "convolutional VAE: bernoulli/gaussian/logistic decoder, beta + KL warm-up, IWAE, conditional, GMM prior")
register_model("vae-gan", VAEGAN, VAEGANConfig,
               "VAE-GAN (Larsen et al. 2016): reconstruction in a discriminator's feature space")
