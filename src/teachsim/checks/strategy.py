"""Conformance checks for a query strategy ``(model, X_pool, n, *, rng) -> indices``."""

from __future__ import annotations

import numpy as np

from ..agents.strategies import Strategy, make_strategy


def check_strategy(strategy: Strategy | str, *, n: int = 5, pool: int = 40, seed: int = 0) -> list[str]:
    """Conformance checks for a query strategy; returns the problems found (empty: all good).

    It must return ``n`` distinct valid indices (fewer only when the pool is smaller),
    accept an empty request, and give the same picks for the same generator seed.
    """
    fn = make_strategy(strategy) if isinstance(strategy, str) else strategy
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((pool, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3))

    class _Model:
        def predict_proba(self, X):
            z = np.asarray(X) @ w
            e = np.exp(z - z.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)

    problems = []
    try:
        picks = [np.asarray(fn(_Model(), X, k, rng=np.random.default_rng(seed))) for k in (n, n, 0, pool + 3)]
    except Exception as exc:  # report, do not crash the checker
        return [f"raised {type(exc).__name__}: {exc}"]
    first, again, empty, over = picks
    if len(first) != n or len(set(first.tolist())) != n:
        problems.append(f"expected {n} distinct indices, got {first.tolist()}")
    if len(first) and (first.min() < 0 or first.max() >= pool or not np.issubdtype(first.dtype, np.integer)):
        problems.append(f"expected integer indices in [0, {pool}), got {first.tolist()}")
    if not np.array_equal(first, again):
        problems.append("not deterministic: same seed, different picks")
    if len(empty):
        problems.append(f"n = 0 should pick nothing, got {empty.tolist()}")
    if len(over) != pool or len(set(over.tolist())) != pool:
        problems.append(f"n > pool size should pick the whole pool once, got {len(over)} indices")
    return problems
