"""The judge's time per episode: as released before 2026-12-06, one checkpoint at a time,
and as shipped (all of an episode's checkpoints in one pass).

Three ways to judge the same students, in alternation per episode:

- ``before``: each checkpoint alone, with the polish's l2 projection by the primal
  active-set method (judge version 4 as first released: it cycled on the nearly parallel
  rows of the polish's pieces, about 600 iterations per call, then SLSQP);
- ``alone``: each checkpoint alone, the projection by projected Newton on the dual (the
  primal method as its fallback for what the dual cannot certify);
- ``together``: as shipped, ``judge_episode``: the teacher-relative search and the
  built-in l_p attacks run once over all of the episode's checkpoints, each block of rows
  routed to its checkpoint's student.

For each episode the conversation runs once; the script reports seconds per episode of
each way, the ratios, and whether every score is identical. The references are measured in
the same run, on the same students. Run from the repository root:

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


def judge_one_by_one(models, task, cfg, seed):
    """Each checkpoint judged alone (``judge()``'s path), as rows like ``judge_episode``'s."""
    from teachsim.platform import judge as J

    test = J.make_test_set(task, cfg, seed)
    rows = []
    for budget in sorted(models):
        rows += [(budget, k, v) for k, v in J.judge(models[budget], task, test, cfg, seed).items()]
    return rows


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
    ways = ("before", "alone", "together")
    rows = []
    for spec in episodes(args.suite, args.seeds):
        task, models = checkpoints(spec)
        cfg = {**spec.judge, "attack_sets": []}
        timing, scores = {}, {}
        for way in ways:   # the references first: nothing they leave warms the shipped way
            exact._l2_dual = (lambda *a, **k: None) if way == "before" else dual
            t = time.perf_counter()
            if way == "together":
                got = judge_episode(models, task, cfg, spec.seed)[0]
            else:
                got = judge_one_by_one(models, task, cfg, spec.seed)
            timing[way] = time.perf_counter() - t
            scores[way] = sorted(got, key=repr)   # NaN-safe comparison by text
        exact._l2_dual = dual
        same = repr(scores["before"]) == repr(scores["alone"]) == repr(scores["together"])
        row = {"episode": spec.key, "protocol": spec.label, "seed": spec.seed,
               **{f"{w}_s": timing[w] for w in ways}, "identical": same}
        rows.append(row)
        print(f"{spec.label:32s} seed {spec.seed}: before {timing['before']:6.1f} s, alone {timing['alone']:5.1f} s, "
              f"together {timing['together']:5.1f} s ({timing['alone'] / timing['together']:4.2f}x alone); "
              f"identical scores: {same}", flush=True)
    total = {w: sum(r[f"{w}_s"] for r in rows) for w in ways}
    print(f"all {len(rows)} episodes: before {total['before']:.1f} s, alone {total['alone']:.1f} s, together "
          f"{total['together']:.1f} s; together {total['alone'] / total['together']:.2f}x alone, "
          f"{total['before'] / total['together']:.2f}x before; identical scores: {all(r['identical'] for r in rows)}",
          flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
