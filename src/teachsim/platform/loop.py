"""The one episode loop: a protocol's turns, the channel that prices and routes every
message, the student's learn calls and a snapshot at every budget checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import messages as m
from .. import seeding
from ..errors import ProtocolError
from ..protocols.base import Protocol, TurnContext
from ..protocols.channel import Channel

MAX_TURNS = 100_000


@dataclass
class Conversation:
    """What one run of the loop leaves: the channel (transcript), snapshots and stats."""

    channel: Channel
    snapshots: dict[float, dict[str, Any]] = field(default_factory=dict)
    checkpoints: list[tuple[float, float, bool]] = field(default_factory=list)  # (budget, cum_cost, reached)
    turns: int = 0


class Loop:
    """The one episode loop, a turn at a time (:func:`converse` runs it to the end; the
    PettingZoo adapter steps it with outside moves).

    Sides alternate, starting with ``protocol.first``. On its turn a side sees only its
    own agent, its inbox and a :class:`TurnContext`; what it returns goes through the
    channel, which charges, checks, delivers and records it, and snapshots the student
    (after it learns what it was sent) whenever a checkpoint is reached. The protocol's
    :meth:`~teachsim.protocols.base.Protocol.channel_rules` (``probe_limit``,
    ``explain_cost``) are the channel's; ``explain_cost``/``probe_limit`` given here win.
    """

    def __init__(self, protocol: Protocol, teacher, student, budgets, *, seed: int, initial_labels: int = 0,
                 explain_cost: float | None = None, probe_limit: int | None = None, on_snapshot=None):
        rules = protocol.channel_rules()
        if explain_cost is None:
            explain_cost = rules.explain_cost
        if probe_limit is None:
            probe_limit = rules.probe_limit
        self.protocol, self.teacher, self.student = protocol, teacher, student
        self.probe_limit = probe_limit
        self.on_snapshot = on_snapshot   # (budget, weights), as each snapshot is taken
        self.channel = Channel(budgets, observers={m.STUDENT: student.observe, m.TEACHER: teacher.observe},
                               on_checkpoint=self._on_checkpoint, legal=protocol.legal, dim=student.data.dim,
                               classes=student.classes, explain_cost=explain_cost, probe_limit=probe_limit)
        self.conv = Conversation(self.channel)
        if initial_labels > 0:
            x = student.data.sample(initial_labels, seeding.rng(seed, "initial"))
            self.channel.send(m.answer(x, teacher.label(x)), phase="initial")
            self.channel.take(m.STUDENT)
        self.rngs = {role: seeding.rng(seed, "protocol", role) for role in (m.STUDENT, m.TEACHER)}
        self.agents = {m.STUDENT: student, m.TEACHER: teacher}
        self.moves = {m.STUDENT: protocol.student_turn, m.TEACHER: protocol.teacher_turn}
        self.role, self.idle, self.turn = protocol.first, 0, 0

    def learn(self) -> None:
        """Let the student learn what arrived, on the protocol's round schedule
        (``Protocol.train``): checkpoint trainings follow it too, so the last round trains
        like every other one. The PettingZoo adapter calls it between outside moves."""
        self.protocol.train(self.student)

    def _on_checkpoint(self, budget: float) -> None:
        self._snapshot(budget, True)

    def _snapshot(self, budget: float, reached: bool) -> None:
        self.learn()
        weights = self.conv.snapshots[budget] = self.student.snapshot()
        self.conv.checkpoints.append((budget, self.channel.spent, reached))
        if self.on_snapshot is not None:
            self.on_snapshot(budget, weights)

    @property
    def over(self) -> bool:
        """A ``done`` was delivered, the budget is spent, or neither side had anything to say."""
        return self.channel.finished or self.idle >= 2

    def context(self) -> TurnContext:
        """What the side on move may know besides its inbox."""
        ch = self.channel
        room = None if self.probe_limit is None else self.probe_limit - ch.probed
        return TurnContext(self.rngs[self.role], self.turn, ch.spent, ch.room, ch.to_checkpoint, room)

    def step(self, move=None) -> int:
        """Play the turn of the side on move (its protocol move, or ``move``, a function with
        the same signature); returns how many messages were delivered."""
        if self.turn >= MAX_TURNS:
            raise ProtocolError(f"the protocol did not end within {MAX_TURNS} turns")
        role = self.role
        inbox = self.channel.take(role)
        sent = (move or self.moves[role])(self.agents[role], inbox, self.context())
        if sent is None:
            sent = []
        if isinstance(sent, m.Message) or not isinstance(sent, (list, tuple)):
            what = f"a {sent.kind!r} Message" if isinstance(sent, m.Message) else f"a {type(sent).__name__}"
            raise ProtocolError(f"the {role}'s turn returned {what}; a turn returns a list of messages "
                                f"(return [msg], or [] to pass)")
        delivered = 0
        for msg in sent:
            if isinstance(msg, m.Message) and msg.sender != role:
                raise ProtocolError(f"on the {role}'s turn the protocol sent a message from the {msg.sender}")
            delivered += len(self.channel.send(msg))
            if self.channel.finished:
                break
        self.idle = 0 if delivered else self.idle + 1
        self.turn += 1
        self.role = m.TEACHER if role == m.STUDENT else m.STUDENT
        return delivered

    def run(self) -> Conversation:
        """Play turns until ``done``, the final budget, or two idle turns; then :meth:`close`."""
        while not self.over:
            self.step()
        return self.close()

    def close(self) -> Conversation:
        """End the episode; a checkpoint never reached gets the final student."""
        self.conv.turns = self.turn
        for budget in self.channel.close():
            self._snapshot(budget, False)
        return self.conv


def converse(protocol: Protocol, teacher, student, budgets, *, seed: int, initial_labels: int = 0,
             explain_cost: float | None = None, probe_limit: int | None = None) -> Conversation:
    """Run the one episode loop (:class:`Loop`) until ``done``, the final budget, or two idle turns."""
    return Loop(protocol, teacher, student, budgets, seed=seed, initial_labels=initial_labels,
                explain_cost=explain_cost, probe_limit=probe_limit).run()
