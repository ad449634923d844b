"""``digits``: real handwritten digits with a teacher that cannot see fine detail.

scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to [0, 1]: every
input lives in the pixel box, which every attack respects. The teacher is a small network
that sees only the 2x2-average-pooled 4x4 image, trained deterministically from the task
seed (and cached per process); it abstains where its confidence (its top class
probability) is below ``confidence``. High-frequency pixel detail, the 48 directions the
pooling removes, is what it cannot perceive: it states them as its invariances. The data
distribution draws training images; the judge tests on held-out images; the broad
distribution adds high-frequency noise of std ``broad_std`` to images (clipped to the box).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from .. import seeding
from ..registry import imported
from . import rules
from .base import Distribution, Task

SIDE = 8
POOL = 2


@functools.lru_cache(maxsize=1)
def _images() -> tuple[np.ndarray, np.ndarray]:
    d = imported("sklearn.datasets").load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _pool(x: torch.Tensor) -> torch.Tensor:
    """(n, 64) images -> (n, 16) 2x2 block means."""
    return nn.functional.avg_pool2d(x.reshape(-1, 1, SIDE, SIDE), POOL).flatten(1)


def high_frequency_basis() -> np.ndarray:
    """An orthonormal basis (48, 64) of the directions 2x2 average pooling removes: per
    block, the three Haar patterns orthogonal to the block's constant."""
    # over the block's cells (0,0), (0,1), (1,0), (1,1)
    patterns = np.array([[1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float32) / 2
    rows = []
    for bi in range(SIDE // POOL):
        for bj in range(SIDE // POOL):
            cells = [(POOL * bi + a) * SIDE + POOL * bj + b for a in range(POOL) for b in range(POOL)]
            for p in patterns:
                v = np.zeros(SIDE * SIDE, np.float32)
                v[cells] = p
                rows.append(v)
    return np.stack(rows)


class _Images(Distribution):
    def __init__(self, images: np.ndarray, noise: float = 0.0):
        self.images, self.noise = images, noise
        self.dim = images.shape[1]
        self.box = (np.zeros(self.dim, np.float32), np.ones(self.dim, np.float32))
        self._V = high_frequency_basis() if noise > 0 else None

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = self.images[rng.integers(len(self.images), size=n)]
        if self._V is not None:
            x = np.clip(x + (self.noise * rng.standard_normal((n, len(self._V)))) @ self._V, 0.0, 1.0)
        return x.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _teacher_weights(seed: int, hidden: int, steps: int) -> tuple[torch.Tensor, ...]:
    # Deterministic: seeded init, full-batch Adam on every image, one thread.
    x, y = _images()
    g = seeding.torch_generator(seed, "task", "digits", "teacher")
    net = nn.Sequential(nn.Linear(16, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            bound = 1 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=g)
            layer.bias.uniform_(-bound, bound, generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    xt, yt = _pool(torch.from_numpy(x)), torch.from_numpy(y)
    with seeding.single_thread():
        for _ in range(steps):
            loss = nn.functional.cross_entropy(net(xt), yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return tuple(p.detach().clone() for p in net.parameters())


class Digits(Task):
    """Real 8x8 digits; the teacher sees a pooled 4x4 image and abstains when unsure."""

    PARAMS = rules.DIGITS

    name = "digits"

    def __init__(self, seed: int, *, confidence: float = 0.8, broad_std: float = 0.3, test_share: float = 0.3,
                 teacher_hidden: int = 32, teacher_steps: int = 300):
        x, _ = _images()
        self.dim, self.classes = x.shape[1], 10
        self.confidence = confidence
        self.gamma = math.log(confidence / (1 - confidence))   # margin is the log-odds of the top class
        order = seeding.rng(seed, "task", "digits", "split").permutation(len(x))
        n_test = int(round(test_share * len(x)))
        self.data = _Images(x[order[n_test:]])
        self.test = _Images(x[order[:n_test]])
        self.broad = _Images(x[order[n_test:]], noise=broad_std)
        self.box = self.data.box
        self._teacher_args = (seed, teacher_hidden, teacher_steps)
        self._weights: tuple[torch.Tensor, ...] | None = None

    @property
    def weights(self) -> tuple[torch.Tensor, ...]:
        """The teacher network (W1, b1, W2, b2), trained on first use (seconds) and kept."""
        if self._weights is None:
            with torch.enable_grad():   # first use may come inside an attack's no_grad block
                self._weights = _teacher_weights(*self._teacher_args)
        return self._weights

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        W1, b1, W2, b2 = self.on_device(x, *self.weights)
        return torch.tanh(_pool(x) @ W1.T + b1) @ W2.T + b2

    def margin(self, x: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        """The log-odds of the top class, log p / (1 - p): at least ``gamma`` exactly where
        the top probability is at least ``confidence``. Differentiable, so attacks can keep
        the teacher certain."""
        logp = torch.log_softmax(self.logits(x), dim=1)
        top = logp.max(dim=1).values
        return top - torch.log1p(-top.exp().clamp(max=1 - 1e-7))

    def invariances(self) -> np.ndarray:
        return high_frequency_basis()
