"""``membership``: the student synthesises its own queries anywhere in the domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import messages as m
from ..schema import Choice, Float, Int
from .base import ROUND_PARAMS, Protocol

if TYPE_CHECKING:
    import torch


class Membership(Protocol):
    """Membership queries: the student asks about points it made itself.

    ``query = "adversarial"``: its own PGD points (``norm``, ``eps``) around labelled
    points it holds, attacked against their labels: adversarial training whose labels
    come from the teacher instead of being assumed. ``query = "boundary"``: points on its
    own decision boundary, reached from labelled points by Newton steps on its top-two
    logit gap. The teacher answers each point with a label or ABSTAIN; an ABSTAIN costs
    its unit and is kept as information, never as a training label.
    """

    PARAMS = {
        **ROUND_PARAMS,
        "query": Choice("adversarial", ("adversarial", "boundary"), doc="how the student makes its queries"),
        "norm": Choice("l2", ("l2", "linf"), doc="norm of the adversarial queries"),
        "eps": Float(1.0, lo=0.0, doc="radius of the adversarial queries"),
        "attack_steps": Int(20, lo=1, doc="PGD steps (adversarial) or Newton steps (boundary)"),
    }

    def student_turn(self, student, inbox, ctx):
        self.train(student)
        n = min(self.batch, ctx.labels_to_checkpoint)
        if n <= 0:
            return [m.done(m.STUDENT, "budget spent")]
        X, y = student.training_set()
        if len(y):
            pick = ctx.rng.integers(len(y), size=n)
            X, y = X[pick], y[pick]
        else:   # nothing labelled yet: start from data draws and the student's own guesses
            X = student.data.sample(n, ctx.rng)
            y = student.predict(X)
        import torch   # here, not at the top: checking a config builds protocols, without torch

        # the student's own model may live on a GPU: its attack runs there
        x, y = torch.from_numpy(X).to(student.device), torch.from_numpy(y).to(student.device)
        g = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
        if self.query == "adversarial":
            points = _adversarial(student.model, x, y, self, student.data.box, g)
        else:
            points = model_boundary_points(student.model, x, steps=self.attack_steps, box=student.data.box)
        return [m.query(points.cpu().numpy())]

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]


def _adversarial(model, x, y, p: Membership, box, g: torch.Generator) -> torch.Tensor:
    from ..attacks.pgd import pgd

    model.eval()
    return pgd(model, x, y, eps=p.eps, norm=p.norm, box=box, generator=g, steps=p.attack_steps, restarts=1)


def model_boundary_points(model, x: torch.Tensor, *, steps: int = 20, overshoot: float = 0.02,
                    box=None) -> torch.Tensor:
    """Move each point onto the model's decision boundary (DeepFool-style Newton steps on
    the gap between its two largest logits), stopping just past it.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])); _ = lin.bias.zero_()
        >>> model_boundary_points(lin, torch.tensor([[3.0, 1.0]]), overshoot=0.0).round(decimals=4).tolist()
        [[0.0, 1.0]]
    """
    import torch

    from ..attacks.common import as_box, clip

    b = as_box(box, x)
    model.eval()
    z = x.detach().clone()
    for _ in range(steps):
        zg = z.requires_grad_(True)
        top = model(zg).topk(2, dim=1).values
        gap = top[:, 0] - top[:, 1]
        (grad,) = torch.autograd.grad(gap.sum(), zg)
        with torch.no_grad():
            step = (gap / grad.flatten(1).pow(2).sum(1).clamp_min(1e-12)).view(-1, *[1] * (x.dim() - 1))
            z = clip(z - (1 + overshoot) * step * grad, b).detach()
            if gap.abs().max() < 1e-4:
                break
    return z.detach()
