"""Aggregation across seeds: mean and 95% interval per checkpoint, AUC, budget-to-target."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

GROUP = ["variant", "protocol", "metric"]


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, protocol, budget, metric): n, mean, 95% t-interval (lo, hi).

    ``scores`` needs columns variant, protocol, seed, budget, metric, value (``Run.scores``).
    With one seed the interval is undefined (NaN). Every metric is a fraction, so the
    interval is clipped to [0, 1] (a t-interval around a mean near 0 or 1 reaches past it:
    0.994 [0.971, 1.018] is shown as 0.994 [0.971, 1.000]; the true mean lies in [0, 1], so
    the clipped interval covers it exactly as often).
    """
    from scipy import stats

    rows = []
    for (variant, protocol, budget, metric), g in scores.groupby(["variant", "protocol", "budget", "metric"],
                                                                 sort=True):
        v = g["value"].dropna().to_numpy(float)
        n = len(v)
        mean = float(v.mean()) if n else math.nan
        if n >= 2:
            half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
            lo, hi = max(0.0, mean - half), min(1.0, mean + half)
        else:
            lo = hi = math.nan
        rows.append({"variant": variant, "protocol": protocol, "budget": budget, "metric": metric,
                     "n": n, "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["variant", "protocol", "budget", "metric", "n", "mean", "lo", "hi"])


def auc(budgets: np.ndarray, values: np.ndarray) -> float:
    """Normalised area under a curve: trapezoid over the checkpoints / budget span.

    Example:
        >>> auc(np.array([0, 10, 20]), np.array([0.0, 1.0, 1.0]))
        0.75
    """
    b, v = np.asarray(budgets, float), np.asarray(values, float)
    if len(b) == 1:
        return float(v[0])
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(b)) / (b[-1] - b[0]))


def budget_to(budgets: np.ndarray, values: np.ndarray, target: float) -> float:
    """First checkpoint whose (mean) value reaches ``target``; ``inf`` if none."""
    hit = np.nonzero(np.asarray(values, float) >= target)[0]
    return float(np.asarray(budgets, float)[hit[0]]) if len(hit) else math.inf


def curve_table(summary: pd.DataFrame, fn, column: str) -> pd.DataFrame:
    """Apply ``fn(budgets, means)`` per (variant, protocol, metric); one row each."""
    rows = []
    for (variant, protocol, metric), g in summary.groupby(GROUP, sort=True):
        g = g.sort_values("budget")
        rows.append({"variant": variant, "protocol": protocol, "metric": metric,
                     column: fn(g["budget"].to_numpy(), g["mean"].to_numpy())})
    return pd.DataFrame(rows, columns=[*GROUP, column])
