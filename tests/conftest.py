"""Shared fixtures: tiny configs that make real runs in seconds."""

from __future__ import annotations

import copy
import os

import pytest

from tiny import TINY

# Runs default to the Ray executor. The suite runs serially unless a test
# asks for Ray (tests/runners/test_ray.py does), so most tests start no Ray; subprocesses inherit it.
os.environ.setdefault("TEACHSIM_EXECUTOR", "serial")
# Every Ray a test starts (its own ray.init, `ray start --head`, subprocesses) is single-node
# and so listens on 127.0.0.1 only; read when ray is first imported. The embedded Ray of
# teachsim sets this itself (tests/runners/test_ray.py checks it without this variable).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture
def tiny_config():
    """A deep copy of a tiny experiment config (dict) to modify freely."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def tiny_base():
    """The tiny config for session- or module-scoped fixtures (do not modify)."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models: one thread is fastest and keeps timings sane on a shared machine.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_registry():
    """Registrations a test makes (plugins it loads included) are undone after it."""
    from teachsim import registry

    with registry.scoped():
        yield
