"""Cohorts: episode throughput of N quick-suite episodes run as one cohort against the
same N run one at a time, in one process, and the training step alone.

1. Training only (``teachsim.agents.cohort.fit_together``): K students of the quick
   suite's shape (mlp 50-100-2, 300 Adam steps on 400 points, batches of 128), trained
   one at a time against stacked as one cohort, for erm and pgd-at (l2, eps 2). Reports
   student-steps per second of each and the ratio, and checks the weights are equal.
2. Whole episodes: the first N episodes of the quick suite with seeds 0.. (so N can be
   32), one at a time (``run_serial``) and as one cohort of N (``run_cohort``), in this
   process, one torch thread. Reports episodes per minute of each, the ratio, and
   whether every episode's transcript and scores are identical.

The one-at-a-time run is the reference measured in the same run. Run from the
repository root:

    .venv/bin/python benchmarks/bench_cohort.py [--episodes 32] [--students 32] [--json out.json]

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


def episodes(n: int) -> dict:
    from teachsim import config as config_mod
    from teachsim.cli import SUITES_DIR
    from teachsim.platform.episode import transcript_rows  # noqa: F401  (same module the runs use)
    from teachsim.runners.cohort import run_cohort
    from teachsim.runners.serial import run_serial
    import tomllib

    cfg = tomllib.loads((SUITES_DIR / "quick.toml").read_text())
    per_seed = len(cfg["protocols"])
    cfg["seeds"] = list(range(-(-n // per_seed)))
    specs = list(config_mod.load(cfg).episodes)[:n]
    t = time.perf_counter()
    one = {r.spec.key: r for r, _ in run_serial(specs)}
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    many = {r.spec.key: r for r, _ in run_cohort(specs, size=n)}
    t_many = time.perf_counter() - t
    same_scores = all(one[k].scores == many[k].scores for k in one)
    same_messages = all(one[k].messages == many[k].messages and one[k].payloads.keys() == many[k].payloads.keys()
                        and all(np.array_equal(one[k].payloads[p], many[k].payloads[p]) for p in one[k].payloads)
                        for k in one)
    finished = sum(r.status == "finished" for r in many.values())
    out = {"episodes": n, "one_at_a_time_s": t_one, "cohort_s": t_many, "ratio": t_one / t_many,
           "one_per_min": 60 * n / t_one, "cohort_per_min": 60 * n / t_many, "identical_scores": same_scores,
           "identical_transcripts": same_messages, "finished": finished}
    print(f"episodes: {n} quick-suite episodes: one at a time {t_one:6.1f} s ({out['one_per_min']:.1f}/min), "
          f"cohort {t_many:6.1f} s ({out['cohort_per_min']:.1f}/min), ratio {out['ratio']:.2f}x; identical "
          f"transcripts {same_messages}, scores {same_scores}; {finished}/{n} finished", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--students", type=int, default=32)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, python {sys.version.split()[0]}", flush=True)
    result = {"training": training(args.students) if args.students else None,
              "episodes": episodes(args.episodes) if args.episodes else None}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
