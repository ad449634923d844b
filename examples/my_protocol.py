"""A user protocol in one file: the README's example (teachsim --plugin examples/my_protocol.py ...)."""
import teachsim
from teachsim import messages as m
from teachsim.protocols.base import Protocol
from teachsim.schema import Int


class BigBatches(Protocol):
    """Passive labels, asked for in big batches."""

    PARAMS = {"batch": Int(100, lo=1, doc="labels per round")}
    legal = {m.STUDENT: {"query"}, m.TEACHER: {"answer"}}

    def student_turn(self, student, inbox, ctx):
        student.learn()
        n = min(self.batch, ctx.labels_to_checkpoint)
        return [m.query(student.data.sample(n, ctx.rng))] if n else []

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]


teachsim.register_protocol("big-batches", BigBatches)
