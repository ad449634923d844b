"""The student agent: a torch model, a learning method, and what it has been told.

The student holds the data distribution (it may draw unlabelled inputs) but never the
teacher's mechanism: everything it knows about labels arrived in a message.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .. import messages as m
from .. import seeding
from ..attacks.common import model_device
from ..errors import DivergedError
from ..tasks.base import Distribution
from . import cohort
from .methods import TrainContext

Method = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, TrainContext], torch.Tensor]


class Student:
    """Learns from delivered messages; trains when told to (:meth:`learn`).

    Args:
        model: torch module, inputs -> logits.
        method: the learning method (see :mod:`teachsim.agents.methods`).
        data: the data distribution it may draw unlabelled inputs from.
        classes: number of classes.
        seed: episode seed; each :meth:`learn` call draws from its own stream, so a
            transcript replays to the same student whatever else consumed randomness.
        steps, lr, batch_size, weight_decay: the training schedule of one ``learn``.
        optimizer: ``"adam"`` or ``"sgd"`` (plain gradient descent, as in the paper's theory).
        method_params: parameters of the method.
        invariance_scale, invariance_penalty: how the student uses an ``invariance``
            explanation (directions the teacher's label ignores): each training batch is
            shifted along them by N(0, scale^2) per direction (augmentation), and
            ``penalty`` times the squared norm of the model's input gradient projected
            onto them is added to the loss.
    """

    def __init__(self, model: torch.nn.Module, method: Method, data: Distribution, classes: int, *,
                 seed: int, steps: int = 200, lr: float = 0.01, batch_size: int = 128,
                 weight_decay: float = 0.0, method_params: Mapping[str, Any] | None = None,
                 invariance_scale: float = 2.0, invariance_penalty: float = 1.0, optimizer: str = "adam"):
        self.model, self.method, self.data, self.classes = model, method, data, classes
        self.seed, self.steps, self.lr = seed, steps, lr
        self.batch_size, self.weight_decay = batch_size, weight_decay
        self.method_params = dict(method_params or {})
        self.invariance_scale, self.invariance_penalty = invariance_scale, invariance_penalty
        self.optimizer = optimizer
        self._X: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self.abstained: list[np.ndarray] = []   # points the teacher would not label: information, not labels
        self.explanations: list[m.Message] = []
        self.heard: list[m.Message] = []
        self.observed = 0                        # messages observed so far
        self.learn_log: list[tuple[int, int]] = []   # (observed, steps) at each learn(): replays it
        self._stale = False

    # -- receiving -------------------------------------------------------------------
    def observe(self, msg: m.Message) -> None:
        """Take in a delivered message: labelled points join the training set."""
        self.observed += 1
        self.heard.append(msg)
        if msg.kind in ("answer", "push"):
            keep = msg.labels != m.ABSTAIN
            if keep.any():
                self._X.append(np.asarray(msg.points[keep]))
                self._y.append(np.asarray(msg.labels[keep]))
                self._stale = True
            if (~keep).any():
                self.abstained.append(np.asarray(msg.points[~keep]))
        elif msg.kind == "explain":
            self.explanations.append(msg)
            self._stale = True

    @property
    def n_labelled(self) -> int:
        """Labelled points held."""
        return sum(len(y) for y in self._y)

    def training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """All labelled points received so far, in order."""
        if not self._y:
            return np.zeros((0, self.data.dim), np.float32), np.zeros(0, np.int64)
        return np.concatenate(self._X), np.concatenate(self._y)

    # -- learning --------------------------------------------------------------------
    @property
    def stale(self) -> bool:
        """True when something arrived since the last :meth:`learn`."""
        return self._stale

    def learn(self, steps: int | None = None, *, force: bool = False) -> None:
        """Train ``steps`` (default: the student's schedule) mini-batch steps on everything
        received, warm-starting from the current weights. No-op if nothing new arrived,
        unless ``force`` (replaying a transcript trains where the original did)."""
        if not (self._stale or force):
            return
        self._stale = False
        steps = self.steps if steps is None else int(steps)
        self.learn_log.append((self.observed, steps))
        X, y = self.training_set()
        if len(y) == 0:
            return
        g = seeding.torch_generator(self.seed, "student", "learn", len(self.learn_log))
        together = cohort.training()
        if together is not None and not cohort.batchable(self):
            # it will never train with the others (a cnn, a user's method): it leaves their
            # barrier, so they need not wait for its whole episode at every learn call
            cohort.leave_barrier()
            together = None
        if together is not None:   # trained with its cohort, bit for bit the same
            together.fit(cohort.Request(self, X, y, steps, g))
        else:
            self._fit(self.model, X, y, steps, g)
        _check_finite(self.model, f"learn call {len(self.learn_log)}", self)

    @cohort.trains
    def _fit(self, model: torch.nn.Module, X: np.ndarray, y: np.ndarray, steps: int,
             g: torch.Generator) -> None:
        together = cohort.current()   # in an interrupted cohort, stop (cohort.Cancelled) at the next step
        check = None if together is None else together.check
        if cohort.batchable(self, model):
            # mlp and linear students train through the stacked model, alone too: a cohort's
            # students then train bit for bit as they would one by one
            cohort.fit_together([cohort.Request(self, X, y, steps, g, model)], check)
            return
        ctx = TrainContext(generator=g, box=self.data.box, params=self.method_params)
        dev = model_device(model)   # the student trains where its model lives (a GPU under Ray)
        Xt, yt = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
        V = self.invariance_basis()
        Vt = None if V is None else torch.from_numpy(V).to(dev)
        box = box_tensors(self.data.box, dev)
        opt = self.make_optimizer(model.parameters())
        model.train()
        n, bs = len(yt), min(self.batch_size, len(yt))
        for step in range(steps):
            if check is not None:
                check()
            ctx = dataclasses.replace(ctx, step=step, steps=steps)
            idx = torch.randint(n, (bs,), generator=g) if bs < n else torch.arange(n)
            xb, yb = Xt[idx.to(dev)], yt[idx.to(dev)]
            if Vt is not None and self.invariance_scale > 0:
                # The teacher said its label ignores these directions: moving along them
                # keeps the label, so shifted copies are correctly labelled data.
                shift = (torch.randn(len(xb), len(Vt), generator=g) * self.invariance_scale).to(dev) @ Vt
                xb = xb + shift if box is None else _invariant_in_box(xb, shift, Vt, box)
            loss = self.method(model, xb, yb, ctx)
            if Vt is not None and self.invariance_penalty > 0:
                loss = loss + self.invariance_penalty * _gradient_along(model, xb, Vt, self.classes, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        """A fresh optimiser of this student's kind over ``params`` (one per training run)."""
        make = torch.optim.SGD if self.optimizer == "sgd" else torch.optim.Adam
        return make(params, lr=self.lr, weight_decay=self.weight_decay)

    def invariance_basis(self) -> np.ndarray | None:
        """An orthonormal basis (m, dim) of every direction stated as ``invariance`` so far."""
        stated = [e.vectors for e in self.explanations if e.reason == "invariance" and e.vectors is not None]
        if not stated:
            return None
        q, r = np.linalg.qr(np.concatenate(stated).astype(np.float64).T)
        keep = np.abs(np.diag(r)) > 1e-6
        return np.ascontiguousarray(q[:, keep].T, dtype=np.float32)

    def committee(self, size: int, round_: int, steps: int | None = None) -> "Committee":
        """``size`` bagged copies of the current model (query by committee).

        Each member starts from the student's weights and trains ``steps`` (default: the
        student's schedule) on
        a bootstrap resample of its labelled data, from its own seed stream; the student
        itself is untouched, so committees never change what the transcript replays.
        """
        import copy

        X, y = self.training_set()
        members = [copy.deepcopy(self.model) for _ in range(size)]
        if not len(y) or not members:
            return Committee(members)
        steps = self.steps if steps is None else steps
        draws = []
        for i in range(size):
            g = seeding.torch_generator(self.seed, "student", "committee", round_, i)
            draws.append((torch.randint(len(y), (len(y),), generator=g).numpy(), g))
        if cohort.batchable(self):
            # the members draw from their own generators only: they train together (with
            # the cohort's students, in a cohort) bit for bit as one by one
            requests = [cohort.Request(self, X[pick], y[pick], steps, g, model)
                        for model, (pick, g) in zip(members, draws)]
            together = cohort.training()
            if together is not None:
                together.fit(*requests)
            else:   # one episode's own: what raises (a time limit, Ctrl-C) stops it, as before
                cohort.fit_together(requests)
        else:
            for model, (pick, g) in zip(members, draws):
                self._fit(model, X[pick], y[pick], steps, g)
        for i, model in enumerate(members):
            _check_finite(model, f"committee member {i} of round {round_}", self)
        return Committee(members)

    # -- answering -------------------------------------------------------------------
    def predict_proba(self, points: np.ndarray) -> np.ndarray:
        """Class probabilities, (n, classes); sklearn-style so query strategies can use it."""
        return _proba(self.model, points)

    def predict(self, points: np.ndarray) -> np.ndarray:
        """Predicted labels."""
        return self.predict_proba(points).argmax(axis=1)

    @property
    def device(self) -> torch.device:
        """Where the model lives: tensors a protocol feeds it must be put there."""
        return model_device(self.model)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A detached copy of the model's weights."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def _check_finite(model: torch.nn.Module, where: str, student: Student) -> None:
    """Fail loudly when training diverged (too large a learning rate, say): a model with a
    NaN or infinite weight predicts class 0 everywhere and would be scored as if it had
    learnt. Checked once per training run, not per step (one pass over the weights)."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise DivergedError(f"training diverged at {where}: non-finite weights in {', '.join(bad[:3])}"
                            f"{' ...' if len(bad) > 3 else ''} (optimizer {student.optimizer}, lr {student.lr:g}, "
                            f"method {getattr(student.method, '__name__', student.method)}); lower student.lr")


@torch.no_grad()
def _proba(model: torch.nn.Module, points: np.ndarray) -> np.ndarray:
    model.eval()
    x = torch.from_numpy(np.array(points, dtype=np.float32)).to(model_device(model))
    return torch.softmax(model(x), dim=1).cpu().numpy()


class Committee:
    """Models whose ``predict_proba`` is the mean of the members' (what modAL's
    ``consensus_entropy`` reads)."""

    def __init__(self, members: list[torch.nn.Module]):
        self.members = members

    def predict_proba(self, points: np.ndarray) -> np.ndarray:
        return np.mean([_proba(member, points) for member in self.members], axis=0)


def _gradient_along(model: torch.nn.Module, x: torch.Tensor, V: torch.Tensor, classes: int,
                    g: torch.Generator) -> torch.Tensor:
    """Mean squared norm of the logits' input Jacobian projected onto the rows of ``V``.

    One random projection of the logits (a Hutchinson estimate: E_r ||V J^T r||^2 =
    ||V J^T||_F^2) keeps it to a single double-backward pass whatever the class count.
    """
    xg = x.detach().requires_grad_(True)
    r = torch.randn(len(x), classes, generator=g).to(x.device)
    (grad,) = torch.autograd.grad((model(xg) * r).sum(), xg, create_graph=True)
    return along_norm(grad, V)


def along_norm(grad: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the squared norm of ``grad`` projected onto the rows of ``V``: the
    invariance penalty of :func:`_gradient_along` (a cohort takes it per student)."""
    return ((grad.flatten(1) @ V.T) ** 2).sum(dim=1).mean()


def box_tensors(box, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The domain box as float32 tensors on ``device`` (None: no box)."""
    return None if box is None else tuple(torch.as_tensor(b, dtype=torch.float32, device=device) for b in box)


def _invariant_in_box(x: torch.Tensor, shift: torch.Tensor, V: torch.Tensor,
                      box: tuple[torch.Tensor, torch.Tensor], rounds: int = 20) -> torch.Tensor:
    """``x`` moved towards ``x + shift`` (shift in span(V)) while staying in the box and,
    up to a small residue, in ``x + span(V)``.

    Clipping alone would leave the invariant directions and change the teacher's label
    (on images, clipped pixels change the pooled image the teacher sees). Alternating
    projections onto the box and onto ``x + span(V)`` converge to a point of both (x
    itself is one); the last step clips, so the result is always inside the box.
    """
    lo, hi = box
    z = x + shift
    for _ in range(rounds):
        z = torch.maximum(torch.minimum(z, hi), lo)
        z = x + ((z - x) @ V.T) @ V
    return torch.maximum(torch.minimum(z, hi), lo)
