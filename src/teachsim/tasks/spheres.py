"""``spheres``: two concentric spheres in R^d (Gilmer et al. 2018, "Adversarial Spheres").

The data lie on the sphere of radius 1 (class 0) and the sphere of radius
``outer_radius`` (class 1), half on each. The teacher labels by the norm, with its
boundary the sphere halfway between, and abstains within ``gamma`` of it. Nothing about
the label changes along a sphere, but there is no fixed direction it ignores either, so
the task states no linear invariances. The broad distribution draws the radius uniformly
over the gap and as far again on each side, covering the band's surroundings.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ..schema import Float, Int
from .base import Distribution, Task


class _Shells(Distribution):
    """Uniform directions; the radius from ``radius(n, rng)``."""

    def __init__(self, dim: int, radius):
        self.dim, self._radius = dim, radius

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        g = rng.standard_normal((n, self.dim))
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return (g * self._radius(n, rng)[:, None]).astype(np.float32)


class Spheres(Task):
    """Two concentric spheres; the teacher labels by the norm."""

    PARAMS = {
        "dim": Int(50, lo=2, doc="ambient dimension d"),
        "outer_radius": Float(1.3, lo=0.0, doc="radius of the outer sphere (the inner one has radius 1)"),
        "gamma": Float(0.05, lo=0.0, doc="teacher abstains within this distance of the middle sphere"),
    }

    name = "spheres"

    def __init__(self, seed: int, *, dim: int = 50, outer_radius: float = 1.3, gamma: float = 0.05):
        if outer_radius <= 1.0:
            raise ConfigError.expected("task.outer_radius", "a number > 1 (the inner sphere has radius 1)",
                                       outer_radius)
        # with a little room: (1.3 - 1) / 2 is 0.15000000000000002 in floats, and a gamma of
        # exactly half the gap abstains on the data (float32 norms land on either side)
        if gamma >= (outer_radius - 1) / 2 * (1 - 1e-6):
            raise ConfigError("task.gamma", f"expected less than half the gap, {(outer_radius - 1) / 2:g} "
                              f"(else the teacher abstains on the data), got {gamma}")
        self.dim, self.classes, self.gamma = dim, 2, gamma
        self.outer = outer_radius
        self.middle = (1.0 + outer_radius) / 2
        gap = outer_radius - 1.0
        self.data = _Shells(dim, lambda n, rng: np.where(rng.uniform(size=n) < 0.5, 1.0, outer_radius))
        self.broad = _Shells(dim, lambda n, rng: rng.uniform(max(0.0, 1.0 - gap), outer_radius + gap, size=n))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # Half the signed distance to the middle sphere per class: the top-two gap is the
        # distance itself and its gradient has norm 1, so the margin is exact.
        r = x.flatten(1).norm(dim=1)
        d = (r - self.middle) / 2
        return torch.stack([-d, d], dim=1)
