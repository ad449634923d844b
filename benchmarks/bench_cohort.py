"""Cohorts: episode throughput of N suite episodes run as one cohort against the same N
run one at a time, in one process, and the training step alone.

1. Training only (``teachsim.agents.cohort.fit_together``): K students of the quick
   suite's shape (mlp 50-100-2, 300 Adam steps on 400 points, batches of 128), trained
   one at a time against stacked as one cohort, for erm and pgd-at (l2, eps 2). Reports
   student-steps per second of each and the ratio, and checks the weights are equal.
2. Whole episodes: the first N episodes of a built-in suite (``--suite``, default quick;
   seeds 0.. as many as N needs, the paper suite's first sweep values first), one at a
   time (``run_serial``) and as one cohort of N (``run_cohort``), in this process, one
   torch thread. Reports episodes per minute of each, the ratio, and whether every
   episode's transcript and scores are identical. With ``--before`` it also runs them one
   at a time with the judge as judge version 4 was released: the polish's l2 projection by
   the primal active-set method, and each checkpoint judged in a pass of its own
   (``bench_judge.py``), the speed of this project before 2026-12-06. With
   ``--no-judge`` both runs skip the judge (every episode's scores are empty): the ratio a
   cohort would reach if judging cost nothing, the ceiling of what batching the training
   and the protocol turns can give.

The one-at-a-time runs are the references, measured in the same run. Run from the
repository root:

    .venv/bin/python benchmarks/bench_cohort.py [--suite quick] [--episodes 32] [--students 32]
        [--variant V] [--before] [--no-judge] [--json out.json]

Not a test and never imported by the package. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def training(students: int) -> list[dict]:
    from teachsim import registry
    from teachsim.agents import cohort as C
    from teachsim.agents.models import mlp
    from teachsim.agents.student import Student
    from teachsim.platform.build import build_task

    task = build_task({"name": "hidden-feature", "dim": 50, "manifold_dim": 2}, 0)

    def make(seed: int, method: str, params: dict) -> C.Request:
        model = mlp(50, 2, hidden=[100], init_std=0.5, generator=torch.Generator().manual_seed(seed))
        s = Student(model, registry.methods.get(method).factory, task.data, 2, seed=seed, steps=300,
                    method_params=params)
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(400, 50)).astype(np.float32)
        return C.Request(s, X, (X[:, 0] > 0).astype(np.int64), 300, torch.Generator().manual_seed(seed))

    rows = []
    for method, params in (("erm", {}), ("pgd-at", {"eps": 2.0, "norm": "l2"})):
        alone = [make(i, method, params) for i in range(students)]
        t = time.perf_counter()
        for r in alone:
            C.fit_together([r])
        t_alone = time.perf_counter() - t
        together = [make(i, method, params) for i in range(students)]
        t = time.perf_counter()
        C.fit_together(together)
        t_together = time.perf_counter() - t
        same = all(torch.equal(p, q) for a, b in zip(alone, together)
                   for p, q in zip(a.model.parameters(), b.model.parameters()))
        steps = students * 300
        rows.append({"method": method, "students": students, "alone_steps_per_s": steps / t_alone,
                     "cohort_steps_per_s": steps / t_together, "ratio": t_alone / t_together, "identical": same})
        print(f"training {method:>6}: {students} students x 300 steps: alone {t_alone:6.1f} s, cohort "
              f"{t_together:6.1f} s, ratio {t_alone / t_together:.2f}x, weights identical: {same}", flush=True)
    return rows


def _same(a, b) -> tuple[bool, bool]:
    """Whether two runs' results (key -> EpisodeResult) have equal scores and transcripts."""
    scores = all(a[k].scores == b[k].scores for k in a)
    messages = all(a[k].messages == b[k].messages and a[k].payloads.keys() == b[k].payloads.keys()
                   and all(np.array_equal(a[k].payloads[p], b[k].payloads[p]) for p in a[k].payloads) for k in a)
    return scores, messages


def episodes(suite: str, n: int, before: bool, variant: str | None = None, judged: bool = True) -> dict:
    from teachsim import config as config_mod
    from teachsim.attacks import exact
    from teachsim.cli import SUITES_DIR
    from teachsim.platform import judge
    from teachsim.platform.episode import warm_up
    from teachsim.runners.cohort import run_cohort
    from teachsim.runners.serial import run_serial
    import tomllib

    cfg = tomllib.loads((SUITES_DIR / f"{suite}.toml").read_text())
    variants = 1 if variant else max([len(v) for v in cfg.get("sweep", {}).values()] or [1])
    per_seed = len(cfg["protocols"]) * variants
    cfg["seeds"] = list(range(-(-n // per_seed)))
    specs = [s for s in config_mod.load(cfg).episodes if variant is None or s.variant == variant]
    if not specs:
        raise SystemExit(f"no episode of the {suite} suite has the variant {variant!r}")
    specs = sorted(specs, key=lambda s: s.seed)[:n]   # seed 0's episodes first
    out = {"suite": suite, "variant": variant, "episodes": n, "judged": judged}
    warm_up()   # the first episode's imports (torch._dynamo: about 2 s) are charged to neither run
    if not judged:   # the ceiling: a judge that costs nothing (run_episode reads the module's name per call)
        judge.judge_episodes = lambda eps, *a, **k: [([], [], {}) for _ in eps]
    if before:   # the judge as released with version 4: the dual off, one checkpoint per pass
        dual, exact._l2_dual = exact._l2_dual, (lambda *a, **k: None)
        cap, judge.TOGETHER_ELEMENTS = judge.TOGETHER_ELEMENTS, 0
        try:
            t = time.perf_counter()
            old = {r.spec.key: r for r, _ in run_serial(specs)}
            out["before_s"] = time.perf_counter() - t
        finally:
            exact._l2_dual, judge.TOGETHER_ELEMENTS = dual, cap
    t = time.perf_counter()
    one = {r.spec.key: r for r, _ in run_serial(specs)}
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    many = {r.spec.key: r for r, _ in run_cohort(specs, size=n)}
    t_many = time.perf_counter() - t
    same_scores, same_messages = _same(one, many)
    finished = sum(r.status == "finished" for r in many.values())
    out.update({"one_at_a_time_s": t_one, "cohort_s": t_many, "ratio": t_one / t_many,
                "one_per_min": 60 * n / t_one, "cohort_per_min": 60 * n / t_many, "identical_scores": same_scores,
                "identical_transcripts": same_messages, "finished": finished})
    what = f"{n} {suite}-suite episodes" + ("" if judged else " (not judged)")
    print(f"episodes: {what}: one at a time {t_one:6.1f} s ({out['one_per_min']:.1f}/min), "
          f"cohort {t_many:6.1f} s ({out['cohort_per_min']:.1f}/min), ratio {out['ratio']:.2f}x; identical "
          f"transcripts {same_messages}, scores {same_scores}; {finished}/{n} finished", flush=True)
    if before:
        old_scores, old_messages = _same(old, one)
        out.update({"before_per_min": 60 * n / out["before_s"], "before_identical_scores": old_scores,
                    "before_identical_transcripts": old_messages,
                    "cohort_vs_before": out["before_s"] / t_many, "one_vs_before": out["before_s"] / t_one})
        print(f"before (judge v4 as released), one at a time: {out['before_s']:6.1f} s "
              f"({out['before_per_min']:.1f}/min); now one at a time {out['one_vs_before']:.2f}x that, cohort "
              f"{out['cohort_vs_before']:.2f}x; identical transcripts {old_messages}, scores {old_scores}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="quick", help="a built-in suite (default quick)")
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--students", type=int, default=32)
    p.add_argument("--variant", default=None,
                   help="only this sweep variant, as the run directory names it (e.g. 'dim=20')")
    p.add_argument("--before", action="store_true",
                   help="also run the episodes one at a time with judge version 4's polish solver")
    p.add_argument("--no-judge", action="store_true",
                   help="skip the judge in both runs: the ratio if judging cost nothing")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, python {sys.version.split()[0]}", flush=True)
    result = {"training": training(args.students) if args.students else None, "episodes": None}
    if args.episodes:
        result["episodes"] = episodes(args.suite, args.episodes, args.before, args.variant, not args.no_judge)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
