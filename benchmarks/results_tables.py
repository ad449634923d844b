"""Markdown tables of a finished run, for benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/results_tables.py RUN_DIR [--target 0.9] [--metrics strong_robust_acc ...]

Per variant: mean and 95% interval at the final budget, the AUC, and the budget to reach
``--target`` (the run's ``[report] target`` by default) for each metric; for a sweep, the
budget-to table of the report's metric with one column per variant. Uses only the Run API
(``teachsim.open_run``). Not a test and never imported by the package.
"""

from __future__ import annotations

import argparse
import math
import sys

DEFAULT_METRICS = ["strong_robust_acc", "weak_robust_acc", "lp_robust_acc", "clean_acc", "broad_acc"]


def _num(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _budget(v: float) -> str:
    return "never" if math.isinf(v) else f"{v:g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def tables(run, metrics: list[str], target: float, report_metric: str) -> str:
    """The markdown text."""
    s = run.summary()
    aucs = run.auc()
    from teachsim.results.report import protocol_order, variant_order

    order = protocol_order(run.config, run.episodes)          # the config's order, as in the report
    variants = variant_order(run.config, run.episodes)
    final = s["budget"].max()
    out = []
    reach = {m: run.budget_to(m, target) for m in metrics}
    for variant in variants:
        sv = s[(s["variant"] == variant) & (s["budget"] == final)]
        out.append(f"### {variant or 'all'}: mean [95% interval] at budget {final:g}\n")
        rows = []
        for p in order:
            cells = [p]
            for m in metrics:
                r = sv[(sv["protocol"] == p) & (sv["metric"] == m)]
                cells.append("-" if r.empty else
                             f"{_num(r['mean'].iloc[0])} [{_num(r['lo'].iloc[0])}, {_num(r['hi'].iloc[0])}]")
            rows.append(cells)
        out.append(_table(["protocol", *metrics], rows) + "\n")
        out.append(f"AUC (normalised area under the mean curve, budgets {s['budget'].min():g}-{final:g}) "
                   f"and budget to reach {target:g}:\n")
        rows = []
        for p in order:
            cells = [p]
            for m in metrics:
                a = aucs[(aucs["variant"] == variant) & (aucs["protocol"] == p) & (aucs["metric"] == m)]
                b = reach[m][(reach[m]["variant"] == variant) & (reach[m]["protocol"] == p)]
                cells.append(f"{_num(a['auc'].iloc[0]) if len(a) else '-'} / "
                             f"{_budget(b['budget_to'].iloc[0]) if len(b) else '-'}")
            rows.append(cells)
        out.append(_table(["protocol", *(f"{m} AUC / to {target:g}" for m in metrics)], rows) + "\n")
    if len(variants) > 1:
        b = run.budget_to(report_metric, target)
        out.append(f"### budget to reach {report_metric} >= {target:g}, by variant\n")
        rows = [[p, *(_budget(b[(b["variant"] == v) & (b["protocol"] == p)]["budget_to"].iloc[0])
                      if len(b[(b["variant"] == v) & (b["protocol"] == p)]) else "-" for v in variants)]
                for p in order]
        out.append(_table(["protocol", *variants], rows) + "\n")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--metrics", nargs="+", default=DEFAULT_METRICS)
    args = ap.parse_args(argv)
    import teachsim

    run = teachsim.open_run(args.run_dir)
    report = run.config.get("report", {})
    target = args.target if args.target is not None else report.get("target", 0.9)
    print(tables(run, args.metrics, target, report.get("metric", "strong_robust_acc")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
