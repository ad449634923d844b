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

from . import rules
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

    PARAMS = rules.SPHERES

    name = "spheres"

    def __init__(self, seed: int, *, dim: int = 50, outer_radius: float = 1.3, gamma: float = 0.05):
        rules.spheres(dim=dim, outer_radius=outer_radius, gamma=gamma)
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
