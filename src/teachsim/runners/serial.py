"""The serial executor: episodes one after another in this process (no Ray)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Self

from ..platform.episode import EpisodeResult, run_episode
from ..platform.spec import EpisodeSpec


def run_serial(specs: Iterable[EpisodeSpec], *, retries: int = 0,
               time_limit: float | None = None) -> Iterator[tuple[EpisodeResult, int]]:
    """Run episodes one after another in this process; yields ``(result, attempts)``.
    ``time_limit``: seconds an episode may take before it fails (None: no limit)."""
    for spec in specs:
        attempts = 0
        while True:
            attempts += 1
            result = run_episode(spec, limit=time_limit)
            if result.status == "finished" or attempts > retries:
                break
        yield result, attempts


class SerialExecutor:
    """Episodes one after another in this process (no Ray); with ``cohort`` > 1, that many
    at a time as one cohort (:mod:`teachsim.runners.cohort`)."""

    name = "serial"
    workers = 1

    def __init__(self, cohort: int | str = 1):
        self.auto = cohort == "auto"   # sized at start, from the episode count (runners.auto_cohort)
        self.cohort = 1 if self.auto else cohort

    @property
    def description(self) -> str:
        if self.cohort > 1:
            return f"serial: cohorts of {self.cohort} episodes in this process, students trained together"
        return "serial: one episode at a time in this process"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, episodes: int) -> None:
        """Nothing to start; ``--cohort auto`` picks its size."""
        if self.auto:
            from . import auto_cohort

            self.cohort = auto_cohort(episodes, 1)   # serial episodes run on the CPU

    def run(self, specs: Iterable[EpisodeSpec], *, retries: int = 0,
            time_limit: float | None = None) -> Iterator[tuple[EpisodeResult, int]]:
        if self.cohort > 1:
            from . import refuse_time_limit
            from .cohort import run_cohort

            refuse_time_limit(time_limit)

            return run_cohort(specs, size=self.cohort, retries=retries)
        return run_serial(specs, retries=retries, time_limit=time_limit)

    def close(self) -> None:
        """Nothing to stop."""
