"""The protocol contract: rules plugged into the one episode loop.

A protocol says which kinds each side may send (``legal``), who moves first, and what
each side does on its turn. It never delivers anything itself: it returns messages and
the channel charges, checks, delivers and records them. A side's turn sees only its own
agent and its inbox, so the rules cannot leak the teacher's mechanism to the student.

The smallest protocol is the built-in ``passive`` (``protocols/passive.py``; a test keeps
the two the same). It declares the shared round schedule (``batch`` labels per round,
``steps`` of training after each), learns at the start of the student's turn, and sizes
each round so that it never straddles a checkpoint:

    >>> from teachsim import messages as m, registry
    >>> from teachsim.checks.protocol import check_protocol
    >>> class Passive(Protocol):
    ...     PARAMS = ROUND_PARAMS
    ...
    ...     def student_turn(self, student, inbox, ctx):
    ...         self.train(student)
    ...         n = min(self.batch, ctx.labels_to_checkpoint)
    ...         if n <= 0:
    ...             return [m.done(m.STUDENT, "budget spent")]
    ...         return [m.query(student.data.sample(n, ctx.rng))]
    ...
    ...     def teacher_turn(self, teacher, inbox, ctx):
    ...         return [teacher.answer(q) for q in inbox if q.kind == "query"]
    >>> with registry.scoped():
    ...     registry.protocols.register("my-passive", Passive)
    ...     check_protocol("my-passive", budgets=(0, 10)).ok
    True

The whole reference (messages and their costs, the channel's rules, the round schedule,
what a turn may call) is ``docs/protocols.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol as Structural, runtime_checkable

import numpy as np

from ..messages import STUDENT, TEACHER, Message
from ..schema import Int, Param, resolve, suggest

ROUND_PARAMS: Mapping[str, Param] = {
    "batch": Int(25, lo=1, doc="labels (cost units) per round; the student learns after each round"),
    "steps": Int(0, lo=0, doc="training steps after each round; 0 = the student's own schedule (student.steps)"),
}
"""The round schedule the built-in protocols share: how much arrives between two trainings."""


@runtime_checkable
class StudentSide(Structural):
    """What a protocol's student turn may use of the student
    (``teachsim.agents.student.Student`` is the implementation; ``tests/test_layout.py``
    checks that the built-in protocols use nothing else)."""

    data: Any        # its Distribution: ``sample(n, rng)``, ``dim``, ``box``
    steps: int       # its own training schedule (steps per learn)
    model: Any       # the torch module (for gradient-based queries)
    device: Any      # where the model lives

    def learn(self, steps: int | None = None, *, force: bool = False) -> None: ...
    def predict(self, points: np.ndarray) -> np.ndarray: ...
    def predict_proba(self, points: np.ndarray) -> np.ndarray: ...
    def training_set(self) -> tuple[np.ndarray, np.ndarray]: ...
    def committee(self, size: int, round_: int, steps: int | None = None) -> Any: ...


@runtime_checkable
class TeacherSide(Structural):
    """What a protocol's teacher turn may use of the teacher
    (``teachsim.agents.teacher.Teacher``)."""

    task: Any        # the task: its rule (``label``, ``margin_to``, ``invariances``), data, classes

    def label(self, points: np.ndarray) -> np.ndarray: ...
    def answer(self, query: Message) -> Message: ...


@dataclass(frozen=True)
class ChannelRules:
    """Rules a protocol sets for its channel (the channel enforces them).

    Attributes:
        explain_cost: cost per direction (or feature) an ``explain`` states.
        probe_limit: points the teacher may probe in all (``None``: no limit).
    """

    explain_cost: float = 1.0
    probe_limit: int | None = None


@dataclass(frozen=True)
class TurnContext:
    """What a side may know on its turn besides its inbox.

    Attributes:
        rng: this side's generator for the whole episode (its own seed stream).
        turn: turn number, from 0.
        spent: cost spent so far; room: cost left before the final budget.
        to_checkpoint: cost left before the next checkpoint.
        probe_room: points the teacher may still probe (``None``: no limit).
    """

    rng: np.random.Generator
    turn: int
    spent: float
    room: float
    to_checkpoint: float
    probe_room: int | None = None

    @property
    def labels_left(self) -> int:
        """Unit-cost points that still fit in the budget."""
        return int(math.floor(self.room + 1e-9))

    @property
    def labels_to_checkpoint(self) -> int:
        """Unit-cost points needed to reach the next checkpoint (at most ``labels_left``)."""
        return min(self.labels_left, int(math.ceil(self.to_checkpoint - 1e-9)))


class Protocol:
    """Base class for protocols. Subclasses override the turn methods they need.

    Attributes:
        PARAMS: the protocol's config keys (``[[protocols]]`` table), checked before a run.
        legal: sender role -> message kinds it may send (``done`` is always legal).
        first: the role that moves first.
    """

    PARAMS: Mapping[str, Param] = {}
    legal: Mapping[str, Any] = {STUDENT: {"query"}, TEACHER: {"answer"}}
    first: str = STUDENT

    def __init__(self, **params: Any):
        # Checked again here so that a protocol built by hand gets defaults and clear errors too.
        self.params = resolve(self.PARAMS, params, type(self).__name__)

    def __getattr__(self, name: str) -> Any:
        # Resolved parameters read as attributes: ``self.batch``.
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        if name.startswith("__"):   # copy, pickle and friends probe for these
            raise AttributeError(name)
        known = sorted(set(params) | {n for n in dir(type(self)) if not n.startswith("_")} | set(self.__dict__))
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}{suggest(name, known)}; "
                             f"its parameters: {', '.join(sorted(params)) or 'none'}")

    def channel_rules(self) -> ChannelRules:
        """The rules this protocol's channel enforces; by default from the parameters
        ``explain_cost`` and ``probe_limit`` where the protocol declares them."""
        return ChannelRules(explain_cost=float(self.params.get("explain_cost", 1.0)),
                            probe_limit=self.params.get("probe_limit"))

    def train(self, student: StudentSide) -> None:
        """Let the student learn what arrived, on this protocol's round schedule (``steps``)."""
        student.learn(self.params.get("steps") or None)

    def student_turn(self, student: StudentSide, inbox: list[Message], ctx: TurnContext) -> list[Message]:
        """The student's move: return the messages it sends."""
        return []

    def teacher_turn(self, teacher: TeacherSide, inbox: list[Message], ctx: TurnContext) -> list[Message]:
        """The teacher's move: return the messages it sends."""
        return []
