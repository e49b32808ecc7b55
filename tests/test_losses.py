"""The math of the seed document, checked against closed forms."""
import math

import torch

from genlab.models import losses


def test_kl_of_standard_normal_to_itself_is_zero():
    mu, logvar = torch.zeros(5, 64), torch.zeros(5, 64)
    assert torch.allclose(losses.gaussian_kl(mu, logvar), torch.zeros(5))


def test_kl_matches_monte_carlo_estimate():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([[0.7, -1.2, 0.3]])
    logvar = torch.tensor([[-0.5, 0.4, -1.5]])
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(400_000, 3, generator=g)
    log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    mc = (log_q - log_p).mean()
    closed = losses.gaussian_kl(mu, logvar)[0]
    assert closed > 0.5  # far from zero, so the comparison means something
    assert abs(mc - closed) < 0.02


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(4, 8), torch.randn(4, 8)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(8), torch.ones(8))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(losses.gaussian_kl(mu, logvar), expected, atol=1e-5)


def test_gradients_flow_through_the_reparameterization():
    mu = torch.randn(3, 4, requires_grad=True)
    logvar = torch.randn(3, 4, requires_grad=True)
    eps = torch.randn(3, 4)
    z = losses.reparameterize(mu, logvar, eps)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones(3, 4))  # dz/dmu = 1
    assert torch.allclose(logvar.grad, 0.5 * eps * (0.5 * logvar.detach()).exp())  # dz/dlogvar = eps*sigma/2


def test_reparameterized_samples_have_the_posterior_moments():
    mu, logvar = torch.full((200_000, 1), 2.0), torch.full((200_000, 1), math.log(0.25))
    z = losses.reparameterize(mu, logvar)
    assert abs(z.mean() - 2.0) < 0.01 and abs(z.std() - 0.5) < 0.01


def test_bernoulli_nll_equals_the_seeds_binary_cross_entropy_sum():
    logits = torch.randn(6, 1, 8, 8)
    x = torch.rand(6, 1, 8, 8)
    seed_bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum")
    assert torch.allclose(losses.bernoulli_nll(logits, x).sum(), seed_bce, rtol=1e-5)


def test_discriminator_loss_at_one_half_is_two_log_two():
    zeros = torch.zeros(16)  # logit 0 <=> D = 1/2
    assert math.isclose(losses.minimax_d_loss(zeros, zeros).item(), 2 * math.log(2), rel_tol=1e-6)


def test_discriminator_loss_is_minus_the_value_function():
    real, fake = torch.randn(32), torch.randn(32)
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    value = torch.log(d_real).mean() + torch.log(1 - d_fake).mean()  # V(D, G), eq. 1
    assert torch.allclose(losses.minimax_d_loss(real, fake), -value, atol=1e-5)


def test_generator_losses_at_known_logits():
    fake = torch.tensor([0.0, 2.0, -3.0])
    d = torch.sigmoid(fake)
    assert torch.allclose(losses.minimax_g_loss(fake), torch.log(1 - d).mean(), atol=1e-6)
    assert torch.allclose(losses.non_saturating_g_loss(fake), -torch.log(d).mean(), atol=1e-6)


def test_non_saturating_loss_keeps_gradient_where_minimax_vanishes():
    # D confidently rejects the fakes (D(G(z)) ~ 5e-5): the seed's minimax G loss has ~no gradient
    fake = torch.full((8,), -10.0, requires_grad=True)
    losses.minimax_g_loss(fake).backward()
    g_minimax = fake.grad.abs().mean().item()
    fake.grad = None
    losses.non_saturating_g_loss(fake).backward()
    g_ns = fake.grad.abs().mean().item()
    assert g_minimax < 1e-4 < 0.1 < g_ns


def test_gan_losses_are_selected_by_name():
    assert set(losses.GAN_LOSSES) >= {"minimax", "non-saturating"}
    try:
        losses.gan_loss("nope")
    except ValueError as e:
        assert "minimax" in str(e)
    else:
        raise AssertionError("unknown loss name accepted")
