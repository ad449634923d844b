"""Any protocol as a PettingZoo AEC environment: the PettingZoo API, outside moves
going through the same channel, masks, determinism, and deferring = the protocol itself."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pettingzoo")

import teachsim
from teachsim import messages as m
from teachsim.agents.teacher import Teacher
from teachsim.platform import build as ep
from teachsim.platform import loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: one thread is fastest

K = 8
WORLD = {"task": {"name": "hidden-feature", "dim": 6, "manifold_dim": 2},
         "student": {"hidden": [16], "steps": 20, "initial_labels": 10},
         "budgets": (0, 10, 30), "candidates": K, "eval_points": 64}


def make(protocol, **kw):
    return teachsim.protocol_env(protocol, **{**WORLD, **kw})


def play(env, policy, seed=0, limit=500):
    """Play to the end; ``policy(env, agent, mask) -> action``. Returns (agent, obs, reward, action) per step."""
    env.reset(seed=seed)
    trace = []
    for _ in range(limit):
        agent = env.agent_selection
        if env.terminations[agent] or env.truncations[agent]:
            break
        obs, reward, _, _, info = env.last()
        action = policy(env, agent, info["action_mask"])
        trace.append((agent, obs.copy(), reward, action))
        env.step(action)
    return trace


def defer(env, agent, mask):
    return K


def first_legal(env, agent, mask):
    legal = np.flatnonzero(mask[:-1])
    return int(legal[0]) if len(legal) else K


def transcript(log):
    rows = []
    for d in log:
        msg = d.message
        arrays = tuple(None if getattr(msg, a) is None else getattr(msg, a).tobytes()
                       for a in ("points", "labels", "probs", "vectors", "mask"))
        rows.append((msg.kind, msg.sender, msg.reason, d.cost, d.cum_cost, d.phase, arrays))
    return rows


@pytest.mark.parametrize("protocol", ["passive", "active-student",
                                      {"name": "active-teacher", "push": "counterexample", "probes": 20}],
                         ids=["passive", "active-student", "active-teacher"])
def test_pettingzoo_api_test_passes(protocol):
    from pettingzoo.test import api_test

    api_test(make(protocol), num_cycles=20)


def test_agents_spaces_and_first_mover():
    env = make({"name": "active-teacher", "push": "boundary"})
    env.reset(seed=0)
    assert env.possible_agents == ["student", "teacher"]
    assert env.agent_selection == "teacher"          # active-teacher: the teacher moves first
    for agent in env.agents:
        assert env.action_space(agent).n == K + 1
        obs = env.observe(agent)
        assert obs.shape == (K + 3,) and env.observation_space(agent).contains(obs)
    env = make("passive")
    env.reset(seed=0)
    assert env.agent_selection == "student"


def test_outside_teacher_pushes_are_policy_pushes_charged_one_each():
    env = make({"name": "active-teacher", "push": "boundary"})
    chosen = []

    def policy(env, agent, mask):
        action = first_legal(env, agent, mask) if agent == "teacher" else K
        if action < K:
            chosen.append(action)
        return action

    play(env, policy)
    assert len(chosen) >= 5
    assert len(set(chosen)) == len(chosen), "a used candidate is masked afterwards"
    policy_pushes = [d for d in env.loop.channel.log if d.message.kind == "push" and d.message.reason == "policy"]
    assert len(policy_pushes) == len(chosen)
    for d, i in zip(policy_pushes, chosen):
        assert d.message.size == 1 and d.cost == 1.0
        np.testing.assert_array_equal(d.message.points[0], env.offers[i].astype(np.float32))
        np.testing.assert_array_equal(d.message.labels, env.teacher.label(env.offers[i: i + 1]))
        assert d.message.labels[0] != m.ABSTAIN
    # the protocol's own pushes fill the rest of the budget, never over it
    assert env.loop.channel.spent == pytest.approx(30)
    assert all(d.cum_cost <= 30 + 1e-9 for d in env.loop.channel.log)
    assert all(env.terminations.values())


def test_outside_student_queries_are_pool_points_answered_by_the_teacher():
    env = make("passive")
    chosen = []

    def policy(env, agent, mask):
        action = first_legal(env, agent, mask) if agent == "student" else K
        if action < K:
            chosen.append(action)
        return action

    play(env, policy)
    queries = [d.message for d in env.loop.channel.log if d.message.kind == "query"]
    assert [q.size for q in queries[: len(chosen)]] == [1] * len(chosen)
    for q, i in zip(queries, chosen):
        np.testing.assert_array_equal(q.points[0], env.pool[i])
    answers = [d for d in env.loop.channel.log if d.message.kind == "answer" and d.phase == "protocol"]
    assert sum(d.cost for d in answers) == pytest.approx(env.loop.channel.spent)


def test_action_masks_follow_the_protocol_rules():
    # passive: the teacher may not push; the student may query its pool
    env = make("passive")
    seen = {"student": 0, "teacher": 0}

    def check(env, agent, mask):
        assert mask[-1] == 1, "deferring is always allowed"
        if agent == "teacher":
            assert not mask[:-1].any()
        seen[agent] += int(mask[:-1].sum())
        return K

    play(env, check)
    assert seen["student"] > 0

    # active-teacher: the student may not query; the teacher may push where it is certain
    env = make({"name": "active-teacher", "push": "boundary"})
    seen = {"student": 0, "teacher": 0}

    def check2(env, agent, mask):
        assert mask[-1] == 1
        if agent == "student":
            assert not mask[:-1].any()
        else:
            certain = env.teacher.label(env.offers) != m.ABSTAIN
            assert not (mask[:-1].astype(bool) & ~certain).any(), "uncertain offers are masked"
        seen[agent] += int(mask[:-1].sum())
        return K

    play(env, check2)
    assert seen["teacher"] > 0


def test_a_masked_action_is_a_defer_never_a_push():
    deferred = make("passive")
    play(deferred, defer)
    masked = make("passive")
    play(masked, lambda env, agent, mask: 0 if agent == "teacher" else K)   # the teacher may not push
    assert transcript(masked.loop.channel.log) == transcript(deferred.loop.channel.log)
    assert not any(d.message.kind == "push" for d in masked.loop.channel.log)


def _random_policy(seed):
    rng = np.random.default_rng(seed)

    def policy(env, agent, mask):
        return int(rng.choice(np.flatnonzero(mask)))
    return policy


@pytest.mark.parametrize("protocol", ["active-student", {"name": "active-teacher", "push": "boundary"}],
                         ids=["active-student", "active-teacher"])
def test_same_seed_same_observations_and_rewards(protocol):
    a = play(make(protocol), _random_policy(1), seed=3)
    b = play(make(protocol), _random_policy(1), seed=3)
    assert len(a) == len(b) > 2
    for (ag1, o1, r1, a1), (ag2, o2, r2, a2) in zip(a, b):
        assert (ag1, r1, a1) == (ag2, r2, a2)
        np.testing.assert_array_equal(o1, o2)
    c = play(make(protocol), _random_policy(1), seed=4)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c)), "another seed, another episode"


def test_rewards_are_the_change_in_agreement():
    env = make({"name": "active-teacher", "push": "boundary"})
    env.reset(seed=0)
    start = env._agreement()
    total = 0.0
    while not all(env.terminations.values()):
        env.step(K)
        total += env.rewards["teacher"]
        assert env.rewards["teacher"] == env.rewards["student"]
    assert total == pytest.approx(env._agreement() - start)


def test_max_cycles_truncates():
    env = make("passive", max_cycles=3)
    trace = play(env, defer)
    assert len(trace) == 3
    assert all(env.truncations.values()) and not any(env.terminations.values())


@pytest.mark.parametrize("protocol", ["passive",
                                      {"name": "active-student", "strategy": "margin", "pool": 100},
                                      {"name": "membership", "query": "adversarial"},
                                      {"name": "active-teacher", "push": "counterexample", "probes": 20},
                                      {"name": "active-teacher", "push": "invariance"}],
                         ids=["passive", "active-student", "membership", "active-teacher-cx",
                              "active-teacher-inv"])
def test_all_defer_play_equals_converse(protocol):
    seed = 2
    env = make(protocol)
    play(env, defer, seed=seed)
    assert all(env.terminations.values())
    spec = env.spec
    task = ep.build_task(spec.task, seed)
    student = ep.build_student(spec.student, task, seed)
    conv = loop.converse(ep.build_protocol(spec.protocol_cfg), Teacher(task), student, spec.budgets, seed=seed,
                       initial_labels=spec.student["initial_labels"])
    assert transcript(env.loop.channel.log) == transcript(conv.channel.log)
    assert student.learn_log == env.student.learn_log
    for k, v in student.snapshot().items():
        np.testing.assert_array_equal(v.numpy(), env.student.snapshot()[k].numpy())


def test_bad_env_config_is_a_config_error():
    with pytest.raises(teachsim.ConfigError):
        teachsim.protocol_env({"name": "active-teacher", "push": "shout"})
    with pytest.raises(teachsim.ConfigError):
        teachsim.protocol_env("passive", student={"hiden": [4]})
