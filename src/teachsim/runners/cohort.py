"""The cohort executor: many episodes advance together in threads of this process, and
their students learn as one batched model (``teachsim.agents.cohort``).

Each episode runs in its own thread, exactly as it would alone (``run_episode``). When
its student learns, the thread waits until every other live episode of the cohort is
also waiting to learn (or has finished); the last one to arrive trains them all at once
and wakes them. Protocol turns run in the episode's thread, concurrently with the
others; the judge works beside the training, in judge processes where cores are spare
(:func:`judge_slots`, ``agents.cohort.JudgeProcess``). ``size`` episodes are live at a
time; as one finishes the next starts, so the cohort stays full; each one to start is
chosen to train with the running ones (:func:`partner`). Results come out as episodes
finish.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

from .. import seeding
from ..platform.episode import EpisodeResult, run_episode
from ..platform.spec import EpisodeSpec


STOP_WAIT = 60.0
"""Seconds an interrupted cohort waits for its episodes' threads to stop (a judge under
way finishes its episode's checkpoints first)."""


THREAD = "episode-"
"""Name prefix of a cohort's episode threads (``episode-KEY``)."""


def episodes_alive() -> bool:
    """Whether episode threads of a cohort in this process are still running (an
    interrupted one's, past :data:`STOP_WAIT`, or cut short by a second Ctrl-C)."""
    return any(t.is_alive() and t.name.startswith(THREAD) for t in threading.enumerate())


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def judge_slots() -> int:
    """Judges a cohort in this process runs at once while it trains: one per core this
    process may use, less one for the training (at least 1; once nothing trains, one more).
    Each judges in a process of its own (``agents.cohort.JudgeProcess``) where there is a
    core to spare. More judges than cores thrash (32 at once on 2 cores: 0.57x one)."""
    return max(1, cores() - 1)


def partner(waiting: Sequence[EpisodeSpec], live: Iterable[EpisodeSpec]) -> int | None:
    """Which waiting episode should join a cohort running ``live`` (an index into
    ``waiting``, or None when none suits): the first that is another seed of a protocol
    and variant the cohort runs. Its schedule is theirs, so its learn calls come when
    theirs do and its student trains with theirs as one. (Without it a Ray worker's cohort
    got one episode of each protocol, since Ray's queue starts one of each first to learn
    their costs: every pgd-at student, the costliest to train, then trained alone.)"""
    same = {(s.label, s.variant) for s in live}
    if not same:
        return None
    return next((i for i, s in enumerate(waiting) if (s.label, s.variant) in same), None)


def run_cohort(specs: Iterable[EpisodeSpec], *, size: int, retries: int = 0) -> Iterator[tuple[EpisodeResult, int]]:
    """Run episodes ``size`` at a time as one cohort; yields ``(result, attempts)`` as
    each finishes (a failing episode is retried alone in the cohort up to ``retries`` times)."""
    from ..agents.cohort import Cohort, JudgeProcess, member

    # the judge processes forked now, before any episode thread exists (see JudgeProcess);
    # none where the training has no core to spare, nor off Linux (fork is Linux's to trust)
    spare = cores() - 1 if sys.platform == "linux" else 0
    together = Cohort(judges=judge_slots(), name=f"{THREAD}judge", processes=[JudgeProcess() for _ in range(spare)])
    done: queue.Queue = queue.Queue()
    todo = list(specs)

    def work(spec: EpisodeSpec, attempt: int) -> None:
        try:
            with member(together):
                result = run_episode(spec)
        except BaseException as exc:   # noqa: BLE001 - run_episode records failures; this is a last resort
            result = EpisodeResult(spec, "failed", error=f"{type(exc).__name__}: {exc}")
        done.put((result, attempt))

    threads: list[threading.Thread] = []
    running: list[EpisodeSpec] = []

    def start(spec: EpisodeSpec, attempt: int) -> None:
        running.append(spec)
        thread = threading.Thread(target=work, args=(spec, attempt), daemon=True, name=f"{THREAD}{spec.key}")
        threads.append(thread)
        thread.start()

    # one torch thread, what an episode alone runs on, set here for all of them: the count is
    # the process's, so the episodes (run_episode in a cohort) leave it alone
    with seeding.single_thread():
        try:
            while todo and len(running) < size:
                start(todo.pop(partner(todo, running) or 0), 1)
            while running:
                result, attempt = done.get()
                running.remove(result.spec)
                if result.status != "finished" and attempt <= retries:
                    start(result.spec, attempt + 1)
                    continue
                yield result, attempt
                if todo:
                    start(todo.pop(partner(todo, running) or 0), 1)
        except BaseException as exc:
            # interrupted (Ctrl-C), or the caller stopped reading: stop the episodes still running
            # rather than leave them computing (at interpreter exit, a thread inside torch aborts
            # the process). Each stops at its next training step, learn call or judge.
            together.cancel()
            end = time.monotonic() + STOP_WAIT
            for thread in threads + together.judge_threads:
                thread.join(max(0.0, end - time.monotonic()))
            if isinstance(exc, KeyboardInterrupt):
                # episodes that finished before the interruption reached this thread: kept
                # (the caller records them), not computed again by the resume
                while not done.empty():
                    result, attempt = done.get()
                    if result.status == "finished":
                        yield result, attempt
            raise
        finally:
            together.close()
