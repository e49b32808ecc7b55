"""Every registered model declares exactly the capabilities it has (``GenerativeModel.encodes``,
``has_likelihood`` / ``decoder_likelihood``, ``conditional``, ``has_standard_normal_prior``), since
evaluation, the latent tools, the CLI and compare read the declarations and never probe for methods."""
import dataclasses
import math

import pytest
import torch

from genlab.errors import GenlabError
from genlab.models import Batch, build_model

BUILT_IN = ["mlp-vae", "mlp-gan", "conv-gan", "conv-vae", "vae-gan"]
SHAPE = (1, 16, 16)


def _has_field(name: str, field: str) -> bool:
    from genlab.models import MODELS
    return field in {f.name for f in dataclasses.fields(MODELS[name].config_cls)}


@pytest.mark.parametrize("name", BUILT_IN)
def test_declared_encoder_and_likelihood_are_the_ones_the_model_has(name):
    torch.manual_seed(0)
    model = build_model(name, {}, SHAPE).eval()
    x = torch.rand(3, *SHAPE)
    assert model.encodes == hasattr(model, "encode") == hasattr(model, "reconstruct")
    if model.encodes:
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == (3, model.latent_dim)
        assert model.reconstruct(x).shape == x.shape
    assert model.has_likelihood == hasattr(model, "log_px_given_z")
    if model.has_likelihood:
        assert model.encodes and model.decoder_likelihood in ("bernoulli", "gaussian", "logistic")
        with torch.no_grad():
            log_px = model.log_px_given_z(x, torch.randn(3, model.latent_dim))
        assert log_px.shape == (3,) and torch.isfinite(log_px).all()
    else:
        assert model.decoder_likelihood is None
    # the prior a model declares standard normal is N(0, I)
    z = torch.randn(5, model.latent_dim)
    assert model.has_standard_normal_prior
    assert torch.allclose(model.log_prior(z), -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1))
    assert not model.conditional and model.label_dim == 0


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "logistic"])
def test_a_vae_names_the_likelihood_of_its_config(likelihood):
    model = build_model("mlp-vae", {"likelihood": likelihood}, SHAPE)
    assert model.decoder_likelihood == likelihood and model.has_likelihood


@pytest.mark.parametrize("name", [n for n in BUILT_IN if _has_field(n, "conditional")])
def test_a_declared_conditional_model_takes_labels_and_refuses_their_absence(name):
    torch.manual_seed(0)
    model = build_model(name, {"conditional": True}, SHAPE, num_classes=10)
    assert model.conditional and model.label_dim == 10
    x = torch.rand(4, *SHAPE)
    with pytest.raises(GenlabError, match="labels"):
        model.train_step(Batch(x, None), 0, model.configure_optimizers())
    if model.encodes:
        with pytest.raises(GenlabError, match="labels"):
            model.encode(x)
        assert model.encode(x, torch.arange(4))[0].shape == (4, model.latent_dim)
    assert model.sample(4, labels=torch.arange(4)).shape == (4, *SHAPE)


def test_a_fitted_mixture_prior_is_declared_not_standard_normal():
    torch.manual_seed(0)
    model = build_model("mlp-vae", {"prior": "gmm", "prior_components": 2, "prior_fit_images": 64}, SHAPE)
    assert model.has_standard_normal_prior  # nothing fitted yet: N(0, I)
    model.fit_prior(torch.rand(64, *SHAPE))
    assert not model.has_standard_normal_prior


def test_compare_reuses_the_evaluation_of_a_model_without_likelihood_that_encodes(tmp_path):
    """The VAE-GAN encodes but has no pixel likelihood, so its evaluation has no likelihood block: compare
    must take that as complete (it asked for the encoder before and never reused such an evaluation)."""
    from genlab.compare.driver import _usable

    model = build_model("vae-gan", {}, SHAPE)
    assert model.encodes and not model.has_likelihood
    ev = {"format": "genlab-eval-1", "protocol": {"evaluator_fingerprint": "f", "evaluator_weights_sha256": "w",
                                                  "n_samples": 10, "seed": 0, "reference": "test"}}
    path = tmp_path / "eval.json"
    assert _usable(ev, ("f", "w"), 10, 0, None, model.has_likelihood, path)
    assert not _usable(ev, ("f", "w"), 10, 0, None, build_model("mlp-vae", {}, SHAPE).has_likelihood, path)
