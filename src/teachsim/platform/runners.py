"""Runners: turn episode specs into results. Deciding *what* runs is the caller's job;
a runner only decides *how*. Every runner yields ``(result, attempts)`` as episodes finish.

Two executors share one interface (``start(n)``, ``run(specs, retries=)``, ``close()``,
usable as context managers): :class:`SerialExecutor`, in this process, and
:class:`teachsim.platform.ray_runner.RayExecutor` (imported only when chosen).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self, TextIO

from ..errors import ConfigError
from .config import EpisodeSpec
from .episode import EpisodeResult, run_episode

EXECUTORS = ("ray", "serial")
EXECUTOR_ENV = "TEACHSIM_EXECUTOR"
"""Environment variable that overrides the default executor (``ray``)."""


def default_executor() -> str:
    """``$TEACHSIM_EXECUTOR`` if set, else ``"ray"``."""
    return os.environ.get(EXECUTOR_ENV, "").strip() or "ray"


def run_serial(specs: Iterable[EpisodeSpec], *, retries: int = 0) -> Iterator[tuple[EpisodeResult, int]]:
    """Run episodes one after another in this process; yields ``(result, attempts)``."""
    for spec in specs:
        attempts = 0
        while True:
            attempts += 1
            result = run_episode(spec)
            if result.status == "finished" or attempts > retries:
                break
        yield result, attempts


class SerialExecutor:
    """Episodes one after another in this process (no Ray)."""

    name = "serial"
    description = "serial: one episode at a time in this process"
    workers = 1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, episodes: int) -> None:
        """Nothing to start."""

    def run(self, specs: Iterable[EpisodeSpec], *, retries: int = 0) -> Iterator[tuple[EpisodeResult, int]]:
        return run_serial(specs, retries=retries)

    def close(self) -> None:
        """Nothing to stop."""


def _amount(field: str, value: Any, *, lo: float, strict: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (strict and value == lo):
        raise ConfigError.expected(field, f"a number {'>' if strict else '>='} {lo:g}", value)
    return float(value)


def make_executor(executor: str | None = None, *, address: str | None = None, workers: int | None = None,
                  cpus_per_episode: float | None = None, gpus_per_episode: float | None = None,
                  note: Callable[[str], None] | None = None):
    """Check the executor options and build the executor (nothing starts yet).

    ``None`` means the default: the executor from :func:`default_executor`, workers as
    many as fit, 1 CPU and no GPU per episode.

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
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError.expected("--address", "a Ray cluster address HOST:PORT", address)
    if executor == "serial":
        given = [name for name, value in (("--address", address), ("--workers", workers),
                                          ("--cpus-per-episode", cpus_per_episode),
                                          ("--gpus-per-episode", gpus_per_episode)) if value is not None]
        if given:
            why = f"the executor is {executor!r}" + (f", from {EXECUTOR_ENV}" if field == EXECUTOR_ENV else "")
            raise ConfigError(given[0], f"applies to --executor ray only ({why})")
        return SerialExecutor()
    try:
        from .ray_runner import RayExecutor
    except ImportError as exc:
        raise ConfigError(field, f"the ray executor needs Ray ({exc}); install it with pip install 'ray[default]', "
                          "or use --executor serial") from None
    return RayExecutor(address=address, workers=workers, cpus_per_episode=cpus, gpus_per_episode=gpus, note=note)


class Progress:
    """A bar on a terminal (done/total, failures, ETA); plain lines otherwise."""

    def __init__(self, total: int, *, skipped: int = 0, stream: TextIO | None = None, enabled: bool = True):
        self.total, self.done, self.failed, self.skipped = total, 0, 0, skipped
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        if enabled and skipped:
            self._line(f"resuming: {skipped} finished episode(s) kept, {total} to run")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line of its own (what the executor started, a warning), when progress is on."""
        if self.enabled:
            self._line(text)

    def update(self, result: EpisodeResult) -> None:
        self.done += 1
        self.failed += result.status != "finished"
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        tail = f"{self.failed} failed, " if self.failed else ""
        spec = result.spec
        what = f"{spec.protocol} seed={spec.seed}" + (f" [{spec.variant}]" if spec.variant else "")
        if self.tty:
            width = 24
            fill = int(width * self.done / max(1, self.total))
            bar = "#" * fill + "-" * (width - fill)
            end = "\n" if self.done == self.total else ""
            print(f"\r[{bar}] {self.done}/{self.total} {tail}ETA {eta:5.0f}s  {what[:40]:<40}", end=end,
                  file=self.stream, flush=True)
        else:
            status = "ok" if result.status == "finished" else "FAILED"
            self._line(f"[{self.done}/{self.total}] {what}: {status} ({result.seconds:.1f}s) "
                       f"{tail}ETA {eta:.0f}s")
