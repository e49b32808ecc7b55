"""The seed document's training loops, as it writes them: the baseline genlab is measured against.

A ``torch.utils.data.DataLoader`` over a per-sample ``Dataset`` (each item converted to a
float tensor on access, as torchvision's ToTensor does), batch 128, shuffle=True; the
seed's VAE verbatim (784-512-256-64, BCE(sum) + KL, Adam 1e-3), and the seed's GAN loop
(steps 2a-2f: D step on real and fake, G step through the frozen D) with the same network
sizes as genlab's seed-gan so that both loops do the same arithmetic.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader, Dataset


class ImageDataset(Dataset):
    """One image per __getitem__, uint8 -> float in [0, 1], flattened: the seed's `data`."""

    def __init__(self, images_uint8: np.ndarray):
        self.images = images_uint8

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]).float().div(255).view(-1)


class VAE(nn.Module):  # the seed's section 4.1, verbatim
    def __init__(self, x_dim, h_dim1, h_dim2, z_dim):
        super(VAE, self).__init__()
        self.fc1 = nn.Linear(x_dim, h_dim1)
        self.fc2 = nn.Linear(h_dim1, h_dim2)
        self.fc31 = nn.Linear(h_dim2, z_dim)
        self.fc32 = nn.Linear(h_dim2, z_dim)
        self.fc4 = nn.Linear(z_dim, h_dim2)
        self.fc5 = nn.Linear(h_dim2, h_dim1)
        self.fc6 = nn.Linear(h_dim1, x_dim)

    def encode(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.fc2(h))
        return self.fc31(h), self.fc32(h)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h = torch.relu(self.fc4(z))
        h = torch.relu(self.fc5(h))
        return torch.sigmoid(self.fc6(h))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def train_vae(data: Dataset, epochs: int = 10, batch_size: int = 128) -> list[float]:
    """The seed's VAE loop. Returns the last batch's loss per epoch (what the seed prints)."""
    model = VAE(784, 512, 256, 64)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    data_loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    printed = []
    for epoch in range(epochs):
        for batch in data_loader:
            x = batch
            x_hat, mu, logvar = model(x)
            recon_loss = nn.functional.binary_cross_entropy(x_hat, x.view(-1, 784), reduction="sum")
            kl_loss = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = recon_loss + kl_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        printed.append(loss.item())
    return printed


class Generator(nn.Module):  # the seed's section 4.2
    def __init__(self, z_dim, h_dim, x_dim):
        super(Generator, self).__init__()
        self.fc1 = nn.Linear(z_dim, h_dim)
        self.fc2 = nn.Linear(h_dim, h_dim)
        self.fc3 = nn.Linear(h_dim, x_dim)

    def forward(self, z):
        h = torch.relu(self.fc1(z))
        h = torch.relu(self.fc2(h))
        return torch.sigmoid(self.fc3(h))


class Discriminator(nn.Module):  # the seed's text is cut here; x -> h -> h -> probability
    def __init__(self, x_dim, h_dim):
        super(Discriminator, self).__init__()
        self.fc1 = nn.Linear(x_dim, h_dim)
        self.fc2 = nn.Linear(h_dim, h_dim)
        self.fc3 = nn.Linear(h_dim, 1)

    def forward(self, x):
        h = nn.functional.leaky_relu(self.fc1(x), 0.2)
        h = nn.functional.leaky_relu(self.fc2(h), 0.2)
        return torch.sigmoid(self.fc3(h))


def train_gan(data: Dataset, epochs: int = 10, batch_size: int = 128, z_dim: int = 100, h_dim: int = 256):
    """The seed's steps 2a-2f with BCE on probabilities, as the seed's GAN section writes them."""
    G, D = Generator(z_dim, h_dim, 784), Discriminator(784, h_dim)
    opt_g = optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    data_loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    for epoch in range(epochs):
        for x in data_loader:
            n = x.shape[0]
            ones, zeros = torch.ones(n, 1), torch.zeros(n, 1)
            fake = G(torch.randn(n, z_dim))                                  # 2a
            d_loss = bce(D(x), ones) + bce(D(fake.detach()), zeros)          # 2b
            opt_d.zero_grad(); d_loss.backward(); opt_d.step()               # 2c
            for p in D.parameters():                                         # 2d
                p.requires_grad_(False)
            fake = G(torch.randn(n, z_dim))
            g_loss = bce(D(fake), ones)                                      # 2e (non-saturating)
            opt_g.zero_grad(); g_loss.backward(); opt_g.step()               # 2f
            for p in D.parameters():
                p.requires_grad_(True)
    return G
