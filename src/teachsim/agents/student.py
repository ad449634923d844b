"""The student agent: a torch model, a learning method, and what it has been told.

The student holds the data distribution (it may draw unlabelled inputs) but never the
teacher's mechanism: everything it knows about labels arrived in a message.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from .. import messages as m
from .. import seeding
from ..tasks.base import Distribution
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
        method_params: parameters of the method.
    """

    def __init__(self, model: torch.nn.Module, method: Method, data: Distribution, classes: int, *,
                 seed: int, steps: int = 200, lr: float = 0.01, batch_size: int = 128,
                 weight_decay: float = 0.0, method_params: Mapping[str, Any] | None = None):
        self.model, self.method, self.data, self.classes = model, method, data, classes
        self.seed, self.steps, self.lr = seed, steps, lr
        self.batch_size, self.weight_decay = batch_size, weight_decay
        self.method_params = dict(method_params or {})
        self._X: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self.abstained: list[np.ndarray] = []   # points the teacher would not label: information, not labels
        self.explanations: list[m.Message] = []
        self.heard: list[m.Message] = []
        self.observed = 0                        # messages observed so far
        self.learn_log: list[int] = []           # value of ``observed`` at each learn()
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

    def learn(self) -> None:
        """Train ``steps`` mini-batch steps on everything received (warm start). No-op if not stale."""
        if not self._stale:
            return
        self._stale = False
        self.learn_log.append(self.observed)
        X, y = self.training_set()
        if len(y) == 0:
            return
        g = seeding.torch_generator(self.seed, "student", "learn", len(self.learn_log))
        ctx = TrainContext(generator=g, box=self.data.box, params=self.method_params)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.model.train()
        n, bs = len(yt), min(self.batch_size, len(yt))
        for _ in range(self.steps):
            idx = torch.randint(n, (bs,), generator=g) if bs < n else torch.arange(n)
            loss = self.method(self.model, Xt[idx], yt[idx], ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.model.eval()

    # -- answering -------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, points: np.ndarray) -> np.ndarray:
        """Class probabilities, (n, classes); sklearn-style so query strategies can use it."""
        self.model.eval()
        x = torch.from_numpy(np.array(points, dtype=np.float32))
        return torch.softmax(self.model(x), dim=1).numpy()

    def predict(self, points: np.ndarray) -> np.ndarray:
        """Predicted labels."""
        return self.predict_proba(points).argmax(axis=1)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A detached copy of the model's weights."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
