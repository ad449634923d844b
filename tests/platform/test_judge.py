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
