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
from .version import __version__ as __version__


__all__ = [
    # running and reading experiments
    "run", "open_run",
    # extending
    "register_task", "register_protocol", "register_strategy", "register_method",
    "make_strategy", "check_protocol", "check_strategy", "check_task", "protocol_env",
    "Message", "ABSTAIN",
    # errors
    "TeachsimError", "ConfigError", "PluginError", "ProtocolError", "BudgetError", "RunError",
]


def run(config: Any, **options: Any):
    """Run an experiment (see :func:`teachsim.results.driver.run`)."""
    from .results.driver import run as _run

    return _run(config, **options)


def open_run(run_dir: Any):
    """Open a run directory (see :class:`teachsim.results.reader.Run`)."""
    from .results.reader import open_run as _open

    return _open(run_dir)


def make_strategy(name: str, **params: Any):
    """A query strategy ``(model, X_pool, n, *, rng) -> indices`` (see :mod:`teachsim.agents.strategies`)."""
    from .agents.strategies import make_strategy as _make

    return _make(name, **params)


def check_strategy(strategy: Any, **options: Any) -> list[str]:
    """Conformance problems of a query strategy (empty list: it conforms)."""
    from .checks.strategy import check_strategy as _check

    return _check(strategy, **options)


def check_protocol(protocol: Any, **options: Any):
    """Run the conformance checks on a protocol (see :func:`teachsim.checks.protocol.check_protocol`)."""
    from .checks.protocol import check_protocol as _check

    return _check(protocol, **options)


def check_task(task: str, **options: Any):
    """Run the conformance checks on a task (see :func:`teachsim.checks.task.check_task`)."""
    from .checks.task import check_task as _check

    return _check(task, **options)


def protocol_env(protocol: Any, **options: Any):
    """A protocol as a PettingZoo AEC environment (see :func:`teachsim.pettingzoo.protocol_env`)."""
    from .pettingzoo import protocol_env as _env

    return _env(protocol, **options)


def register_task(name: str, factory: Any, *, params: Any = None, check: Any = None,
                  version: int | None = None) -> None:
    """Register a task factory ``factory(seed, **params) -> Task`` (a ``Task`` subclass with
    ``PARAMS`` is one); check it with :func:`check_task`. ``check(**params) -> (dim,
    classes)``, optional, checks parameters together (raising ``ConfigError``) without
    building the task; without it, checking a config builds the task once. ``version``
    (default the factory's ``VERSION``, else 1) is its behaviour version, as for every
    ``register_*``: raise it when a change would change results."""
    registry.tasks.register(name, factory, params=params, check=check, version=version)


def register_protocol(name: str, factory: Any, *, params: Any = None, version: int | None = None) -> None:
    """Register a protocol class (subclass of ``teachsim.protocols.base.Protocol``)."""
    registry.protocols.register(name, factory, params=params, version=version)


def register_strategy(name: str, factory: Any, *, params: Any = None, version: int | None = None) -> None:
    """Register a query strategy ``(model, X_pool, n, *, rng, **params) -> indices``."""
    registry.strategies.register(name, factory, params=params, version=version)


def register_method(name: str, factory: Any, *, params: Any = None, version: int | None = None) -> None:
    """Register a learning method ``(model, x, y, ctx) -> loss``. It trains each student
    alone (the model itself, a plain ``torch.Generator`` in ``ctx.generator``), in a cohort
    too, unless ``factory.STACKS = True`` says it was written for stacked students, as the
    built-ins are (README, "Cohorts")."""
    registry.methods.register(name, factory, params=params, version=version)
