"""The two findings of Ren et al. (arXiv 2103.07364) as statistics of a run's interaction
profiles, each with a 95% t-interval over seeds and a one-line verdict.

Input: :func:`teachsim.analysis.interactions.point_profiles` rows of every profiled
episode (``Run.interaction_profiles()``), with the episode's ``protocol``, ``variant``,
``seed`` and student ``method``. Orders are split into bands by their ratio r = m/(n-2):
low r <= ``low``, high r >= ``high``.

Per episode (profile_v(m) = mean |I^(m)| over points and pairs in view v; Ibar_v(m) the
signed mean):

- **Finding 1** (attacks change mainly high-order interactions):
  - ``utility``: the per-order share of the attacking utility, the paper's statistic:
    u_m = coef_m (Ibar_clean(m) - Ibar_attacked(m)), share_m = |u_m| / sum |u|; the
    statistic is the mean share of a high order minus that of a low order.
  - ``change``: how much the attack changes the magnitude of each order,
    rho_m = profile_attacked(m) / profile_clean(m) - 1; high-band mean minus low-band mean.
- **Finding 2** (adversarially trained students rely more on low orders, and those are
  category-specific):
  - ``low_share``: the low band's share of the clean profile, sum_low profile / sum_all;
    compared as AT minus erm, paired by seed.
  - ``margin_low_share``: the same for the ``margin`` view (interactions of
    log p_y - log p_k, k the runner-up class: what tells the category apart).
  - per class: ``low_share`` over the points of each true class.

A verdict says *holds* when the interval lies above 0, *reversed* when below, and
*inconclusive* when it contains 0 (or there are fewer than 2 seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

LOW, HIGH = 0.3, 0.7
EPISODE = ["variant", "protocol", "method", "seed", "episode_id"]


@dataclass
class Finding:
    """One question: its table (rows with n, mean, lo, hi, verdict) and one-line verdict."""

    key: str
    question: str
    statistic: str
    table: pd.DataFrame
    verdict: str
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def interval(values) -> tuple[int, float, float, float]:
    """n, mean and 95% t-interval of ``values`` (NaN bounds with fewer than 2)."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    if n < 2:
        return n, mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return n, mean, mean - half, mean + half


TOL = 1e-9   # differences this small are float noise (two flat profiles), not an effect


def signed(v: float) -> str:
    """A statistic as the findings print it: +0.046, or - where undefined."""
    return f"{v:+.3f}" if isinstance(v, float) and math.isfinite(v) else "-"


def verdict(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    return "holds" if lo > TOL else "reversed" if hi < -TOL else "inconclusive"


def _bands(ratios: pd.Series, low: float, high: float) -> tuple[pd.Series, pd.Series]:
    return ratios <= low + 1e-9, ratios >= high - 1e-9


def _profile(rows: pd.DataFrame, view: str) -> pd.DataFrame:
    """Per order of one episode's view: mean |I| and signed mean over points and pairs."""
    part = rows[rows["input"] == view]
    return part.groupby("ratio").agg(mean_abs=("mean_abs", "mean"), mean=("mean", "mean"), coef=("coef", "first"))


def _low_share(profile: pd.DataFrame, low: float) -> float:
    total = profile["mean_abs"].sum()
    return float(profile["mean_abs"][profile.index <= low + 1e-9].sum() / total) if total > 0 else math.nan


def episode_statistics(profiles: pd.DataFrame, low: float = LOW, high: float = HIGH) -> pd.DataFrame:
    """One row per episode: the four statistics of the module docstring."""
    rows = []
    for key, ep in profiles.groupby(EPISODE, sort=False):
        clean, att, margin = (_profile(ep, v) for v in ("clean", "attacked", "margin"))
        lo_b, hi_b = _bands(clean.index.to_series(), low, high)
        u = (clean["coef"] * (clean["mean"] - att["mean"])).abs()
        share = u / u.sum() if u.sum() > 0 else u * math.nan
        prof = clean["mean_abs"]
        empty = not (prof > TOL).all()   # an order where no sampled pair interacts: no ratio to take
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = att["mean_abs"] / prof - 1
        rows.append({**dict(zip(EPISODE, key)),
                     "utility": float(share[hi_b.values].mean() - share[lo_b.values].mean()),
                     "change": math.nan if empty else float(rho[hi_b.values].mean() - rho[lo_b.values].mean()),
                     "low_share": math.nan if empty else _low_share(clean, low),
                     "margin_low_share": _low_share(margin, low),
                     "empty": empty, "flat": not empty and float(prof.max() - prof.min()) <= 1e-6 * float(prof.max())})
    return pd.DataFrame(rows)


def notes(stats: pd.DataFrame) -> list[str]:
    """What makes a statistic undefined or trivial in some episodes, in words."""
    out = []
    if stats["empty"].any():
        out.append(f"{int(stats['empty'].sum())} of {len(stats)} episodes: at some order no sampled pair interacts "
                   "on clean inputs (mean |I| = 0), so their change and low-order share are left out")
    if stats["flat"].any():
        out.append(f"{int(stats['flat'].sum())} of {len(stats)} episodes: the clean profile is the same at every "
                   "order, so interactions do not depend on the context: players that equal the baseline at every "
                   "point (features off the data's manifold) are dummies, and the band shares are fixed by how many "
                   "orders each band holds, not by the student")
    return out


def class_low_shares(profiles: pd.DataFrame, low: float = LOW) -> pd.DataFrame:
    """One row per (episode, true class): the low band's share of that class's clean profile."""
    clean = profiles[profiles["input"] == "clean"]
    rows = []
    for key, part in clean.groupby([*EPISODE, "label"], sort=False):
        prof = part.groupby("ratio")["mean_abs"].mean()
        rows.append({**dict(zip([*EPISODE, "label"], key)),
                     "low_share": float(prof[prof.index <= low + 1e-9].sum() / prof.sum()) if prof.sum() > 0
                     else math.nan})
    return pd.DataFrame(rows)


def _row(what: dict, values) -> dict:
    n, mean, lo, hi = interval(values)
    return {**what, "n": n, "mean": mean, "lo": lo, "hi": hi, "verdict": verdict(lo, hi)}


def _paired(stats: pd.DataFrame, column: str, reference: pd.DataFrame, by: list[str]) -> pd.Series:
    """stats[column] minus the reference's at the same (variant, seed): differences by seed."""
    both = stats.merge(reference[[*by, column]], on=by, suffixes=("", "_ref"))
    return both[column] - both[f"{column}_ref"]


def _summary(table: pd.DataFrame, what: str, claim: str, against: str) -> str:
    held = table[table["verdict"] == "holds"]["protocol"].tolist()
    rev = table[table["verdict"] == "reversed"]["protocol"].tolist()
    rest = table[table["verdict"] == "inconclusive"]["protocol"].tolist()
    if table.empty:
        return f"not answered: {what}"
    if len(held) == len(table):
        return f"holds for every {what}: {claim}"
    parts = [f"holds for {', '.join(held)}"] if held else []
    parts += [f"reversed for {', '.join(rev)} ({against})"] if rev else []
    parts += [f"inconclusive for {', '.join(rest)} (the interval contains 0)"] if rest else []
    head = "holds in part" if held else "does not hold" if rev else "inconclusive"
    return f"{head}: " + "; ".join(parts)


def finding_one(stats: pd.DataFrame) -> Finding:
    rows = []
    for (variant, protocol), g in stats.groupby(["variant", "protocol"], sort=False):
        rows.append(_row({"variant": variant, "protocol": protocol, "statistic": "utility"}, g["utility"]))
        rows.append(_row({"variant": variant, "protocol": protocol, "statistic": "change"}, g["change"]))
    table = pd.DataFrame(rows)
    util = table[table["statistic"] == "utility"] if rows else table
    change = table[table["statistic"] == "change"] if rows else table
    line = ("share of the attacking utility: "
            + _summary(util, "student", "the attack's utility comes more from high orders",
                       "the utility comes more from low orders")
            + " | change of |I|: "
            + _summary(change, "student", "the attack changes high orders more",
                       "the attack changes low orders more"))
    return Finding("1", "Do l_p attacks change high-order interactions more than low-order ones?",
                   "high-band minus low-band mean, per episode", table, line)


def finding_two(stats: pd.DataFrame, classes: pd.DataFrame) -> Finding:
    by = ["variant", "seed"]
    ref = stats[stats["method"] == "erm"]
    rows, class_rows = [], []
    for (variant, protocol), g in stats[stats["method"] != "erm"].groupby(["variant", "protocol"], sort=False):
        r = ref[ref["variant"] == variant]
        if r.empty:
            continue
        for column in ("low_share", "margin_low_share"):
            rows.append(_row({"variant": variant, "protocol": protocol, "statistic": column},
                             _paired(g, column, r, by)))
        cg = classes[classes["protocol"] == protocol]
        cr = classes[(classes["method"] == "erm") & (classes["variant"] == variant)]
        for label, part in cg.groupby("label"):
            class_rows.append(_row({"variant": variant, "protocol": protocol, "label": int(label)},
                                   _paired(part, "low_share", cr[cr["label"] == label], by)))
    table = pd.DataFrame(rows)
    per_class = pd.DataFrame(class_rows)
    if table.empty:
        line = "not answered: needs episodes of an erm student and of an adversarially trained one, same seeds"
        return Finding("2", _Q2, "AT minus erm, paired by seed", table, line, {"per_class": per_class})
    low = table[table["statistic"] == "low_share"]
    margin = table[table["statistic"] == "margin_low_share"]
    line = ("low-order share of clean profiles, AT - erm: "
            + _summary(low, "AT student", "AT students rely more on low orders", "erm relies more on low orders")
            + " | category-specific (margin) interactions: "
            + _summary(margin, "AT student", "their class-telling interactions are more low-order",
                       "erm's are more low-order"))
    if not per_class.empty:
        counts = [f"{p}: {int((g['verdict'] == 'holds').sum())} of {len(g)}"
                  for p, g in per_class.groupby("protocol", sort=False)]
        line += " | classes where AT's low-order excess holds: " + ", ".join(counts)
    return Finding("2", _Q2, "AT minus erm, paired by seed", table, line, {"per_class": per_class})


_Q2 = ("Do adversarially trained students rely more on low-order interactions than erm ones, "
       "and are those category-specific?")


def findings(profiles: pd.DataFrame, low: float = LOW, high: float = HIGH) -> list[Finding]:
    """Both findings from the profiles of a run (see the module docstring)."""
    stats = episode_statistics(profiles, low, high)
    found = [finding_one(stats), finding_two(stats, class_low_shares(profiles, low))]
    for f in found:
        f.notes = notes(stats)
    return found


def text(found: list[Finding]) -> str:
    """The findings as terminal text: each table, then its verdict."""
    out = []
    for f in found:
        out.append(f"Finding {f.key}: {f.question}\n({f.statistic}; 95% t-interval over seeds)")
        if not f.table.empty:
            bounds = zip(f.table["lo"], f.table["hi"])
            t = f.table.assign(interval=[f"[{signed(lo)}, {signed(hi)}]" for lo, hi in bounds],
                               mean=[signed(v) for v in f.table["mean"]])
            cols = [c for c in ("variant", "protocol", "statistic", "n", "mean", "interval", "verdict")
                    if c in t and (c != "variant" or t["variant"].astype(bool).any())]
            out.append(t[cols].to_string(index=False))
        out.append(f"verdict: {f.verdict}")
        out.extend(f"note: {n}" for n in f.notes)
        out.append("")
    return "\n".join(out)
