"""The channel: the one place that charges cost, enforces the budget, takes checkpoint
snapshots and writes the transcript. Protocols cannot bypass it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from .. import messages as m
from ..errors import ProtocolError

EPS = 1e-9


@dataclass(frozen=True)
class Delivery:
    """One transcript entry: a delivered message and what it cost."""

    idx: int
    message: m.Message
    cost: float
    cum_cost: float
    phase: str  # "initial" (before the protocol; free) or "protocol"
    cut: int = 0  # points the sender sent that were cut away to fit (budget or probe limit)


class Channel:
    """Delivers messages between the two agents under a budget.

    Args:
        budgets: the checkpoints; the largest is the final budget.
        observers: role -> callable that takes a delivered message (the agent's ``observe``).
        on_checkpoint: called with a checkpoint's budget when cumulative cost has reached
            it, *before* the next message is delivered (and at :meth:`close`).
        legal: sender role -> kinds the protocol allows it to send.
        dim, classes: shape rules for payloads.
        explain_cost: cost per vector (or feature) an ``explain`` states.
        probe_limit: points the teacher may probe in all (``None``: no limit).
    """

    def __init__(self, budgets: Iterable[float], *, observers: Mapping[str, Callable[[m.Message], None]],
                 on_checkpoint: Callable[[float], None], legal: Mapping[str, Iterable[str]],
                 dim: int, classes: int, explain_cost: float = 1.0, probe_limit: int | None = None):
        self.pending = sorted(set(float(b) for b in budgets))
        self.final = self.pending[-1]
        self.observers, self.on_checkpoint = observers, on_checkpoint
        self.legal = {role: frozenset(kinds) | {"done"} for role, kinds in legal.items()}
        self.dim, self.classes = dim, classes
        self.explain_cost, self.probe_limit = explain_cost, probe_limit
        self.spent = 0.0
        self.probed = 0
        self.refused = 0
        self.cut = 0          # points cut away from messages to fit (never delivered)
        self.ended = False
        self.log: list[Delivery] = []
        self.inbox: dict[str, list[m.Message]] = {m.STUDENT: [], m.TEACHER: []}

    # -- what the loop and protocols read ----------------------------------------------
    @property
    def finished(self) -> bool:
        """A ``done`` was delivered or the final budget is spent."""
        return self.ended or self.spent >= self.final - EPS

    @property
    def room(self) -> float:
        """Cost units left before the final budget."""
        return max(0.0, self.final - self.spent)

    @property
    def to_checkpoint(self) -> float:
        """Cost units until the next checkpoint not yet reached (or the final budget)."""
        nxt = next((b for b in self.pending if b > self.spent + EPS), self.final)
        return max(0.0, nxt - self.spent)

    def take(self, role: str) -> list[m.Message]:
        """Empty and return ``role``'s inbox."""
        msgs, self.inbox[role] = self.inbox[role], []
        return msgs

    def cost(self, msg: m.Message) -> float:
        """What delivering ``msg`` costs."""
        if msg.kind in m.DIVISIBLE:
            return float(msg.size)
        if msg.kind == "explain":
            return self.explain_cost * msg.size
        return 0.0

    # -- delivery ----------------------------------------------------------------------
    def send(self, msg: m.Message, phase: str = "protocol", *, cut: int = 0) -> list[m.Message]:
        """Charge and deliver ``msg``; returns what was delivered (maybe split or cut; [] if refused).

        A divisible message (labelled points) is cut to what fits the final budget and
        split at checkpoints, so the snapshot for a checkpoint sees exactly the points
        that reached it. An indivisible message that does not fit is refused. Points cut
        away are counted on the delivery (``Delivery.cut``) and in :attr:`cut`, never
        silently dropped. (``cut``: carried to the last piece of a split message.)
        """
        self._check(msg, phase)
        if self.ended:
            raise ProtocolError(f"{msg.sender} sent {msg.kind!r} after the episode ended")
        if phase == "initial":
            return [self._deliver(msg, 0.0, phase)]
        self.settle()
        if msg.kind == "probe" and self.probe_limit is not None:
            fit = self.probe_limit - self.probed
            if fit <= 0:
                self.refused += 1
                return []
            if msg.size > fit:
                cut += msg.size - fit
                msg = msg.head(fit)
        cost = self.cost(msg)
        if self.spent + cost > self.final + EPS:
            if msg.kind not in m.DIVISIBLE:
                self.refused += 1
                return []
            fit = int(math.floor(self.room + EPS))
            if fit <= 0:
                self.refused += 1
                return []
            cut += msg.size - fit
            msg = msg.head(fit)
            cost = float(fit)
        if msg.kind in m.DIVISIBLE:
            step = int(math.ceil(self.to_checkpoint - EPS))
            if 0 < step < msg.size:
                return self.send(msg.head(step)) + self.send(msg.tail(step), cut=cut)
        out = [self._deliver(msg, cost, phase, cut)]
        if msg.kind == "done":
            self.ended = True
        return out

    def settle(self) -> None:
        """Snapshot every checkpoint that cumulative cost has reached."""
        while self.pending and self.spent >= self.pending[0] - EPS:
            self.on_checkpoint(self.pending.pop(0))

    def close(self) -> list[float]:
        """End the episode: settle reached checkpoints; return the ones never reached."""
        self.settle()
        unreached, self.pending = self.pending, []
        return unreached

    def _deliver(self, msg: m.Message, cost: float, phase: str, cut: int = 0) -> m.Message:
        self.spent += cost
        self.cut += cut
        if msg.kind == "probe":
            self.probed += msg.size
        self.log.append(Delivery(len(self.log), msg, cost, self.spent, phase, cut))
        self.inbox[msg.receiver].append(msg)
        self.observers[msg.receiver](msg)
        return msg

    def _check(self, msg: m.Message, phase: str = "protocol") -> None:
        if not isinstance(msg, m.Message):
            raise ProtocolError(f"expected a Message, got {type(msg).__name__}")
        if msg.kind not in m.ROUTES:
            raise ProtocolError(f"unknown message kind {msg.kind!r}; known: {', '.join(m.KINDS)}")
        sender, receiver = m.ROUTES[msg.kind]
        if sender != "either" and (msg.sender, msg.receiver) != (sender, receiver):
            raise ProtocolError(f"{msg.kind!r} goes {sender} -> {receiver}, not {msg.sender} -> {msg.receiver}")
        # The initial labels are the platform's, not the protocol's: any protocol gets them.
        if phase == "protocol" and (msg.sender not in self.legal or msg.kind not in self.legal[msg.sender]):
            raise ProtocolError(f"this protocol does not allow the {msg.sender} to send {msg.kind!r}")
        if msg.kind in ("query", "answer", "push", "probe"):
            if msg.points is None or msg.points.ndim != 2 or msg.points.shape[1] != self.dim:
                shape = None if msg.points is None else msg.points.shape
                raise ProtocolError(f"{msg.kind!r} needs points of shape (n, {self.dim}), got {shape}")
            if not np.isfinite(msg.points).all():
                raise ProtocolError(f"{msg.kind!r} carries non-finite points")
        if msg.kind in ("answer", "push"):
            if msg.labels is None or msg.labels.shape != (len(msg.points),):
                raise ProtocolError(f"{msg.kind!r} needs one label per point")
            lo = m.ABSTAIN if msg.kind == "answer" else 0
            if len(msg.labels) and (msg.labels.min() < lo or msg.labels.max() >= self.classes):
                raise ProtocolError(f"{msg.kind!r} labels must lie in [{lo}, {self.classes - 1}]")
        if msg.kind == "explain" and msg.vectors is None and msg.mask is None:
            raise ProtocolError("'explain' needs vectors or a mask")
