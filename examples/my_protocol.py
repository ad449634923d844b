"""A user protocol in one file (the README's example):

    teachsim --plugin examples/my_protocol.py check-protocol noisy-teacher
    teachsim --plugin examples/my_protocol.py run examples/noisy_teacher.toml
"""
import numpy as np

import teachsim
from teachsim import messages as m
from teachsim.protocols.base import ROUND_PARAMS, Protocol
from teachsim.schema import Float


class NoisyTeacher(Protocol):
    """Passive labels, a share of them flipped to another class (robustness to label noise)."""

    PARAMS = {**ROUND_PARAMS,                            # batch (labels per round) and steps, as the built-ins
              "flip": Float(0.1, lo=0.0, hi=1.0, doc="share of labels the teacher gets wrong")}
    legal = {m.STUDENT: {"query"}, m.TEACHER: {"answer"}}

    def student_turn(self, student, inbox, ctx):
        self.train(student)                              # learn what the last answer brought, `steps` steps
        n = min(self.batch, ctx.labels_to_checkpoint)    # a round never straddles a checkpoint
        if n <= 0:
            return [m.done(m.STUDENT, "budget spent")]
        return [m.query(student.data.sample(n, ctx.rng))]

    def teacher_turn(self, teacher, inbox, ctx):
        out = []
        for q in (msg for msg in inbox if msg.kind == "query"):
            y = teacher.label(q.points)
            flip = (ctx.rng.random(len(y)) < self.flip) & (y != m.ABSTAIN)
            other = (y + ctx.rng.integers(1, teacher.task.classes, size=len(y))) % teacher.task.classes
            out.append(m.answer(q.points, np.where(flip, other, y)))
        return out


teachsim.register_protocol("noisy-teacher", NoisyTeacher)
