"""``report.html``: one offline page per run, with its plots as PNG files in ``plots/``.

:func:`build_report` writes ``RUN_DIR/report.html`` (inline CSS, no script, no external
URL) and ``RUN_DIR/plots/<metric>.png`` (robustness-vs-budget curves, one panel per sweep
variant, a line per protocol with its 95% interval as a band), plus
``plots/budget_to_<key>.png`` when a numeric key is swept. matplotlib is imported only here,
inside the functions that draw (Agg backend).
"""

from __future__ import annotations

import html
import itertools
import math
from datetime import datetime, timezone
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..platform.judge_params import METRICS
from .store import atomic_write

DEFAULT_TARGET = 0.9
DEFAULT_METRIC = "strong_robust_acc"
MATRIX_METRICS = ("lp_robust_acc", "weak_robust_acc")
NOT_REACHED = "not reached"

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 14px; color: #222;
       max-width: 1300px; margin: 1.5em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
     border-bottom: 1px solid #ccc; padding-bottom: 0.2em; } h3 { font-size: 1.05em; margin-bottom: 0.3em; }
.question { font-size: 1.1em; font-style: italic; color: #333; margin: 0.3em 0 0.8em; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; vertical-align: top; }
th { background: #f0f0f0; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.never { color: #999; text-align: right; }
td.holds { color: #1a7f37; font-weight: 600; }
td.reversed { color: #b3261e; font-weight: 600; }
td.inconclusive { color: #666; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 12px; margin: 0; white-space: pre-wrap; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0 1em; }
.meta td:first-child { font-weight: 600; white-space: nowrap; }
.note { color: #555; } footer { margin-top: 3em; color: #666; font-size: 12px; border-top: 1px solid #ccc; }
"""


def esc(value: Any) -> str:
    """HTML-escape anything (quotes included)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: ``-`` for missing, ``never`` for infinity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, Real) and math.isinf(float(value)):
        return "never"
    return f"{float(value):.{digits}f}"


def fmt_budget(value: Any) -> str:
    """A budget for a table cell: ``never`` for infinity, ``-`` for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "never" if math.isinf(float(value)) else f"{float(value):g}"


# -- what the run holds, in a stable order ------------------------------------------------

def protocol_order(config: dict[str, Any], episodes: pd.DataFrame) -> list[str]:
    """Protocol labels in the order of the config's ``[[protocols]]`` (= first episode_id)."""
    order = [p.get("label", p.get("name")) for p in config.get("protocols", [])]
    for label in episodes.sort_values("episode_id")["protocol"] if not episodes.empty else []:
        if label not in order:
            order.append(label)
    return [str(p) for p in order if p is not None]


def protocol_colors(protocols: list[str]) -> dict[str, tuple[str, str]]:
    """label -> (colour, linestyle): tab10 first, the same colour for a label in every plot."""
    import matplotlib

    tab10 = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
    tab20 = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors]
    palette = tab10 + tab20[1::2]          # then the light shades of tab10
    styles = ["-", "--", ":", "-."]
    return {p: (palette[i % len(palette)], styles[(i // len(palette)) % len(styles)])
            for i, p in enumerate(protocols)}


def sweep_variants(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(variant label, {swept key: value}) in itertools.product order; ``[("", {})]`` without a sweep."""
    sweep = config.get("sweep") or {}
    keys = list(sweep)
    if not keys:
        return [("", {})]
    return [(", ".join(f"{k}={v}" for k, v in zip(keys, combo)), dict(zip(keys, combo)))
            for combo in itertools.product(*(sweep[k] for k in keys))]


def variant_order(config: dict[str, Any], episodes: pd.DataFrame) -> list[str]:
    """Variant labels in sweep order, then any other recorded one."""
    order = [label for label, _ in sweep_variants(config)]
    extra = [] if episodes.empty else list(dict.fromkeys(episodes.sort_values("episode_id")["variant"]))
    return order + [v for v in extra if v not in order]


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v))


def numeric_sweep_key(config: dict[str, Any]) -> str | None:
    """The first swept key whose values are all numbers, or None."""
    for key, values in (config.get("sweep") or {}).items():
        if values and all(_is_number(v) for v in values):
            return key
    return None


# -- plots --------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend_layout(labels: list[str], width_in: float) -> tuple[int, int]:
    """(columns, rows) of a legend below the axes that fits ``width_in`` inches (9 pt text)."""
    if not labels:
        return 1, 0
    col_in = 0.075 * max(len(lab) for lab in labels) + 0.7
    ncol = max(1, min(len(labels), 6, int(width_in / col_in)))
    return ncol, math.ceil(len(labels) / ncol)


def _figure(plt, panels: int, labels: list[str]):
    """A figure with a grid of panels (at most 3 a row) and room for a legend below."""
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    width = 4.6 * cols if panels > 1 else 7.5
    if panels == 1 and len(labels) > 6:
        width = 10.0
    ncol, legend_rows = _legend_layout(labels, width)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 3.6 * rows + 0.22 * legend_rows + 0.5), squeeze=False,
                             sharey=True, layout="constrained")
    return fig, axes, ncol


def _legend(fig, handles, labels, ncol: int) -> None:
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)


def plot_metric(summary: pd.DataFrame, metric: str, path: Path, *, variants: list[str],
                colors: dict[str, tuple[str, str]], title: str = "") -> Path:
    """Robustness-vs-budget curves of one metric: a panel per variant, a line per protocol
    (mean across seeds) with its 95% interval as a band (no band with one seed)."""
    plt = _pyplot()
    s = summary[summary["metric"] == metric]
    variants = [v for v in variants if v in set(s["variant"])] or [""]
    n = len(variants)
    fig, axes, ncol = _figure(plt, n, [p for p in colors if (s["protocol"] == p).any()])
    handles: dict[str, Any] = {}
    for ax, variant in zip(axes.flat, variants):
        sv = s[s["variant"] == variant]
        for proto, (color, style) in colors.items():
            g = sv[sv["protocol"] == proto].sort_values("budget")
            if g.empty:
                continue
            x = g["budget"].to_numpy(float)
            (line,) = ax.plot(x, g["mean"].to_numpy(float), color=color, linestyle=style, marker="o",
                              markersize=3.5, linewidth=1.6, label=proto)
            lo, hi = g["lo"].to_numpy(float), g["hi"].to_numpy(float)
            if np.isfinite(lo).any():
                ax.fill_between(x, np.clip(lo, 0, 1.02), np.clip(hi, 0, 1.02), color=color, alpha=0.18,
                                linewidth=0)
            handles.setdefault(proto, line)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("budget (cost units)")
        ax.grid(alpha=0.3)
        if variant:
            ax.set_title(variant, fontsize=10)
    return _finish(fig, axes, n, metric, title or f"{metric} vs budget (mean across seeds, 95% interval)",
                   handles, colors, ncol, path)


def _finish(fig, axes, n: int, ylabel: str, title: str, handles: dict, colors: dict, ncol: int, path: Path) -> Path:
    """Label the left column, hide unused panels, add the title and the shared legend, save."""
    import matplotlib.pyplot as plt

    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    if handles:
        labels = [p for p in colors if p in handles]
        _legend(fig, [handles[p] for p in labels], labels, ncol)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def budget_to_sweep(run, key: str, metric: str, target: float, judge: str = "default") -> pd.DataFrame:
    """Budget to reach ``target`` on ``metric`` per (group, protocol, swept value of ``key``).

    ``group`` is the label of the other swept keys ("" when ``key`` is the only one).
    Columns: group, protocol, value, variant, budget_to (inf: never reached).
    """
    table = run.budget_to(metric, target, judge)
    rows = []
    for label, values in sweep_variants(run.config):
        if key not in values:
            continue
        group = ", ".join(f"{k}={v}" for k, v in values.items() if k != key)
        for rec in table[table["variant"] == label].itertuples():
            rows.append({"group": group, "protocol": rec.protocol, "value": values[key], "variant": label,
                         "budget_to": float(rec.budget_to)})
    return pd.DataFrame(rows, columns=["group", "protocol", "value", "variant", "budget_to"])


def plot_budget_to_sweep(table: pd.DataFrame, key: str, metric: str, target: float, path: Path, *,
                         budgets: list[float], colors: dict[str, tuple[str, str]]) -> Path:
    """Budget to reach the target vs the swept value: a line per protocol; never reached is
    drawn at a "not reached" level above the largest budget, hollow markers, dashed."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    groups = list(dict.fromkeys(table["group"])) or [""]
    n = len(groups)
    fig, axes, ncol = _figure(plt, n, [p for p in colors if (table["protocol"] == p).any()])
    top = max(budgets) if budgets else 1.0
    low = min(budgets) if budgets else 0.0
    nr = top + 0.15 * max(top - low, 1.0)
    values = sorted(set(float(v) for v in table["value"]))
    logx = bool(values) and min(values) > 0 and max(values) / min(values) >= 10
    if not values:
        span = 1.0
    elif logx:
        span = math.log10(max(values) / min(values))
    else:
        span = (max(values) - min(values)) or 1.0
    ticks = [t for t in MaxNLocator(6).tick_values(low, top) if low <= t <= top] if budgets else []
    handles: dict[str, Any] = {}
    for ax, group in zip(axes.flat, groups):
        tg = table[table["group"] == group]
        drawn = [p for p in colors if (tg["protocol"] == p).any()]
        for proto, (color, style) in colors.items():
            g = tg[tg["protocol"] == proto].sort_values("value")
            if g.empty:
                continue
            # dodge the protocols a little along x, so that equal numbers stay visible
            shift = (drawn.index(proto) - (len(drawn) - 1) / 2) * 0.012
            x = g["value"].to_numpy(float)
            x = x * 10 ** (shift * span) if logx else x + shift * span
            b = g["budget_to"].to_numpy(float)
            never = ~np.isfinite(b)
            y = np.where(never, nr, b)
            for i in range(len(x) - 1):       # dashed where either end is never reached
                ax.plot(x[i:i + 2], y[i:i + 2], color=color, linewidth=1.6,
                        linestyle="--" if never[i] or never[i + 1] else style)
            ax.plot(x[~never], y[~never], linestyle="none", marker="o", markersize=6, color=color)
            ax.plot(x[never], y[never], linestyle="none", marker="o", markersize=7, markerfacecolor="white",
                    markeredgecolor=color, markeredgewidth=1.6)
            handles.setdefault(proto, plt.Line2D([], [], color=color, linestyle=style, marker="o"))
        ax.axhline(nr, color="#999", linewidth=0.8, linestyle=":")
        if logx:
            ax.set_xscale("log")
        if values:
            ax.set_xticks(values)
            ax.set_xticklabels([f"{v:g}" for v in values])
            if logx:
                ax.minorticks_off()
        ax.set_yticks([*ticks, nr])
        ax.set_yticklabels([f"{t:g}" for t in ticks] + [NOT_REACHED])
        ax.set_ylim(min(low, 0) - 0.05 * (nr - min(low, 0)), nr + 0.08 * (nr - min(low, 0)))
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
        if group:
            ax.set_title(group, fontsize=10)
    return _finish(fig, axes, n, f"budget to {metric} >= {target:g}",
                   f"budget needed to reach {metric} >= {target:g} vs {key} (hollow: {NOT_REACHED})",
                   handles, colors, ncol, path)


def plot_interaction_profiles(profiles: pd.DataFrame, path: Path, protocols: list[str], colors: dict) -> Path:
    """Per protocol, the mean |I^(m)| profile normalised to sum 1 over the orders (clean:
    solid, attacked: dashed), mean over episodes: where each student's interactions sit."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for proto in protocols:
        part = profiles[(profiles["protocol"] == proto) & profiles["input"].isin(["clean", "attacked"])]
        if part.empty:
            continue
        per = part.groupby(["episode_id", "input", "ratio"])["mean_abs"].mean().reset_index()
        per["share"] = per["mean_abs"] / per.groupby(["episode_id", "input"])["mean_abs"].transform("sum")
        for view, style in (("clean", "-"), ("attacked", "--")):
            curve = per[per["input"] == view].groupby("ratio")["share"].mean()
            ax.plot(curve.index, curve.values, style, marker="o", ms=3, color=colors[proto][0],
                    label=f"{proto}, {view}")
    ax.set_xlabel("order ratio r = m / (n - 2)")
    ax.set_ylabel("share of mean |I^(m)| (sums to 1)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _interval_cells(row) -> list[tuple[str, str]]:
    from ..analysis.findings import signed

    return [(esc(int(row["n"])), "num"), (esc(signed(row["mean"])), "num"),
            (esc(f"[{signed(row['lo'])}, {signed(row['hi'])}]"), "num"), (esc(row["verdict"]), row["verdict"])]


STATISTICS = {
    "utility": "share of the attacking utility, high minus low band (per order)",
    "change": "relative change of mean |I| under attack, high minus low band",
    "low_share": "low band's share of the clean profile, AT - erm",
    "margin_low_share": "the same for the category-telling (margin) interactions, AT - erm",
}


def interactions_section(profiles: pd.DataFrame, found, plots: Path, protocols: list[str], colors: dict) -> str:
    """The findings of the interaction profiles: a plot, a table per finding with 95%
    intervals over seeds, and each finding's one-line verdict."""
    out = ["<h2>Multi-order interactions</h2>\n<p class=\"note\">Ren et al.'s two findings (arXiv 2103.07364), "
           "asked of this run's students at the final budget. Per episode the statistic is computed on the "
           "profile of correctly classified test points; the interval is the 95% t-interval over seeds. "
           "<em>holds</em>: the interval lies above 0; <em>reversed</em>: below 0; <em>inconclusive</em>: "
           "it contains 0. Definitions: README, \"Multi-order interactions\".</p>\n"]
    path = plot_interaction_profiles(profiles, plots / "interaction_profiles.png", protocols, colors)
    out.append(_img(f"plots/{path.name}", "interaction profiles per order"))
    for f in found:
        out.append(f"<h3>Finding {esc(f.key)}: {esc(f.question)}</h3>\n")
        if not f.table.empty:
            rows = [[(esc(r["protocol"] + (f" ({r['variant']})" if r["variant"] else "")), ""),
                     (esc(STATISTICS.get(r["statistic"], r["statistic"])), ""), *_interval_cells(r)]
                    for _, r in f.table.iterrows()]
            out.append(html_table(["students", "statistic", "seeds", "mean", "95% interval", "verdict"], rows))
        out.append(f'<p class="verdict"><strong>Verdict:</strong> {esc(f.verdict)}</p>\n')
        out.extend(f'<p class="note">Note: {esc(n)}.</p>\n' for n in f.notes)
        per_class = f.extra.get("per_class")
        if per_class is not None and not per_class.empty:
            rows = [[(esc(r["protocol"]), ""), (esc(int(r["label"])), "num"), *_interval_cells(r)]
                    for _, r in per_class.iterrows()]
            out.append("<details><summary>per class: low band's share of the clean profile, AT - erm</summary>"
                       + html_table(["students", "class", "seeds", "mean", "95% interval", "verdict"], rows)
                       + "</details>\n")
    return "".join(out)


# -- HTML pieces --------------------------------------------------------------------------

def html_table(header: list[str], rows: list[list[tuple[str, str]]], caption: str = "") -> str:
    """A table; ``rows`` hold (already escaped html, css class) cells."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>"
                                    for cell, cls in row) + "</tr>\n" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def _num(value: Any) -> tuple[str, str]:
    text = fmt(value)
    return esc(text), "never" if text == "never" else "num"


def _budget_cell(value: Any) -> tuple[str, str]:
    text = fmt_budget(value)
    return esc(text), "never" if text == "never" else "num"


def grid_table(table: pd.DataFrame, column: str, protocols: list[str], by: str, keys: list, cell,
               headers: list[str] | None = None) -> str:
    """Protocols x ``keys`` table of ``column``, the columns picked by ``table[by]``."""
    rows = []
    for proto in protocols:
        tp = table[table["protocol"] == proto]
        if tp.empty:
            continue
        cells = [(esc(proto), "")]
        for k in keys:
            hit = tp[tp[by] == k]
            cells.append(cell(hit[column].iloc[0] if not hit.empty else math.nan))
        rows.append(cells)
    return html_table(["protocol", *(headers or [str(k) for k in keys])], rows)


def metric_table(table: pd.DataFrame, column: str, protocols: list[str], metrics: list[str], cell) -> str:
    """Protocols x metrics table of ``column`` (rows of one variant)."""
    return grid_table(table, column, protocols, "metric", metrics, cell)


def _per_variant(variants: list[str], present: set[str], render) -> str:
    parts = []
    for v in variants:
        if v not in present:
            continue
        title = f"<h3>{esc(v)}</h3>\n" if v else ""
        parts.append(title + render(v))
    return "".join(parts)


def _img(rel: str, alt: str) -> str:
    return f'<img src="{esc(rel)}" alt="{esc(alt)}">\n'


def judge_summary(judge_cfg: dict[str, Any]) -> str:
    """One line: norm, eps, attacks, strong_radius, test_points."""
    attacks = judge_cfg.get("attacks", [])
    attacks = "+".join(attacks) if isinstance(attacks, list) else str(attacks)
    return (f"norm {judge_cfg.get('norm', '?')}, eps {judge_cfg.get('eps', '?')}, attacks {attacks}, "
            f"strong_radius {judge_cfg.get('strong_radius', '?')}, test_points {judge_cfg.get('test_points', '?')}")


def _judge_config(run, judge: str) -> dict[str, Any]:
    import json

    cfg = dict(run.config.get("judge", {}))
    if judge != "default":
        try:
            rows = run._query("SELECT config FROM judges WHERE name = ?", (judge,))
            if not rows.empty:
                cfg.update(json.loads(rows["config"].iloc[0]))
        except Exception:     # an older run without the judges table: the run's own judge config
            pass
    return cfg


# -- the page -----------------------------------------------------------------------------

def build_report(run, *, target: float | None = None, judge: str = "default") -> Path:
    """Write ``report.html`` and ``plots/*.png`` into the run directory; return the html path.

    Args:
        run: a :class:`teachsim.results.reader.Run`.
        target: the budget-to-target level (default: ``[report] target`` of the config, else 0.9).
        judge: the judge whose scores to show (``"default"``, or a ``teachsim judge`` name).
    """
    from ..version import __version__
    from ..errors import ConfigError, RunError

    config = run.config
    rcfg = config.get("report", {}) or {}
    if target is None:
        target = float(rcfg.get("target", DEFAULT_TARGET))
    target = float(target)
    if not math.isfinite(target):
        raise ConfigError.expected("--target", "a finite number", target)
    report_metric = str(rcfg.get("metric", DEFAULT_METRIC))
    judges = run.judges
    if judge != "default" and judge not in judges:
        raise ConfigError("--judge", f"expected one of {', '.join(judges) or 'default'}, got {judge!r}")

    plots = run.dir / "plots"
    try:
        plots.mkdir(parents=True, exist_ok=True)
        probe = plots / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:   # a read-only run directory: it can be shown, not reported into
        raise RunError(f"cannot write the report into {run.dir} ({exc.strerror}); teachsim show {run.dir} "
                       "reads it without writing, or copy the directory somewhere writable") from None
    from .reader import counts

    episodes, missing = run.episodes, run.not_run
    summary = run.summary(judge)
    protocols = protocol_order(config, episodes)
    variants = variant_order(config, episodes)
    colors = protocol_colors(protocols)
    metrics = [m for m in METRICS if not summary.empty and m in set(summary["metric"])]
    present = set(summary["variant"]) if not summary.empty else set()

    finished = int((episodes["status"] == "finished").sum()) if not episodes.empty else 0
    failed_eps = episodes[episodes["status"] != "finished"] if not episodes.empty else episodes
    name = config.get("name", run.dir.name)
    budgets = [float(b) for b in config.get("budgets", [])]
    judge_cfg = _judge_config(run, judge)
    out: list[str] = []

    # 1. header
    out.append(f"<h1>{esc(name)}</h1>\n")
    if config.get("description"):
        out.append(f'<p class="question">{esc(config["description"])}</p>\n')
    meta = [("run directory", str(run.dir)),
            ("episodes", counts(episodes, missing) + (" (interrupted, or still going: its own teachsim run "
                                                      "command with --resume runs the rest)" if len(missing) else "")),
            ("seeds", ", ".join(map(str, config.get("seeds", [])))),
            ("budgets", ", ".join(f"{b:g}" for b in budgets)),
            ("judge" if judge == "default" else f"judge ({judge})", judge_summary(judge_cfg)),
            ("protocols", ", ".join(protocols))]
    covered, _ = run.judge_coverage(judge)
    if 0 < covered < finished:
        meta.append(("partial judge", f"judge {judge!r} scored {covered} of the {finished} finished episodes "
                                      "(a judging that stopped part way: run the same teachsim judge command "
                                      "again to finish it)"))
    if config.get("sweep"):
        meta.append(("sweep", "; ".join(f"{k} = {v}" for k, v in config["sweep"].items())))
    meta.append(("target", f"{target:g} (budget-to tables; dimension sweep on {report_metric})"))
    out.append('<table class="meta"><tbody>' + "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in meta) + "</tbody></table>\n")
    cfg_path = run.dir / "config.toml"
    cfg_text = cfg_path.read_text() if cfg_path.is_file() else ""
    out.append(f"<details><summary>resolved config (config.toml)</summary><pre>{esc(cfg_text)}</pre></details>\n")

    # 2. curves
    out.append("<h2>Robustness vs budget</h2>\n")
    if not metrics:
        out.append('<p class="note">no scores yet</p>\n')
    else:
        out.append('<p class="note">Mean across seeds at each checkpoint; the shaded band is the 95% '
                   "interval (none with one seed).</p>\n")
    for m in metrics:
        path = plot_metric(summary, m, plots / f"{m}.png", variants=variants, colors=colors)
        out.append(f"<h3>{esc(m)}</h3>\n" + _img(f"plots/{path.name}", f"{m} vs budget"))

    # 3. AUC and budget-to tables
    if metrics:
        aucs = run.auc(judge)
        out.append("<h2>AUC</h2>\n<p class=\"note\">Normalised area under the mean curve (trapezoid over "
                   "the checkpoints, divided by the budget span).</p>\n")
        out.append(_per_variant(variants, present, lambda v: metric_table(
            aucs[aucs["variant"] == v], "auc", protocols, metrics, _num)))
        bt = pd.concat([run.budget_to(m, target, judge) for m in metrics], ignore_index=True)
        out.append(f"<h2>Budget to reach {esc(f'{target:g}')}</h2>\n<p class=\"note\">First checkpoint where "
                   f"the mean reaches {esc(f'{target:g}')}; never: not reached by the last budget "
                   f"({esc(f'{max(budgets):g}' if budgets else '-')}).</p>\n")
        out.append(_per_variant(variants, present, lambda v: metric_table(
            bt[bt["variant"] == v], "budget_to", protocols, metrics, _budget_cell)))

    # 4. dimension sweep
    key = numeric_sweep_key(config)
    if key and report_metric in metrics:
        table = budget_to_sweep(run, key, report_metric, target, judge)
        if not table.empty:
            fname = "budget_to_" + "".join(c if c.isalnum() or c in "._-" else "_" for c in key) + ".png"
            plot_budget_to_sweep(table, key, report_metric, target, plots / fname, budgets=budgets, colors=colors)
            out.append(f"<h2>Budget to reach {esc(report_metric)} &ge; {esc(f'{target:g}')} vs {esc(key)}</h2>\n")
            out.append(_img(f"plots/{fname}", f"budget to target vs {key}"))
            values = list(dict.fromkeys(table["value"]))
            for group in dict.fromkeys(table["group"]):
                grid = grid_table(table[table["group"] == group], "budget_to", protocols, "value", values,
                                  _budget_cell, headers=[f"{key}={v}" for v in values])
                out.append((f"<h3>{esc(group)}</h3>\n" if group else "") + grid)

    # 5. train-method x test-attack matrix
    if len(judges) > 1:
        parts = []
        for m in MATRIX_METRICS:
            mat = run.attack_matrix(m, judges=judges)
            if mat.empty:
                continue
            rows = [[(esc(idx), "")] + [_num(v) for v in row] for idx, row in mat.iterrows()]
            parts.append(f"<h3>{esc(m)}</h3>\n" + html_table([mat.index.name or "method", *map(str, mat.columns)],
                                                              rows))
        if parts:
            out.append("<h2>Train method x test attack</h2>\n<p class=\"note\">Each cell is the metric at the "
                       "final budget, mean over seeds, for students trained as the row says (training method, "
                       "variant or protocol) and judged by the column's attack set (\"default\" is the run's "
                       "own judge).</p>\n")
            out.extend(parts)

    # 6. multi-order interactions ([interactions])
    found = run.findings()
    if found:
        out.append(interactions_section(run.interaction_profiles(), found, plots, protocols, colors))

    # 7. sanity flags
    out.append("<h2>Judge sanity flags</h2>\n")
    flags = run.flags
    if not flags.empty:
        from ..platform.judge_params import INFO_FLAGS

        flags = flags[(flags["judge"] == judge) & (flags["value"] > 0) & ~flags["flag"].isin(INFO_FLAGS)]
    if flags.empty:
        out.append('<p class="note">no sanity flags raised</p>\n')
    else:
        flags = flags.merge(episodes[["episode_id", "protocol"]], on="episode_id")
        rows = []
        rank = {p: i for i, p in enumerate(protocols)}
        groups = sorted(flags.groupby(["protocol", "flag"]), key=lambda kv: (rank.get(kv[0][0], len(rank)), kv[0]))
        for (proto, flag), g in groups:
            rows.append([(esc(proto), ""), (esc(flag), ""), (esc(g["episode_id"].nunique()), "num"),
                         _num(g["value"].mean()), _num(g["value"].max())])
        out.append('<p class="note">Where a flag is set, attack-based numbers may be unreliable '
                   "(e.g. zero_grad_share: share of test points with an all-zero input gradient).</p>\n")
        out.append(html_table(["protocol", "flag", "episodes", "mean (where set)", "max"], rows))

    # 8. episodes that stopped short of the final budget, and failed ones
    short = run.underspent()
    if not short.empty:
        out.append("<h2>Episodes that spent less than the final budget</h2>\n<p class=\"note\">They ended (a "
                   "<code>done</code>, or both sides silent) before the final budget: their scores at that budget "
                   "are those of their last student.</p>\n")
        out.append(html_table(["episode", "protocol", "seed", "spent / budget"],
                              [[(esc(r.episode_id), "num"), (esc(r.protocol), ""), (esc(r.seed), "num"),
                                (esc(f"{r.spent:g} / {r.budget:g}"), "num")] for r in short.itertuples()]))
    out.append("<h2>Failed episodes</h2>\n")
    if failed_eps.empty:
        out.append('<p class="note">none</p>\n')
    else:
        rows = [[(esc(r.episode_id), "num"), (esc(r.protocol), ""), (esc(r.variant), ""), (esc(r.seed), "num"),
                 (f"<pre>{esc(r.error or '')}</pre>", "")] for r in failed_eps.itertuples()]
        out.append(html_table(["episode", "protocol", "variant", "seed", "error"], rows))

    # 9. footer
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    out.append(f"<footer><p>teachsim {esc(__version__)}, generated {esc(now)}. Rebuild with "
               f"<code>teachsim report {esc(run.dir)}</code>.</p></footer>\n")

    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(name)} - teachsim report</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "".join(out) + "</body>\n</html>\n")
    path = run.dir / "report.html"
    atomic_write(path, page.encode("utf-8"))
    return path
