"""The protocol contract: rules plugged into the one episode loop.

A protocol says which kinds each side may send (``legal``), who moves first, and what
each side does on its turn. It never delivers anything itself: it returns messages and
the channel charges, checks, delivers and records them. A side's turn sees only its own
agent and its inbox, so the rules cannot leak the teacher's mechanism to the student.

The smallest protocol::

    class Passive(Protocol):
        legal = {STUDENT: {"query"}, TEACHER: {"answer"}}

        def student_turn(self, student, inbox, ctx):
            student.learn()
            n = min(25, ctx.labels_to_checkpoint)
            return [query(student.data.sample(n, ctx.rng))] if n else []

        def teacher_turn(self, teacher, inbox, ctx):
            return [teacher.answer(q) for q in inbox if q.kind == "query"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..messages import STUDENT, TEACHER, Message
from ..schema import Int, Param, resolve

ROUND_PARAMS: Mapping[str, Param] = {
    "batch": Int(25, lo=1, doc="labels (cost units) per round; the student learns after each round"),
    "steps": Int(0, lo=0, doc="training steps after each round; 0 = the student's own schedule (student.steps)"),
}
"""The round schedule the built-in protocols share: how much arrives between two trainings."""


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
        raise AttributeError(name)

    def train(self, student: Any) -> None:
        """Let the student learn what arrived, on this protocol's round schedule (``steps``)."""
        student.learn(self.params.get("steps") or None)

    def student_turn(self, student: Any, inbox: list[Message], ctx: TurnContext) -> list[Message]:
        """The student's move: return the messages it sends."""
        return []

    def teacher_turn(self, teacher: Any, inbox: list[Message], ctx: TurnContext) -> list[Message]:
        """The teacher's move: return the messages it sends."""
        return []
