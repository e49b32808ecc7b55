"""A VAE's latent prior as one object (``Prior``): N(0, I) (``StandardNormalPrior``), a Gaussian mixture
fitted to the aggregate posterior (``GaussianMixturePrior``) or one trained with the model
(``LearnedMixturePrior``); ``LatentPriorMixin`` is the VAE's side (its prior interface, the refit hooks).

A VAE trained with the standard-normal prior leaves "holes": regions where p(z) is high but
no training image's posterior q(z|x) puts mass, which decode to implausible images. Fitting a
density to the encoded training set after (or during) training and sampling from it instead
is the ex-post density estimation of Ghosh et al. 2020 ("From Variational to Deterministic
Autoencoders", section 4; a 10-component full-covariance GMM there) and, in spirit, the second
stage of Dai & Wipf 2019 ("Diagnosing and Enhancing VAE Models").

The mixture is a proper prior: ``log_prob`` is used by the VAE's importance-weighted
likelihood, so the reported NLL is that of the model genlab actually samples from,
p(x) = sum_k pi_k integral N(z; m_k, S_k) p(x|z) dz. The fit is EM as scikit-learn's
GaussianMixture does it (k-means initialisation, fixed seed: deterministic for given weights),
written in torch because it runs after every epoch (``fit_gaussian_mixture``; tested against
scikit-learn's).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import GenlabError
from . import losses
from .base import as_float_images, randn


def _component_log_probs(z: Tensor, means: Tensor, chol: Tensor) -> Tensor:
    """log N(z_n; mean_k, L_k L_k^T) as a (K, N) tensor. With P_k = L_k^-1 (small, D x D) the
    Mahalanobis term is |(z - mean_k) P_k^T|^2: one matrix product per component."""
    d = z.shape[1]
    eye = torch.eye(d, dtype=z.dtype, device=z.device).expand_as(chol)
    inv = torch.linalg.solve_triangular(chol, eye, upper=False)  # (K, D, D)
    log_det = chol.diagonal(dim1=1, dim2=2).log().sum(1)  # (K,)
    return torch.stack([-0.5 * ((z - m) @ p.T).pow(2).sum(1) - ld - 0.5 * d * math.log(2 * math.pi)
                        for m, p, ld in zip(means, inv, log_det)])


def _m_step(z: Tensor, resp: Tensor, reg_covar: float) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and full covariances (+ reg_covar on the diagonal) from responsibilities (N, K)."""
    n, d = z.shape
    nk = resp.sum(0) + 10 * torch.finfo(z.dtype).eps
    means = (resp.T @ z) / nk[:, None]
    root = resp.sqrt()
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    covs = []
    for k in range(resp.shape[1]):
        w = root[:, k, None] * (z - means[k])  # sum_n r_nk (z_n - m_k)(z_n - m_k)^T = w^T w
        covs.append(w.T @ w / nk[k] + reg_covar * eye)
    return nk / n, means, torch.stack(covs)


def _kmeans_assign(z: Tensor, k: int, gen: torch.Generator, iters: int = 10) -> Tensor:
    """Cluster labels (N,) by k-means++ seeding (Arthur & Vassilvitskii 2007) and ``iters`` Lloyd steps."""
    n = z.shape[0]
    centers = [z[torch.randint(n, (1,), generator=gen)].squeeze(0)]
    d2 = (z - centers[0]).pow(2).sum(1)
    for _ in range(1, k):
        idx = torch.multinomial((d2 / d2.sum()).float(), 1, generator=gen)
        centers.append(z[idx].squeeze(0))
        d2 = torch.minimum(d2, (z - centers[-1]).pow(2).sum(1))
    c = torch.stack(centers)
    for _ in range(iters):
        labels = torch.cdist(z, c).argmin(1)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, labels, z)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
    return torch.cdist(z, c).argmin(1)


@torch.no_grad()
def fit_gaussian_mixture(z: Tensor, components: int, reg_covar: float = 1e-4, seed: int = 0, max_iter: int = 200,
                         tol: float = 1e-3, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, float, bool]:
    """Maximum-likelihood Gaussian mixture with full covariances by EM (Dempster et al. 1977), the
    algorithm of scikit-learn's GaussianMixture (k-means initialisation, ``reg_covar`` added to each
    covariance's diagonal, stop when the mean log-likelihood gains less than ``tol``), written in
    torch, its products in ``dtype``: 20 components fitted to 20,000 codes of 32 dimensions
    take about a second on two cores in float32 against about 8 s for scikit-learn, which matters
    because the Trainer refits after every epoch. Deterministic for given z and seed. Returns
    (weights, means, covariances, mean log-density of z, converged), in float64."""
    z = z.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    resp = torch.nn.functional.one_hot(_kmeans_assign(z, components, gen), components).to(dtype)
    weights, means, covs = _m_step(z, resp, reg_covar)
    score, converged = -math.inf, False
    for _ in range(max_iter):
        log_p = _component_log_probs(z, means, torch.linalg.cholesky(covs)) + weights.log()[:, None]  # (K, N)
        log_norm = torch.logsumexp(log_p, 0)
        new_score = float(log_norm.mean())
        resp = (log_p - log_norm).exp().T
        weights, means, covs = _m_step(z, resp, reg_covar)
        if abs(new_score - score) < tol:
            converged = True
            score = new_score
            break
        score = new_score
    weights, means, covs = weights.double() / weights.double().sum(), means.double(), covs.double()
    z = z.double()
    log_norm = torch.logsumexp(_component_log_probs(z, means, torch.linalg.cholesky(covs)) + weights.log()[:, None], 0)
    return weights, means, covs, float(log_norm.mean()), converged


class Prior(nn.Module):
    """A VAE's latent prior p(z), one object whatever the kind, so that the VAE never branches on it.

    ``log_prob(z)``: log p(z) over the last dimension (importance-weighted likelihoods, the one-sample
    ELBO); ``sample(n, generator)``: n codes; ``kl(z, mu, logvar)``: the per-image KL term the training
    objective uses for q(z|x) = N(mu, diag(exp(logvar))) and its sample z; ``is_standard_normal``:
    whether p(z) is N(0, I) now (the closed-form KL of the evaluation, the truncation trick: the one
    place that question is answered); ``refit(z, seed)``: fit the prior to encoded codes z, returning
    figures for the log, and ``refit_due(epoch, last)``: whether the Trainer's epoch end should. The
    base class's refit is never due and does nothing; ``fitted_to_codes`` says whether a subclass's is
    (so that the VAE encodes the training set only for a prior that uses it)."""

    fitted_to_codes: ClassVar[bool] = False

    @property
    def is_standard_normal(self) -> bool:
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def kl(self, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(q(z|x) || N(0, I)) in closed form (Kingma & Welling 2014, appendix B): the training term of
        every prior that is N(0, I) while the model trains."""
        return losses.gaussian_kl(mu, logvar)

    def elbo_kl(self, mu: Tensor, logvar: Tensor, log_qz: Tensor, log_pz: Tensor) -> Tensor:
        """The KL term of the model's ELBO, KL(q(z|x) || p(z)) against the prior the model samples from now
        (not the training term ``kl``, which for a prior fitted after training is the one to N(0, I)): in
        closed form while p(z) is N(0, I) (shape (B,)), else the Monte-Carlo estimate log q(z|x) - log p(z)
        at the draws whose log densities are ``log_qz`` and ``log_pz`` (shape (..., B))."""
        if self.is_standard_normal:
            return losses.gaussian_kl(mu, logvar)
        return log_qz - log_pz

    def refit(self, z: Tensor, seed: int = 0) -> dict[str, float]:
        """Fit the prior to latent codes z (N, dim); figures for the epoch's log line ({} for none)."""
        return {}

    def refit_due(self, epoch: int, last: bool) -> bool:
        """Whether the Trainer's hook after epoch ``epoch`` (``last``: no epoch follows) should refit."""
        return False


class StandardNormalPrior(Prior):
    """p(z) = N(0, I) (prior="normal"). No parameters and no state-dict entries: a model with it saves
    exactly the tensors of its networks. A zero-size buffer kept out of the state dict follows the
    model's device, so that ``sample`` draws where the model lives."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    @property
    def is_standard_normal(self) -> bool:
        return True

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z.pow(2) + math.log(2.0 * math.pi)).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws; from ``generator`` (on its own device) when given, as every genlab sampler."""
        return randn((n, self.dim), generator, self._device_anchor.device)


class GaussianMixturePrior(Prior):
    """p(z) = sum_k pi_k N(z; mean_k, L_k L_k^T), full covariances, stored as buffers (so the fit is
    saved in checkpoints), fitted to the encoded training set (prior="gmm"). Until ``refit`` is called
    it is the standard normal N(0, I). Training always regularises q(z|x) towards N(0, I) (``kl``, the
    base class's); the mixture replaces it for sampling and likelihoods, so how often it is refitted
    (``fit_every`` epochs) changes no weight: only what the epochs between fits sample from."""

    fitted_to_codes = True

    def __init__(self, dim: int, components: int = 10, reg_covar: float = 1e-4, fit_every: int = 1):
        super().__init__()
        self.dim, self.components, self.reg_covar = int(dim), int(components), float(reg_covar)
        self.fit_every = int(fit_every)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._fitted = False
        self.register_buffer("log_weights", torch.full((components,), -math.log(components)))
        self.register_buffer("means", torch.zeros(components, dim))
        self.register_buffer("scale_tril", torch.eye(dim).repeat(components, 1, 1))

    @property
    def is_fitted(self) -> bool:
        """Read from a Python mirror of the ``fitted`` buffer (set by ``refit`` and by loading a
        state dict), so that log_prob and sample never read a GPU tensor back on the hot path."""
        return self._fitted

    @property
    def is_standard_normal(self) -> bool:
        return not self._fitted

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "fitted"
        if key in state_dict:
            self._fitted = bool(state_dict[key])

    def refit_due(self, epoch: int, last: bool) -> bool:
        """After every ``fit_every``-th epoch and after the last."""
        return last or epoch % self.fit_every == 0

    @torch.no_grad()
    def refit(self, z: Tensor, seed: int = 0) -> dict[str, float]:
        """Fit the mixture to latent codes z (N, dim) by EM (``fit_gaussian_mixture``); returns the mean
        log-density of z under the fit and whether EM converged."""
        weights, means, covs, score, converged = fit_gaussian_mixture(
            z.detach().cpu(), self.components, reg_covar=self.reg_covar, seed=seed)
        dev = self.means.device
        self.log_weights.copy_(weights.log().float().to(dev))
        self.means.copy_(means.float().to(dev))
        self.scale_tril.copy_(torch.linalg.cholesky(covs).float().to(dev))
        self.fitted.fill_(True)
        self._fitted = True
        return {"prior_log_density": score, "prior_converged": float(converged)}

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) for z of shape (..., dim), computed in float32 (``_component_log_probs``, as the fit)."""
        if not self.is_fitted:
            return losses.log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        flat = losses.fp32(z.reshape(-1, self.dim))
        comp = _component_log_probs(flat, self.means, self.scale_tril)  # (K, N)
        return torch.logsumexp(comp + self.log_weights.unsqueeze(1), dim=0).view(z.shape[:-1])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws; from ``generator`` (on its own device) when given, as every genlab sampler."""
        dev = self.means.device
        gdev = generator.device if generator is not None else dev
        eps = torch.randn((n, self.dim), generator=generator, device=gdev).to(dev)
        if not self.is_fitted:
            return eps
        k = torch.multinomial(self.log_weights.exp().to(gdev), n, replacement=True, generator=generator).to(dev)
        return self.means[k] + (self.scale_tril[k] @ eps.unsqueeze(-1)).squeeze(-1)


class LearnedMixturePrior(Prior):
    """p(z) = sum_k pi_k N(z; mean_k, diag(exp(logvar_k))), trained with the VAE: the mixture-of-Gaussians
    prior of Tomczak & Welling 2018 ("VAE with a VampPrior", section 3). The KL term is then estimated
    with the posterior's sample, log q(z|x) - log p(z), and the encoder is no longer pulled towards
    N(0, I) but towards a density that can follow the aggregate posterior, so that a code carries
    more information for the same KL cost. Means start spread as N(0, I) draws, variances at 1,
    weights equal; all three are parameters. It is a prior in use from the first step, never N(0, I),
    and there is nothing to fit ex post (``refit`` does nothing)."""

    def __init__(self, dim: int, components: int):
        super().__init__()
        self.dim, self.components = int(dim), int(components)
        self.means = nn.Parameter(torch.randn(components, dim))
        self.logvars = nn.Parameter(torch.zeros(components, dim))
        self.logits = nn.Parameter(torch.zeros(components))

    @property
    def is_standard_normal(self) -> bool:
        return False

    def kl(self, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """No closed form under a mixture: the one-sample estimate log q(z|x) - log p(z) at the posterior's own z."""
        return losses.log_normal(z, mu, logvar) - self.log_prob(z)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) for z of shape (..., dim), in float32. The Mahalanobis terms of all N x K pairs come
        from two matrix products, sum_d (z_d - m_kd)^2 / v_kd = z^2 @ (1/v)^T - 2 z @ (m/v)^T + sum_d m_kd^2 / v_kd,
        instead of an (N, K, D) tensor: the prior's share of an MLP VAE's step falls by half (its
        forward and backward took 13 % of a batch-128 step with 100 components)."""
        flat = losses.fp32(z.reshape(-1, self.dim))
        means, logvars = self.means.float(), self.logvars.float()
        inv_var = torch.exp(-logvars)  # (K, D)
        quad = (flat * flat) @ inv_var.T - 2.0 * flat @ (means * inv_var).T + (means * means * inv_var).sum(1)
        comp = -0.5 * (quad + logvars.sum(1) + self.dim * math.log(2 * math.pi))  # (N, K)
        return torch.logsumexp(comp + torch.log_softmax(self.logits.float(), 0), dim=1).view(z.shape[:-1])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws; from ``generator`` (on its own device) when given, as every genlab sampler."""
        dev = self.means.device
        gdev = generator.device if generator is not None else dev
        eps = torch.randn((n, self.dim), generator=generator, device=gdev).to(dev)
        k = torch.multinomial(torch.softmax(self.logits.detach().float(), 0).to(gdev), n, replacement=True,
                              generator=generator).to(dev)
        return self.means[k] + (0.5 * self.logvars[k]).exp() * eps


PRIORS = ("normal", "gmm", "mog")


def check_prior(prior: str, components: int, fit_images: int, conditional: bool = False, fit_every: int = 1) -> None:
    """A clear error for prior settings that cannot work (``prior``, ``prior_components``, ``prior_fit_images``,
    ``prior_fit_every``)."""
    if fit_every < 1:
        raise GenlabError(f"prior_fit_every is the number of epochs between fits of the mixture prior and must be "
                          f"at least 1; got {fit_every}.")
    if prior not in PRIORS:
        raise GenlabError(f"unknown prior {prior!r}; choose one of: {', '.join(PRIORS)}")
    if prior == "mog" and conditional:
        raise GenlabError("prior=mog is one mixture for every class, but a conditional VAE's prior is p(z|y): "
                          "use prior=normal with conditional=true.")
    if prior == "mog" and components < 1:
        raise GenlabError(f"prior=mog needs prior_components >= 1; got {components}.")
    if prior == "gmm" and conditional:
        raise GenlabError("prior=gmm fits one mixture to every class's codes, but a conditional VAE's "
                          "prior is p(z|y): use prior=normal with conditional=true.")
    if prior == "gmm" and (components < 1 or fit_images < 2 * components):
        raise GenlabError("prior=gmm needs prior_components >= 1 and prior_fit_images >= 2 * components; "
                          f"got {components} and {fit_images}.")




def make_prior(name: str, dim: int, components: int, fit_every: int = 1) -> Prior:
    """The prior named by a VAE config's ``prior`` ("normal", "gmm", "mog"; ``check_prior`` has vetted it)."""
    if name == "mog":
        return LearnedMixturePrior(dim, components)
    if name == "gmm":
        return GaussianMixturePrior(dim, components, fit_every=fit_every)
    return StandardNormalPrior(dim)


class LatentPriorMixin:
    """The VAE's side of its prior (``self.prior``, a ``Prior``; its config has ``prior``, ``prior_components``,
    ``prior_fit_images`` and ``prior_fit_every``): the model's prior interface delegates to it, and the
    Trainer's lifecycle hooks refit it to the encoded training set where it is fitted to codes: after every
    ``prior_fit_every``-th epoch, after the last (``on_epoch_end``) and at every stop (``on_stop``).
    The class using it sets ``self.prior`` (``make_prior``) and has ``encode``."""

    prior: Prior

    def make_prior(self, z_dim: int) -> Prior:
        c = self.config
        return make_prior(c.prior, z_dim, c.prior_components, c.prior_fit_every)

    def kl_to_prior(self, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """The training KL term per image (``Prior.kl``)."""
        return self.prior.kl(z, mu, logvar)

    def elbo_kl(self, mu: Tensor, logvar: Tensor, log_qz: Tensor, log_pz: Tensor) -> Tensor:
        """The ELBO's KL term against the prior sampled from (``Prior.elbo_kl``)."""
        return self.prior.elbo_kl(mu, logvar, log_qz, log_pz)

    @property
    def has_standard_normal_prior(self) -> bool:
        return self.prior.is_standard_normal

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.prior.sample(n, generator)

    def log_prior(self, z: Tensor) -> Tensor:
        return self.prior.log_prob(z)

    @torch.no_grad()
    def fit_prior(self, images: Tensor, labels: Tensor | None = None, seed: int = 0,
                  batch_size: int = 1000) -> dict[str, float]:
        """Refit a prior fitted to codes (prior="gmm") to one draw z ~ q(z|x) for each of ``prior_fit_images``
        training images (a subset drawn with ``seed``): a density estimate of the aggregate
        posterior, the prior that maximises the ELBO for the given encoder (Hoffman & Johnson
        2016). The Trainer's hooks (``on_epoch_end``, ``on_stop``) call it. No-op for other priors."""
        if not self.prior.fitted_to_codes:
            return {}
        was_training = self.training
        self.eval()
        n = images.shape[0]
        m = min(n, self.config.prior_fit_images)
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=gen)[:m].to(images.device)
        codes = []
        for i in range(0, m, batch_size):
            mu, logvar = self.encode(as_float_images(images[idx[i:i + batch_size]]).to(self.device))
            codes.append(losses.reparameterize(mu, logvar, randn(tuple(mu.shape), gen, mu.device)))
        self.train(was_training)
        return self.prior.refit(torch.cat(codes), seed=seed)

    def on_epoch_end(self, train_images: Tensor, train_labels: Tensor | None, *, epoch: int, last: bool,
                     seed: int) -> dict[str, float]:
        """The Trainer's epoch-end hook: refit the prior when it says a refit is due (``Prior.refit_due``);
        returns the fit's figures for the epoch's log line."""
        if not self.prior.refit_due(epoch, last):
            return {}
        return self.fit_prior(train_images, train_labels, seed=seed)

    def on_stop(self, train_images: Tensor, train_labels: Tensor | None, *, seed: int) -> None:
        """The Trainer's hook for a stop inside an epoch: refit, so the saved prior matches the saved weights."""
        self.fit_prior(train_images, train_labels, seed=seed)
