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

    entry = registry.methods.get(student_cfg["method"])
    method_params = {k: v for k, v in student_cfg.items() if k in entry.params}
    return Student(build_model(student_cfg, task, seed), entry.factory, task.data, task.classes, seed=seed,
                   steps=student_cfg["steps"], lr=student_cfg["lr"], batch_size=student_cfg["batch_size"],
                   weight_decay=student_cfg["weight_decay"], method_params=method_params,
                   invariance_scale=student_cfg["invariance_scale"],
                   invariance_penalty=student_cfg["invariance_penalty"], optimizer=student_cfg["optimizer"])


def build_protocol(protocol_cfg: Mapping[str, Any]) -> Protocol:
    params = {k: v for k, v in protocol_cfg.items() if k != "name"}
    return registry.protocols.get(protocol_cfg["name"]).factory(**params)


class Loop:
    """The one episode loop, a turn at a time (:func:`converse` runs it to the end; the
    PettingZoo adapter steps it with outside moves).

    Sides alternate, starting with ``protocol.first``. On its turn a side sees only its
    own agent, its inbox and a :class:`TurnContext`; what it returns goes through the
    channel, which charges, checks, delivers and records it, and snapshots the student
    (after it learns what it was sent) whenever a checkpoint is reached. The protocol may
    set ``probe_limit`` and ``explain_cost`` (as parameters); the channel enforces them.
    """

    def __init__(self, protocol: Protocol, teacher, student, budgets, *, seed: int, initial_labels: int = 0,
                 explain_cost: float | None = None, probe_limit: int | None = None):
        if explain_cost is None:
            explain_cost = float(getattr(protocol, "explain_cost", 1.0))
        if probe_limit is None:
            probe_limit = getattr(protocol, "probe_limit", None)
        self.protocol, self.teacher, self.student = protocol, teacher, student
        self.probe_limit = probe_limit
        self.channel = Channel(budgets, observers={m.STUDENT: student.observe, m.TEACHER: teacher.observe},
                               on_checkpoint=self._on_checkpoint, legal=protocol.legal, dim=student.data.dim,
                               classes=student.classes, explain_cost=explain_cost, probe_limit=probe_limit)
        self.conv = Conversation(self.channel)
        if initial_labels > 0:
            x = student.data.sample(initial_labels, seeding.rng(seed, "initial"))
            self.channel.send(m.answer(x, teacher.label(x)), phase="initial")
            self.channel.take(m.STUDENT)
        self.rngs = {role: seeding.rng(seed, "protocol", role) for role in (m.STUDENT, m.TEACHER)}
        self.agents = {m.STUDENT: student, m.TEACHER: teacher}
        self.moves = {m.STUDENT: protocol.student_turn, m.TEACHER: protocol.teacher_turn}
        self.role, self.idle, self.turn = protocol.first, 0, 0

    def _learn(self) -> None:
        # Checkpoint trainings follow the protocol's round schedule (its ``steps``) too,
        # so the last round trains like every other one.
        train = getattr(self.protocol, "train", None)
        if callable(train):
            train(self.student)
        else:
            self.student.learn()

    def _on_checkpoint(self, budget: float) -> None:
        self._learn()
        self.conv.snapshots[budget] = self.student.snapshot()
        self.conv.checkpoints.append((budget, self.channel.spent, True))

    @property
    def over(self) -> bool:
        """A ``done`` was delivered, the budget is spent, or neither side had anything to say."""
        return self.channel.finished or self.idle >= 2

    def context(self) -> TurnContext:
        """What the side on move may know besides its inbox."""
        ch = self.channel
        room = None if self.probe_limit is None else self.probe_limit - ch.probed
        return TurnContext(self.rngs[self.role], self.turn, ch.spent, ch.room, ch.to_checkpoint, room)

    def step(self, move=None) -> int:
        """Play the turn of the side on move (its protocol move, or ``move``, a function with
        the same signature); returns how many messages were delivered."""
        if self.turn >= MAX_TURNS:
            raise ProtocolError(f"the protocol did not end within {MAX_TURNS} turns")
        role = self.role
        inbox = self.channel.take(role)
        sent = (move or self.moves[role])(self.agents[role], inbox, self.context()) or []
        delivered = 0
        for msg in sent:
            if isinstance(msg, m.Message) and msg.sender != role:
                raise ProtocolError(f"on the {role}'s turn the protocol sent a message from the {msg.sender}")
            delivered += len(self.channel.send(msg))
            if self.channel.finished:
                break
        self.idle = 0 if delivered else self.idle + 1
        self.turn += 1
        self.role = m.TEACHER if role == m.STUDENT else m.STUDENT
        return delivered

    def close(self) -> Conversation:
        """End the episode; a checkpoint never reached gets the final student."""
        self.conv.turns = self.turn
        for budget in self.channel.close():
            self._learn()
            self.conv.snapshots[budget] = self.student.snapshot()
            self.conv.checkpoints.append((budget, self.channel.spent, False))
        return self.conv


def converse(protocol: Protocol, teacher, student, budgets, *, seed: int, initial_labels: int = 0,
             explain_cost: float | None = None, probe_limit: int | None = None) -> Conversation:
    """Run the one episode loop (:class:`Loop`) until ``done``, the final budget, or two idle turns."""
    loop = Loop(protocol, teacher, student, budgets, seed=seed, initial_labels=initial_labels,
                explain_cost=explain_cost, probe_limit=probe_limit)
    while not loop.over:
        loop.step()
    return loop.close()


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
    # the judge's attack_sets: judge name -> {"config": ..., "scores": rows, "flags": rows}
    judged: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    payloads: dict[str, np.ndarray] = field(default_factory=dict)
    snapshots: dict[float, dict[str, Any]] = field(default_factory=dict)
    checkpoints: list[tuple[float, float, bool]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    judge_version: int = 1                      # the judge behaviour version that made the scores


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


def resolve_device(device: Any = "cpu"):
    """``device`` as a torch device, or the CPU where it is not usable in this process
    (``"cuda"`` without a visible CUDA device, say)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        return dev
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError):   # no such device here, or torch built without it
        return torch.device("cpu")
    return dev


def run_episode(spec: EpisodeSpec, device: Any = "cpu") -> EpisodeResult:
    """Run one episode and judge its snapshots. Never raises: a failure is a result.

    ``device`` is where the student trains and is judged (``"cpu"``, ``"cuda:0"``, ...);
    where it is not usable the episode runs on the CPU. ``result.stats["device"]`` says
    which. Results are plain CPU data whatever the device.
    """
    from ..agents.teacher import Teacher
    from .judge import VERSION, judge_episode

    result = EpisodeResult(spec, "failed", started_at=_now(), host=socket.gethostname())
    t0 = time.perf_counter()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # episodes are small: one thread each is fastest and keeps runs reproducible
    stats: dict[str, Any] = {}
    try:
        dev = resolve_device(device)
        stats["device"] = str(dev)
        task = build_task(spec.task, spec.seed)
        student = build_student(spec.student, task, spec.seed)
        student.model.to(dev)
        conv = converse(build_protocol(spec.protocol_cfg), Teacher(task), student, spec.budgets,
                        seed=spec.seed, initial_labels=spec.student["initial_labels"])
        models = {}
        for budget, weights in conv.snapshots.items():
            models[budget] = build_model(spec.student, task, spec.seed)
            models[budget].load_state_dict(weights)
            models[budget].to(dev)
        result.scores, result.flags, result.judged = judge_episode(models, task, spec.judge, spec.seed)
        result.judge_version = VERSION
        result.messages, result.payloads = transcript_rows(conv.channel.log)
        result.payloads["learn_log"] = np.asarray(student.learn_log, dtype=np.int64).reshape(-1, 2)
        result.snapshots = {b: {k: v.cpu().numpy() for k, v in s.items()} for b, s in conv.snapshots.items()}
        result.checkpoints = conv.checkpoints
        result.stats = {**stats, "spent": conv.channel.spent, "probed": conv.channel.probed,
                        "refused": conv.channel.refused, "turns": conv.turns,
                        "labelled": student.n_labelled, "initial_labels": spec.student["initial_labels"]}
        result.status = "finished"
    except KeyboardInterrupt:
        raise   # the user stops the run (finished episodes are kept; --resume goes on)
    except BaseException as exc:  # noqa: BLE001 - one episode's failure is recorded; the experiment goes on.
        # BaseException, not Exception: a plugin's sys.exit() (SystemExit) once ended a
        # serial run with exit 0, the episode unrecorded and the rest never run.
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-8)}"
        result.stats = stats
    finally:
        torch.set_num_threads(threads)
    result.finished_at = _now()
    result.seconds = time.perf_counter() - t0
    return result
