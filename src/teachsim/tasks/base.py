"""The task contract every world satisfies.

A task owns two things that must stay apart: the *data* the student may draw from
(:class:`Distribution`, handed to the student) and the teacher's *mechanism*
(:meth:`Task.logits`, :meth:`Task.margin`), which only the teacher and the judge see.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..messages import ABSTAIN


class Distribution:
    """A sampler of inputs that knows nothing about labels.

    Subclasses implement :meth:`sample`; ``box`` is ``(lo, hi)`` per feature or ``None``.
    """

    dim: int
    box: tuple[np.ndarray, np.ndarray] | None = None

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` float32 inputs of shape (n, dim)."""
        raise NotImplementedError


class Task:
    """A world. Subclasses set ``name, dim, classes, gamma, data, broad`` and :meth:`logits`.

    The teacher's label at x is ``argmax logits(x)`` where :meth:`margin` >= ``gamma``
    and ABSTAIN elsewhere. ``margin`` defaults to the first-order distance to the
    nearest decision boundary, ``(l_top - l_second) / ||grad_x (l_top - l_second)||``,
    which is exact for a linear teacher and differentiable, so attacks can keep the
    teacher certain.
    """

    name: str = ""
    dim: int
    classes: int
    gamma: float
    data: Distribution
    broad: Distribution
    box: tuple[np.ndarray, np.ndarray] | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's differentiable score, (n, dim) -> (n, classes)."""
        raise NotImplementedError

    def margin(self, x: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        """Distance-like certainty of the teacher at each point, shape (n,)."""
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            logits = self.logits(xg)
            top2 = logits.topk(2, dim=1)
            gap = top2.values[:, 0] - top2.values[:, 1]
            (grad,) = torch.autograd.grad(gap.sum(), xg, create_graph=create_graph)
        return gap / (grad.flatten(1).norm(dim=1) + 1e-12)

    @torch.no_grad()
    def _label_tensor(self, x: torch.Tensor) -> torch.Tensor:
        y = self.logits(x).argmax(dim=1)
        certain = self.margin(x).detach() >= self.gamma
        return torch.where(certain, y, torch.full_like(y, ABSTAIN))

    def label(self, points: np.ndarray | torch.Tensor) -> np.ndarray:
        """The teacher's labels, ABSTAIN where it is uncertain. Batched to bound memory."""
        x = points if torch.is_tensor(points) else torch.from_numpy(np.array(points, dtype=np.float32))
        out = [self._label_tensor(chunk) for chunk in torch.split(x.float(), 4096)] if len(x) else []
        return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, np.int64)

    def as_model(self) -> nn.Module:
        """The teacher's score as a torch module (inputs -> logits): a perfect student."""
        return _TeacherModule(self)

    def invariances(self) -> np.ndarray | None:
        """An orthonormal basis (m, dim) of directions the label ignores, if known."""
        return None


class _TeacherModule(nn.Module):
    def __init__(self, task: Task):
        super().__init__()
        self._task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._task.logits(x)
