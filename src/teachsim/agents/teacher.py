"""The teacher agent: owns the task's mechanism and speaks only in messages."""

from __future__ import annotations

import numpy as np

from .. import messages as m
from ..tasks.base import Task


class Teacher:
    """Answers queries with labels or ABSTAIN; active protocols use it to push.

    It sees the student only through the messages it receives (``query``, ``predictions``;
    kept in ``heard``).
    """

    def __init__(self, task: Task):
        self.task = task
        self.heard: list[m.Message] = []

    def observe(self, msg: m.Message) -> None:
        """Receive a delivered message."""
        self.heard.append(msg)

    def label(self, points: np.ndarray) -> np.ndarray:
        """Labels for ``points``, ABSTAIN where uncertain."""
        return self.task.label(points)

    def answer(self, query: m.Message) -> m.Message:
        """The ``answer`` to a ``query``."""
        return m.answer(query.points, self.label(query.points))
