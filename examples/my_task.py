"""A user task in one file (the README's example):

    teachsim --plugin examples/my_task.py check-task halfspace --param dim=8
"""
import numpy as np
import torch

import teachsim
from teachsim.schema import Float, Int
from teachsim.tasks.base import Distribution, Task


class Gaussian(Distribution):
    def __init__(self, dim, std):
        self.dim, self.std = dim, std

    def sample(self, n, rng):
        return (self.std * rng.standard_normal((n, self.dim))).astype(np.float32)


class Halfspace(Task):
    """A random halfspace in R^dim; the teacher abstains within gamma of it."""

    PARAMS = {"dim": Int(5, lo=1), "gamma": Float(0.1, lo=0.0)}
    name = "halfspace"

    def __init__(self, seed, *, dim=5, gamma=0.1):
        w = np.random.default_rng(seed).standard_normal(dim)
        self.w = torch.as_tensor(w / np.linalg.norm(w), dtype=torch.float32)
        self.dim, self.classes, self.gamma = dim, 2, gamma
        self.data, self.broad = Gaussian(dim, 1.0), Gaussian(dim, 2.0)

    def logits(self, x):                   # margin defaults to the distance to the boundary
        (w,) = self.on_device(x, self.w)     # x is where the student lives (maybe a GPU)
        s = x @ w / 2
        return torch.stack([-s, s], dim=1)


teachsim.register_task("halfspace", Halfspace)
