"""One episode, top to bottom, without the registry or a config file.

This is what ``teachsim run`` does for one (task, protocol, seed), in the order it
happens: build the world, let the protocol's two sides take turns through the channel
(which charges every message, enforces the budget and snapshots the student at each
checkpoint), then judge every snapshot. ``tests/test_examples.py`` checks that it gives
the same transcript and scores as ``teachsim.platform.episode.run_episode`` on the same
settings, so it stays true. Run it::

    python examples/one_episode.py
"""

import torch

from teachsim import messages as m
from teachsim import seeding
from teachsim.agents.methods import erm
from teachsim.agents.models import mlp
from teachsim.agents.student import Student
from teachsim.agents.teacher import Teacher
from teachsim.platform.judge import judge_all
from teachsim.platform.judge_params import PARAMS as JUDGE_PARAMS
from teachsim.protocols.base import TurnContext
from teachsim.protocols.channel import Channel
from teachsim.protocols.passive import Passive
from teachsim.schema import resolve
from teachsim.tasks.hidden_feature import HiddenFeature

SEED = 0
TASK = {"dim": 10, "manifold_dim": 2}       # hidden-feature: the label depends on 2 of 10 coordinates
HIDDEN, STEPS = [32], 100                   # the student's MLP and its optimiser steps per learn
INITIAL_LABELS = 20                         # free labels before the protocol starts
BUDGETS = (0, 50, 100)                      # cost units; the student is snapshotted at each
BATCH = 25                                  # the protocol's labels per round
JUDGE = {"norm": "l2", "eps": 1.0, "strong_radius": 2.0, "test_points": 200}


def run(seed: int = SEED):
    """Returns the transcript (the channel's log) and the scores, (budget, metric, value) rows."""
    torch.set_num_threads(1)   # what run_episode does: small models, one thread, reproducible
    # 1. The world. Every random stream derives from the seed by a named path.
    task = HiddenFeature(seed, **TASK)
    teacher = Teacher(task)   # labels by the task's rule; abstains where it is uncertain

    def fresh_model():
        return mlp(task.dim, task.classes, hidden=HIDDEN, init_std=0.0,
                   generator=seeding.torch_generator(seed, "student", "init"))

    student = Student(fresh_model(), erm, task.data, task.classes, seed=seed, steps=STEPS)
    protocol = Passive(batch=BATCH)

    # 2. The channel: the one place that charges, checks and delivers. When the budget
    # reaches a checkpoint the student learns what arrived and is snapshotted.
    snapshots = {}

    def on_checkpoint(budget):
        protocol.train(student)
        snapshots[budget] = student.snapshot()

    rules = protocol.channel_rules()
    channel = Channel(BUDGETS, observers={m.STUDENT: student.observe, m.TEACHER: teacher.observe},
                      on_checkpoint=on_checkpoint, legal=protocol.legal, dim=task.dim,
                      classes=task.classes, explain_cost=rules.explain_cost, probe_limit=rules.probe_limit)
    x = task.data.sample(INITIAL_LABELS, seeding.rng(seed, "initial"))
    channel.send(m.answer(x, teacher.label(x)), phase="initial")   # free, before the protocol
    channel.take(m.STUDENT)

    # 3. The sides alternate until a `done`, the final budget, or two turns with nothing said.
    # A side sees only its own agent, its inbox and the context.
    rngs = {role: seeding.rng(seed, "protocol", role) for role in (m.STUDENT, m.TEACHER)}
    sides = {m.STUDENT: (student, protocol.student_turn), m.TEACHER: (teacher, protocol.teacher_turn)}
    role, idle, turn = protocol.first, 0, 0
    while not channel.finished and idle < 2:
        agent, move = sides[role]
        inbox = channel.take(role)
        probe_room = None if rules.probe_limit is None else rules.probe_limit - channel.probed
        ctx = TurnContext(rngs[role], turn, channel.spent, channel.room, channel.to_checkpoint, probe_room)
        delivered = 0
        for msg in move(agent, inbox, ctx) or []:
            delivered += len(channel.send(msg))   # charged, checked, cut to fit, recorded
            if channel.finished:
                break
        idle = 0 if delivered else idle + 1
        turn += 1
        role = m.TEACHER if role == m.STUDENT else m.STUDENT
    for budget in channel.close():   # checkpoints never reached get the final student
        on_checkpoint(budget)

    # 4. The judge scores every snapshot on its own test points (README: "Metrics").
    models = {}
    for budget, weights in snapshots.items():
        models[budget] = fresh_model()
        models[budget].load_state_dict(weights)
    scores, _flags = judge_all(models, task, resolve(JUDGE_PARAMS, JUDGE, "judge"), seed)
    return channel.log, scores


if __name__ == "__main__":
    log, scores = run()
    print(f"{len(log)} messages, {log[-1].cum_cost:g} cost units spent")
    for budget, metric, value in scores:
        if metric in ("clean_acc", "lp_robust_acc", "strong_robust_acc"):
            print(f"budget {budget:>5g}  {metric:<18} {value:.3f}")
