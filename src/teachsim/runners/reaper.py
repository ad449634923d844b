"""Stop what an embedded Ray started when the process that started it dies (Linux).

``ray.shutdown()`` stops a local Ray's processes; a driver killed with ``kill -9`` never
calls it. Ray's GCS and raylet then exit by themselves, but its dashboard and runtime-env
agents, reparented to init, were seen still running (and listening) minutes later. So
the driver starts this file as a small watcher process beside the Ray it started
(:func:`watch`): it keeps the pids and start times of those processes and all their
descendants, and when the driver's end of its stdin pipe closes (the driver ended, in
any way, or closed it after ``ray.shutdown()``) it stops the ones still alive: SIGTERM,
then SIGKILL after a grace period. Only those processes, each checked by pid *and* start
time, so a reused pid is never touched; never by name.

It runs as a plain script (``python reaper.py DRIVER_PID ROOT:START ...``): no teachsim
import, so it starts in milliseconds.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL."""


def _stat(pid: int) -> tuple[int, str] | None:
    """``(parent pid, start time)`` of a live process, None for none (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()   # the name, in parentheses, may hold spaces
    return None if fields[0] in "ZX" else (int(fields[1]), fields[19])


def _same(pid: int, start: str) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` (not a reused pid)."""
    st = _stat(pid)
    return st is not None and st[1] == start


def processes() -> dict[int, tuple[int, str]]:
    """Every live process: pid -> (parent pid, start time); none without /proc (not Linux)."""
    out = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit() and (st := _stat(int(name))) is not None:
            out[int(name)] = st
    return out


def children(pid: int) -> dict[int, str]:
    """The live children of ``pid``: pid -> start time."""
    return {p: start for p, (parent, start) in processes().items() if parent == pid}


def _descendants(roots: dict[int, str]) -> dict[int, str]:
    """``roots`` that are still the same processes, and all their live descendants."""
    procs = processes()
    found = {p: s for p, s in roots.items() if p in procs and procs[p][1] == s}
    todo = list(found)
    while todo:
        parent = todo.pop()
        for p, (pp, start) in procs.items():
            if pp == parent and p not in found and p != os.getpid():
                found[p] = start
                todo.append(p)
    return found


def _stop(known: dict[int, str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p, s in known.items() if _same(p, s)]
        for p in alive:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        end = time.monotonic() + GRACE
        while sig == signal.SIGTERM and alive and time.monotonic() < end:
            time.sleep(0.1)
            alive = [p for p in alive if _same(p, known[p])]
        if not alive:
            return


def watch(before: dict[int, str]) -> subprocess.Popen | None:
    """Start the watcher for the processes this process started since ``before`` (its
    children then, from :func:`children`): the ones a ``ray.init`` just started. Close
    the returned process's stdin (or end this process) to have them stopped. None where
    nothing was started (or there is no /proc to see it: not Linux)."""
    started = {p: s for p, s in children(os.getpid()).items() if before.get(p) != s}
    if not started:
        return None
    return subprocess.Popen([sys.executable, __file__, str(os.getpid()), *(f"{p}:{s}" for p, s in started.items())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _main(argv: list[str]) -> None:
    # Ctrl-C in a terminal reaches the whole foreground group, and closing the terminal
    # sends SIGHUP: the watcher outlives both, to clean up after them
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    roots = dict(a.split(":", 1) for a in argv[1:])
    known = _descendants({int(p): s for p, s in roots.items()})
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            break   # the driver's end closed: it ended, or is done with Ray
        known.update(_descendants(known))   # workers and agents come and go while Ray runs
    _stop(known)


if __name__ == "__main__":
    _main(sys.argv[1:])
