"""Messages are typed and immutable; the channel enforces budget, checkpoints and legality."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from teachsim import messages as m
from teachsim.errors import ProtocolError
from teachsim.protocols.channel import Channel


def test_message_is_immutable_and_owns_its_arrays():
    pts = np.zeros((3, 2))
    msg = m.answer(pts, [0, 1, m.ABSTAIN])
    pts[0, 0] = 5.0                       # the sender's array changes ...
    assert msg.points[0, 0] == 0.0        # ... the message does not
    with pytest.raises(ValueError):
        msg.points[0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.kind = "push"
    with pytest.raises(TypeError):
        msg.meta["x"] = 1
    assert msg.size == 3 and msg.sender == m.TEACHER and msg.receiver == m.STUDENT


def test_head_and_tail_split_points_and_labels():
    msg = m.push(np.arange(10).reshape(5, 2), [0, 1, 0, 1, 0], "boundary")
    a, b = msg.head(2), msg.tail(2)
    assert a.size == 2 and b.size == 3 and b.reason == "boundary"
    np.testing.assert_array_equal(np.concatenate([a.labels, b.labels]), msg.labels)


class Recorder:
    """Records deliveries and checkpoint callbacks in order."""

    def __init__(self):
        self.events = []

    def student(self, msg):
        self.events.append(("student", msg.kind, msg.size))

    def teacher(self, msg):
        self.events.append(("teacher", msg.kind, msg.size))

    def checkpoint(self, budget):
        self.events.append(("checkpoint", budget))


def channel(rec, budgets=(0, 10, 25), **kw):
    legal = {m.STUDENT: {"query", "predictions"}, m.TEACHER: {"answer", "push", "explain", "probe"}}
    return Channel(budgets, observers={m.STUDENT: rec.student, m.TEACHER: rec.teacher},
                   on_checkpoint=rec.checkpoint, legal=legal, dim=2, classes=2, **kw)


def pts(n):
    return np.ones((n, 2))


def test_budget_is_never_exceeded_divisible_messages_are_cut():
    rec = Recorder()
    ch = channel(rec)
    for _ in range(5):
        ch.send(m.push(pts(8), [1] * 8, "boundary"))
    assert ch.spent == 25 and ch.finished
    assert all(d.cum_cost <= 25 for d in ch.log)
    assert sum(d.message.size for d in ch.log) == 25
    assert ch.send(m.push(pts(1), [1], "boundary")) == []   # refused: nothing fits


def test_indivisible_message_that_does_not_fit_is_refused():
    rec = Recorder()
    ch = channel(rec, budgets=(0, 3))
    assert ch.send(m.explain("invariance", vectors=np.eye(2)))          # cost 2 fits
    assert ch.send(m.explain("invariance", vectors=np.eye(2))) == []    # 4 > 3: refused whole
    assert ch.spent == 2 and ch.refused == 1


def test_checkpoint_snapshot_comes_before_the_next_delivery_and_splits_at_checkpoints():
    rec = Recorder()
    ch = channel(rec)
    ch.send(m.answer(pts(15), [0] * 15))   # crosses 0 (already reached) and 10
    ch.send(m.query(pts(1)))
    ch.close()
    assert rec.events == [
        ("checkpoint", 0.0),
        ("student", "answer", 10),          # split at the checkpoint ...
        ("checkpoint", 10.0),               # ... snapshot before the rest is delivered
        ("student", "answer", 5),
        ("teacher", "query", 1),
    ]
    assert [d.cum_cost for d in ch.log] == [10, 15, 15]


def test_initial_labels_are_free_and_recorded_apart():
    rec = Recorder()
    ch = channel(rec)
    ch.send(m.answer(pts(50), [0] * 50), phase="initial")
    assert ch.spent == 0 and ch.log[0].phase == "initial" and ch.log[0].cost == 0


def test_probe_limit_truncates_and_refuses():
    rec = Recorder()
    ch = channel(rec, probe_limit=5)
    assert ch.send(m.probe(pts(3)))[0].size == 3
    assert ch.send(m.probe(pts(4)))[0].size == 2
    assert ch.send(m.probe(pts(1))) == []
    assert ch.spent == 0 and ch.probed == 5


@pytest.mark.parametrize("bad, match", [
    (m.Message("push", m.STUDENT, m.TEACHER, points=np.ones((1, 2)), labels=[0]), "goes teacher -> student"),
    (m.Message("shout", m.STUDENT, m.TEACHER), "unknown message kind"),
    (m.done(m.STUDENT), None),                                   # done is always legal
    (m.predictions([0]), None),
    (m.query(np.ones((2, 3))), r"shape \(n, 2\)"),
    (m.answer(pts(2), [0, 5]), r"labels must lie in \[-1, 1\]"),
    (m.push(pts(2), [0, m.ABSTAIN], "x"), r"labels must lie in \[0, 1\]"),
    (m.query(np.full((1, 2), np.nan)), "non-finite"),
])
def test_channel_rejects_illegal_messages(bad, match):
    rec = Recorder()
    ch = channel(rec)
    if match is None:
        ch.send(bad)
    else:
        with pytest.raises(ProtocolError, match=match):
            ch.send(bad)


def test_protocol_legality_is_enforced():
    rec = Recorder()
    ch = Channel((0, 5), observers={m.STUDENT: rec.student, m.TEACHER: rec.teacher},
                 on_checkpoint=rec.checkpoint, legal={m.STUDENT: {"query"}, m.TEACHER: {"answer"}},
                 dim=2, classes=2)
    with pytest.raises(ProtocolError, match="does not allow the teacher to send 'push'"):
        ch.send(m.push(pts(1), [0], "boundary"))
