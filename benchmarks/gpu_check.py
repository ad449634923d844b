"""The GPU path, checked and timed on a machine that has a GPU, in one call.

A plan is a list of ``SUITE[@SEEDS]:MODE[,MODE...]`` items, run in order; each runs the
built-in suite (``@0-1``: only those seeds) on Ray in each mode:

- ``gpu``: four episodes share the GPU (``--gpus-per-episode 0.25``), one at a time each;
- ``gpu-cohort``: one worker per GPU advancing a cohort (``--gpus-per-episode 1 --cohort
  auto``: up to 64 episodes, their students trained as one batched model);
- ``cpu``: the 2-core CPU reference: 2 workers, 1 CPU each, ``--cohort auto`` (what the
  2-core machine runs), measured in the same call.

For each it prints episodes per minute, the devices the episodes ran on and, against the
``cpu`` run of the same suite, the speed ratio and how far the scores are apart (a GPU's
float arithmetic differs from the CPU's in the last bits, so scores may differ a little;
more than that is a bug). Each result is also appended to ``--json`` as it comes, so a
call cut short keeps what it measured. One local Ray (127.0.0.1 only) serves every run, so
its start-up is paid once and timed apart.

Exit 0 when every episode finished and every GPU-mode episode ran on ``cuda``; 1 if not;
2 without a usable CUDA device, unless ``--dry-run``: then Ray is given one logical GPU
and every mode runs on the CPU, which checks this script and the GPU-mode plumbing
(resources, packing, cohorts) on any machine without a number worth recording.

Run from the repository root through ``scripts/gpu-check`` (it sets up the environment),
e.g. ``scripts/gpu-check quick:gpu-cohort,cpu,gpu paper@0:gpu-cohort,cpu --json out.json``.
Not a test and never imported by the package. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path

MODES = {
    "gpu": {"gpus_per_episode": 0.25, "cohort": 1},
    "gpu-cohort": {"gpus_per_episode": 1, "cohort": "auto"},
    "cpu": {"workers": 2, "cohort": "auto"},
}
DEFAULT_PLAN = ["quick:gpu-cohort,cpu,gpu"]


def parse_item(item: str) -> tuple[str, list[int] | None, list[str]]:
    """``"paper@0-1:gpu-cohort,cpu"`` -> ``("paper", [0, 1], ["gpu-cohort", "cpu"])``.

    >>> parse_item("quick:gpu,cpu")
    ('quick', None, ['gpu', 'cpu'])
    >>> parse_item("paper@0,2-3:gpu-cohort")
    ('paper', [0, 2, 3], ['gpu-cohort'])
    """
    suite, _, modes = item.partition(":")
    suite, _, seeds = suite.partition("@")
    chosen = None
    if seeds:
        chosen = []
        for part in seeds.split(","):
            lo, _, hi = part.partition("-")
            chosen += list(range(int(lo), int(hi or lo) + 1))
    names = [m for m in modes.split(",") if m] or list(MODES)
    bad = [m for m in names if m not in MODES]
    if not suite or bad:
        raise SystemExit(f"gpu-check: bad plan item {item!r}: expected SUITE[@SEEDS]:MODE[,MODE...] with modes "
                         f"among {', '.join(MODES)}")
    return suite, chosen, names


def suite_config(suite: str, seeds: list[int] | None) -> dict:
    from teachsim.cli import SUITES_DIR

    path = SUITES_DIR / f"{suite}.toml"
    if not path.exists():
        raise SystemExit(f"gpu-check: no built-in suite {suite!r}")
    cfg = tomllib.loads(path.read_text())
    if seeds is not None:
        cfg["seeds"] = seeds
    return cfg


def start_ray(dry_run: bool) -> float:
    """One local Ray for every run, on 127.0.0.1 only; returns its start-up seconds."""
    import ray

    t = time.perf_counter()
    extra = {"num_gpus": 1} if dry_run else {}
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level=logging.WARNING, log_to_driver=False, **extra)
    return time.perf_counter() - t


def score_gap(a, b) -> dict:
    """How far two runs' scores of the same episodes are apart: the largest difference of
    any score, and the largest difference of a metric's mean over all episodes."""
    keys = ["protocol", "variant", "seed", "budget", "metric"]
    left = a.scores.set_index(keys)["value"]
    right = b.scores.set_index(keys)["value"]
    both = left.to_frame("a").join(right.to_frame("b"), how="inner")
    diff = (both["a"] - both["b"]).abs()
    means = both.groupby(level="metric").mean()
    return {"compared": int(len(both)), "max_abs": float(diff.max()) if len(diff) else float("nan"),
            "mean_of_metric_max_abs": float((means["a"] - means["b"]).abs().max()) if len(means) else float("nan")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("plan", nargs="*", default=DEFAULT_PLAN, help="SUITE[@SEEDS]:MODE[,MODE...] (default: %(default)s)")
    p.add_argument("--json", help="append one JSON line per run here as it finishes")
    p.add_argument("--keep", metavar="DIR", help="keep the run directories under DIR")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds after which no further run starts (those are reported skipped)")
    p.add_argument("--dry-run", action="store_true",
                   help="no CUDA needed: one logical GPU, every mode on the CPU (checks the script, not the speed)")
    args = p.parse_args(argv)
    plan = [parse_item(item) for item in args.plan]
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # Ray on 127.0.0.1 only

    import torch

    import teachsim

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("gpu-check: no usable CUDA device here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(0) if cuda else "no GPU (dry run: every mode on the CPU)"
    print(f"gpu-check: {where}, torch {torch.__version__}, teachsim {teachsim.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)
    work = Path(args.keep or tempfile.mkdtemp(prefix="gpu-check-"))
    t_start = time.perf_counter()
    import ray

    ok = True
    try:
        print(f"ray: started in {start_ray(args.dry_run):.1f} s, {ray.cluster_resources()}", flush=True)
        for suite, seeds, modes in plan:
            cfg = suite_config(suite, seeds)
            tag = suite + (f"@{','.join(map(str, seeds))}" if seeds is not None else "")
            runs, rates = {}, {}
            for mode in modes:
                if args.deadline is not None and time.perf_counter() - t_start > args.deadline:
                    print(f"{tag} {mode}: skipped (past --deadline {args.deadline:g} s)", flush=True)
                    continue
                out = work / f"{tag}-{mode}".replace("@", "_").replace(",", "_")
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                run = teachsim.run(cfg, out=out, executor="ray", progress=False, **MODES[mode])
                seconds = time.perf_counter() - t
                eps = run.episodes
                finished = int((eps["status"] == "finished").sum())
                devices = sorted(set(eps["device"].fillna("?").astype(str)))
                runs[mode], rates[mode] = run, 60 * finished / seconds
                row = {"suite": tag, "mode": mode, "episodes": int(len(eps)), "finished": finished,
                       "seconds": seconds, "per_min": rates[mode], "devices": devices, "gpu": where,
                       "dry_run": args.dry_run,
                       "failed": [str(e) for e in eps.loc[eps["status"] != "finished", "error"].head(3)]}
                print(f"{tag} {mode}: {finished}/{len(eps)} episodes in {seconds:.1f} s = {rates[mode]:.1f} "
                      f"episodes/min; devices {devices}", flush=True)
                ok &= finished == len(eps)
                if mode.startswith("gpu") and not args.dry_run and not all(d.startswith("cuda") for d in devices):
                    print(f"gpu-check: FAIL: {tag} {mode}: episodes ran on {devices}, not all on cuda", file=sys.stderr)
                    ok = False
                # against the CPU reference, whichever of the two ran first
                pairs = [m for m in runs if m != "cpu"] if mode == "cpu" else [mode] if "cpu" in runs else []
                for other in pairs:
                    gap = {**score_gap(runs[other], runs["cpu"]), "ratio": rates[other] / rates["cpu"]}
                    row.setdefault("vs_cpu", {})[other] = gap
                    print(f"  {other} / cpu: {gap['ratio']:.2f}x episodes per minute; {gap['compared']} scores "
                          f"compared, largest difference {gap['max_abs']:.4g}, of a metric's mean "
                          f"{gap['mean_of_metric_max_abs']:.4g}", flush=True)
                if args.json:
                    with open(args.json, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
