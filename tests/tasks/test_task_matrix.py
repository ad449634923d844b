"""Every built-in protocol and every judge metric on every built-in task, at small
sizes: protocol conformance per (task, protocol), one tiny judged run per task (digits with
the cnn student too), and the judge's attacks keeping digits inside the pixel box."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import teachsim
from teachsim import registry
from teachsim.platform.judge import ALWAYS as METRICS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: one thread is fastest

TASKS = {
    "hidden-feature": {"name": "hidden-feature", "dim": 8, "manifold_dim": 2},
    "spheres": {"name": "spheres", "dim": 8},
    "digits": {"name": "digits"},
}
STUDENT = {"hidden": [16], "steps": 10, "initial_labels": 20}
BUDGETS = (0, 10, 20)
PROTOCOLS = [
    ("passive", {}),
    ("active-student", {"strategy": "margin", "pool": 100}),
    ("active-student", {"strategy": "qbc", "pool": 100}),
    ("membership", {"query": "adversarial"}),
    ("membership", {"query": "boundary"}),
    ("active-teacher", {"push": "boundary"}),
    ("active-teacher", {"push": "counterexample"}),
    ("active-teacher", {"push": "invariance"}),
    ("active-teacher", {"push": "offmanifold"}),
]
ATTACKS = ("pgd", "apgd-ce", "fgsm", "beta")


def _builtin(reg) -> set[str]:
    # Plugins other tests registered in this process are not ours to cover.
    def ours(target) -> bool:
        where = target if isinstance(target, str) else getattr(target, "__module__", "")
        return where.startswith("teachsim.")

    return {name for name in reg.names() if ours(reg.get(name).target)}


def test_the_matrix_covers_every_builtin_task_and_protocol():
    assert set(TASKS) == _builtin(registry.tasks)
    assert {name for name, _ in PROTOCOLS} == _builtin(registry.protocols)


# -- every built-in protocol family conforms on every built-in task ---------------------------------

@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("name, params", PROTOCOLS,
                         ids=[f"{n}-{'-'.join(map(str, p.values()))}" for n, p in PROTOCOLS])
def test_protocol_conforms_on_task(task, name, params):
    report = teachsim.check_protocol(name, params=params, task=TASKS[task], student=STUDENT, budgets=BUDGETS)
    assert report.ok, str(report)
    assert set(report.results) == {"runs", "legal", "budget", "terminates", "deterministic", "replays"}


@pytest.mark.parametrize("task, budgets, explains", [
    ("hidden-feature", BUDGETS, True),    # 6 directions fit the budget of 20
    ("spheres", BUDGETS, False),          # no invariances: the whole budget goes to `then`
    ("digits", (0, 10, 60), True),        # 48 directions need a final budget of at least 48
])
def test_invariance_push_explains_what_the_task_states(task, budgets, explains):
    report = teachsim.check_protocol("active-teacher", params={"push": "invariance"}, task=TASKS[task],
                                     student=STUDENT, budgets=budgets)
    assert report.ok, str(report)
    runs = report.results["runs"][1]
    assert ("explain" in runs) == explains, runs
    assert "push" in runs, runs   # what the explanation leaves of the budget goes to `then` (data)


# -- every judge metric on every built-in task ---------------------------------------------------------

JUDGE = {"test_points": 60, "steps": 5, "restarts": 1, "strong_steps": 5, "strong_restarts": 1}
RUNS = {**{t: (TASKS[t], "mlp") for t in TASKS}, "digits-cnn": (TASKS["digits"], "cnn")}


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """One tiny judged run per task (and digits with the cnn student): name -> Run."""
    out = {}
    for key, (task, model) in RUNS.items():
        config = {"name": f"matrix-{key}", "seeds": [0], "budgets": [0, 20], "task": dict(task),
                  "student": {**STUDENT, "model": model}, "judge": dict(JUDGE),
                  "protocols": [{"name": "passive"}, {"name": "active-teacher", "push": "counterexample"}]}
        out[key] = teachsim.run(config, out=tmp_path_factory.mktemp(key), executor="serial", progress=False)
    return out


@pytest.mark.parametrize("key", list(RUNS))
def test_every_judge_metric_on_every_task(judged, key):
    run = judged[key]
    eps = run.episodes
    assert len(eps) == 2 and set(eps["status"]) == {"finished"}, eps[["status", "error"]].to_string()
    scores = run.scores
    for episode_id in eps["episode_id"]:
        mine = scores[scores["episode_id"] == episode_id]
        for budget in (0.0, 20.0):
            at = mine[mine["budget"] == budget].set_index("metric")["value"]
            assert set(at.index) == set(METRICS), (key, episode_id, budget, sorted(at.index))
            for metric in METRICS:
                v = at[metric]
                assert not math.isnan(v) and 0.0 <= v <= 1.0, (key, episode_id, budget, metric, v)
            assert at["lp_robust_acc"] <= at["clean_acc"] + 1e-12
            assert at["weak_coverage"] > 0


def test_digits_cnn_run_trains_a_cnn(judged):
    run = judged["digits-cnn"]
    episode = int(run.episodes["episode_id"].iloc[0])
    student = run.student(episode, 20)
    assert any(isinstance(m, torch.nn.Conv2d) for m in student.modules())
    x, y = run.test_set(episode)
    assert x.shape[1] == 64 and x.min() >= 0 and x.max() <= 1
    assert student(torch.as_tensor(x)).shape == (len(x), 10)


# -- the judge's attacks keep digits in the pixel box ----------------------------------------------------

@pytest.fixture(scope="module")
def digits_setup():
    from teachsim.tasks.digits import Digits

    task = Digits(0)
    x = task.test.sample(300, np.random.default_rng(0))
    y = task.label(x)
    keep = y != teachsim.messages.ABSTAIN
    x, y = torch.from_numpy(x[keep][:40]), torch.from_numpy(y[keep][:40])

    def model(kind: str, trained: bool) -> torch.nn.Module:
        net = registry.models.make(kind, 64, 10, hidden=[16], init_std=0.0,
                                   generator=torch.Generator().manual_seed(0))
        if trained:
            xs = torch.from_numpy(task.data.images)
            ys = torch.from_numpy(task.label(task.data.images)).clamp_min(0)
            opt = torch.optim.Adam(net.parameters(), lr=0.01)
            for _ in range(40):
                loss = torch.nn.functional.cross_entropy(net(xs), ys)
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    models = {(k, t): model(k, t) for k in ("mlp", "cnn") for t in (False, True)}
    return task, x, y, models


def _norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    return d.flatten(1).abs().amax(1) if norm == "linf" else d.flatten(1).norm(dim=1)


@pytest.mark.parametrize("kind, trained", [("mlp", False), ("mlp", True), ("cnn", False), ("cnn", True)])
@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 2.0)])
def test_attacks_on_digits_stay_in_the_pixel_box(digits_setup, attack, kind, trained, norm, eps):
    task, x, y, models = digits_setup
    fn = registry.attacks.get(attack).factory
    extra = {"steps": 5} if attack != "fgsm" else {}
    xa = fn(models[kind, trained], x, y, eps=eps, norm=norm, box=task.box,
            generator=torch.Generator().manual_seed(1), **extra)
    assert xa.shape == x.shape and xa.dtype == x.dtype
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0, (attack, float(xa.min()), float(xa.max()))
    assert float(_norm(xa - x, norm).max()) <= eps * (1 + 1e-5) + 1e-5
    if trained:
        # the attack did something: it moved points (the box alone does not pin them)
        assert float(_norm(xa - x, norm).max()) > 0


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_teacher_attack_on_digits_stays_in_the_pixel_box(digits_setup, kind):
    from teachsim.attacks.teacher import teacher_attack

    task, x, y, models = digits_setup
    xa, found = teacher_attack(models[kind, True], task, x, radius=4.0, norm="l2", box=task.box,
                               generator=torch.Generator().manual_seed(2), steps=5, restarts=1)
    assert xa.shape == x.shape and found.shape == (len(x),)
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    assert float(_norm(xa - x, "l2").max()) <= 4.0 * (1 + 1e-5)
