"""Registrations of the model zoo (convolutional VAEs and GANs, conditional models, hybrids).

Default epochs keep each preset under 15 CPU-minutes on Fashion-MNIST (60k 28x28 images). The
minutes per epoch in the comments were measured on one thread of the 2-core development machine
(20 steps at the preset's batch size; the Trainer's own runs agreed within 10%); they are starting
points for tuning with the evaluator, not tuned budgets.
"""
from .conv_vae import ConvVAE, ConvVAEConfig
from .dcgan import DCGAN, DCGANConfig
from .registry import register_model, register_preset
from .vaegan import VAEGAN, VAEGANConfig

register_model("conv-gan", DCGAN, DCGANConfig,
               "convolutional GAN (DCGAN nets) with a choice of loss, spectral norm, GP/R1, EMA, conditioning")
register_model("conv-vae", ConvVAE, ConvVAEConfig,
               "convolutional VAE: bernoulli/gaussian/logistic decoder, beta + KL warm-up, IWAE, conditional, GMM prior")
register_model("vae-gan", VAEGAN, VAEGANConfig,
               "VAE-GAN (Larsen et al. 2016): reconstruction in a discriminator's feature space")

# -- GANs ------------------------------------------------------------------------------------
register_preset(
    "dcgan", "conv-gan",
    "DCGAN (Radford et al. 2016): non-saturating loss, BatchNorm in G and D, Adam 2e-4 b=(0.5, 0.999), "
    "batch 64, samples from an EMA of G (decay 0.999)",
    model_config={"loss": "non-saturating", "ema_decay": 0.999},
    # batch 64 (the paper: 128): twice the updates in the same CPU time. On Fashion-MNIST, 9 epochs
    # reach FID 10.25 / recall 0.68 (seed 0) and 10.29 / 0.71 (seed 1), under the zoo's line of 10.39;
    # they take 8.4 min on a Zen 5 EPYC, 12 min on a Zen 4 EPYC and 13.9 min on a Xeon of the project
    # (11 epochs: FID 9.23, but 16.9 min on that Xeon).
    train={"epochs": 9, "batch_size": 64},
)
register_preset(
    "wgan-gp", "conv-gan",
    "WGAN-GP (Gulrajani et al. 2017): Wasserstein loss + gradient penalty 10, no BatchNorm in the critic, "
    "Adam b=(0.5, 0.9); 2 critic steps per G step at lr 2e-4 (the paper: 5 at 1e-4) and an EMA of G, "
    "so that G gets enough updates in a CPU budget",
    model_config={"loss": "wasserstein", "gp_weight": 10.0, "n_critic": 2, "d_batchnorm": False,
                  "lr": 2e-4, "beta1": 0.5, "beta2": 0.9, "ema_decay": 0.999},
    # 5 critic steps at lr 1e-4 left G ~940 updates in 5 epochs: FID 29.93, grey blocks, 8 classes;
    # these settings: FID 17.25, recall 0.36, 10 classes after 6 epochs (55 s each, 5.9 min) on Fashion-MNIST
    train={"epochs": 6, "batch_size": 64},
)
register_preset(
    "sngan", "conv-gan",
    "SNGAN (Miyato et al. 2018): hinge loss, spectral normalization in D, DCGAN nets, Adam 2e-4 b=(0.5, 0.999)",
    model_config={"loss": "hinge", "spectral_norm": True, "d_batchnorm": False},
    train={"epochs": 5, "batch_size": 64},  # 2.3 min/epoch
)
register_preset(
    "cgan", "conv-gan",
    "class-conditional DCGAN: one-hot label into G, projection discriminator (Miyato & Koyama 2018), "
    "hinge loss + spectral norm, EMA of G",
    model_config={"conditional": True, "loss": "hinge", "spectral_norm": True, "d_batchnorm": False,
                  "ema_decay": 0.999},
    train={"epochs": 5, "batch_size": 64},  # 2.4 min/epoch
)

# -- VAEs ------------------------------------------------------------------------------------
register_preset(
    "conv-vae", "conv-vae",
    "convolutional VAE, Bernoulli decoder, z 32, Adam 1e-3, batch 128",
    model_config={"likelihood": "bernoulli", "z_dim": 32},
    train={"epochs": 30, "batch_size": 128},  # 0.37 min/epoch
)
register_preset(
    "vae-gmm", "conv-vae",
    "conv VAE with KL weight 0.25 (sharper decoder) and a 20-component Gaussian-mixture prior fitted to "
    "the aggregate posterior every epoch (ex-post density estimation, Ghosh et al. 2020), z 32",
    model_config={"z_dim": 32, "beta": 0.25, "prior": "gmm", "prior_components": 20},
    train={"epochs": 30, "batch_size": 128},  # 0.42 min/epoch with the mixture fits
)
register_preset(
    "mlp-vae-gmm", "mlp-vae",
    "the seed's MLP VAE made wider (784-1024-512-32), KL weight 0.35 and a 20-component Gaussian-mixture "
    "prior fitted to the aggregate posterior every epoch; bf16 autocast where the device has it natively "
    "(AVX-512 BF16/AMX CPUs, Ampere and later GPUs), fp32 elsewhere; batch 128",
    model_config={"hidden": (1024, 512), "z_dim": 32, "beta": 0.35, "prior": "gmm", "prior_components": 20},
    # on the 2-core CPU after 10 min (116 epochs): FID 6.50 and IWAE NLL 235.67 against seed-vae's 13.01 and
    # 236.0 after the same 10 min; with KL weight 0.25: FID 6.29 but NLL 236.6 (docs/gallery.md)
    # precision "auto": emulated bf16 is ~20x slower than fp32 on CPUs without AVX-512 BF16 (a Zen 3 EPYC:
    # 210 against 4,150 img/s)
    # 115 epochs took 10 min in bf16 on the Zen 4/5 EPYCs but would take 32 min in fp32 on a Zen 3 EPYC (16.8 s
    # an epoch with the fits): 50 epochs keep it under 15 min there (FID 8.13 after 50 epochs on the Zen 5)
    train={"epochs": 50, "batch_size": 128, "precision": "auto"},
)
register_preset(
    "mlp-vae-mog", "mlp-vae",
    "the seed's MLP VAE (784-512-256-32) with a 100-component Gaussian-mixture prior trained with it (Tomczak & "
    "Welling 2018), KL weight 0.2 warmed up over 5000 steps, the learning rate decayed linearly to 0 over the "
    "budget, whose last 4 % refit the encoder alone on the true ELBO (Cremer et al. 2018); bf16 where the device "
    "has it natively, else fp32",
    model_config={"hidden": (512, 256), "z_dim": 32, "beta": 0.2, "prior": "mog", "prior_components": 100,
                  "kl_warmup_steps": 5000, "encoder_refit_fraction": 0.04},
    # 100 epochs: 14 min at the 7,170 img/s of a Zen 3 EPYC in fp32 (the slowest CPU measured for it). A KL
    # weight below 1 sharpens the decoder (FID 7.35 at 0.25 vs 8.12 at 0.35 after 10 min, stop 12) at a cost in
    # likelihood that the encoder refit of the last 4 % of the budget takes back: the refit fits the proposal
    # of the IWAE estimate to the true ELBO without changing p(z) or p(x|z), so not a sample (docs/gallery.md)
    # 14 min against seed-vae on a Zen 2 (stops 15-16), seeds 0 and 1: at KL weight 0.25 FID 6.27 vs 13.21 and
    # 6.76 vs 12.28 (ratio 0.55 missed the 0.5); at 0.2 FID 6.15 vs 13.21 and 6.06 vs 12.28, IWAE NLL
    # 234.4 vs 236.0 and 234.4 vs 235.8
    train={"epochs": 100, "batch_size": 128, "precision": "auto", "lr_schedule": "linear"},
)
register_preset(
    "beta-vae", "conv-vae",
    "beta-VAE (Higgins et al. 2017): beta 4, KL weight warmed up linearly over the first 2000 steps, z 10",
    model_config={"beta": 4.0, "kl_warmup_steps": 2000, "z_dim": 10},
    train={"epochs": 30, "batch_size": 128},  # 0.37 min/epoch
)
register_preset(
    "cvae", "conv-vae",
    "conditional VAE (Sohn et al. 2015): the label into encoder and decoder, Bernoulli decoder, z 32",
    model_config={"conditional": True, "z_dim": 32},
    train={"epochs": 30, "batch_size": 128},  # 0.38 min/epoch
)
register_preset(
    "iwae", "conv-vae",
    "IWAE (Burda et al. 2015): the importance-weighted bound with k = 5 samples, Bernoulli decoder, z 32",
    model_config={"iwae_k": 5, "z_dim": 32},
    train={"epochs": 8, "batch_size": 128},  # 1.56 min/epoch
)

# -- hybrids ---------------------------------------------------------------------------------
register_preset(
    "vae-gan", "vae-gan",
    "VAE-GAN (Larsen et al. 2016): reconstruction in D's feature space + KL + GAN, three optimizers",
    model_config={},
    train={"epochs": 5, "batch_size": 64},  # 2.35 min/epoch
)
