"""``hidden-feature``: the paper's world (Ma & Ying, arXiv 2012.07233).

Inputs live in R^dim; the data lie on the first ``manifold_dim`` coordinates (the
others are 0, or noise of std ``off_std``). The teacher decides from the on-manifold
coordinates only, so the data say nothing about the directions it ignores; the broad
distribution draws those directions with std ``broad_std``.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import seeding
from . import rules
from .base import Distribution, Task


class _Manifold(Distribution):
    def __init__(self, dim: int, k: int, off_std: float):
        self.dim, self.k, self.off_std = dim, k, off_std

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = np.zeros((n, self.dim), np.float32)
        x[:, : self.k] = rng.standard_normal((n, self.k))
        if self.off_std > 0 and self.dim > self.k:
            x[:, self.k:] = self.off_std * rng.standard_normal((n, self.dim - self.k))
        return x


class HiddenFeature(Task):
    """Data on a k-dim subspace of R^d; a teacher that sees only that subspace."""

    PARAMS = rules.HIDDEN_FEATURE

    name = "hidden-feature"

    def __init__(self, seed: int, *, dim: int = 50, manifold_dim: int = 2, classes: int = 2,
                 gamma: float = 0.1, off_std: float = 0.0, broad_std: float = 2.0,
                 teacher: str = "linear"):
        rules.hidden_feature(dim=dim, manifold_dim=manifold_dim, classes=classes, teacher=teacher)
        self.dim, self.k, self.classes, self.gamma = dim, manifold_dim, classes, gamma
        self.data = _Manifold(dim, manifold_dim, off_std)
        self.broad = _Manifold(dim, manifold_dim, broad_std)
        rng = seeding.rng(seed, "task", self.name)
        self.kind = teacher
        if teacher == "linear":
            self._W = torch.as_tensor(self._linear_rows(rng), dtype=torch.float32)
        else:
            width = 16
            a = rng.standard_normal((manifold_dim, width)) / np.sqrt(manifold_dim)
            self._A = torch.as_tensor(a, dtype=torch.float32)
            self._c = torch.as_tensor(0.5 * rng.standard_normal(width), dtype=torch.float32)
            self._B = torch.as_tensor(rng.standard_normal((width, classes)) * 2 / np.sqrt(width), dtype=torch.float32)
            self._b = torch.zeros(classes)
            self._balance(rng)

    def _linear_rows(self, rng: np.random.Generator) -> np.ndarray:
        # Class directions evenly spread on a random plane of the manifold: every class
        # gets the same share of the data, and for 2 classes this is sign(w . z).
        q, _ = np.linalg.qr(rng.standard_normal((self.k, max(2, self.k))))
        u = q[:, 0]
        v = q[:, 1] if self.k >= 2 else np.zeros(self.k)
        angles = 2 * np.pi * np.arange(self.classes) / self.classes + rng.uniform(0, 2 * np.pi)
        if self.classes == 2:
            return np.stack([u, -u])
        return np.stack([np.cos(a) * u + np.sin(a) * v for a in angles])

    def _balance(self, rng: np.random.Generator) -> None:
        # A random network favours some classes; shift its biases until each class holds a
        # fair share of the data distribution. Small damped steps: large ones oscillate
        # and can leave a class with no region at all.
        x = torch.as_tensor(self.data.sample(4000, rng))
        fair = 1.0 / self.classes
        for _ in range(3000):
            with torch.no_grad():
                share = torch.bincount(self.logits(x).argmax(1), minlength=self.classes).float() / len(x)
            if float((share - fair).abs().max()) < 0.05 * fair:
                break
            self._b -= 0.05 * torch.log((share + 0.01) / fair)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, : self.k]
        if self.kind == "linear":
            (W,) = self.on_device(x, self._W)
            return z @ W.T
        A, c, B, b = self.on_device(x, self._A, self._c, self._B, self._b)
        return torch.tanh(z @ A + c) @ B + b

    def linear_rule(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.kind != "linear":
            return None
        W = np.zeros((self.classes, self.dim))
        W[:, : self.k] = self._W.double().numpy()
        return W, np.zeros(self.classes)

    def invariances(self) -> np.ndarray:
        return np.eye(self.dim, dtype=np.float32)[self.k:]
