"""Explicit randomness: every stream derives from one root seed through SeedSequence.

No module in teachsim touches a global RNG. A stream is named by a path of small
integers or strings, so adding a new consumer never shifts the draws of an old one.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import numpy as np


def _word(part: int | str) -> int:
    if isinstance(part, int):
        return part
    return int.from_bytes(hashlib.sha256(part.encode()).digest()[:4], "little")


def seed_sequence(seed: int, *path: int | str) -> np.random.SeedSequence:
    """The SeedSequence for ``seed`` and a named sub-stream ``path``."""
    return np.random.SeedSequence([int(seed), *(_word(p) for p in path)])


def rng(seed: int, *path: int | str) -> np.random.Generator:
    """A numpy Generator for the named stream.

    Example:
        >>> a = rng(0, "data").normal(); b = rng(0, "data").normal()
        >>> a == b and a != rng(0, "test").normal()
        True
    """
    return np.random.default_rng(seed_sequence(seed, *path))


def int_seed(seed: int, *path: int | str) -> int:
    """A 63-bit integer seed for libraries that want one (torch)."""
    return int(seed_sequence(seed, *path).generate_state(2, np.uint64)[0] >> np.uint64(1))


def torch_generator(seed: int, *path: int | str):
    """A CPU ``torch.Generator`` for the named stream."""
    import torch

    g = torch.Generator()
    g.manual_seed(int_seed(seed, *path))
    return g


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (restored after).

    Our episodes are small: one thread is fastest (thread start-up dominates) and keeps
    floating-point results identical from machine to machine.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Generators:
    """The generators of a cohort's students (``teachsim.agents.cohort``), standing in for
    one ``torch.Generator`` where a batch holds every student's rows one after another.

    :func:`randn` draws each student's rows from its own generator, in the order it would
    draw them alone (``attacks.common.random_in_ball`` does the same per student), so a
    cohort's random numbers are exactly those of its students trained one by one.
    """

    def __init__(self, generators: list):
        self.generators = list(generators)

    def __len__(self) -> int:
        return len(self.generators)


def per_student(fn, k: int, *rows):
    """``fn`` applied to each student's rows of ``rows`` (K equal blocks along dim 0), the
    results stacked back along dim 0. For elementwise transcendental functions (pow, exp,
    tanh, ...): their vectorised and scalar paths differ in the last bit, and which one an
    element takes depends on the tensor's length, so a cohort computes them on each
    student's rows exactly as the student alone would."""
    if k == 1:
        return fn(*rows)
    import torch

    return torch.cat([fn(*parts) for parts in zip(*(r.chunk(k) for r in rows))])


def randn(shape, generator):
    """``torch.randn(shape, generator=generator)``; a :class:`Generators` draws per student."""
    import torch

    if not isinstance(generator, Generators):
        return torch.randn(shape, generator=generator)
    shape = tuple(shape)
    k = len(generator)
    if not shape or shape[0] % k:
        raise ValueError(f"a cohort draw needs a leading dimension divisible by {k} students, got {shape}")
    rows = (shape[0] // k, *shape[1:])
    return torch.cat([torch.randn(rows, generator=g) for g in generator.generators])
