"""The built-in protocol families on small real episodes: conformance of
every built-in, what each push or query really contains, and the checker catching bad
user protocols."""

from __future__ import annotations

import copy
import time
from typing import ClassVar

import numpy as np
import pytest
import torch

import teachsim
from teachsim import messages as m
from teachsim import registry
from teachsim.agents.teacher import Teacher
from teachsim.platform import build as ep
from teachsim.platform import loop
from teachsim.platform.episode import run_episode
from teachsim.config import load, resolve_experiment, resolve_student
from teachsim.protocols.active_teacher import PUSHES
from teachsim.protocols.base import Protocol
from teachsim.protocols.membership import model_boundary_points
from teachsim.schema import Int

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: one thread is fastest

TASK = {"name": "hidden-feature", "dim": 8, "manifold_dim": 2}
STUDENT = {"hidden": [16], "steps": 20, "initial_labels": 10}
BUDGETS = (0, 10, 30)
STRATEGIES = tuple(registry.strategies.names())   # every built-in (collected before any plugin loads)


def play(protocol, *, task=None, student=None, budgets=BUDGETS, seed=0):
    """Run one episode of ``protocol`` (a ``[[protocols]]`` table) to its end, without judging."""
    exp = resolve_experiment({"name": "t", "seeds": [seed], "budgets": list(budgets),
                              "task": dict(task or TASK), "student": dict(student or STUDENT),
                              "protocols": [protocol]})
    spec = exp.episodes[0]
    task_obj = ep.build_task(spec.task, seed)
    student_obj = ep.build_student(spec.student, task_obj, seed)
    proto = ep.build_protocol(spec.protocol_cfg)
    conv = loop.converse(proto, Teacher(task_obj), student_obj, spec.budgets, seed=seed,
                       initial_labels=spec.student["initial_labels"])
    return conv, student_obj, task_obj, proto


def messages(conv, kind=None, phase="protocol"):
    return [d for d in conv.channel.log if (kind is None or d.message.kind == kind)
            and (phase is None or d.phase == phase)]


# -- every built-in conforms ---------------------------------------------------------------------

VARIANTS = ([("passive", {})]
            + [("active-student", {"strategy": s, "pool": 150}) for s in STRATEGIES]
            + [("membership", {"query": q}) for q in ("adversarial", "boundary")]
            + [("membership", {"query": "adversarial", "norm": "linf", "eps": 0.3})]
            + [("active-teacher", {"push": p}) for p in PUSHES]
            + [("active-teacher", {"push": "invariance", "then": "counterexample"})])


@pytest.mark.parametrize("name, params", VARIANTS, ids=[f"{n}-{'-'.join(map(str, p.values()))}" for n, p in VARIANTS])
def test_check_protocol_passes_every_builtin(name, params):
    report = teachsim.check_protocol(name, params=params, budgets=BUDGETS)
    assert report.ok, report.failures
    assert set(report.results) == {"runs", "legal", "budget", "terminates", "deterministic", "replays"}


def test_every_builtin_protocol_is_registered():
    assert {"passive", "active-student", "membership", "active-teacher"} <= set(registry.protocols.names())


# -- the checker catches bad user protocols --------------------------------------------------------

class _Asker(Protocol):
    """Passive-like base for the bad protocols below."""

    PARAMS: ClassVar[dict] = {"batch": Int(5, lo=1)}

    def points(self, student, n, ctx):
        return student.data.sample(n, ctx.rng)

    def student_turn(self, student, inbox, ctx):
        student.learn()
        n = min(self.batch, ctx.labels_to_checkpoint)
        if n <= 0:
            return [m.done(m.STUDENT, "budget spent")]
        return [m.query(self.points(student, n, ctx))]

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]


class PushesToo(_Asker):
    """Answers, and also pushes although its rules allow only answers."""

    def teacher_turn(self, teacher, inbox, ctx):
        out = super().teacher_turn(teacher, inbox, ctx)
        x = teacher.task.data.sample(3, ctx.rng)
        return out + [m.push(x, np.maximum(teacher.label(x), 0), "sneaky")]


class SpeaksForTeacher(_Asker):
    """The student's turn sends the teacher's answer itself."""

    def student_turn(self, student, inbox, ctx):
        x = student.data.sample(2, ctx.rng)
        return [m.answer(x, np.zeros(2, np.int64))]


class GlobalRng(_Asker):
    """Draws its queries from numpy's global generator."""

    def points(self, student, n, ctx):
        return np.random.standard_normal((n, student.data.dim)).astype(np.float32)


class Clock(_Asker):
    """Seeds its queries from the clock."""

    def points(self, student, n, ctx):
        return student.data.sample(n, np.random.default_rng(time.perf_counter_ns()))


class Tamper(_Asker):
    """Shrinks the student's weights behind learn()'s back."""

    def student_turn(self, student, inbox, ctx):
        with torch.no_grad():
            for p in student.model.parameters():
                p.mul_(0.9)
        return super().student_turn(student, inbox, ctx)


class ProbeForever(Protocol):
    """Probes ``per_turn`` points every turn and never spends or ends."""

    legal: ClassVar[dict] = {m.STUDENT: {"predictions"}, m.TEACHER: {"probe"}}
    first = m.TEACHER
    per_turn = 4

    def teacher_turn(self, teacher, inbox, ctx):
        return [m.probe(teacher.task.data.sample(self.per_turn, ctx.rng))]

    def student_turn(self, student, inbox, ctx):
        return [m.predictions(student.predict(p.points)) for p in inbox if p.kind == "probe"]


@pytest.mark.parametrize("cls, failing, words", [
    (PushesToo, "legal", "push"),
    (SpeaksForTeacher, "legal", "student"),
    (GlobalRng, "deterministic", "differ"),
    (Clock, "deterministic", "differ"),
    (Tamper, "replays", "different student"),
    (ProbeForever, "terminates", "still going"),
], ids=["illegal-kind", "wrong-sender", "global-rng", "clock", "tamper", "probe-forever"])
def test_check_protocol_catches_bad_user_protocols(restore_registry, cls, failing, words):
    teachsim.register_protocol("bad-test", cls)
    report = teachsim.check_protocol("bad-test", budgets=BUDGETS, max_turns=40)
    assert not report.ok
    ok, detail = report.results[failing]
    assert not ok, report.results
    assert words in detail, detail
    assert f"FAIL {failing}" in str(report)
    assert "check(s) failed" in str(report)
    # the other checks do not blame it for what it did not do
    if failing in ("deterministic", "replays", "terminates"):
        assert report.results["legal"][0] and report.results["budget"][0], report.results
    if failing == "replays":
        assert report.results["deterministic"][0]


def test_check_protocol_bad_input_is_a_config_error():
    with pytest.raises(teachsim.ConfigError, match="protocols"):
        teachsim.check_protocol("no-such-protocol")
    with pytest.raises(teachsim.ConfigError, match="push"):
        teachsim.check_protocol("active-teacher", params={"push": "shout"})


# -- budget ------------------------------------------------------------------------------------------

FAMILIES = [{"name": "passive", "batch": 5},
            {"name": "active-student", "strategy": "margin", "pool": 100, "batch": 5},
            {"name": "membership", "query": "adversarial", "batch": 5},
            {"name": "membership", "query": "boundary", "batch": 5},
            {"name": "active-teacher", "push": "boundary", "batch": 5},
            {"name": "active-teacher", "push": "offmanifold", "batch": 5},
            {"name": "active-teacher", "push": "invariance", "batch": 5},
            {"name": "active-teacher", "push": "counterexample", "batch": 5, "probes": 50}]


@pytest.mark.parametrize("proto", FAMILIES, ids=lambda p: "-".join(map(str, p.values())))
def test_budget_is_never_exceeded_and_checkpoints_are_hit_exactly(proto):
    budgets = (0, 7, 23)
    conv, student, _, _ = play(proto, budgets=budgets)
    spent = 0.0
    for d in conv.channel.log:
        rule = 0.0 if d.phase == "initial" else conv.channel.cost(d.message)
        assert d.cost == pytest.approx(rule)
        spent += d.cost
        assert d.cum_cost == pytest.approx(spent)
        assert d.cum_cost <= 23 + 1e-9
        if d.message.kind in ("answer", "push") and d.phase == "protocol":
            assert d.cost == d.message.size      # 1 per point, ABSTAIN included
    assert conv.channel.spent <= 23 + 1e-9
    if proto.get("push") != "counterexample":     # the others spend the whole budget
        assert conv.channel.spent == pytest.approx(23)
    assert sorted(conv.snapshots) == [0.0, 7.0, 23.0]
    for budget, cum, reached in conv.checkpoints:
        if reached and proto.get("push") != "invariance":   # labelled points split at checkpoints
            assert cum == pytest.approx(budget)
    assert student.n_labelled <= 10 + 23


def test_an_explanation_that_does_not_fit_is_not_sent_and_the_budget_goes_to_then():
    # 6 ignored directions at cost 1 each do not fit a final budget of 4: the teacher
    # does not explain and pushes data instead, never over budget
    conv, student, _, _ = play({"name": "active-teacher", "push": "invariance"}, budgets=(0, 4))
    assert not messages(conv, "explain")
    assert conv.channel.refused == 0
    assert conv.channel.spent == 4
    assert student.invariance_basis() is None


def test_the_channel_refuses_an_explanation_over_budget():
    from teachsim.protocols.channel import Channel

    got = []
    ch = Channel([0, 4], observers={m.STUDENT: got.append, m.TEACHER: got.append}, on_checkpoint=lambda b: None,
                 legal={m.TEACHER: {"explain"}}, dim=8, classes=2)
    assert ch.send(m.explain("invariance", vectors=np.eye(8)[2:])) == []
    assert ch.refused == 1 and ch.spent == 0 and not got


# -- ABSTAIN is information, never a label -----------------------------------------------------------

WIDE_GAMMA = {"name": "hidden-feature", "dim": 8, "manifold_dim": 2, "gamma": 0.5}


@pytest.mark.parametrize("proto", [{"name": "active-student", "strategy": "uncertainty", "pool": 200},
                                   {"name": "active-student", "strategy": "random", "pool": 200},
                                   {"name": "membership", "query": "boundary"},
                                   {"name": "membership", "query": "adversarial"}],
                         ids=lambda p: "-".join(map(str, p.values())))
def test_abstain_answers_never_become_training_labels(proto):
    conv, student, task, _ = play(proto, task=WIDE_GAMMA)
    answers = messages(conv, "answer", phase=None)
    abstained = sum(int((d.message.labels == m.ABSTAIN).sum()) for d in answers)
    assert abstained > 0, "the wide uncertain set must make the teacher abstain"
    _, y = student.training_set()
    assert (y != m.ABSTAIN).all()
    assert len(y) == sum(int((d.message.labels != m.ABSTAIN).sum()) for d in answers)
    # every abstained point is kept as information, and it really is uncertain for the teacher
    kept = np.concatenate(student.abstained)
    assert len(kept) == abstained
    assert (task.label(kept) == m.ABSTAIN).all()
    # and it still cost its unit
    for d in messages(conv, "answer"):
        assert d.cost == d.message.size


# -- active-student -----------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_active_student_asks_only_pool_points_and_never_twice(strategy):
    conv, _, _, proto = play({"name": "active-student", "strategy": strategy, "pool": 60, "batch": 10},
                             budgets=(0, 10, 40))
    asked = np.concatenate([d.message.points for d in messages(conv, "query")])
    assert len(asked) == 40
    rows = {row.tobytes(): i for i, row in enumerate(proto.X_pool)}
    idx = [rows.get(row.tobytes()) for row in asked]
    assert None not in idx, "queried a point outside the pool"
    assert len(set(idx)) == len(idx), "queried a pool point twice"
    assert len(proto.unasked) == 60 - 40 and not set(idx) & set(proto.unasked.tolist())


def test_active_student_stops_when_the_pool_is_exhausted():
    conv, _, _, _ = play({"name": "active-student", "strategy": "random", "pool": 12, "batch": 5},
                         budgets=(0, 30))
    assert sum(d.message.size for d in messages(conv, "query")) == 12
    done = messages(conv, "done")
    assert done and "pool exhausted" in done[-1].message.reason
    assert conv.channel.spent == 12


def test_committee_is_deterministic_and_leaves_the_student_untouched():
    _, student, task, _ = play({"name": "passive"})
    before = student.snapshot()
    X = task.data.sample(50, np.random.default_rng(0))
    a, b = student.committee(3, 0), student.committee(3, 0)
    assert len(a.members) == 3
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_allclose(a.predict_proba(X).sum(1), 1.0, atol=1e-5)
    assert not np.allclose(a.members[0](torch.from_numpy(X)).detach(), a.members[1](torch.from_numpy(X)).detach())
    for k, v in student.snapshot().items():
        assert torch.equal(v, before[k])


# -- active-teacher ---------------------------------------------------------------------------------

def test_counterexample_pushes_are_exactly_the_student_mistakes():
    batch = 30
    conv, _, task, _ = play({"name": "active-teacher", "push": "counterexample", "probes": 30, "batch": batch,
                             "patience": 5}, budgets=(0, 60))
    final = conv.channel.final
    pushes = rounds = 0
    probe = wrong = pred = None
    for d in conv.channel.log:
        msg = d.message
        if msg.kind == "probe":
            assert wrong is None or len(wrong) == 0, "the student was wrong but nothing was pushed"
            probe, wrong, pred = msg, None, None
        elif msg.kind == "predictions":
            assert probe is not None and len(msg.labels) == len(probe.points)
            truth = task.label(probe.points)
            pred = msg
            wrong = np.flatnonzero((truth != m.ABSTAIN) & (truth != msg.labels))
            rounds += 1
        elif msg.kind == "push":
            assert msg.reason == "counterexample"
            assert wrong is not None and len(wrong), "pushed without a mistake to show"
            confidence = pred.probs[wrong, pred.labels[wrong]]
            order = wrong[np.argsort(-confidence, kind="stable")]
            n = int(min(len(wrong), batch, final - (d.cum_cost - d.cost)))
            np.testing.assert_array_equal(msg.points, probe.points[order[:n]])   # most confident first
            np.testing.assert_array_equal(msg.labels, task.label(msg.points))
            assert (msg.labels != pred.labels[order[:n]]).all()
            pushes += 1
            wrong = np.array([], dtype=np.int64)
    assert pushes >= 1 and rounds > pushes


@pytest.mark.parametrize("limit", [0, 50])
def test_probe_limit_is_respected_and_the_teacher_then_says_done(limit):
    conv, _, _, _ = play({"name": "active-teacher", "push": "counterexample", "probes": 20, "probe_limit": limit,
                          "patience": 100}, budgets=(0, 500))
    assert conv.channel.probed == limit
    assert [d.message.size for d in messages(conv, "probe")] == ([20, 20, 10] if limit else [])
    last = conv.channel.log[-1].message
    assert last.kind == "done" and last.sender == m.TEACHER
    assert "probe limit" in last.reason


class ProbesTooMuch(ProbeForever):
    """Ignores ctx.probe_room: asks for 30 points every turn."""

    PARAMS: ClassVar[dict] = {"probe_limit": Int(45, lo=0)}
    per_turn = 30


def test_channel_enforces_probe_limit_on_a_protocol_that_ignores_it(restore_registry):
    teachsim.register_protocol("greedy-prober", ProbesTooMuch)
    conv, _, _, _ = play({"name": "greedy-prober"})
    assert conv.channel.probed == 45
    assert [d.message.size for d in messages(conv, "probe")] == [30, 15]
    assert conv.channel.refused >= 1


@pytest.mark.parametrize("classes", [2, 3])
def test_boundary_pushes_lie_just_outside_the_uncertain_set(classes):
    gamma, width = 0.3, 0.5
    task_cfg = {**TASK, "gamma": gamma, "classes": classes}
    conv, _, task, _ = play({"name": "active-teacher", "push": "boundary", "width": width}, task=task_cfg)
    pushes = messages(conv, "push")
    assert sum(d.message.size for d in pushes) == 30
    x = np.concatenate([d.message.points for d in pushes])
    y = np.concatenate([d.message.labels for d in pushes])
    assert all(d.message.reason == "boundary" for d in pushes)
    margin = task.margin(torch.from_numpy(x.copy())).detach().numpy()
    assert margin.min() >= gamma - 1e-4
    assert margin.max() <= gamma * (1 + width) + 1e-3
    np.testing.assert_array_equal(y, task.label(x))


@pytest.mark.parametrize("scale", [0.2, 1.0])
def test_offmanifold_pushes_vary_the_ignored_coordinates_and_stay_certain(scale):
    conv, _, task, _ = play({"name": "active-teacher", "push": "offmanifold", "scale": scale})
    pushes = messages(conv, "push")
    x = np.concatenate([d.message.points for d in pushes])
    y = np.concatenate([d.message.labels for d in pushes])
    assert len(x) == 30 and all(d.message.reason == "offmanifold" for d in pushes)
    k = TASK["manifold_dim"]
    data = task.data.sample(100, np.random.default_rng(0))
    assert np.all(data[:, k:] == 0), "the data never vary the ignored coordinates"
    assert np.all(np.abs(x[:, k:]).max(axis=1) > 0)
    assert 0.2 * scale < x[:, k:].std() < 1.2 * scale        # shifts of the size asked for
    assert (y != m.ABSTAIN).all()
    np.testing.assert_array_equal(y, task.label(x))


def test_invariance_explains_once_orthonormal_orthogonal_to_the_manifold_and_charged_per_vector():
    cost = 0.5
    conv, student, task, _ = play({"name": "active-teacher", "push": "invariance", "explain_cost": cost})
    explains = messages(conv, "explain")
    assert len(explains) == 1
    d = explains[0]
    V = d.message.vectors
    assert d.message.reason == "invariance"
    assert V.shape == (TASK["dim"] - TASK["manifold_dim"], TASK["dim"])
    np.testing.assert_allclose(V @ V.T, np.eye(len(V)), atol=1e-6)
    data = task.data.sample(200, np.random.default_rng(0))
    np.testing.assert_allclose(data @ V.T, 0.0, atol=1e-6)
    assert d.cost == pytest.approx(cost * len(V))
    assert d.idx < min(p.idx for p in messages(conv, "push")), "the explanation comes first"
    assert conv.channel.spent == pytest.approx(30)
    # the student holds the same subspace
    B = student.invariance_basis()
    np.testing.assert_allclose(B.T @ B, V.T @ V, atol=1e-5)


def _gradient_along(model, X, V):
    """Squared norm of the logits' input Jacobian projected onto V, averaged over X."""
    x = torch.from_numpy(X).requires_grad_(True)
    out = model(x)
    total = 0.0
    for c in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, c].sum(), x, retain_graph=True)
        total += float(((g @ torch.from_numpy(V).T) ** 2).sum(1).mean())
    return total


def _flatness_told_and_not(task_cfg, student_cfg) -> dict[bool, float]:
    """The student's gradient along the ignored directions, trained on the same labels
    without (False) and with (True) the teacher's invariance explanation."""
    task = ep.build_task(task_cfg, 0)
    cfg = resolve_student(student_cfg)
    X = task.data.sample(60, np.random.default_rng(1))
    y = task.label(X)
    V = task.invariances()
    grads = {}
    for told in (False, True):
        student = ep.build_student(cfg, task, 0)
        student.observe(m.answer(X, y))
        if told:
            student.observe(m.explain("invariance", vectors=V))
        student.learn()
        grads[told] = _gradient_along(student.model, X, V)
    return grads


def test_invariance_explanation_flattens_the_student_along_the_ignored_directions():
    grads = _flatness_told_and_not({**TASK, "classes": 2}, {"hidden": [16], "steps": 30})
    assert grads[True] < 0.2 * grads[False], grads


@pytest.mark.parametrize("scale, penalty", [(2.0, 0.0), (0.0, 1.0)])
def test_invariance_augmentation_and_penalty_each_help(scale, penalty):
    grads = _flatness_told_and_not(TASK, {"hidden": [16], "steps": 30, "invariance_scale": scale,
                                          "invariance_penalty": penalty})
    assert grads[True] < 0.5 * grads[False], grads


def test_invariance_with_scale_and_penalty_off_changes_nothing():
    task = ep.build_task(TASK, 0)
    cfg = resolve_student({"hidden": [16], "steps": 20, "invariance_scale": 0.0, "invariance_penalty": 0.0})
    X = task.data.sample(40, np.random.default_rng(1))
    weights = []
    for told in (False, True):
        student = ep.build_student(cfg, task, 0)
        student.observe(m.answer(X, task.label(X)))
        if told:
            student.observe(m.explain("invariance", vectors=task.invariances()))
        student.learn()
        weights.append(student.snapshot())
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k])


# -- membership ------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm, eps", [("l2", 0.7), ("linf", 0.2)])
def test_membership_adversarial_queries_lie_within_eps_of_labelled_points(norm, eps):
    conv, _, _, _ = play({"name": "membership", "query": "adversarial", "norm": norm, "eps": eps, "batch": 10})
    labelled = []
    queries = 0
    for d in conv.channel.log:
        msg = d.message
        if msg.kind == "query":
            held = np.concatenate(labelled)
            diff = msg.points[:, None, :] - held[None]
            dist = np.linalg.norm(diff, axis=2) if norm == "l2" else np.abs(diff).max(axis=2)
            assert dist.min(axis=1).max() <= eps + 1e-4
            assert dist.min(axis=1).max() > 0.5 * eps, "the queries should move towards the attack radius"
            queries += 1
        elif msg.kind == "answer":
            labelled.append(msg.points[msg.labels != m.ABSTAIN])
    assert queries == 3


def test_model_boundary_points_land_on_a_two_class_linear_boundary():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(5, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 5, generator=g))
        lin.bias.copy_(torch.randn(2, generator=g))
    x = 3 * torch.randn(20, 5, generator=g)
    w = lin.weight[0] - lin.weight[1]
    b = lin.bias[0] - lin.bias[1]
    with torch.no_grad():
        projection = x - ((x @ w + b) / (w @ w))[:, None] * w
    z = model_boundary_points(lin, x, overshoot=0.0)
    torch.testing.assert_close(z, projection, atol=1e-4, rtol=0)
    z = model_boundary_points(lin, x)   # the default overshoot still ends on the boundary
    with torch.no_grad():
        gap = lin(z)
    assert (gap[:, 0] - gap[:, 1]).abs().max() < 1e-3
    torch.testing.assert_close(z, projection, atol=1e-3, rtol=0)


def test_model_boundary_points_land_on_a_multiclass_linear_boundary_within_the_box():
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 4, generator=g))
        lin.bias.zero_()
    x = torch.randn(30, 4, generator=g)
    z = model_boundary_points(lin, x, steps=50)
    with torch.no_grad():
        top = lin(z).topk(2, dim=1).values
    assert (top[:, 0] - top[:, 1]).max() < 1e-3
    lo, hi = -torch.ones(4) * 5, torch.ones(4) * 5
    zb = model_boundary_points(lin, x, steps=50, box=(lo, hi))
    assert (zb >= lo).all() and (zb <= hi).all()


# -- schedule and determinism ---------------------------------------------------------------------------

@pytest.mark.parametrize("proto", [{"name": "passive"}, {"name": "active-student", "pool": 100},
                                   {"name": "membership"}, {"name": "active-teacher", "push": "boundary"}],
                         ids=lambda p: p["name"])
def test_protocol_steps_set_every_training_of_the_episode(proto):
    _, student, _, _ = play({**proto, "steps": 3, "batch": 5})
    assert student.learn_log, "the student never trained"
    assert {steps for _, steps in student.learn_log} == {3}, student.learn_log


def _tiny_spec(tiny_config, proto):
    cfg = copy.deepcopy(tiny_config)
    cfg["protocols"] = [proto]
    cfg["seeds"] = [0]
    return load(cfg).episodes[0]


@pytest.mark.parametrize("proto", [{"name": "passive"},
                                   {"name": "active-student", "strategy": "qbc", "pool": 100},
                                   {"name": "membership", "query": "adversarial"},
                                   {"name": "membership", "query": "boundary"},
                                   {"name": "active-teacher", "push": "counterexample", "probes": 50},
                                   {"name": "active-teacher", "push": "invariance", "then": "offmanifold"}],
                         ids=lambda p: "-".join(map(str, p.values())))
def test_run_episode_transcripts_are_deterministic(tiny_config, proto):
    spec = _tiny_spec(tiny_config, proto)
    a, b = run_episode(spec), run_episode(spec)
    assert a.status == b.status == "finished", a.error
    assert len(a.messages) > 2
    assert a.messages == b.messages
    assert a.payloads.keys() == b.payloads.keys()
    for k in a.payloads:
        np.testing.assert_array_equal(a.payloads[k], b.payloads[k])
    assert a.scores == b.scores


def test_the_base_class_example_is_the_real_passive():
    """The example in the protocol base class's docstring (a doctest) is the built-in
    passive line for line, so what a new author copies is what runs."""
    import inspect
    import re

    from teachsim.protocols import base, passive

    example = [re.sub(r"^    (>>>|\.\.\.) ?", "", line) for line in base.__doc__.splitlines()
               if re.match(r"^    (>>>|\.\.\.)", line)]
    start = next(i for i, line in enumerate(example) if line.startswith("class Passive"))
    body = [line for line in example[start + 1:] if line.strip()]
    body = body[:next(i for i, line in enumerate(body) if not line.startswith(" "))]
    real = [line for line in inspect.getsource(passive.Passive).splitlines()[1:]
            if line.strip() and not line.strip().startswith('"""')]
    assert body == real
