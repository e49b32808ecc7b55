"""The latent priors (priors.py): their common interface, the Gaussian mixture fitted to the aggregate posterior
(prior="gmm") and the mixture trained with the model (prior="mog")."""
import json
import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from genlab.data import load_dataset
from genlab.errors import GenlabError
from genlab.models import Batch, build_model
from genlab.models import losses
from genlab.models.priors import GaussianMixturePrior, LearnedMixturePrior, Prior, StandardNormalPrior

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _two_blobs(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n // 4, 3, generator=g) * 0.3 + torch.tensor([3.0, 0.0, -1.0])
    b = torch.randn(3 * n // 4, 3, generator=g) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.2]])
    return torch.cat([a, b - 2.0])


def test_an_unfitted_mixture_is_the_standard_normal():
    prior = GaussianMixturePrior(4, components=3)
    z = torch.randn(50, 4)
    expected = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(prior.log_prob(z), expected, atol=1e-5)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(prior.sample(10, g1), torch.randn(10, 4, generator=g2))


def test_the_fitted_density_is_the_mixture_torch_distributions_computes():
    prior = GaussianMixturePrior(3, components=2)
    prior.refit(_two_blobs())
    ref = MixtureSameFamily(Categorical(logits=prior.log_weights),
                            MultivariateNormal(prior.means, scale_tril=prior.scale_tril))
    z = torch.randn(200, 3) * 2
    assert torch.allclose(prior.log_prob(z), ref.log_prob(z), atol=1e-3)
    # the fit found the two blobs and their weights
    weights = prior.log_weights.exp().sort().values
    assert torch.allclose(weights, torch.tensor([0.25, 0.75]), atol=0.02)


def test_samples_follow_the_fitted_mixture_and_are_reproducible():
    data = _two_blobs(8000)
    prior = GaussianMixturePrior(3, components=2)
    prior.refit(data)
    s = prior.sample(8000, torch.Generator().manual_seed(0))
    assert torch.allclose(s.mean(0), data.mean(0), atol=0.08)
    assert torch.allclose(torch.cov(s.T), torch.cov(data.T), atol=0.1)
    assert torch.equal(s, prior.sample(8000, torch.Generator().manual_seed(0)))
    # batched log_prob keeps leading dimensions
    assert prior.log_prob(s.view(2, 4000, 3)).shape == (2, 4000)


def _set_learned_mixture(prior: LearnedMixturePrior, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        prior.means.copy_(torch.randn(prior.means.shape, generator=g) * 2)
        prior.logvars.copy_(torch.randn(prior.logvars.shape, generator=g) * 0.5)
        prior.logits.copy_(torch.randn(prior.logits.shape, generator=g))


def _each_prior(dim: int) -> dict[str, Prior]:
    """One prior of each kind over ``dim`` dimensions, the mixtures away from N(0, I): the fitted mixture fitted
    to two blobs of codes, the learned one with spread means, variances and weights."""
    g = torch.Generator().manual_seed(0)
    gmm = GaussianMixturePrior(dim, components=2)
    gmm.refit(torch.cat([torch.randn(300, dim, generator=g) * 0.5 - 2.0, torch.randn(700, dim, generator=g) + 1.5]))
    mog = LearnedMixturePrior(dim, components=3)
    _set_learned_mixture(mog)
    return {"normal": StandardNormalPrior(dim), "gmm": gmm, "mog": mog}


@pytest.mark.parametrize("kind", ["normal", "gmm", "mog"])
def test_every_prior_is_a_normalised_density_that_samples_codes_of_its_size(kind):
    prior = _each_prior(1)[kind]
    grid = torch.linspace(-20.0, 20.0, 8001)
    density = prior.log_prob(grid[:, None]).detach().exp()
    assert density.shape == (8001,)
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-3)
    assert prior.sample(5, torch.Generator().manual_seed(0)).shape == (5, 1)
    wide = _each_prior(3)[kind]
    s = wide.sample(7, torch.Generator().manual_seed(0))
    assert s.shape == (7, 3) and torch.equal(s, wide.sample(7, torch.Generator().manual_seed(0)))
    assert wide.log_prob(s.view(7, 1, 3)).shape == (7, 1)


@pytest.mark.parametrize("kind", ["normal", "gmm", "mog"])
def test_every_priors_training_kl_and_refit(kind):
    """The training KL: closed-form KL(q || N(0, I)) for the standard normal and the fitted mixture (which
    regularises towards N(0, I) while training), log q(z|x) - log p(z) for the learned mixture; refit
    returns a dict of figures, empty where there is nothing to fit, and only the fitted mixture is due one."""
    prior = _each_prior(3)[kind]
    g = torch.Generator().manual_seed(2)
    mu, logvar, eps = (torch.randn(6, 3, generator=g) for _ in range(3))
    z = mu + (0.5 * logvar).exp() * eps
    closed_form = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
    kl = prior.kl(z, mu, logvar)
    if kind == "mog":
        assert torch.allclose(kl, losses.log_normal(z, mu, logvar) - prior.log_prob(z), atol=1e-6)
        assert not torch.allclose(kl, closed_form, atol=1e-2)
    else:
        assert torch.allclose(kl, closed_form, atol=1e-5)
    figures = prior.refit(torch.randn(200, 3, generator=g), seed=0)
    assert isinstance(figures, dict)
    assert (set(figures) == {"prior_log_density", "prior_converged"}) == (kind == "gmm") == prior.fitted_to_codes
    assert prior.refit_due(1, last=True) == (kind == "gmm")
    assert prior.is_standard_normal == (kind == "normal")


@pytest.mark.parametrize("kind", ["normal", "unfitted", "gmm", "mog"])
def test_the_elbos_kl_is_against_the_prior_sampled_from(kind):
    """``elbo_kl`` (the evaluation's KL): closed form while p(z) is N(0, I) - the standard normal and a mixture
    not yet fitted - and log q(z|x) - log p(z) at the draws for a fitted or learned mixture, whose
    training KL may be another (the fitted mixture trains against N(0, I))."""
    prior = GaussianMixturePrior(3, components=2) if kind == "unfitted" else _each_prior(3)[kind]
    g = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    z = mu + (0.5 * logvar).exp() * torch.randn(4, 6, 3, generator=g)  # 4 draws per image
    log_qz, log_pz = losses.log_normal(z, mu, logvar), prior.log_prob(z)
    kl = prior.elbo_kl(mu, logvar, log_qz, log_pz)
    closed_form = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
    if kind in ("normal", "unfitted"):
        assert kl.shape == (6,) and torch.allclose(kl, closed_form, atol=1e-5)
    else:
        assert kl.shape == (4, 6) and torch.equal(kl, log_qz - log_pz)
        assert not torch.allclose(kl.mean(0), closed_form, atol=1e-1)


@pytest.mark.parametrize("prior", ["normal", "gmm", "mog"])
def test_a_vaes_elbo_is_its_one_sample_importance_weight_under_the_prior_it_samples_from(prior):
    """VAE.elbo = log p(x|z) - elbo_kl at one draw; for a mixture prior that is the one-sample log weight
    log p(x|z) + log p(z) - log q(z|x), the same terms the IWAE bound and the evaluation's NLL use."""
    model = build_model("mlp-vae", {"prior": prior, "prior_components": 3, "z_dim": 4, "hidden": [32, 16]}, (1, 8, 8))
    images = load_dataset("digits").train.images
    if prior == "gmm":
        model.fit_prior(images[:300], seed=0)
    model.eval()
    x = images[:10].float() / 255
    with torch.no_grad():
        elbo = model.elbo(x, generator=torch.Generator().manual_seed(4))
        noise = torch.randn(1, 10, 4, generator=torch.Generator().manual_seed(4))
        lw = model.log_weights(x, noise=noise)[0]
        log_px, _, _ = model.importance_terms(x, noise=noise)
        mu, logvar = model.encode(x)
    if prior == "normal":
        assert torch.allclose(elbo, log_px[0] - losses.gaussian_kl(mu, logvar), atol=1e-4)
    else:
        assert torch.allclose(elbo, lw, atol=1e-4)


def test_the_standard_normal_prior_has_no_state_and_samples_as_every_genlab_sampler():
    prior = StandardNormalPrior(4)
    assert prior.state_dict() == {} and list(prior.parameters()) == []
    assert torch.equal(prior.sample(3, torch.Generator().manual_seed(5)),
                       torch.randn(3, 4, generator=torch.Generator().manual_seed(5)))
    z = torch.randn(10, 4)
    assert torch.allclose(prior.log_prob(z), -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1))
    model = build_model("mlp-vae", {"hidden": [16], "z_dim": 4}, (1, 8, 8))
    assert isinstance(model.prior, StandardNormalPrior)
    assert not any(k.startswith("prior") for k in model.state_dict())  # old checkpoints' keys, one for one


def test_an_unfitted_mixture_becomes_a_prior_of_its_own_after_the_first_refit_and_is_due_every_nth_epoch():
    prior = GaussianMixturePrior(2, components=2, fit_every=3)
    assert prior.is_standard_normal and not prior.is_fitted
    assert [prior.refit_due(e, last=False) for e in (1, 2, 3, 6)] == [False, False, True, True]
    assert prior.refit_due(4, last=True)
    prior.refit(torch.randn(100, 2) + 3.0)
    assert not prior.is_standard_normal and prior.is_fitted


def test_the_learned_mixture_is_the_density_torch_distributions_computes_and_samples_from_it():
    from torch.distributions import Independent, Normal

    prior = LearnedMixturePrior(3, components=4)
    _set_learned_mixture(prior)
    ref = MixtureSameFamily(Categorical(logits=prior.logits.detach()),
                            Independent(Normal(prior.means.detach(), (0.5 * prior.logvars.detach()).exp()), 1))
    z = torch.randn(2, 100, 3) * 3
    assert torch.allclose(prior.log_prob(z), ref.log_prob(z), atol=1e-4)  # leading dimensions kept
    s = prior.sample(20000, torch.Generator().manual_seed(0))
    r = ref.sample((20000,))
    assert torch.allclose(s.mean(0), r.mean(0), atol=0.1) and torch.allclose(s.std(0), r.std(0), atol=0.1)
    assert torch.equal(s, prior.sample(20000, torch.Generator().manual_seed(0)))


def test_the_learned_mixtures_matrix_product_form_matches_the_direct_sum_in_value_and_gradient():
    """log_prob expands the Mahalanobis terms into matrix products; at the preset's size (100
    components, 32 dimensions) and for codes far from the means its value and its gradients (to z and
    to the prior's parameters) must stay those of the direct per-pair sum in float64."""
    prior = LearnedMixturePrior(32, components=100)
    _set_learned_mixture(prior, seed=3)
    z = (torch.randn(256, 32, generator=torch.Generator().manual_seed(1)) * 4).requires_grad_(True)

    def direct(z64, means, logvars, logits):
        diff = z64[:, None, :] - means[None]
        comp = -0.5 * (diff.pow(2) / logvars.exp() + logvars + math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(comp + torch.log_softmax(logits, 0), dim=1)

    params = [prior.means, prior.logvars, prior.logits]
    fast = prior.log_prob(z)
    g_fast = torch.autograd.grad(fast.sum(), [z, *params])
    p64 = [q.detach().double().requires_grad_(True) for q in params]
    z64 = z.detach().double().requires_grad_(True)
    ref = direct(z64, *p64)
    g_ref = torch.autograd.grad(ref.sum(), [z64, *p64])
    assert fast.dtype == torch.float32
    assert torch.allclose(fast.double(), ref, rtol=1e-5, atol=1e-3)
    for a, b in zip(g_fast, g_ref):
        assert torch.allclose(a.double(), b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("model_name", ["mlp-vae", "conv-vae"])
def test_a_learned_mixture_prior_is_trained_with_the_vae_through_a_one_sample_kl(tmp_path, model_name):
    from genlab import api

    small = {"mlp-vae": {"hidden": [32, 16]}, "conv-vae": {"width": 4}}[model_name]
    model = build_model(model_name, {"prior": "mog", "prior_components": 3, "z_dim": 4, **small}, (1, 8, 8))
    _set_learned_mixture(model.prior)
    x, eps = torch.rand(6, 1, 8, 8), torch.randn(6, 4)
    terms = model.loss_terms(x, noise=eps)
    mu, logvar = model.encode(x)
    z = mu + (0.5 * logvar).exp() * eps
    # KL(q || p) has no closed form under a mixture: log q(z|x) - log p(z) at the posterior's own sample
    assert torch.allclose(terms["kl"], losses.log_normal(z, mu, logvar) - model.prior.log_prob(z), atol=1e-5)
    assert not torch.allclose(terms["kl"], losses.gaussian_kl(mu, logvar), atol=1e-2)
    assert not model.has_standard_normal_prior and model.fit_prior(x) == {}  # nothing to fit ex post
    means = model.prior.means.detach().clone()
    model.train_step(Batch(x), 0, model.configure_optimizers())
    assert not torch.equal(model.prior.means, means)  # the prior is a parameter of the model
    # trained on digits it is saved with the weights and scored under itself
    res = api.train(model_name, "digits", epochs=2, out=tmp_path / "run", progress=False,
                    prior="mog", prior_components=5, z_dim=4, **small)
    loaded = api.load(res.run_dir)
    assert torch.equal(loaded.prior.means, res.model.prior.means)
    assert torch.equal(loaded.sample(4, generator=torch.Generator().manual_seed(0)),
                       res.model.sample(4, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(GenlabError, match="prior=mog is one mixture for every class"):
        build_model("conv-vae", {"prior": "mog", "conditional": True}, (1, 28, 28), 10)


def test_a_conditional_vae_refuses_the_unconditional_mixture():
    with pytest.raises(GenlabError, match="conditional"):
        build_model("conv-vae", {"prior": "gmm", "conditional": True}, (1, 28, 28), 10)
    with pytest.raises(GenlabError, match="unknown prior"):
        build_model("conv-vae", {"prior": "flow"}, (1, 28, 28), 10)
    with pytest.raises(GenlabError, match="unknown prior"):
        build_model("mlp-vae", {"prior": "flow"}, (1, 28, 28), 10)
    with pytest.raises(GenlabError, match="prior_fit_images"):
        build_model("mlp-vae", {"prior": "gmm", "prior_components": 10, "prior_fit_images": 15}, (1, 28, 28))


SMALL = {"conv-vae": {"width": 16}, "mlp-vae": {"hidden": [128, 64]}}


@pytest.mark.parametrize("model_name", ["conv-vae", "mlp-vae"])
def test_a_gmm_vae_trains_saves_its_fitted_prior_and_scores_better_with_it(tmp_path, model_name):
    from genlab import api
    from genlab.eval.likelihood import vae_likelihood
    from genlab.training.run import load_run_dataset

    result = api.train(model_name, "digits", epochs=4, out=tmp_path / "run", progress=False,
                       prior="gmm", z_dim=8, prior_components=5, **SMALL[model_name])
    model = api.load(tmp_path / "run")
    assert model.prior.is_fitted and not model.has_standard_normal_prior
    assert torch.equal(model.prior.means, result.model.prior.means)  # saved in the checkpoint
    test = load_run_dataset(model.run_config, progress=False).test
    with_mixture = vae_likelihood(model, test.images, k=50)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["prior.fitted"].fill_(False)  # the same weights under N(0, I)
    model.load_state_dict(state)
    assert not model.prior.is_fitted and model.has_standard_normal_prior
    with_normal = vae_likelihood(model, test.images, k=50)
    # the mixture is fitted to the aggregate posterior, which N(0, I) only approximates
    assert with_mixture["nll_iwae"] < with_normal["nll_iwae"]
    if model_name == "conv-vae":
        # The ELBO gains only where the mixture's density of the test codes beats N(0, I)'s: no theorem
        # (the fit maximises it on training codes). It holds for the conv VAE; the small MLP VAE's
        # aggregate posterior on digits is near N(0, I) after 4 epochs and its ELBOs differ by < 0.1 nats.
        assert with_mixture["elbo"] > with_normal["elbo"]
    # the model samples from the mixture: same generator, other latents than N(0, I) gives
    state["prior.fitted"].fill_(True)
    model.load_state_dict(state)
    z = model.prior_sample(2000, torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(0), model.prior.sample(2000, torch.Generator().manual_seed(1)).mean(0), atol=0.15)
    assert not torch.allclose(z, torch.randn(2000, 8, generator=torch.Generator().manual_seed(0)))


def test_a_gmm_vae_resumed_after_a_stop_ends_identical_to_one_that_never_stopped(tmp_path):
    from genlab import api

    kw = {"progress": False, "prior": "gmm", "z_dim": 8, "width": 8, "prior_components": 3}
    straight = api.train("conv-vae", "digits", epochs=2, out=tmp_path / "a", **kw)
    stopped = api.train("conv-vae", "digits", epochs=2, max_steps=17, out=tmp_path / "b", **kw)
    assert stopped.model.prior.is_fitted  # a stop inside an epoch refits, so the checkpoint is coherent
    resumed = api.resume(stopped.run_dir, progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_mixture_is_refitted_every_nth_epoch_and_at_the_end_and_the_weights_do_not_change(tmp_path):
    import json

    from genlab import api

    kw = {"progress": False, "prior": "gmm", "z_dim": 8, "hidden": [64, 32], "prior_components": 3}
    every = api.train("mlp-vae", "digits", epochs=5, out=tmp_path / "every", **kw)
    sparse = api.train("mlp-vae", "digits", epochs=5, out=tmp_path / "sparse", prior_fit_every=2, **kw)
    fitted = [r["epoch"] for r in map(json.loads, (sparse.run_dir / "metrics.jsonl").read_text().splitlines())
              if r.get("event") == "epoch_end" and "prior_log_density" in r]
    assert fitted == [2, 4, 5]  # every 2nd epoch, and the last
    a, b = every.model.state_dict(), sparse.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the last fit is the same fit too
    with pytest.raises(GenlabError, match="prior_fit_every .* at least 1; got 0"):
        build_model("mlp-vae", {"prior": "gmm", "prior_fit_every": 0}, (1, 28, 28))


def test_the_torch_em_fit_is_as_good_as_scikit_learns():
    from sklearn.mixture import GaussianMixture

    from genlab.models.priors import fit_gaussian_mixture

    g = torch.Generator().manual_seed(3)
    centres = torch.randn(6, 5, generator=g) * 3
    data = torch.cat([centres[i] + torch.randn(500 + 200 * i, 5, generator=g) @ torch.randn(5, 5, generator=g) * 0.4
                      for i in range(6)]).double()
    weights, means, covs, score, converged = fit_gaussian_mixture(data, 6, seed=0)
    ref = GaussianMixture(6, covariance_type="full", reg_covar=1e-4, random_state=0).fit(data.numpy())
    assert converged and abs(float(weights.sum()) - 1.0) < 1e-9
    assert score > ref.score(data.numpy()) - 0.01  # EM reached the likelihood scikit-learn reaches
    # and its returned score is the mean log-density of the data under the returned mixture
    mix = MixtureSameFamily(Categorical(probs=weights), MultivariateNormal(means, covariance_matrix=covs))
    assert abs(float(mix.log_prob(data).mean()) - score) < 1e-6
    # same data and seed: the same fit, bit for bit
    again = fit_gaussian_mixture(data, 6, seed=0)
    assert torch.equal(again[1], means) and torch.equal(again[2], covs)


def test_the_mlp_vae_weight_average_follows_the_decay_formula_and_eval_mode_uses_it():
    torch.manual_seed(0)
    model = build_model("mlp-vae", {"hidden": [32, 16], "z_dim": 4, "ema_decay": 0.9}, (1, 8, 8))
    opts = model.configure_optimizers()
    averaged = {id(p) for p in model.averaged.parameters()}
    assert not any(id(p) in averaged for g in opts["vae"].param_groups for p in g["params"])  # never trained
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for step in range(3):
        model.train_step(Batch(x), step, opts)
    assert model.ema_decay_at(0) == pytest.approx(1 / 10) and model.ema_decay_at(10_000) == 0.9
    with torch.no_grad():  # pull the average far from the weights, then one step past the warm-up
        for p in model.averaged.parameters():
            p.normal_()
    before = {k: p.detach().clone() for k, p in model.averaged.named_parameters()}
    model.train_step(Batch(x), 10_000, opts)
    for name in ("encoder", "mu_head", "logvar_head", "decoder"):
        for (k, p), w in zip(model.averaged[name].named_parameters(), getattr(model, name).parameters()):
            torch.testing.assert_close(p, 0.9 * before[f"{name}.{k}"] + 0.1 * w.detach(), rtol=1e-6, atol=1e-7)
    # training mode encodes with the trained weights, eval mode with their average
    mu_train, _ = model.encode(x)
    model.eval()
    mu_eval, _ = model.encode(x)
    assert not torch.allclose(mu_train, mu_eval)
    torch.testing.assert_close(mu_eval, model.averaged["mu_head"](model.averaged["encoder"](x.flatten(1))))
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model.decode(z), torch.sigmoid(model.averaged["decoder"](z)).view(3, 1, 8, 8))


def test_an_averaged_gmm_vae_fits_its_prior_on_the_average_and_resumes_identically(tmp_path):
    from genlab import api
    from genlab.training.run import load_run_dataset

    kw = {"progress": False, "prior": "gmm", "z_dim": 4, "hidden": [32, 16], "prior_components": 3,
          "ema_decay": 0.95}
    straight = api.train("mlp-vae", "digits", epochs=2, out=tmp_path / "a", **kw)
    stopped = api.train("mlp-vae", "digits", epochs=2, max_steps=17, out=tmp_path / "b", **kw)
    resumed = api.resume(stopped.run_dir, progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and any(k.startswith("averaged.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the mixture was fitted to codes of the averaged encoder (what sampling decodes with): refitting
    # from those codes gives the saved fit, refitting from the trained encoder's does not
    model = api.load(straight.run_dir)
    train = load_run_dataset(model.run_config, progress=False).train.images
    saved = model.prior.means.clone()
    model.fit_prior(train, seed=0)
    torch.testing.assert_close(model.prior.means, saved)
    model.averaged = None  # the same model without its average: codes of the trained weights
    model.fit_prior(train, seed=0)
    assert not torch.allclose(model.prior.means, saved, atol=1e-3)


def test_the_encoder_refit_trains_only_the_encoder_on_the_true_elbo_and_leaves_every_sample_as_it_was(tmp_path):
    """From encoder_refit_from_step on, decoder and prior are frozen (bit for bit, so the samples are
    those of the model before the phase), the encoder still trains, the KL weight is 1, and the
    likelihood estimate of the same generative model gets tighter (a lower NLL upper bound)."""
    from genlab import api
    from genlab.eval.likelihood import vae_likelihood
    from genlab.training.run import load_run_dataset

    cfg = {"hidden": [64, 32], "z_dim": 4, "prior": "mog", "prior_components": 5, "beta": 0.2}
    before = api.train("mlp-vae", "digits", epochs=4, out=tmp_path / "a", progress=False, seed=0, **cfg)
    steps = before.state.step
    refit = api.train("mlp-vae", "digits", epochs=8, out=tmp_path / "b", progress=False, seed=0,
                      encoder_refit_from_step=steps, **cfg)
    plain = api.train("mlp-vae", "digits", epochs=4, out=tmp_path / "c", progress=False, seed=0,
                      encoder_refit_from_step=10 ** 9, **cfg)  # never reached: identical to `before`
    m0, m1 = api.load(before.run_dir), api.load(refit.run_dir)
    assert torch.equal(api.load(plain.run_dir).decoder[0].weight, m0.decoder[0].weight)
    frozen = [n for n in m0.state_dict() if n.startswith(("decoder.", "prior."))]
    assert frozen and all(torch.equal(m0.state_dict()[n], m1.state_dict()[n]) for n in frozen)
    assert not torch.equal(m0.encoder[0].weight, m1.encoder[0].weight)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(m0.sample(16, generator=g()), m1.sample(16, generator=g()))
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    betas = {m["step"]: m["beta"] for m in rows if "beta" in m}
    # a metrics row reports the step count after its step: row s logs the 0-based step s - 1
    assert betas and all((b == 1.0) == (s - 1 >= steps) for s, b in betas.items())
    assert m1.beta_at(steps - 1) == 0.2 and m1.beta_at(steps) == 1.0
    test = load_run_dataset(m1.run_config).test.images
    # the same p(z) and p(x|z) with a proposal fitted to the true ELBO: a higher held-out ELBO
    # (on Fashion-MNIST also a lower IWAE NLL, docs/gallery.md; on 8x8 digits with 4 latents k = 20
    # importance samples already close the gap)
    elbo0 = vae_likelihood(m0, test, k=20, seed=0)["elbo"]
    elbo1 = vae_likelihood(m1, test, k=20, seed=0)["elbo"]
    assert elbo1 > elbo0 + 0.5
    # stopped inside the phase and resumed, the run ends where the uninterrupted one did
    part = api.train("mlp-vae", "digits", epochs=6, out=tmp_path / "d", progress=False, seed=0,
                     encoder_refit_from_step=steps, **cfg)
    resumed = api.load(api.resume(part.run_dir, epochs=8, progress=False).run_dir)
    assert all(torch.equal(t, m1.state_dict()[n]) for n, t in resumed.state_dict().items())


def test_the_encoder_refit_as_a_fraction_of_the_budget_starts_where_the_budget_says(tmp_path, step_clock):
    """encoder_refit_fraction=f refits from the step at which the run has used 1 - f of its budget: of its
    epochs (the same weights, bit for bit, as encoder_refit_from_step at that step), of max_steps, and of
    a time limit (where the phase, once begun, lasts to the end)."""
    from genlab import api

    cfg = {"hidden": [64, 32], "z_dim": 4, "prior": "mog", "prior_components": 5, "beta": 0.2}
    by_step = api.train("mlp-vae", "digits", epochs=4, out=tmp_path / "a", progress=False, seed=0, **cfg)
    half = by_step.state.step // 2  # 4 epochs of 12 steps: the refit from step 24
    steps = api.train("mlp-vae", "digits", epochs=4, out=tmp_path / "b", progress=False, seed=0,
                      encoder_refit_from_step=half, **cfg)
    frac = api.train("mlp-vae", "digits", epochs=4, out=tmp_path / "c", progress=False, seed=0,
                     encoder_refit_fraction=0.5, **cfg)
    m_plain, m_steps, m_frac = (api.load(r.run_dir).state_dict() for r in (by_step, steps, frac))
    assert all(torch.equal(t, m_steps[n]) for n, t in m_frac.items())
    assert not all(torch.equal(t, m_plain[n]) for n, t in m_frac.items())

    def betas(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(m["step"], m["beta"]) for m in rows if "beta" in m]

    # max_steps ends the run: its last quarter refits, from step 15 of 20
    capped = api.train("mlp-vae", "digits", epochs=100, max_steps=20, out=tmp_path / "d", progress=False, seed=0,
                       encoder_refit_fraction=0.25, **cfg)
    capped_by_step = api.train("mlp-vae", "digits", epochs=100, max_steps=20, out=tmp_path / "e", progress=False,
                               seed=0, encoder_refit_from_step=15, **cfg)
    m_capped, m_capped_by_step = (api.load(r.run_dir).state_dict() for r in (capped, capped_by_step))
    assert all(torch.equal(t, m_capped_by_step[n]) for n, t in m_capped.items())
    # a time limit ends the run: the phase starts at 60 % of it and lasts to the end. With steps of 1/32 s
    # (tests/conftest.py) the 2 s limit ends the run after 64 steps and 60 % of it is reached at step 39
    # (39/32 s = 0.609 of 2 s; step 38: 0.594): the same weights, bit for bit, as a refit from step 39
    step_clock("mlp-vae", 1 / 32)
    timed = api.train("mlp-vae", "digits", epochs=10 ** 6, max_seconds=2.0, out=tmp_path / "f", progress=False,
                      seed=0, encoder_refit_fraction=0.4, **cfg)
    assert timed.status == "max_seconds" and timed.state.step == 64
    by_step = api.train("mlp-vae", "digits", epochs=10 ** 6, max_steps=64, out=tmp_path / "g", progress=False,
                        seed=0, encoder_refit_from_step=39, **cfg)
    m_timed, m_by_step = (api.load(r.run_dir).state_dict() for r in (timed, by_step))
    assert all(torch.equal(t, m_by_step[n]) for n, t in m_timed.items())
    rows = [json.loads(line) for line in (timed.run_dir / "metrics.jsonl").read_text().splitlines()]
    beta = [round(m["beta"], 6) for m in rows if "beta" in m]  # (float32 means of 0.2)
    assert beta[0] == 0.2 and beta[-1] == 1.0 and beta == sorted(beta) and sum(0.2 < b < 1.0 for b in beta) == 1


def test_the_encoder_refit_refuses_a_prior_or_average_that_would_follow_the_encoder():
    with pytest.raises(GenlabError, match="prior=gmm"):
        build_model("mlp-vae", {"prior": "gmm", "encoder_refit_from_step": 5}, (1, 8, 8))
    with pytest.raises(GenlabError, match="ema_decay"):
        build_model("mlp-vae", {"ema_decay": 0.9, "encoder_refit_from_step": 5}, (1, 8, 8))
    with pytest.raises(GenlabError, match="encoder_refit_from_step"):
        build_model("mlp-vae", {"encoder_refit_from_step": -1}, (1, 8, 8))
    with pytest.raises(GenlabError, match="prior=gmm"):
        build_model("mlp-vae", {"prior": "gmm", "encoder_refit_fraction": 0.1}, (1, 8, 8))
    for bad in (-0.1, 1.0):
        with pytest.raises(GenlabError, match="encoder_refit_fraction"):
            build_model("mlp-vae", {"encoder_refit_fraction": bad}, (1, 8, 8))
