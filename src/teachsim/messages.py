"""Messages: the only way teacher and student reach each other.

A :class:`Message` is immutable: its arrays are private read-only copies. Build them
with the helpers below (``query``, ``answer``, ``push``, ...), which fill in sender
and receiver so protocols cannot get them wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

ABSTAIN = -1
"""The label a teacher gives where it is uncertain."""

STUDENT = "student"
TEACHER = "teacher"

# kind -> (sender, receiver); "either" means the kind may go both ways.
ROUTES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "query": (STUDENT, TEACHER),
    "answer": (TEACHER, STUDENT),
    "push": (TEACHER, STUDENT),
    "explain": (TEACHER, STUDENT),
    "probe": (TEACHER, STUDENT),
    "predictions": (STUDENT, TEACHER),
    "done": ("either", "either"),
})
KINDS = tuple(ROUTES)
# Kinds whose cost is per labelled point, so the channel may truncate them to what fits.
DIVISIBLE = frozenset({"answer", "push"})


def _frozen(a: Any, dtype: Any) -> np.ndarray | None:
    if a is None:
        return None
    arr = np.array(a, dtype=dtype, copy=True)
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Message:
    """One typed, immutable record.

    Attributes:
        kind: one of :data:`KINDS`.
        sender, receiver: ``"student"`` or ``"teacher"``.
        points: (n, d) inputs: queried, answered, pushed or probed points.
        labels: (n,) integer labels; :data:`ABSTAIN` where the teacher is uncertain.
        probs: (n, classes) probabilities (``predictions``).
        vectors: (m, d) vectors stated by an ``explain`` (e.g. an orthonormal basis).
        mask: (d,) feature mask stated by an ``explain`` (``relevance``).
        reason: why it was sent (``"boundary"``, ``"invariance"``, ...).
        meta: small JSON-able extras.
    """

    kind: str
    sender: str
    receiver: str
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None
    vectors: np.ndarray | None = None
    mask: np.ndarray | None = None
    reason: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "points", _frozen(self.points, np.float32))
        set_(self, "labels", _frozen(self.labels, np.int64))
        set_(self, "probs", _frozen(self.probs, np.float32))
        set_(self, "vectors", _frozen(self.vectors, np.float32))
        set_(self, "mask", _frozen(self.mask, np.float32))
        set_(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def size(self) -> int:
        """Points, vectors or features the message states (what its cost scales with)."""
        for a in (self.points, self.labels, self.vectors):
            if a is not None:
                return int(a.shape[0])
        if self.mask is not None:
            return int(np.count_nonzero(self.mask))
        return 0

    def head(self, n: int) -> "Message":
        """The first ``n`` points of a divisible message."""
        return replace(self, points=self._cut(self.points, 0, n), labels=self._cut(self.labels, 0, n),
                       probs=self._cut(self.probs, 0, n))

    def tail(self, n: int) -> "Message":
        """Everything after the first ``n`` points."""
        return replace(self, points=self._cut(self.points, n, None), labels=self._cut(self.labels, n, None),
                       probs=self._cut(self.probs, n, None))

    @staticmethod
    def _cut(a: np.ndarray | None, start: int, stop: int | None) -> np.ndarray | None:
        return None if a is None else a[start:stop]


def query(points: Any) -> Message:
    """Student asks the teacher to label ``points``."""
    return Message("query", STUDENT, TEACHER, points=points)


def answer(points: Any, labels: Any) -> Message:
    """Teacher labels queried points (ABSTAIN where uncertain)."""
    return Message("answer", TEACHER, STUDENT, points=points, labels=labels)


def push(points: Any, labels: Any, reason: str) -> Message:
    """Teacher sends labelled points the student did not ask for."""
    return Message("push", TEACHER, STUDENT, points=points, labels=labels, reason=reason)


def explain(reason: str, *, vectors: Any = None, mask: Any = None, **meta: Any) -> Message:
    """Teacher states something about its mechanism (``invariance``, ``relevance``)."""
    return Message("explain", TEACHER, STUDENT, vectors=vectors, mask=mask, reason=reason, meta=meta)


def probe(points: Any) -> Message:
    """Teacher asks for the student's predictions on ``points``."""
    return Message("probe", TEACHER, STUDENT, points=points)


def predictions(labels: Any, probs: Any = None) -> Message:
    """Student's answer to a probe."""
    return Message("predictions", STUDENT, TEACHER, labels=labels, probs=probs)


def done(sender: str, reason: str = "") -> Message:
    """Either side ends the episode."""
    other = TEACHER if sender == STUDENT else STUDENT
    return Message("done", sender, other, reason=reason)
