"""Conformance checks for tasks: the same checks for ours and for a user's plugin.

Example:
    >>> from teachsim.checks.task import check_task
    >>> check_task("hidden-feature", params={"dim": 6}).ok
    True
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..messages import ABSTAIN
from .protocol import Report


def _build(name: str, params: Mapping[str, Any], seed: int):
    from .. import registry
    from ..config import _plugin_table, check_task_params
    from ..platform.build import build_task

    # Parameters are checked by the config loader's own rules, as in a config file (the
    # task's registered check included); the task is then built here, not by the loader
    # (which turns any exception of the constructor into a ConfigError), so that a task
    # that crashes, or states a box of the wrong shape, fails ``builds``.
    table = _plugin_table({"name": name, **params}, "task", registry.tasks, None)
    check_task_params(table)
    return table, build_task(table, seed)


def check_task(name: str, *, params: Mapping[str, Any] | None = None, seed: int = 0, n: int = 500,
               min_certain: float = 0.05) -> Report:
    """Run the conformance checks on the registered task ``name``.

    Checks that it builds with the contract's attributes; that its distributions give
    finite float32 (n, dim) inputs inside its box; that its labels are consistent with its
    score (``argmax logits`` where ``margin >= gamma``, ABSTAIN elsewhere, classes in
    range); that the teacher is certain on at least ``min_certain`` of the broad
    distribution and on most of the data, with at least two classes present; that its
    margin has a finite gradient (attacks need it); that it is deterministic under a seed;
    and that stated invariances are orthonormal directions along which the teacher's
    score does not change.

    Raises:
        ConfigError: unknown task or bad parameters (nothing ran).
    """
    params = dict(params or {})
    report = Report(name, title="check-task")
    res = report.results
    try:
        _, task = _build(name, params, seed)
    except Exception as exc:
        from ..errors import ConfigError

        if isinstance(exc, ConfigError):
            raise
        res["builds"] = (False, f"{type(exc).__name__}: {exc}")
        return report
    missing = [a for a in ("dim", "classes", "gamma", "data", "broad") if not hasattr(task, a)]
    ok = not missing and isinstance(task.dim, int) and task.classes >= 2
    res["builds"] = (ok, f"missing {', '.join(missing)}" if missing else
                     f"dim {task.dim}, {task.classes} classes, gamma {task.gamma:g}")
    if not ok:
        return report

    dists = {"data": task.data, "broad": task.broad}
    if getattr(task, "test", None) is not None:
        dists["test"] = task.test
    problems, samples = [], {}
    for label, dist in dists.items():
        x = dist.sample(n, np.random.default_rng(seed))
        samples[label] = x
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (n, task.dim)):
            problems.append(f"{label}.sample({n}) gave {type(x).__name__} {getattr(x, 'dtype', '')} "
                            f"{getattr(x, 'shape', '')}, expected float32 ({n}, {task.dim})")
            continue
        if not np.isfinite(x).all():
            problems.append(f"{label} gives non-finite inputs")
        if task.box is not None and ((x < task.box[0] - 1e-6).any() or (x > task.box[1] + 1e-6).any()):
            problems.append(f"{label} gives inputs outside the task's box")
    res["samples"] = (not problems, "; ".join(problems) or ", ".join(f"{k} ok" for k in dists))
    if problems:
        return report

    x = np.concatenate([samples["data"], samples["broad"]])
    xt = torch.from_numpy(x)
    y = task.label(x)
    with torch.no_grad():
        logits = task.logits(xt)
    margin = task.margin(xt).detach()
    want = np.where(margin.numpy() >= task.gamma, logits.argmax(1).numpy(), ABSTAIN)
    bad = int((y != want).sum())
    in_range = bool(((y == ABSTAIN) | ((y >= 0) & (y < task.classes))).all())
    res["labels"] = (bad == 0 and in_range and logits.shape == (len(x), task.classes),
                     f"{bad} labels differ from argmax logits / ABSTAIN where margin < gamma" if bad
                     else "consistent with the teacher's score")

    y_data, y_broad = y[:n], y[n:]
    certain_broad = float(np.mean(y_broad != ABSTAIN))
    certain_data = float(np.mean(y_data != ABSTAIN))
    present = len(np.unique(y_data[y_data != ABSTAIN]))
    ok = certain_broad >= min_certain and certain_data >= 0.5 and present >= 2
    res["certain"] = (ok, f"certain on {certain_data:.0%} of data, {certain_broad:.0%} of broad; "
                          f"classes present in the data: {present}")

    xg = xt[:64].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(task.margin(xg, create_graph=True).sum(), xg, allow_unused=True)
    ok = grad is not None and bool(torch.isfinite(grad).all())
    res["gradient"] = (ok, "margin has a finite input gradient" if ok else "margin has no finite gradient")

    _, twin = _build(name, params, seed)
    draws = [t.data.sample(50, np.random.default_rng(1)) for t in (twin, task)]
    same = (np.array_equal(*draws)
            and torch.equal(twin.logits(xt[:200]).detach(), task.logits(xt[:200]).detach()))
    res["deterministic"] = (same, "same seed, same task" if same else "two builds with the same seed differ")

    V = task.invariances()
    if V is None:
        res["invariances"] = (True, "none stated")
    else:
        V = np.asarray(V, dtype=np.float64)
        ortho = V.ndim == 2 and V.shape[1] == task.dim and np.allclose(V @ V.T, np.eye(len(V)), atol=1e-4)
        shift = torch.from_numpy((0.5 * np.random.default_rng(2).standard_normal((200, len(V))) @ V).astype(np.float32))
        with torch.no_grad():
            moved = float((task.logits(xt[:200] + shift) - task.logits(xt[:200])).abs().max())
        ok = bool(ortho) and moved < 1e-3
        res["invariances"] = (ok, f"{len(V)} orthonormal directions, score moves {moved:.1e} along them" if ortho
                              else "stated invariances are not an orthonormal basis of shape (m, dim)")
    return report
