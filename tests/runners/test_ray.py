"""Scale-out on Ray: the Ray executor, clusters, GPUs, faults, resume.

One local Ray with two *logical* GPUs serves the in-process tests (module scope); the
tests of Ctrl-C, kill -9 and a real ``ray start --head`` cluster run the command line in
subprocesses of their own, each in a session of its own: every process Ray starts from
there stays in that session (workers change their process group, not their session, and
rename themselves, so neither a group nor the environment finds them), so the tests can
check that none is left behind and stop only their own, by process id.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import tomli_w

import teachsim
from teachsim.cli import main
from teachsim.errors import ConfigError
from teachsim import config as config_mod
from teachsim.platform.episode import run_episode
from tiny import TINY, rows as _rows

ray = pytest.importorskip("ray")

PLUGIN = '''
"""hidden-feature that fails, or kills its Ray worker, on demand (for tests)."""
import os
import signal

import ray

import teachsim
from teachsim.schema import Int, Str
from teachsim.tasks.hidden_feature import HiddenFeature


def _in_ray_worker():
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def _first_time(folder, seed):
    os.makedirs(folder, exist_ok=True)
    try:
        os.close(os.open(os.path.join(folder, f"seed{seed}"), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def make(seed, *, fail_seed=-1, flaky_dir="", kill_once_seed=-1, kill_dir="", kill_always_seed=-1, **params):
    """hidden-feature with planted faults (only inside a Ray worker)."""
    if _in_ray_worker():
        if seed == fail_seed:
            raise RuntimeError(f"planted failure on seed {seed}")
        if flaky_dir and seed == 0 and _first_time(flaky_dir, seed):
            raise RuntimeError("planted flaky failure")
        if seed == kill_always_seed or (seed == kill_once_seed and _first_time(kill_dir, seed)):
            os.kill(os.getpid(), signal.SIGKILL)
    return HiddenFeature(seed, **params)


teachsim.register_task("faulty-hidden", make, params={
    **HiddenFeature.PARAMS, "fail_seed": Int(-1), "flaky_dir": Str(""), "kill_once_seed": Int(-1),
    "kill_dir": Str(""), "kill_always_seed": Int(-1)})
'''


# -- helpers -------------------------------------------------------------------------------
def _scores(run_dir: Path) -> pd.DataFrame:
    """Scores keyed by what they mean (without the episode id)."""
    s = teachsim.open_run(run_dir).scores.drop(columns="episode_id")
    return s.sort_values(["variant", "protocol", "seed", "budget", "metric"]).reset_index(drop=True)


def _finished(run_dir: Path) -> int:
    try:
        return _rows(run_dir, "SELECT COUNT(*) FROM episodes WHERE status = 'finished'")[0][0]
    except sqlite3.Error:   # not created yet
        return 0


def _session(sid: int) -> list[int]:
    """Live processes of the session ``sid`` (one this test started: ours, and only ours)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] not in "ZX":   # state, ppid, pgrp, session
                pids.append(int(entry.name))
    return pids


def _reap(sid: int, timeout: float = 30.0) -> list[int]:
    """Wait for the session's processes to end; kill (by pid) and return those that did not."""
    end = time.monotonic() + timeout
    while _session(sid) and time.monotonic() < end:
        time.sleep(0.25)
    left = _session(sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TEACHSIM_EXECUTOR")}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", **extra}


def _popen(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """``teachsim ARGS`` in a session of its own, with Ctrl-C (SIGINT) at its default."""
    return subprocess.Popen([sys.executable, "-m", "teachsim", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Run ``teachsim ARGS`` to the end; also returns the processes of its session left behind."""
    proc = _popen(args, env, cwd)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        left = _reap(proc.pid, timeout=20)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), left


def _wait_for_finished(run_dir: Path, proc: subprocess.Popen, n: int = 1, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while _finished(run_dir) < n:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() < end, "no episode finished in time"
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(**changes) -> dict:
    cfg = copy.deepcopy(TINY)
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
    return cfg


def _write(cfg: dict, path: Path) -> Path:
    path.write_bytes(tomli_w.dumps(cfg).encode())
    return path


# The tests that run the command line in their own session find its processes in /proc.
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

# Slower episodes (a few tenths of a second each on warm workers): a run is still going
# when its first episode is recorded, so it can be interrupted there.
LONG = _config(seeds=list(range(8)), protocols=[{"name": "passive"}], **{"student.steps": 200})


@pytest.fixture(scope="module")
def local_ray():
    """An in-process local Ray with 2 CPUs and 2 logical GPUs; the runs reuse it."""
    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.pop("RAY_ADDRESS", None)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    yield
    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    return teachsim.run(copy.deepcopy(TINY), out=tmp_path_factory.mktemp("serial") / "run", executor="serial",
                        progress=False)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "faulty.py"
    path.write_text(PLUGIN)
    return path


# -- options: checked before anything runs (no Ray started) -----------------------------------
@pytest.mark.parametrize("options, field", [
    ({"workers": 0}, "--workers"),
    ({"workers": 1.5}, "--workers"),
    ({"cpus_per_episode": 0}, "--cpus-per-episode"),
    ({"gpus_per_episode": -1}, "--gpus-per-episode"),
    ({"gpus_per_episode": 1.5}, "--gpus-per-episode"),
    ({"executor": "dask"}, "--executor"),
    ({"executor": "serial", "workers": 2}, "--workers"),
    ({"executor": "serial", "address": "127.0.0.1:6379"}, "--address"),
    ({"executor": "serial", "time_limit": 0}, "--time-limit"),
    ({"executor": "serial", "time_limit": float("nan")}, "--time-limit"),
])
def test_bad_options_are_config_errors_before_anything_runs(tmp_path, options, field):
    with pytest.raises(ConfigError) as info:
        teachsim.run(copy.deepcopy(TINY), out=tmp_path / "run", progress=False, **options)
    assert info.value.field == field
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--workers", "0"], "--workers: expected an integer >= 1, got 0"),
    (["--gpus-per-episode", "-1"], "--gpus-per-episode: expected a number >= 0"),
    (["--executor", "serial", "--gpus-per-episode", "0.5"], "--gpus-per-episode: applies to --executor ray only"),
    (["--executor", "serial", "--time-limit", "-1"], "--time-limit: expected a number of seconds > 0, got -1.0"),
])
def test_bad_options_on_the_command_line_are_exit_2_one_line(tmp_path, capsys, argv, needle):
    cfg = _write(copy.deepcopy(TINY), tmp_path / "tiny.toml")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("teachsim: error: ") and needle in err, err


def test_default_executor_is_ray_unless_the_variable_says_otherwise(monkeypatch):
    from teachsim.runners.serial import SerialExecutor
    from teachsim.runners import default_executor, make_executor

    monkeypatch.delenv("TEACHSIM_EXECUTOR", raising=False)
    assert default_executor() == "ray"
    assert make_executor().name == "ray"          # nothing starts until start()
    monkeypatch.setenv("TEACHSIM_EXECUTOR", "serial")
    assert isinstance(make_executor(), SerialExecutor)
    monkeypatch.setenv("TEACHSIM_EXECUTOR", "dask")
    with pytest.raises(ConfigError, match="TEACHSIM_EXECUTOR: expected one of ray, serial, got 'dask'"):
        make_executor()


def test_import_teachsim_does_not_import_ray():
    code = "import sys, teachsim, teachsim.results.driver, teachsim.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_episode_on_an_absent_gpu_runs_on_the_cpu_with_identical_results():
    spec = config_mod.resolve_experiment(copy.deepcopy(TINY)).episodes[0]
    cpu, cuda = run_episode(spec), run_episode(spec, device="cuda")
    assert cpu.status == cuda.status == "finished"
    assert cpu.stats["device"] == "cpu"
    import torch

    if not torch.cuda.is_available():
        assert cuda.stats["device"] == "cpu"
        assert cuda.scores == cpu.scores and cuda.messages == cpu.messages


GPU_CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_gpu_check_without_cuda_says_so_and_exits_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, str(GPU_CHECK)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no usable CUDA device" in proc.stderr and "Traceback" not in proc.stderr


def test_gpu_check_dry_run_times_every_mode_and_compares_scores_with_the_cpu(tmp_path):
    """scripts/gpu-check's plumbing, on the CPU: a GPU machine's first (and maybe only)
    call must not fail on the script. One logical GPU; every mode runs on the CPU, so the
    GPU modes' scores equal the CPU reference's exactly."""
    out = tmp_path / "gpu.jsonl"
    proc = subprocess.Popen([sys.executable, str(GPU_CHECK), "quick@0:gpu-cohort,cpu", "--dry-run", "--json",
                             str(out)], env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        left = _reap(proc.pid, timeout=30)
    assert proc.returncode == 0, stdout + stderr
    assert not left, f"processes left behind: {left}"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["suite"], r["mode"], r["finished"]) for r in rows] == [("quick@0", "gpu-cohort", 5),
                                                                        ("quick@0", "cpu", 5)]
    assert rows[0]["devices"] == ["cpu (GPU 0)"] and rows[1]["devices"] == ["cpu"]
    gap = rows[1]["vs_cpu"]["gpu-cohort"]
    assert gap["compared"] == 5 * 5 * 6 and gap["max_abs"] == 0.0   # 5 episodes x 5 budgets x 6 metrics
    assert "gpu-cohort / cpu:" in stdout


def test_queue_learns_each_group_then_hands_out_the_longest_first():
    from teachsim.platform.episode import EpisodeResult
    from teachsim.runners.ray_executor import _Item, _Queue

    cfg = _config(seeds=[0, 1, 2], protocols=[{"name": "passive"}, {"name": "passive", "batch": 5}])
    specs = config_mod.resolve_experiment(cfg).episodes
    q = _Queue(_Item(s) for s in specs)
    first = [q.pop(), q.pop()]                        # one of each group first, in spec order
    assert [i.spec.label for i in first] == ["passive", "passive(batch=5)"]
    for item, seconds in zip(first, (1.0, 5.0)):
        q.learn(item, EpisodeResult(item.spec, "finished", seconds=seconds))
    order = [q.pop() for _ in range(2)]
    assert [i.spec.label for i in order] == ["passive(batch=5)"] * 2   # the costly group next
    q.again(first[0])                                 # an episode to run again goes first
    assert q.pop() is first[0]
    assert len(q) == 2 and {q.pop().spec.label for _ in range(2)} == {"passive"}
    assert len(q) == 0
    # a cohort worker's free slot takes another seed of a group it runs, whatever the costs
    q = _Queue(_Item(s) for s in specs)
    live = [q.pop().spec]
    assert live[0] is specs[0]
    assert q.pop(live).spec is specs[1]                       # passive seed 1, beside seed 0
    assert q.pop(live).spec is specs[2]                       # and seed 2
    assert q.pop(live).spec.label == "passive(batch=5)"       # none left: the queue's own order


# -- in-process local Ray ----------------------------------------------------------------------
@pytest.mark.slow
def test_ray_run_equals_the_serial_run(local_ray, serial_run, tmp_path, capsys):
    r = teachsim.run(copy.deepcopy(TINY), out=tmp_path / "run", executor="ray", workers=2)
    err = capsys.readouterr().err
    assert "ray: 2 worker(s) x (1 CPU)" in err and "[4/4]" in err      # progress lines, not a tty
    eps = r.episodes
    assert list(eps["status"]) == ["finished"] * 4 and set(eps["attempts"]) == {1}
    assert set(eps["device"]) == {"cpu"}
    pd.testing.assert_frame_equal(_scores(r.dir), _scores(serial_run.dir))
    # episode ids follow the config's order whatever the executor or finishing order: the
    # same id names the same episode, so `teachsim transcript RUN ID` means one thing
    ids = [run.episodes[["episode_id", "key", "protocol", "seed"]] for run in (r, serial_run)]
    pd.testing.assert_frame_equal(*ids)
    pd.testing.assert_frame_equal(r.scores, serial_run.scores)
    key = ["protocol", "seed", "idx"]
    msgs = [run.messages.merge(run.episodes[["episode_id", "protocol", "seed"]]).drop(columns="episode_id")
            .sort_values(key).reset_index(drop=True) for run in (r, serial_run)]
    pd.testing.assert_frame_equal(*msgs)
    assert ray.is_initialized()    # a Ray this process had started is left running


@pytest.mark.slow
def test_fractional_gpus_pack_two_workers_per_gpu_and_fall_back_to_cpu(local_ray):
    from teachsim.runners.ray_executor import RayExecutor

    specs = config_mod.resolve_experiment(_config(seeds=[0, 1, 2, 3])).episodes
    assert len(specs) == 8
    ex = RayExecutor(gpus_per_episode=0.5, cpus_per_episode=0.5)
    ex.start(len(specs))
    assert ex.workers == 4                            # 2 GPUs / 0.5 (and 2 CPUs / 0.5)
    results = [r for r, _ in ex.run(specs)]
    assert sorted(r.spec.key for r in results) == sorted(s.key for s in specs)
    assert all(r.status == "finished" for r in results)
    by_gpu: dict[str, set[int]] = {}
    for r in results:
        assert len(r.stats["gpu_ids"]) == 1
        by_gpu.setdefault(r.stats["gpu_ids"][0], set()).add(r.stats["worker_pid"])
        assert r.stats["device"] == "cpu"             # no CUDA device here: the CPU
    assert set(by_gpu) == {"0", "1"} and all(len(p) <= 2 for p in by_gpu.values())
    assert len(set().union(*by_gpu.values())) <= 4    # 8 episodes, at most 4 processes: reused
    # at no moment do more than 4 episodes hold a GPU
    events = sorted([(datetime.fromisoformat(r.started_at), 1) for r in results]
                    + [(datetime.fromisoformat(r.finished_at), -1) for r in results], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 1 <= peak <= 4


def test_cohort_auto_on_ray_only_where_an_episode_asks_for_one_cpu_or_one_gpu(local_ray):
    # other resources per episode are what each episode must get: one at a time per worker
    from teachsim.runners import make_executor

    for options, cohort in (({}, 5), ({"gpus_per_episode": 1}, 5), ({"gpus_per_episode": 0.5}, 1),
                            ({"cpus_per_episode": 2}, 1), ({"cpus_per_episode": 0.5}, 1)):
        ex = make_executor("ray", **options)   # --cohort auto, the default
        ex.start(10)                           # 2 CPUs, 2 GPUs: 2 workers share 10 episodes
        assert ex.cohort == cohort, options
        ex.close()


@pytest.mark.slow
def test_gpu_share_is_recorded_with_the_episode(local_ray, tmp_path):
    r = teachsim.run(_config(protocols=[{"name": "passive"}]), out=tmp_path / "run", executor="ray",
                     gpus_per_episode=1, cpus_per_episode=0.5, progress=False)
    devices = set(r.episodes["device"])
    assert devices <= {"cpu (GPU 0)", "cpu (GPU 1)"} and devices, devices


@pytest.mark.slow
def test_failing_episode_is_retried_then_recorded_and_the_run_completes(local_ray, tmp_path, plugin, capsys):
    flaky = tmp_path / "flaky"
    cfg = _write(_config(**{"task.name": "faulty-hidden", "task.fail_seed": 1, "task.flaky_dir": str(flaky)}),
                 tmp_path / "faulty.toml")
    code = main(["--plugin", str(plugin), "run", str(cfg), "--out", str(tmp_path / "run"), "--executor", "ray",
                 "--retries", "2", "--quiet"])
    assert code == 1                                  # ran, but some episodes failed
    assert "planted failure on seed 1" in capsys.readouterr().err
    eps = teachsim.open_run(tmp_path / "run").episodes
    failed, done = eps[eps["seed"] == 1], eps[eps["seed"] == 0]
    assert set(failed["status"]) == {"failed"} and set(failed["attempts"]) == {3}   # 1 + 2 retries
    assert all("planted failure on seed 1" in e for e in failed["error"])
    assert set(done["status"]) == {"finished"}
    assert sorted(done["attempts"]) == [1, 2]         # the flaky one failed once, then passed
    assert len(eps) == 4 and eps["key"].is_unique


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:task 'faulty-hidden' is registered again")
def test_episode_whose_worker_is_killed_is_retried(local_ray, tmp_path, plugin):
    cfg = _config(protocols=[{"name": "passive"}], **{
        "task.name": "faulty-hidden", "task.kill_once_seed": 0, "task.kill_dir": str(tmp_path / "killed"),
        "task.kill_always_seed": 1})
    r = teachsim.run(cfg, out=tmp_path / "run", executor="ray", plugins=(str(plugin),), progress=False)
    eps = r.episodes.set_index("seed")
    assert eps.loc[0, "status"] == "finished" and eps.loc[0, "attempts"] == 2      # killed once, rerun
    assert eps.loc[1, "status"] == "failed" and eps.loc[1, "attempts"] == 4        # 1 + 3 resubmissions
    assert "Ray worker died 4 times" in eps.loc[1, "error"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:task 'faulty-hidden' is registered again")
@pytest.mark.parametrize("workers, cohort", [(1, 4), (2, 2)])
def test_a_worker_killed_in_a_cohort_fails_only_the_episode_that_kills_it(local_ray, tmp_path, plugin, workers,
                                                                          cohort):
    # seed 1 kills its worker every time, with other episodes in its cohort: they finish
    # (the death is not counted against them; from then on workers run one at a time, the
    # other cohort worker too once its episodes are done), it fails
    cfg = _config(seeds=[0, 1, 2, 3], protocols=[{"name": "passive"}], **{
        "task.name": "faulty-hidden", "task.kill_always_seed": 1})
    r = teachsim.run(cfg, out=tmp_path / "run", executor="ray", workers=workers, cohort=cohort,
                     plugins=(str(plugin),), progress=False)
    eps = r.episodes.set_index("seed")
    assert list(eps.loc[[0, 2, 3], "status"]) == ["finished"] * 3, eps["error"].tolist()
    assert eps.loc[1, "status"] == "failed" and "Ray worker died 4 times" in eps.loc[1, "error"]
    assert eps.loc[1, "attempts"] == 5            # 1 in the cohort + 4 alone


# -- the command line in its own process: Ctrl-C, kill -9, a real cluster ---------------------------
@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("options", [
    # cohorts of 2 (the default would put all 8 in one wave): episodes finish in waves
    ["--executor", "ray", "--workers", "2", "--retries", "1", "--cohort", "2"],
    # the serial executor's cohort runs in threads of the driver: Ctrl-C reaches the main
    # thread, which stops the others, keeps what finished and leaves no thread behind
    ["--executor", "serial", "--cohort", "2"]], ids=["ray", "serial"])
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_stops_cleanly_keeps_finished_episodes_and_resume_finishes(tmp_path, options, how):
    """Ctrl-C reaches the whole group; SIGTERM (``kill PID``, ``timeout``, a scheduler's
    preemption) only the command, whose handler Ray's (sys.exit) must not replace: both
    stop the same way, the lock emptied and the database whole."""
    cfg, out = _write(LONG, tmp_path / "long.toml"), tmp_path / "run"
    proc = _popen(["run", str(cfg), "--out", str(out), *options], _env(), tmp_path)
    try:
        _wait_for_finished(out, proc)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)            # what Ctrl-C in a terminal does
        else:
            os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        left = _reap(proc.pid)
    said, code = ("interrupted", 130) if how == "ctrl-c" else ("terminated (SIGTERM)", 143)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    # the resume command runs the way the run did: executor, workers, retries and cohort kept
    assert last.startswith(f"teachsim: {said};"), err
    assert last.endswith(f"--out {out} {' '.join(options)} --resume"), err
    assert not left, f"processes left behind: {left}"
    assert (out / ".teachsim.lock").read_text() == ""   # released: nothing for the next run to take over
    assert not (out / "results.sqlite-wal").exists()
    kept = _rows(out, "SELECT key, status, started_at FROM episodes ORDER BY key")
    assert 1 <= len(kept) < 8 and {s for _, s, _ in kept} == {"finished"}
    res, _ = _cli(["run", str(cfg), "--out", str(out), "--resume", "--executor", "serial", "--quiet"], _env(),
                  tmp_path)
    assert res.returncode == 0, res.stderr
    after = _rows(out, "SELECT key, status, started_at FROM episodes ORDER BY key")
    assert len(after) == 8 and set(kept) <= set(after)


@pytest.mark.slow
@needs_proc
def test_losing_the_local_ray_node_mid_run_says_so_keeps_results_and_resumes(tmp_path):
    """The embedded Ray's raylet killed mid-run once left the run waiting for ever for a
    worker that could never start (Ray marks the node dead ~15 s later): now the run ends
    with one line saying what happened and the full resume command, exit 1."""
    cfg = _write(_config(seeds=list(range(8)), protocols=[{"name": "passive"}], **{"student.steps": 2500}),
                 tmp_path / "long.toml")
    out = tmp_path / "run"
    proc = _popen(["run", str(cfg), "--out", str(out), "--executor", "ray", "--workers", "1", "--cohort", "2",
                   "--quiet"], _env(), tmp_path)
    try:
        _wait_for_finished(out, proc)
        raylets = [p for p in _session(proc.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "raylet"]
        assert len(raylets) == 1
        os.kill(raylets[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        left = _reap(proc.pid)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("teachsim: error: the Ray cluster was lost mid-run: no live node left"), err
    assert last.endswith(f"--out {out} --executor ray --workers 1 --cohort 2 --resume"), err
    assert not left, f"processes left behind: {left}"
    kept = _rows(out, "SELECT key, started_at FROM episodes WHERE status = 'finished'")
    assert 1 <= len(kept) < 8
    res, _ = _cli(["run", str(cfg), "--out", str(out), "--resume", "--executor", "serial", "--quiet"], _env(),
                  tmp_path)
    assert res.returncode == 0, res.stderr
    after = _rows(out, "SELECT key, started_at FROM episodes WHERE status = 'finished'")
    assert len(after) == 8 and set(kept) <= set(after)


@pytest.mark.slow
@needs_proc
def test_kill_9_of_the_driver_then_resume_keeps_every_finished_episode(tmp_path):
    cfg, out = _write(LONG, tmp_path / "long.toml"), tmp_path / "run"
    # one at a time (--cohort 1): the other two tests above interrupt cohorts
    proc = _popen(["run", str(cfg), "--out", str(out), "--executor", "ray", "--cohort", "1", "--quiet"], _env(),
                  tmp_path)
    try:
        _wait_for_finished(out, proc)
        assert len(_session(proc.pid)) >= 5           # the driver, Ray's daemons and its two workers
        # the driver alone, as `kill -9 PID` does: Ray's GCS and raylet then exit by themselves,
        # but its agents outlived it (minutes, listening) until a watcher stopped them
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        left = _reap(proc.pid)
    assert proc.returncode == -signal.SIGKILL
    assert not left, f"Ray processes outlived the killed driver: {left}"

    tables = {"episodes": "SELECT * FROM episodes WHERE status = 'finished' ORDER BY episode_id",
              "scores": "SELECT * FROM scores ORDER BY episode_id, budget, metric",
              "messages": "SELECT * FROM messages ORDER BY episode_id, idx",
              "checkpoints": "SELECT * FROM checkpoints ORDER BY episode_id, budget"}
    before = {name: _rows(out, sql) for name, sql in tables.items()}
    n_before = len(before["episodes"])
    assert 1 <= n_before < 8
    files = {p.name: p.read_bytes() for p in (out / "students").glob("*.pt")}

    res, left = _cli(["run", str(cfg), "--out", str(out), "--resume", "--executor", "ray"], _env(), tmp_path)
    assert res.returncode == 0, res.stderr
    assert not left, f"Ray processes outlived the run: {left}"
    assert f"resuming: {n_before} finished episode(s) kept, {8 - n_before} to run" in res.stderr
    keys = [k for (k,) in _rows(out, "SELECT key FROM episodes")]
    assert len(keys) == 8 and len(set(keys)) == 8
    assert set(_rows(out, "SELECT status FROM episodes")) == {("finished",)}
    after = {name: _rows(out, sql) for name, sql in tables.items()}
    ids = {row[0] for row in before["episodes"]}
    for name in tables:   # the finished episodes' rows are exactly as they were: not recomputed
        assert [row for row in after[name] if row[0] in ids] == before[name], name
    for name, data in files.items():
        assert (out / "students" / name).read_bytes() == data
    assert len(list((out / "transcripts").glob("*.npz"))) == 8


@pytest.fixture
def ray_cluster(tmp_path):
    """A real ``ray start --head`` on 127.0.0.1 (token auth, its own ports), stopped by process id."""
    token = secrets.token_hex(16)
    temp = tempfile.mkdtemp(prefix="tsray", dir="/tmp")    # short: Ray's socket paths must fit
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    port = _free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
           "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
           f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
           f"--dashboard-agent-grpc-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
           f"--metrics-export-port={_free_port()}"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = head.communicate(timeout=120)
        assert head.returncode == 0, out
        yield f"127.0.0.1:{port}", env
    finally:
        # `ray stop` would stop every Ray on the machine: stop ours, by process id
        for pid in _session(head.pid):                # the head's daemons and workers
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _reap(head.pid, timeout=3)                    # then SIGKILL (by pid) what is still there
        left = _reap(head.pid, timeout=10)
        shutil.rmtree(temp, ignore_errors=True)
    assert not left, f"the cluster's processes did not stop: {left}"


@pytest.mark.slow
@needs_proc
def test_runs_on_an_existing_cluster_by_address_and_by_ray_address(ray_cluster, serial_run, tmp_path):
    address, env = ray_cluster
    cfg = _write(copy.deepcopy(TINY), tmp_path / "tiny.toml")
    # the second run also asks for GPUs, which this cluster does not have: the CPU it is
    runs = {"flag": (["--address", address], env),
            "env": (["--gpus-per-episode", "0.5"], {**env, "RAY_ADDRESS": address})}
    for name, (extra, run_env) in runs.items():
        res, left = _cli(["run", str(cfg), "--out", str(tmp_path / name), "--executor", "ray", *extra], run_env,
                         tmp_path)
        assert res.returncode == 0, res.stderr
        assert not left
        assert f"on Ray cluster {address}" in res.stderr
        pd.testing.assert_frame_equal(_scores(tmp_path / name), _scores(serial_run.dir))
        assert set(teachsim.open_run(tmp_path / name).episodes["device"]) == {"cpu"}
    assert "no GPU in the cluster; episodes run on the CPU" in res.stderr


@pytest.mark.slow
def test_unreachable_or_wrong_address_is_exit_2_one_line(tmp_path):
    import threading

    cfg = _write(copy.deepcopy(TINY), tmp_path / "tiny.toml")
    with socket.socket() as busy:                      # a port that answers, but not as Ray
        busy.bind(("127.0.0.1", 0))
        busy.listen()

        def serve():
            conn, _ = busy.accept()
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

        threading.Thread(target=serve, daemon=True).start()
        for address, needle in ((f"127.0.0.1:{_free_port()}", "cannot reach a Ray cluster"),
                                (f"127.0.0.1:{busy.getsockname()[1]}", "does not answer like a Ray cluster")):
            res = subprocess.run([sys.executable, "-m", "teachsim", "run", str(cfg), "--out", str(tmp_path / "r"),
                                  "--executor", "ray", "--address", address], capture_output=True, text=True,
                                 env=_env(), cwd=tmp_path, timeout=120)
            assert res.returncode == 2
            assert res.stderr.count("\n") == 1 and needle in res.stderr, res.stderr
            assert not (tmp_path / "r").exists()


def _listening(pids: list[int]) -> list[tuple[ipaddress._BaseAddress, int]]:
    """(address, port) of every TCP socket the processes ``pids`` listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
        except OSError:   # gone meanwhile
            continue
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:   # 0A: LISTEN
                continue
            host, port = fields[1].split(":")
            raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8))
            found.append((ipaddress.ip_address(raw), int(port, 16)))
    return found


def _is_loopback(address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def test_the_embedded_ray_listens_on_loopback_only():
    """The local Ray that a run starts is reachable from this machine only: its node address
    is 127.0.0.1 and no process of it listens on another interface (checked without the
    single-node variable the test suite sets, so the executor's own setting is what holds)."""
    code = ("import sys, ray\n"
            "from teachsim.runners.ray_executor import RayExecutor\n"
            "ex = RayExecutor(workers=1); ex.start(1)\n"
            "print(sorted({n['NodeManagerAddress'] for n in ray.nodes()}), flush=True)\n"
            "sys.stdin.readline(); ex.close()\n")
    env = {k: v for k, v in _env().items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "['127.0.0.1']"
        listening = _listening(_session(proc.pid))
        assert len(listening) >= 3, listening        # GCS, raylet, a worker at least: the check sees them
        assert [a for a, _ in listening if not _is_loopback(a)] == [], listening
        proc.communicate("\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        assert _reap(proc.pid) == []


def test_the_loopback_check_sees_an_outward_listener():
    """The check is not blind: a socket on all interfaces is reported as not loopback."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        found = dict(_listening([os.getpid()]))
        assert [a for a in found if not _is_loopback(a)], found


@pytest.mark.slow
def test_the_time_limit_holds_on_ray_workers_and_the_driver_stops_a_deaf_one(local_ray, tmp_path, monkeypatch,
                                                                          restore_registry):
    """On Ray the worker stops an episode past its limit (a turn that loops for ever);
    one that cannot be interrupted (SIGALRM blocked, as native code would be) is stopped by
    the driver after the grace period. Both are recorded failed; the other episodes finish."""
    from teachsim.runners import ray_executor
    from tiny import STUCK_PLUGIN

    monkeypatch.setattr(ray_executor, "STOP_GRACE", 2.0)
    plugin = tmp_path / "stuck.py"
    plugin.write_text(STUCK_PLUGIN)
    cfg = _config(seeds=[0], time_limit=2.0, protocols=[
        {"name": "passive"}, {"name": "stuck", "how": "loop", "label": "loops"},
        {"name": "stuck", "how": "masked", "label": "deaf"}])
    r = teachsim.run(cfg, out=tmp_path / "run", executor="ray", plugins=(str(plugin),), progress=False)
    eps = r.episodes.set_index("protocol")
    assert eps.loc["passive", "status"] == "finished", eps.loc["passive", "error"]
    assert eps.loc["loops", "status"] == "failed" and eps.loc["deaf", "status"] == "failed"
    assert eps.loc["loops", "error"].startswith("EpisodeTimeout: the episode ran past its time limit of 2 s")
    assert "its Ray worker, still busy 2 s later, was stopped" in eps.loc["deaf", "error"]


@pytest.mark.slow
def test_a_ray_worker_advances_a_cohort_with_the_serial_run_s_results(local_ray, tmp_path, capsys):
    cfg = copy.deepcopy(TINY)
    cfg["student"]["initial_labels"] = 130   # batches of 128 rows: the students train together
    cfg["protocols"].append({"name": "active-student", "strategy": "margin"})
    one = teachsim.run(copy.deepcopy(cfg), out=tmp_path / "one", executor="serial", progress=False)
    r = teachsim.run(copy.deepcopy(cfg), out=tmp_path / "run", executor="ray", workers=1, cohort=6)
    assert "each advancing a cohort of 6 episodes" in capsys.readouterr().err
    assert list(r.episodes["status"]) == ["finished"] * 6
    pd.testing.assert_frame_equal(_scores(r.dir), _scores(one.dir))
    key = ["protocol", "seed", "idx"]
    msgs = [run.messages.merge(run.episodes[["episode_id", "protocol", "seed"]]).drop(columns="episode_id")
            .sort_values(key).reset_index(drop=True) for run in (r, one)]
    pd.testing.assert_frame_equal(*msgs)
