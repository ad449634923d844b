"""The judge's time per episode, with the polish's l2 projection as it is and as it was.

The teacher-relative search ends with a linearise-and-project polish that computes, for
every point it has not broken, the nearest point of a few polyhedra (an l2 projection:
``teachsim.attacks.exact.min_distance``). Judge version 4 solved each by a primal
active-set method from the vertex an LP gives; it cycled on the nearly parallel rows
these pieces have (600 iterations per call on average, then SLSQP) and was most of the
judge's time on students it could not break. Now a projected Newton method on the dual
solves them, and the primal method stays as the fallback for what the dual cannot
certify (an empty polyhedron).

For each episode this script runs the conversation once, then judges its checkpoints
twice, in alternation: with the dual turned off (the reference: what the judge did
before) and as shipped. It reports seconds per episode of each, the ratio, and whether
every score is identical. The reference is measured in the same run, on the same
students. Run from the repository root:

    .venv/bin/python benchmarks/bench_judge.py [--suite quick] [--seeds 0] [--json out.json]

Not a test and never imported by the package. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import torch


def episodes(suite: str, seeds: list[int]):
    from teachsim import config as config_mod
    from teachsim.cli import SUITES_DIR

    cfg = tomllib.loads((SUITES_DIR / f"{suite}.toml").read_text())
    cfg["seeds"] = seeds
    cfg.pop("sweep", None)   # the suite's first variant
    return list(config_mod.load(cfg).episodes)


def checkpoints(spec):
    """The episode's task and its students at every checkpoint (the conversation run once)."""
    from teachsim.platform.build import build_model, build_task
    from teachsim.platform.episode import run_episode

    result = run_episode(spec)
    if result.status != "finished":
        raise SystemExit(f"episode {spec.key} failed: {result.error}")
    task = build_task(spec.task, spec.seed)
    models = {}
    for budget, weights in result.snapshots.items():
        models[budget] = build_model(spec.student, task, spec.seed)
        models[budget].load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return task, models


def main() -> int:
    from teachsim.attacks import exact
    from teachsim.platform.judge import judge_episode

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="quick", help="a built-in suite (default quick)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, python {sys.version.split()[0]}; suite {args.suite}, "
          f"seeds {args.seeds}", flush=True)
    dual = exact._l2_dual
    rows = []
    for spec in episodes(args.suite, args.seeds):
        task, models = checkpoints(spec)
        timing, scores = {}, {}
        for name in ("before", "now"):   # the reference first: nothing it leaves warms the other
            exact._l2_dual = (lambda *a, **k: None) if name == "before" else dual
            t = time.perf_counter()
            scores[name] = judge_episode(models, task, spec.judge, spec.seed)[0]
            timing[name] = time.perf_counter() - t
        exact._l2_dual = dual
        label = spec.label
        row = {"episode": spec.key, "protocol": label, "seed": spec.seed, "before_s": timing["before"],
               "now_s": timing["now"], "ratio": timing["before"] / timing["now"],
               "identical": scores["before"] == scores["now"]}
        rows.append(row)
        print(f"{label:32s} seed {spec.seed}: judge before {timing['before']:6.1f} s, now {timing['now']:5.1f} s, "
              f"{row['ratio']:5.1f}x; identical scores: {row['identical']}", flush=True)
    before, now = sum(r["before_s"] for r in rows), sum(r["now_s"] for r in rows)
    print(f"all {len(rows)} episodes: judge before {before:.1f} s, now {now:.1f} s, {before / now:.1f}x; "
          f"identical scores: {all(r['identical'] for r in rows)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
