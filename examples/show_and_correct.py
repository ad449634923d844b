"""The student shows, the teacher corrects: a user protocol written from docs/protocols.md.

Each round the teacher draws points from the data and asks the student what it thinks
(``probe``, free); the student shows its predictions (``predictions``, free); the teacher
labels the points the student got wrong and pushes them back (``push``, one cost unit per
point), at most ``batch`` a round. Unlike passive data, every label the teacher pays for
corrects a mistake. When three rounds in a row find no mistake, the teacher ends.

    teachsim --plugin examples/show_and_correct.py check-protocol show-and-correct
    teachsim --plugin examples/show_and_correct.py run examples/show_and_correct.toml
"""
import numpy as np

import teachsim
from teachsim import messages as m
from teachsim.protocols.base import ROUND_PARAMS, Protocol
from teachsim.schema import Int


class ShowAndCorrect(Protocol):
    """The student shows its predictions; the teacher pushes corrections of its mistakes."""

    PARAMS = {**ROUND_PARAMS,
              "shown": Int(100, lo=1, doc="points the student shows per round")}
    legal = {m.STUDENT: {"predictions"}, m.TEACHER: {"probe", "push"}}
    first = m.TEACHER

    def teacher_turn(self, teacher, inbox, ctx):
        out = []
        for shown in (msg for msg in inbox if msg.kind == "predictions"):
            y = teacher.label(self.asked)
            wrong = np.flatnonzero((y != m.ABSTAIN) & (y != shown.labels))
            n = min(self.batch, ctx.labels_to_checkpoint, len(wrong))
            self.quiet = 0 if n > 0 else self.__dict__.get("quiet", 0) + 1
            if n > 0:
                pick = ctx.rng.choice(wrong, size=n, replace=False)
                out.append(m.push(self.asked[pick], y[pick], reason="correction"))
        if ctx.labels_left - sum(msg.size for msg in out) <= 0:
            return out + [m.done(m.TEACHER, "budget spent")]
        if self.__dict__.get("quiet", 0) >= 3:
            return out + [m.done(m.TEACHER, "no mistakes left to correct")]
        # what the student should show next: the teacher's choice of points, drawn from the data
        self.asked = teacher.task.data.sample(self.shown, ctx.rng)
        return out + [m.probe(self.asked)]

    def student_turn(self, student, inbox, ctx):
        self.train(student)                              # learn the corrections, `steps` steps
        return [m.predictions(student.predict(p.points)) for p in inbox if p.kind == "probe"]


teachsim.register_protocol("show-and-correct", ShowAndCorrect)
