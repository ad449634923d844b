"""The watcher that stops what an embedded Ray started when its driver dies without
``ray.shutdown()`` (``teachsim.runners.reaper``), on plain processes: fast, no Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teachsim.runners import reaper

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")

TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])   # a descendant started later
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    return reaper._stat(pid) is not None


def _gone(pids, timeout=20.0) -> bool:
    end = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


def test_the_watcher_stops_what_was_started_and_its_descendants_and_nothing_else():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    before = reaper.children(os.getpid())
    assert bystander.pid in before
    tree = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    grandchild = int(tree.stdout.readline())
    watcher = reaper.watch(before)
    try:
        assert watcher is not None
        time.sleep(1.5)                       # it has looked at the tree at least once
        assert _alive(tree.pid) and _alive(grandchild)
        watcher.stdin.close()                 # what the driver's death does to the pipe
        assert watcher.wait(30) == 0
        tree.wait(10)
        assert _gone([grandchild])            # reparented to init when its parent died: stopped too
        assert _alive(bystander.pid)          # started before: not the watcher's
    finally:
        for p in (tree, bystander):
            p.kill()
            p.wait()
        if _alive(grandchild):
            os.kill(grandchild, 9)


def test_nothing_started_means_no_watcher():
    assert reaper.watch(reaper.children(os.getpid())) is None
