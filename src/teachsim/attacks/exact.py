"""Exact references for the judge's search-based scores, where the geometry allows.

- :func:`exact_strong`: strong robustness of an **affine student** (``model = "linear"``)
  under an **affine teacher** (``Task.linear_rule``, e.g. hidden-feature with
  ``teacher = "linear"``), any class count, l2 or linf, with the task's box. The set of
  counterexamples around x is a finite union of polyhedra, one per (teacher class c,
  the teacher's runner-up j, student class s != c): the teacher is certain of c with j
  second, and the student says s. The distance from x to each is a quadratic program
  (l2, solved exactly by a primal active-set method) or a linear program (linf, HiGHS
  through ``scipy.optimize.linprog``). A point is robust iff every distance is at least
  the radius; for every other point a witness x' is built (inside its polyhedron by a
  margin of 1e-6, so it verifies in float32) and can be checked with ``task.label``.
- :func:`exact_lp`: classic l_p robustness of an affine student (distance to its own
  decision boundary; an LP with a box).
- :func:`grid_strong`: strong robustness of **any** student on a task of dimension 2 or
  3, by checking a dense grid of the ball (and its surface) with the teacher's exact rule.
  Every counterexample it reports is real; it can miss regions thinner than its spacing.
- :func:`milp_strong`: a complete check for **ReLU MLP** students under an affine teacher
  in linf by mixed-integer programming (``scipy.optimize.milp``): certifies that no
  counterexample exists (the certified lower bound ``strong_robust_lb``).

The polyhedral ones (exact_strong, exact_lp, milp_strong) work in float64 on the CPU;
:func:`grid_strong` and :func:`penalty_strong` evaluate the models in float32.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..registry import imported
from .common import model_device

TIGHTEN = 1e-6   # witnesses sit this far inside their polyhedron (relative to each row's norm)


# -- the models ---------------------------------------------------------------------------
def affine_of(model: nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
    """``(A, a)`` with ``model(x) = x @ A.T + a``, for a student that is one linear layer
    (``model = "linear"``); ``None`` otherwise."""
    layers = relu_layers(model)
    if layers is None or len(layers) != 1:
        return None
    return layers[0]


def relu_layers(model: nn.Module) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The (weight, bias) pairs of a ReLU MLP (Linear, ReLU, ..., Linear) as float64
    arrays, or ``None`` for any other architecture."""
    mods = list(model) if isinstance(model, nn.Sequential) else [model]
    if not mods or not all(isinstance(m, (nn.Linear, nn.ReLU)) for m in mods):
        return None
    kinds = [isinstance(m, nn.Linear) for m in mods]
    if kinds != [i % 2 == 0 for i in range(len(mods))] or not kinds[-1]:
        return None
    return [(m.weight.detach().cpu().double().numpy(), m.bias.detach().cpu().double().numpy())
            for m in mods if isinstance(m, nn.Linear)]


# -- regions as polyhedra {x : G x <= h} ----------------------------------------------------
def teacher_regions(W: np.ndarray, b: np.ndarray, gamma: float) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Where an affine teacher ``x @ W.T + b`` is certain of class c: the union over its
    runner-up j of {c top, j second, (l_c - l_j) / ||w_c - w_j|| >= gamma} (the task's
    margin: the top-two gap over the norm of its gradient). Returns (c, G, h) triples."""
    C = len(W)
    out = []
    for c in range(C):
        for j in range(C):
            if j == c:
                continue
            diff = W[c] - W[j]
            size = np.linalg.norm(diff)
            if size == 0:
                continue
            # c above every class but j (c above j follows from the margin row)
            rows = [(W[i] - W[c], b[c] - b[i]) for i in range(C) if i not in (c, j)]
            rows += [(W[i] - W[j], b[j] - b[i]) for i in range(C) if i not in (c, j)]
            rows.append((-diff, b[c] - b[j] - gamma * size))
            out.append((c, np.array([r[0] for r in rows]), np.array([r[1] for r in rows])))
    return out


def student_regions(A: np.ndarray, a: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Where an affine student ``x @ A.T + a`` says class s: (s, G, h) triples."""
    C = len(A)
    return [(s, np.array([A[i] - A[s] for i in range(C) if i != s]),
             np.array([a[s] - a[i] for i in range(C) if i != s])) for s in range(C)]


def _bounds(box, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The box as float64 ``(lo, hi)`` arrays of length ``dim`` (None: no box)."""
    if box is None:
        return None
    lo, hi = (np.broadcast_to(np.asarray(v, np.float64).reshape(-1), (dim,)).copy() for v in box)
    return lo, hi


def _box_rows(box, dim: int) -> tuple[np.ndarray, np.ndarray]:
    bounds = _bounds(box, dim)
    if bounds is None:
        return np.zeros((0, dim)), np.zeros(0)
    lo, hi = bounds
    eye = np.eye(dim)
    return np.concatenate([eye, -eye]), np.concatenate([hi, -lo])


# -- distances ----------------------------------------------------------------------------
def _linf_point(x: np.ndarray, G: np.ndarray, h: np.ndarray) -> tuple[float, np.ndarray | None]:
    """min ||y - x||_inf s.t. G y <= h, by HiGHS; (inf, None) if empty."""
    linprog = imported("scipy.optimize").linprog

    d = len(x)
    eye = np.eye(d)
    A = np.block([[eye, -np.ones((d, 1))], [-eye, -np.ones((d, 1))], [G, np.zeros((len(G), 1))]])
    ub = np.concatenate([x, -x, h])
    cost = np.zeros(d + 1)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=A, b_ub=ub, bounds=[(None, None)] * d + [(0, None)], method="highs")
    if res.status == 2:
        return np.inf, None
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    return float(res.x[-1]), res.x[:d]


def _l2_point(x: np.ndarray, G: np.ndarray, h: np.ndarray, max_iter: int = 1000) -> tuple[float, np.ndarray | None]:
    """min ||y - x||_2 s.t. G y <= h: a primal active-set method (Nocedal & Wright,
    Algorithm 16.3, with the identity Hessian) from the feasible point the linf LP gives."""
    _, y = _linf_point(x, G, h)
    if y is None:
        return np.inf, None
    scale = np.linalg.norm(G, axis=1)
    keep = scale > 0
    Gn, hn = G[keep] / scale[keep, None], h[keep] / scale[keep]
    y = y.copy()
    work: list[int] = []
    slack = hn - Gn @ y
    for i in np.argsort(slack):   # the active constraints at the start, linearly independent
        if slack[i] > 1e-9:
            break
        if np.linalg.matrix_rank(Gn[work + [int(i)]]) == len(work) + 1:
            work.append(int(i))
    for _ in range(max_iter):
        g = y - x
        if work:
            A = Gn[work]
            coef = np.linalg.solve(A @ A.T, A @ g)
            p = -(g - A.T @ coef)
        else:
            coef, p = np.zeros(0), -g
        if np.linalg.norm(p) <= 1e-12 * (1.0 + np.linalg.norm(g)):
            lam = -coef   # stationarity: (y - x) + A^T lam = 0
            if not work or lam.min() >= -1e-12:
                return float(np.linalg.norm(y - x)), y
            work.pop(int(np.argmin(lam)))
            continue
        Gp = Gn @ p
        slack = hn - Gn @ y
        alpha, block = 1.0, None
        for i in np.flatnonzero(Gp > 1e-14):
            if int(i) in work:
                continue
            ratio = max(slack[i], 0.0) / Gp[i]
            if ratio < alpha:
                alpha, block = ratio, int(i)
        y = y + alpha * p
        if block is not None:
            work.append(block)
    return _l2_fallback(x, Gn, hn, y)


def _l2_fallback(x: np.ndarray, G: np.ndarray, h: np.ndarray, y0: np.ndarray) -> tuple[float, np.ndarray]:
    # A degenerate vertex can make the active-set method cycle; SLSQP from the same
    # feasible point, then checked, settles it.
    minimize = imported("scipy.optimize").minimize

    res = minimize(lambda y: 0.5 * np.sum((y - x) ** 2), y0, jac=lambda y: y - x, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda y: h - G @ y, "jac": lambda y: -G}],
                   options={"ftol": 1e-15, "maxiter": 1000})
    y = res.x if np.all(G @ res.x - h <= 1e-9) else y0
    return float(np.linalg.norm(y - x)), y


def _l2_dual(x: np.ndarray, G: np.ndarray, h: np.ndarray, bounds, max_iter: int = 100,
             tol: float = 1e-9) -> tuple[float, np.ndarray] | None:
    """min ||y - x||_2 s.t. G y <= h and ``bounds`` (lo <= y <= hi, or None), by projected
    Newton steps on the dual: for multipliers lam >= 0 of the rows the nearest point is
    y(lam) = clip(x - G^T lam, lo, hi), and the dual is concave and piecewise quadratic in
    the few lam (one per row; the box costs nothing). Returns the point only with a KKT
    certificate (y is y(lam), feasible to ``tol`` and every row with lam > 0 tight), else
    None: then :func:`_l2_point` decides (an empty polyhedron, a dual that does not settle).

    Why: the polish calls this thousands of times per checkpoint on two or three rows, and
    the primal active-set method started at the LP's vertex cycled on nearly parallel rows
    (600 iterations per call on average, then SLSQP; 82 of a 95 s episode). This takes
    a few steps, and lands closer to the exact answer (relative error 4e-10 where the
    old method's was 5e-7, against rational arithmetic; tests/attacks/test_strong.py)."""
    scale = np.linalg.norm(G, axis=1)
    keep = scale > 0
    if np.any(~keep & (h < 0)):
        return None   # 0 <= h < 0: empty
    Gn, hn = G[keep] / scale[keep, None], h[keep] / scale[keep]
    lo, hi = bounds if bounds is not None else (None, None)
    tol = tol * (1.0 + float(np.abs(x).max(initial=0.0)))

    def at(lam):
        z = x - Gn.T @ lam
        y = z if bounds is None else np.clip(z, lo, hi)
        r = Gn @ y - hn
        return z, y, r, 0.5 * float(np.dot(y - x, y - x)) + float(lam @ r)

    lam = np.zeros(len(Gn))
    z, y, r, value = at(lam)
    for _ in range(max_iter):
        if r.max(initial=-np.inf) <= tol and np.all(r[lam > 0] >= -tol):
            return float(np.linalg.norm(y - x)), y
        # Newton on the rows that are positive or pushing (Bertsekas' projected Newton);
        # only the coordinates the box leaves free depend on lam. Where the box has
        # clipped the coordinates the rows move, the dual is linear along some direction
        # and has no Newton step there: a tiny ridge makes the step long along it, and
        # the backtracking finds its length
        rows = (lam > 0) | (r > 0)
        Gf = Gn[rows] if bounds is None else Gn[rows][:, (z > lo) & (z < hi)]
        H = Gf @ Gf.T
        newton, _, rank, _ = np.linalg.lstsq(H, r[rows], rcond=None)
        for ridge in (0.0, 1e-10) if rank == len(H) else (1e-10,):
            step = np.zeros(len(Gn))
            step[rows] = newton if not ridge else np.linalg.solve(H + ridge * np.eye(len(H)), r[rows])
            t = 1.0
            while t > 1e-15:   # backtrack along the projected arc until the dual rises enough
                new = np.maximum(lam + t * step, 0.0)
                z2, y2, r2, value2 = at(new)
                if value2 >= value + 1e-4 * float(r @ (new - lam)) and np.any(new != lam):
                    break
                t *= 0.5
            else:
                continue
            break
        else:
            return None
        if not np.isfinite(value2) or np.abs(new).max() > 1e15:
            return None   # unbounded dual: the polyhedron is (nearly) empty
        lam, z, y, r, value = new, z2, y2, r2, value2
    return None


def min_distance(x: np.ndarray, G: np.ndarray, h: np.ndarray, norm: str,
                 box=None) -> tuple[float, np.ndarray | None]:
    """The distance in ``norm`` from ``x`` to the polyhedron {y : G y <= h} within ``box``
    (``(lo, hi)``, scalars or arrays; None: no box) and its nearest point (``(inf, None)``
    when it is empty)."""
    x = np.asarray(x, np.float64)
    bounds = _bounds(box, len(x))
    if norm == "l2":
        done = _l2_dual(x, G, h, bounds)
        if done is not None:
            return done
    bG, bh = _box_rows(box, len(x))
    return (_linf_point if norm == "linf" else _l2_point)(x, np.concatenate([G, bG]), np.concatenate([h, bh]))


def _lower_bound(x: np.ndarray, G: np.ndarray, h: np.ndarray, norm: str) -> float:
    """A cheap lower bound on :func:`min_distance`: the farthest single half-space."""
    dual = np.abs(G).sum(axis=1) if norm == "linf" else np.linalg.norm(G, axis=1)
    viol = G @ x - h
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(dual > 0, viol / dual, np.where(viol > 0, np.inf, -np.inf))
    return float(max(d.max(initial=-np.inf), 0.0))


def l2_pair_bound(x: np.ndarray, G: np.ndarray, h: np.ndarray) -> float:
    """A lower bound on the l2 :func:`min_distance` from ``x`` to {y : G y <= h} (any
    box only adds rows, so it bounds that too): the largest exact distance to the
    intersection of one row or of two rows (``inf`` where a zero row is violated).

    Why: the polish asks for the nearest point of pieces that are mostly far outside the
    ball, and on two nearly opposite rows (cosine -1 + 3e-9: the teacher's margin and the
    student's preference pointing almost exactly against each other) the nearest point
    lies a thousand radii away, where the dual does not settle and the primal active-set
    method runs its 1000 iterations, then SLSQP: 10 of the 13 s of one quick-suite
    checkpoint. A pair's distance is a 2x2 system. The sine is computed from the sum and
    difference of the rows (not ``1 - c**2``, which cancels); pairs closer to parallel
    than ``sin^2 = 1e-12`` are left out (their single rows still count)."""
    x, G, h = np.asarray(x, np.float64), np.asarray(G, np.float64), np.asarray(h, np.float64)
    scale = np.linalg.norm(G, axis=1)
    keep = scale != 0   # a row of NaNs stays, so the bound is NaN and nothing is skipped
    if np.any(~keep & (h < 0)):
        return np.inf
    A, b = G[keep] / scale[keep, None], h[keep] / scale[keep]
    v = A @ x - b   # each row's violation at x: the distance to its half-space where positive
    best = max(float(v.max(initial=0.0)), 0.0)
    if len(A) < 2:
        return best
    i, j = np.triu_indices(len(A), 1)
    c = np.einsum("kd,kd->k", A[i], A[j])
    plus, minus = A[i] + A[j], A[i] - A[j]
    s2 = np.einsum("kd,kd->k", plus, plus) * np.einsum("kd,kd->k", minus, minus) / 4   # 1 - c^2
    # x is outside and neither row's own projection (where it is violated) satisfies the
    # other: both rows are active at the nearest point, y = x - l_i a_i - l_j a_j with
    # [[1, c], [c, 1]] l = v, l >= 0, and the distance squared is l . v
    ri, rj = v[j] - c * v[i], v[i] - c * v[j]   # row j's violation at row i's projection, and back
    both = (((v[i] > 0) | (v[j] > 0)) & ((v[i] <= 0) | (ri > 0)) & ((v[j] <= 0) | (rj > 0)) & (s2 > 1e-12))
    if np.any(both):
        li, lj = rj[both] / s2[both], ri[both] / s2[both]
        ok = (li >= 0) & (lj >= 0)
        if np.any(ok):
            best = max(best, float(np.sqrt(np.max((li * v[i][both] + lj * v[j][both])[ok]))))
    return best


@dataclass(frozen=True)
class ExactResult:
    """Per test point: the distance to the nearest counterexample (inf: none anywhere),
    whether it is robust at the radius, a witness x' for the others (float32, inside
    its polyhedron by a small margin) and the teacher's class there."""

    distance: np.ndarray
    robust: np.ndarray
    witness: np.ndarray
    witness_class: np.ndarray

    @property
    def robust_acc(self) -> float:
        return float(self.robust.mean()) if len(self.robust) else float("nan")


def exact_available(model: nn.Module, task) -> bool:
    """True where :func:`exact_strong` applies: an affine student and an affine teacher."""
    return affine_of(model) is not None and task.linear_rule() is not None


def exact_strong(model: nn.Module, task, x: np.ndarray, *, radius: float, norm: str = "l2") -> ExactResult:
    """Exact strong robustness at ``radius`` of an affine student under an affine teacher
    (module docstring). ``x`` are teacher-certain test points."""
    affine = affine_of(model)
    rule = task.linear_rule()
    if affine is None or rule is None:
        raise ValueError("exact_strong needs an affine student (model = 'linear') and a task with an affine "
                         "teacher (Task.linear_rule)")
    A, a = affine
    W, b = (np.asarray(v, np.float64) for v in rule)
    x = np.asarray(x, np.float64)
    n, dim = x.shape
    box = getattr(task, "box", None)
    bG, bh = _box_rows(box, dim)
    pieces = []
    for (c, TG, Th), (s, SG, Sh) in itertools.product(teacher_regions(W, b, task.gamma), student_regions(A, a)):
        if s != c:
            pieces.append((c, np.concatenate([TG, SG]), np.concatenate([Th, Sh])))
    distance = np.full(n, np.inf)
    witness = x.astype(np.float32).copy()
    wclass = np.full(n, -1, np.int64)
    for i in range(n):
        for c, G, h in pieces:
            if _lower_bound(x[i], np.concatenate([G, bG]), np.concatenate([h, bh]), norm) >= min(distance[i], radius):
                continue   # this piece cannot be nearer than what is known (or than the radius)
            d, _ = min_distance(x[i], G, h, norm, box)
            if d < distance[i]:
                distance[i] = d
                size = np.linalg.norm(G, axis=1)
                _, y = min_distance(x[i], G, h - TIGHTEN * np.maximum(size, 1e-12) * max(1.0, radius), norm, box)
                if y is not None:
                    witness[i], wclass[i] = y.astype(np.float32), c
    return ExactResult(distance, distance >= radius, witness, wclass)


def exact_lp(model: nn.Module, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "l2",
             box=None) -> np.ndarray:
    """Per point, True where an affine student labels ``x`` as ``y`` and every input within
    ``eps`` (and the box) the same: classic l_p robustness, exactly."""
    affine = affine_of(model)
    if affine is None:
        raise ValueError("exact_lp needs an affine student (model = 'linear')")
    A, a = affine
    x = np.asarray(x, np.float64)
    bG, bh = _box_rows(box, x.shape[1])
    out = np.zeros(len(x), bool)
    regions = student_regions(A, a)
    for i in range(len(x)):
        pred = int(np.argmax(x[i] @ A.T + a))
        if pred != y[i]:
            continue
        out[i] = True
        for s, G, h in regions:
            if s == y[i]:
                continue
            G2, h2 = np.concatenate([G, bG]), np.concatenate([h, bh])
            if _lower_bound(x[i], G2, h2, norm) >= eps:
                continue
            d, _ = min_distance(x[i], G, h, norm, box)
            if d < eps:
                out[i] = False
                break
    return out


# -- any student in 2 or 3 dimensions: a dense grid -----------------------------------------
def _ball_grid(dim: int, radius: float, norm: str, per_radius: int) -> np.ndarray:
    """Offsets of a regular grid inside the ball, plus a dense sample of its surface."""
    axis = np.linspace(-radius, radius, 2 * per_radius + 1)
    grid = np.stack(np.meshgrid(*([axis] * dim), indexing="ij"), -1).reshape(-1, dim)
    if norm == "l2":
        grid = grid[np.linalg.norm(grid, axis=1) <= radius * (1 + 1e-12)]
        k = 8 * per_radius
        if dim == 2:
            t = np.linspace(0, 2 * np.pi, 4 * k, endpoint=False)
            surface = radius * np.stack([np.cos(t), np.sin(t)], 1)
        else:
            u, v = np.meshgrid(np.linspace(-1, 1, k), np.linspace(0, 2 * np.pi, 2 * k, endpoint=False))
            r = np.sqrt(1 - u ** 2)
            surface = radius * np.stack([r * np.cos(v), r * np.sin(v), u], -1).reshape(-1, 3)
        grid = np.concatenate([grid, surface])
    return grid


def grid_strong(model: nn.Module, task, x: np.ndarray, *, radius: float, norm: str = "l2",
                per_radius: int = 40, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Strong robustness of any student on a 2- or 3-dimensional task by a dense grid.

    Returns ``(found, witness)``: per point whether a grid point of the ball is a
    teacher-certain disagreement, and the first such point."""
    x = np.asarray(x, np.float32)
    n, dim = x.shape
    if dim not in (2, 3):
        raise ValueError(f"grid_strong is for tasks of dimension 2 or 3, got {dim}")
    offsets = _ball_grid(dim, radius, norm, per_radius).astype(np.float32)
    box = getattr(task, "box", None)
    found = np.zeros(n, bool)
    witness = x.copy()
    model.eval()
    dev = model_device(model)
    per = max(1, chunk // len(offsets))
    for start in range(0, n, per):
        pts = (x[start:start + per, None, :] + offsets[None]).reshape(-1, dim)
        inside = np.ones(len(pts), bool)
        if box is not None:
            lo, hi = (np.asarray(v, np.float32) for v in box)
            inside = np.all((pts >= lo) & (pts <= hi), axis=1)
        t = task.label(pts)
        with torch.no_grad():
            s = model(torch.from_numpy(pts).to(dev)).argmax(1).cpu().numpy()
        bad = (inside & (t >= 0) & (s != t)).reshape(-1, len(offsets))
        for k in range(len(bad)):
            hits = np.flatnonzero(bad[k])
            if len(hits):
                found[start + k] = True
                witness[start + k] = pts.reshape(-1, len(offsets), dim)[k, hits[0]]
    return found, witness


# -- ReLU MLPs in linf: a complete check by MILP -----------------------------------------
def _interval_bounds(layers, lo: np.ndarray, hi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-activation bounds of every hidden layer over the box [lo, hi] (interval arithmetic)."""
    out = []
    for W, b in layers[:-1]:
        Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
        pre_lo, pre_hi = Wp @ lo + Wn @ hi + b, Wp @ hi + Wn @ lo + b
        out.append((pre_lo, pre_hi))
        lo, hi = np.maximum(pre_lo, 0), np.maximum(pre_hi, 0)
    return out


def _milp_feasible(layers, lo: np.ndarray, hi: np.ndarray, bounds, TG: np.ndarray, Th: np.ndarray, c: int,
                   s: int, time_limit: float) -> bool | None:
    """Is there x in [lo, hi] with TG x <= Th where the MLP's logit s >= logit c? ``bounds``:
    :func:`_interval_bounds` over [lo, hi]. True / False, or None when the solver ran out
    of time."""
    optimize = imported("scipy.optimize")
    lil_matrix = imported("scipy.sparse").lil_matrix

    dim = len(lo)
    # variables: x, then per hidden layer its outputs and one binary per unstable neuron
    sizes, layout, n_var = [dim], [], dim
    for pre_lo, pre_hi in bounds:
        unstable = np.flatnonzero((pre_lo < 0) & (pre_hi > 0))
        layout.append((n_var, n_var + len(pre_lo), unstable))
        n_var += len(pre_lo) + len(unstable)
        sizes.append(len(pre_lo))
    rows, lb, ub = [], [], []

    def add(coefs: dict[int, float], low: float, high: float) -> None:
        rows.append(coefs)
        lb.append(low)
        ub.append(high)

    prev = list(range(dim))
    lo_var, hi_var = list(lo), list(hi)
    integrality = [0] * dim
    for (W, b), (pre_lo, pre_hi), (off, _, unstable) in zip(layers[:-1], bounds, layout):
        where = {int(k): off + len(pre_lo) + i for i, k in enumerate(unstable)}
        for k in range(len(pre_lo)):
            z = off + k
            pre = {p: W[k, i] for i, p in enumerate(prev) if W[k, i] != 0}
            if pre_hi[k] <= 0:      # always off
                add({z: 1.0}, 0.0, 0.0)
            elif pre_lo[k] >= 0:    # always on: z = pre
                add({**{p: -w for p, w in pre.items()}, z: 1.0}, b[k], b[k])
            else:                   # z >= pre, z <= pre - l (1 - d), z <= u d
                d = where[k]
                add({**{p: -w for p, w in pre.items()}, z: 1.0}, b[k], np.inf)
                add({**{p: -w for p, w in pre.items()}, z: 1.0, d: -pre_lo[k]}, -np.inf, b[k] - pre_lo[k])
                add({z: 1.0, d: -pre_hi[k]}, -np.inf, 0.0)
        lo_var += [0.0] * len(pre_lo) + [0.0] * len(unstable)
        hi_var += list(np.maximum(pre_hi, 0)) + [1.0] * len(unstable)
        integrality += [0] * len(pre_lo) + [1] * len(unstable)
        prev = [off + k for k in range(len(pre_lo))]
    Wl, bl = layers[-1]
    add({p: Wl[s, i] - Wl[c, i] for i, p in enumerate(prev)}, bl[c] - bl[s], np.inf)
    for g, hval in zip(TG, Th):
        add({i: g[i] for i in range(dim) if g[i] != 0}, -np.inf, hval)
    M = lil_matrix((len(rows), n_var))
    for r, coefs in enumerate(rows):
        for j, v in coefs.items():
            M[r, j] = v
    res = optimize.milp(np.zeros(n_var), constraints=optimize.LinearConstraint(M.tocsr(), lb, ub),
                        integrality=integrality, bounds=optimize.Bounds(lo_var, hi_var),
                        options={"time_limit": time_limit})
    if res.status == 0:
        return True
    if res.status == 2:
        return False
    return None


def milp_available(model: nn.Module, task, norm: str) -> bool:
    """True where :func:`milp_strong` applies: a ReLU MLP, an affine teacher, linf."""
    return norm == "linf" and relu_layers(model) is not None and task.linear_rule() is not None


def milp_strong(model: nn.Module, task, x: np.ndarray, *, radius: float, time_limit: float = 1.0,
                skip: np.ndarray | None = None) -> np.ndarray:
    """Per point, True where it is *certified* strongly robust in linf at ``radius``: no
    x' in the ball (and box) where the affine teacher is certain of some class c and the
    ReLU MLP student's logit of another class reaches c's. A point whose check runs out of
    ``time_limit`` seconds (per MILP) is not certified, so the fraction is a lower bound.
    Points in ``skip`` (say, ones the search already broke) are not checked."""
    layers = relu_layers(model)
    rule = task.linear_rule()
    if layers is None or rule is None:
        raise ValueError("milp_strong needs a ReLU MLP student and an affine teacher")
    W, b = (np.asarray(v, np.float64) for v in rule)
    x = np.asarray(x, np.float64)
    n, dim = x.shape
    box = getattr(task, "box", None)
    blo, bhi = ((np.full(dim, -np.inf), np.full(dim, np.inf)) if box is None
                else (np.asarray(v, np.float64).reshape(dim) for v in box))
    regions = teacher_regions(W, b, task.gamma)
    C = len(W)
    certified = np.zeros(n, bool)
    for i in range(n):
        if skip is not None and skip[i]:
            continue
        lo, hi = np.maximum(x[i] - radius, blo), np.minimum(x[i] + radius, bhi)
        bounds = _interval_bounds(layers, lo, hi)   # the same for every (class, runner-up, s)
        ok = True
        for c, TG, Th in regions:
            if _lower_bound(x[i], TG, Th, "linf") > radius:
                continue    # the teacher is never certain of c (with this runner-up) in the ball
            for s in range(C):
                if s == c:
                    continue
                verdict = _milp_feasible(layers, lo, hi, bounds, TG, Th, c, s, time_limit)
                if verdict is not False:
                    ok = False
                    break
            if not ok:
                break
        certified[i] = ok
    return certified


# -- any student, any dimension: an independent search of a different kind ----------------
def penalty_strong(model: nn.Module, task, x: np.ndarray, *, radius: float, norm: str = "l2",
                   steps: int = 300, starts: int = 3, seed: int = 0) -> np.ndarray:
    """Per point, True where a *penalty-method* search finds a teacher-certain disagreement
    within ``radius``. Not exact: a reference of another kind for students no exact method
    covers (MLPs in many dimensions, curved teachers), to check the judge's search against.

    Where the judge's search maximises the student's loss under the teacher's constraint
    linearised (Frank-Wolfe) and projects polyhedra, this one, for every point, every
    target class c and ``starts`` starts (x, then uniform in the ball), minimises one
    smooth objective with Adam, Carlini-Wagner style:

        ||d||^2 / radius^2 + lam * ( relu(1.05 gamma - margin_to(x + d, c)) / gamma
                                   + relu(z_c(x + d) - max_{s != c} z_s(x + d) + 0.01) )

    over offsets kept in the ball and the box, raising ``lam`` (1, 10, 100) in three equal
    stages. Any iterate where the teacher is certain of c and the student says another
    class counts, so everything it reports is real."""
    from .common import as_box, clip, project, random_in_ball

    dev = model_device(model)   # the search runs where the student lives
    xt = torch.as_tensor(np.asarray(x, np.float32), device=dev)
    n, dim = xt.shape
    C = int(task.classes)
    gen = torch.Generator().manual_seed(seed)
    rows = xt.repeat_interleave(C * starts, dim=0)                    # (n * C * starts, dim)
    target = torch.arange(C, device=dev).repeat_interleave(starts).repeat(n)
    first = (torch.arange(len(rows), device=dev) % starts) == 0
    start = torch.where(first[:, None], rows, random_in_ball(rows, radius, norm, gen))
    box = as_box(getattr(task, "box", None), rows)
    delta = (clip(start, box) - rows).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=radius / 20)
    gamma = float(task.gamma)
    hit = torch.zeros(len(rows), dtype=torch.bool, device=dev)
    witness = rows.clone()
    model.eval()
    for t in range(steps):
        lam = 10.0 ** (3 * t // steps)
        with torch.enable_grad():
            xa = clip(rows + project(delta, radius, norm), box)
            m = task.margin_to(xa, target)
            z = model(xa)
            zc = z.gather(1, target[:, None]).squeeze(1)
            other = z.masked_fill(torch.nn.functional.one_hot(target, C).bool(), float("-inf")).amax(dim=1)
            with torch.no_grad():
                new = (m >= gamma) & (other > zc) & ~hit
                witness[new] = xa.detach()[new]
                hit |= new
            d2 = (xa - rows).flatten(1).pow(2).sum(dim=1) / radius ** 2
            loss = d2 + lam * (torch.relu(1.05 * gamma - m) / max(gamma, 1e-12) + torch.relu(zc - other + 0.01))
            (delta.grad,) = torch.autograd.grad(loss.sum(), delta)   # the models' own grads untouched
        opt.step()
    # checked again with the teacher's labelling rule and the student, as the judge does
    with torch.no_grad():
        hit &= torch.from_numpy(task.label(witness)).to(dev) == target
        hit &= model(witness).argmax(dim=1) != target
    return hit.view(n, C * starts).any(dim=1).cpu().numpy()
