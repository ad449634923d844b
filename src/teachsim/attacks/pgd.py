"""FGSM and PGD (Madry et al. 2018), l_inf and l_2, with random starts and restarts."""

from __future__ import annotations

import torch

from .common import as_box, ascent, ascent_, clip, loss_and_flipped, loss_per_point, project_, random_in_ball


def fgsm(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", box=None,
         generator: torch.Generator | None = None, loss: str = "ce") -> torch.Tensor:
    """One gradient step of size ``eps`` (Goodfellow et al. 2015); l2 uses the normalised gradient."""
    b = as_box(box, x)
    xg = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_per_point(model(xg), y, loss).sum(), xg)
    return clip(x + eps * ascent(grad, norm), b).detach()


def pgd(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", box=None,
        generator: torch.Generator | None = None, steps: int = 50, restarts: int = 2,
        step_size: float | None = None, random_start: bool = True, loss: str = "ce") -> torch.Tensor:
    """Projected gradient ascent on the loss, keeping per point the best iterate.

    Every iterate of every restart is checked: a point's result is the first iterate
    the model misclassifies, else the iterate with the highest loss.

    Args:
        model: inputs -> logits.
        x, y: inputs (n, ...) and labels (n,).
        eps: radius of the ball in ``norm`` (``"linf"`` or ``"l2"``).
        box: optional ``(lo, hi)`` per feature; iterates are clipped into it.
        generator: torch generator for the random starts.
        steps, restarts: iterations per restart and number of restarts.
        step_size: defaults to ``2.5 * eps / steps``.
        random_start: start each restart at a uniform point of the ball (with several
            restarts, every one but the first, which starts at x).
        loss: ``"ce"`` or ``"margin"``.

    Returns:
        x_adv with ``||x_adv - x|| <= eps`` per point.
    """
    b = as_box(box, x)
    x = x.detach()
    alpha = step_size if step_size is not None else 2.5 * eps / max(1, steps)
    best = x.clone()
    # per point: the highest loss so far, or +inf once an iterate is misclassified (nothing
    # beats +inf, so the first misclassified iterate is kept; a correctly classified
    # iterate has a finite loss)
    best_key = torch.full((len(x),), -float("inf"), device=x.device)
    objective = None
    for r in range(max(1, restarts)):
        # With several restarts the first starts at x: from a random start the last iterate
        # keeps part of the start's tangential offset (about 1% of eps after 50 steps), so on
        # an affine student points within that of the boundary were missed.
        zero = not random_start or eps == 0 or (restarts > 1 and r == 0)
        delta = torch.zeros_like(x) if zero else random_in_ball(x, eps, norm, generator)
        xa = clip(x + delta, b)
        if b is not None:
            delta = xa - x
        # Lazy copies: where `current` is set, a point's best iterate is the current one
        # (every iterate is a new tensor, never written to); its row is copied into `best`
        # only once a later iterate does not replace it, or when the restart ends.
        current = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        prev = xa
        for t in range(steps + 1):
            xa.requires_grad_(True)
            logits = model(xa)
            if objective is None:
                objective = loss_and_flipped(y, logits.shape[1], loss)
            per, flipped = objective(logits)
            key = per.detach().masked_fill(flipped, float("inf"))
            take = key > best_key
            _copy_rows(best, prev, current > take)      # bools: current and not take
            current = take
            best_key = torch.maximum(best_key, key)
            # the all-flipped check costs a sync; every 5th step is enough to stop early
            if t == steps or (t % 5 == 4 and bool(torch.isposinf(best_key).all())):
                break
            (grad,) = torch.autograd.grad(per.sum(), xa)
            prev = xa
            with torch.no_grad():
                # in place: delta and grad are this loop's own (xa, kept as prev, is not)
                delta = project_(delta.add_(ascent_(grad, norm).mul_(alpha)), eps, norm)
                xa = clip(x + delta, b)
                if b is not None:
                    delta = xa - x
        _copy_rows(best, xa, current)
        if bool(torch.isposinf(best_key).all()):
            break
    return best.detach()


def _copy_rows(dst: torch.Tensor, src: torch.Tensor, rows: torch.Tensor) -> None:
    """``dst[rows] = src[rows]`` for a boolean ``rows``, by index (cheaper on CPU)."""
    idx = rows.nonzero().squeeze(1)
    if len(idx):
        dst.index_copy_(0, idx, src.detach().index_select(0, idx))
