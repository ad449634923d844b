"""Any protocol as a PettingZoo AEC environment, so teacher (or student) policies can be
trained with reinforcement learning. Needs the ``rl`` extra (``pip install teachsim[rl]``).

The environment steps the one episode loop (:class:`teachsim.platform.loop.Loop`) a
turn at a time; the agents are ``"student"`` and ``"teacher"``, in the protocol's turn
order. Each agent's action is ``Discrete(candidates + 1)``:

- ``candidates`` (the last action) *defers*: the protocol makes its own move;
- ``i < candidates`` is an outside move about candidate point ``i``: the student
  queries its pool point ``i`` (pool drawn from the data distribution), the teacher
  pushes its candidate ``i`` (near-data and broad draws) with its label. Outside moves go
  through the same channel, so budget, legality and the transcript hold as always; they
  are masked (``infos[agent]["action_mask"]``) where the protocol does not allow that
  kind, the point was used, or (teacher) the teacher is uncertain there.

Observations are float32 vectors of ``candidates + 3`` values: per candidate, the
student's uncertainty (1 - max probability) for the student and the teacher's own margin
for the teacher (each side sees only what it may know), then budget spent / final
budget, labelled points / final budget and turn / ``max_cycles``. After every step both
agents are rewarded with the change in the student's agreement with the teacher on a
fixed set of teacher-certain broad test points (a cheap stand-in for the judge).

Example:
    >>> from teachsim.pettingzoo import protocol_env
    >>> env = protocol_env({"name": "active-teacher", "push": "boundary"}, budgets=(0, 20), candidates=8)
    >>> env.reset(seed=0)
    >>> env.agent_selection
    'teacher'
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from . import messages as m
from . import seeding

SMALL_TASK = {"name": "hidden-feature", "dim": 10, "manifold_dim": 2}
SMALL_STUDENT = {"hidden": [32], "steps": 30, "initial_labels": 20}
BOUND = 1e6   # observations are clipped to [0, BOUND] (finite bounds for RL libraries)


def protocol_env(protocol: Mapping[str, Any] | str, *, task: Mapping[str, Any] | None = None,
                 student: Mapping[str, Any] | None = None, budgets: Sequence[float] = (0, 25, 50),
                 candidates: int = 32, eval_points: int = 256, max_cycles: int = 1000, seed: int = 0):
    """A PettingZoo ``AECEnv`` running ``protocol`` (a ``[[protocols]]`` table or a name).

    ``task`` and ``student`` are config tables (defaults: a small hidden-feature world);
    every key is checked as in a config file (``ConfigError`` on a bad one).
    """
    from .config import resolve_experiment

    table = {"name": protocol} if isinstance(protocol, str) else dict(protocol)
    exp = resolve_experiment({"name": "env", "seeds": [seed], "budgets": list(budgets),
                              "task": dict(task or SMALL_TASK), "student": dict(student or SMALL_STUDENT),
                              "protocols": [table]})
    return _env_class()(exp.episodes[0], candidates=candidates, eval_points=eval_points, max_cycles=max_cycles)


def _env_class():
    # Built on first use so that pettingzoo is imported only by those who ask for it.
    global ProtocolEnv
    if "ProtocolEnv" in globals():
        return ProtocolEnv
    from gymnasium import spaces
    from pettingzoo import AECEnv

    class ProtocolEnv(AECEnv):  # noqa: F811 - defined once, on first use
        metadata = {"name": "teachsim_protocol_v0", "render_modes": [], "is_parallelizable": False}

        def __init__(self, spec, *, candidates: int, eval_points: int, max_cycles: int):
            super().__init__()
            self.spec, self.k, self.eval_points, self.max_cycles = spec, candidates, eval_points, max_cycles
            self.possible_agents = [m.STUDENT, m.TEACHER]
            self._obs = spaces.Box(0.0, BOUND, (candidates + 3,), np.float32)
            self._act = spaces.Discrete(candidates + 1)
            self.seed_ = spec.seed

        def observation_space(self, agent):
            return self._obs

        def action_space(self, agent):
            return self._act

        def reset(self, seed: int | None = None, options: dict | None = None) -> None:
            with seeding.single_thread():
                self._reset(seed)

        def _reset(self, seed: int | None) -> None:
            from .agents.teacher import Teacher
            from .platform.build import build_protocol, build_student, build_task
            from .platform.loop import Loop
            from .protocols.active_teacher import certain, probe_candidates

            if seed is not None:
                self.seed_ = int(seed)
            s, spec = self.seed_, self.spec
            self.task = build_task(spec.task, s)
            self.student = build_student(spec.student, self.task, s)
            self.teacher = Teacher(self.task)
            self.loop = Loop(build_protocol(spec.protocol_cfg), self.teacher, self.student, spec.budgets,
                             seed=s, initial_labels=spec.student["initial_labels"])
            self.pool = self.task.data.sample(self.k, seeding.rng(s, "aec", "student"))
            self.offers = probe_candidates(self.teacher, self.k, seeding.rng(s, "aec", "teacher"))
            self.used = {m.STUDENT: np.zeros(self.k, bool), m.TEACHER: self.teacher.label(self.offers) == m.ABSTAIN}
            self.eval_x, self.eval_y = certain(self.teacher, self.task.broad.sample(self.eval_points,
                                                                                    seeding.rng(s, "aec", "eval")))
            self.score = self._agreement()
            self.agents = self.possible_agents[:]
            self.rewards = {a: 0.0 for a in self.agents}
            self._cumulative_rewards = {a: 0.0 for a in self.agents}
            self.terminations = {a: False for a in self.agents}
            self.truncations = {a: False for a in self.agents}
            self.infos = {a: {} for a in self.agents}
            self.agent_selection = self.loop.role
            self._update_infos()

        def _agreement(self) -> float:
            return float(np.mean(self.student.predict(self.eval_x) == self.eval_y)) if len(self.eval_y) else 0.0

        def _legal(self, agent: str) -> bool:
            kind = "query" if agent == m.STUDENT else "push"
            return kind in self.loop.protocol.legal.get(agent, ())

        def _mask(self, agent: str) -> np.ndarray:
            mask = np.zeros(self.k + 1, np.int8)
            mask[-1] = 1
            if self._legal(agent) and not self.loop.over:
                mask[:-1] = ~self.used[agent]
            return mask

        def _update_infos(self) -> None:
            for a in self.agents:
                self.infos[a] = {"action_mask": self._mask(a), "budget_left": self.loop.channel.room,
                                 "spent": self.loop.channel.spent}

        def observe(self, agent: str) -> np.ndarray:
            if agent == m.STUDENT:
                per = 1.0 - self.student.predict_proba(self.pool).max(axis=1)
            else:
                import torch

                per = self.task.margin(torch.from_numpy(self.offers)).detach().numpy()
            ch, final = self.loop.channel, max(self.loop.channel.final, 1e-9)
            tail = [ch.spent / final, self.student.n_labelled / final, self.loop.turn / self.max_cycles]
            return np.clip(np.concatenate([per, tail]), 0.0, BOUND).astype(np.float32)

        def _outside_move(self, agent: str, i: int):
            self.used[agent][i] = True
            if agent == m.STUDENT:
                point = self.pool[i: i + 1]

                def move(student, inbox, ctx):
                    self.loop.learn()   # the protocol's round schedule, as on its own moves
                    return [m.query(point)]
            else:
                point = self.offers[i: i + 1]

                def move(teacher, inbox, ctx):
                    out = [teacher.answer(q) for q in inbox if q.kind == "query"]
                    return out + [m.push(point, teacher.label(point), "policy")]
            return move

        def step(self, action) -> None:
            with seeding.single_thread():   # small models: one thread is ~10x faster here
                self._step(action)

        def _step(self, action) -> None:
            agent = self.agent_selection
            if self.terminations[agent] or self.truncations[agent]:
                self._was_dead_step(action)
                return
            self._cumulative_rewards[agent] = 0.0
            move = None
            if action is not None and int(action) < self.k and self._mask(agent)[int(action)]:
                move = self._outside_move(agent, int(action))
            self.loop.step(move)
            over = self.loop.over
            if over:   # close first: its final training is part of this step's reward
                self.loop.close()
            score = self._agreement()
            self.rewards = {a: score - self.score for a in self.agents}
            self.score = score
            if over:
                self.terminations = {a: True for a in self.agents}
            elif self.loop.turn >= self.max_cycles:
                self.truncations = {a: True for a in self.agents}
            self.agent_selection = self.loop.role
            self._accumulate_rewards()
            self._update_infos()

        def render(self) -> None:
            return None

        def close(self) -> None:
            return None

    globals()["ProtocolEnv"] = ProtocolEnv
    return ProtocolEnv
