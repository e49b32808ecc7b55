"""The seed's two models behind genlab's one interface."""
import pytest
import torch

from genlab.errors import GenlabError
from genlab.models import MODELS, PRESETS, Batch, build_model, register_model, register_preset, resolve
from genlab.models.vae import MLPVAE, MLPVAEConfig


def test_seed_vae_has_the_seed_documents_parameter_count_on_28x28():
    preset = resolve("seed-vae")
    model = build_model(preset.model, preset.model_config, (1, 28, 28))
    # fc1 784*512+512, fc2 512*256+256, fc31/fc32 2*(256*64+64), fc4 64*256+256, fc5 256*512+512, fc6 512*784+784
    assert model.parameter_count() == 1_116_560


def test_seed_vae_preset_uses_the_seed_hyperparameters():
    preset = resolve("seed-vae")
    model = build_model(preset.model, preset.model_config, (1, 28, 28))
    assert model.config.hidden == (512, 256) and model.config.z_dim == 64
    opt = model.configure_optimizers()["vae"]
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-3
    assert preset.train == {"epochs": 10, "batch_size": 128}


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", ["seed-vae", "seed-gan"])
def test_presets_train_and_sample_at_any_image_shape(name, shape):
    preset = resolve(name)
    model = build_model(preset.model, preset.model_config, shape)
    opts = model.configure_optimizers()
    before = [p.detach().clone() for p in model.parameters()]
    logs = model.train_step(Batch(torch.rand(16, *shape)), 0, opts)
    assert all(torch.isfinite(v) for v in logs.values())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every layer was updated
    x = model.sample(5)
    assert x.shape == (5, *shape) and x.min() >= 0 and x.max() <= 1


def test_gan_generator_step_leaves_the_discriminator_untouched():
    model = build_model("mlp-gan", {}, (1, 8, 8))
    opts = model.configure_optimizers()
    # run only the generator half by zeroing D's learning rate: D must not move, G must
    opts["d"].param_groups[0]["lr"] = 0.0
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    g_before = [p.detach().clone() for p in model.generator.parameters()]
    model.train_step(Batch(torch.rand(8, 1, 8, 8)), 0, opts)
    assert all(torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters()))
    assert all(p.requires_grad for p in model.discriminator.parameters())  # unfrozen again


def test_sampling_at_fixed_noise_is_repeatable_and_leaves_the_global_stream_alone():
    model = build_model("mlp-vae", {}, (1, 8, 8))
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = model.sample(4, generator=torch.Generator().manual_seed(3))
    b = model.sample(4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())


def test_vae_elbo_is_a_lower_bound_made_of_reconstruction_and_kl():
    model = build_model("mlp-vae", {}, (1, 8, 8))
    x = torch.rand(10, 1, 8, 8)
    terms = model.loss_terms(x, noise=torch.zeros(10, 64))
    assert torch.allclose(terms["neg_elbo"], terms["recon"] + terms["kl"])
    assert (terms["kl"] >= 0).all() and (terms["recon"] > 0).all()
    assert model.reconstruct(x).shape == x.shape


def test_unknown_names_and_settings_give_clear_errors():
    with pytest.raises(GenlabError, match="seed-vae"):
        resolve("seed-vea")
    with pytest.raises(GenlabError, match="z_dim"):
        build_model("mlp-vae", {"zdim": 3}, (1, 8, 8))


def test_users_register_their_own_model_without_editing_genlab():
    class TinyVAE(MLPVAE):
        """A two-dimensional latent space for plotting."""

    register_model("tiny-vae-test", TinyVAE, MLPVAEConfig)
    register_preset("tiny-vae-test-preset", "tiny-vae-test", "z=2", {"z_dim": 2, "hidden": [32]}, {"epochs": 1},
                    why="latents to plot")
    try:
        preset = resolve("tiny-vae-test-preset")
        assert preset.why == "latents to plot" and preset.train == {"epochs": 1}
        model = build_model(preset.model, preset.model_config, (1, 8, 8))
        assert isinstance(model, TinyVAE) and model.config.hidden == (32,) and model.config.z_dim == 2
        with pytest.raises(ValueError, match="one line"):  # measurements go in the docs, not in a preset
            register_preset("tiny-vae-test-preset", "tiny-vae-test", "z=2", why="FID 12.3 after 5 min\non a Zen 3")
    finally:
        MODELS.pop("tiny-vae-test"), PRESETS.pop("tiny-vae-test-preset")


def test_mlp_vae_decoder_can_be_sized_apart_from_the_encoder():
    model = build_model("mlp-vae", {"hidden": (256, 128), "decoder_hidden": (64, 300), "z_dim": 8}, (1, 28, 28))
    enc = [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)]
    dec = [m.out_features for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert enc == [256, 128] and dec == [64, 300, 784]
    assert model.decoder[0].in_features == 8
    default = build_model("mlp-vae", {"hidden": (256, 128), "z_dim": 8}, (1, 28, 28))
    assert [m.out_features for m in default.decoder if isinstance(m, torch.nn.Linear)] == [128, 256, 784]
    with pytest.raises(GenlabError, match="decoder_hidden"):
        build_model("mlp-vae", {"decoder_hidden": (64, 0)}, (1, 28, 28))


def test_every_model_has_its_own_default_step_context():
    """The plain fp32 context a model trains through outside the Trainer is its own: state set on one
    model's (here the budget progress that starts an encoder refit) never reaches another model."""
    from genlab.models.base import StepContext

    cfg = {"hidden": [32, 16], "z_dim": 4, "encoder_refit_fraction": 0.5}
    a, b = (build_model("mlp-vae", cfg, (1, 8, 8)) for _ in range(2))
    assert type(a.step_context) is StepContext and a.step_context is not b.step_context
    a.step_context.budget_progress = 0.9  # a is past half its budget: in its encoder-refit phase
    assert b.step_context.budget_progress == 0.0
    batch = Batch(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    moved = {}
    for name, model in (("a", a), ("b", b)):
        before = [p.detach().clone() for p in model.decoder.parameters()]
        model.train_step(batch, 0, model.configure_optimizers())
        moved[name] = any(not torch.equal(p, q) for p, q in zip(before, model.decoder.parameters()))
    assert moved == {"a": False, "b": True}  # only a refits its encoder alone; b trains as a whole
