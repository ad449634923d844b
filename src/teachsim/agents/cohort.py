"""Cohort training: students of many episodes that share an architecture and a learning
method train as one batched model, bit for bit as each would alone (on the CPU).

Why: a small student's training step is mostly per-op dispatch, not arithmetic. K
students stacked into one model (weights ``(K, out, in)``, ``baddbmm`` per layer) pay the
dispatch once for all K.

How it stays identical to training alone:

- each layer is ``baddbmm(b, h, W^T)``, which computes every student's slice as
  ``F.linear`` does (the tests compare weights with ``torch.equal``);
- every random draw is made from the student's own generator, in the order it would
  make it alone (:class:`teachsim.seeding.Generators`), and every batch-level quantity (a
  loss's mean, GAIRAT's weight normalisation) is taken per student (``TrainContext.cohort``);
- the optimiser's update is elementwise, so one optimiser over stacked weights updates
  each slice as a per-student optimiser would.

What is batched: ``mlp`` and ``linear`` students (a chain of linear layers and ReLUs), any
built-in method, any batch size (inside the stacked model each student's rows are padded
to a multiple of :data:`ROWS`; ``erm`` students training on all of their points stack
whatever their counts, see :attr:`Request.ragged`), with the ``invariance`` augmentation and gradient penalty
of students holding such an explanation (grouped by the shape of their bases). What
trains alone through ``Student._fit``: other models (``cnn``, plugins' models).
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import signal
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import seeding
from ..attacks.common import model_device
from ..seeding import Generators


ROWS = 16
"""Inside :class:`Stacked` every student's rows are padded with zeros to a multiple of ROWS
(the pads' outputs are dropped, so they add nothing to any loss or gradient). Why: with
other row counts CPU ``bmm`` gives a student's input gradient a last-bit difference
depending on how many students are stacked; with multiples of 16 a grid of 240 shapes (K
= 2 to 32, widths 2 to 200) is bit for bit the same. A student alone pads the same way."""


def stackable(model: nn.Module) -> tuple | None:
    """The model's shape signature when it is a chain of ``Linear`` and ``ReLU`` layers
    (what :class:`Stacked` can batch), else None."""
    if not isinstance(model, nn.Sequential):
        return None
    sig = []
    for layer in model:
        if type(layer) is nn.Linear and layer.bias is not None:
            sig.append(("linear", layer.in_features, layer.out_features))
        elif type(layer) is nn.ReLU:
            sig.append(("relu",))
        else:
            return None
    return tuple(sig)


class Stacked(nn.Module):
    """K models of one :func:`stackable` shape as one module: inputs ``(K * B, d)`` (the
    students' batches one after another, B rows each) -> logits ``(K * B, classes)``."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models, self.k = models, len(models)
        self.linear = [i for i, layer in enumerate(models[0]) if isinstance(layer, nn.Linear)]
        self.weights = nn.ParameterList(torch.stack([m[i].weight.detach() for m in models]) for i in self.linear)
        self.biases = nn.ParameterList(torch.stack([m[i].bias.detach() for m in models])[:, None, :]
                                       for i in self.linear)
        stacked = dict(zip(self.linear, zip(self.weights, self.biases)))
        self.layers = [stacked.get(i) for i in range(len(models[0]))]   # (w, b), or None for a ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.view(self.k, -1, x.shape[-1])
        rows = h.shape[1]
        if rows % ROWS:   # see ROWS: padded rows, then dropped
            h = torch.nn.functional.pad(h, (0, 0, 0, ROWS - rows % ROWS))
        for layer in self.layers:
            h = torch.relu(h) if layer is None else torch.baddbmm(layer[1], h, layer[0].mT)
        return h[:, :rows].reshape(-1, h.shape[-1])

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained slices into the students' own models."""
        for i, w, b in zip(self.linear, self.weights, self.biases):
            for k, model in enumerate(self.models):
                model[i].weight.copy_(w[k])
                model[i].bias.copy_(b[k, 0])


def stack(models: list[nn.Module]) -> Stacked | None:
    """``models`` as one :class:`Stacked` model for inference (no gradients to the weights),
    or None where they do not share one :func:`stackable` shape."""
    sig = stackable(models[0])
    if sig is None or any(stackable(m) != sig for m in models[1:]):
        return None
    return Stacked(models).requires_grad_(False)


class Routed:
    """Several models as one callable: row i of an input goes to ``models[owner[i]]``,
    each model's rows one block after another (``owner`` non-decreasing; blocks may differ
    in size, or be empty). The judge searches all checkpoints of an episode in one pass
    with it: the search narrows to the rows still open with :meth:`rows`.

    Stackable models run as one :class:`Stacked` model (each block zero-padded to the
    largest, the pads' outputs dropped), others one after another. A model's logits are
    the same as alone up to float rounding (another row count can change the last bit of
    a product), never in anything else."""

    def __init__(self, models: list[nn.Module], owner: torch.Tensor, stacked: Stacked | None = None):
        self.models, self.owner = models, owner
        self.stacked = stack(models) if stacked is None else stacked
        self.counts = torch.bincount(owner, minlength=len(models)).tolist()
        if len(owner) > 1 and not bool((owner[1:] >= owner[:-1]).all()):
            raise ValueError("Routed: owners must be non-decreasing (each model's rows one block)")
        # Only the models that own rows run: late in a search most checkpoints have no open
        # rows left, and stacking them all would compute a padded block for each (measured:
        # 40% of the quick suite's stacked passes were padding). The same blocks, so on the
        # CPU the same bits (see ROWS).
        self._run, self._owner, self._counts = self.stacked, owner, self.counts
        active = [i for i, c in enumerate(self.counts) if c]
        if self.stacked is not None and 0 < len(active) < len(models):
            self._run = stack([models[i] for i in active])
            slot = torch.full((len(models),), -1, dtype=owner.dtype, device=owner.device)
            slot[active] = torch.arange(len(active), dtype=owner.dtype, device=owner.device)
            self._owner, self._counts = slot[owner], [self.counts[i] for i in active]

    @classmethod
    def blocks(cls, models: list[nn.Module], rows: int, device=None) -> Routed:
        """``models`` over ``len(models)`` blocks of ``rows`` rows each."""
        owner = torch.arange(len(models), device=device).repeat_interleave(rows)
        return cls(models, owner)

    def rows(self, idx: torch.Tensor) -> Routed:
        """The same models for the rows ``idx`` (ascending) of this one's inputs."""
        return Routed(self.models, self.owner[idx], self.stacked)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        if self.stacked is None or n == 0:
            parts = [m(part) for m, part in zip(self.models, x.split(self.counts)) if len(part)]
            return torch.cat(parts) if parts else self.models[0](x)
        counts, owner = self._counts, self._owner
        k, size = len(counts), max(counts)
        if size * k == n:   # equal blocks: no routing
            return self._run(x)
        start = torch.tensor(np.cumsum([0] + counts[:-1]), device=x.device)
        slot = owner * size + torch.arange(n, device=x.device) - start[owner]
        h = x.new_zeros((k * size, *x.shape[1:])).index_copy(0, slot, x)
        return self._run(h).index_select(0, slot)


@dataclass
class Request:
    """One student's learn call, waiting for its cohort."""

    student: Any
    X: np.ndarray
    y: np.ndarray
    steps: int
    generator: torch.Generator
    model: nn.Module | None = None   # what trains: the student's model unless given (a committee member)
    done: bool = False
    trained: bool = False   # its group's batch finished and wrote its weights back
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.model = self.student.model if self.model is None else self.model
        self.start = self.generator.get_state()   # to train alone, from scratch, if the batch fails
        s = self.student
        # the directions the teacher said its label ignores, where the student uses them
        self.basis = s.invariance_basis() if s.invariance_scale > 0 or s.invariance_penalty > 0 else None

    @property
    def batch(self) -> int:
        return min(self.student.batch_size, len(self.y))

    @property
    def ragged(self) -> bool:
        """Whether this request may train beside others with *another* number of points:
        an ``erm`` student that uses no invariance explanation and trains on all its
        points at every step (at most its batch size of them). Its loss takes no random draw,
        so each student's block is its own points padded with zero-weight rows
        (:func:`fit_together`). Early learn calls (50 to 128 labelled points) are such:
        they stacked only with students of exactly as many points before. CPU only: the
        padded row count must not change a student's weight gradient, which was checked
        for the CPU's products (336 students), not for a GPU's."""
        from .methods import erm

        return (self.student.method is erm and self.basis is None and self.batch >= len(self.y)
                and model_device(self.model).type == "cpu")

    def params(self) -> dict[str, Any]:
        """The student's method parameters, defaults included."""
        from .methods import settings

        return settings(self.student.method, self.student.method_params)

    def key(self) -> tuple:
        """Students with equal keys train in one batched model. A parameter named in the
        method's ``STACKS_OVER`` (a training attack's radius) may differ between them if
        positive: :func:`fit_together` hands the method a tuple of them, one per student,
        which the method must take (the built-ins' ``train_attack`` does)."""
        s = self.student
        size = "all points" if self.ragged else self.batch
        over = getattr(s.method, "STACKS_OVER", ())
        params = tuple(sorted((k, "> 0" if k in over and v > 0 else repr(v)) for k, v in self.params().items()))
        return (stackable(self.model), str(model_device(self.model)), s.method, params,
                s.optimizer, s.lr, s.weight_decay, self.steps, size, self.batch < len(self.y),
                _box_key(s.data.box), s.classes, None if self.basis is None else
                (self.basis.shape, s.invariance_scale, s.invariance_penalty))


def _box_key(box) -> tuple | None:
    """A box as a key, by its values (not its repr, which numpy shortens for long arrays:
    two boxes differing in the hidden part once shared a key, and one student trained in
    the other's box)."""
    if box is None:
        return None
    return tuple((a.shape, a.dtype.str, a.tobytes()) for a in (np.asarray(b) for b in box))


def batchable(student, model: nn.Module | None = None) -> bool:
    """Whether this student trains through :func:`fit_together` (alone or with a cohort):
    a stackable model and a method written for stacked students (``STACKS = True``: the
    built-ins; see ``agents.methods``). Else ``Student._fit`` trains it, alone: a user's
    method gets the model itself, its own batch and a plain generator, in a cohort too."""
    return (getattr(student.method, "STACKS", False)
            and stackable(student.model if model is None else model) is not None)


def _shifted(requests: list[Request], V: torch.Tensor, xb: torch.Tensor, gens: Generators, box) -> torch.Tensor:
    """``Student._fit``'s invariance augmentation for K students whose bases ``V``
    (K, m, dim) have one shape: each student's rows shifted along its own invariant
    directions, from its own generator. The products are each student's own ``mm``, as
    alone: a ``bmm`` over K students changed the last bit for some shapes (m = 1)."""
    from .student import _invariant_in_box

    k, m = V.shape[:2]
    coef = (seeding.randn((len(xb), m), gens) * requests[0].student.invariance_scale).to(xb.device)
    parts = []
    for x, c, v in zip(xb.chunk(k), coef.chunk(k), V):
        shift = c @ v
        parts.append(x + shift if box is None else _invariant_in_box(x, shift, v, box))
    return torch.cat(parts)


def _penalty(stacked: Stacked, V: torch.Tensor, xb: torch.Tensor, gens: Generators, classes: int) -> torch.Tensor:
    """``Student``'s ``_gradient_along`` for K students: one Hutchinson projection of the
    logits, its input gradient projected on each student's own directions (its own ``mm``,
    see :func:`_shifted`); each student's mean squared norm, summed."""
    from .student import along_norm

    k = len(V)
    xg = xb.detach().requires_grad_(True)
    r = seeding.randn((len(xb), classes), gens).to(xb.device)
    (grad,) = torch.autograd.grad((stacked(xg) * r).sum(), xg, create_graph=True)
    return sum(along_norm(g, v) for g, v in zip(grad.chunk(k), V))


def trains(fn: Callable) -> Callable:
    """Run a training function with gradients on, outside inference mode and without
    autocast, whatever the calling thread's modes. Those modes are per thread: in a cohort
    the thread that trains everyone is whichever arrived last, so a protocol that wraps its
    learn call in ``torch.no_grad()`` must not decide for the others (their training
    failed, which ones depending on timing); alone, the same rule keeps one at a time
    equal to a cohort."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as modes:
            modes.enter_context(torch.inference_mode(False))
            modes.enter_context(torch.enable_grad())
            modes.enter_context(torch.autocast("cpu", enabled=False))
            if torch.cuda.is_available():
                modes.enter_context(torch.autocast("cuda", enabled=False))
            return fn(*args, **kwargs)
    return wrapper


@trains
def fit_together(requests: list[Request], check=None) -> None:
    """Train every request's student as its own ``Student._fit`` would, in one batched model.
    ``check`` (a callable, e.g. :meth:`Cohort.check`) is called before every step; what it
    raises stops the training, with nothing written back."""
    from .methods import TrainContext
    from .student import box_tensors

    first = requests[0].student
    dev = model_device(requests[0].model)
    k, steps, bs = len(requests), requests[0].steps, requests[0].batch
    stacked = Stacked([r.model for r in requests])
    gens = Generators([r.generator for r in requests])
    params = dict(first.method_params)
    for name in getattr(first.method, "STACKS_OVER", ()):   # students' own radii (Request.key)
        values = tuple(float(r.params()[name]) for r in requests)
        if len(set(values)) > 1:
            params[name] = values
    ctx = TrainContext(generator=gens, box=first.data.box, params=params, cohort=k)
    data = [(torch.from_numpy(r.X).to(dev), torch.from_numpy(r.y).to(dev)) for r in requests]
    full = [torch.arange(len(y), device=dev) for _, y in data]
    opt = first.make_optimizer(stacked.parameters())   # the group shares optimiser, lr and weight decay
    # the invariance explanation's directions (the group shares their shape: Request.key)
    V = None if requests[0].basis is None else torch.stack([torch.from_numpy(r.basis) for r in requests]).to(dev)
    box = box_tensors(first.data.box, dev)
    sizes = [len(y) for _, y in data]
    fixed = None
    if requests[0].ragged and len(set(sizes)) > 1:   # every step all points, each block padded to the largest
        rows = max(sizes)
        fixed = (torch.cat([torch.nn.functional.pad(X, (0, 0, 0, rows - len(X))) for X, _ in data]),
                 torch.cat([torch.nn.functional.pad(y, (0, rows - len(y))) for _, y in data]))
        ctx = replace(ctx, rows=tuple(sizes))
    stacked.train()
    for step in range(steps):
        if check is not None:
            check()
        ctx = replace(ctx, step=step, steps=steps)
        if fixed is not None:
            xb, yb = fixed
        else:
            picks = [torch.randint(len(y), (bs,), generator=r.generator).to(dev) if bs < len(y) else full[i]
                     for i, ((_, y), r) in enumerate(zip(data, requests))]
            if k == 1:
                xb, yb = data[0][0][picks[0]], data[0][1][picks[0]]
            else:
                xb = torch.cat([X[idx] for (X, _), idx in zip(data, picks)])
                yb = torch.cat([y[idx] for (_, y), idx in zip(data, picks)])
        if V is not None and first.invariance_scale > 0:
            # the teacher said its label ignores these directions: shifted copies keep it
            xb = _shifted(requests, V, xb, gens, box)
        loss = first.method(stacked, xb, yb, ctx)
        if V is not None and first.invariance_penalty > 0:
            loss = loss + first.invariance_penalty * _penalty(stacked, V, xb, gens, first.classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    stacked.write_back()
    for r in requests:
        r.model.eval()


class Cancelled(KeyboardInterrupt):
    """Raised in a cohort's episode threads once the run is interrupted (:meth:`Cohort.cancel`):
    each stops at its next training step, learn call or judge. A KeyboardInterrupt, so an
    episode is not recorded as failed by it."""


def train(requests: list[Request], check=None) -> None:
    """Train ``requests``, grouped by :meth:`Request.key`, each group in one batched model.
    A group that raises is trained again request by request (the batch wrote nothing back:
    each starts from its own weights), so a failing student fails alone: what its training
    raised is left in its ``error``. :class:`Cancelled` (from ``check``) propagates."""
    groups: dict[tuple, list[Request]] = {}
    for r in requests:
        try:
            groups.setdefault(r.key(), []).append(r)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:   # noqa: BLE001 - a key that cannot be computed fails its own episode
            r.error = exc
    for group in groups.values():
        try:
            fit_together(group, check)
        except KeyboardInterrupt:   # Cancelled, or Ctrl-C where this runs in the main thread
            raise
        except BaseException:   # noqa: BLE001 - train each alone: a failing episode fails alone
            for r in group:
                try:
                    r.generator.set_state(r.start)
                    fit_together([r], check)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:   # noqa: BLE001 - handed to its episode
                    r.error = exc
                else:
                    r.trained = True
        else:
            for r in group:
                r.trained = True


class Cohort:
    """Episodes advancing together in threads of one process: a student's learn call waits
    until every live episode is waiting in one, then the last to arrive trains all of them
    (grouped by :meth:`Request.key`) and wakes the rest.

    An episode thread calls :meth:`join` before its episode and :meth:`leave` after it
    (whatever happened), or as soon as its student will learn no more; an episode that
    finishes or fails lets the others go on.

    The judge runs beside the training: with judge processes (:attr:`ahead`) each
    checkpoint is handed to the cohort as it is taken (:meth:`submit`) and judged while the
    episodes go on learning, else an episode hands over its checkpoints at its end; it
    waits for their scores (:meth:`result`) only then.
    """

    def __init__(self, judges: int = 1, name: str = "judge", processes: list[JudgeProcess] | None = None) -> None:
        self._cv = threading.Condition()
        self._live = 0
        self._arrived = 0   # live episodes waiting in fit (each with one or more requests)
        self._waiting: list[Request] = []
        # Judge threads at once while the cohort trains (the runners give one per core, less
        # one for the training), and one more once nothing trains (the training's core is
        # free then: the last checkpoints, the most robust students, come after it)
        self.judges = judges
        self.name = name
        self._queue: list[_Judging] = []
        self._judging = 0   # judge threads running, under _cv
        self._started = 0
        self.judge_threads: list[threading.Thread] = []
        # Where a judge thread runs its pass: in a judge process when one is free (on the CPU
        # a thread cannot judge beside the training, see JudgeProcess), else in itself
        self.processes = list(processes or [])
        self._idle = list(self.processes)
        # id(run) -> (run, error) for each ``run`` (an episode's judge) whose pass killed a
        # judge process: its other items fail with that error instead of being judged here
        self._crashed: dict[int, tuple[Callable, BaseException]] = {}
        self.cancelled = False

    def cancel(self) -> None:
        """Stop every episode of the cohort at its next training step, learn call or wait
        for its scores (:class:`Cancelled`), and the judge threads after their pass: an
        interrupted run must not leave threads computing behind it (nor, at interpreter
        exit, abort inside torch)."""
        with self._cv:
            self.cancelled = True
            self._queue = []
            self._cv.notify_all()

    def check(self) -> None:
        """Raise :class:`Cancelled` once the cohort is cancelled (training calls it every step)."""
        if self.cancelled:
            raise Cancelled("the run was interrupted")

    def join(self) -> None:
        with self._cv:
            self._live += 1

    def leave(self) -> None:
        with self._cv:
            self._live -= 1
            batch = self._take()
            self._start_judges()   # nothing trains any more: a judge may take the training's core
        self._train(batch)

    def fit(self, *requests: Request) -> None:
        """Wait for the cohort and train ``requests`` (one episode's: its student, or a
        committee's members) with it; raises what training raised."""
        if not requests:
            return
        with self._cv:
            self.check()
            self._waiting.extend(requests)
            self._arrived += 1
            batch = self._take()
        self._train(batch)
        with self._cv:
            while not all(r.done for r in requests) and not self.cancelled:
                self._cv.wait()
        self.check()
        for r in requests:
            if r.error is not None:
                raise r.error

    def _take(self) -> list[Request]:
        # every live episode is waiting: this thread trains them (outside the lock)
        if self._waiting and self._arrived >= self._live and not self.cancelled:
            batch, self._waiting, self._arrived = self._waiting, [], 0
            return batch
        return []

    def _train(self, batch: list[Request]) -> None:
        if not batch:
            return
        try:
            train(batch, self.check)
        except Cancelled:
            pass   # every waiting episode raises Cancelled itself (fit)
        except BaseException as exc:   # noqa: BLE001 - a last resort: the episodes not yet trained
            for r in batch:            # fail with it rather than go on untrained or wait forever
                if not r.trained:
                    r.error = r.error or exc
        finally:
            with self._cv:
                for r in batch:
                    r.done = True
                self._cv.notify_all()

    @property
    def ahead(self) -> bool:
        """Whether checkpoints are judged as they are taken: where the cohort has judge
        processes. Otherwise an episode hands over all of its checkpoints at its end, as one
        item: a judge thread beside the training would slow both (the interpreter lock),
        and an episode's checkpoints in one pass are judged as one at a time judges them."""
        return bool(self.processes)

    def submit(self, key: Any, item: Any, run: Callable[[list], list], most: int | None = None) -> _Judging:
        """Have ``item`` judged on a judge thread, in one pass with other waiting items of
        the same ``key`` (at most ``most`` items in a pass; None: every one waiting):
        ``run(items)`` returns one result per item. Returns at once; :meth:`result` waits
        for the answer. A pass that raises is run again one item at a time, so a failure
        fails only its own item's episode."""
        entry = _Judging(key, item, run, most)
        with self._cv:
            self.check()
            self._queue.append(entry)
            self._start_judges()
        return entry

    def result(self, entry: _Judging) -> Any:
        """Wait for ``entry``'s judging (:meth:`submit`); raises what it raised."""
        with self._cv:
            while not entry.done:
                self.check()
                self._cv.wait()
        if entry.error is not None:
            raise entry.error
        return entry.result

    def drop(self, entries: Iterable[_Judging]) -> None:
        """Forget ``entries`` not yet judged (their episode failed: nobody will ask)."""
        gone = {id(e) for e in entries}
        with self._cv:
            self._queue = [e for e in self._queue if id(e) not in gone]

    def _allowed(self) -> int:
        return self.judges + (0 if self._live else 1)

    def _start_judges(self) -> None:
        # under _cv. Judge threads end when the queue is empty, so each running one is busy.
        if self._queue and not self.cancelled and self._judging < self._allowed():
            self._judging += 1
            self._started += 1
            thread = threading.Thread(target=self._judge, daemon=True, name=f"{self.name}-{self._started}")
            self.judge_threads = [t for t in self.judge_threads if t.is_alive()] + [thread]
            thread.start()

    def _judge(self) -> None:
        """A judge thread: passes over the waiting items, oldest key first, until none wait
        (or the cohort trains again and has more judges than it allows)."""
        while True:
            with self._cv:
                if self.cancelled or not self._queue or self._judging > self._allowed():
                    self._judging -= 1
                    return
                first = self._queue[0]
                group = [e for e in self._queue if e.key == first.key][:first.most]
                taken = {id(e) for e in group}
                self._queue = [e for e in self._queue if id(e) not in taken]
                process = self._idle.pop() if self._idle else None
                self._start_judges()   # more waiting than this pass takes, and a judge to spare
            try:
                crashed = self._crashed.get(id(first.run), (None, None))
                if crashed[0] is first.run:
                    for e in group:
                        e.error = crashed[1]
                else:
                    _judge_group(group, first.run if process is None else functools.partial(process, first.run))
            except BaseException as exc:   # noqa: BLE001 - a KeyboardInterrupt here: its episodes get it
                for e in group:
                    if e.result is None and e.error is None:
                        e.error = exc
            finally:
                with self._cv:
                    for e in group:
                        if isinstance(e.error, JudgeProcessDied):
                            self._crashed[id(e.run)] = (e.run, e.error)
                    if process is not None:
                        self._idle.append(process)
                    for e in group:
                        e.done = True
                    self._cv.notify_all()

    def close(self) -> None:
        """End the judge processes (:meth:`cancel` first where judges may still run)."""
        for process in self.processes:
            process.close()


_DRIVER_ENDS: "weakref.WeakSet" = weakref.WeakSet()   # the open driver ends of every judge process


class JudgeProcess:
    """A forked process that runs a cohort's judge passes: ``process(run, items)`` is
    ``run(items)`` computed there (``run`` and ``items`` pickled: plain data and
    module-level functions).

    Why a process: on the CPU a judge thread cannot work beside the training. Both are
    mostly per-op dispatch on small tensors, which holds the GIL (measured: two threads of
    small torch ops did 0.81x the work of one). A process has its own interpreter.
    Forked, so it has the driver's registry (plugins, a notebook's registrations) without
    loading anything; fork it before any episode thread starts. It ignores Ctrl-C (the
    driver ends it) and ends when the driver's end of its pipe closes (a killed driver
    included). Should it die, its passes run in the calling thread instead."""

    def __init__(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, self.conn), daemon=True, name="teachsim-judge")
        self.process.start()
        child.close()
        _DRIVER_ENDS.add(self.conn)
        self.alive, self.closed = True, False

    def __call__(self, run: Callable[[list], list], items: list) -> list:
        if self.alive and not self.process.is_alive():   # died between passes: none of this pass's doing
            self.alive = False
        if self.alive:
            try:
                message = pickle.dumps((run, items))
            except Exception:   # noqa: BLE001 - e.g. a lambda: judged here instead
                return run(items)
            try:
                self.conn.send_bytes(message)
                ok, value = self.conn.recv()
            except (EOFError, OSError):
                if self.closed:   # the run was interrupted: its pass is for nobody
                    raise Cancelled("the run was interrupted") from None
                # it died: later passes are judged here, but not this one, which may be what
                # killed it (a segfault in a plugin's code) and would take the driver and
                # every episode of the cohort down with it; its episodes fail alone
                self.alive = False
                self.process.join(5)
                raise JudgeProcessDied(_death(self.process.pid, self.process.exitcode)) from None
            if ok:
                return value
            raise value
        return run(items)

    def close(self) -> None:
        self.closed = True
        self.conn.close()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class JudgeProcessDied(RuntimeError):
    """A cohort's judge process died during a pass (killed, out of memory, a crash in
    native code): the pass's episodes fail with this, the rest of the cohort goes on."""


def _death(pid: int, code: int | None) -> str:
    if code is not None and code < 0:
        try:
            how = f"signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"signal {-code}"
    else:
        how = "still running" if code is None else f"exit code {code}"
    return (f"the judge process (pid {pid}) died while judging this episode's checkpoints ({how}); they are "
            "not judged again in the run's own process, where the same crash would end the whole cohort")


def _portable(exc: BaseException) -> BaseException:
    """``exc``, or, where it would not come back from pickle (an exception whose
    ``__init__`` takes other arguments than it passes on: the driver's ``recv`` would
    raise a TypeError of its own instead), a RuntimeError with its type and message."""
    try:
        back = pickle.loads(pickle.dumps(exc))
    except Exception:   # noqa: BLE001 - any failure to travel
        back = None
    if type(back) is type(exc):
        return exc
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def _serve(conn, driver_end) -> None:
    """A :class:`JudgeProcess`'s loop: passes in, results (or the error) out, until EOF."""
    # the fork's copies of every driver end (this process's and the earlier ones'): EOF
    # must come when the driver closes its end, not when the last process holding a copy does
    for end in [driver_end, *_DRIVER_ENDS]:
        end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # not the command line's handler, forked with it
    torch.set_num_threads(1)
    while True:
        try:
            run, items = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = (True, run(items))
        except BaseException as exc:   # noqa: BLE001 - handed to the pass's caller
            reply = (False, _portable(exc))
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            what = "its result" if reply[0] else f"its error ({type(reply[1]).__name__}: {reply[1]})"
            conn.send((False, RuntimeError(f"a judge pass ran, but {what} could not be sent back: {exc}")))
        except (EOFError, OSError):
            return


@dataclass(eq=False)
class _Judging:
    """One item waiting for, or in, a judge pass (:meth:`Cohort.submit`)."""

    key: Any
    item: Any
    run: Callable[[list], list]
    most: int | None = None
    result: Any = None
    error: BaseException | None = None
    done: bool = False


def _judge_group(group: list[_Judging], run: Callable[[list], list]) -> None:
    try:
        for e, result in zip(group, run([e.item for e in group]), strict=True):
            e.result = result
        return
    except KeyboardInterrupt:
        raise
    except BaseException as exc:   # noqa: BLE001 - handed to its episode (or retried alone)
        if len(group) == 1 or isinstance(exc, JudgeProcessDied):   # never again, here: see JudgeProcess
            for e in group:
                e.error = exc
            return
    for e in group:
        _judge_group([e], run)


PASS = {"cpu": 1}
"""At most this many items (a checkpoint, or an episode's checkpoints: :attr:`Cohort.ahead`)
in one judge pass of a cohort, by device type (others: every one waiting of the same task,
seed and judge). On the CPU one: which items wait together depends on the threads'
timing, and a checkpoint's scores can depend, in the last bit, on the other rows of its
pass (a curved teacher's tanh computed on all rows at once); alone, a checkpoint's (or an
episode's) scores are the same in every run. (Passes of up to five checkpoints were 1.03x
faster on the quick suite's 32 episodes, passes of every waiting one 1.08x another day:
not worth repeatability.) On a GPU a larger pass
launches fewer kernels; there runs are repeatable only up to float rounding anyway."""


_local = threading.local()


def current() -> Cohort | None:
    """The cohort this thread's episode belongs to, if any (its :meth:`Cohort.check`
    stops the episode's training once the run is interrupted)."""
    return getattr(_local, "cohort", None)


def training() -> Cohort | None:
    """The cohort whose training barrier this thread's episode is at, if any: the one its
    student's learn calls wait for and train with."""
    return current() if getattr(_local, "at_barrier", False) else None


def leave_barrier() -> Cohort | None:
    """This thread's episode leaves its cohort's training barrier, once (its student learns
    no more, or never with the others: a model or method that does not stack), so the
    others need not wait for it; returns the cohort it still belongs to, if any."""
    cohort = training()
    if cohort is not None:
        _local.at_barrier = False   # left: member's exit does not leave twice
        cohort.leave()
    return current()


class member:
    """``with member(cohort):`` runs this thread's episode as one of ``cohort``'s."""

    def __init__(self, cohort: Cohort):
        self.cohort = cohort

    def __enter__(self) -> Cohort:
        self.cohort.join()
        _local.cohort, _local.at_barrier = self.cohort, True
        return self.cohort

    def __exit__(self, *exc: object) -> None:
        leave_barrier()   # unless left already (its conversation ended, a student that trains alone)
        _local.cohort = None


