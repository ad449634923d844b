"""Shared pieces of the attacks: norms, projections, steps, random starts, losses."""

from __future__ import annotations

import numpy as np
import torch

NORMS = ("linf", "l2")


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def norm_of(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-point norm of a batch of perturbations."""
    flat = d.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps-ball."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / norm_of(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
    return delta * _view(scale, delta)


def ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm for ``norm``."""
    if norm == "linf":
        return grad.sign()
    return grad / _view(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


def random_in_ball(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform random perturbation in the eps-ball, on ``x``'s device.

    The numbers are drawn on the CPU (the generator is a CPU one), so a seed gives the
    same start on every device.
    """
    if norm == "linf":
        return ((torch.rand(x.shape, generator=generator) * 2 - 1) * eps).to(x.device)
    d = torch.randn(x.shape, generator=generator)
    d = d / _view(d.flatten(1).norm(dim=1).clamp_min(1e-12), d)
    r = torch.rand(x.shape[0], generator=generator) ** (1.0 / max(1, x[0:1].numel()))  # x may be empty
    return (d * _view(r * eps, d)).to(x.device)


def as_box(box, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A (lo, hi) pair of tensors shaped like one input, or None."""
    if box is None:
        return None
    lo, hi = (torch.as_tensor(np.asarray(b), dtype=like.dtype, device=like.device).reshape(like.shape[1:]) for b in box)
    return lo, hi


def clip(x: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Clip to the box (per feature), or leave as is."""
    return x if box is None else torch.maximum(torch.minimum(x, box[1]), box[0])


def loss_per_point(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """``ce``: cross-entropy, as ``z = logsumexp_{j != y}(l_j - l_y)``; ``margin``: best other
    logit minus the true one.

    Cross-entropy is ``softplus(z)``, an increasing function of ``z``: the two have the same
    maximisers, rank iterates the same way and have, per point, the same gradient
    direction (what the normalised or sign steps of the attacks use). But in float32 the
    cross-entropy's value and gradient underflow to exactly 0 once the logit gap passes
    about 100, which trained students reach: an attack on it stands still there and
    robustness is overstated. ``z`` never underflows.
    """
    true = logits.gather(1, y[:, None])
    if kind == "ce":
        return (logits - true).scatter(1, y[:, None], float("-inf")).logsumexp(dim=1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true.squeeze(1)
