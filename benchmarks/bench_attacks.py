"""Attack and judge timings, in one run on the same models and data.

(a) ``pgd`` throughput against a minimal hand-written torch PGD loop (same steps,
    restarts, random start and loss; no bookkeeping): points x steps per second and the
    time ratio ours / reference (target: <= 1.1).
(b) the judge's time per checkpoint on the quick suite's task and a student trained as
    the quick suite trains it, broken down into the l_p attack and the strong (teacher)
    search.

Run from the repository root:

    .venv/bin/python benchmarks/bench_attacks.py [--repeats 5] [--json out.json]

Not a test and never imported by the package. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import tomllib
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from teachsim import messages as m
from teachsim import seeding
from teachsim.attacks.apgd import apgd_ce
from teachsim.attacks.common import loss_per_point
from teachsim.attacks.beta import beta
from teachsim.attacks.pgd import pgd
from teachsim.attacks.teacher import teacher_attack
from teachsim.messages import ABSTAIN
from teachsim.platform import judge as J
from teachsim.config import resolve_student
from teachsim.platform.build import build_student
from teachsim.schema import resolve
from teachsim.tasks.hidden_feature import HiddenFeature

TARGET_RATIO = 1.1
JUDGE_TARGET = 2.0   # the judge per checkpoint against judge version 1, same run
SEED = 0


# --------------------------------------------------------------------------- the reference


def reference_pgd(model, x, y, *, eps, norm, steps, restarts, generator, loss=F.cross_entropy):
    """Minimal PGD: uniform random start in the ball, ``steps`` CE ascent steps of size
    2.5 eps / steps, projection; returns the last iterate. No per-point bookkeeping.
    ``loss``: plain float32 cross-entropy (whose gradient vanishes on saturated students)
    or the attacks' own non-underflowing form of it, to separate loss and machinery costs."""
    alpha = 2.5 * eps / steps
    n, d = x.shape
    for _ in range(restarts):
        if norm == "linf":
            delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
        else:
            delta = torch.randn(x.shape, generator=generator)
            delta = delta / delta.norm(dim=1, keepdim=True)
            delta = delta * eps * torch.rand(n, 1, generator=generator) ** (1 / d)
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(model(x + delta), y), delta)
            with torch.no_grad():
                if norm == "linf":
                    delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
                else:
                    delta = delta + alpha * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    delta = delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1)
    return (x + delta).detach()


# --------------------------------------------------------------------------- models and data


def quick_student_cfg() -> dict:
    """The quick suite's ``[student]`` table, resolved (defaults filled in)."""
    raw = tomllib.loads(resources.files("teachsim").joinpath("suites/quick.toml").read_text())
    return resolve_student(raw["student"]), raw["budgets"]


def trained_student(task, seed: int = SEED):
    """A student built and trained as the quick suite does with the passive protocol:
    ``initial_labels`` free labels, then passive labels up to each budget, learning (warm
    start) at every checkpoint. Returns the model at the last checkpoint."""
    cfg, budgets = quick_student_cfg()
    student = build_student(cfg, task, seed)
    rng = seeding.rng(seed, "bench", "labels")
    have = 0
    for b in [0, *budgets]:
        n = (cfg["initial_labels"] if b == 0 else 0) + int(b) - have
        if n > 0:
            x = task.data.sample(n, rng)
            student.observe(m.answer(x, task.label(x)))
            have += n
        student.learn()
    model = student.model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def certain_points(task, n: int, seed: int):
    rng = seeding.rng(seed, "bench", "points")
    xs, ys, have = [], [], 0
    while have < n:
        x = task.data.sample(2 * n, rng)
        y = task.label(x)
        keep = y != ABSTAIN
        xs.append(x[keep])
        ys.append(y[keep])
        have += int(keep.sum())
    return torch.from_numpy(np.concatenate(xs)[:n]), torch.from_numpy(np.concatenate(ys)[:n])


def predict(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


# --------------------------------------------------------------------------- timing


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Times each callable ``repeats`` times, alternating between them so that drifts in
    machine load hit all of them alike; ``warmup`` untimed calls of each first."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k] += timed(fn, 1)
    return times


def stats(ts: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "all_s": ts}


# --------------------------------------------------------------------------- (a) pgd vs reference


def bench_pgd(name, model, x, y, *, eps, norm, steps, restarts, repeats) -> dict:
    gen = lambda s: torch.Generator().manual_seed(s)
    ours = lambda: pgd(model, x, y, eps=eps, norm=norm, generator=gen(1), steps=steps, restarts=restarts)
    ref = lambda: reference_pgd(model, x, y, eps=eps, norm=norm, generator=gen(1), steps=steps,
                                restarts=restarts)
    # pgd stops early only once every point is flipped; with some points left robust it
    # runs every step, so both sides do the same number of gradient steps
    flipped = (predict(model, ours()) != y).float().mean().item()
    flipped_ref = (predict(model, ref()) != y).float().mean().item()
    same = lambda: reference_pgd(model, x, y, eps=eps, norm=norm, generator=gen(1), steps=steps,
                                 restarts=restarts, loss=lambda lo, t: loss_per_point(lo, t, "ce").sum())
    times = interleaved({"ours": ours, "reference": ref, "reference_same_loss": same}, repeats)
    work = len(x) * steps * restarts
    row = {"case": name, "points": len(x), "dim": x.shape[1], "classes": int(model(x[:1]).shape[1]),
           "norm": norm, "eps": eps, "steps": steps, "restarts": restarts,
           "flipped_ours": flipped, "flipped_reference": flipped_ref,
           "ours": stats(times["ours"]), "reference": stats(times["reference"])}
    for k in ("ours", "reference"):
        row[k]["points_steps_per_s"] = work / row[k]["median_s"]
    row["ratio_median"] = row["ours"]["median_s"] / row["reference"]["median_s"]
    row["ratio_min"] = row["ours"]["min_s"] / row["reference"]["min_s"]
    row["reference_same_loss"] = stats(times["reference_same_loss"])
    row["ratio_same_loss_median"] = row["ours"]["median_s"] / row["reference_same_loss"]["median_s"]
    return row


# --------------------------------------------------------------------------- (b) the judge


def bench_judge(task, model, repeats: int, **judge) -> dict:
    cfg = resolve(J.PARAMS, {"test_points": 500, "eps": 1.0, **judge}, "judge")
    t = time.perf_counter()
    test = J.make_test_set(task, cfg, SEED)
    t_test = time.perf_counter() - t
    x, y = torch.from_numpy(test.x), torch.from_numpy(test.y)

    def lp(fn=pgd, name="pgd"):
        # as the judge calls each l_p attack (its generator stream, its config)
        g = seeding.torch_generator(SEED, "judge", "attack", name)
        return fn(model, x, y, eps=cfg["eps"], norm=cfg["norm"], box=task.box, generator=g,
                  steps=cfg["steps"], restarts=cfg["restarts"])

    def strong():
        g = seeding.torch_generator(SEED, "judge", "teacher")
        return teacher_attack(model, task, x, radius=cfg["strong_radius"], norm=cfg["norm"], box=task.box,
                              generator=g, steps=cfg["strong_steps"], restarts=cfg["strong_restarts"])

    def strong_v1():
        from search_v1 import teacher_attack as search_v1

        g = seeding.torch_generator(SEED, "judge", "teacher")
        return search_v1(model, task, x, radius=cfg["strong_radius"], norm=cfg["norm"], box=task.box,
                         generator=g, steps=cfg["strong_steps"], restarts=cfg["strong_restarts"])

    scores = J.judge(model, task, test, cfg, SEED)
    times = interleaved({
        "judge": lambda: J.judge(model, task, test, cfg, SEED),
        "lp_attack": lp,
        "strong_search": strong,
        "strong_search_v1": strong_v1,
        # not in the default attack set; what adding each would cost
        "apgd-ce": lambda: lp(apgd_ce, "apgd-ce"),
        "beta": lambda: lp(beta, "beta"),
    }, repeats)
    out = {"config": {k: cfg[k] for k in sorted(cfg)}, "test_points": len(x), "make_test_set_s": t_test,
           "scores": scores, "found_strong": strong()[1].float().mean().item(),
           "found_strong_v1": strong_v1()[1].float().mean().item(),
           "flipped_lp": (predict(model, lp()) != y).float().mean().item()}
    for k, ts in times.items():
        out[k] = stats(ts)
    total = out["judge"]["median_s"]
    out["rest_s"] = total - out["lp_attack"]["median_s"] - out["strong_search"]["median_s"]
    # judge version 1 in the same run: the same judge with its search instead
    out["judge_v1_s"] = total - out["strong_search"]["median_s"] + out["strong_search_v1"]["median_s"]
    out["ratio_v2_v1"] = total / out["judge_v1_s"]
    return out


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each measurement (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", metavar="PATH", help="also write the numbers as JSON here")
    ap.add_argument("--only-judge", action="store_true", help="part (b) only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "processor": platform.processor() or "?", "threads": torch.get_num_threads(), "repeats": args.repeats}
    print(f"torch {env['torch']}, python {env['python']}, {env['machine']}, threads={env['threads']}, "
          f"repeats={args.repeats} (median / min seconds)")

    # the quick suite's task and student (also the judge benchmark's)
    task50 = HiddenFeature(SEED, dim=50, manifold_dim=2)
    model50 = trained_student(task50)
    x50, y50 = certain_points(task50, 1000, SEED)
    # a larger one: dim 200, 4 classes, the same student recipe
    task200 = HiddenFeature(SEED, dim=200, manifold_dim=2, classes=4)
    model200 = trained_student(task200)
    x200, y200 = certain_points(task200, 1000, SEED)

    cases = [
        ("d50-2cls l2", model50, x50, y50, {"eps": 1.0, "norm": "l2"}),
        ("d50-2cls linf", model50, x50, y50, {"eps": 0.1, "norm": "linf"}),
        ("d200-4cls l2", model200, x200, y200, {"eps": 1.0, "norm": "l2"}),
        ("d200-4cls linf", model200, x200, y200, {"eps": 0.05, "norm": "linf"}),
    ]
    if args.only_judge:
        cases = []
    rows = [bench_pgd(name, mdl, x, y, steps=50, restarts=1, repeats=args.repeats, **kw)
            for name, mdl, x, y, kw in cases]

    print("\n(a) pgd vs a minimal torch PGD loop: 1000 points, 50 steps, 1 restart, CE, random start")
    head = (f"{'case':<15} {'model':<14} {'eps':>5} {'flipped':>8} {'ours s':>15} {'ref s':>15} "
            f"{'ours pt*st/s':>12} {'ref pt*st/s':>12} {'ratio med':>9} {'ratio min':>9} {'same-loss':>9}")
    print(head)
    print("-" * len(head))
    for r, (_, mdl, *_rest) in zip(rows, cases):
        widths = "->".join(str(mod.in_features) for mod in mdl if hasattr(mod, "in_features"))
        arch = f"{widths}->{r['classes']}"
        print(f"{r['case']:<15} {arch:<14} {r['eps']:>5g} {r['flipped_ours']:>8.3f} "
              f"{r['ours']['median_s']:>7.3f}/{r['ours']['min_s']:<7.3f} "
              f"{r['reference']['median_s']:>7.3f}/{r['reference']['min_s']:<7.3f} "
              f"{r['ours']['points_steps_per_s']:>12.0f} {r['reference']['points_steps_per_s']:>12.0f} "
              f"{r['ratio_median']:>9.3f} {r['ratio_min']:>9.3f} {r['ratio_same_loss_median']:>9.3f}")
    print("same-loss: median ratio against the reference loop run with our non-underflowing CE form")
    if rows:
        worst = max(r["ratio_median"] for r in rows)
        print(f"target: ratio <= {TARGET_RATIO}; worst median ratio {worst:.3f} -> "
              f"{'OK' if worst <= TARGET_RATIO else 'ABOVE TARGET'}")

    jb = bench_judge(task50, model50, args.repeats)
    c = jb["config"]
    print(f"\n(b) judge per checkpoint: quick task (hidden-feature d=50 k=2), quick student, "
          f"{jb['test_points']} test points, {c['norm']} eps={c['eps']}, attacks={c['attacks']} "
          f"({c['steps']} steps x {c['restarts']} restarts), strong radius {c['strong_radius']} "
          f"({c['strong_steps']} steps x {c['strong_restarts']} restarts)")
    total = jb["judge"]["median_s"]
    print(f"{'part':<34} {'median s':>9} {'min s':>8} {'share':>6}")
    print("-" * 60)
    for label, key in [("judge() total", "judge"), ("l_p attack (pgd)", "lp_attack"),
                       ("strong search (teacher attack)", "strong_search"),
                       ("strong search, judge version 1", "strong_search_v1")]:
        s = jb[key]
        print(f"{label:<34} {s['median_s']:>9.3f} {s['min_s']:>8.3f} {s['median_s'] / total:>6.1%}")
    print(f"{'rest (predictions, labels)':<34} {jb['rest_s']:>9.3f} {'':>8} {jb['rest_s'] / total:>6.1%}")
    print(f"{'make_test_set (once per seed)':<34} {jb['make_test_set_s']:>9.3f}")
    for k in ("apgd-ce", "beta"):
        print(f"{k + ' (if added to attacks)':<34} {jb[k]['median_s']:>9.3f} {jb[k]['min_s']:>8.3f}")
    print(f"judge per checkpoint, current version / version 1 (same run): {jb['ratio_v2_v1']:.2f} "
          f"(target <= {JUDGE_TARGET}) -> {'OK' if jb['ratio_v2_v1'] <= JUDGE_TARGET else 'ABOVE TARGET'}")
    print(f"strong found: current {jb['found_strong']:.3f}, version 1 {jb['found_strong_v1']:.3f}")
    sc = jb["scores"]
    print("scores: " + ", ".join(f"{k}={v:.3f}" for k, v in sc.items())
          + f"; l_p flipped {jb['flipped_lp']:.3f}, strong found {jb['found_strong']:.3f}")

    # mid-curve: a radius where a third of the points stay robust, so the search runs its
    # whole budget on them (at the default radius almost every point breaks at once)
    mid = bench_judge(task50, model50, args.repeats, strong_radius=1.0)
    print(f"mid-curve (strong radius 1.0): strong search {mid['strong_search']['median_s']:.3f} s, "
          f"version 1 {mid['strong_search_v1']['median_s']:.3f} s; judge version 2+ / 1: {mid['ratio_v2_v1']:.2f} "
          f"(target <= {JUDGE_TARGET}) -> {'OK' if mid['ratio_v2_v1'] <= JUDGE_TARGET else 'ABOVE TARGET'}; "
          f"strong found {mid['found_strong']:.3f} vs version 1 {mid['found_strong_v1']:.3f}")
    jb["mid_curve"] = mid

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "target_ratio": TARGET_RATIO, "pgd_vs_reference": rows, "judge": jb}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
