"""The judge: metric names, the test set, determinism, and the invariants
the metric definitions require to be tested, on small real runs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from teachsim.agents.models import mlp
from teachsim.messages import ABSTAIN
from teachsim.platform import judge as J
from teachsim.schema import resolve
from teachsim.tasks.hidden_feature import HiddenFeature
from tiny import train_mlp

CONTRACT_METRICS = {"clean_acc", "broad_acc", "lp_robust_acc", "weak_robust_acc", "weak_coverage", "strong_robust_acc"}


def config(**given) -> dict:
    return resolve(J.PARAMS, {"test_points": 200, **given}, "judge")



def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_task(teacher: str = "linear", classes: int = 2) -> HiddenFeature:
    return HiddenFeature(0, dim=10, manifold_dim=2, classes=classes, teacher=teacher)


def untrained(task) -> nn.Module:
    return mlp(task.dim, task.classes, hidden=[32], init_std=0.0, generator=gen(3))


def trained(task, steps: int = 200) -> nn.Module:
    return train_mlp(task, 2000, steps, seed=1)[0]


class Shifted(nn.Module):
    """The teacher's logits plus a constant per-class offset (a shifted boundary)."""

    def __init__(self, task, offset):
        super().__init__()
        self.task = task
        self.offset = torch.as_tensor(offset, dtype=torch.float32)

    def forward(self, x):
        return self.task.logits(x) + self.offset


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.fixture(scope="module")
def test_set(task):
    return J.make_test_set(task, config(), 0)


@pytest.fixture(scope="module")
def snapshots(task):
    return {"untrained": untrained(task), "trained": trained(task)}


# --------------------------------------------------------------------------- names and test set


def test_metric_names_are_the_spec_ones(task, test_set):
    # the contract's six, and the certified lower bound where a verifier applies
    assert set(J.METRICS) == CONTRACT_METRICS | {"strong_robust_lb"} and len(J.METRICS) == 7
    out = J.judge(untrained(task), task, test_set, config(steps=5, strong_steps=5), 0)
    assert set(out) == CONTRACT_METRICS    # an MLP student in l2: no verifier, no lower bound
    assert all(isinstance(v, float) for v in out.values())


def test_test_set_is_teacher_certain_and_sized(task, test_set):
    n = config()["test_points"]
    for x, y in ((test_set.x, test_set.y), (test_set.broad_x, test_set.broad_y)):
        assert x.shape == (n, task.dim) and y.shape == (n,)
        assert not (y == ABSTAIN).any()
        np.testing.assert_array_equal(task.label(x), y)  # the labels are the teacher's
    assert set(np.unique(test_set.y)) == set(range(task.classes))
    # the data set lies on the manifold, the broad set does not
    assert np.all(test_set.x[:, task.k:] == 0)
    assert np.abs(test_set.broad_x[:, task.k:]).mean() > 0.5


def test_test_set_deterministic_per_seed(task, test_set):
    again = J.make_test_set(task, config(), 0)
    other = J.make_test_set(task, config(), 1)
    for field in ("x", "y", "broad_x", "broad_y"):
        np.testing.assert_array_equal(getattr(again, field), getattr(test_set, field))
    assert not np.array_equal(other.x, test_set.x)
    assert not np.array_equal(other.broad_x, test_set.broad_x)


def test_test_set_drops_abstentions_with_a_wide_uncertain_set():
    # gamma = 1 makes the teacher abstain on a large share of the data
    wide = HiddenFeature(0, dim=10, manifold_dim=2, gamma=1.0)
    assert (wide.label(wide.data.sample(1000, np.random.default_rng(0))) == ABSTAIN).mean() > 0.3
    ts = J.make_test_set(wide, config(test_points=300), 0)
    assert len(ts.y) == 300 and len(ts.broad_y) == 300
    assert not (ts.y == ABSTAIN).any() and not (ts.broad_y == ABSTAIN).any()


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("which", ["untrained", "trained"])
@pytest.mark.parametrize("norm,eps", [("l2", 2.0), ("l2", 0.3), ("linf", 0.3)])
def test_lp_robust_at_most_clean_and_coverage_in_unit_interval(task, test_set, snapshots, which, norm, eps):
    out = J.judge(copy.deepcopy(snapshots[which]), task, test_set,
                  config(norm=norm, eps=eps, steps=10, strong_steps=10), 0)
    assert out["lp_robust_acc"] <= out["clean_acc"]
    assert 0.0 <= out["weak_coverage"] <= 1.0
    for name in ("clean_acc", "broad_acc", "lp_robust_acc", "weak_robust_acc", "strong_robust_acc"):
        assert 0.0 <= out[name] <= 1.0, name
    if which == "trained":
        assert out["clean_acc"] > 0.95  # the snapshot is really a trained one


def test_trained_snapshot_is_attackable(task, test_set, snapshots):
    # the invariants above are not vacuous: at the default eps the attack bites
    out = J.judge(copy.deepcopy(snapshots["trained"]), task, test_set, config(), 0)
    assert out["lp_robust_acc"] < out["clean_acc"] - 0.2
    assert out["strong_robust_acc"] < 1.0


@pytest.mark.parametrize("kw", [dict(), dict(classes=3), dict(teacher="net", classes=3)],
                         ids=["linear-2", "linear-3", "net-3"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_eps_zero_robust_metrics_equal_clean(kw, norm):
    t = make_task(**kw)
    ts = J.make_test_set(t, config(), 0)
    for i, model in enumerate((untrained(t), trained(t, steps=5))):
        out = J.judge(model, t, ts, config(norm=norm, eps=0.0, strong_radius=0.0), 0)
        if i == 0:
            assert 0.0 < out["clean_acc"] < 1.0  # a student with errors, so equality is not trivial
        assert out["lp_robust_acc"] == out["clean_acc"]
        assert out["weak_robust_acc"] == out["clean_acc"]
        assert out["strong_robust_acc"] == out["clean_acc"]
        assert out["weak_coverage"] == 1.0


@pytest.mark.parametrize("kw", [dict(), dict(classes=3), dict(teacher="net"), dict(teacher="net", classes=3)],
                         ids=["linear-2", "linear-3", "net-2", "net-3"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_teacher_as_student_scores_one(kw, norm):
    t = make_task(**kw)
    ts = J.make_test_set(t, config(), 0)
    eps = 2.0 if norm == "l2" else 0.5
    out = J.judge(t.as_model(), t, ts, config(norm=norm, eps=eps, strong_radius=eps), 0)
    for name in ("clean_acc", "broad_acc", "weak_robust_acc", "strong_robust_acc"):
        assert out[name] == 1.0, (name, out)
    assert out["weak_coverage"] > 0


def test_judge_deterministic(task, test_set, snapshots):
    cfg = config(steps=20, strong_steps=20)
    a = J.judge(copy.deepcopy(snapshots["trained"]), task, test_set, cfg, 7)
    b = J.judge(copy.deepcopy(snapshots["trained"]), task, test_set, cfg, 7)
    c = J.judge(copy.deepcopy(snapshots["trained"]), task, J.make_test_set(task, config(), 0), cfg, 7)
    assert a == b == c
    assert not any(math.isnan(v) for v in a.values())


def test_more_attacks_never_raise_lp_robustness(task, test_set, snapshots):
    # a point is l_p-robust only if every attack in the set fails
    model = snapshots["trained"]
    one = J.judge(copy.deepcopy(model), task, test_set, config(eps=0.5, attacks=["fgsm"], steps=10, strong_steps=5), 0)
    two = J.judge(copy.deepcopy(model), task, test_set,
                  config(eps=0.5, attacks=["fgsm", "pgd"], steps=10, strong_steps=5), 0)
    assert two["lp_robust_acc"] <= one["lp_robust_acc"]
    assert two["clean_acc"] == one["clean_acc"]


# --------------------------------------------------------------------------- lp vs weak robustness


def test_lp_robustness_penalises_the_teacher_itself(task, test_set):
    # l_p robustness scores attacked points against the *clean* label. A
    # large l2 ball crosses the teacher's own boundary, so the perfect student loses l_p
    # robustness, while weak robustness (scored against the teacher at x') stays 1.
    out = J.judge(task.as_model(), task, test_set, config(norm="l2", eps=2.0), 0)
    assert out["lp_robust_acc"] < 0.5
    assert out["weak_robust_acc"] == 1.0
    assert 0.0 < out["weak_coverage"] < 1.0  # some attacked points land in the uncertain set


def test_weak_robustness_below_lp_for_a_shifted_boundary(task, test_set):
    # The other direction: a student whose boundary is the teacher's shifted by s. An
    # attack of size eps < s cannot move the student across its own boundary from the far
    # side, so those points count as l_p-robust, yet the attacked points lie across the
    # teacher's boundary, where the teacher certainly disagrees with the student.
    student = Shifted(task, [-1.0, 1.0])  # linear 2-class teacher logits are (u.z, -u.z): boundary at u.z = 1
    out = J.judge(student, task, test_set, config(norm="l2", eps=1.0), 0)
    assert out["weak_robust_acc"] < out["lp_robust_acc"] - 0.1


# -- judge keys an attack cannot take -----------------------------------------------------------

def test_builtin_attack_options_table_matches_the_signatures():
    import inspect

    from teachsim import registry
    from teachsim.platform.judge_params import ATTACK_OPTIONS, BUILTIN_ATTACK_OPTIONS

    lp = [n for n in registry.attacks.names() if n != "teacher"]
    assert sorted(BUILTIN_ATTACK_OPTIONS) == lp
    for name in lp:
        takes = inspect.signature(registry.attacks.get(name).factory).parameters
        assert BUILTIN_ATTACK_OPTIONS[name] == tuple(k for k in ATTACK_OPTIONS if k in takes), name


@pytest.mark.parametrize("judge, field", [
    ({"attacks": ["pgd", "beta"], "loss": "margin"}, "judge.loss"),       # beta has no loss: once dropped silently
    ({"attack_sets": [["pgd"], ["beta"]], "loss": "margin"}, "judge.loss"),   # in any attack set too
])
def test_a_judge_key_an_attack_cannot_take_is_refused(judge, field):
    from teachsim.config import resolve_judge
    from teachsim.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        resolve_judge(judge)
    assert err.value.field == field and "does not take" in str(err.value)


def test_judge_keys_every_attack_takes_or_defaults_are_accepted():
    from teachsim.config import resolve_judge

    assert resolve_judge({"attacks": ["pgd", "apgd-ce"], "loss": "margin", "steps": 10})["loss"] == "margin"
    assert resolve_judge({"attacks": ["pgd", "beta"], "loss": "ce"})["attacks"] == ["pgd", "beta"]  # the default
    # FGSM is one step by definition: steps and restarts for the others ignore nothing
    assert resolve_judge({"attacks": ["pgd"], "attack_sets": [["fgsm"]], "steps": 5})["steps"] == 5


def test_the_judge_hands_an_attack_exactly_the_keys_it_takes(monkeypatch):
    from teachsim import registry

    seen = {}

    def spy(model, x, y, *, eps, norm, box, generator, steps):
        seen.update(steps=steps)
        return x

    with registry.scoped():
        registry.attacks.register("spy", spy)
        J.call_attack("spy", nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                      {"eps": 1.0, "norm": "l2", "steps": 7, "restarts": 3, "loss": "margin"}, None, None)
    assert seen == {"steps": 7}


# --------------------------------------------------------------------------- checkpoints together


def test_routed_models_give_each_row_its_own_models_logits_and_input_gradient():
    from teachsim.agents import cohort as C
    from teachsim.agents.cohort import Routed

    task = make_task()
    models = [J._prepared(mlp(task.dim, 2, hidden=[16], init_std=0.5, generator=gen(s))) for s in range(3)]
    x = torch.randn(7, task.dim, generator=gen(9)).requires_grad_(True)
    owner = torch.tensor([0, 0, 0, 2, 2, 2, 2])          # unequal blocks, model 1 has no rows
    routed = Routed(models, owner)
    assert routed.stacked is not None and routed.counts == [3, 0, 4]
    out = routed(x)
    want = torch.cat([models[0](x[:3]), models[2](x[3:])])
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    (got,) = torch.autograd.grad(out[:, 1].sum(), x)
    (expect,) = torch.autograd.grad(want[:, 1].sum(), x)
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)
    # only the models that own rows run (model 1 is left out of the stack): the same bits
    # as the whole stack with model 1's block all padding
    full = C.Stacked(models).requires_grad_(False)
    padded = torch.zeros(3 * 4, task.dim).index_copy(0, torch.tensor([0, 1, 2, 8, 9, 10, 11]), x.detach())
    assert routed._run is not routed.stacked and routed._run.k == 2
    assert torch.equal(routed(x.detach()), full(padded)[[0, 1, 2, 8, 9, 10, 11]])
    narrowed = routed.rows(torch.tensor([1, 5]))           # one row of model 0, one of model 2
    assert narrowed.counts == [1, 0, 1]
    torch.testing.assert_close(narrowed(x[[1, 5]]), want[[1, 5]], rtol=1e-6, atol=1e-6)
    # a model Stacked cannot batch runs model by model
    shifted = [Shifted(task, [0.5, 0.0]), Shifted(task, [0.0, 0.5])]
    loop = Routed.blocks(shifted, 2)
    assert loop.stacked is None
    assert torch.equal(loop(x[:4]), torch.cat([shifted[0](x[:2]), shifted[1](x[2:4])]))
    with pytest.raises(ValueError, match="non-decreasing"):
        Routed(models, torch.tensor([1, 0]))


def _scores_by_budget(rows):
    out: dict = {}
    for budget, name, value in rows:
        out.setdefault(budget, {})[name] = value
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.mark.parametrize("teacher,classes", [("linear", 2), ("net", 3)])
def test_checkpoints_judged_together_score_as_each_judged_alone(teacher, classes):
    # judge_episode searches and attacks all of an episode's checkpoints in one pass; each
    # checkpoint's scores must be those judge() gives it alone: the search's stopping
    # rules, random starts (restarts 4: one from a random point, each checkpoint's own
    # draws) and polish per checkpoint as alone, and every attack of the set batched
    task = make_task(teacher, classes)
    models = {0.0: untrained(task), 50.0: train_mlp(task, 300, 40, seed=2)[0], 400.0: trained(task)}
    cfg = config(test_points=120, eps=0.5, strong_radius=1.0, attacks=["pgd", "beta"],
                 attack_sets=[["fgsm"], ["pgd", "apgd-ce"]], steps=10, strong_steps=30, strong_restarts=4)
    scores, flags, judged = J.judge_episode({b: copy.deepcopy(m) for b, m in models.items()}, task, cfg, 0)
    together = _scores_by_budget(scores)
    test = J.make_test_set(task, cfg, 0)
    strong = set()
    for budget, model in models.items():
        alone = J.judge(copy.deepcopy(model), task, test, cfg, 0)
        assert _same(together[budget], alone), (budget, together[budget], alone)
        strong.add(alone["strong_robust_acc"])
        for name, attacks in (("fgsm/l2/0.5", ["fgsm"]), ("pgd+apgd-ce/l2/0.5", ["pgd", "apgd-ce"])):
            mine = _scores_by_budget(judged[name]["scores"])[budget]
            assert _same(mine, J.judge(copy.deepcopy(model), task, test, {**cfg, "attacks": attacks}, 0))
    assert len(strong) > 1   # the checkpoints differ: the routing is not comparing a model with itself


def test_non_stackable_checkpoints_judged_together_score_as_alone():
    task = make_task()
    models = {0.0: Shifted(task, [0.3, 0.0]), 1.0: Shifted(task, [0.0, 0.2])}
    cfg = config(test_points=80, eps=0.5, strong_radius=1.0, steps=5, strong_steps=10)
    together = _scores_by_budget(J.judge_episode(models, task, cfg, 0)[0])
    test = J.make_test_set(task, cfg, 0)
    for budget, model in models.items():
        assert _same(together[budget], J.judge(model, task, test, cfg, 0))


def test_checkpoints_beyond_the_memory_cap_go_in_several_passes(monkeypatch):
    task = make_task()
    models = {b: train_mlp(task, 200, steps, seed=3)[0] for b, steps in ((0.0, 1), (1.0, 20), (2.0, 80))}
    cfg = config(test_points=60, eps=0.5, strong_radius=1.0, steps=5, strong_steps=15)
    one_pass = J.judge_episode({b: copy.deepcopy(m) for b, m in models.items()}, task, cfg, 0)[0]
    x = J.make_test_set(task, cfg, 0).x
    monkeypatch.setattr(J, "TOGETHER_ELEMENTS", 2 * x.size)   # two checkpoints per pass
    assert [list(g) for g in J._groups(3, torch.from_numpy(x))] == [[0, 1], [2]]
    assert J.judge_episode({b: copy.deepcopy(m) for b, m in models.items()}, task, cfg, 0)[0] == one_pass


@pytest.mark.parametrize("classes", [2, 3])
def test_a_checkpoint_s_search_is_the_same_bits_in_any_pass_under_an_affine_teacher(classes):
    # The student's side of a pass (routed, each block padded) gives a checkpoint's search
    # the same bits alone, first, last, beside more or fewer. (A curved teacher's tanh on
    # all rows at once can differ in the last bit, so a cohort on the CPU judges each
    # checkpoint alone: agents.cohort.PASS.)
    from teachsim import seeding
    from teachsim.attacks.teacher import teacher_attack

    task = make_task("linear", classes)
    models = [J._prepared(m) for m in (untrained(task), train_mlp(task, 300, 40, seed=2)[0], trained(task),
                                       train_mlp(task, 300, 150, seed=5)[0])]
    cfg = config(test_points=150, strong_radius=1.0, strong_steps=30, strong_restarts=4)
    x = torch.from_numpy(J.make_test_set(task, cfg, 0).x)

    def search(ms):
        gens = seeding.Generators([seeding.torch_generator(0, "judge", "teacher") for _ in ms])
        out, found = teacher_attack(J._together(ms, len(x)), task, x.repeat(len(ms), 1), radius=1.0, norm="l2",
                                    box=task.box, generator=gens, steps=30, restarts=4)
        return list(zip(out.chunk(len(ms)), found.chunk(len(ms))))

    alone = [search([m])[0] for m in models]
    assert len({int(f.sum()) for _, f in alone}) > 1   # the checkpoints differ
    for pick in ([0, 1], [1, 0], [2, 3, 1], [3, 2, 1, 0], [1, 1, 2]):
        for i, (out, found) in zip(pick, search([models[i] for i in pick])):
            assert torch.equal(out, alone[i][0]) and torch.equal(found, alone[i][1]), pick


def test_checkpoints_judged_in_passes_of_one_join_into_the_episode_s_judging():
    task = make_task()
    models = {0.0: untrained(task), 50.0: train_mlp(task, 300, 40, seed=2)[0], 400.0: trained(task)}
    cfg = config(test_points=80, eps=0.5, strong_radius=1.0, steps=5, strong_steps=15, attack_sets=[["fgsm"]])
    whole = J.judge_episode({b: copy.deepcopy(m) for b, m in models.items()}, task, cfg, 0)
    parts = J.judge_episodes([{b: copy.deepcopy(m)} for b, m in models.items()], task, cfg, 0)
    assert J.join_checkpoints(parts) == whole
