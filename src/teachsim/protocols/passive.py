"""``passive``: the teacher labels i.i.d. draws from the data distribution."""

from __future__ import annotations

from .. import messages as m
from .base import ROUND_PARAMS, Protocol


class Passive(Protocol):
    """The teacher labels i.i.d. draws from the data distribution."""

    PARAMS = ROUND_PARAMS

    def student_turn(self, student, inbox, ctx):
        self.train(student)
        n = min(self.batch, ctx.labels_to_checkpoint)
        if n <= 0:
            return [m.done(m.STUDENT, "budget spent")]
        return [m.query(student.data.sample(n, ctx.rng))]

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]
