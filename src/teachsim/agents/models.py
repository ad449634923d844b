"""Student models: torch modules from inputs to logits, initialised from an explicit generator."""

from __future__ import annotations

import math

import torch
from torch import nn


def _init(layer: nn.Linear, generator: torch.Generator, std: float = 0.0) -> None:
    # PyTorch's default Linear init (uniform, bound 1/sqrt(fan_in)), but drawn from our
    # generator so that the same seed gives the same student; std > 0 draws N(0, std^2).
    bound = 1.0 / math.sqrt(layer.in_features)
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
