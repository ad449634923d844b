"""The episode loop on small real runs: determinism, budget, checkpoints, isolation, science."""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest
import torch

import teachsim
from teachsim import messages as m
from teachsim.agents.student import Student
from teachsim.agents.teacher import Teacher
from teachsim.config import load
from teachsim.platform.build import build_protocol, build_student, build_task
from teachsim.platform.loop import converse
from teachsim.platform.episode import run_episode
from teachsim.protocols.base import Protocol
from teachsim.tasks.base import Task


def test_import_is_light():
    code = ("import sys, teachsim; heavy = [n for n in ('ray', 'matplotlib', 'modAL', 'torch', 'pandas')"
            " if n in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_same_config_and_seed_give_identical_transcript_and_scores(tiny_config):
    spec = load(tiny_config).episodes[0]
    a, b = run_episode(spec), run_episode(spec)
    assert a.status == b.status == "finished", a.error
    assert a.messages == b.messages
    assert a.payloads.keys() == b.payloads.keys()
    for k in a.payloads:
        np.testing.assert_array_equal(a.payloads[k], b.payloads[k])
    assert a.scores == b.scores
    for budget in a.snapshots:
        for name in a.snapshots[budget]:
            np.testing.assert_array_equal(a.snapshots[budget][name], b.snapshots[budget][name])


def test_different_seeds_differ(tiny_config):
    eps = load(tiny_config).episodes
    a, b = run_episode(eps[0]), run_episode(eps[1])
    assert a.spec.seed != b.spec.seed
    assert not np.array_equal(a.payloads["1.points"], b.payloads["1.points"])


class CountingStudent(Student):
    """Records, at each snapshot, how many points it had been sent."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.at_snapshot = []

    def snapshot(self):
        sent = sum(msg.size for msg in self.heard if msg.kind in ("answer", "push"))
        self.at_snapshot.append((sent, self.stale))
        return super().snapshot()


def _agents(tiny_config, cls=Student):
    spec = load(tiny_config).episodes[0]
    task = build_task(spec.task, 0)
    base = build_student(spec.student, task, 0)
    student = cls(base.model, base.method, base.data, base.classes, seed=0, steps=5)
    return spec, task, student


@pytest.mark.parametrize("batch", [3, 7, 25])
def test_snapshot_sees_exactly_the_points_that_reached_the_checkpoint(tiny_config, batch):
    spec, task, student = _agents(tiny_config, CountingStudent)
    budgets = [0, 10, 20, 33]
    conv = converse(build_protocol({"name": "passive", "batch": batch}), Teacher(task), student, budgets,
                    seed=0, initial_labels=4)
    assert [b for b, _, _ in conv.checkpoints] == budgets
    # initial labels + exactly the checkpoint's budget, and the student had learned all of it
    assert student.at_snapshot == [(4 + b, False) for b in budgets]
    assert max(d.cum_cost for d in conv.channel.log) == 33


class Greedy(Protocol):
    """Pushes far more than any budget allows, in odd sizes."""

    legal = {m.STUDENT: set(), m.TEACHER: {"push"}}
    first = m.TEACHER

    def teacher_turn(self, teacher, inbox, ctx):
        x = teacher.task.data.sample(37, ctx.rng)
        return [m.push(x, np.maximum(teacher.label(x), 0), "greedy")]


def test_budget_is_never_exceeded_by_a_greedy_protocol(tiny_config):
    spec, task, student = _agents(tiny_config)
    conv = converse(Greedy(), Teacher(task), student, [0, 10, 45], seed=0)
    costs = [d.cum_cost for d in conv.channel.log]
    assert costs == sorted(costs) and costs[-1] == 45
    assert sum(d.cost for d in conv.channel.log) == 45


def _reachable(root, limit=200_000):
    seen, stack, found = set(), [root], []
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, type(sys))):
            continue
        seen.add(id(obj))
        found.append(obj)
        stack.extend(gc.get_referents(obj))
    return found


def test_student_holds_no_reference_to_the_teacher_mechanism(tiny_config):
    spec, task, student = _agents(tiny_config)
    teacher = Teacher(task)
    converse(build_protocol({"name": "passive"}), teacher, student, [0, 10, 20], seed=0, initial_labels=5)
    reachable = _reachable(student)
    assert not any(isinstance(o, (Task, Teacher)) for o in reachable)
    mechanism = {id(t) for t in vars(task).values() if isinstance(t, torch.Tensor)}
    assert mechanism and not any(id(o) in mechanism for o in reachable)
    assert not any(isinstance(o, Student) for o in _reachable(teacher))


class Illegal(Protocol):
    """A student that tries to label points itself."""

    legal = {m.STUDENT: {"query"}, m.TEACHER: {"answer"}}

    def student_turn(self, student, inbox, ctx):
        return [m.Message("answer", m.STUDENT, m.TEACHER, points=np.zeros((1, 6)), labels=[0])]


def test_an_illegal_message_fails_the_episode_with_its_error(tiny_config):
    teachsim.register_protocol("illegal-test", Illegal)
    tiny_config["protocols"] = [{"name": "illegal-test"}]
    result = run_episode(load(tiny_config).episodes[0])
    assert result.status == "failed"
    assert "ProtocolError" in result.error and "student -> teacher" in result.error


class Silent(Protocol):
    """Says nothing: the loop must end by itself."""


def test_a_silent_protocol_terminates_and_unreached_checkpoints_are_marked(tiny_config):
    spec, task, student = _agents(tiny_config)
    conv = converse(Silent(), Teacher(task), student, [0, 10], seed=0, initial_labels=5)
    assert conv.turns == 2
    assert conv.checkpoints == [(0.0, 0.0, True), (10.0, 0.0, False)]


@pytest.mark.slow
def test_more_passive_labels_raise_clean_accuracy(tmp_path):
    cfg = {"name": "more-data", "seeds": [0, 1, 2], "budgets": [0, 40, 300],
           "task": {"name": "hidden-feature", "dim": 10, "manifold_dim": 2, "classes": 3, "teacher": "net"},
           "student": {"hidden": [32], "initial_labels": 6, "steps": 100},
           "judge": {"test_points": 300, "steps": 5, "restarts": 1, "strong_steps": 5, "strong_restarts": 1},
           "protocols": [{"name": "passive"}]}
    run = teachsim.run(cfg, out=tmp_path / "r", progress=False)
    s = run.summary()
    clean = s[s["metric"] == "clean_acc"].set_index("budget")["mean"]
    assert clean[40.0] > clean[0.0] + 0.05
    assert clean[300.0] > clean[40.0]
    assert clean[300.0] > 0.9


@pytest.mark.parametrize("how", ["loop", "learn"])
def test_an_episode_past_its_time_limit_fails_alone(tmp_path, tiny_config, restore_registry, how):
    """A turn that never returns, or learn() of 10**15 steps, once hung a run for ever: with
    a time limit the episode fails with EpisodeTimeout, and the other episodes finish."""
    from tiny import STUCK_PLUGIN

    plugin = tmp_path / "stuck.py"
    plugin.write_text(STUCK_PLUGIN)
    tiny_config.update(seeds=[0], time_limit=1.5)
    tiny_config["protocols"][1] = {"name": "stuck", "how": how}
    run = teachsim.run(tiny_config, out=tmp_path / "run", executor="serial", progress=False, plugins=(str(plugin),))
    passive, stuck = (row for _, row in run.episodes.sort_values("episode_id").iterrows())
    assert passive["status"] == "finished"
    assert stuck["status"] == "failed"
    assert stuck["error"].startswith("EpisodeTimeout: the episode ran past its time limit of 1.5 s"), stuck["error"]
    assert stuck["seconds"] < 10


def test_the_time_limit_leaves_no_alarm_behind(tiny_config):
    """After an episode the previous SIGALRM handler is back and no timer is left running."""
    import signal

    spec = load({**tiny_config, "seeds": [0], "time_limit": 60}).episodes[0]
    before = signal.getsignal(signal.SIGALRM)
    result = run_episode(spec, limit=60)
    assert result.status == "finished", result.error
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
