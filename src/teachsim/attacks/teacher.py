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
teacher's constraint and solves that linear problem over the ball exactly (l2: in closed
form; linf: a fractional knapsack, with the box), then moves towards the solution. For an
affine student and an affine teacher the linearised problem *is* the problem, and the
first step lands on its optimum (tested against ``teachsim.attacks.exact``); on curved
boundaries damped restarts and random starts do the rest.

Every iterate is checked with the teacher's exact rule (``margin_to >= gamma``) and the
student's prediction, and every reported counterexample is checked again with
``task.label`` at the end, so the robust fraction it implies is an upper bound.
"""

from __future__ import annotations

import torch

from .common import as_box, clip, loss_per_point, norm_of, project, random_in_ball


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
    """Per point, the offset d maximising ``a . d`` over the ball ``||d|| <= radius`` (and,
    in linf, the offsets ``lo <= d <= hi`` the box allows) subject to ``n . d >= r``: the
    linearised search problem, solved exactly. Where no offset meets the constraint, the
    one that comes closest."""
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
    na = a.norm(dim=1, keepdim=True).clamp_min(1e-30)
    nn_ = n.norm(dim=1, keepdim=True).clamp_min(1e-30)
    free = radius * a / na
    ok = (n * free).sum(dim=1) >= r
    along = (r[:, None] / nn_ ** 2) * n                          # the nearest offset on the plane n.d = r
    t = a - ((a * n).sum(dim=1, keepdim=True) / nn_ ** 2) * n    # a's part within the plane
    rho = (radius ** 2 - (r[:, None] / nn_) ** 2).clamp_min(0).sqrt()
    on_plane = along + rho * t / t.norm(dim=1, keepdim=True).clamp_min(1e-30)
    reachable = (r[:, None] / nn_).squeeze(1) <= radius
    best = torch.where(reachable[:, None], on_plane, radius * n / nn_)
    return torch.where(ok[:, None], free, best)


def _search(model, task, x, c, *, radius, norm, box, start, steps, target, classic=True):
    """One restart for target classes ``c`` (Frank-Wolfe on the linearised problem):
    returns ``(found, points)``."""
    shape = x.shape
    lo = hi = None
    if norm == "linf" and box is not None:
        lo = (box[0] - x).clamp(min=-radius, max=radius)
        hi = (box[1] - x).clamp(min=-radius, max=radius)
    xa = start.detach()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    best = x.clone()
    for t in range(steps + 1):
        xg = xa.detach().requires_grad_(True)
        with torch.enable_grad():
            s_logits = model(xg)
            m = task.margin_to(xg, c)
            loss = loss_per_point(s_logits, c, "ce")   # > 0 exactly where the student does not say c
            (g_loss,) = torch.autograd.grad(loss.sum(), xg, retain_graph=True)
            (g_m,) = torch.autograd.grad(m.sum(), xg)
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
            v = x + _best_in_ball(g_loss, g_m, r, radius, norm, lo, hi).view(shape)
            # Frank-Wolfe's classic step (the first lands on the linearised optimum: exact for
            # affine students and teachers), or a damped one for curved boundaries, where
            # the linearised optimum overshoots (on a 2-d net teacher the damped restarts
            # found 7 of the 10 counterexamples a dense grid found and the classic missed)
            eta = 2.0 / (t + 2.0) if classic else 0.3 * (1 - t / steps) + 0.02
            xa = _into_ball(x, now + eta * (v - now), radius, norm, box)
    return found, best


def teacher_attack(model, task, x: torch.Tensor, *, radius: float, norm: str = "l2", box=None,
                   generator: torch.Generator | None = None, steps: int = 200, restarts: int = 3,
                   slack: float = 1e-3,
                   reach: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Search for teacher-certain disagreements near ``x`` (module docstring).

    For each class the teacher may be certain of within the ball (first-order distance of
    its boundary at most ``reach * radius``; the teacher's own class always), ``restarts``
    searches of ``steps`` steps run on the points not broken yet: the first from x with
    Frank-Wolfe's classic step schedule, the second from x with a damped one, the others
    from uniform points of the ball (damped).

    Args:
        model: the student, inputs -> logits.
        task: the task: its ``logits``, ``margin_to`` and ``gamma`` define the teacher.
        x: (n, dim) starting points.
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
    order, dist = _targets(task, x, norm)
    for rank in range(order.shape[1]):
        c_all = order[:, rank]
        reachable = dist[:, rank] <= reach * radius
        for r in range(max(1, restarts)):
            idx = (~found & reachable).nonzero().squeeze(1)
            if not len(idx):
                break
            xi = x[idx]
            start = xi if r < 2 else clip(xi + random_in_ball(xi, radius, norm, generator), b)
            hit, pts = _search(model, task, xi, c_all[idx], radius=radius, norm=norm, box=b, start=start,
                               steps=steps, target=target, classic=r == 0)
            out[idx[hit]] = pts[hit]
            found[idx[hit]] = True
    # check every counterexample once more with the teacher's own labelling rule
    moved = found & (norm_of(out - x, norm) > 0)
    if bool(moved.any()):
        with torch.no_grad():
            t = torch.as_tensor(task.label(out[moved]), device=x.device)
            s = model(out[moved]).argmax(dim=1)
            inside = norm_of(out[moved] - x[moved], norm) <= radius * (1 + 1e-5)
            ok = (t >= 0) & (s != t) & inside
        idx = moved.nonzero().squeeze(1)
        found[idx[~ok]] = False
        out[idx[~ok]] = x[idx[~ok]]
    return out, found
