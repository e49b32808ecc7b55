"""The zoo's losses, checked against closed forms: adversarial pairs, penalties, likelihoods."""
import math

import pytest
import torch
import torch.nn.functional as F

from genlab.models import losses

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0, 1.5])


def test_every_loss_is_a_named_pair_in_the_table():
    assert {"minimax", "non-saturating", "least-squares", "wasserstein", "hinge"} <= set(losses.GAN_LOSSES)
    with pytest.raises(ValueError, match="hinge"):
        losses.gan_loss("hing")


def test_hinge_loss_at_chosen_outputs():
    d, g = losses.gan_loss("hinge")
    # D: mean(relu(1 - r)) = mean(0, 0.5, 2) = 5/6; mean(relu(1 + f)) = mean(0, 1, 2.5) = 7/6
    assert d(REAL, FAKE).item() == pytest.approx(2.0)
    assert g(FAKE).item() == pytest.approx(0.5 / 3)  # -mean(f) = -(-0.5 / 3)
    # a D beyond the margins on both sides has zero loss
    assert d(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -4.0])).item() == 0.0


def test_least_squares_loss_at_chosen_outputs():
    d, g = losses.gan_loss("least-squares")
    assert d(torch.ones(4), torch.zeros(4)).item() == 0.0  # the optimal D of the 0-1 coding
    assert d(torch.full((4,), 0.5), torch.full((4,), 0.5)).item() == pytest.approx(0.25)
    # 1/2 mean((r-1)^2) + 1/2 mean(f^2) = 1/2 * (1 + 0.25 + 4)/3 + 1/2 * (4 + 0 + 2.25)/3
    assert d(REAL, FAKE).item() == pytest.approx(0.5 * 5.25 / 3 + 0.5 * 6.25 / 3)
    assert g(torch.ones(3)).item() == 0.0
    assert g(FAKE).item() == pytest.approx(0.5 * (9.0 + 1.0 + 0.25) / 3)


def test_wasserstein_loss_is_the_difference_of_means():
    d, g = losses.gan_loss("wasserstein")
    assert d(REAL, FAKE).item() == pytest.approx(FAKE.mean().item() - REAL.mean().item())
    assert g(FAKE).item() == pytest.approx(-FAKE.mean().item())


def test_non_saturating_and_minimax_share_d_and_differ_in_g_by_the_logit():
    ns, mm = losses.gan_loss("non-saturating"), losses.gan_loss("minimax")
    assert ns.d_loss is mm.d_loss
    assert ns.d_loss(torch.zeros(5), torch.zeros(5)).item() == pytest.approx(2 * math.log(2))
    # softplus(-l) - softplus(l) = -l, so NS(l) = -mean(l) - minimax(l)
    logits = torch.linspace(-6, 6, 13)
    assert ns.g_loss(logits).item() == pytest.approx(-logits.mean().item() - mm.g_loss(logits).item(), abs=1e-6)
    # both push the fakes' logits up; NS strongly where D rejects them (l << 0), minimax hardly
    l_ns = torch.tensor([-6.0], requires_grad=True)
    l_mm = torch.tensor([-6.0], requires_grad=True)
    ns.g_loss(l_ns).backward()
    mm.g_loss(l_mm).backward()
    assert l_ns.grad.item() < 0 and l_mm.grad.item() < 0
    assert abs(l_ns.grad.item()) > 100 * abs(l_mm.grad.item())


def _linear_critic(w):
    return lambda x: x.flatten(1) @ w


@pytest.mark.parametrize("norm", [1.0, 3.0, 0.25])
def test_gradient_penalty_of_a_linear_critic_is_norm_minus_one_squared(norm):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, generator=g)
    w = (w * norm / w.norm()).requires_grad_(True)
    real, fake = torch.rand(6, 3, 2, 2, generator=g), torch.rand(6, 3, 2, 2, generator=g)
    gp = losses.gradient_penalty(_linear_critic(w), real, fake)
    assert gp.item() == pytest.approx((norm - 1.0) ** 2, abs=1e-5)  # ~0 for a 1-Lipschitz critic
    gp.backward()  # create_graph: the penalty trains the critic, d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    assert torch.allclose(w.grad, 2 * (norm - 1.0) * w.detach() / norm, atol=1e-5)


def test_gradient_penalty_is_taken_at_the_interpolates():
    # critic f(x) = ||x||^2 / 2 has gradient x, so the penalty is mean((||x_hat|| - 1)^2)
    real, fake = torch.rand(4, 1, 3, 3), torch.rand(4, 1, 3, 3)
    eps = torch.tensor([0.0, 0.25, 0.5, 1.0])
    gp = losses.gradient_penalty(lambda x: 0.5 * x.pow(2).flatten(1).sum(1), real, fake, eps)
    x_hat = eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake
    assert gp.item() == pytest.approx((x_hat.flatten(1).norm(dim=1) - 1).pow(2).mean().item(), rel=1e-5)


def test_r1_penalty_of_a_linear_critic_is_the_squared_norm():
    w = torch.randn(12)
    real = torch.rand(5, 3, 2, 2).requires_grad_(True)
    assert losses.r1_penalty(_linear_critic(w)(real), real).item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)


# ----------------------------------------------------------------------------- likelihoods

SCALES = [(0.3, -3.0), (0.0, -6.0), (1.0, -1.0), (0.5, 2.0), (0.9, -7.0), (-2.0, -2.0)]


# float32 cannot place a bin edge to 1e-6 of a pixel, so the sharpest scale (below the models'
# floor of log_scale = -7) is checked in float64 only
@pytest.mark.parametrize("mean,log_scale,dtype", [(m, s, d) for m, s in SCALES for d in (torch.float32, torch.float64)]
                         + [(0.5, -12.0, torch.float64)])
def test_discretized_logistic_probabilities_over_the_256_values_sum_to_one(mean, log_scale, dtype):
    x = (torch.arange(256, dtype=dtype) / 255).view(256, 1, 1, 1)  # every 8-bit value, one per "image"
    nll = losses.discretized_logistic_nll(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
    assert torch.isfinite(nll).all() and (nll >= 0).all()
    total = torch.exp(-nll.double()).sum().item()
    assert total == pytest.approx(1.0, abs=1e-5 if dtype == torch.float32 else 1e-10)


def test_discretized_logistic_bins_match_the_integral_of_the_density():
    mean, s = 0.42, math.exp(-3.5)
    for k in [0, 37, 107, 108, 200, 255]:
        x = torch.full((1, 1, 1, 1), k / 255, dtype=torch.float64)
        p = torch.exp(-losses.discretized_logistic_nll(x, torch.full_like(x, mean), torch.full_like(x, math.log(s))))
        lo = -50.0 if k == 0 else (k - 0.5) / 255  # the edge bins reach to -inf / +inf
        hi = 50.0 if k == 255 else (k + 0.5) / 255
        t = torch.linspace(lo, hi, 200_001, dtype=torch.float64)
        u = ((t - mean) / s).abs()  # the logistic density is symmetric; |u| keeps exp from overflowing
        pdf = torch.exp(-u) / (s * (1 + torch.exp(-u)) ** 2)
        assert p.item() == pytest.approx(torch.trapezoid(pdf, t).item(), rel=1e-4, abs=1e-12)


def test_discretized_logistic_is_certain_of_a_sharp_prediction_and_has_finite_gradients():
    x = torch.tensor([0.0, 3 / 255, 1.0]).view(1, 3, 1, 1)
    mean = x.clone().requires_grad_(True)
    log_scale = torch.full_like(x, -9.0, requires_grad=True)
    nll = losses.discretized_logistic_nll(x, mean, log_scale)
    assert nll.item() < 1e-3  # all three pixels on their bins: P ~ 1
    far = losses.discretized_logistic_nll(x, torch.full_like(x, 0.5), torch.full_like(x, -9.0))
    (nll + far).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()
    assert torch.isfinite(far).all() and far.item() > 100


def test_gaussian_nll_equals_torch_distributions():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.rand(4, 2, 3, 3, generator=g), torch.rand(4, 2, 3, 3, generator=g)
    logvar = torch.randn(4, 2, 3, 3, generator=g)
    expected = -torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(losses.gaussian_nll(x, mean, logvar), expected, atol=1e-4)
    fixed = torch.tensor(math.log(0.1 ** 2))  # a fixed sigma = 0.1 broadcasts over the pixels
    expected = -torch.distributions.Normal(mean, 0.1).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(losses.gaussian_nll(x, mean, fixed), expected, atol=1e-4)


def test_iwae_bound_of_equal_weights_is_their_value_and_grows_with_spread():
    w = torch.full((5, 3), -2.0)
    assert torch.allclose(losses.iwae_bound(w), torch.full((3,), -2.0))
    spread = torch.tensor([[-1.0], [-3.0]])
    assert losses.iwae_bound(spread).item() == pytest.approx(math.log((math.exp(-1) + math.exp(-3)) / 2))
    assert losses.iwae_bound(spread).item() > spread.mean().item()  # log-mean-exp >= mean (Jensen)


def test_bernoulli_nll_is_binary_cross_entropy():
    logits, x = torch.randn(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    assert torch.allclose(losses.bernoulli_nll(logits, x),
                          F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").flatten(1).sum(1),
                          atol=1e-5)
