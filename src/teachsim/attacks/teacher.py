"""The teacher-relative attack behind ``strong_robust_acc`` (SPEC section 5).

It searches the ball of radius ``radius`` around each point for x' that the teacher
labels with certainty and the student labels differently, by maximising the student's
loss against the teacher's label at x' while penalising the teacher's uncertainty. Every
iterate is verified with the teacher's exact labelling rule, so each reported
counterexample is real and the robust fraction it implies is an upper bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import as_box, ascent, clip, project, random_in_ball


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
        penalty: weight of the hinge ``relu(gamma * (1 + slack) - margin)`` that keeps
            the teacher certain.

    Returns:
        ``(x_found, found)``: per point a verified counterexample where ``found`` is
        true, else the last iterate.
    """
    b = as_box(box, x)
    x = x.detach()
    alpha = step_size if step_size is not None else 2.5 * radius / max(1, steps)
    out = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool)
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
            objective = F.cross_entropy(s_logits, label, reduction="none") - penalty * F.relu(target - margin)
            (grad,) = torch.autograd.grad(objective.sum(), xa)
            with torch.no_grad():
                xa = clip(x + project(xa + alpha * ascent(grad, norm) - x, radius, norm), b)
        if bool(found.all()) or radius == 0:
            break
    return out, found
