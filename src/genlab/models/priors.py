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
