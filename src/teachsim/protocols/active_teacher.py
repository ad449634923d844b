"""``active-teacher``: the teacher, who knows its own mechanism, pushes information.

Each kind of pushed points (``boundary``, ``offmanifold``, and ``data`` for ``then``) is a
small function of the teacher, a count and a generator that returns labelled points (the
teacher's own knowledge, never the student's); ``counterexample``, which needs the probe
round trip, and ``invariance``, an ``explain``, live in the protocol.
"""

from __future__ import annotations

import numpy as np

from .. import messages as m
from ..schema import Choice, Float, Int
from .base import ROUND_PARAMS, Protocol

PUSHES = ("boundary", "counterexample", "invariance", "offmanifold")


def certain(teacher, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points of ``x`` the teacher labels with certainty, and their labels."""
    y = teacher.label(x)
    keep = y != m.ABSTAIN
    return x[keep], y[keep]


def _draw(teacher, n: int, make, tries: int = 8) -> tuple[np.ndarray, np.ndarray]:
    # Keep drawing until n certain points are found (the uncertain set may take some).
    xs, ys, have = [], [], 0
    for _ in range(tries):
        x, y = certain(teacher, make(2 * (n - have) + 8))
        xs.append(x)
        ys.append(y)
        have += len(y)
        if have >= n:
            break
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def _clip(task, x: np.ndarray) -> np.ndarray:
    return x if task.box is None else np.clip(x, task.box[0], task.box[1]).astype(np.float32)


def data_points(teacher, n: int, rng: np.random.Generator, **_) -> tuple[np.ndarray, np.ndarray]:
    """Labelled i.i.d. draws from the data distribution (what passive data would give)."""
    return _draw(teacher, n, lambda k: teacher.task.data.sample(k, rng))


def boundary_points(teacher, n: int, rng: np.random.Generator, *, width: float = 1.0,
                    newton_steps: int = 8, **_) -> tuple[np.ndarray, np.ndarray]:
    """Labelled points just outside the uncertain set: data draws moved along the teacher's
    margin gradient until their margin is ``gamma * (1 + width * u)``, u ~ U(0, 1)."""
    import torch   # here, not at the top: checking a config builds protocols, without torch

    task = teacher.task

    def make(k: int) -> np.ndarray:
        x = torch.from_numpy(task.data.sample(k, rng))
        target = torch.from_numpy((task.gamma * (1 + width * rng.uniform(size=k))).astype(np.float32))
        for _ in range(newton_steps):
            xg = x.detach().requires_grad_(True)
            f = task.margin(xg, create_graph=True) - target
            (grad,) = torch.autograd.grad(f.sum(), xg)
            with torch.no_grad():
                step = f / grad.flatten(1).pow(2).sum(1).clamp_min(1e-12)
                x = torch.from_numpy(_clip(task, (x - step[:, None] * grad).numpy()))
        return x.detach().numpy().astype(np.float32)

    return _draw(teacher, n, make)


def offmanifold_points(teacher, n: int, rng: np.random.Generator, *, scale: float = 1.0,
                       **_) -> tuple[np.ndarray, np.ndarray]:
    """Labelled points that vary what the data never vary: data draws shifted along the
    directions the teacher's label ignores (its invariances) by N(0, s^2) per direction,
    with s ~ U(0, scale) per point. Drawing s spreads the shifts over every size up to
    about ``scale * sqrt(m)``; one fixed s would put them all on a thin shell, saying
    nothing about smaller shifts. For a task that states no invariances: broad draws."""
    task = teacher.task
    V = task.invariances()
    if V is None:
        return _draw(teacher, n, lambda k: task.broad.sample(k, rng))

    def make(k: int) -> np.ndarray:
        x = task.data.sample(k, rng)
        s = scale * rng.uniform(size=(k, 1))
        return _clip(task, x + (s * rng.standard_normal((k, len(V)))) @ V)

    return _draw(teacher, n, make)


def probe_candidates(teacher, n: int, rng: np.random.Generator, *, radius: float = 2.0) -> np.ndarray:
    """Where the teacher looks for the student's mistakes: half data draws moved a random
    distance up to ``radius`` in a random direction, half broad draws."""
    task = teacher.task
    near = task.data.sample(n - n // 2, rng)
    d = rng.standard_normal(near.shape)
    d *= (radius * rng.uniform(size=len(d)) / np.maximum(np.linalg.norm(d, axis=1), 1e-12))[:, None]
    return np.concatenate([_clip(task, near + d), task.broad.sample(n // 2, rng)]).astype(np.float32)


SIMPLE = {"data": data_points, "boundary": boundary_points, "offmanifold": offmanifold_points}


class ActiveTeacher(Protocol):
    """The teacher pushes what it knows; the student learns after each round.

    ``push``:
      - ``boundary``: labelled points just outside its uncertain set.
      - ``counterexample``: it probes the student's predictions on candidate points
        (``probes`` per round, at most ``probe_limit`` in all) and pushes labelled points
        where the student is wrong, most confidently wrong first; it stops after
        ``patience`` rounds that find none.
      - ``invariance``: one ``explain`` message with an orthonormal basis of the
        directions its label ignores (cost ``explain_cost`` per vector); the student
        augments along them and penalises its gradient on them. The rest of the budget
        goes to ``then`` (all of it when the task states no invariances or the
        explanation costs more than the budget).
      - ``offmanifold``: labelled points that vary the directions the data never vary.
    """

    PARAMS = {
        **ROUND_PARAMS,
        "push": Choice("counterexample", PUSHES, doc="what the teacher pushes"),
        "then": Choice("data", ("data", "boundary", "offmanifold", "counterexample", "none"),
                       doc="push=invariance: what the teacher pushes after its explanation"),
        "width": Float(1.0, lo=0.0, doc="boundary: margin band above gamma, in units of gamma"),
        "scale": Float(1.0, lo=0.0, doc="offmanifold: largest std of the variation along ignored directions"),
        "radius": Float(2.0, lo=0.0, doc="counterexample: how far from data draws the teacher probes"),
        "probes": Int(500, lo=1, doc="counterexample: points probed per round"),
        "probe_limit": Int(100_000, lo=0, doc="counterexample: points the teacher may probe in all"),
        "patience": Int(20, lo=1, doc="counterexample: rounds without a counterexample before it stops"),
        "explain_cost": Float(1.0, lo=0.0, doc="cost per direction an explanation states"),
    }
    legal = {m.STUDENT: {"predictions"}, m.TEACHER: {"push", "explain", "probe"}}
    first = m.TEACHER

    def __init__(self, **params):
        super().__init__(**params)
        self.explained = False
        self.probed: np.ndarray | None = None   # teacher side: the points of its last probe
        self.dry_rounds = 0

    def student_turn(self, student, inbox, ctx):
        self.train(student)
        return [m.predictions(student.predict(p.points), student.predict_proba(p.points))
                for p in inbox if p.kind == "probe"]

    def teacher_turn(self, teacher, inbox, ctx):
        if self.push == "invariance" and not self.explained:
            self.explained = True
            V = teacher.task.invariances()
            if V is not None and len(V) and self.explain_cost * len(V) <= ctx.room + 1e-9:
                return [m.explain("invariance", vectors=V)]
            # Nothing to explain (a task whose label ignores no fixed direction, such as
            # spheres), or an explanation the budget cannot pay for: the whole budget goes
            # to ``then``.
        kind = self.then if self.push == "invariance" else self.push
        n = min(self.batch, ctx.labels_to_checkpoint)
        if kind == "none" or n <= 0:
            return [m.done(m.TEACHER, "budget spent" if n <= 0 else "explained")]
        if kind == "counterexample":
            return self._counterexamples(teacher, inbox, ctx, n)
        x, y = SIMPLE[kind](teacher, n, ctx.rng, width=self.width, scale=self.scale)
        return [m.push(x, y, kind)]

    def _counterexamples(self, teacher, inbox, ctx, n):
        out = []
        said = [p for p in inbox if p.kind == "predictions"]
        if said and self.probed is not None:
            pred = said[-1]
            x = self.probed[: len(pred.labels)]
            truth = teacher.label(x)
            wrong = np.flatnonzero((truth != m.ABSTAIN) & (truth != pred.labels))
            if len(wrong):
                confidence = pred.probs[wrong, pred.labels[wrong]] if pred.probs is not None else np.zeros(len(wrong))
                worst = wrong[np.argsort(-confidence, kind="stable")][:n]
                out.append(m.push(x[worst], truth[worst], "counterexample"))
                self.dry_rounds = 0
            else:
                self.dry_rounds += 1
        if self.dry_rounds >= self.patience:
            return out + [m.done(m.TEACHER, f"no counterexample in {self.patience} probe rounds")]
        room = self.probes if ctx.probe_room is None else min(self.probes, ctx.probe_room)
        if room <= 0:
            return out + [m.done(m.TEACHER, "probe limit spent")]
        self.probed = probe_candidates(teacher, room, ctx.rng, radius=self.radius)
        return out + [m.probe(self.probed)]
