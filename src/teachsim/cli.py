"""The ``teachsim`` command line.

Exit codes: 0 success; 1 the experiment ran but some episodes failed, or a conformance
check failed; 2 bad input (config, arguments, plugin), reported in one line without a
traceback; 130 interrupted (finished episodes are kept), 143 the same after SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import sys
from pathlib import Path
from typing import Sequence

from . import registry
from .errors import ClusterLost, TeachsimError

SUITES_DIR = Path(__file__).parent / "suites"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"teachsim: error: {message} (see: {self.prog} --help)\n")


def _suite_path(name: str) -> Path:
    from .errors import ConfigError
    from .schema import suggest

    for folder in (SUITES_DIR, Path("benchmarks") / "suites"):
        path = folder / f"{name}.toml"
        if path.is_file():
            return path
    known = suite_names()
    raise ConfigError("SUITE", f"unknown suite {name!r}{suggest(name, known)}; known: {', '.join(known)} (the "
                      f"built-in ones and any NAME.toml in {Path.cwd() / 'benchmarks' / 'suites'})")


def suite_names() -> list[str]:
    """Built-in suites, plus any in ./benchmarks/suites."""
    names = {p.stem for p in SUITES_DIR.glob("*.toml")}
    names |= {p.stem for p in (Path("benchmarks") / "suites").glob("*.toml")}
    return sorted(names)


def _cohort_size(text: str) -> int | str:
    """``--cohort``: a whole number >= 1 or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}")
    return value


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="run directory (default: runs/<name>)")
    p.add_argument("--executor", choices=["ray", "serial"], default=None,
                   help="ray (default; embedded local Ray unless --address) or serial (no Ray); "
                        "$TEACHSIM_EXECUTOR changes the default")
    p.add_argument("--address", default=None,
                   help="run on an existing Ray cluster, HOST:PORT (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="most workers at once, each running one episode or a cohort (default: as many as the "
                        "cluster fits)")
    p.add_argument("--cpus-per-episode", type=float, default=None, metavar="C", dest="cpus_per_episode",
                   help="CPUs reserved per episode (default 1; other than 1, one episode at a time per worker)")
    p.add_argument("--gpus-per-episode", type=float, default=None, metavar="G", dest="gpus_per_episode",
                   help="GPUs per episode; 0.25 packs four episodes per GPU, one at a time each; 1 (with 1 "
                        "CPU): one worker per GPU, advancing a cohort (default 0; CPU when no GPU)")
    p.add_argument("--cohort", type=_cohort_size, default=None, metavar="N",
                   help="advance N episodes together in each process (each Ray worker's, or this one with "
                        "--executor serial), their students trained as one batched model; same results; "
                        "1: one at a time; 'auto' (the default): 16 on a CPU, 64 per GPU worker, at most each "
                        "worker's share, 1 where a time limit applies")
    p.add_argument("--retries", type=int, default=0,
                   help="extra attempts for a failing episode (an episode whose worker dies is always retried)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS", dest="time_limit",
                   help="fail an episode that runs longer (default: the config's time_limit, else none)")
    p.add_argument("--resume", action="store_true", help="keep finished episodes of --out and run the rest")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-report", action="store_true", dest="no_report",
                   help="do not build report.html at the end (build it later: teachsim report RUN_DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="teachsim", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="load user tasks/protocols/strategies/methods first (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run an experiment from a TOML config")
    p.add_argument("config")
    _add_run_options(p)

    p = sub.add_parser("bench", help="run a built-in suite (default: quick)")
    p.add_argument("suite", nargs="?", default="quick")
    _add_run_options(p)

    p = sub.add_parser("show", help="summary tables of a run in the terminal")
    p.add_argument("run_dir")
    p.add_argument("--metric", help="only this metric")
    p.add_argument("--target", type=float, default=None,
                   help="target for the budget-to table (default: [report] target of the config, else 0.9)")
    p.add_argument("--judge", default="default", help="show the scores of a re-judging (teachsim judge)")
    p.add_argument("--matrix", action="store_true",
                   help="train-method x test-attack matrix of --metric (default lp_robust_acc) at the final budget")
    p.add_argument("--findings", action="store_true",
                   help="the multi-order interaction findings with their intervals and verdicts "
                        "(runs with an [interactions] table)")
    p.add_argument("--episodes", action="store_true",
                   help="one line per episode: id, key, protocol, seed, status, spent, variant (for `transcript`)")

    p = sub.add_parser("report", help="(re)build report.html and plots/*.png of a run")
    p.add_argument("run_dir")
    p.add_argument("--target", type=float, default=None,
                   help="target for the budget-to tables (default: [report] target of the config, else 0.9)")
    p.add_argument("--judge", default="default", help="report the scores of a re-judging (teachsim judge)")

    p = sub.add_parser("judge", help="re-score saved students (no retraining): with no options, bring the run's "
                       "own judge up to this teachsim's judge version; with options, score another judge")
    p.add_argument("run_dir")
    p.add_argument("--attacks", nargs="+", help="l_p attack set, e.g. --attacks pgd apgd-ce beta")
    p.add_argument("--norm", help="l2 or linf")
    p.add_argument("--eps", type=float, help="radius of the l_p attacks")
    p.add_argument("--strong-radius", type=float, dest="strong_radius", help="radius of the teacher search")
    p.add_argument("--steps", type=int, help="iterations of each l_p attack")
    p.add_argument("--restarts", type=int, help="restarts of each l_p attack")
    p.add_argument("--name", help="judge name to record under (default: attacks/norm/eps)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("list", help="list registered tasks, protocols, methods, ...")
    p.add_argument("what", nargs="?", default=None,
                   choices=["tasks", "protocols", "strategies", "methods", "models", "attacks", "suites", "metrics"])

    p = sub.add_parser("check-protocol", help="conformance checks on a protocol (built-in or --plugin)")
    p.add_argument("protocol", help="registered protocol name")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a protocol parameter, VALUE in TOML syntax (repeatable), e.g. --param push=\"boundary\"")
    p.add_argument("--task", default=None, metavar="TASK",
                   help="the task to check it on (default: hidden-feature of dimension 8; others at their defaults)")
    p.add_argument("--budgets", type=float, nargs="+", default=None, metavar="B",
                   help="checkpoints of the check episodes (default: 0 10 30 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--traceback", action="store_true", help="print the whole traceback of a turn that raised")

    p = sub.add_parser("check-task", help="conformance checks on a task (built-in or --plugin)")
    p.add_argument("task", help="registered task name")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a task parameter, VALUE in TOML syntax (repeatable), e.g. --param dim=20")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("transcript", help="one episode's messages")
    p.add_argument("run_dir")
    p.add_argument("episode", help="episode id (see teachsim show) or key")

    p = sub.add_parser("interactions", help="multi-order interactions of a saved student, clean vs attacked")
    p.add_argument("run_dir")
    p.add_argument("--episode", default=None, help="episode id or key (default: the first finished one)")
    p.add_argument("--budget", type=float, default=None, help="checkpoint (default: the run's last budget)")
    p.add_argument("--ratios", type=float, nargs="+", default=None, metavar="R",
                   help="order ratios r, m = int(r (n-2)) (default: 0.05 0.1 0.2 0.3 0.5 0.7 0.9 0.95)")
    p.add_argument("--points", type=int, default=20, metavar="N", help="test points (default 20)")
    p.add_argument("--samples", type=int, default=100, metavar="K", help="contexts per order and pair (default 100)")
    p.add_argument("--pairs", type=int, default=20, metavar="P", help="player pairs per point (default 20)")
    p.add_argument("--grid", type=int, default=None, metavar="C",
                   help="cell size for square images (default: 2 for digits, features otherwise)")
    p.add_argument("--split", choices=["strong"], default=None,
                   help="a profile per group of points: strong = where the judge's teacher-relative search "
                        "found a counterexample, and where it did not")

    for p in sub.choices.values():
        p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                       dest="plugin_sub", help=argparse.SUPPRESS)
    return parser


def _run_flags(args: argparse.Namespace) -> str:
    """The execution options given, as command-line text: a resume runs the way the run did."""
    import shlex

    flags = [("--executor", args.executor), ("--address", args.address), ("--workers", args.workers),
             ("--cpus-per-episode", args.cpus_per_episode), ("--gpus-per-episode", args.gpus_per_episode),
             ("--retries", args.retries or None), ("--time-limit", args.time_limit), ("--cohort", args.cohort)]
    return "".join(f" {flag} {shlex.quote(repr(value) if isinstance(value, float) else str(value))}"
                   for flag, value in flags if value is not None)


def _cmd_run(args: argparse.Namespace, config) -> int:
    from .results.driver import run

    try:
        r = run(config, out=args.out, executor=args.executor, address=args.address, workers=args.workers,
                cpus_per_episode=args.cpus_per_episode, gpus_per_episode=args.gpus_per_episode,
                resume=args.resume, retries=args.retries, progress=not args.quiet, time_limit=args.time_limit,
                cohort=args.cohort)
    except (KeyboardInterrupt, ClusterLost) as exc:
        out = args.out
        if out is None:
            from . import config as config_mod

            out = str(Path("runs") / config_mod.load(config).name)
        import shlex

        plugins = "".join(f"--plugin {shlex.quote(p)} " for p in [*args.plugin, *getattr(args, "plugin_sub", [])])
        what = f"run {shlex.quote(str(config))}" if args.command == "run" else f"bench {args.suite}"
        if sys.stderr.isatty():
            print(file=sys.stderr)   # end the progress bar's line
        said, code = _interrupted() if isinstance(exc, KeyboardInterrupt) else (f"error: {exc}", 1)
        print(f"teachsim: {said}; finished episodes are kept in {out}; to finish the run: "
              f"teachsim {plugins}{what} --out {shlex.quote(str(out))}{_run_flags(args)} --resume", file=sys.stderr)
        return code
    episodes = r.episodes
    failed = episodes[episodes["status"] != "finished"]
    print(f"run directory: {r.dir}  ({len(episodes) - len(failed)} finished, {len(failed)} failed)")
    for row in failed.itertuples():
        print(f"  episode {row.episode_id} ({row.protocol}, seed {row.seed}) failed: "
              f"{row.error.splitlines()[0] if row.error else ''}", file=sys.stderr)
    if not args.no_report:
        try:
            print(f"report: {r.report()}")
        except Exception as exc:   # the results are safe on disk; say how to retry
            print(f"teachsim: warning: could not build the report ({type(exc).__name__}: {exc}); "
                  f"try: teachsim report {r.dir}", file=sys.stderr)
    print(f"next: teachsim show {r.dir}")
    return 1 if len(failed) else 0


def _check_target(target: float | None) -> None:
    """A budget-to target is a score level: every metric is a share in [0, 1]."""
    from .errors import ConfigError

    if target is not None and not (math.isfinite(target) and 0 <= target <= 1):
        raise ConfigError.expected("--target", "a number in [0, 1] (every metric is a share)", target)


def _cmd_report(args: argparse.Namespace) -> int:
    from .results.reader import open_run

    _check_target(args.target)
    r = open_run(args.run_dir)
    print(r.report(target=args.target, judge=args.judge))
    return 0


def _fmt(v: float) -> str:
    return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _cmd_show(args: argparse.Namespace) -> int:
    from .platform.judge_params import METRICS
    from .results.reader import counts, open_run

    _check_target(args.target)
    r = open_run(args.run_dir)
    if args.judge not in r.judges and args.judge != "default":   # before printing anything
        from .errors import ConfigError

        raise ConfigError("--judge", f"expected one of {', '.join(r.judges)}, got {args.judge!r}")
    episodes, missing = r.episodes, r.not_run
    print(f"{r.config.get('name')}: {counts(episodes, missing)} episodes  ({r.dir})")
    if len(missing):   # an interrupted run: its tables hold only what finished
        print(f"  not run yet: {len(missing)} of the planned episodes (the run was interrupted, or is still going; "
              "its own teachsim run command with --resume finishes it): what follows holds only what finished")
    if args.episodes:
        width = max([len("protocol"), *(len(p) for p in [*episodes["protocol"], *missing["protocol"]])])
        print(f"{'id':>4}  {'key':<16}  {'protocol':<{width}}  {'seed':>6}  {'status':<8}  {'spent':>8}  variant")
        for row in episodes.itertuples():
            spent = "-" if row.spent is None or row.spent != row.spent else f"{row.spent:g}"
            print(f"{row.episode_id:>4}  {row.key:<16}  {row.protocol:<{width}}  {row.seed:>6}  {row.status:<8}  "
                  f"{spent:>8}  {row.variant}")
        for row in missing.itertuples():   # planned, no record yet: the seed is in the key's spec only
            print(f"{row.episode_id:>4}  {row.key:<16}  {row.protocol:<{width}}  {'-':>6}  {'not run':<8}  "
                  f"{'-':>8}  {row.variant}")
        return 0
    if args.matrix:
        return _show_matrix(r, args.metric or "lp_robust_acc")
    if args.findings:
        from .analysis.findings import text

        found = r.findings()
        print(text(found) if found else "no interaction profiles in this run: add an [interactions] table to its "
              f"config and run it again (teachsim run {shlex.quote(str(r.dir / 'config.toml'))} --out "
              f"{shlex.quote(str(r.dir))}); finished episodes are not re-run")
        return 0
    if args.target is None:
        args.target = r.config.get("report", {}).get("target", 0.9)
    if args.judge != "default":
        print(f"judge: {args.judge}")
    covered, finished = r.judge_coverage(args.judge)
    if 0 < covered < finished:
        print(f"teachsim: warning: judge {args.judge!r} is partial: it scored {covered} of the {finished} finished "
              "episodes (a judging that stopped part way); run the same teachsim judge command again to finish it",
              file=sys.stderr)
    s = r.summary(args.judge)
    if s.empty:
        print("no scores yet")
        _show_problems(r, episodes)
        return 0
    if args.metric and args.metric not in set(s["metric"]):
        from .errors import ConfigError
        from .schema import suggest

        known = sorted(set(s["metric"]))
        raise ConfigError("--metric", f"unknown metric {args.metric!r}{suggest(args.metric, known)}; "
                          f"this run has: {', '.join(known)}")
    metrics = [args.metric] if args.metric else [mt for mt in METRICS if mt in set(s["metric"])]
    final = s["budget"].max()
    aucs = r.auc(args.judge)
    for variant in sorted(s["variant"].unique()):
        if variant:
            print(f"\n== {variant}")
        sv = s[(s["variant"] == variant) & (s["budget"] == final)]
        av = aucs[aucs["variant"] == variant]
        protos = sorted(sv["protocol"].unique())
        # where episodes failed or stopped short, a mean is over fewer seeds: say so
        seeds = len(r.config.get("seeds") or [])
        have = sv.groupby("protocol")["n"].max()
        names = {p: p if int(have.get(p, 0)) >= seeds else f"{p} (n={int(have.get(p, 0))}/{seeds})"
                 for p in protos}
        width = max(len("protocol"), *(len(n) for n in names.values()))
        for title, table, col in ((f"mean at the final budget {final:g} (95% interval)", sv, None),
                                  ("AUC (normalised area under the mean curve)", av, "auc")):
            print(f"\n{title}")
            print(f"{'protocol':<{width}}  " + "  ".join(f"{mt:>20}" for mt in metrics))
            for p in protos:
                cells = []
                for mt in metrics:
                    row = table[(table["protocol"] == p) & (table["metric"] == mt)]
                    if row.empty:
                        cells.append(f"{'-':>20}")
                    elif col:
                        cells.append(f"{_fmt(row[col].iloc[0]):>20}")
                    else:
                        rr = row.iloc[0]
                        cells.append(f"{_fmt(rr['mean']) + ' [' + _fmt(rr['lo']) + ',' + _fmt(rr['hi']) + ']':>20}")
                print(f"{names[p]:<{width}}  " + "  ".join(cells))
        print(f"\nbudget to reach {args.target:g} (first checkpoint where the mean reaches it)")
        print(f"{'protocol':<{width}}  " + "  ".join(f"{mt:>20}" for mt in metrics))
        tables = {mt: r.budget_to(mt, args.target, args.judge) for mt in metrics}
        for p in protos:
            cells = []
            for mt in metrics:
                t = tables[mt]
                row = t[(t["variant"] == variant) & (t["protocol"] == p)]
                v = row["budget_to"].iloc[0] if not row.empty else math.nan
                cells.append(f"{('never' if v == math.inf else f'{v:g}'):>20}")
            print(f"{names[p]:<{width}}  " + "  ".join(cells))
    from .platform.judge_params import INFO_FLAGS, VERSION

    old = [v for v in r.judge_versions.get(args.judge, []) if v != VERSION]
    if old:
        print(f"\nwarning: these scores were made by judge version {', '.join(map(str, old))} (this teachsim's "
              f"is {VERSION}; version 1 overstates strong_robust_acc); re-score: teachsim judge {r.dir}")
    flags = r.flags
    exact = flags[(flags["judge"] == args.judge) & (flags["flag"] == "strong_exact")]
    if not exact.empty and (exact["value"] > 0).all():
        print("\nstrong_robust_acc is exact here (an affine student under an affine teacher)")
    flags = flags[(flags["judge"] == args.judge) & (flags["value"] > 0) & ~flags["flag"].isin(INFO_FLAGS)]
    for flag, g in flags.groupby("flag"):
        print(f"\nwarning: sanity flag {flag} is set in {g['episode_id'].nunique()} episode(s) "
              f"(max {g['value'].max():.3g}); attack-based numbers may be unreliable there")
    _show_problems(r, episodes)
    return 0


def _show_problems(r, episodes) -> None:
    """What a table of means does not show: episodes that stopped short of the final
    budget, and failed ones (their first error line and where to read the rest)."""
    short = r.underspent()
    if not short.empty:
        print(f"\nwarning: {len(short)} episode(s) ended having spent less than the final budget "
              f"{short['budget'].iloc[0]:g}; their scores at that budget are those of the last student:")
        for row in short.itertuples():
            print(f"  episode {row.episode_id} ({row.protocol}, seed {row.seed}): spent {row.spent:g} / {row.budget:g}")
    failed = episodes[episodes["status"] != "finished"]
    for row in failed.itertuples():
        print(f"\nfailed: episode {row.episode_id} ({row.protocol}, seed {row.seed}): "
              f"{row.error.splitlines()[0] if row.error else ''}")
    if not failed.empty:
        print(f"(the whole error, and what was delivered before it: teachsim transcript {r.dir} ID)")


def _show_matrix(r, metric: str) -> int:
    from .errors import ConfigError
    from .platform.judge_params import METRICS
    from .schema import suggest

    if metric not in METRICS:
        raise ConfigError("--metric", f"unknown metric {metric!r}{suggest(metric, METRICS)}; "
                          f"expected one of {', '.join(METRICS)}")
    table = r.attack_matrix(metric)
    if table.empty:
        print("no scores yet")
        return 0
    final = r.scores["budget"].max()
    print(f"\n{metric} at the final budget {final:g}, mean over seeds "
          f"(rows: {table.index.name}, columns: judge / attack set)")
    width = max(len(table.index.name), *(len(str(i)) for i in table.index))
    cols = [max(len(c), 7) for c in table.columns]
    print(f"{table.index.name:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(table.columns, cols)))
    for label, row in table.iterrows():
        print(f"{label:<{width}}  " + "  ".join(f"{_fmt(v):>{w}}" for v, w in zip(row, cols)))
    return 0


def _cmd_judge(args: argparse.Namespace) -> int:
    from .results.reader import open_run

    overrides = {k: getattr(args, k) for k in ("attacks", "norm", "eps", "strong_radius", "steps", "restarts")
                 if getattr(args, k) is not None}
    r = open_run(args.run_dir)
    if not overrides and args.name is None:
        # no new judge asked for: bring the run's own judge up to this teachsim's version
        from .platform.judge_params import VERSION

        n = r.upgrade_judge(progress=not args.quiet)
        print(f"{n} episode(s) re-scored; every score of {r.dir}'s own judge is judge version {VERSION}"
              if n else f"{r.dir} is up to date (judge version {VERSION}); to score with another judge, give "
              "--attacks, --norm, --eps, ... or --name")
        return 0
    name = r.rejudge(args.name, progress=not args.quiet, **overrides)
    print(f"judged as {name!r}; see: teachsim show {r.dir} --judge '{name}'")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .platform.judge_params import METRICS

    kinds = [args.what] if args.what else ["tasks", "protocols", "strategies", "methods", "models",
                                            "attacks", "suites", "metrics"]
    for kind in kinds:
        print(f"{kind}:")
        if kind == "suites":
            for name in suite_names():
                print(f"  {name}")
        elif kind == "metrics":
            for name in METRICS:
                print(f"  {name}")
        else:
            reg = registry.REGISTRIES[kind[:-1] if kind != "strategies" else "strategy"]
            for name in reg.names():
                entry = reg.get(name)
                print(f"  {name:<16} {entry.summary}")
                for pname, param in entry.params.items():
                    print(f"      {pname} = {param.default!r}  ({param.expect}) {param.doc}")
    return 0


def _parse_params(pairs: list[str]) -> dict:
    import tomllib

    from .errors import ConfigError

    out = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError.expected("--param", "KEY=VALUE", pair)
        try:
            out[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = text   # a bare word: take it as a string (push=boundary)
    return out


def _cmd_check_protocol(args: argparse.Namespace) -> int:
    from .checks.protocol import check_protocol
    from .errors import ConfigError

    from .checks.protocol import SMALL_TASK

    task = None if args.task in (None, SMALL_TASK["name"]) else {"name": args.task}
    budgets = tuple(args.budgets) if args.budgets else (0, 10, 30, 60)
    try:
        report = check_protocol(args.protocol, params=_parse_params(args.param), seed=args.seed, task=task,
                                budgets=budgets)
    except ConfigError as exc:   # name the argument the user typed, not the config path used inside
        field = (exc.field.replace("protocols[0].name", "PROTOCOL").replace("protocols[0].", "--param ")
                 .replace("task.name", "--task").replace("budgets", "--budgets"))
        raise ConfigError(field, exc.detail) from None
    print(report)
    if report.trace:   # the traceback is the report's too: on stdout, after it
        print(report.trace.rstrip() if args.traceback else "(the whole traceback: add --traceback)")
    return 0 if report.ok else 1


def _cmd_check_task(args: argparse.Namespace) -> int:
    from .checks.task import check_task
    from .errors import ConfigError

    try:
        report = check_task(args.task, params=_parse_params(args.param), seed=args.seed)
    except ConfigError as exc:
        field = exc.field.replace("task.name", "TASK").replace("task.", "--param ")
        raise ConfigError(field, exc.detail) from None
    print(report)
    return 0 if report.ok else 1


def _cmd_transcript(args: argparse.Namespace) -> int:
    from .results.reader import open_run

    r = open_run(args.run_dir)
    ep = int(args.episode) if args.episode.isdigit() else args.episode
    row = r._row(ep)
    variant = f", {row['variant']}" if row.get("variant") else ""
    print(f"# episode {row['episode_id']}: {row['protocol']}{variant}, seed {row['seed']}, {row['status']} "
          f"(key {row['key']})")
    for rec in r.transcript(ep):
        payload = ", ".join(f"{k}{tuple(v.shape)}" for k, v in rec["payload"].items())
        reason = f" reason={rec['reason']}" if rec["reason"] else ""
        cut = f" cut={rec['cut']}" if rec.get("cut") else ""   # points cut away to fit, never delivered
        print(f"{rec['idx']:>5} {rec['phase']:<8} {rec['kind']:<11} {rec['sender']:>7} -> {rec['receiver']:<7} "
              f"size={rec['size']:<5} cost={rec['cost']:<6g} cum={rec['cum_cost']:<8g}{cut}{reason} {payload}")
    if row["status"] != "finished":
        print(f"episode {row['episode_id']} failed after the messages above:\n{row['error'].rstrip()}")
    return 0


def _cmd_interactions(args: argparse.Namespace) -> int:
    from .analysis.interactions import RATIOS, default_grid, interaction_profile, plot_profile, profiled_points
    from .errors import ConfigError
    from .results.reader import open_run

    for flag, value in (("--points", args.points), ("--samples", args.samples), ("--pairs", args.pairs),
                        ("--grid", args.grid)):
        if value is not None and value < 1:
            raise ConfigError.expected(flag, "an integer >= 1", value)
    for ratio in args.ratios or ():
        if not (math.isfinite(ratio) and 0 <= ratio <= 1):
            raise ConfigError.expected("--ratios", "order ratios r in [0, 1] (the order is int(r (n - 2)))", ratio)
    r = open_run(args.run_dir)
    episodes = r.episodes
    if args.episode is None:
        done = episodes[episodes["status"] == "finished"]
        if done.empty:
            from .errors import RunError
            raise RunError(f"no finished episode in {r.dir}")
        episode = done["episode_id"].iloc[0]
    else:
        episode = int(args.episode) if args.episode.isdigit() else args.episode
    spec = r.spec(episode)
    budgets = [float(b) for b in r.config["budgets"]]
    budget = args.budget if args.budget is not None else max(budgets)
    if budget not in budgets:
        raise ConfigError.expected("--budget", f"one of the run's checkpoints {', '.join(f'{b:g}' for b in budgets)}",
                                   budget)
    model, task = r.student(episode, budget), r.task(episode)
    x, y = profiled_points(model, *r.test_set(episode), args.points)
    grid = args.grid if args.grid is not None else default_grid(task)
    groups = None
    if args.split == "strong":   # the judge's own split of these points, with its own settings
        from .platform.judge import strong_counterexamples

        found = strong_counterexamples(model, task, x, spec.judge, spec.seed)
        groups = {"counterexample found": found, "no counterexample": ~found}
        print(f"strong split: a teacher-certain counterexample within strong_radius {spec.judge['strong_radius']:g} "
              f"for {int(found.sum())} of {len(found)} points")
    table = interaction_profile(model, task, x, y=y, ratios=args.ratios or RATIOS, judge=spec.judge,
                                grid=grid, samples=args.samples, num_pairs=args.pairs, seed=spec.seed, groups=groups)
    table.insert(0, "budget", budget)
    table.insert(0, "episode_id", int(r._row(episode)["episode_id"]))
    csv = r.dir / "interactions.csv"
    table.to_csv(csv, index=False)
    png = plot_profile(table, r.dir / "plots" / "interactions.png",
                       title=f"episode {table['episode_id'].iloc[0]}, budget {budget:g}, "
                             f"n = {table['n_players'].iloc[0]} players")
    cols = ["group", "input", "ratio", "order", "mean_abs", "sem_abs", "mean", "coef", "points"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {csv} and {png}")
    return 0


def _warnings_in_one_line() -> None:
    """teachsim's own warnings (a plugin's odd default, a name registered twice) as one
    line each, like its errors; anyone else's as Python prints them."""
    import warnings

    from .registry import TeachsimWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, TeachsimWarning):
            print(f"teachsim: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def entry() -> None:
    """The ``teachsim`` console script (and ``python -m teachsim``): :func:`main`, then exit
    with its code."""
    leave(main())


def leave(code: int) -> None:
    """Exit the process with ``code``. Where an interrupted cohort's episode threads are
    still inside torch (a second Ctrl-C cut the wait for them short), the interpreter's
    exit would abort the process under them ("terminate called without an active
    exception", exit 134): every finished episode is committed by then and the run's lock
    released, so the process leaves at once instead, with the code the run earned."""
    cohorts = sys.modules.get("teachsim.runners.cohort")   # not imported: no cohort ran here
    if cohorts is not None and cohorts.episodes_alive():
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


_TERMINATED: list[bool] = [False]   # SIGTERM, not Ctrl-C, interrupted this command


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (a scheduler's preemption, ``timeout``, ``docker stop``, ``kill``) stops the
    command as Ctrl-C does: finished episodes committed, the lock emptied, Ray and the
    judge processes shut down, the resume command printed, exit 143. Without it Python
    dies at once and leaves the lock's text and the database's -wal file behind. A second
    SIGTERM during that shutdown ends the process at once (the default)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():   # only the main thread may set handlers
        yield
        return

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _TERMINATED[0] = True
        raise KeyboardInterrupt("SIGTERM")

    _TERMINATED[0] = False
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted() -> tuple[str, int]:
    """What to call the interruption and the exit code it earns."""
    return ("terminated (SIGTERM)", 143) if _TERMINATED[0] else ("interrupted", 130)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: runs one command and returns its exit code (:func:`entry` exits)."""
    _warnings_in_one_line()
    args = build_parser().parse_args(argv)
    with _sigterm_interrupts():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        for plugin in [*args.plugin, *getattr(args, "plugin_sub", [])]:
            registry.load_plugin(plugin)
        if args.command == "run":
            return _cmd_run(args, args.config)
        if args.command == "bench":
            return _cmd_run(args, _suite_path(args.suite))
        if args.command == "show":
            return _cmd_show(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "judge":
            return _cmd_judge(args)
        if args.command == "list":
            return _cmd_list(args)
        if args.command == "transcript":
            return _cmd_transcript(args)
        if args.command == "interactions":
            return _cmd_interactions(args)
        if args.command == "check-protocol":
            return _cmd_check_protocol(args)
        if args.command == "check-task":
            return _cmd_check_task(args)
    except TeachsimError as exc:
        print(f"teachsim: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `teachsim show RUN | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        said, code = _interrupted()
        if args.command == "judge":
            print(f"teachsim: {said}; the episodes judged so far are kept: run the same teachsim judge command "
                  "again to judge the rest", file=sys.stderr)
        else:
            print(f"teachsim: {said}", file=sys.stderr)
        return code
    return 0
