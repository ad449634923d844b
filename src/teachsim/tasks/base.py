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

    Subclasses implement :meth:`sample`; ``box`` is ``(lo, hi)`` per feature or ``None``
    (a number for ``lo`` or ``hi`` holds for every feature: :func:`settle_boxes`).
    """

    dim: int
    box: tuple[np.ndarray, np.ndarray] | None = None

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` float32 inputs of shape (n, dim)."""
        raise NotImplementedError


class Task:
    """A world. Subclasses set ``name, dim, classes, gamma, data, broad`` (optionally
    ``test`` and ``box``) and :meth:`logits`.

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
    test: Distribution | None = None       # held-out inputs for the judge; None: draws from ``data``
    box: tuple[np.ndarray, np.ndarray] | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's differentiable score, (n, dim) -> (n, classes), on ``x``'s device
        (use :meth:`on_device` for the task's own tensors)."""
        raise NotImplementedError

    def on_device(self, like: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The task's own ``tensors`` on ``like``'s device (where the student lives).

        A tensor already there comes back as it is (so CPU runs are untouched); another
        is copied once per device and the copy kept. The copies follow the originals only
        as long as those are not changed in place after first use.
        """
        if all(t.device == like.device for t in tensors):
            return tensors
        cache = self.__dict__.setdefault("_device_copies", {})
        out = []
        for t in tensors:
            if t.device != like.device:
                key = (id(t), like.device)
                if key not in cache:
                    cache[key] = (t, t.to(like.device))   # keep t alive so its id stays its own
                t = cache[key][1]
            out.append(t)
        return tuple(out)

    def margin(self, x: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        """Distance-like certainty of the teacher at each point, shape (n,)."""
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            logits = self.logits(xg)
            top2 = logits.topk(2, dim=1)
            gap = top2.values[:, 0] - top2.values[:, 1]
            (grad,) = torch.autograd.grad(gap.sum(), xg, create_graph=create_graph)
        return gap / (grad.flatten(1).norm(dim=1) + 1e-12)

    def margin_to(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Signed certainty of the teacher *towards* class ``target`` (one per point), shape (n,).

        At least ``gamma`` exactly where the teacher labels the point ``target`` with
        certainty: where ``target`` is the teacher's top class it is :meth:`margin`; elsewhere
        it is minus the first-order distance to the boundary between the top class and
        ``target``, a negative number that grows as ``target`` comes closer. Differentiable,
        so the teacher-relative search can walk into the certain region of *another* class.
        """
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            logits = self.logits(xg)
            top = logits.argmax(dim=1)
            mine = top == target
            first, other = top, target
            one_graph = type(self).margin is Task.margin   # (a margin set on the instance: two graphs)
            if one_graph:
                # The search calls this at every step, so with the default margin one graph
                # serves both cases: where target == top, margin()'s quotient for its pair
                # (topk's first two, ties included), positive. The numbers are those of the
                # two-graph form, bit for bit (tests/tasks: test_margin_to_is_the_two_graph_form).
                pair = logits.topk(2, dim=1).indices
                first = torch.where(mine, pair[:, 0], top)
                other = torch.where(mine, pair[:, 1], target)
            gap = logits.gather(1, first[:, None]).squeeze(1) - logits.gather(1, other[:, None]).squeeze(1)
            (grad,) = torch.autograd.grad(gap.sum(), xg, create_graph=True)
            value = gap / (grad.flatten(1).norm(dim=1) + 1e-12)
            if one_graph:
                return torch.where(mine, value, -value)
            away = -value
            if not bool(mine.any()):
                return away
            return torch.where(mine, self.margin(xg, create_graph=True), away)

    def linear_rule(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(W, b)`` with ``logits(x) = x @ W.T + b`` exactly, when the teacher is affine in
        the input (the exact strong-robustness reference needs it); ``None`` otherwise."""
        return None

    @torch.no_grad()
    def _label_tensor(self, x: torch.Tensor) -> torch.Tensor:
        y = self.logits(x).argmax(dim=1)
        certain = self.margin(x).detach() >= self.gamma
        return torch.where(certain, y, torch.full_like(y, ABSTAIN))

    def label(self, points: np.ndarray | torch.Tensor) -> np.ndarray:
        """The teacher's labels, ABSTAIN where it is uncertain. Batched to bound memory."""
        x = points if torch.is_tensor(points) else torch.from_numpy(np.array(points, dtype=np.float32))
        out = [self._label_tensor(chunk) for chunk in torch.split(x.float(), 4096)] if len(x) else []
        return torch.cat(out).cpu().numpy().astype(np.int64) if out else np.zeros(0, np.int64)

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


def settle_boxes(task: Task) -> Task:
    """Check the boxes of ``task`` and its distributions and make each ``(lo, hi)`` a pair of
    float32 arrays of shape ``(dim,)``: a number for ``lo`` or ``hi`` holds for every feature.

    Why here: attacks, training and pushes read a box as one value per feature; a box of
    another shape once passed ``check-task`` and failed every episode at judging, after all
    of its training. Called where a task is built (episodes, config checks, check-task).

    Raises:
        PluginError: a box that is not ``(lo, hi)`` with numbers or ``dim`` finite values
            each and ``lo <= hi``.
    """
    from ..errors import PluginError, _show

    dim = getattr(task, "dim", None)
    if not isinstance(dim, int):
        return task   # check-task names the missing attribute
    owners = [("box", task)] + [(f"{name}.box", getattr(task, name, None)) for name in ("data", "broad", "test")]
    for where, owner in owners:
        box = getattr(owner, "box", None)
        if box is None:   # (no such distribution, or no box)
            continue
        try:
            lo, hi = box
            lo, hi = (np.broadcast_to(np.asarray(b, dtype=np.float32), (dim,)).copy() for b in (lo, hi))
            ok = bool(np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all())
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise PluginError(f"task {getattr(task, 'name', '') or type(task).__name__!r}: {where}: expected "
                              f"(lo, hi), each a number or {dim} finite values, with lo <= hi; got "
                              f"{_show(box)}")
        owner.box = (lo, hi)
    return task
