"""Student models: torch modules from inputs to logits, initialised from an explicit generator."""

from __future__ import annotations

import math

import torch
from torch import nn


def _init(layer: nn.Linear | nn.Conv2d, generator: torch.Generator, std: float = 0.0) -> None:
    # PyTorch's default init (uniform, bound 1/sqrt(fan_in)), but drawn from our generator
    # so that the same seed gives the same student; std > 0 draws N(0, std^2).
    bound = 1.0 / math.sqrt(layer.weight[0].numel())
    with torch.no_grad():
        if std > 0:
            layer.weight.normal_(0.0, std, generator=generator)
        else:
            layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)


def mlp(dim: int, classes: int, *, hidden: list[int], init_std: float,
        generator: torch.Generator) -> nn.Module:
    """A ReLU MLP ``dim -> hidden... -> classes``; ``init_std`` > 0 sets the first layer's init."""
    sizes = [dim, *hidden, classes]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        _init(lin, generator, init_std if i == 0 else 0.0)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def linear(dim: int, classes: int, *, hidden: list[int], init_std: float,
           generator: torch.Generator) -> nn.Module:
    """A linear classifier ``dim -> classes`` (``hidden`` is ignored)."""
    return mlp(dim, classes, hidden=[], init_std=init_std, generator=generator)


class _Image(nn.Module):
    # Flat inputs (n, side*side) -> (n, 1, side, side), so images travel as plain vectors.
    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, 1, self.side, self.side)


def cnn(dim: int, classes: int, *, hidden: list[int], init_std: float,
        generator: torch.Generator) -> nn.Module:
    """A small CNN for square single-channel images given as flat vectors of ``dim = side^2``:
    conv 3x3 (16) -> ReLU -> conv 3x3 stride 2 (32) -> ReLU -> ``hidden`` dense layers -> classes.
    ``init_std`` > 0 sets the first layer's init, as for the mlp."""
    from .rules import check_square_images

    side = check_square_images(dim)
    convs = [nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, stride=2, padding=1)]
    for i, conv in enumerate(convs):
        _init(conv, generator, init_std if i == 0 else 0.0)
    flat = 32 * ((side + 1) // 2) ** 2
    sizes = [flat, *hidden, classes]
    dense: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = nn.Linear(a, b)
        _init(lin, generator)
        dense += [lin, nn.ReLU()]
    return nn.Sequential(_Image(side), convs[0], nn.ReLU(), convs[1], nn.ReLU(), nn.Flatten(), *dense[:-1])
