"""Shared fixtures: tiny configs that make real runs in seconds."""

from __future__ import annotations

import copy
import os

import pytest

from tiny import TINY

# Runs default to the Ray executor. The suite runs serially unless a test
# asks for Ray (tests/test_ray.py does), so most tests start no Ray; subprocesses inherit it.
os.environ.setdefault("TEACHSIM_EXECUTOR", "serial")


@pytest.fixture
def tiny_config():
    """A deep copy of a tiny experiment config (dict) to modify freely."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def tiny_base():
    """The tiny config for session- or module-scoped fixtures (do not modify)."""
    return copy.deepcopy(TINY)
