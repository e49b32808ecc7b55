"""genlab's presets: a named model with its settings, what it is and, in one line, why it is offered.

Each preset's training budget (epochs at its batch size) keeps it under 15 CPU-minutes on
Fashion-MNIST (60k 28x28 images) on the project's machines; the measurements behind the budgets and
settings (scores, minutes per epoch, the CPUs they were taken on) are in docs/presets.md, not here.
Register your own with ``genlab.models.register_preset`` (docs/extending.md).
"""
from .registry import register_preset

# -- the seed document's models: the baselines -----------------------------------------------
register_preset(
    "seed-vae", "mlp-vae",
    "the seed's VAE: MLP 784-512-256-64, BCE(sum) + KL, Adam 1e-3, batch 128, 10 epochs",
    why="the seed document's VAE as written: the reference every other model is measured against",
    model_config={}, train={"epochs": 10, "batch_size": 128},
)
register_preset(
    "seed-gan", "mlp-gan",
    "the seed's MLP GAN (z-h-h-x / x-h-h-1), non-saturating loss, Adam 1e-3 b1=0.5, batch 128",
    why="the seed document's GAN: the baseline the convolutional GANs have to beat",
    model_config={}, train={"epochs": 20, "batch_size": 128},
)

# -- GANs ------------------------------------------------------------------------------------
register_preset(
    "dcgan", "conv-gan",
    "DCGAN (Radford et al. 2016): non-saturating loss, BatchNorm in G and D, Adam 2e-4 b=(0.5, 0.999), "
    "batch 64, samples from an EMA of G (decay 0.999)",
    why="the standard convolutional GAN; batch 64 (the paper: 128) gives G twice the updates in the same CPU time",
    model_config={"loss": "non-saturating", "ema_decay": 0.999},
    train={"epochs": 9, "batch_size": 64},
)
register_preset(
    "wgan-gp", "conv-gan",
    "WGAN-GP (Gulrajani et al. 2017): Wasserstein loss + gradient penalty 10, no BatchNorm in the critic, "
    "Adam b=(0.5, 0.9); 2 critic steps per G step at lr 2e-4 (the paper: 5 at 1e-4) and an EMA of G, "
    "so that G gets enough updates in a CPU budget",
    why="a critic loss that does not saturate; the paper's 5 critic steps at 1e-4 leave G too few updates on a CPU",
    model_config={"loss": "wasserstein", "gp_weight": 10.0, "n_critic": 2, "d_batchnorm": False,
                  "lr": 2e-4, "beta1": 0.5, "beta2": 0.9, "ema_decay": 0.999},
    train={"epochs": 6, "batch_size": 64},
)
register_preset(
    "sngan", "conv-gan",
    "SNGAN (Miyato et al. 2018): hinge loss, spectral normalization in D, DCGAN nets, Adam 2e-4 b=(0.5, 0.999)",
    why="spectral normalization keeps D Lipschitz without the gradient penalty's second backward pass",
    model_config={"loss": "hinge", "spectral_norm": True, "d_batchnorm": False},
    train={"epochs": 5, "batch_size": 64},
)
register_preset(
    "cgan", "conv-gan",
    "class-conditional DCGAN: one-hot label into G, projection discriminator (Miyato & Koyama 2018), "
    "hinge loss + spectral norm, EMA of G",
    why="samples of a chosen class from a GAN (sample --label / --per-class)",
    model_config={"conditional": True, "loss": "hinge", "spectral_norm": True, "d_batchnorm": False,
                  "ema_decay": 0.999},
    train={"epochs": 5, "batch_size": 64},
)

# -- VAEs ------------------------------------------------------------------------------------
register_preset(
    "conv-vae", "conv-vae",
    "convolutional VAE, Bernoulli decoder, z 32, Adam 1e-3, batch 128",
    why="the convolutional counterpart of seed-vae: the baseline of the convolutional VAEs",
    model_config={"likelihood": "bernoulli", "z_dim": 32},
    train={"epochs": 30, "batch_size": 128},
)
register_preset(
    "vae-gmm", "conv-vae",
    "conv VAE with KL weight 0.25 (sharper decoder) and a 20-component Gaussian-mixture prior fitted to "
    "the aggregate posterior every epoch (ex-post density estimation, Ghosh et al. 2020), z 32",
    why="a KL weight below 1 sharpens the decoder; a prior fitted to the codes then samples where the codes are",
    model_config={"z_dim": 32, "beta": 0.25, "prior": "gmm", "prior_components": 20},
    train={"epochs": 30, "batch_size": 128},
)
register_preset(
    "mlp-vae-gmm", "mlp-vae",
    "the seed's MLP VAE made wider (784-1024-512-32), KL weight 0.35 and a 20-component Gaussian-mixture "
    "prior fitted to the aggregate posterior every epoch; bf16 autocast where the device has it natively "
    "(AVX-512 BF16/AMX CPUs, Ampere and later GPUs), fp32 elsewhere; batch 128",
    why="sharper samples than seed-vae in the same CPU time at the same likelihood; precision auto, as emulated "
        "bf16 is slower than fp32",
    model_config={"hidden": (1024, 512), "z_dim": 32, "beta": 0.35, "prior": "gmm", "prior_components": 20},
    train={"epochs": 50, "batch_size": 128, "precision": "auto"},
)
register_preset(
    "mlp-vae-mog", "mlp-vae",
    "the seed's MLP VAE (784-512-256-32) with a 100-component Gaussian-mixture prior trained with it (Tomczak & "
    "Welling 2018), KL weight 0.2 warmed up over 5000 steps, the learning rate decayed linearly to 0 over the "
    "budget, whose last 4 % refit the encoder alone on the true ELBO (Cremer et al. 2018); bf16 where the device "
    "has it natively, else fp32",
    why="about half seed-vae's FID and a better likelihood: the low KL weight sharpens the decoder, the final encoder "
        "refit takes the likelihood cost back",
    model_config={"hidden": (512, 256), "z_dim": 32, "beta": 0.2, "prior": "mog", "prior_components": 100,
                  "kl_warmup_steps": 5000, "encoder_refit_fraction": 0.04},
    train={"epochs": 100, "batch_size": 128, "precision": "auto", "lr_schedule": "linear"},
)
register_preset(
    "beta-vae", "conv-vae",
    "beta-VAE (Higgins et al. 2017): beta 4, KL weight warmed up linearly over the first 2000 steps, z 10",
    why="disentangled latent dimensions for traversals (genlab traverse); the warm-up lets the decoder learn first",
    model_config={"beta": 4.0, "kl_warmup_steps": 2000, "z_dim": 10},
    train={"epochs": 30, "batch_size": 128},
)
register_preset(
    "cvae", "conv-vae",
    "conditional VAE (Sohn et al. 2015): the label into encoder and decoder, Bernoulli decoder, z 32",
    why="samples of a chosen class from a VAE (sample --label / --per-class)",
    model_config={"conditional": True, "z_dim": 32},
    train={"epochs": 30, "batch_size": 128},
)
register_preset(
    "iwae", "conv-vae",
    "IWAE (Burda et al. 2015): the importance-weighted bound with k = 5 samples, Bernoulli decoder, z 32",
    why="trains on a tighter bound than the ELBO, for a better likelihood (IWAE NLL); k = 5 costs about 4x an epoch",
    model_config={"iwae_k": 5, "z_dim": 32},
    train={"epochs": 8, "batch_size": 128},
)

# -- hybrids ---------------------------------------------------------------------------------
register_preset(
    "vae-gan", "vae-gan",
    "VAE-GAN (Larsen et al. 2016): reconstruction in D's feature space + KL + GAN, three optimizers",
    why="reconstruction judged in a discriminator's features instead of per pixel, for sharper images, with an encoder",
    model_config={},
    train={"epochs": 5, "batch_size": 64},
)
