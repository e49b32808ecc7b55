"""The VAE base class: every feature defined through encode and log_px_given_z works the same
whatever the networks - here on both the MLP and the convolutional VAE, each on the architecture
it was not first written for - and a new architecture is two builders."""
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from genlab.errors import GenlabError
from genlab.models import Batch, build_model
from genlab.models.vae_base import VAE, VAEConfig

SHAPE = (1, 8, 8)
SMALL = {"mlp-vae": {"hidden": [32, 16]}, "conv-vae": {"width": 4}}
ARCHS = list(SMALL)


def _vae(arch: str, num_classes: int = 0, **overrides):
    torch.manual_seed(0)
    return build_model(arch, {"z_dim": 4, **SMALL[arch], **overrides}, SHAPE, num_classes)


def _batch(n: int = 8, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(n, *SHAPE, generator=gen), torch.arange(n) % 10)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_the_moving_average_is_kept_and_used_in_eval_mode(arch):
    model = _vae(arch, ema_decay=0.9)
    assert model.ema_decay_at(0) == pytest.approx(0.1) and model.ema_decay_at(10_000) == 0.9
    opts = model.configure_optimizers()
    averaged = {id(p) for p in model.averaged.parameters()}
    assert not any(id(p) in averaged for g in opts["vae"].param_groups for p in g["params"])  # never trained
    for step in range(3):
        model.train_step(_batch(seed=step), step, opts)
    x = _batch().images
    online = model.encode(x)[0]
    model.eval()
    mu_avg = model.encode(x)[0]
    assert not torch.allclose(online, mu_avg)
    h = model.averaged["encoder"](x)
    torch.testing.assert_close(mu_avg, model.averaged["mu_head"](h))


@pytest.mark.parametrize("arch", ARCHS)
def test_dynamic_binarization_trains_on_fresh_draws_and_evaluates_on_a_seeded_one(arch):
    model = _vae(arch, binarize=True)
    seen = []
    original = model.loss_terms

    def spy(x, labels=None, noise=None, beta=None):
        seen.append(x.clone())
        return original(x, labels, noise, beta)

    model.loss_terms = spy
    grey = torch.full((64, *SHAPE), 0.3)
    opts = model.configure_optimizers()
    model.train_step(Batch(grey), 0, opts)
    model.train_step(Batch(grey), 1, opts)
    a, b = seen
    assert set(a.unique().tolist()) == {0.0, 1.0} and abs(a.mean().item() - 0.3) < 0.05
    assert not torch.equal(a, b)
    model.eval()
    images = (grey[:16] * 255).to(torch.uint8)
    one = model.evaluate(images, generator=torch.Generator().manual_seed(0))
    assert one == model.evaluate(images, generator=torch.Generator().manual_seed(0))
    assert one != model.evaluate(images, generator=torch.Generator().manual_seed(1))  # another binarization


@pytest.mark.parametrize("arch", ARCHS)
def test_the_encoder_refit_trains_the_encoder_alone_on_the_true_elbo(arch):
    model = _vae(arch, beta=0.2, encoder_refit_from_step=2)
    opts = model.configure_optimizers()
    model.train_step(_batch(seed=0), 0, opts)
    decoder, encoder = _state(model.decoder), _state(model.encoder)
    logs = model.train_step(_batch(seed=1), 2, opts)
    assert logs["beta"].item() == 1.0
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in decoder.items())  # samples unchanged
    assert any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder.items())


def test_the_encoder_refit_is_refused_where_it_would_change_the_samples():
    with pytest.raises(GenlabError, match="BatchNorm"):
        _vae("conv-vae", batchnorm=True, encoder_refit_fraction=0.1)
    with pytest.raises(GenlabError, match="ema_decay"):
        _vae("mlp-vae", ema_decay=0.9, encoder_refit_from_step=5)


@pytest.mark.parametrize("arch", ARCHS)
def test_iwae_training_maximises_the_importance_weighted_bound(arch):
    model = _vae(arch, iwae_k=3)
    x, noise = _batch().images, torch.randn(1, 8, 4)
    with torch.no_grad():  # k = 1: the one-sample ELBO for the same noise
        mu, logvar = model.encode(x)
        z = mu + noise[0] * (0.5 * logvar).exp()
        q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
        p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
        torch.testing.assert_close(model.iwae_bound(x, noise=noise), model.log_px_given_z(x, z) + p - q,
                                   atol=1e-3, rtol=1e-5)
    logs = model.train_step(_batch(), 0, model.configure_optimizers())
    assert set(logs) == {"iwae_bound", "loss"}
    assert logs["loss"].item() == pytest.approx(-logs["iwae_bound"].item(), rel=1e-6)  # per image, both reductions


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("likelihood", [{"likelihood": "gaussian"}, {"likelihood": "gaussian", "gaussian_std": 0.1},
                                        {"likelihood": "logistic"}])
def test_every_decoder_likelihood_trains_and_evaluates(arch, likelihood):
    model = _vae(arch, **likelihood)
    assert model.decoder_output(torch.zeros(2, 4)).shape == (2, model.maps, 8, 8)
    opts = model.configure_optimizers()
    images = (_batch().images * 255).round().to(torch.uint8)
    for step in range(2):
        logs = model.train_step(Batch(images.float() / 255), step, opts)
        assert all(torch.isfinite(v) for v in logs.values())
    model.eval()
    out = model.evaluate(images, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(out["test_elbo"])
    if likelihood["likelihood"] == "logistic":
        assert out["test_bits_per_dim"] == pytest.approx(-out["test_elbo"] / (64 * math.log(2)))
        with pytest.raises(GenlabError, match="log_px_given_z"):
            model.decode_logits(torch.zeros(2, 4))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_conditional_vae_reads_the_label_in_both_networks(arch):
    model = _vae(arch, num_classes=10, conditional=True)
    assert model.conditional and model.mu_head.in_features == model.encoder.out_features + 10
    batch = _batch()
    logs = model.train_step(batch, 0, model.configure_optimizers())
    assert all(torch.isfinite(v) for v in logs.values())
    z = torch.zeros(2, 4)
    assert not torch.equal(model.decode(z, torch.tensor([0, 0])), model.decode(z, torch.tensor([0, 1])))
    assert model.sample(10).shape == (10, *SHAPE)  # cycles through the classes
    with pytest.raises(GenlabError, match="label"):
        model.encode(batch.images)
    with pytest.raises(GenlabError, match="labelled"):
        _vae(arch, num_classes=0, conditional=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_settings_that_cannot_work_are_refused_by_name(arch):
    for bad, word in (({"likelihood": "poisson"}, "likelihood"), ({"iwae_k": 0}, "iwae_k"),
                      ({"ema_decay": 1.0}, "ema_decay"), ({"gaussian_std": -1.0}, "gaussian_std"),
                      ({"encoder_refit_fraction": 1.0}, "encoder_refit_fraction")):
        with pytest.raises(GenlabError, match=word):
            _vae(arch, **bad)


def test_a_new_architecture_is_its_two_networks():
    @dataclass
    class LinearVAEConfig(VAEConfig):
        pass

    class Flat(nn.Linear):
        def forward(self, x):
            return super().forward(x.flatten(1))

    class Unflat(nn.Linear):
        def forward(self, z):
            return super().forward(z).view(z.shape[0], -1, 8, 8)

    class LinearVAE(VAE):
        def build_encoder(self):
            return Flat(self.x_dim, 16)  # nn.Linear already has out_features

        def build_decoder(self, in_dim, out_channels):
            return Unflat(in_dim, out_channels * 64)

    torch.manual_seed(0)
    model = LinearVAE(LinearVAEConfig(z_dim=3, iwae_k=2, likelihood="logistic"), SHAPE)
    logs = model.train_step(_batch(), 0, model.configure_optimizers())
    assert torch.isfinite(logs["loss"])
    model.eval()
    assert model.sample(4).shape == (4, *SHAPE) and model.reconstruct(_batch().images).shape == (8, *SHAPE)
    assert "test_bits_per_dim" in model.evaluate((_batch().images * 255).to(torch.uint8))
