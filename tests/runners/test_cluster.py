"""A real multi-node Ray cluster on loopback, the way users run one: a head with no CPUs
and a second node that cannot read the folder of the user's plugins (as any other machine
of a cluster cannot), in a private network namespace that has only ``lo``. User code must
travel with the job; ``ray job submit`` must work; a plugin that cannot load on a node must
be named with the node and the reason."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomli_w

import teachsim
from tiny import TINY

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = "0123456789abcdef0123456789abcdef"
ENV = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TEACHSIM_EXECUTOR")},
       # a multi-node cluster needs Ray's cluster mode; inside the namespace only lo exists
       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN,
       # every node needs teachsim installed, on its PATH (a job's entrypoint runs `teachsim`)
       "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"),
    reason="a private network namespace needs root and iproute2 (CI has both)")]

SIBLING_PROTOCOL = '''
import numpy as np

import teachsim
from teachsim import messages as m
from teachsim.protocols.base import ROUND_PARAMS, Protocol

import noise_level            # a module of its own folder
from noisepkg.flip import other   # and a package of its folder


class Noisy(Protocol):
    PARAMS = ROUND_PARAMS

    def student_turn(self, student, inbox, ctx):
        self.train(student)
        n = min(self.batch, ctx.labels_to_checkpoint)
        return [m.query(student.data.sample(n, ctx.rng))] if n > 0 else [m.done(m.STUDENT)]

    def teacher_turn(self, teacher, inbox, ctx):
        out = []
        for q in (x for x in inbox if x.kind == "query"):
            y = teacher.label(q.points)
            flip = (ctx.rng.random(len(y)) < noise_level.FLIP) & (y != m.ABSTAIN)
            out.append(m.answer(q.points, np.where(flip, other(y), y)))
        return out


teachsim.register_protocol("noisy-sibling", Noisy)
'''

STRATEGY = '''
import numpy as np

import teachsim


def farthest(model, X_pool, n, *, rng):
    """The pool points farthest from the origin."""
    return np.argsort(-np.linalg.norm(X_pool, axis=1), kind="stable")[:n]


teachsim.register_strategy("farthest", farthest)
'''

# a plugin whose code needs a module only the driver's machine has (not in its folder)
NEEDS_LOCAL = '''
import teachsim
from teachsim.protocols.passive import Passive

import only_here


class Local(Passive):
    def student_turn(self, student, inbox, ctx):
        only_here.touch()
        return super().student_turn(student, inbox, ctx)


teachsim.register_protocol("needs-local", Local)
'''


def _netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(run, base): ``run(args, cwd)`` runs a command inside the namespace; the plugin
    folder ``base/plugins`` is hidden from the second node by a tmpfs over it."""
    base = tmp_path_factory.mktemp("cluster")
    hidden = base / "plugins"
    hidden.mkdir()
    (hidden / "noise_level.py").write_text("FLIP = 0.2\n")
    (hidden / "noisepkg").mkdir()
    (hidden / "noisepkg" / "__init__.py").write_text("")
    (hidden / "noisepkg" / "flip.py").write_text("def other(y):\n    return 1 - y\n")
    (hidden / "noisy_sibling.py").write_text(SIBLING_PROTOCOL)
    (hidden / "farthest.py").write_text(STRATEGY)
    shutil.copy(ROOT / "examples" / "my_task.py", hidden / "my_task.py")
    (hidden / "needs_local.py").write_text(NEEDS_LOCAL)
    local = base / "local"
    local.mkdir()
    (local / "only_here.py").write_text("def touch():\n    return None\n")
    temp = tempfile.mkdtemp(prefix="tsc", dir="/tmp")   # short: Ray's socket paths must fit
    name = f"tsim{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)

    def run(args: list[str], cwd: Path = base, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", name, *args], cwd=cwd, env=env or ENV, text=True,
                              capture_output=True, timeout=timeout)

    try:
        run(["ip", "link", "set", "lo", "up"]).check_returncode()
        head = run([str(BIN / "ray"), "start", "--head", "--port=6379", "--node-ip-address=127.0.0.1", "--num-cpus=0",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--dashboard-port=8265",
                    "--disable-usage-stats", f"--temp-dir={temp}"])
        assert head.returncode == 0, head.stdout + head.stderr
        node = run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                    f"mount -t tmpfs tmpfs {hidden} && exec {BIN / 'ray'} start --address=127.0.0.1:6379 "
                    "--node-ip-address=127.0.0.1 --num-cpus=2 --disable-usage-stats"])
        assert node.returncode == 0, node.stdout + node.stderr
        for _ in range(60):   # both nodes registered
            status = run([str(BIN / "ray"), "status", "--address=127.0.0.1:6379"])
            if status.stdout.count("node_") >= 2:
                break
            time.sleep(1)
        yield run, base
    finally:
        for pid in _netns_pids(name):          # ours only: the processes of our namespace
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "delete", name])
        shutil.rmtree(temp, ignore_errors=True)


def _config(base: Path, **changes) -> Path:
    cfg = {**TINY, "seeds": [0], **changes}
    path = base / f"cfg{len(list(base.glob('cfg*.toml')))}.toml"
    path.write_bytes(tomli_w.dumps(cfg).encode())
    return path


def test_the_node_really_cannot_read_the_plugin_folder(cluster):
    run, base = cluster
    probe = run([sys.executable, "-c", "import ray, os; ray.init(address='127.0.0.1:6379', log_to_driver=False)\n"
                 "@ray.remote(num_cpus=1)\ndef look(p): return sorted(os.listdir(p))\n"
                 f"print(ray.get(look.remote({str(base / 'plugins')!r})))"])
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().splitlines()[-1] == "[]"    # the worker node sees an empty folder


def test_user_protocol_task_and_strategy_run_on_a_node_without_their_files(cluster):
    run, base = cluster
    plugins = base / "plugins"
    cfg = _config(base, task={"name": "halfspace", "dim": 6},
                  protocols=[{"name": "noisy-sibling"}, {"name": "active-student", "strategy": "farthest", "pool": 60}])
    done = run([str(BIN / "teachsim"), "--plugin", str(plugins / "noisy_sibling.py"), "--plugin",
                str(plugins / "my_task.py"), "--plugin", str(plugins / "farthest.py"), "run", str(cfg), "--out",
                "users", "--address", "127.0.0.1:6379", "--no-report"])
    assert done.returncode == 0, done.stdout + done.stderr
    eps = teachsim.open_run(base / "users").episodes
    assert list(eps["status"]) == ["finished", "finished"], eps["error"].tolist()
    assert set(eps["protocol_name"]) == {"noisy-sibling", "active-student"}
    # the run directory records the plugins it needed, with a hash of each file
    con = teachsim.results.store.read_only(base / "users" / "results.sqlite")
    records = json.loads(con.execute("SELECT value FROM meta WHERE name = 'plugins'").fetchone()[0])
    con.close()
    assert {r["provides"].get("protocol", [None])[0] for r in records} >= {"noisy-sibling"}
    assert all(len(r["sha256"]) == 64 for r in records)


def test_a_plugin_that_cannot_load_on_a_node_is_named_with_the_node_and_the_reason(cluster):
    run, base = cluster
    cfg = _config(base, protocols=[{"name": "needs-local"}])
    env = {**ENV, "PYTHONPATH": str(base / "local")}     # only the driver has it
    done = run([str(BIN / "teachsim"), "--plugin", str(base / "plugins" / "needs_local.py"), "run", str(cfg),
                "--out", "local", "--address", "127.0.0.1:6379", "--no-report"], env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("ray: plugin")]
    assert said and f"plugin {base / 'plugins' / 'needs_local.py'} could not be loaded on node " in said[0]
    assert "(127.0.0.1)" in said[0] and "ModuleNotFoundError: No module named 'only_here'" in said[0]
    error = teachsim.open_run(base / "local").episodes["error"].iloc[0].splitlines()[0]
    assert "unknown protocol 'needs-local'" in error and "No module named 'only_here'" in error
    assert "could not be loaded on node" in error


def test_ray_job_submit_runs_and_leaves_results_on_the_driver_side(cluster):
    run, base = cluster
    job = base / "job"
    job.mkdir()
    shutil.copy(base / "plugins" / "noisy_sibling.py", job)
    shutil.copy(base / "plugins" / "noise_level.py", job)
    shutil.copytree(base / "plugins" / "noisepkg", job / "noisepkg")
    (job / "cfg.toml").write_bytes(tomli_w.dumps({**TINY, "seeds": [0, 1],
                                                  "protocols": [{"name": "noisy-sibling"}]}).encode())
    out = base / "submitted"
    done = run([str(BIN / "ray"), "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", str(job),
                "--", "teachsim", "--plugin", "noisy_sibling.py", "run", "cfg.toml", "--out", str(out),
                "--no-report", "--quiet"], timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout.lower(), done.stdout
    eps = teachsim.open_run(out).episodes
    assert list(eps["status"]) == ["finished", "finished"]


DRIVER = '''
import sys

import numpy as np

import teachsim


def nearest(model, X_pool, n, *, rng):
    """The pool points nearest the origin (defined in the driver script itself)."""
    return np.argsort(np.linalg.norm(X_pool, axis=1), kind="stable")[:n]


teachsim.register_strategy("nearest-in-script", nearest)
run = teachsim.run(sys.argv[1], out=sys.argv[2], address="127.0.0.1:6379", progress=False)
print(sorted(run.episodes["status"]))
'''


def test_registrations_made_in_a_driver_script_reach_the_node(cluster):
    run, base = cluster
    script = base / "plugins" / "driver.py"        # the node cannot read it either
    script.write_text(DRIVER)
    cfg = _config(base, protocols=[{"name": "active-student", "strategy": "nearest-in-script", "pool": 60}])
    done = run([sys.executable, str(script), str(cfg), str(base / "scripted")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['finished']"
