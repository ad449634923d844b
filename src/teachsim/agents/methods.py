"""Learning methods: how a student turns its labelled data into a training loss.

A method is a function ``(model, x, y, ctx) -> loss`` over one mini-batch. ``ctx`` is a
:class:`TrainContext` with the batch's generator, the domain box and the method's
parameters. Any method combines with any protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TrainContext:
    """What a method may use besides the batch."""

    generator: torch.Generator
    box: tuple[np.ndarray, np.ndarray] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


def erm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """Empirical risk minimisation: cross-entropy on the labelled points."""
    return F.cross_entropy(model(x), y)
