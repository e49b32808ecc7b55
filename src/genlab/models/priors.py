"""Latent priors beyond N(0, I): a Gaussian mixture fitted to the aggregate posterior.

A VAE trained with the standard-normal prior leaves "holes": regions where p(z) is high but
no training image's posterior q(z|x) puts mass, which decode to implausible images. Fitting a
density to the encoded training set after (or during) training and sampling from it instead
is the ex-post density estimation of Ghosh et al. 2020 ("From Variational to Deterministic
Autoencoders", section 4; a 10-component full-covariance GMM there) and, in spirit, the second
stage of Dai & Wipf 2019 ("Diagnosing and Enhancing VAE Models").

The mixture is a proper prior: ``log_prob`` is used by the VAE's importance-weighted
likelihood, so the reported NLL is that of the model genlab actually samples from,
p(x) = sum_k pi_k integral N(z; m_k, S_k) p(x|z) dz. The fit uses scikit-learn's
GaussianMixture (EM, k-means initialisation, fixed seed: deterministic for given weights).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import losses


class GaussianMixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; mean_k, L_k L_k^T), full covariances, stored as buffers (so the fit is
    saved in checkpoints). Until ``fit`` is called it is the standard normal N(0, I)."""

    def __init__(self, dim: int, components: int = 10, reg_covar: float = 1e-4):
        super().__init__()
        self.dim, self.components, self.reg_covar = int(dim), int(components), float(reg_covar)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._fitted = False
        self.register_buffer("log_weights", torch.full((components,), -math.log(components)))
        self.register_buffer("means", torch.zeros(components, dim))
        self.register_buffer("scale_tril", torch.eye(dim).repeat(components, 1, 1))

    @property
    def is_fitted(self) -> bool:
        """Read from a Python mirror of the ``fitted`` buffer (set by ``fit`` and by loading a
        state dict), so that log_prob and sample never read a GPU tensor back on the hot path."""
        return self._fitted

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "fitted"
        if key in state_dict:
            self._fitted = bool(state_dict[key])

    @torch.no_grad()
    def fit(self, z: Tensor, seed: int = 0) -> dict[str, float]:
        """Fit the mixture to latent codes z (N, dim) by EM; returns the mean log-density of z."""
        from sklearn.mixture import GaussianMixture

        data = z.detach().double().cpu().numpy()
        gmm = GaussianMixture(self.components, covariance_type="full", reg_covar=self.reg_covar,
                              max_iter=200, random_state=seed).fit(data)
        dev = self.means.device
        self.log_weights.copy_(torch.from_numpy(gmm.weights_).log().float().to(dev))
        self.means.copy_(torch.from_numpy(gmm.means_).float().to(dev))
        self.scale_tril.copy_(torch.linalg.cholesky(torch.from_numpy(gmm.covariances_)).float().to(dev))
        self.fitted.fill_(True)
        self._fitted = True
        return {"prior_log_density": float(gmm.score(data)), "prior_converged": float(gmm.converged_)}

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) for z of shape (..., dim), computed in float32 by triangular solves."""
        if not self.is_fitted:
            return losses.log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        flat = z.reshape(-1, self.dim)
        diff = flat.unsqueeze(0) - self.means.unsqueeze(1)  # (K, N, D)
        sol = torch.linalg.solve_triangular(self.scale_tril, diff.transpose(1, 2), upper=False)  # (K, D, N)
        maha = sol.pow(2).sum(1)  # (K, N)
        log_det = self.scale_tril.diagonal(dim1=1, dim2=2).log().sum(1, keepdim=True)  # (K, 1)
        comp = -0.5 * maha - log_det - 0.5 * self.dim * math.log(2 * math.pi)
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


PRIORS = ("normal", "gmm")


def check_prior(prior: str, components: int, fit_images: int, conditional: bool = False) -> None:
    """A clear error for prior settings that cannot work (``prior``, ``prior_components``, ``prior_fit_images``)."""
    from ..errors import GenlabError

    if prior not in PRIORS:
        raise GenlabError(f"unknown prior {prior!r}; choose one of: {', '.join(PRIORS)}")
    if prior == "gmm" and conditional:
        raise GenlabError("prior=gmm fits one mixture to every class's codes, but a conditional VAE's "
                          "prior is p(z|y): use prior=normal with conditional=true.")
    if prior == "gmm" and (components < 1 or fit_images < 2 * components):
        raise GenlabError("prior=gmm needs prior_components >= 1 and prior_fit_images >= 2 * components; "
                          f"got {components} and {fit_images}.")


class FittedPriorMixin:
    """The prior of a VAE whose config has ``prior`` ("normal" or "gmm"), ``prior_components`` and
    ``prior_fit_images``: N(0, I), or a ``GaussianMixturePrior`` (``self.prior``) that the Trainer
    refits to the encoded training set after every epoch through ``fit_prior``. Training always
    regularises q(z|x) towards N(0, I); the mixture replaces it for sampling and likelihoods.
    The class using it sets ``self.prior`` (None for the standard normal) and has ``encode``."""

    prior: GaussianMixturePrior | None

    def make_prior(self, z_dim: int) -> GaussianMixturePrior | None:
        c = self.config
        return GaussianMixturePrior(z_dim, c.prior_components) if c.prior == "gmm" else None

    @property
    def has_standard_normal_prior(self) -> bool:
        return self.prior is None or not self.prior.is_fitted

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if self.prior is None:
            return super().prior_sample(n, generator)
        return self.prior.sample(n, generator)

    def log_prior(self, z: Tensor) -> Tensor:
        return super().log_prior(z) if self.prior is None else self.prior.log_prob(z)

    @torch.no_grad()
    def fit_prior(self, images: Tensor, labels: Tensor | None = None, seed: int = 0,
                  batch_size: int = 1000) -> dict[str, float]:
        """prior="gmm": fit the mixture to one draw z ~ q(z|x) for each of ``prior_fit_images``
        training images (a subset drawn with ``seed``): a density estimate of the aggregate
        posterior, the prior that maximises the ELBO for the given encoder (Hoffman & Johnson
        2016). The Trainer calls this at the end of every epoch. No-op for the standard normal."""
        from .base import as_float_images, randn

        if self.prior is None:
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
        return self.prior.fit(torch.cat(codes), seed=seed)

    def elbo_with_prior(self, x: Tensor, mu: Tensor, logvar: Tensor, noise: Tensor, log_px_given_z) -> Tensor:
        """One-sample ELBO under a learned prior (no closed-form KL): log p(x|z) + log p(z) - log q(z|x)."""
        z = losses.reparameterize(mu, logvar, noise)
        return log_px_given_z(x, z) + self.log_prior(z) - losses.log_normal(z, mu, logvar)
