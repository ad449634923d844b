"""Conformance checks for protocols: the same checks for ours and for a user's plugin.

``check_protocol(name, params={...})`` runs small real episodes of the protocol and checks
that it (1) runs, (2) sends only legal messages, (3) never spends over the budget and
charges every message by the rules, (4) terminates, (5) is deterministic under a seed,
and (6) leaves a transcript that replays to the same student.

Example:
    >>> from teachsim.checks.protocol import check_protocol
    >>> report = check_protocol("passive", budgets=(0, 10))
    >>> report.ok
    True
"""

from __future__ import annotations

import sysconfig
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import messages as m
from ..errors import ProtocolError

CHECKS = ("runs", "legal", "budget", "terminates", "deterministic", "replays")

SMALL_TASK = {"name": "hidden-feature", "dim": 8, "manifold_dim": 2}
SMALL_STUDENT = {"hidden": [16], "steps": 20, "initial_labels": 20}


@dataclass
class Report:
    """What a conformance check found: ``results`` maps each check to ``(ok, detail)``."""

    subject: str
    results: dict[str, tuple[bool, str]] = field(default_factory=dict)
    title: str = "check-protocol"
    world: str = ""                                        # what the check ran in
    warnings: list[str] = field(default_factory=list)      # silent mistakes: not failures
    trace: str = ""                                        # the whole traceback of a turn that raised

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.results.values())

    @property
    def failures(self) -> list[str]:
        return [f"{name}: {detail}" for name, (ok, detail) in self.results.items() if not ok]

    def __str__(self) -> str:
        lines = [f"{self.title} {self.subject}"]
        if self.world:
            lines.append(f"  in: {self.world}")
        for name, (ok, detail) in self.results.items():
            lines.append(f"  {'ok  ' if ok else 'FAIL'} {name:<14} {detail}")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines.append("conforms" if self.ok else f"{len(self.failures)} check(s) failed")
        return "\n".join(lines)


_PACKAGE = Path(__file__).resolve().parents[1]
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def where_it_raised(exc: BaseException) -> str:
    """``in the student's turn (student_turn), at my_protocol.py:23`` for an exception from
    a protocol turn: the side, and the deepest line of the author's own code ("" when no
    line of it is involved: the channel or the loop refused what a turn returned)."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not Path(f.filename).resolve().is_relative_to(_PACKAGE)
           and not Path(f.filename).resolve().is_relative_to(_STDLIB) and "site-packages" not in f.filename
           and not f.filename.startswith("<")]
    if not own:
        return ""
    side = next((f.name for f in reversed(frames) if f.name in ("student_turn", "teacher_turn")), None)
    role = {"student_turn": "the student's turn (student_turn)",
            "teacher_turn": "the teacher's turn (teacher_turn)"}.get(side, "the protocol")
    return f"in {role}, at {Path(own[-1].filename).name}:{own[-1].lineno}"


@dataclass
class _Watch:
    """What the checker saw of the rounds: each turn's deliveries and the learn calls."""

    turns: list[tuple[str, int, int, bool]] = field(default_factory=list)   # (role, first, end, stale at start)
    learns: list[tuple[int, str, int, bool]] = field(default_factory=list)  # (turn, role, steps, at a checkpoint)


def _run(spec, max_turns: int, watch: _Watch | None = None):
    from ..agents.teacher import Teacher
    from ..platform.build import build_protocol, build_student, build_task
    from ..platform.loop import Loop
    from ..seeding import single_thread

    with single_thread():
        task = build_task(spec.task, spec.seed)
        student = build_student(spec.student, task, spec.seed)
        loop = Loop(build_protocol(spec.protocol_cfg), Teacher(task), student, spec.budgets,
                    seed=spec.seed, initial_labels=spec.student["initial_labels"])
        if watch is not None:
            _instrument(loop, student, watch)
        while not loop.over and loop.turn < max_turns:
            first, stale = len(loop.channel.log), student.stale
            role = loop.role
            loop.step()
            if watch is not None:
                watch.turns.append((role, first, len(loop.channel.log), stale))
        finished = loop.over
        return loop.close(), student, task, finished


def _instrument(loop, student, watch: _Watch) -> None:
    """Record every training of the checker's own student, and whether a checkpoint asked
    for it (the loop's) or the protocol did (on this instance only: no episode is touched)."""
    learn, settle = student.learn, loop.channel.on_checkpoint
    at_checkpoint = [False]

    def recorded_learn(steps=None, *, force=False):
        before = len(student.learn_log)
        learn(steps, force=force)
        if len(student.learn_log) > before:
            watch.learns.append((loop.turn, loop.role, student.learn_log[-1][1], at_checkpoint[0]))

    def recorded_checkpoint(budget):
        at_checkpoint[0] = True
        try:
            settle(budget)
        finally:
            at_checkpoint[0] = False

    student.learn = recorded_learn
    loop.channel.on_checkpoint = recorded_checkpoint


def _round_warnings(watch: _Watch, log, protocol_params: Mapping[str, Any], student_steps: int) -> list[str]:
    """Silent mistakes a protocol can make with the round schedule."""
    out = []
    batch = protocol_params.get("batch")
    if batch is not None:
        sizes = [sum(d.message.size + d.cut for d in log[a:b] if d.message.kind in m.DIVISIBLE)
                 for role, a, b, _ in watch.turns if role == m.TEACHER]
        over = [n for n in sizes if n > batch]
        if over:
            out.append(f"{len(over)} round(s) delivered more labelled points than batch = {batch} (up to "
                       f"{max(over)}); size a round with min(self.batch, ctx.labels_to_checkpoint)")
    learned = {t for t, role, _, _ in watch.learns if role == m.STUDENT}
    student_turns = [(t, stale) for t, (role, _, _, stale) in enumerate(watch.turns) if role == m.STUDENT]
    skipped = [t for t, stale in student_turns if stale and t not in learned]
    if skipped:
        out.append(f"in {len(skipped)} of {sum(s for _, s in student_turns)} student turns new labels had arrived "
                   "and the student did not learn them (it learns only at checkpoints): start student_turn with "
                   "self.train(student)")
    if "steps" in protocol_params:
        want = protocol_params["steps"] or student_steps
        other = sorted({steps for _, _, steps, cp in watch.learns if not cp and steps != want})
        if other:
            out.append(f"the protocol declares steps = {protocol_params['steps']} (so {want} steps per round) but "
                       f"trained with {other}: call self.train(student), not student.learn()")
    return out


def replay(log, learn_log: Sequence[tuple[int, int]], student) -> None:
    """Feed a transcript's student-bound messages to a fresh ``student`` in order, training
    where the original did (``learn_log``: ``(messages observed, steps)`` per training)."""
    pending = list(learn_log)
    for d in log:
        if d.message.receiver != m.STUDENT:
            continue
        while pending and pending[0][0] == student.observed:
            student.learn(pending.pop(0)[1], force=True)   # the original trained here
        student.observe(d.message)
    while pending:
        student.learn(pending.pop(0)[1], force=True)


def _same_weights(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _transcript(conv) -> list[tuple]:
    rows = []
    for d in conv.channel.log:
        msg = d.message
        arrays = tuple(None if getattr(msg, a) is None else getattr(msg, a).tobytes()
                       for a in ("points", "labels", "probs", "vectors", "mask"))
        rows.append((msg.kind, msg.sender, msg.reason, d.cost, d.cum_cost, d.phase, arrays))
    return rows


def _world(spec) -> str:
    """The world a check ran in, in one line."""
    task = ", ".join(f"{k} {v}" for k, v in spec.task.items() if k != "name")
    s = spec.student
    return (f"task {spec.task['name']} ({task}); student {s['model']} {list(s['hidden'])}, {s['steps']} steps per "
            f"learn, {s['initial_labels']} initial labels; budgets {', '.join(f'{b:g}' for b in spec.budgets)}; "
            f"seed {spec.seed}")


def check_protocol(protocol: str, *, params: Mapping[str, Any] | None = None, task: Mapping[str, Any] | None = None,
                   student: Mapping[str, Any] | None = None, budgets: Sequence[float] = (0, 10, 30, 60),
                   seed: int = 0, max_turns: int = 5000) -> Report:
    """Run the conformance checks on the registered protocol ``protocol``.

    Args:
        protocol: a registered protocol name (plugins: load them first).
        params: the protocol's parameters (its ``[[protocols]]`` table without ``name``).
        task, student: config tables for the small world it runs in (defaults: a
            ``hidden-feature`` task of dimension 8 and a small MLP student).
        budgets: checkpoints of the check episodes.
        seed: episode seed.
        max_turns: a protocol that has not ended after this many turns fails ``terminates``.

    Raises:
        ConfigError: unknown protocol or bad parameters (nothing ran).
    """
    from ..config import resolve_experiment

    exp = resolve_experiment({"name": "check", "seeds": [seed], "budgets": list(budgets),
                              "task": dict(task or SMALL_TASK), "student": dict(student or SMALL_STUDENT),
                              "protocols": [{"name": protocol, **dict(params or {})}]})
    spec = exp.episodes[0]
    report = Report(spec.label, world=_world(spec))
    res = report.results
    watch = _Watch()
    try:
        conv, trained, task_obj, finished = _run(spec, max_turns, watch)
    except ProtocolError as exc:
        res["runs"] = (False, " ".join(["stopped by a rule violation (see legal)", where_it_raised(exc)]).strip())
        res["legal"] = (False, str(exc))
        report.trace = traceback.format_exc()
        return report
    except Exception as exc:  # the protocol's own bug: report it, do not crash the checker
        where = where_it_raised(exc)
        res["runs"] = (False, f"{type(exc).__name__}: {exc}" + (f" ({where})" if where else ""))
        report.trace = traceback.format_exc()
        return report
    log = conv.channel.log
    if finished:
        report.warnings = _round_warnings(watch, log, spec.protocol_cfg, spec.student["steps"])
    kinds = sorted({d.message.kind for d in log if d.phase == "protocol"})
    res["runs"] = (True, f"{len(log)} messages ({', '.join(kinds) or 'none'}), {conv.turns} turns")
    res["legal"] = (True, "every message allowed by the protocol, well-formed, from the side on move")

    final = conv.channel.final
    problems = []
    spent = 0.0
    for d in log:
        want = 0.0 if d.phase == "initial" else conv.channel.cost(d.message)
        if abs(d.cost - want) > 1e-9:
            problems.append(f"message {d.idx} ({d.message.kind}) charged {d.cost}, rule says {want}")
        spent += d.cost
        if d.cum_cost > final + 1e-9 or abs(d.cum_cost - spent) > 1e-6:
            problems.append(f"message {d.idx} brings the cost to {d.cum_cost} (final budget {final})")
    if sorted(conv.snapshots) != sorted(float(b) for b in budgets):
        problems.append(f"snapshots at {sorted(conv.snapshots)}, checkpoints are {list(budgets)}")
    if spec.student["initial_labels"] and (not log or log[0].phase != "initial"):
        problems.append("the initial labels were not delivered first")
    early = " (it ended before the final budget; show and the report flag such episodes)" \
        if final - conv.channel.spent >= 1 - 1e-9 else ""
    res["budget"] = (not problems, "; ".join(problems[:3]) or f"spent {conv.channel.spent:g} of {final:g}{early}")
    res["terminates"] = (finished, f"ended after {conv.turns} turns" if finished
                         else f"still going after {max_turns} turns")

    conv2, trained2, _, _ = _run(spec, max_turns)
    same = _transcript(conv) == _transcript(conv2) and _same_weights(trained.snapshot(), trained2.snapshot())
    res["deterministic"] = (same, "same seed, same transcript and student" if same
                            else "two runs with the same seed differ")

    from ..platform.build import build_student
    from ..seeding import single_thread

    fresh = build_student(spec.student, task_obj, spec.seed)
    with single_thread():
        replay(log, trained.learn_log, fresh)
    ok = _same_weights(fresh.snapshot(), trained.snapshot())
    res["replays"] = (ok, "the transcript rebuilds the same student" if ok
                      else "replaying the transcript gives a different student: the protocol changes the "
                           "student outside messages and learn()")
    return report
