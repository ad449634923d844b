"""Shared pieces of the attacks: norms, projections, steps, random starts, losses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import seeding

NORMS = ("linf", "l2")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's parameters live (the CPU for a model without any): students train,
    and are attacked and judged, where they live (a GPU under Ray)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def norm_of(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-point norm of a batch of perturbations."""
    flat = d.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def _l2_keepdim(d: torch.Tensor) -> torch.Tensor:
    """Per-point l2 norm shaped to broadcast against ``d`` (one op: these run every step)."""
    return torch.linalg.vector_norm(d, dim=tuple(range(1, d.dim())), keepdim=True)


def project(delta: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps-ball (``eps`` a number, or a tensor of one radius
    per row shaped to broadcast against ``delta``: stacked students' own radii)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    # reciprocal() * eps is what ``eps / tensor`` computes for a number eps (Tensor.__rdiv__):
    # written out, a tensor eps gives each row the bits a number gives it
    return delta * (_l2_keepdim(delta).clamp_min(1e-12).reciprocal() * eps).clamp(max=1.0)


def project_(delta: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """:func:`project` in place (returns ``delta``): one allocation less per attack step."""
    if norm == "linf":
        return delta.clamp_(-eps, eps)
    return delta.mul_((_l2_keepdim(delta).clamp_min(1e-12).reciprocal() * eps).clamp(max=1.0))


def ascent_(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """:func:`ascent` in place (returns ``grad``, or a new tensor when ``grad`` is a
    broadcast view that cannot be written, as autograd may return for odd models)."""
    if not grad.is_contiguous():
        return ascent(grad, norm)
    if norm == "linf":
        return grad.sign_()
    return grad.div_(_l2_keepdim(grad).clamp_min(1e-12))


def ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm for ``norm``."""
    if norm == "linf":
        return grad.sign()
    return grad / _l2_keepdim(grad).clamp_min(1e-12)


def random_in_ball(x: torch.Tensor, eps: float | Sequence[float], norm: str, generator: torch.Generator | None,
                   counts: list[int] | None = None) -> torch.Tensor:
    """A uniform random perturbation in the eps-ball, on ``x``'s device.

    The numbers are drawn on the CPU (the generator is a CPU one), so a seed gives the
    same start on every device. With a :class:`teachsim.seeding.Generators` (several
    students' rows, one block each: equal blocks, or ``counts`` rows each) every block
    is drawn from its student's own generator, as that student alone would draw it, in
    its own ball where ``eps`` is a sequence (one radius per student).
    """
    if isinstance(generator, seeding.Generators):   # (an empty block draws nothing)
        parts = x.chunk(len(generator)) if counts is None else x.split(counts)
        radii = eps if isinstance(eps, Sequence) else [eps] * len(generator)
        return torch.cat([random_in_ball(part, e, norm, g) for part, e, g in zip(parts, radii, generator.generators)])
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
    if logits.shape[1] == 2:
        # Two classes: both losses are l_other - l_true exactly (a logsumexp over one logit
        # is that logit). Two gathers instead of a scatter and a logsumexp: this loss runs
        # at every attack step, and on small models its op count is the attack's cost.
        return logits.gather(1, (1 - y)[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    true = logits.gather(1, y[:, None])
    if kind == "ce":
        return (logits - true).scatter(1, y[:, None], float("-inf")).logsumexp(dim=1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true.squeeze(1)


def loss_and_flipped(y: torch.Tensor, classes: int, kind: str):
    """A function ``logits -> (loss_per_point, flipped)`` for fixed labels ``y``, where
    ``flipped`` says per point whether another class's logit exceeds the true one
    (misclassified; an exact tie counts as not).

    The same values as :func:`loss_per_point`, with what depends only on ``y`` computed
    once: the attacks call it at every step, where on small models the op count is the
    cost.
    """
    if classes == 2:
        # both losses are l_other - l_true: one signed sum per row
        sign = F.one_hot(1 - y, 2).to(torch.float32) - F.one_hot(y, 2).to(torch.float32)

        def two(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            per = (logits * sign).sum(dim=1)
            return per, per.detach() > 0
        return two
    col = y[:, None]
    if kind != "ce":
        def margin(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            per = loss_per_point(logits, y, kind)
            return per, per.detach() > 0
        return margin

    def ce(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rel = (logits - logits.gather(1, col)).scatter(1, col, float("-inf"))
        top = rel.detach().amax(dim=1, keepdim=True)     # the margin, and the logsumexp's shift
        return top.squeeze(1) + (rel - top).exp().sum(dim=1).log(), top.squeeze(1) > 0
    return ce
