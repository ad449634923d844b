"""The teacher-relative attack behind ``strong_robust_acc``.

A test point x is *not* strongly robust when some x' within ``radius`` of it is labelled
with certainty by the teacher, as any class c, while the student does not say c there.
The teacher's label at x' need not be its label at x: the nearest counterexample often
lies across the teacher's uncertain band, where the teacher is already certain of the
other class and the student still keeps the old one. So the search is *targeted*: for
every class c the teacher could be certain of within the ball (its own class first), it
solves

    maximise  loss_student(x', c)   over  ||x' - x|| <= radius,  x' in box,
                                           margin_to(x', c) >= gamma

by Frank-Wolfe steps: at the current point it linearises the student's loss and the
teacher's constraint and solves that linear problem over the ball and the box exactly
(l2: in closed form, with an active set for the box; linf: a fractional knapsack), then
moves towards the solution. One restart climbs the teacher's certainty of c instead of
the student's loss (where the student keeps its label firmly, reaching the teacher's
certain region is all that is hard). For an
affine student and an affine teacher the linearised problem *is* the problem, and the
first step lands on its optimum for a binary task (tested against
``teachsim.attacks.exact``); on curved boundaries damped restarts and random starts do
the rest.

Two more phases close what Frank-Wolfe on one linearised constraint cannot reach:

- before it, an *untargeted* ascent from x (judge version 1's search), which on curved
  teachers (digits) finds a few counterexamples the targeted phase misses;
- after it, a *linearise-and-project* polish on the points still unbroken. With three or
  more classes the counterexample set is a union of pieces (teacher certain of c with
  runner-up j, student preferring s to c), each an intersection of several constraints
  whose kinks one linearised constraint cannot follow (it missed up to 0.12 of the points
  on 4 classes). The polish linearises both models, computes the nearest point of every
  nearby piece exactly (a QP in l2, an LP in linf, with the box: ``attacks.exact``'s
  solvers), verifies it with the real models and, on curved models, linearises again
  there (3 rounds). For affine students and teachers its first round is exact; on ReLU
  MLPs it walks activation regions the way FAB (Croce & Hein, arXiv 1907.02044) does for
  the l_p boundary, and closed every gap a dense grid showed on 2-d and 3-d tasks.

Every iterate is checked with the teacher's exact rule (``margin_to >= gamma``) and the
student's prediction, and every reported counterexample is checked again with
``task.label`` at the end, so the robust fraction it implies is an upper bound.
"""

from __future__ import annotations

import numpy as np
import torch

from .common import _view, as_box, ascent, clip, loss_per_point, norm_of, project, random_in_ball


def _rows(model, idx: torch.Tensor):
    """The student for the rows ``idx`` of the search's points. A model that routes rows to
    several students (the judge searching all checkpoints of an episode at once,
    :class:`teachsim.agents.cohort.Routed`) narrows to those rows; a plain model is itself."""
    rows = getattr(model, "rows", None)
    return model if rows is None else rows(idx)


def _dual_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    flat = g.flatten(1)
    return flat.abs().sum(dim=1) if norm == "linf" else flat.norm(dim=1)


def _into_ball(x: torch.Tensor, xa: torch.Tensor, radius: float, norm: str, box) -> torch.Tensor:
    return clip(x + project(xa - x, radius, norm), box)


def _targets(task, x: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point, every class ordered by how far the teacher's boundary to it is (first
    order): the teacher's own class first (distance 0). Returns ``(classes, distance)``,
    both (n, classes)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = task.logits(xg)
        top = logits.argmax(dim=1)
        dist = torch.zeros_like(logits)
        for c in range(logits.shape[1]):
            gap = logits.gather(1, top[:, None]).squeeze(1) - logits[:, c]
            (g,) = torch.autograd.grad(gap.sum(), xg, retain_graph=True, allow_unused=True)
            g = torch.zeros_like(xg) if g is None else g
            dist[:, c] = (gap / _dual_norm(g, norm).clamp_min(1e-12)).detach()
    dist[torch.arange(len(x)), top] = 0.0
    order = dist.argsort(dim=1, stable=True)
    return order, dist.gather(1, order)


def _best_in_ball(a: torch.Tensor, n: torch.Tensor, r: torch.Tensor, radius: float, norm: str,
                  lo: torch.Tensor | None, hi: torch.Tensor | None) -> torch.Tensor:
    """Per point, the offset d maximising ``a . d`` over the ball ``||d|| <= radius`` and the
    offsets ``lo <= d <= hi`` the box allows (``None``: no box) subject to ``n . d >= r``:
    the linearised search problem, solved exactly (l2 with a box: by an active set). Where
    no offset meets the constraint, the one that comes closest."""
    a, n = a.flatten(1), n.flatten(1)
    if norm == "linf":
        lo = torch.full_like(a, -radius) if lo is None else lo.flatten(1)
        hi = torch.full_like(a, radius) if hi is None else hi.flatten(1)
        # Lagrangian: d_i = hi_i where a_i + lam n_i > 0, else lo_i; raising lam flips the
        # coordinates where a and n disagree, cheapest first (fractional knapsack)
        d = torch.where(a > 0, hi, torch.where((a == 0) & (n > 0), hi, lo))
        need = r - (n * d).sum(dim=1)
        flip = a * n < 0
        gain = torch.where(flip, n.abs() * (hi - lo), torch.zeros_like(a))
        ratio = torch.where(flip, a.abs() / n.abs().clamp_min(1e-30), torch.full_like(a, float("inf")))
        order = ratio.argsort(dim=1)
        g_sorted = gain.gather(1, order)
        before = g_sorted.cumsum(dim=1) - g_sorted
        # share of each coordinate's flip that is needed, in order: 1 while the need is not
        # met, a fraction at the coordinate that meets it, 0 after
        share = ((need[:, None] - before) / g_sorted.clamp_min(1e-30)).clamp(0, 1)
        share = torch.where(g_sorted > 0, share, torch.zeros_like(share))
        share = torch.where((need > 0)[:, None], share, torch.zeros_like(share))
        amount = torch.zeros_like(a).scatter(1, order, share)
        other = torch.where(a > 0, lo, hi)
        return d + amount * (other - d)
    if lo is None:
        return _l2_best(a, n, r, torch.full_like(r, float(radius)))
    # With a box (digits: more than half the pixels sit at 0 or 1), the ball's optimum
    # points out of the box in many coordinates and clipping it afterwards keeps little of
    # the step (measured: the search then missed 0.11 of the digits points a penalty search
    # found). So solve over ball and box by fixing the coordinates that leave the box at
    # their bound and solving again on the others with what is left of the radius and the
    # constraint: an active-set pass, exact when it stops (a few rounds in practice).
    lo, hi = lo.flatten(1), hi.flatten(1)
    fixed = torch.zeros_like(a, dtype=torch.bool)
    value = torch.zeros_like(a)
    for _ in range(8):
        free_a = torch.where(fixed, torch.zeros_like(a), a)
        free_n = torch.where(fixed, torch.zeros_like(n), n)
        left = (radius ** 2 - value.pow(2).sum(dim=1)).clamp_min(0).sqrt()
        d = value + _l2_best(free_a, free_n, r - (n * value).sum(dim=1), left)
        out = ~fixed & ((d < lo) | (d > hi))
        if not bool(out.any()):
            break
        value = torch.where(out, d.clamp(lo, hi), value)
        fixed |= out
    return d.clamp(lo, hi)


def _l2_best(a: torch.Tensor, n: torch.Tensor, r: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``_best_in_ball`` in l2 without a box, for a radius per point."""
    R = radius[:, None]
    na = a.norm(dim=1, keepdim=True).clamp_min(1e-30)
    nn_ = n.norm(dim=1, keepdim=True).clamp_min(1e-30)
    free = R * a / na
    ok = (n * free).sum(dim=1) >= r
    along = (r[:, None] / nn_ ** 2) * n                          # the nearest offset on the plane n.d = r
    t = a - ((a * n).sum(dim=1, keepdim=True) / nn_ ** 2) * n    # a's part within the plane
    rho = (R ** 2 - (r[:, None] / nn_) ** 2).clamp_min(0).sqrt()
    on_plane = along + rho * t / t.norm(dim=1, keepdim=True).clamp_min(1e-30)
    reachable = (r[:, None] / nn_) <= R
    best = torch.where(reachable, on_plane, R * n / nn_)
    return torch.where(ok[:, None], free, best)


def _search(model, task, x, c, *, radius, norm, box, start, steps, target, classic=True, certainty=False):
    """One restart for target classes ``c`` (Frank-Wolfe on the linearised problem):
    returns ``(found, points)``. With ``certainty`` the objective is the teacher's margin
    towards c instead of the student's loss: where the student keeps its label firmly and
    only a curved teacher's certain region is hard to reach (digits: counterexamples at
    the very edge of the ball), climbing the teacher's certainty is what finds them."""
    shape = x.shape
    lo = hi = None
    if box is not None:
        lo = (box[0] - x).clamp(min=-radius, max=radius)
        hi = (box[1] - x).clamp(min=-radius, max=radius)
    xa = start.detach()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    best = x.clone()
    for t in range(steps + 1):
        xg = xa.detach().requires_grad_(True)
        with torch.enable_grad():
            m = task.margin_to(xg, c)
            (g_m,) = torch.autograd.grad(m.sum(), xg)
            if certainty:   # the student's gradient is not used: its forward pass suffices
                with torch.no_grad():
                    s_logits = model(xg)
            else:
                s_logits = model(xg)
                loss = loss_per_point(s_logits, c, "ce")   # > 0 exactly where the student does not say c
                (g_loss,) = torch.autograd.grad(loss.sum(), xg)
        with torch.no_grad():
            hit = (m >= task.gamma) & (s_logits.argmax(dim=1) != c) & ~found
            best[hit] = xg.detach()[hit]
            found |= hit
        if t == steps or bool(found.all()):
            break
        with torch.no_grad():
            # the teacher's constraint linearised at xa, as a condition on the offset from x:
            # m + g_m . (x + d - xa) >= target
            now = xg.detach()
            r = target - m.detach() + (g_m * (now - x)).flatten(1).sum(dim=1)
            v = x + _best_in_ball(g_m if certainty else g_loss, g_m, r, radius, norm, lo, hi).view(shape)
            # Frank-Wolfe's classic step (the first lands on the linearised optimum: exact for
            # affine students and teachers), or a damped one for curved boundaries, where
            # the linearised optimum overshoots (on a 2-d net teacher the damped restarts
            # found 7 of the 10 counterexamples a dense grid found and the classic missed)
            eta = 2.0 / (t + 2.0) if classic else 0.3 * (1 - t / steps) + 0.02
            xa = _into_ball(x, now + eta * (v - now), radius, norm, box)
            # Every point still open sits at a fixed point (v = xa to float precision; the
            # step sizes only shrink): the remaining steps would repeat this one, up to
            # rounding where the ball's projection moves a point on its edge by a few ulps
            # (at most 6e-7 measured on the quick suite's most robust students, where no
            # such move ever found a counterexample). Stopping saves most of a restart on
            # points the search cannot break; it is part of the search (judge version 4).
            if torch.equal(xa[~found], now[~found]):
                break
    return found, best


def _untargeted(model, task, x, *, radius, norm, box, steps, penalty=10.0, slack=0.1):
    """An untargeted first phase (judge version 1's search, one start at x): ascend the
    student's loss against the teacher's label *at the current point*, with the part of
    the gradient that would lower the teacher's margin projected out and a push back into
    the certain region. It never crosses the uncertain band (the targeted phase does), but
    on curved teachers (digits) it finds some counterexamples the targeted phase misses,
    so the search reports the union. Returns ``(found, points)``."""
    alpha = 2.5 * radius / max(1, steps)
    target = task.gamma * (1 + slack)
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    out = x.clone()
    xa = x.clone()
    for t in range(steps + 1):
        xa.requires_grad_(True)
        with torch.enable_grad():
            label = task.logits(xa).argmax(1).detach()
            margin = task.margin(xa, create_graph=True)
            s_logits = model(xa)
            with torch.no_grad():
                hit = (margin >= task.gamma) & (s_logits.argmax(1) != label) & ~found
                out[hit] = xa.detach()[hit]
                found |= hit
            if t == steps or bool(found.all()):
                break
            (grad,) = torch.autograd.grad(loss_per_point(s_logits, label, "ce").sum(), xa, retain_graph=True)
            n = torch.autograd.grad(margin.sum(), xa, allow_unused=True)[0] if margin.requires_grad else None
        with torch.no_grad():
            n = torch.zeros_like(xa) if n is None else n
            low = margin < target
            dot = (grad * n).flatten(1).sum(1)
            nn2 = (n * n).flatten(1).sum(1).clamp_min(1e-12)
            grad = grad - _view(torch.where(low & (dot < 0), dot / nn2, torch.zeros_like(dot)), n) * n
            push = torch.where(low, penalty * (target - margin) / max(target, 1e-12), torch.zeros_like(margin))
            grad = grad + _view(push * grad.flatten(1).norm(dim=1) / nn2.sqrt(), n) * n
            xa = _into_ball(x, xa + alpha * ascent(grad, norm), radius, norm, box)
    return found, out


def _jacobian(f, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``f(z)`` (n, C) and its Jacobian (n, C, dim) per point, in float64."""
    zg = z.detach().requires_grad_(True)
    with torch.enable_grad():
        out = f(zg)
        rows = []
        for k in range(out.shape[1]):
            (g,) = torch.autograd.grad(out[:, k].sum(), zg, retain_graph=k < out.shape[1] - 1, allow_unused=True)
            rows.append(torch.zeros_like(zg).flatten(1) if g is None else g.flatten(1))
    return out.detach().double().cpu().numpy(), torch.stack(rows, 1).double().cpu().numpy()


def _piece_rows(T, JT, S, JS, z, c, j, s, target, tight):
    """The (teacher class c, runner-up j, student class s) piece linearised at z, as rows
    ``G y <= h`` (each scaled to unit l2 norm): the teacher's margin of c over j at least
    ``target``, j above every other class, and the student above c with s."""
    def row(gi, ti, margin):   # (g . (y - z) + t) / |g| >= margin  ->  -g/|g| . y <= (t - g . z)/|g| - margin
        size = np.linalg.norm(gi)
        if size == 0:
            return None if ti >= margin else (np.zeros_like(gi), -1.0)
        return -gi / size, (ti - gi @ z) / size - margin
    g = JT[c] - JT[j]
    rows = [row(g, T[c] - T[j], target)]   # rows are scaled by |g|: gap / |g| >= target
    rows += [row(JT[j] - JT[i], T[j] - T[i], tight) for i in range(len(T)) if i not in (c, j)]
    rows.append(row(JS[s] - JS[c], S[s] - S[c], tight))
    rows = [r for r in rows if r is not None]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


FAR = 10.0
"""The polish leaves out a piece whose exact distance (a lower bound from one or two of its
rows, :func:`teachsim.attacks.exact.l2_pair_bound`) is above ``FAR`` times the distance
it keeps (1.5 radius) without solving for its nearest point. Why: such pieces are mostly
two nearly opposite rows meeting a thousand radii away, where the nearest-point solver
falls back to its slowest path (10 of the 13 s of one quick-suite checkpoint). Why ten
times, not once: far from x the solver's own answer can be off (at worst 0.41 of the
exact distance among 8276 random nearly opposite pairs beyond 1000; within 1e-6 below
100), so only a piece it would not have kept either is left out: judge version 4's
results, bit for bit wherever compared (tests/attacks/test_strong.py; the quick suite's
32 episodes; digits)."""


def _polish(model, task, x, todo, targets, *, radius, norm, box, target, rounds=3, width=3):
    """Linearise-and-project on the points ``todo`` that the Frank-Wolfe search left: for
    every piece where the teacher is certain of a target class c with runner-up j and the
    student prefers s to c, linearise both models (at x first, then at the last
    projection) and compute the nearest point of that polyhedron exactly (a QP in l2, an
    LP in linf, with the box); verify it with the real models. With several classes the
    counterexample set has kinks (runner-ups change) that one linearised constraint cannot
    follow; for affine students and teachers the first round is exact."""
    from .exact import l2_pair_bound, min_distance

    box64 = None if box is None else tuple(v.flatten().double().cpu().numpy() for v in box)
    tight = 1e-5 * max(1.0, radius)
    xs = x.flatten(1).double().cpu().numpy()
    dual = (lambda g: np.abs(g).sum()) if norm == "linf" else np.linalg.norm   # row distance = gap / dual norm
    pairs = []   # (point, c, j, s)
    T, JT = _jacobian(task.logits, x[todo])
    S, JS = _jacobian(_rows(model, todo), x[todo])
    for k, i in enumerate(todo.tolist()):
        for c in targets[i]:
            # the most binding runner-ups and student classes: the nearest single rows
            jd = [(T[k, c] - T[k, j] - target * np.linalg.norm(JT[k, c] - JT[k, j]))
                  / max(dual(JT[k, c] - JT[k, j]), 1e-30) for j in range(T.shape[1])]
            sd = [(S[k, c] - S[k, s]) / max(dual(JS[k, s] - JS[k, c]), 1e-30) for s in range(S.shape[1])]
            js = [j for j in np.argsort(jd)[::-1] if j != c][:width]
            ss = [s for s in np.argsort(sd) if s != c][:width]
            for j in js:
                if -jd[j] >= radius:
                    continue
                pairs += [(i, c, j, s) for s in ss if sd[s] < radius]
    z = {p: xs[p[0]] for p in pairs}
    found = {}
    for _ in range(rounds):
        pairs = [p for p in pairs if p[0] not in found]
        if not pairs:
            break
        zz = torch.as_tensor(np.stack([z[p] for p in pairs]), dtype=x.dtype, device=x.device).view(-1, *x.shape[1:])
        T, JT = _jacobian(task.logits, zz)
        S, JS = _jacobian(_rows(model, torch.as_tensor([p[0] for p in pairs], device=x.device)), zz)
        cand = []
        for k, p in enumerate(pairs):
            i, c, j, s = p
            G, h = _piece_rows(T[k], JT[k], S[k], JS[k], z[p], c, j, s, target, tight)
            if norm == "l2" and l2_pair_bound(xs[i], G, h) > FAR * 1.5 * radius:
                continue   # far outside what is kept below (d <= 1.5 radius): see FAR
            try:
                d, y = min_distance(xs[i], G, h, norm, box64)
            except RuntimeError:
                continue
            if y is not None and d <= 1.5 * radius:
                cand.append((p, y))
        if not cand:
            break
        idx = torch.as_tensor([p[0] for p, _ in cand], device=x.device)
        y = torch.as_tensor(np.stack([v for _, v in cand]), dtype=x.dtype, device=x.device).view(-1, *x.shape[1:])
        y = _into_ball(x[idx], y, radius, norm, box)
        with torch.no_grad():
            ok = (torch.as_tensor(task.label(y), device=x.device) == torch.as_tensor([p[1] for p, _ in cand],
                                                                                      device=x.device))
            ok &= _rows(model, idx)(y).argmax(dim=1) != torch.as_tensor([p[1] for p, _ in cand], device=x.device)
        for k, (p, _) in enumerate(cand):
            if bool(ok[k]):
                found.setdefault(p[0], y[k])
            else:
                z[p] = y[k].flatten().double().cpu().numpy()   # curved: linearise again there
        pairs = [p for p, _ in cand]
    return found


def teacher_attack(model, task, x: torch.Tensor, *, radius: float, norm: str = "l2", box=None,
                   generator: torch.Generator | None = None, steps: int = 200, restarts: int = 3,
                   slack: float = 1e-3, reach: float = 2.0,
                   polish: int = 3, untargeted: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Search for teacher-certain disagreements near ``x`` (module docstring).

    Three phases, each on the points not broken yet: ``untargeted`` steps of the
    untargeted ascent from x; then, for each class the teacher may be certain of within
    the ball (first-order distance of its boundary at most ``reach * radius``; the
    teacher's own class always), ``restarts`` Frank-Wolfe searches of ``steps`` steps (the
    first from x with the classic step schedule, the second from x with a damped one, the
    third from x climbing the teacher's certainty of the class instead of the student's
    loss, the others from uniform points of the ball, damped); then ``polish`` rounds of
    linearise-and-project (``untargeted = 0`` or ``polish = 0`` turns that phase off).

    Args:
        model: the student, inputs -> logits; or several students, each owning a block of
            ``x``'s rows (:class:`teachsim.agents.cohort.Routed`: the judge searches all of
            an episode's checkpoints at once). Each row's search is its own: the
            stopping rules stop early only what would repeat itself (up to rounding).
        task: the task: its ``logits``, ``margin_to`` and ``gamma`` define the teacher.
        x: (n, dim) starting points.
        generator: draws the random starts (restarts after the third); with a routed
            student a :class:`teachsim.seeding.Generators`, one per student, so each
            draws what its search alone would.
        radius: search radius in ``norm``.
        slack: the search keeps the teacher's margin at ``gamma * (1 + slack)``, a little
            inside the certain region, so float rounding cannot push a point out of it.
        reach: classes whose first-order boundary distance exceeds ``reach * radius`` are
            not searched (exact for linear teachers at ``reach = 1``).

    Returns:
        ``(x_found, found)``: per point a verified counterexample where ``found`` is
        true, else ``x`` itself.
    """
    b = as_box(box, x)
    x = x.detach()
    out = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    if not len(x):
        return out, found
    target = task.gamma * (1 + slack) + 1e-6
    with torch.no_grad():
        t0 = torch.as_tensor(task.label(x), device=x.device)
        found = (t0 >= 0) & (model(x).argmax(dim=1) != t0)   # already wrong at x
    if radius == 0:
        return out, found
    if untargeted > 0:
        idx = (~found).nonzero().squeeze(1)
        hit, pts = _untargeted(_rows(model, idx), task, x[idx], radius=radius, norm=norm, box=b, steps=untargeted)
        out[idx[hit]] = pts[hit]
        found[idx[hit]] = True
    order, dist = _targets(task, x, norm)
    for rank in range(order.shape[1]):
        c_all = order[:, rank]
        reachable = dist[:, rank] <= reach * radius
        for r in range(max(1, restarts)):
            idx = (~found & reachable).nonzero().squeeze(1)
            if not len(idx):
                break
            xi, student = x[idx], _rows(model, idx)
            # random starts: with a routed student, each student's rows from its own generator
            counts = getattr(student, "counts", None)
            start = xi if r < 3 else clip(xi + random_in_ball(xi, radius, norm, generator, counts), b)
            hit, pts = _search(student, task, xi, c_all[idx], radius=radius, norm=norm, box=b, start=start,
                               steps=steps, target=target, classic=r == 0, certainty=r == 2)
            out[idx[hit]] = pts[hit]
            found[idx[hit]] = True
    if polish > 0:
        todo = (~found).nonzero().squeeze(1)
        if len(todo):
            # read on the CPU once (element by element on a GPU, each read would wait for the
            # device); the distances compared in float32, as before
            order_h, near = order.cpu().tolist(), (dist <= reach * radius).cpu().tolist()
            targets = {i: [c for c, ok in zip(order_h[i], near[i]) if ok] for i in todo.tolist()}
            for i, y in _polish(model, task, x, todo, targets, radius=radius, norm=norm, box=b,
                                target=target, rounds=polish).items():
                out[i], found[i] = y, True
    # check every counterexample once more with the teacher's own labelling rule
    moved = found & (norm_of(out - x, norm) > 0)
    if bool(moved.any()):
        with torch.no_grad():
            t = torch.as_tensor(task.label(out[moved]), device=x.device)
            s = _rows(model, moved.nonzero().squeeze(1))(out[moved]).argmax(dim=1)
            inside = norm_of(out[moved] - x[moved], norm) <= radius * (1 + 1e-5)
            ok = (t >= 0) & (s != t) & inside
        idx = moved.nonzero().squeeze(1)
        found[idx[~ok]] = False
        out[idx[~ok]] = x[idx[~ok]]
    return out, found
