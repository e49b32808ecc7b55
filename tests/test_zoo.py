"""The model zoo: convolutional GANs and VAEs sized for any image shape, behind genlab's one interface."""
import math

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from genlab.errors import GenlabError
from genlab.models import PRESETS, Batch, build_model, resolve
from genlab.models.conv_vae import ConvVAE
from genlab.models.dcgan import DCGAN
from genlab.nets import ConvDecoder, ConvDiscriminator, conv_plan

ZOO_PRESETS = ["dcgan", "wgan-gp", "sngan", "cgan", "conv-vae", "vae-gmm", "mlp-vae-gmm", "mlp-vae-mog", "beta-vae", "cvae", "iwae", "vae-gan"]
CONDITIONAL = {"cgan", "cvae"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _build(name, shape, num_classes=10, **overrides):
    preset = resolve(name)
    return build_model(preset.model, {**preset.model_config, **overrides}, shape, num_classes)


def _batch(shape, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))


# ----------------------------------------------------------------------------- nets

@pytest.mark.parametrize("size,stages,base", [(8, 1, 4), (28, 2, 7), (32, 3, 4), (64, 4, 4)])
def test_networks_are_sized_from_the_image_shape(size, stages, base):
    plan = conv_plan((3, size, size))
    assert (plan.stages, plan.base_h, plan.base_w) == (stages, base, base)
    g = ConvDecoder(10, 3, (3, size, size), width=8)
    d = ConvDiscriminator((3, size, size), width=8, num_classes=4)
    x = g(torch.randn(2, 10))
    assert x.shape == (2, 3, size, size)
    assert d(x, torch.tensor([0, 3])).shape == (2,)


def test_a_size_the_networks_cannot_build_says_which_sizes_work():
    with pytest.raises(GenlabError, match="--image-size") as err:
        build_model("conv-gan", {}, (1, 27, 27))
    assert "27x27" in str(err.value) and "28" in str(err.value)


def test_projection_discriminator_adds_the_inner_product_of_label_embedding_and_features():
    d = ConvDiscriminator((1, 8, 8), width=4, num_classes=3)
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 1, 0])
    phi = d.features(x)
    expected = d.head.psi(phi).squeeze(1) + (d.head.embed.weight[y] * phi).sum(1)  # psi(phi) + <embed(y), phi>
    assert torch.allclose(d(x, y), expected, atol=1e-6)
    assert not torch.allclose(d(x, y), d(x, (y + 1) % 3))  # the label matters


def test_spectral_norm_keeps_the_top_singular_value_of_every_weight_at_one():
    torch.manual_seed(0)
    model = _build("sngan", (1, 16, 16), width=8)
    opts = model.configure_optimizers()
    for step in range(5):
        model.train_step(_batch((1, 16, 16), seed=step), step, opts)
    d = model.discriminator
    with torch.no_grad():
        for _ in range(30):  # power iterations at the trained weights (one per training-mode forward)
            d(torch.rand(4, 1, 16, 16))
    d.eval()
    layers = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert len(layers) == 3  # 16 -> 8 -> 4: two convs, and psi (no embedding: unconditional)
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        raw = torch.linalg.matrix_norm(m.parametrizations.weight.original.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=1e-2)
        assert abs(raw - 1.0) > 0.05  # the normalization did something


# ----------------------------------------------------------------------------- every preset

def test_the_zoo_presets_are_registered_with_their_training_budgets():
    assert set(ZOO_PRESETS) <= set(PRESETS)
    for preset in PRESETS.values():  # each says in one line why it is offered (docs/presets.md prints it)
        assert preset.why and "\n" not in preset.why and preset.why != preset.description, preset.name
    for name in ZOO_PRESETS:
        train = PRESETS[name].train
        assert train["epochs"] >= 1 and train["batch_size"] in (64, 128)
    assert PRESETS["dcgan"].train["batch_size"] == 64 and PRESETS["dcgan"].model_config["ema_decay"] == 0.999
    assert PRESETS["dcgan"].train["epochs"] == 9  # fits 15 minutes on every project CPU measured (docs/gallery.md)
    wgan = PRESETS["wgan-gp"].model_config
    assert wgan["gp_weight"] == 10.0 and wgan["n_critic"] == 2 and wgan["ema_decay"] == 0.999
    assert PRESETS["mlp-vae-gmm"].train["precision"] == "auto" and PRESETS["mlp-vae-gmm"].model_config["prior"] == "gmm"


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", ZOO_PRESETS)
def test_presets_train_sample_and_survive_a_safetensors_round_trip(name, shape):
    torch.manual_seed(0)
    model = _build(name, shape)
    opts = model.configure_optimizers()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    for step in range(max(2, getattr(model.config, "n_critic", 1))):
        logs = model.train_step(_batch(shape, seed=step), step, opts)
        assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())
        assert all(torch.isfinite(v) for v in logs.values()), logs
    unchanged = [k for k, p in model.named_parameters() if torch.equal(before[k], p)]
    if model.config_dict().get("loss") in ("wasserstein", "hinge"):
        # a constant shift of the critic cancels in E[D(fake)] - E[D(real)], and in the hinge loss
        # while every score is inside the margins (as at the start): the output bias gets no gradient
        unchanged.remove("discriminator.head.psi.bias")
    assert unchanged == []  # every layer (EMA copy included) was updated
    model.eval()
    x = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (5, *shape) and x.min() >= 0 and x.max() <= 1
    # the whole state (weights, EMA copy, BatchNorm statistics, spectral-norm vectors) is one state_dict
    data = st_save({k: v.contiguous() for k, v in model.state_dict().items()})
    clone = _build(name, shape).eval()
    clone.load_state_dict(st_load(data), strict=True)
    assert torch.equal(clone.sample(5, generator=torch.Generator().manual_seed(1)), x)


@pytest.mark.parametrize("name", ["dcgan", "wgan-gp", "sngan", "conv-vae", "iwae", "vae-gan"])
def test_unconditional_presets_need_no_labels(name):
    model = _build(name, (1, 8, 8), num_classes=0, width=8)
    logs = model.train_step(Batch(torch.rand(4, 1, 8, 8)), 0, model.configure_optimizers())
    assert all(torch.isfinite(v) for v in logs.values())


@pytest.mark.parametrize("name", sorted(CONDITIONAL))
def test_conditional_presets_say_they_need_labels(name):
    with pytest.raises(GenlabError, match="labelled"):
        _build(name, (1, 8, 8), num_classes=0)
    model = _build(name, (1, 8, 8), width=8)
    with pytest.raises(GenlabError, match="labels"):
        model.train_step(Batch(torch.rand(4, 1, 8, 8)), 0, model.configure_optimizers())
    assert model.sample(20).shape == (20, 1, 8, 8)  # cycles through the classes


# ----------------------------------------------------------------------------- GAN training rules

@pytest.mark.parametrize("overrides", [
    {"loss": "least-squares"}, {"loss": "minimax"},
    {"loss": "non-saturating", "r1_gamma": 10.0, "d_batchnorm": False},
    {"loss": "hinge", "spectral_norm": True, "d_batchnorm": False, "conditional": True, "d_lr": 4e-4},
])
def test_gan_variants_train_on_the_loss_they_name(overrides):
    """One step of each variant logs the D and G losses of its ``loss`` option, recomputed here by the
    formula from D's own outputs in that step (a forward hook records them): a model that ignored the
    option, or trained on another loss, would log other values."""
    model = build_model("conv-gan", {"width": 8, **overrides}, (1, 8, 8), 10)
    opts = model.configure_optimizers()
    seen = []  # (images in, scores out) of every discriminator call: the D step's real and fake, then G's
    model.discriminator.register_forward_hook(lambda m, args, out: seen.append((args[0].detach(), out.detach())))
    batch = _batch((1, 8, 8))
    logs = model.train_step(batch, 0, opts)
    assert all(torch.isfinite(v) for v in logs.values())
    images, scores = (torch.cat(t) for t in zip(*seen))
    n = batch.images.shape[0]
    assert scores.shape == (3 * n,) and torch.equal(images[:n], batch.images)
    real, fake, g_fake = scores.float().split(n)
    d_formula, g_formula = GAN_LOSS_FORMULAS[overrides["loss"]]
    d_expected = d_formula(real, fake)
    if "r1_gamma" in overrides:
        assert logs["r1"] > 0
        d_expected = d_expected + 0.5 * overrides["r1_gamma"] * logs["r1"]
    assert logs["d_loss"].item() == pytest.approx(d_expected.item(), rel=1e-5)
    assert logs["g_loss"].item() == pytest.approx(g_formula(g_fake).item(), rel=1e-5)


# (D loss of real and fake scores, G loss of the fakes' scores), as the papers write them
GAN_LOSS_FORMULAS = {
    # Goodfellow et al. 2014: D maximizes log D(x) + log(1 - D(G(z))), D = sigmoid(score)
    "minimax": (lambda r, f: -(torch.log(torch.sigmoid(r)) + torch.log(1 - torch.sigmoid(f))).mean(),
                lambda f: torch.log(1 - torch.sigmoid(f)).mean()),
    "non-saturating": (lambda r, f: -(torch.log(torch.sigmoid(r)) + torch.log(1 - torch.sigmoid(f))).mean(),
                       lambda f: -torch.log(torch.sigmoid(f)).mean()),
    # Mao et al. 2017, a-b-c = 0-1-1 coding, with the paper's 1/2
    "least-squares": (lambda r, f: 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean(),
                      lambda f: 0.5 * ((f - 1) ** 2).mean()),
    # Lim & Ye 2017 / Miyato et al. 2018
    "hinge": (lambda r, f: torch.relu(1 - r).mean() + torch.relu(1 + f).mean(), lambda f: -f.mean()),
}


def test_batchnorm_in_the_critic_is_refused_with_the_gradient_penalty():
    with pytest.raises(GenlabError, match="d_batchnorm"):
        build_model("conv-gan", {"gp_weight": 10.0}, (1, 8, 8))


@pytest.mark.parametrize("n_critic", [2, 5])  # the preset's, the paper's
def test_wgan_gp_updates_the_generator_once_per_n_critic_steps(n_critic):
    model = _build("wgan-gp", (1, 8, 8), width=8, n_critic=n_critic)
    opts = model.configure_optimizers()
    g_params = lambda: [p.detach().clone() for p in model.generator.parameters()]
    d_params = lambda: [p.detach().clone() for p in model.discriminator.parameters()]
    for step in range(2 * n_critic):
        g0, d0 = g_params(), d_params()
        logs = model.train_step(_batch((1, 8, 8), seed=step), step, opts)
        g_moved = any(not torch.equal(a, b) for a, b in zip(g0, model.generator.parameters()))
        assert g_moved == (step % n_critic == n_critic - 1)
        assert any(not torch.equal(a, b) for a, b in zip(d0, model.discriminator.parameters()))
        assert logs["gp"] > 0
    assert all(p.requires_grad for p in model.discriminator.parameters())


def test_ema_generator_follows_the_decay_formula_and_sampling_uses_it():
    torch.manual_seed(0)
    model: DCGAN = build_model("conv-gan", {"width": 8, "ema_decay": 0.9}, (1, 8, 8))
    opts = model.configure_optimizers()
    for step in range(3):
        model.train_step(_batch((1, 8, 8), seed=step), step, opts)
    raw = dict(model.generator.named_parameters())
    assert any(not torch.equal(p, raw[k]) for k, p in model.generator_ema.named_parameters())
    # warm-up: decay_t = min(decay, (1 + t) / (10 + t)) after t generator updates
    assert model.ema_decay_at(0) == pytest.approx(2 / 11)
    assert model.ema_decay_at(10_000) == 0.9
    # one step far past the warm-up, from an EMA pulled far from G: w_ema' = 0.9 w_ema + 0.1 w'
    with torch.no_grad():
        for p in model.generator_ema.parameters():
            p.normal_()
    ema_before = {k: p.detach().clone() for k, p in model.generator_ema.named_parameters()}
    model.train_step(_batch((1, 8, 8), seed=9), 10_000, opts)
    for k, p in model.generator_ema.named_parameters():
        expected = 0.9 * ema_before[k] + 0.1 * raw[k].detach()
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
    for (k, b), b_raw in zip(model.generator_ema.named_buffers(), model.generator.buffers()):
        assert torch.equal(b, b_raw), k  # BatchNorm statistics are copied, not averaged
    model.eval()
    z = torch.randn(3, model.config.z_dim, generator=torch.Generator().manual_seed(2))
    assert torch.equal(model.sample(3, generator=torch.Generator().manual_seed(2)), model.generate(z, ema=True))
    assert not torch.allclose(model.generate(z, ema=True), model.generate(z))
    model.train()
    assert not model.generator_ema.training  # only ever sampled: its BatchNorm keeps the copied statistics


# ----------------------------------------------------------------------------- VAEs

def _small_vae(**overrides) -> ConvVAE:
    torch.manual_seed(0)
    return build_model("conv-vae", {"width": 8, "z_dim": 4, **overrides}, (1, 8, 8), 10)


def test_iwae_bound_with_one_sample_is_the_elbo_for_the_same_noise():
    model = _small_vae(likelihood="logistic")
    x, noise = _batch((1, 8, 8)).images, torch.randn(1, 8, 4)
    with torch.no_grad():
        bound = model.iwae_bound(x, k=1, noise=noise)
        mu, logvar = model.encode(x)
        z = mu + noise[0] * (0.5 * logvar).exp()
        q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
        p = torch.distributions.Normal(torch.zeros(4), torch.ones(4))
        elbo = model.log_px_given_z(x, z) + p.log_prob(z).sum(1) - q.log_prob(z).sum(1)
    assert torch.allclose(bound, elbo, atol=1e-3)


def test_iwae_bound_with_five_samples_is_above_the_elbo_in_expectation():
    model = _small_vae()
    x = _batch((1, 8, 8)).images
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x, generator=gen) for _ in range(200)]).mean(0)  # analytic KL
        l1 = torch.stack([model.iwae_bound(x, k=1, noise=torch.randn(1, 8, 4, generator=gen))
                          for _ in range(200)]).mean(0)
        l5 = torch.stack([model.iwae_bound(x, k=5, noise=torch.randn(5, 8, 4, generator=gen))
                          for _ in range(200)]).mean(0)
    assert torch.allclose(l1, elbo, atol=0.3)  # the Monte Carlo KL averages to the analytic one
    assert (l5 > elbo + 0.05).all()


def test_kl_weight_warms_up_linearly_to_beta():
    model = _small_vae(beta=4.0, kl_warmup_steps=100)
    assert [model.beta_at(s) for s in (0, 49, 99, 5000)] == pytest.approx([0.04, 2.0, 4.0, 4.0])
    logs = model.train_step(_batch((1, 8, 8)), 49, model.configure_optimizers())
    assert logs["beta"].item() == pytest.approx(2.0)
    assert _small_vae(beta=4.0).beta_at(0) == 4.0


def test_the_mlp_vae_warms_its_kl_weight_up_too_and_trains_on_the_weighted_loss():
    model = build_model("mlp-vae", {"hidden": [32, 16], "z_dim": 4, "beta": 0.5, "kl_warmup_steps": 10}, (1, 8, 8))
    assert [model.beta_at(s) for s in (0, 4, 9, 100)] == pytest.approx([0.05, 0.25, 0.5, 0.5])
    logs = model.train_step(_batch((1, 8, 8)), 4, model.configure_optimizers())
    assert logs["beta"].item() == pytest.approx(0.25)
    assert logs["loss"].item() == pytest.approx(logs["recon"].item() + 0.25 * logs["kl"].item(), rel=1e-5)
    plain = build_model("mlp-vae", {"hidden": [32, 16], "z_dim": 4}, (1, 8, 8))
    assert "beta" not in plain.train_step(_batch((1, 8, 8)), 4, plain.configure_optimizers())


@pytest.mark.parametrize("overrides", [{"likelihood": "gaussian"}, {"likelihood": "gaussian", "gaussian_std": 0.1},
                                       {"likelihood": "logistic"}, {"likelihood": "logistic", "iwae_k": 3},
                                       {"conditional": True, "batchnorm": True}])
def test_vae_likelihoods_train_and_evaluate(overrides):
    model = _small_vae(**overrides)
    opts = model.configure_optimizers()
    batch = _batch((1, 8, 8))
    images = (batch.images * 255).round().to(torch.uint8)
    for step in range(3):
        logs = model.train_step(Batch(images.float() / 255, batch.labels), step, opts)
        assert all(torch.isfinite(v) for v in logs.values())
    model.eval()
    out = model.evaluate(images, batch.labels, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(out["test_elbo"])
    z = torch.randn(8, 4)
    labels = batch.labels if overrides.get("conditional") else None
    assert model.log_px_given_z(images.float() / 255, z, labels).shape == (8,)
    if overrides.get("likelihood") == "logistic":
        assert out["test_bits_per_dim"] == pytest.approx(-out["test_elbo"] / (64 * math.log(2)))
        with pytest.raises(GenlabError, match="log_px_given_z"):
            model.decode_logits(z)


def test_vae_gan_discriminator_is_untouched_by_the_encoder_and_decoder_updates():
    model = _build("vae-gan", (1, 8, 8), width=8)
    opts = model.configure_optimizers()
    opts["d"].param_groups[0]["lr"] = 0.0
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    e0 = [p.detach().clone() for p in model.encoder.parameters()]
    g0 = [p.detach().clone() for p in model.decoder.parameters()]
    logs = model.train_step(_batch((1, 8, 8)), 0, opts)
    assert {"d_loss", "g_loss", "llike", "kl"} <= set(logs)
    assert all(torch.equal(a, b) for a, b in zip(d0, model.discriminator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(e0, model.encoder.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(g0, model.decoder.parameters()))
    assert all(p.requires_grad for p in model.discriminator.parameters())
    assert model.reconstruct(torch.rand(3, 1, 8, 8)).shape == (3, 1, 8, 8)


# ----------------------------------------------------------------------------- conditioning really works

@pytest.fixture(scope="module")
def digits_and_classifier():
    from sklearn.linear_model import LogisticRegression

    from genlab.data import load_dataset

    ds = load_dataset("digits")
    x = ds.train.images.float() / 255
    clf = LogisticRegression(max_iter=2000).fit(x.flatten(1).numpy(), ds.train.labels.numpy())
    return x, ds.train.labels, clf


@pytest.mark.parametrize("name,overrides,steps", [
    ("cvae", {"width": 16, "z_dim": 8, "lr": 2e-3}, 300),
    ("cgan", {"width": 16, "z_dim": 16, "ema_decay": 0.99}, 600),
])
def test_class_conditional_samples_are_recognised_as_their_class(digits_and_classifier, name, overrides, steps):
    x, y, clf = digits_and_classifier
    torch.manual_seed(0)
    model = _build(name, (1, 8, 8), **overrides)
    opts = model.configure_optimizers()
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        model.train_step(Batch(x[idx], y[idx]), step, opts)
    model.eval()
    labels = torch.arange(300) % 10
    samples = model.sample(300, labels=labels, generator=torch.Generator().manual_seed(1))
    predicted = torch.from_numpy(clf.predict(samples.flatten(1).numpy()))
    accuracy = (predicted == labels).float().mean().item()
    assert accuracy > 0.3, f"{name}: samples for label y are classified as y {accuracy:.0%} of the time (chance 10%)"


# ----------------------------------------------------------------------------- with the Trainer

def test_a_wgan_gp_with_ema_resumed_after_a_stop_ends_identical_to_one_that_never_stopped(tmp_path):
    # n_critic, the EMA warm-up and the logged generator loss all live in the step count and the
    # state_dict, so the checkpoint carries them
    from genlab import api

    kw = {"progress": False, "width": 8, "ema_decay": 0.99, "batch_size": 256}
    straight = api.train("wgan-gp", "digits", epochs=2, out=tmp_path / "a", **kw)
    stopped = api.train("wgan-gp", "digits", epochs=1, out=tmp_path / "b", **kw)
    resumed = api.resume(stopped.run_dir, epochs=2, progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["generator_ema.project.weight"], a["generator.project.weight"])
