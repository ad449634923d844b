"""A run directory holds one experiment and has one writer: the store knows its episodes
and refuses others whatever happened to config.toml, and a lock keeps two processes out."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import teachsim
from teachsim.config import resolve_experiment
from teachsim.platform.episode import EpisodeResult
from teachsim.results.store import LOCK, RunLock, Store


def _run(cfg, out, **kw):
    return teachsim.run(cfg, out=out, executor="serial", progress=False, **kw)


def _other(cfg):
    other = copy.deepcopy(cfg)
    other["student"] = {**other.get("student", {}), "steps": other.get("student", {}).get("steps", 200) + 1}
    return other


@pytest.fixture
def one_seed(tiny_config):
    tiny_config["seeds"] = [0]
    return tiny_config


@pytest.mark.parametrize("tamper", ["delete", "overwrite"])
def test_another_experiment_is_refused_whatever_config_toml_says(tmp_path, one_seed, tamper):
    out = tmp_path / "run"
    first = _run(one_seed, out)
    n = len(first.episodes)
    other = _other(one_seed)
    if tamper == "delete":
        (out / "config.toml").unlink()
    else:   # a config.toml that claims the directory holds the other experiment
        from teachsim.config import to_toml

        (out / "config.toml").write_text(to_toml(resolve_experiment(other).config))
    with pytest.raises(teachsim.RunError, match="different experiment"):
        _run(other, out)
    assert len(teachsim.open_run(out).episodes) == n      # nothing of the other experiment got in
    # the same experiment still resumes there (nothing to run) and restores config.toml
    again = _run(one_seed, out)
    assert len(again.episodes) == n and (out / "config.toml").exists()
    # the database holds the resolved config too, whatever happens to the file
    import sqlite3

    con = sqlite3.connect(out / "results.sqlite")
    (stored,) = con.execute("SELECT value FROM meta WHERE name = 'config'").fetchone()
    con.close()
    assert stored == (out / "config.toml").read_text()


def test_the_store_refuses_an_episode_of_another_experiment(tmp_path, one_seed):
    mine, theirs = resolve_experiment(one_seed), resolve_experiment(_other(one_seed))
    store = Store(tmp_path / "run")
    try:
        store.plan(mine.episodes)
        with pytest.raises(teachsim.RunError, match="not one of the episodes"):
            store.write(EpisodeResult(theirs.episodes[0], "failed", error="x"))
        assert store.status_by_key() == {}
    finally:
        store.close()


HOLD = """
import sys, time
from pathlib import Path
from teachsim.results.store import RunLock
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
lock = RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_one_writer_at_a_time_and_a_dead_writers_lock_is_taken_over(tmp_path, one_seed, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(teachsim.RunError, match=f"being written by process {holder.pid} ") as err:
            _run(one_seed, out)
        assert "one writer at a time" in str(err.value)
        assert not (out / "results.sqlite").exists() and not (out / "config.toml").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)   # killed: its lock file stays, the kernel drops the lock
        holder.wait()
    assert str(holder.pid) in (out / LOCK).read_text()
    run = teachsim.run(one_seed, out=out, executor="serial", progress=True)
    assert len(run.episodes) == len(resolve_experiment(one_seed).episodes)
    assert f"taking over the lock left by process {holder.pid}" in capsys.readouterr().err
    assert (out / LOCK).read_text() == ""   # released cleanly


HOLD_AND_FORK = """
import os, sys, time
from pathlib import Path
from teachsim.results.store import RunLock
lock = RunLock(Path(sys.argv[1])).acquire()
child = os.fork()   # as a cohort forks its judge processes, with the lock held
if child == 0:
    time.sleep(600)
    os._exit(0)
print(child, flush=True)
time.sleep(600)
"""


def test_a_forked_child_does_not_keep_a_killed_writers_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    child = int(holder.stdout.readline())
    try:
        os.kill(holder.pid, signal.SIGKILL)   # the driver dies without cleaning up; its child lives on
        holder.wait()
        assert Path(f"/proc/{child}").exists()
        with RunLock(tmp_path) as lock:   # free at once, not when the child ends
            assert str(holder.pid) in lock.took_over
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_lock_is_exclusive_within_a_process_too(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(teachsim.RunError, match=f"process {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):   # released: free again
        pass


def test_episode_ids_follow_the_config_order_and_new_ones_come_after(tmp_path, one_seed):
    """Ids do not depend on which episode finished first; an extension's new episodes get
    the next ids in its config order, and recorded ones keep theirs."""
    from teachsim.config import resolve_experiment

    exp = resolve_experiment(one_seed)
    store = Store(tmp_path / "run")
    try:
        store.plan(exp.episodes)
        for spec in reversed(exp.episodes):          # finishing in the opposite order
            store.write(EpisodeResult(spec, "failed", error="x"))
        got = dict(store.con.execute("SELECT key, episode_id FROM episodes"))
        assert got == {s.key: i for i, s in enumerate(exp.episodes, 1)}
        more = copy.deepcopy(one_seed)
        more["seeds"] = [0, 1]
        grown = resolve_experiment(more)
        store.plan(grown.episodes)
        planned = dict(store.con.execute("SELECT key, episode_id FROM planned"))
        assert {k: planned[k] for k in got} == got
        new = [s.key for s in grown.episodes if s.key not in got]
        assert [planned[k] for k in new] == [3, 4]
    finally:
        store.close()


def test_attempts_add_up_when_a_failed_episode_is_run_again(tmp_path, one_seed):
    # --resume runs a failed episode again: its record counts every attempt, the earlier
    # run's too (it once started again at 1)
    spec = resolve_experiment(one_seed).episodes[0]
    store = Store(tmp_path / "run")
    try:
        store.plan(resolve_experiment(one_seed).episodes)
        store.write(EpisodeResult(spec, "failed", error="x"), attempts=2)      # 1 + --retries 1
        store.write(EpisodeResult(spec, "failed", error="x"), attempts=1)      # a resume without retries
        assert store.con.execute("SELECT attempts FROM episodes").fetchall() == [(3,)]
        store.write(EpisodeResult(spec, "finished"), attempts=1)
        assert store.con.execute("SELECT status, attempts FROM episodes").fetchall() == [("finished", 4)]
    finally:
        store.close()


def test_saved_students_keep_every_checkpoint_s_exact_budget(tmp_path):
    # six significant digits once merged 10 and 10.000001 (and wrote 1234567 as 1.23457e+06)
    from teachsim.results.store import _students_bytes, budget_text, load_students

    budgets = [0.0, 10.0, 10.000001, 0.1, 1234567.0, 1000000.0, 1000001.0, 1e15, 2.5e-7]
    saved = {b: {"w": np.full(2, i, np.float32)} for i, b in enumerate(budgets)}
    path = tmp_path / "s.pt"
    path.write_bytes(_students_bytes(saved))
    back = load_students(path)
    assert sorted(back) == sorted(budgets)
    for i, b in enumerate(budgets):
        assert back[b]["w"].tolist() == [i, i]
    assert [budget_text(b) for b in (0.0, 10.0, 0.1, 400.0)] == ["0", "10", "0.1", "400"]   # as before
