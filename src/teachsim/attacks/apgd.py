"""APGD-CE (Croce & Hein, ICML 2020): PGD with momentum and a step size that halves at
checkpoints when progress stalls, restarting from the best point found. Budget-aware and
free of a step-size parameter.
"""

from __future__ import annotations

import math

import torch

from .common import as_box, ascent, clip, loss_per_point, project, random_in_ball


def checkpoints(steps: int) -> list[int]:
    """Iterations where the step size may halve: p0=0, p1=0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).

    Example:
        >>> checkpoints(100)
        [0, 22, 41, 57, 70, 80, 87, 93, 99]
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * steps, 6)) for q in p if q <= 1} - {steps})


def apgd_ce(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", box=None,
            generator: torch.Generator | None = None, steps: int = 100, restarts: int = 1,
            rho: float = 0.75, momentum: float = 0.75, loss: str = "ce") -> torch.Tensor:
    """Auto-PGD on the cross-entropy (or margin) loss; keeps per point the first
    misclassified iterate, else the one with the highest loss.

    Args:
        model, x, y, eps, norm, box, generator: as :func:`teachsim.attacks.pgd.pgd`.
        steps: iterations per restart (the checkpoints scale with it).
        restarts: random restarts.
        rho: a checkpoint halves the step when fewer than ``rho`` of the steps since the
            last one increased the loss.
        momentum: weight of the new step against the previous move (0.75 in the paper).
    """
    b = as_box(box, x)
    x = x.detach()
    n = len(x)
    shape = (-1, *([1] * (x.dim() - 1)))
    marks = set(checkpoints(steps))
    out = x.clone()
    out_loss = torch.full((n,), -float("inf"), device=x.device)
    found = torch.zeros(n, dtype=torch.bool, device=x.device)

    def evaluate(xa):
        xa = xa.detach().requires_grad_(True)
        logits = model(xa)
        per = loss_per_point(logits, y, loss)
        (g,) = torch.autograd.grad(per.sum(), xa)
        return per.detach(), g.detach(), logits.argmax(1).detach()

    def record(xa, per, pred):
        nonlocal found
        wrong = (pred != y) & ~found
        better = (per > out_loss) & ~found
        out[wrong | better] = xa[wrong | better]
        out_loss.copy_(torch.where(better, per, out_loss))
        found = found | wrong

    for _ in range(max(1, restarts)):
        if eps == 0:
            per, _, pred = evaluate(x)
            record(x, per, pred)
            break
        xk = clip(x + random_in_ball(x, eps, norm, generator), b)
        per, grad, pred = evaluate(xk)
        record(xk, per, pred)
        eta = torch.full((n,), 2.0 * eps, device=x.device)
        best_x, best_loss, best_grad = xk.clone(), per.clone(), grad.clone()
        x_prev = xk.clone()
        successes = torch.zeros(n, device=x.device)
        last_mark, loss_at_mark, eta_changed = 0, best_loss.clone(), torch.ones(n, dtype=torch.bool, device=x.device)
        for k in range(steps):
            z = clip(x + project(xk + eta.view(shape) * ascent(grad, norm) - x, eps, norm), b)
            if k == 0:
                x_new = z
            else:
                a = momentum
                x_new = clip(x + project(xk + a * (z - xk) + (1 - a) * (xk - x_prev) - x, eps, norm), b)
            x_prev = xk
            xk = x_new
            per_new, grad, pred = evaluate(xk)
            record(xk, per_new, pred)
            successes += (per_new > per).float()
            per = per_new
            improved = per > best_loss
            best_x[improved], best_grad[improved] = xk[improved], grad[improved]
            best_loss = torch.where(improved, per, best_loss)
            if bool(found.all()):
                break
            if k + 1 in marks:
                height = k + 1 - last_mark
                stalled = successes < rho * height
                flat = ~eta_changed & (loss_at_mark >= best_loss)
                halve = stalled | flat
                eta = torch.where(halve, eta / 2, eta)
                # restart the halved points from their best iterate
                xk[halve], grad[halve], per[halve] = best_x[halve], best_grad[halve], best_loss[halve]
                x_prev[halve] = xk[halve]
                eta_changed, loss_at_mark = halve, best_loss.clone()
                successes.zero_()
                last_mark = k + 1
        if bool(found.all()):
            break
    return out.detach()
