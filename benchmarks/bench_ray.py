"""The Ray executor: parallel efficiency on the default suite, and per-episode overhead.

(a) the packaged default suite ``quick`` run with 1 worker, then with 2 workers, on one
    local Ray with 2 CPUs: parallel efficiency ``t1 / (2 * t2)`` (target: >= 0.85).
(b) tiny episodes, the Ray executor with 1 worker against the serial executor (the
    reference, in the same run): per-episode overhead ``(t_ray - startup) / t_serial - 1``
    (target: <= 10%), where ``startup`` is the Ray executor's fixed cost per run (worker
    process start, its imports and first-episode warm-up), measured separately as
    ``t_ray(1 episode) - t_serial / N``. ``ray.init`` itself, paid once per run of
    ``teachsim run``, is reported apart.

Run from the repository root:

    .venv/bin/python benchmarks/bench_ray.py [--repeats 3] [--tiny-seeds 50] [--json out.json]

Not a test and never imported by the package. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import tomllib
from datetime import date
from importlib import resources
from pathlib import Path

TARGET_EFFICIENCY = 0.85
TARGET_OVERHEAD = 0.10

# The tests' tiny experiment (tests/tiny.py): episodes of about a tenth of a second.
TINY = {
    "name": "tiny", "seeds": [0, 1], "budgets": [0, 10, 20],
    "task": {"name": "hidden-feature", "dim": 6, "manifold_dim": 2},
    "student": {"hidden": [16], "steps": 30, "initial_labels": 10},
    "judge": {"test_points": 100, "steps": 10, "restarts": 1, "strong_steps": 10, "strong_restarts": 1},
    "protocols": [{"name": "passive"}, {"name": "passive", "batch": 5}],
}


def _cpu_by_session() -> dict[int, tuple[int, int]]:
    """pid -> (session id, CPU ticks used so far), for every live process (Linux /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            out[int(entry)] = (int(fields[3]), int(fields[11]) + int(fields[12]))
    return out


class ForeignLoad:
    """CPU seconds that processes outside this benchmark's session used during a block.

    Every process of the benchmark (its Ray daemons and workers included) is in its
    session; anything else that runs meanwhile competes for the same 2 cores and makes the
    timings unfair. Processes that start and end between two samples are missed.
    """

    def __init__(self, interval: float = 0.5):
        self.interval, self.seconds, self._stop = interval, 0.0, threading.Event()
        self.sessions = {os.getsid(0)}    # add the session of a benchmarked child started in its own
        self.ticks = os.sysconf("SC_CLK_TCK")

    def _loop(self) -> None:
        last = _cpu_by_session()
        while not self._stop.wait(self.interval):
            now = _cpu_by_session()
            for pid, (sid, cpu) in now.items():
                if sid not in self.sessions and pid in last:
                    self.seconds += max(0, cpu - last[pid][1]) / self.ticks
            last = now

    def __enter__(self) -> ForeignLoad:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_run(config, out: Path, **options) -> tuple[float, float]:
    """Wall-clock seconds of one ``teachsim.run`` into a fresh directory (all episodes must
    finish), and the CPU seconds other processes on the machine used meanwhile."""
    import teachsim

    options = {"cohort": 1, **options}   # one episode at a time per worker: what these targets measure
    with ForeignLoad() as foreign:
        t0 = time.perf_counter()
        r = teachsim.run(copy.deepcopy(config), out=out, progress=False, **options)
        seconds = time.perf_counter() - t0
    eps = r.episodes
    assert (eps["status"] == "finished").all(), eps[eps["status"] != "finished"]["error"].tolist()
    return seconds, foreign.seconds


def environment() -> dict:
    """Set up Ray's environment as teachsim's embedded Ray has it, print and return the versions."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")   # as teachsim's embedded Ray does
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # single-node Ray: loopback only
    import ray
    import torch

    import teachsim

    env = {"teachsim": teachsim.__version__, "ray": ray.__version__, "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "date": date.today().isoformat()}
    print(f"teachsim {env['teachsim']}, ray {env['ray']}, torch {env['torch']}, python {env['python']}, "
          f"{env['machine']}, {env['cpus']} CPUs, {env['date']}")
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of the overhead measurement (default 3)")
    ap.add_argument("--tiny-seeds", type=int, default=50, help="seeds of the tiny experiment (x 2 protocols)")
    ap.add_argument("--skip-suite", action="store_true", help="only part (b)")
    ap.add_argument("--json", metavar="PATH", help="also write the numbers as JSON here")
    args = ap.parse_args(argv)

    env = environment()
    import ray

    results: dict = {"env": env, "target_efficiency": TARGET_EFFICIENCY, "target_overhead": TARGET_OVERHEAD}
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))

    # one local Ray for everything below: ray.init is timed once, on its own
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    t_init = time.perf_counter() - t0
    results["ray_init_s"] = t_init
    print(f"ray.init (local, 2 CPUs): {t_init:.2f} s (paid once per `teachsim run`, not per episode)")

    try:
        if not args.skip_suite:
            quick = tomllib.loads(resources.files("teachsim").joinpath("suites/quick.toml").read_text())
            n = len(quick["seeds"]) * len(quick["protocols"])
            print(f"\n(a) the default suite `quick` ({n} episodes), 1 worker vs 2 workers")
            t1, f1 = timed_run(quick, work / "quick-1", executor="ray", workers=1)
            print(f"  1 worker : {t1:8.1f} s   (other processes used {f1:.1f} CPU s meanwhile)")
            t2, f2 = timed_run(quick, work / "quick-2", executor="ray", workers=2)
            print(f"  2 workers: {t2:8.1f} s   (other processes used {f2:.1f} CPU s meanwhile)")
            eff = t1 / (2 * t2)
            results["suite"] = {"episodes": n, "t1_s": t1, "t2_s": t2, "efficiency": eff,
                                "foreign_cpu_s": [f1, f2]}
            print(f"  parallel efficiency t1 / (2 t2) = {eff:.3f}  (target >= {TARGET_EFFICIENCY}: "
                  f"{'OK' if eff >= TARGET_EFFICIENCY else 'BELOW TARGET'})")

        tiny = copy.deepcopy(TINY)
        tiny["seeds"] = list(range(args.tiny_seeds))
        one = copy.deepcopy(TINY)
        one["seeds"], one["protocols"] = [0], one["protocols"][:1]
        n = len(tiny["seeds"]) * len(tiny["protocols"])
        print(f"\n(b) per-episode overhead: {n} tiny episodes, Ray with 1 worker vs serial "
              f"(median of {args.repeats}; serial and Ray alternate)")
        timed_run(tiny, work / "warm", executor="serial")          # warm the driver up (imports, first calls)
        serial, ray1, ray_one, foreign = [], [], [], []
        for i in range(args.repeats):
            for times, cfg, name, opts in ((serial, tiny, "s", {"executor": "serial"}),
                                           (ray1, tiny, "r", {"executor": "ray", "workers": 1}),
                                           (ray_one, one, "o", {"executor": "ray", "workers": 1})):
                seconds, other = timed_run(cfg, work / f"{name}{i}", **opts)
                times.append(seconds)
                foreign.append(other)
        t_s, t_r, t_one = (statistics.median(v) for v in (serial, ray1, ray_one))
        startup = t_one - t_s / n
        overhead = (t_r - startup) / t_s - 1
        # the same from the fastest run of each kind (the least disturbed by other load)
        overhead_min = (min(ray1) - (min(ray_one) - min(serial) / n)) / min(serial) - 1
        # and per repeat (serial, Ray and the start-up probe ran back to back)
        paired = [(r - (o - s / n)) / s - 1 for s, r, o in zip(serial, ray1, ray_one)]
        results["overhead"] = {"episodes": n, "serial_s": serial, "ray_s": ray1, "ray_one_episode_s": ray_one,
                               "startup_s": startup, "overhead": overhead, "overhead_min": overhead_min,
                               "overhead_per_repeat": paired, "foreign_cpu_s": sum(foreign)}
        print(f"  serial            : {t_s:7.2f} s  ({t_s / n * 1000:.0f} ms per episode)   runs: "
              + ", ".join(f"{v:.2f}" for v in serial))
        print(f"  ray, 1 worker     : {t_r:7.2f} s   runs: " + ", ".join(f"{v:.2f}" for v in ray1))
        print(f"  ray, one episode  : {t_one:7.2f} s  -> fixed start-up per run {startup:.2f} s   runs: "
              + ", ".join(f"{v:.2f}" for v in ray_one))
        print(f"  overhead (t_ray - startup) / t_serial - 1 = {overhead:+.1%} from the medians, "
              f"{overhead_min:+.1%} from the mins, per repeat " + ", ".join(f"{v:+.1%}" for v in paired))
        print(f"  target <= {TARGET_OVERHEAD:.0%}: {'OK' if overhead <= TARGET_OVERHEAD else 'ABOVE TARGET'} "
              f"(from the medians); other processes used {sum(foreign):.1f} CPU s during part (b)")
    finally:
        ray.shutdown()

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")
    print(f"(run directories left in {work})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
