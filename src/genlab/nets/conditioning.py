"""Conditioning on a class label: one-hot inputs, and the projection discriminator head.

A conditional generator (or VAE decoder) reads [z, onehot(y)] (Mirza & Osindero 2014 feed y to
both networks; concatenation is the simplest form that is correct). A conditional
discriminator uses the projection of Miyato & Koyama 2018 (eq. 3):
    logit(x, y) = psi(phi(x)) + <embed(y), phi(x)>
where phi(x) are the discriminator's features and psi a linear layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import GenlabError


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """int64 labels (B,) -> float one-hot rows (B, num_classes)."""
    return F.one_hot(labels, num_classes).float()


def cycle_labels(n: int, num_classes: int, device: torch.device) -> Tensor:
    """0, 1, ..., K-1, 0, 1, ...: ``n`` labels covering every class (for sample grids)."""
    return torch.arange(n, device=device) % num_classes


def require_labels(labels: Tensor | None, what: str) -> Tensor:
    """The labels of a conditional model's batch, or an error saying why there are none."""
    if labels is None:
        raise GenlabError(f"{what} is class-conditional and needs labels; this data has none. "
                          "Train it on a labelled dataset, or turn conditional off.")
    return labels


class ProjectionHead(nn.Module):
    """Discriminator output from features phi(x) (B, F): psi(phi(x)) [+ <embed(y), phi(x)>].

    With ``num_classes`` = 0 it is a plain linear logit; otherwise the projection term of
    Miyato & Koyama 2018, eq. 3 is added (y is required).
    """

    def __init__(self, in_features: int, num_classes: int = 0):
        super().__init__()
        self.psi = nn.Linear(in_features, 1)
        self.embed = nn.Embedding(num_classes, in_features) if num_classes > 0 else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        logit = self.psi(features).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * features).sum(1)  # <embed(y), phi(x)>
        return logit
