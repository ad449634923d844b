"""``passive``: the teacher labels i.i.d. draws from the data distribution."""

from __future__ import annotations

from .. import messages as m
from ..schema import Int
from .base import Protocol


class Passive(Protocol):
    """The teacher labels i.i.d. draws from the data distribution."""

    PARAMS = {"batch": Int(25, lo=1, doc="labels per round; the student learns after each round")}

    def student_turn(self, student, inbox, ctx):
        student.learn()
        n = min(self.batch, ctx.labels_to_checkpoint)
        if n <= 0:
            return [m.done(m.STUDENT, "budget spent")]
        return [m.query(student.data.sample(n, ctx.rng))]

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]
