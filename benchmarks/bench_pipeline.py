"""The whole pipeline: wall time, peak memory and episodes per minute of a suite, by workers.

Runs ``teachsim bench SUITE`` (default ``quick``) as a user would, in a fresh run
directory each time, once with the serial executor and once per ``--workers`` value with
the Ray executor, and reports for each:

- wall time of the whole command (start-up, Ray, every episode, summary and report);
- episodes per minute (finished episodes / wall time);
- peak memory of the whole process tree (the driver, Ray's daemons and workers): the
  largest sum over its processes of PSS (proportional set size, so pages shared between
  processes count once), sampled every 0.2 s from /proc; and the driver's own peak RSS;
- CPU seconds other processes on the machine used meanwhile (a fairness check).

The serial run is the reference measured in the same run: ``speed-up = t_serial / t_N``.

Run from the repository root:

    .venv/bin/python benchmarks/bench_pipeline.py [--suite quick] [--workers 1 2] [--json out.json]

Not a test and never imported by the package. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_ray import ForeignLoad, environment  # noqa: E402  (same folder; a script, not a package)

TEACHSIM = Path(sys.executable).with_name("teachsim")


def _tree_memory(session: int) -> tuple[int, int]:
    """(sum of PSS over the processes of a session, number of those processes), in bytes."""
    total, count = 0, 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[3]) != session:
                    continue
            with open(f"/proc/{entry}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        count += 1
                        break
        except (OSError, IndexError, ValueError):
            continue
    return total, count


class PeakMemory:
    """Samples the process tree of a session until stopped; keeps the peak."""

    def __init__(self, session: int, interval: float = 0.2):
        self.session, self.interval = session, interval
        self.peak, self.processes = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            total, count = _tree_memory(self.session)
            if total > self.peak:
                self.peak, self.processes = total, count

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_suite(suite: str, out: Path, options: list[str]) -> dict:
    """One ``teachsim bench`` in a new session (its Ray processes stay in that session)."""
    cmd = [str(TEACHSIM), "bench", suite, "--out", str(out), *options]
    # time -f: the driver's own peak RSS; the tree's peak comes from PeakMemory
    wrapped = ["/usr/bin/time", "-f", "%M", "-o", str(out) + ".maxrss", *cmd] if shutil.which("time") else cmd
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with ForeignLoad() as foreign:
        t0 = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=env)
        foreign.sessions.add(proc.pid)      # the suite's own processes are not foreign load
        peak = PeakMemory(proc.pid)
        stdout, stderr = proc.communicate()
        seconds = time.perf_counter() - t0
        peak.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-2000:]}")
    import teachsim

    eps = teachsim.open_run(out).episodes
    finished = int((eps["status"] == "finished").sum())
    rss_file = Path(str(out) + ".maxrss")
    driver_rss = int(rss_file.read_text().split()[-1]) * 1024 if rss_file.exists() else None
    return {"options": options, "seconds": seconds, "episodes": finished,
            "episodes_per_min": finished / seconds * 60, "peak_tree_pss_bytes": peak.peak,
            "peak_tree_processes": peak.processes, "driver_peak_rss_bytes": driver_rss,
            "foreign_cpu_s": foreign.seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="quick", help="suite to run (default quick)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    ap.add_argument("--no-serial", action="store_true", help="skip the serial reference")
    ap.add_argument("--json", metavar="PATH", help="also write the numbers as JSON here")
    args = ap.parse_args(argv)

    env = environment()
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    plans = ([] if args.no_serial else [("serial", ["--executor", "serial"])])
    plans += [(f"ray, {n} worker{'s' if n > 1 else ''}", ["--executor", "ray", "--workers", str(n)])
              for n in args.workers]
    rows = []
    print(f"\n`teachsim bench {args.suite}`, whole command, fresh run directory each time\n")
    print(f"{'executor':<16} {'wall s':>8} {'episodes':>9} {'eps/min':>8} {'speed-up':>9} "
          f"{'peak tree MiB':>14} {'procs':>6} {'driver MiB':>11} {'other CPU s':>12}")
    for i, (name, options) in enumerate(plans):
        r = run_suite(args.suite, work / f"run{i}", options)
        r["executor"] = name
        rows.append(r)
        ref = rows[0]["seconds"] if not args.no_serial else None
        speed = f"{ref / r['seconds']:.2f}" if ref else "-"
        driver = f"{r['driver_peak_rss_bytes'] / 2**20:.0f}" if r["driver_peak_rss_bytes"] else "-"
        print(f"{name:<16} {r['seconds']:8.1f} {r['episodes']:9d} {r['episodes_per_min']:8.1f} {speed:>9} "
              f"{r['peak_tree_pss_bytes'] / 2**20:14.0f} {r['peak_tree_processes']:6d} {driver:>11} "
              f"{r['foreign_cpu_s']:12.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "suite": args.suite, "runs": rows}, f, indent=2)
        print(f"\nwrote {args.json}")
    print(f"(run directories left in {work})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
