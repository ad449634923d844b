"""Protocols through the command line: ``check-protocol``, user
protocols via ``--plugin`` in ``run``, ``bench`` and ``check-protocol``, and ``list strategies``."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from teachsim import registry
from teachsim.config import to_toml
from tiny import PREFIX, cli as _cli, one_line_error as _one_line_error

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "examples" / "my_protocol.py"
EXAMPLE = ROOT / "examples" / "noisy_teacher.toml"
CHECKS = ("runs", "legal", "budget", "terminates", "deterministic", "replays")
STRATEGIES = tuple(registry.strategies.names())


def _small(config: dict) -> dict:
    """The example config shrunk to a world that runs in seconds (its protocols kept as they are)."""
    return {**config, "seeds": [0], "budgets": [0, 10, 20],
            "task": {**config.get("task", {}), "dim": 6, "manifold_dim": 2},
            "student": {**config.get("student", {}), "hidden": [16], "steps": 20, "initial_labels": 10},
            "judge": {**config.get("judge", {}), "test_points": 60, "steps": 5, "restarts": 1,
                      "strong_steps": 5, "strong_restarts": 1}}


@pytest.fixture(scope="module")
def noisy_config() -> dict:
    config = tomllib.loads(EXAMPLE.read_text())
    assert "noisy-teacher" in {p["name"] for p in config["protocols"]}, "the example must use the plugin"
    return _small(config)


# -- check-protocol ---------------------------------------------------------------------------------

def test_check_protocol_prints_every_check_and_exits_0(tmp_path):
    proc = _cli("check-protocol", "active-teacher", "--param", "push=invariance", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    for check in CHECKS:
        assert any(line.split()[:2] == ["ok", check] for line in lines), (check, proc.stdout)
    assert lines[-1] == "conforms"


def test_check_protocol_params_take_toml_values(tmp_path):
    proc = _cli("check-protocol", "active-student", "--param", 'strategy="margin"', "--param", "pool=80",
                "--param", "batch=10", "--seed", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "conforms" in proc.stdout


@pytest.mark.parametrize("args, names", [
    (("check-protocol", "no-such-protocol"), "PROTOCOL"),
    (("check-protocol", "active-teacher", "--param", "push=shout"), "--param push"),
    (("check-protocol", "active-teacher", "--param", "bogus=1"), "--param bogus"),
    (("check-protocol", "active-teacher", "--param", "probes=-3"), "--param probes"),
    (("check-protocol", "active-teacher", "--param", "nokey"), "--param"),
])
def test_check_protocol_bad_input_exits_2_with_one_line(tmp_path, args, names):
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = _one_line_error(proc.stderr, proc.stdout)
    assert line.startswith(PREFIX + names), line
    assert "protocols[0]" not in line, "name what the user typed, not the internal config path"


def test_check_protocol_suggests_a_close_name(tmp_path):
    proc = _cli("check-protocol", "passiv", cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr, proc.stdout)
    assert line.startswith(PREFIX + "PROTOCOL") and "did you mean 'passive'" in line


def test_check_protocol_of_a_plugin_protocol(tmp_path):
    proc = _cli("--plugin", str(PLUGIN), "check-protocol", "noisy-teacher", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "check-protocol noisy-teacher"
    assert proc.stdout.splitlines()[-1] == "conforms"


def test_check_protocol_exits_1_when_a_check_fails(tmp_path):
    plugin = tmp_path / "clock.py"
    plugin.write_text('''
import time

import numpy as np

import teachsim
from teachsim import messages as m
from teachsim.protocols.base import Protocol


class Clock(Protocol):
    """Seeds its queries from the clock: not deterministic."""

    def student_turn(self, student, inbox, ctx):
        student.learn()
        n = min(5, ctx.labels_to_checkpoint)
        if n <= 0:
            return [m.done(m.STUDENT)]
        return [m.query(student.data.sample(n, np.random.default_rng(time.perf_counter_ns())))]

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]


teachsim.register_protocol("clock", Clock)
''')
    proc = _cli("check-protocol", "clock", "--plugin", str(plugin), cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert any(line.split()[:2] == ["FAIL", "deterministic"] for line in proc.stdout.splitlines()), proc.stdout
    assert "check(s) failed" in proc.stdout


def test_plugin_protocol_is_unknown_without_the_plugin(tmp_path):
    proc = _cli("check-protocol", "noisy-teacher", cwd=tmp_path)
    assert proc.returncode == 2
    assert "noisy-teacher" in _one_line_error(proc.stderr, proc.stdout)


def test_missing_plugin_file_exits_2(tmp_path):
    proc = _cli("--plugin", str(tmp_path / "nope.py"), "check-protocol", "passive", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.py" in _one_line_error(proc.stderr, proc.stdout)


# -- run and bench with a user protocol ----------------------------------------------------------------

def test_run_a_config_that_uses_a_plugin_protocol(tmp_path, noisy_config):
    (tmp_path / "noisy.toml").write_text(to_toml(noisy_config))
    proc = _cli("--plugin", str(PLUGIN), "run", "noisy.toml", "--out", "run", "--executor", "serial", "--quiet",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    n = len(noisy_config["protocols"]) * len(noisy_config["seeds"])
    assert f"{n} finished, 0 failed" in proc.stdout

    import teachsim

    eps = teachsim.open_run(tmp_path / "run").episodes
    assert (eps["status"] == "finished").all()
    assert any(p.startswith("noisy-teacher") for p in eps["protocol"])

    # without the plugin the same config is bad input, named in one line that suggests --plugin
    proc = _cli("run", "noisy.toml", "--out", "run2", "--executor", "serial", "--quiet", cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr, proc.stdout)
    assert "unknown protocol 'noisy-teacher'" in line and "from a plugin? load it with --plugin" in line
    # ... and resuming the run that used it says which plugin file it was, and its hash
    import hashlib

    digest = hashlib.sha256(PLUGIN.read_bytes()).hexdigest()
    proc = _cli("run", "noisy.toml", "--out", "run", "--executor", "serial", "--quiet", "--resume", cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr, proc.stdout)
    assert f"the run in run loaded it from the plugin {PLUGIN} (sha256 {digest[:12]}...): pass --plugin {PLUGIN}" \
        in line, line
    assert "from a plugin?" not in line and "did you mean" not in line   # no guess at a built-in: it was a plugin's


def test_bench_a_user_suite_that_uses_a_plugin_protocol(tmp_path, noisy_config):
    suites = tmp_path / "benchmarks" / "suites"
    suites.mkdir(parents=True)
    suite = {**noisy_config, "name": "mine",
             "protocols": [p for p in noisy_config["protocols"] if p["name"] == "noisy-teacher"]}
    (suites / "mine.toml").write_text(to_toml(suite))

    listed = _cli("list", "suites", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "mine" in listed.stdout.split()

    proc = _cli("--plugin", str(PLUGIN), "bench", "mine", "--out", "out", "--executor", "serial", "--quiet",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 finished, 0 failed" in proc.stdout
    assert (tmp_path / "out" / "results.sqlite").is_file()


# -- list strategies -----------------------------------------------------------------------------------------

def test_list_strategies_shows_all_six_with_their_parameters(tmp_path):
    proc = _cli("list", "strategies", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "strategies:"
    listed = [line.split()[0] for line in lines[1:] if line.startswith("  ") and not line.startswith("      ")]
    assert sorted(listed) == sorted(STRATEGIES)
    for name in STRATEGIES:
        row = next(line for line in lines if line.split()[:1] == [name])
        assert len(row.split()) > 1, f"{name} has no summary"
    params = [line.split()[0] for line in lines if line.startswith("      ")]
    assert sorted(params) == ["beta", "metric"]
    assert any("beta = 1.0" in line for line in lines)
    assert any("metric = 'euclidean'" in line and "cosine" in line for line in lines)


def test_list_strategies_includes_a_plugin_strategy(tmp_path):
    plugin = tmp_path / "mystrategy.py"
    plugin.write_text('''
import numpy as np

import teachsim


def nearest(model, X_pool, n, *, rng):
    """Ask about the pool points nearest the origin."""
    return np.argsort(np.linalg.norm(X_pool, axis=1), kind="stable")[:n]


teachsim.register_strategy("nearest", nearest)
''')
    proc = _cli("--plugin", str(plugin), "list", "strategies", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[:1] == ["nearest"] and "nearest the origin" in line for line in proc.stdout.splitlines())
    proc = _cli("--plugin", str(plugin), "check-protocol", "active-student", "--param", "strategy=nearest",
                "--param", "pool=60", cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)


# -- a checker that teaches: every mistake below once passed silently or as a bare traceback
MISTAKES = '''
import teachsim
from teachsim import messages as m
from teachsim.protocols.base import ROUND_PARAMS, Protocol
from teachsim.schema import Int


class Misspelt(Protocol):
    PARAMS = ROUND_PARAMS

    def student_turn(self, student, inbox, ctx):
        self.train(student)
        n = min(self.bacth, ctx.labels_to_checkpoint)
        return [m.query(student.data.sample(n, ctx.rng))]


class Bare(Protocol):
    def student_turn(self, student, inbox, ctx):
        return m.query(student.data.sample(5, ctx.rng))


class Greedy(Protocol):
    """Asks for everything at once and never learns between rounds."""

    PARAMS = ROUND_PARAMS

    def student_turn(self, student, inbox, ctx):
        n = min(2 * self.batch, ctx.labels_left)
        return [m.query(student.data.sample(n, ctx.rng))] if n else [m.done(m.STUDENT)]

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]


class OwnSchedule(Greedy):
    """Learns on the student's schedule, whatever its own steps say."""

    def student_turn(self, student, inbox, ctx):
        student.learn()
        n = min(self.batch, ctx.labels_to_checkpoint)
        return [m.query(student.data.sample(n, ctx.rng))] if n else [m.done(m.STUDENT)]


for name, cls in (("misspelt", Misspelt), ("bare", Bare), ("greedy", Greedy), ("own-schedule", OwnSchedule)):
    teachsim.register_protocol(name, cls)
'''


@pytest.fixture
def mistakes(tmp_path):
    path = tmp_path / "mistakes.py"
    path.write_text(MISTAKES)
    return path


def test_the_checker_says_which_world_it_used_and_takes_task_and_budgets(tmp_path):
    proc = _cli("check-protocol", "passive", "--task", "spheres", "--budgets", "0", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    world = proc.stdout.splitlines()[1]
    assert world.startswith("  in: task spheres (") and "budgets 0, 5;" in world, world
    proc = _cli("check-protocol", "passive", "--task", "spherez", cwd=tmp_path)
    assert proc.returncode == 2 and "--task" in _one_line_error(proc.stderr) and "did you mean 'spheres'" in proc.stderr


def test_an_exception_in_a_turn_names_file_line_side_and_the_attribute_meant(tmp_path, mistakes):
    proc = _cli("--plugin", str(mistakes), "check-protocol", "misspelt", cwd=tmp_path)
    assert proc.returncode == 1
    runs = next(line for line in proc.stdout.splitlines() if "runs" in line)
    assert "AttributeError: 'Misspelt' has no attribute 'bacth' (did you mean 'batch'?)" in runs
    assert "in the student's turn (student_turn), at mistakes.py:13" in runs
    assert proc.stdout.splitlines()[-1] == "(the whole traceback: add --traceback)" and proc.stderr == ""
    proc = _cli("--plugin", str(mistakes), "check-protocol", "misspelt", "--traceback", cwd=tmp_path)
    trace = proc.stdout[proc.stdout.index("Traceback (most recent call last):"):]
    assert "line 13, in student_turn" in trace


def test_a_turn_that_returns_a_bare_message_is_told_to_return_a_list(tmp_path, mistakes):
    proc = _cli("--plugin", str(mistakes), "check-protocol", "bare", cwd=tmp_path)
    assert proc.returncode == 1
    assert ("the student's turn returned a 'query' Message; a turn returns a list of messages "
            "(return [msg], or [] to pass)") in proc.stdout


def test_silent_round_mistakes_are_warnings(tmp_path, mistakes):
    proc = _cli("--plugin", str(mistakes), "check-protocol", "greedy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout          # it conforms: these are warnings, not failures
    warnings = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("warning:")]
    assert any("delivered more labelled points than batch = 25 (up to 50)" in w for w in warnings), warnings
    assert any("the student did not learn them" in w for w in warnings), warnings
    proc = _cli("--plugin", str(mistakes), "check-protocol", "own-schedule", "--param", "steps=5", cwd=tmp_path)
    assert "declares steps = 5 (so 5 steps per round) but trained with [20]" in proc.stdout
    for builtin in ("passive", "active-student", "membership", "active-teacher"):
        assert "warning:" not in _cli("check-protocol", builtin, cwd=tmp_path).stdout, builtin


def test_a_bad_default_in_params_is_said_as_the_plugin_loads(tmp_path):
    """The plugin's own default, named with its protocol and key when the plugin loads (a
    warning: a sentinel such as 0 for "unset" may be meant), never blamed on --param."""
    plugin = tmp_path / "baddefault.py"
    plugin.write_text(MISTAKES.replace("class Bare(Protocol):",
                                       "class Bare(Protocol):\n    PARAMS = {'rounds': Int(0, lo=1)}\n"))
    proc = _cli("--plugin", str(plugin), "list", "protocols", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "teachsim: warning: protocol 'bare': the default of PARAMS['rounds'] is 0, which is not an integer >= 1 "
        "(the plugin's own default: a config that leaves rounds out gets it)"]


def test_resuming_without_a_plugin_strategy_names_the_plugin(tmp_path, tiny_config):
    """A strategy is a parameter of a protocol ("a registered strategy"), not a name of
    its own table: its plugin is named all the same."""
    plugin = tmp_path / "farthest.py"
    plugin.write_text("import numpy as np\nimport teachsim\n\n\ndef farthest(model, X_pool, n, *, rng):\n"
                      "    return np.argsort(-np.linalg.norm(X_pool, axis=1), kind='stable')[:n]\n\n\n"
                      "teachsim.register_strategy('farthest', farthest)\n")
    tiny_config.update(seeds=[0], protocols=[{"name": "active-student", "strategy": "farthest", "pool": 40}])
    (tmp_path / "cfg.toml").write_text(to_toml(tiny_config))
    first = _cli("--plugin", str(plugin), "run", "cfg.toml", "--out", "run", "--executor", "serial", "--quiet",
                 "--no-report", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = _cli("run", "cfg.toml", "--out", "run", "--executor", "serial", "--resume", cwd=tmp_path)
    assert again.returncode == 2
    line = _one_line_error(again.stderr, again.stdout)
    assert "got 'farthest'" in line and f"loaded it from the plugin {plugin}" in line, line


def test_resuming_with_a_changed_plugin_file_says_so(tmp_path, noisy_config):
    plugin = tmp_path / "noisy.py"
    plugin.write_text(PLUGIN.read_text())
    noisy_config["seeds"] = [0]
    (tmp_path / "noisy.toml").write_text(to_toml(noisy_config))
    args = ("--plugin", str(plugin), "run", "noisy.toml", "--out", "run", "--executor", "serial", "--no-report")
    assert _cli(*args, cwd=tmp_path).returncode == 0
    plugin.write_text(PLUGIN.read_text() + "\n# edited after the run\n")
    again = _cli(*args, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"note: the plugin {plugin} changed since this run directory recorded it" in again.stderr
    assert "raise the plugin's VERSION" in again.stderr


def test_a_plugin_is_recorded_as_loaded_even_if_its_file_is_gone_by_then(tmp_path, restore_registry):
    """A run records each plugin's file and hash; a ``ray job submit`` working directory
    was once replaced under the running driver between the plugin's loading and that
    record (a traceback, the run lost). The record is what was loaded."""
    import hashlib

    from teachsim import registry

    plugin = tmp_path / "gone_soon.py"
    plugin.write_text("X = 1\n")
    registry.load_plugin(str(plugin))
    plugin.unlink()
    record = [r for r in registry.plugin_records() if r["plugin"] == str(plugin)]
    assert record == [{"plugin": str(plugin), "file": str(plugin), "provides": {},
                       "sha256": hashlib.sha256(b"X = 1\n").hexdigest()}]
