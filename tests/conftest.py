"""Shared fixtures: tiny configs that make real runs in seconds."""

from __future__ import annotations

import copy

import pytest

TINY = {
    "name": "tiny",
    "seeds": [0, 1],
    "budgets": [0, 10, 20],
    "task": {"name": "hidden-feature", "dim": 6, "manifold_dim": 2},
    "student": {"hidden": [16], "steps": 30, "initial_labels": 10},
    "judge": {"test_points": 100, "steps": 10, "restarts": 1, "strong_steps": 10, "strong_restarts": 1},
    "protocols": [{"name": "passive", "batch": 5}],
}


@pytest.fixture
def tiny_config():
    """A deep copy of a tiny experiment config (dict) to modify freely."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def tiny_base():
    """The tiny config for session- or module-scoped fixtures (do not modify)."""
    return copy.deepcopy(TINY)
