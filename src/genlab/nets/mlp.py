"""Fully connected stacks, the seed document's networks."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}") from None


def mlp(sizes: Sequence[int], act: str = "relu", last_act: bool = False) -> nn.Sequential:
    """Linear layers of the given widths, ``act`` between them (and after the last if ``last_act``)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or last_act:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Sequential):
    """(B, C, H, W) -> flat features (B, ``out_features``): the image flattened, then fully connected
    layers of widths ``hidden``, each followed by ``act`` (the seed's fc1, fc2). The same contract
    as ``ConvEncoder``, so that a VAE reads either through the same posterior heads."""

    def __init__(self, image_shape, hidden: Sequence[int], act: str = "relu"):
        c, h, w = (int(s) for s in image_shape)
        super().__init__(*mlp([c * h * w, *hidden], act, last_act=True))
        self.out_features = int(hidden[-1])

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(1))


class MLPDecoder(nn.Sequential):
    """z (B, in_dim) -> (B, out_channels, H, W) unbounded outputs (logits or distribution parameters):
    fully connected layers of widths ``hidden`` with ``act`` between them, then a linear layer to every
    output value (the seed's fc4, fc5, fc6). The same contract as ``ConvDecoder``."""

    def __init__(self, in_dim: int, out_channels: int, image_shape, hidden: Sequence[int], act: str = "relu"):
        _, h, w = (int(s) for s in image_shape)
        super().__init__(*mlp([in_dim, *hidden, out_channels * h * w], act))
        self.out_shape = (int(out_channels), h, w)

    def forward(self, z: Tensor) -> Tensor:
        return super().forward(z).view(-1, *self.out_shape)
