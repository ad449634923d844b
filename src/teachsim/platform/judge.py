"""The judge: a pure function of (student snapshot, task, judge config, seed) -> scores.

Metric definitions are in the README. The test sets come from their own seed stream,
separate from everything the episode draws, and teacher-uncertain points are dropped
before anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import registry, seeding
from ..attacks.common import model_device
from ..messages import ABSTAIN
from .judge_params import (  # noqa: F401 - the judge's own table, read here too
    ALWAYS, ATTACK_OPTIONS, INFO_FLAGS, LP_METRICS, METRICS, OPTIONAL, PARAMS, VERSION, attack_options, setting)


@dataclass(frozen=True)
class TestSet:
    """The judge's held-out inputs with the teacher's (certain) labels."""

    x: np.ndarray
    y: np.ndarray
    broad_x: np.ndarray
    broad_y: np.ndarray


def _certain_sample(dist, task, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    xs, ys, have = [], [], 0
    for _ in range(50):
        x = dist.sample(max(2 * (n - have), 64), rng)
        y = task.label(x)
        keep = y != ABSTAIN
        xs.append(x[keep])
        ys.append(y[keep])
        have += int(keep.sum())
        if have >= n:
            break
    if have == 0:
        raise ValueError("the teacher abstains on every sampled test point; widen the task")
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def make_test_set(task, cfg: Mapping[str, Any], seed: int) -> TestSet:
    """Draw the test and broad sets from the judge's own seed stream."""
    held_out = task.test if getattr(task, "test", None) is not None else task.data
    x, y = _certain_sample(held_out, task, cfg["test_points"], seeding.rng(seed, "judge", "test"))
    bx, by = _certain_sample(task.broad, task, cfg["test_points"], seeding.rng(seed, "judge", "broad"))
    return TestSet(x, y, bx, by)


def attack_set_name(attacks, norm: str, eps: float) -> str:
    """The judge name of an attack set, e.g. ``"pgd+beta/linf/0.1"`` (``attack_sets`` and
    ``Run.rejudge`` record under it)."""
    return f"{'+'.join(attacks)}/{norm}/{eps:g}"


def call_attack(name: str, model, x, y, cfg, generator, box):
    """Run the l_p attack ``name`` as the judge does: ``eps``, ``norm`` and the box, plus
    the keys of :data:`ATTACK_OPTIONS` it takes (a config setting one an attack of its
    set cannot take is refused when it is checked: nothing is dropped silently)."""
    fn = registry.attacks.get(name, "judge.attacks").factory
    extra = {k: cfg[k] for k in attack_options(name)}
    return fn(model, x, y, eps=cfg["eps"], norm=cfg["norm"], box=box, generator=generator, **extra)


def _predict(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if not len(x):
            return x.new_zeros(0, dtype=torch.long)
        return torch.cat([model(c).argmax(1) for c in torch.split(x, 4096)])


def sanity_flags(model: torch.nn.Module, task, test: TestSet, cfg: Mapping[str, Any]) -> dict[str, float]:
    """AutoAttack-style warnings that make attack-based numbers untrustworthy.

    - ``zero_grad_share``: share of test points whose input gradient of the loss is exactly
      zero (gradient masking: gradient attacks cannot move there).
    - ``stochastic``: 1 if two forward passes in eval mode disagree (randomised defences
      need EOT, which the judge does not do).
    """
    dev = model_device(model)
    x = torch.from_numpy(test.x).to(dev).requires_grad_(True)
    logits = model(x)
    from ..attacks.common import loss_per_point

    # The loss the attacks ascend: a zero gradient here disarms them (not mere saturation).
    loss = loss_per_point(logits, torch.from_numpy(test.y).to(dev), "ce").sum()
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        again = model(x)
    return {"zero_grad_share": (grad.flatten(1).abs().sum(1) == 0).float().mean().item(),
            "stochastic": float(not torch.equal(logits.detach(), again))}


def judge_all(models: Mapping[float, torch.nn.Module], task, cfg: Mapping[str, Any],
              seed: int) -> tuple[list[tuple[float, str, float]], list[tuple[float, str, float]]]:
    """Judge every checkpoint's model; returns ``(scores, flags)`` as (budget, name, value) rows.

    Only ``cfg["attacks"]`` is scored here (``attack_sets`` are :func:`judge_episode`'s)."""
    scores, flags, _ = judge_episode(models, task, {**cfg, "attack_sets": []}, seed)
    return scores, flags


def judge_episode(models: Mapping[float, torch.nn.Module], task, cfg: Mapping[str, Any], seed: int):
    """Judge every checkpoint's model with the judge and each of its ``attack_sets``.

    Returns:
        ``(scores, flags, judged)``: the judge's (budget, name, value) rows, and for each
        attack set its judge name -> ``{"config", "scores", "flags"}``. A set's scores are
        the judge's with :data:`LP_METRICS` from that set; every attack runs once per
        checkpoint whatever the sets it is in, from the same stream a re-judging uses, so a
        set scores as ``Run.rejudge(attacks=set)`` would.
    """
    return judge_episodes([models], task, cfg, seed)[0]


def judge_episodes(episodes: list[Mapping[float, torch.nn.Module]], task, cfg: Mapping[str, Any], seed: int):
    """:func:`judge_episode` for several episodes that share the task, the judge config and
    the seed (so the test set and every random stream): all their checkpoints are searched
    and attacked in one pass (:func:`_together`), then scored one by one. Returns one
    ``(scores, flags, judged)`` per episode, in order.

    A cohort judges each checkpoint as it is taken, as an "episode" of one checkpoint here,
    and :func:`join_checkpoints` makes the episode's judging of them after."""
    test = make_test_set(task, cfg, seed)
    sets = [list(s) for s in cfg.get("attack_sets") or []]
    names = [attack_set_name(s, cfg["norm"], cfg["eps"]) for s in sets]
    owned = [(e, b, _prepared(models[b])) for e, models in enumerate(episodes) for b in sorted(models)]
    ms = [m for _, _, m in owned]
    # every checkpoint searched and attacked in one pass (see _together), then scored one by one
    found = _search_together(ms, task, test, cfg, seed)
    caches = _attack_together(ms, task, test, cfg, seed, [cfg["attacks"], *sets])
    out = []
    for _ in episodes:
        judged = {n: {"config": {**cfg, "attacks": s, "attack_sets": []}, "scores": [], "flags": []}
                  for n, s in zip(names, sets)}
        out.append(([], [], judged))
    for (e, budget, model), f, cache in zip(owned, found, caches):
        scores, flags, judged = out[e]
        result, by_set = _judge(model, task, test, cfg, seed, sets, found=f, cache=cache)
        exact_flag = result.pop("_strong_exact")
        scores += [(budget, k, v) for k, v in result.items()]
        flagged = {**sanity_flags(model, task, test, cfg), "strong_exact": exact_flag}
        flags += [(budget, k, v) for k, v in flagged.items()]
        for n, lp in zip(names, by_set):
            judged[n]["scores"] += [(budget, k, lp.get(k, v)) for k, v in result.items()]
            judged[n]["flags"] += [(budget, k, v) for k, v in flagged.items()]
    return out


def join_checkpoints(parts: list[tuple]) -> tuple[list, list, dict]:
    """One episode's ``(scores, flags, judged)`` from its checkpoints', each judged as an
    episode of one checkpoint (:func:`judge_episodes`), given in budget order: what judging
    them in one pass gives."""
    scores: list = []
    flags: list = []
    judged: dict = {}
    for s, f, by_set in parts:
        scores += s
        flags += f
        for name, part in by_set.items():
            into = judged.setdefault(name, {"config": part["config"], "scores": [], "flags": []})
            into["scores"] += part["scores"]
            into["flags"] += part["flags"]
    return scores, flags, judged


BATCHED_ATTACKS = ("fgsm", "pgd", "apgd-ce", "beta")
"""Built-in l_p attacks that treat every row on its own and draw their random starts through
:func:`teachsim.attacks.common.random_in_ball` (so a :class:`teachsim.seeding.Generators`
gives each checkpoint the draws it would make alone): the judge runs each once over all of
an episode's checkpoints. Any other attack runs once per checkpoint."""


TOGETHER_ELEMENTS = 1 << 24
"""At most this many input elements (rows times features: 64 MiB in float32) in one pass
over several checkpoints; more checkpoints than fit go in several passes, so a large test
set of large inputs needs no more memory per tensor than this (or than one checkpoint)."""


def _groups(n: int, x: torch.Tensor) -> list[range]:
    """The checkpoints ``range(n)`` in passes of at most :data:`TOGETHER_ELEMENTS` inputs."""
    per = max(1, TOGETHER_ELEMENTS // max(1, x.numel()))
    return [range(i, min(n, i + per)) for i in range(0, n, per)]


def _prepared(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _together(models: list[torch.nn.Module], rows: int):
    """The checkpoints of a pass (an episode's, or a cohort's: :func:`judge_episodes`) as
    one routed model over ``len(models)`` blocks of ``rows`` rows, one checkpoint alone too.

    Why: the judge's search and attacks are a few hundred small steps per checkpoint, each
    costing mostly per-op dispatch; all of an episode's checkpoints in one pass pay it once
    (measured: the strong search on 5 checkpoints 2.3x faster than one by one). Each
    checkpoint's rows follow the path they would alone: the stopping rules only stop early
    what would repeat itself, every random draw comes from the checkpoint's own generator,
    and each block's products are padded as a stacked student's are
    (:data:`teachsim.agents.cohort.ROWS`), which on the CPU gives the student's logits the
    same bits whatever the other blocks; a checkpoint alone goes through the same routed
    model. What can still differ is the last bit of the teacher's numbers, computed on all
    rows at once (a curved teacher's tanh takes a vectorised or a scalar path by the rows'
    positions): equal scores wherever compared, but no bit-for-bit promise, which is why a
    cohort on the CPU judges each checkpoint in a pass of its own (``agents.cohort.PASS``)."""
    from ..agents.cohort import Routed

    return Routed.blocks(models, rows, model_device(models[0]))


def _attack_together(models, task, test: TestSet, cfg, seed: int, sets: list[list[str]]) -> list[dict]:
    """Per checkpoint, the attack cache :func:`_lp_scores` fills (attack name -> (points,
    flipped)), with every attack of :data:`BATCHED_ATTACKS` in ``sets`` run once over all
    checkpoints; the others are left to run per checkpoint."""
    from ..agents.cohort import stack

    caches: list[dict] = [{} for _ in models]
    dev = model_device(models[0])
    x, y = torch.from_numpy(test.x).to(dev), torch.from_numpy(test.y).to(dev)
    names = [a for a in dict.fromkeys(a for s in sets for a in s) if a in BATCHED_ATTACKS]
    for group in _groups(len(models), x):
        stacked = stack([models[i] for i in group])   # alone too: the same bits in any pass
        if stacked is None:   # a model Stacked cannot batch: per checkpoint
            continue
        k = len(group)
        xs, ys = x.repeat(k, *([1] * (x.dim() - 1))), y.repeat(k)
        for name in names:
            gens = seeding.Generators([seeding.torch_generator(seed, "judge", "attack", name) for _ in group])
            xa = call_attack(name, stacked, xs, ys, cfg, gens, task.box)
            for i, part in zip(group, xa.chunk(k)):
                caches[i][name] = (part, _predict(models[i], part) != y)
    return caches


def _search_together(models, task, test: TestSet, cfg, seed: int) -> list[torch.Tensor | None]:
    """Per checkpoint, the teacher-relative search's ``found`` (None where the exact answer
    applies instead): every checkpoint that needs the search, in one pass."""
    from ..attacks import exact

    need = [i for i, m in enumerate(models)
            if not (setting(cfg, "strong_exact") and exact.exact_available(m, task))]
    out: list[torch.Tensor | None] = [None] * len(models)
    if need:
        x = torch.from_numpy(test.x).to(model_device(models[0]))
        for group in _groups(len(need), x):
            found = _search([models[need[j]] for j in group], task, x, cfg, seed)
            for j, f in zip(group, found):
                out[need[j]] = f
    return out


def _lp_scores(model, task, x, y, correct, attacks, cfg, seed, cache) -> dict[str, float]:
    """lp_robust_acc, weak_robust_acc and weak_coverage of one attack set; each attack's
    output is computed once and kept in ``cache`` (attack name -> (points, flipped))."""
    dev = x.device
    # l_p attacks against the clean label; the first successful attack's point (else the
    # first attack's) is the attack output that weak robustness scores.
    robust = correct.clone()
    weak_x = None
    for name in attacks:
        if name not in cache:
            g = seeding.torch_generator(seed, "judge", "attack", name)
            xa = call_attack(name, model, x, y, cfg, g, task.box)
            cache[name] = (xa, _predict(model, xa) != y)
        xa, flipped = cache[name]
        robust &= ~flipped
        if weak_x is None:
            weak_x, weak_flipped = xa.clone(), flipped.clone()
        else:
            use = flipped & ~weak_flipped
            weak_x[use] = xa[use]
            weak_flipped |= flipped
    out = {"lp_robust_acc": robust.float().mean().item()}
    t_adv = torch.from_numpy(task.label(weak_x.cpu().numpy())).to(dev)
    certain = t_adv != ABSTAIN
    out["weak_coverage"] = certain.float().mean().item()
    agree = _predict(model, weak_x) == t_adv
    out["weak_robust_acc"] = agree[certain].float().mean().item() if certain.any() else float("nan")
    return out


def judge(model: torch.nn.Module, task, test: TestSet, cfg: Mapping[str, Any], seed: int) -> dict[str, float]:
    """Score one student snapshot.

    Args:
        model: the student, inputs -> logits (put in eval mode here).
        task: the task (the teacher's mechanism labels attacked points).
        test: from :func:`make_test_set`.
        cfg: resolved ``[judge]`` table.
        seed: episode seed; attacks draw from the judge's own streams.

    Returns:
        metric name -> value for every name in :data:`METRICS` (``strong_robust_lb`` only
        where a verifier applies).
    """
    out = _judge(model, task, test, cfg, seed, [])[0]
    out.pop("_strong_exact")
    return out


def _judge(model, task, test: TestSet, cfg: Mapping[str, Any], seed: int, sets: list[list[str]],
           found: torch.Tensor | None = None,
           cache: dict | None = None) -> tuple[dict[str, float], list[dict[str, float]]]:
    """:func:`judge`, and :func:`_lp_scores` for each attack set in ``sets`` (same pass).
    ``found`` (the search's answer) and ``cache`` (attacks' outputs) are what
    :func:`judge_episode` computed for all checkpoints at once; else computed here."""
    _prepared(model)
    dev = model_device(model)   # the judge works where the student lives (a GPU under Ray)
    x, y = torch.from_numpy(test.x).to(dev), torch.from_numpy(test.y).to(dev)
    bx, by = torch.from_numpy(test.broad_x).to(dev), torch.from_numpy(test.broad_y).to(dev)
    pred = _predict(model, x)
    correct = pred == y
    out = {"clean_acc": correct.float().mean().item(),
           "broad_acc": (_predict(model, bx) == by).float().mean().item()}

    cache = {} if cache is None else cache
    lp = _lp_scores(model, task, x, y, correct, cfg["attacks"], cfg, seed, cache)
    out["lp_robust_acc"] = lp["lp_robust_acc"]
    out["weak_coverage"] = lp["weak_coverage"]
    out["weak_robust_acc"] = lp["weak_robust_acc"]

    out.update(_strong_scores(model, task, x, test, cfg, seed, found))
    # after everything the judge itself scores: its numbers do not depend on the sets
    return out, [_lp_scores(model, task, x, y, correct, s, cfg, seed, cache) for s in sets]


def _search(models: list[torch.nn.Module], task, x: torch.Tensor, cfg: Mapping[str, Any],
            seed: int) -> list[torch.Tensor]:
    """The judge's teacher-relative search on ``x`` for each of ``models`` (all in one pass,
    :func:`_together`): per model and point, whether it found a teacher-certain
    disagreement within ``strong_radius``."""
    from ..attacks.teacher import teacher_attack

    k = len(models)
    gens = seeding.Generators([seeding.torch_generator(seed, "judge", "teacher") for _ in models])
    xs = x if k == 1 else x.repeat(k, *([1] * (x.dim() - 1)))
    _, found = teacher_attack(_together(models, len(x)), task, xs,
                              radius=cfg["strong_radius"], norm=cfg["norm"],
                              box=task.box, generator=gens,
                              steps=cfg["strong_steps"], restarts=cfg["strong_restarts"])
    return list(found.chunk(k))


def strong_counterexamples(model, task, x, cfg: Mapping[str, Any], seed: int = 0) -> np.ndarray:
    """Per point of ``x`` (numpy, (n, dim)): does a teacher-certain disagreement lie within
    ``strong_radius``? Exactly where the judge scores exactly (an affine student under an
    affine teacher), else by the judge's search with its settings: the same split that
    ``strong_robust_acc`` counts."""
    from ..attacks import exact

    cfg = dict(cfg)
    if setting(cfg, "strong_exact") and exact.exact_available(model, task):
        return ~np.asarray(exact.exact_strong(model, task, np.asarray(x, np.float32), radius=cfg["strong_radius"],
                                              norm=cfg["norm"]).robust, bool)
    xt = torch.from_numpy(np.asarray(x, np.float32)).to(model_device(model))
    return _search([model], task, xt, cfg, seed)[0].cpu().numpy()


def _strong_scores(model, task, x: torch.Tensor, test: TestSet, cfg: Mapping[str, Any], seed: int,
                   found: torch.Tensor | None = None) -> dict[str, float]:
    """``strong_robust_acc`` (exact where possible, else the search's upper bound) and, where
    a verifier applies, the certified lower bound ``strong_robust_lb``; ``_strong_exact``
    (1/0) says which way the first was made (:func:`judge_episode` records it as the flag
    ``strong_exact``). ``found``: the search's answer, when already made."""
    from ..attacks import exact

    radius, norm = cfg["strong_radius"], cfg["norm"]
    if setting(cfg, "strong_exact") and exact.exact_available(model, task):
        robust = exact.exact_strong(model, task, test.x, radius=radius, norm=norm).robust
        value = float(robust.mean())
        return {"strong_robust_acc": value, "strong_robust_lb": value, "_strong_exact": 1.0}
    if found is None:
        found = _search([model], task, x, cfg, seed)[0]
    # (~found).mean() rather than 1 - found.mean(): the latter can differ from clean_acc by a
    # float ulp when strong_radius = 0, breaking the invariant that they are equal.
    out = {"strong_robust_acc": (~found).float().mean().item(), "_strong_exact": 0.0}
    if setting(cfg, "certify") and exact.milp_available(model, task, norm):
        certified = exact.milp_strong(model, task, test.x, radius=radius, time_limit=setting(cfg, "certify_time"),
                                      skip=found.cpu().numpy())
        out["strong_robust_lb"] = float(certified.mean())
    return out
