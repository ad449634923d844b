"""The one episode loop, and ``run_episode(spec) -> EpisodeResult``.

Episodes are pure functions of a picklable :class:`EpisodeSpec`: same spec, same
transcript and scores. The runner that calls them (serial or Ray) only moves specs in
and results out; the driver alone writes results.
"""

from __future__ import annotations

import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np

from .. import messages as m
from .. import registry, seeding
from ..errors import ProtocolError
from ..protocols.base import Protocol, TurnContext
from ..protocols.channel import Channel, Delivery
from .config import EpisodeSpec

MAX_TURNS = 100_000


@dataclass
class Conversation:
    """What one run of the loop leaves: the channel (transcript), snapshots and stats."""

    channel: Channel
    snapshots: dict[float, dict[str, Any]] = field(default_factory=dict)
    checkpoints: list[tuple[float, float, bool]] = field(default_factory=list)  # (budget, cum_cost, reached)
    turns: int = 0


def build_task(task_cfg: Mapping[str, Any], seed: int):
    """The task of an episode (its mechanism is seeded by the episode seed)."""
    params = {k: v for k, v in task_cfg.items() if k != "name"}
    return registry.tasks.get(task_cfg["name"]).factory(seed, **params)


def build_model(student_cfg: Mapping[str, Any], task, seed: int):
    """The student's torch model, initialised from the episode seed."""
    factory = registry.models.get(student_cfg["model"]).factory
    return factory(task.dim, task.classes, hidden=list(student_cfg["hidden"]),
                   init_std=student_cfg["init_std"], generator=seeding.torch_generator(seed, "student", "init"))


def build_student(student_cfg: Mapping[str, Any], task, seed: int):
    """A fresh student: model, method and the data distribution, never the mechanism."""
    from ..agents.student import Student
    from .config import STUDENT_PARAMS

    entry = registry.methods.get(student_cfg["method"])
    method_params = {k: v for k, v in student_cfg.items() if k in entry.params}
    return Student(build_model(student_cfg, task, seed), entry.factory, task.data, task.classes, seed=seed,
                   steps=student_cfg["steps"], lr=student_cfg["lr"], batch_size=student_cfg["batch_size"],
                   weight_decay=student_cfg["weight_decay"], method_params=method_params)


def build_protocol(protocol_cfg: Mapping[str, Any]) -> Protocol:
    params = {k: v for k, v in protocol_cfg.items() if k != "name"}
    return registry.protocols.get(protocol_cfg["name"]).factory(**params)


def converse(protocol: Protocol, teacher, student, budgets, *, seed: int, initial_labels: int = 0,
             explain_cost: float = 1.0, probe_limit: int | None = None) -> Conversation:
    """Run the one episode loop until ``done``, the final budget, or two idle turns.

    Sides alternate, starting with ``protocol.first``. On its turn a side sees only its
    own agent, its inbox and a :class:`TurnContext`; what it returns goes through the
    channel, which charges, checks, delivers and records it, and snapshots the student
    (after it learns what it was sent) whenever a checkpoint is reached.
    """
    conv: Conversation

    def on_checkpoint(budget: float) -> None:
        student.learn()
        conv.snapshots[budget] = student.snapshot()
        conv.checkpoints.append((budget, channel.spent, True))

    channel = Channel(budgets, observers={m.STUDENT: student.observe, m.TEACHER: teacher.observe},
                      on_checkpoint=on_checkpoint, legal=protocol.legal, dim=student.data.dim,
                      classes=student.classes, explain_cost=explain_cost, probe_limit=probe_limit)
    conv = Conversation(channel)
    if initial_labels > 0:
        x = student.data.sample(initial_labels, seeding.rng(seed, "initial"))
        channel.send(m.answer(x, teacher.label(x)), phase="initial")
        channel.take(m.STUDENT)

    rngs = {role: seeding.rng(seed, "protocol", role) for role in (m.STUDENT, m.TEACHER)}
    agents = {m.STUDENT: student, m.TEACHER: teacher}
    turns = {m.STUDENT: protocol.student_turn, m.TEACHER: protocol.teacher_turn}
    role, idle = protocol.first, 0
    for turn in range(MAX_TURNS):
        if channel.finished:
            break
        inbox = channel.take(role)
        room = None if probe_limit is None else probe_limit - channel.probed
        ctx = TurnContext(rngs[role], turn, channel.spent, channel.room, channel.to_checkpoint, room)
        sent = turns[role](agents[role], inbox, ctx) or []
        delivered = 0
        for msg in sent:
            if isinstance(msg, m.Message) and msg.sender != role:
                raise ProtocolError(f"on the {role}'s turn the protocol sent a message from the {msg.sender}")
            delivered += len(channel.send(msg))
            if channel.finished:
                break
        idle = 0 if delivered else idle + 1
        if idle >= 2:   # neither side has anything left to say
            break
        role = m.TEACHER if role == m.STUDENT else m.STUDENT
    else:
        raise ProtocolError(f"the protocol did not end within {MAX_TURNS} turns")
    conv.turns = turn + 1
    for budget in channel.close():
        # Never reached (the protocol ended early): the final student stands for it.
        student.learn()
        conv.snapshots[budget] = student.snapshot()
        conv.checkpoints.append((budget, channel.spent, False))
    return conv


@dataclass
class EpisodeResult:
    """Everything the driver stores for one episode. Plain data: travels between processes."""

    spec: EpisodeSpec
    status: str                                 # "finished" | "failed"
    error: str = ""
    started_at: str = ""
    finished_at: str = ""
    host: str = ""
    seconds: float = 0.0
    scores: list[tuple[float, str, float]] = field(default_factory=list)
    flags: list[tuple[float, str, float]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    payloads: dict[str, np.ndarray] = field(default_factory=dict)
    snapshots: dict[float, dict[str, Any]] = field(default_factory=dict)
    checkpoints: list[tuple[float, float, bool]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def transcript_rows(log: list[Delivery]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Message rows for the database and the payload arrays for ``transcripts/``."""
    rows, arrays = [], {}
    for d in log:
        msg = d.message
        rows.append({"idx": d.idx, "kind": msg.kind, "sender": msg.sender, "receiver": msg.receiver,
                     "size": msg.size, "cost": d.cost, "cum_cost": d.cum_cost, "phase": d.phase,
                     "reason": msg.reason})
        for name in ("points", "labels", "probs", "vectors", "mask"):
            value = getattr(msg, name)
            if value is not None:
                arrays[f"{d.idx}.{name}"] = value
    return rows, arrays


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def run_episode(spec: EpisodeSpec) -> EpisodeResult:
    """Run one episode and judge its snapshots. Never raises: a failure is a result."""
    from ..agents.teacher import Teacher
    from .judge import judge_all, make_test_set

    result = EpisodeResult(spec, "failed", started_at=_now(), host=socket.gethostname())
    t0 = time.perf_counter()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # episodes are small: one thread each is fastest and keeps runs reproducible
    try:
        task = build_task(spec.task, spec.seed)
        student = build_student(spec.student, task, spec.seed)
        conv = converse(build_protocol(spec.protocol_cfg), Teacher(task), student, spec.budgets,
                        seed=spec.seed, initial_labels=spec.student["initial_labels"])
        models = {}
        for budget, weights in conv.snapshots.items():
            models[budget] = build_model(spec.student, task, spec.seed)
            models[budget].load_state_dict(weights)
        result.scores, result.flags = judge_all(models, task, spec.judge, spec.seed)
        result.messages, result.payloads = transcript_rows(conv.channel.log)
        result.payloads["learn_log"] = np.asarray(student.learn_log, dtype=np.int64)
        result.snapshots = {b: {k: v.numpy() for k, v in s.items()} for b, s in conv.snapshots.items()}
        result.checkpoints = conv.checkpoints
        result.stats = {"spent": conv.channel.spent, "probed": conv.channel.probed,
                        "refused": conv.channel.refused, "turns": conv.turns,
                        "labelled": student.n_labelled, "initial_labels": spec.student["initial_labels"]}
        result.status = "finished"
    except Exception as exc:  # one episode's failure is recorded; the experiment goes on
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-8)}"
    finally:
        torch.set_num_threads(threads)
    result.finished_at = _now()
    result.seconds = time.perf_counter() - t0
    return result
