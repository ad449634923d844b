"""Judge version 1's teacher-relative search, kept verbatim as the reference that
``bench_attacks.py`` times the current search against (never imported by the package).

It overstated ``strong_robust_acc`` mid-curve: it never crossed the teacher's uncertain band.

It searches the ball of radius ``radius`` around each point for x' that the teacher
labels with certainty and the student labels differently, by maximising the student's
loss against the teacher's label at x' while penalising the teacher's uncertainty. Every
iterate is verified with the teacher's exact labelling rule, so each reported
counterexample is real and the robust fraction it implies is an upper bound.

The uncertainty penalty acts as a constraint, not as a term of one summed objective:
where the teacher's margin is below its target, the part of the loss gradient that would
lower the margin further is projected out and a push back along the margin's gradient is
added. (A summed hinge lets the student's loss gradient, which mostly points at the
teacher's own boundary, dominate every normalised step; the search then sits in the
teacher's uncertain band and misses the directions the teacher ignores.)
"""

from __future__ import annotations

import torch

from teachsim.attacks.common import _view, as_box, ascent, clip, loss_per_point, project, random_in_ball


def teacher_attack(model, task, x: torch.Tensor, *, radius: float, norm: str = "l2", box=None,
                   generator: torch.Generator | None = None, steps: int = 50, restarts: int = 3,
                   step_size: float | None = None, penalty: float = 10.0,
                   slack: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Search for teacher-certain disagreements near ``x``.

    The first restart starts at ``x`` itself (so a point the student already gets wrong
    is found at once); the others start uniformly in the ball.

    Args:
        model: the student, inputs -> logits.
        task: the task, whose ``logits``/``margin``/``gamma`` define the teacher.
        x: (n, dim) starting points (teacher-certain).
        radius: search radius in ``norm``.
        penalty: strength of the push that keeps the teacher certain: where the
            margin is below ``gamma * (1 + slack)``, a step along the margin's gradient of
            ``penalty * (target - margin) / target`` times the loss gradient's norm.

    Returns:
        ``(x_found, found)``: per point a verified counterexample where ``found`` is
        true, else ``x`` itself.
    """
    b = as_box(box, x)
    x = x.detach()
    alpha = step_size if step_size is not None else 2.5 * radius / max(1, steps)
    out = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    target = task.gamma * (1 + slack)
    for r in range(max(1, restarts)):
        start = random_in_ball(x, radius, norm, generator) if r > 0 and radius > 0 else torch.zeros_like(x)
        xa = clip(x + start, b)
        for t in range(steps + 1):
            xa.requires_grad_(True)
            t_logits = task.logits(xa)
            label = t_logits.argmax(1).detach()
            margin = task.margin(xa, create_graph=True)
            s_logits = model(xa)
            with torch.no_grad():
                hit = (margin >= task.gamma) & (s_logits.argmax(1) != label) & ~found
                out[hit] = xa.detach()[hit]
                found |= hit
            if t == steps or bool(found.all()) or radius == 0:
                break
            loss = loss_per_point(s_logits, label, "ce")   # stable when the student is saturated
            (grad,) = torch.autograd.grad(loss.sum(), xa)
            n = torch.autograd.grad(margin.sum(), xa, allow_unused=True)[0] if margin.requires_grad else None
            n = torch.zeros_like(xa) if n is None else n
            with torch.no_grad():
                low = margin < target
                dot = (grad * n).flatten(1).sum(1)
                nn2 = (n * n).flatten(1).sum(1).clamp_min(1e-12)
                grad = grad - _view(torch.where(low & (dot < 0), dot / nn2, torch.zeros_like(dot)), n) * n
                push = torch.where(low, penalty * (target - margin) / max(target, 1e-12), torch.zeros_like(margin))
                grad = grad + _view(push * grad.flatten(1).norm(dim=1) / nn2.sqrt(), n) * n
                xa = clip(x + project(xa + alpha * ascent(grad, norm) - x, radius, norm), b)
        if bool(found.all()) or radius == 0:
            break
    return out, found
