"""teachsim: simulate how a student becomes adversarially robust with respect to a teacher.

The public API is small; heavy modules (torch, pandas, ray, matplotlib, modAL) are
imported only when a function that needs them is called.

Example:
    >>> import teachsim
    >>> "hidden-feature" in teachsim.registry.tasks
    True
"""

from __future__ import annotations

from typing import Any

from . import registry
from .errors import BudgetError, ConfigError, PluginError, ProtocolError, RunError, TeachsimError
from .messages import ABSTAIN, Message

__version__ = "0.1.0"

__all__ = [
    # running and reading experiments
    "run", "open_run",
    # extending
    "register_task", "register_protocol", "register_strategy", "register_method",
    "Message", "ABSTAIN",
    # errors
    "TeachsimError", "ConfigError", "PluginError", "ProtocolError", "BudgetError", "RunError",
]


def run(config: Any, **options: Any):
    """Run an experiment (see :func:`teachsim.platform.results.run`)."""
    from .platform.results import run as _run

    return _run(config, **options)


def open_run(run_dir: Any):
    """Open a run directory (see :class:`teachsim.platform.results.Run`)."""
    from .platform.results import open_run as _open

    return _open(run_dir)


def register_task(name: str, factory: Any, *, params: Any = None) -> None:
    """Register a task factory ``factory(seed, **params) -> Task``."""
    registry.tasks.register(name, factory, params=params)


def register_protocol(name: str, factory: Any, *, params: Any = None) -> None:
    """Register a protocol class (subclass of ``teachsim.protocols.base.Protocol``)."""
    registry.protocols.register(name, factory, params=params)


def register_strategy(name: str, factory: Any, *, params: Any = None) -> None:
    """Register a query strategy."""
    registry.strategies.register(name, factory, params=params)


def register_method(name: str, factory: Any, *, params: Any = None) -> None:
    """Register a learning method ``(model, x, y, ctx) -> loss``."""
    registry.methods.register(name, factory, params=params)
