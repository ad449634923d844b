"""Shared fixtures: tiny configs that make real runs in seconds."""

from __future__ import annotations

import copy

import pytest

from tiny import TINY


@pytest.fixture
def tiny_config():
    """A deep copy of a tiny experiment config (dict) to modify freely."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def tiny_base():
    """The tiny config for session- or module-scoped fixtures (do not modify)."""
    return copy.deepcopy(TINY)
