"""Runners: turn episode specs into results. Deciding *what* runs is the caller's job;
a runner only decides *how*. Every runner yields ``(result, attempts)`` as episodes finish.

Two executors share one interface (``start(n)``, ``run(specs, retries=)``, ``close()``,
usable as context managers): :class:`~teachsim.runners.serial.SerialExecutor`, in this
process, and :class:`~teachsim.runners.ray_executor.RayExecutor` (imported only when
chosen). :func:`make_executor` checks the options and picks one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .serial import SerialExecutor

EXECUTORS = ("ray", "serial")


EXECUTOR_ENV = "TEACHSIM_EXECUTOR"
"""Environment variable that overrides the default executor (``ray``)."""


def default_executor() -> str:
    """``$TEACHSIM_EXECUTOR`` if set, else ``"ray"``."""
    return os.environ.get(EXECUTOR_ENV, "").strip() or "ray"


def _amount(field: str, value: Any, *, lo: float, strict: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (strict and value == lo):
        raise ConfigError.expected(field, f"a number {'>' if strict else '>='} {lo:g}", value)
    return float(value)


AUTO_COHORT = {"cpu": 16, "gpu": 64}
"""``--cohort auto``: the most episodes one worker advances at once, by what its episodes
run on. CPU, 16: on the 2-core machine 32 quick-suite episodes took 74 s in cohorts of 8,
69 s in cohorts of 16 and 77 s in one cohort of 32, against 98 s one at a time
(benchmarks/README.md). GPU, 64: a guess, not yet measured on a lent GPU (stacking is
what keeps a GPU busy; a worker holds its GPU)."""


def refuse_time_limit(limit: float | None, source: str | None = None) -> None:
    """A cohort's episodes run in threads, which a time limit's alarm (it reaches the main
    thread only) cannot stop: a time limit with a cohort is refused, naming ``source``."""
    if limit:
        where = f", {source}" if source else ""
        raise ConfigError("--cohort", f"cannot enforce a time limit ({limit:g} s{where}) on episodes in a cohort's "
                          "threads; drop one of the two")


def auto_cohort(episodes: int, workers: int, device: str = "cpu") -> int:
    """The cohort size ``--cohort auto`` picks: :data:`AUTO_COHORT` for the device, but no
    more than each worker's share of the episodes (so every worker has some)."""
    return max(1, min(AUTO_COHORT[device], math.ceil(episodes / max(1, workers))))


def make_executor(executor: str | None = None, *, address: str | None = None, workers: int | None = None,
                  cpus_per_episode: float | None = None, gpus_per_episode: float | None = None,
                  note: Callable[[str], None] | None = None, cohort: int | str | None = None):
    """Check the executor options and build the executor (nothing starts yet).

    ``None`` means the default: the executor from :func:`default_executor`, workers as
    many as fit, 1 CPU and no GPU per episode, ``--cohort auto`` (:func:`auto_cohort`).

    Raises:
        ConfigError: an unknown executor, a bad number, or a Ray option with ``serial``.
    """
    field = "--executor"
    if executor is None:
        executor, field = default_executor(), EXECUTOR_ENV
    if executor not in EXECUTORS:
        raise ConfigError(field, f"expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError.expected("--workers", "an integer >= 1", workers)
    cpus = 1.0 if cpus_per_episode is None else _amount("--cpus-per-episode", cpus_per_episode, lo=0, strict=True)
    gpus = 0.0 if gpus_per_episode is None else _amount("--gpus-per-episode", gpus_per_episode, lo=0, strict=False)
    if gpus > 1 and gpus != int(gpus):
        raise ConfigError.expected("--gpus-per-episode", "a fraction <= 1 or a whole number of GPUs", gpus_per_episode)
    if cohort is not None and cohort != "auto" and (isinstance(cohort, bool) or not isinstance(cohort, int)
                                                    or cohort < 1):
        raise ConfigError.expected("--cohort", "an integer >= 1 or 'auto'", cohort)
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError.expected("--address", "a Ray cluster address HOST:PORT", address)
    if executor == "serial":
        given = [name for name, value in (("--address", address), ("--workers", workers),
                                          ("--cpus-per-episode", cpus_per_episode),
                                          ("--gpus-per-episode", gpus_per_episode)) if value is not None]
        if given:
            why = f"the executor is {executor!r}" + (f", from {EXECUTOR_ENV}" if field == EXECUTOR_ENV else "")
            raise ConfigError(given[0], f"applies to --executor ray only ({why})")
        return SerialExecutor("auto" if cohort is None else cohort)
    try:
        from .ray_executor import RayExecutor
    except ImportError as exc:
        raise ConfigError(field, f"the ray executor needs Ray ({exc}); install it with pip install 'ray[default]', "
                          "or use --executor serial") from None
    return RayExecutor(address=address, workers=workers, cpus_per_episode=cpus, gpus_per_episode=gpus, note=note,
                       cohort="auto" if cohort is None else cohort)
