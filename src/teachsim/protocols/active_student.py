"""``active-student``: pool-based active learning. The student asks; the teacher only answers."""

from __future__ import annotations

import numpy as np

from .. import messages as m
from ..errors import ProtocolError
from ..registry import Registered
from ..schema import Int, Table
from .base import ROUND_PARAMS, Protocol


class ActiveStudent(Protocol):
    """The student picks pool points with a query strategy; the teacher labels them.

    The pool is drawn once per episode from the data distribution (the student's own
    stream). Each round the student learns, scores the points it has not asked about yet
    and queries the ``batch`` best; ABSTAIN answers cost their unit and tell the student
    where the teacher is uncertain, but never become training labels.
    """

    PARAMS = {
        **ROUND_PARAMS,
        "strategy": Registered("strategy", "uncertainty", doc="query strategy (teachsim list strategies)"),
        "strategy_params": Table(doc="the strategy's parameters, e.g. { beta = 2.0 } for density"),
        "pool": Int(2000, lo=1, doc="unlabelled pool size, drawn from the data distribution"),
        "committee": Int(3, lo=2, doc="members of the bagged committee (strategies that need one, e.g. qbc)"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        import functools

        from .. import registry
        from ..schema import resolve

        entry = registry.strategies.get(self.strategy, "strategy")
        bound = resolve(entry.params, self.strategy_params, "strategy_params")
        self.pick = functools.partial(entry.factory, **bound) if bound else entry.factory
        self.rounds = 0
        self.X_pool: np.ndarray | None = None
        self.unasked: np.ndarray | None = None   # pool indices not queried yet

    def student_turn(self, student, inbox, ctx):
        self.train(student)
        if self.X_pool is None:
            self.X_pool = student.data.sample(self.pool, ctx.rng)
            self.unasked = np.arange(self.pool)
        n = min(self.batch, ctx.labels_to_checkpoint, len(self.unasked))
        if n <= 0:
            return [m.done(m.STUDENT, "budget spent" if len(self.unasked) else "pool exhausted")]
        fn = getattr(self.pick, "func", self.pick)
        if getattr(fn, "needs_committee", False):
            model = student.committee(self.committee, self.rounds, self.steps or None)
        else:
            model = student
        self.rounds += 1
        candidates = self.X_pool[self.unasked]
        chosen = np.asarray(self.pick(model, candidates, n, rng=ctx.rng)).reshape(-1)
        if len(chosen) and (not np.issubdtype(chosen.dtype, np.integer) or chosen.min() < 0
                            or chosen.max() >= len(candidates)):
            raise ProtocolError(f"strategy {self.strategy!r} returned {chosen[:5].tolist()}..., expected "
                                f"indices into the {len(candidates)} unasked pool points")
        # A strategy that repeats an index must not make the student pay twice for one point.
        chosen = chosen[np.sort(np.unique(chosen, return_index=True)[1])][:n]
        if len(chosen) == 0:
            return [m.done(m.STUDENT, f"strategy {self.strategy!r} picked nothing")]
        points = candidates[chosen]
        self.unasked = np.delete(self.unasked, chosen)
        return [m.query(points)]

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]
