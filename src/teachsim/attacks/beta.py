"""BETA, the best targeted attack (Robey et al., "Adversarial Training Should Be Cast as a
Non-Zero-Sum Game"): one targeted margin ascent per wrong class, batched over classes;
per point keep the class whose final margin is largest.
"""

from __future__ import annotations

import torch

from .common import as_box, ascent, clip, project, random_in_ball


def beta(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", box=None,
         generator: torch.Generator | None = None, steps: int = 50, step_size: float | None = None,
         random_start: bool = True, restarts: int = 1) -> torch.Tensor:
    """Best targeted attack: for each wrong class j, ascend ``z_j - z_y`` within the ball.

    All (point, target) pairs run as one batch of ``n * (classes - 1)``; per point the
    result is the target's final iterate with the largest margin (with restarts, the best
    over restarts).

    Args:
        model, x, y, eps, norm, box, generator: as :func:`teachsim.attacks.pgd.pgd`.
        steps: ascent iterations per target; step_size defaults to ``2.5 * eps / steps``.
    """
    b = as_box(box, x)
    x = x.detach()
    n = len(x)
    with torch.no_grad():
        classes = model(x).shape[1]   # all of x: a cohort's stacked model splits its rows by student
    alpha = step_size if step_size is not None else 2.5 * eps / max(1, steps)
    # targets: for each point, every class except its label
    others = torch.arange(classes, device=x.device).repeat(n, 1)
    others = others[others != y[:, None]].view(n, classes - 1)
    xr = x.repeat_interleave(classes - 1, dim=0)
    yr = y.repeat_interleave(classes - 1)
    tr = others.reshape(-1)
    best = x.clone()
    best_margin = torch.full((n,), -float("inf"), device=x.device)
    for _ in range(max(1, restarts)):
        delta = random_in_ball(xr, eps, norm, generator) if random_start and eps > 0 else torch.zeros_like(xr)
        xa = clip(xr + delta, b)
        for _ in range(steps if eps > 0 else 0):
            xa.requires_grad_(True)
            logits = model(xa)
            margin = logits.gather(1, tr[:, None]).squeeze(1) - logits.gather(1, yr[:, None]).squeeze(1)
            (grad,) = torch.autograd.grad(margin.sum(), xa)
            with torch.no_grad():
                xa = clip(xr + project(xa + alpha * ascent(grad, norm) - xr, eps, norm), b)
        with torch.no_grad():
            logits = model(xa)
            margin = (logits.gather(1, tr[:, None]) - logits.gather(1, yr[:, None])).view(n, classes - 1)
            top, which = margin.max(dim=1)
            cand = xa.view(n, classes - 1, *x.shape[1:])[torch.arange(n, device=x.device), which]
            better = top > best_margin
            best[better] = cand[better]
            best_margin = torch.where(better, top, best_margin)
    return best.detach()
