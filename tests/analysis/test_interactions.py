"""Multi-order interactions (Ren et al., arXiv 2103.07364): the exact computation
against the identities of section 4.2 / Appendix B, the Monte-Carlo estimator against the
exact values, additive models, determinism, grid players, and the CLI on a tiny run."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

import teachsim
from teachsim.cli import main
from teachsim.analysis.interactions import (
    data_mean,
    exact_interactions,
    interaction_profile,
    interactions_from_values,
    orders_from_ratios,
    player_matrix,
    sampled_interactions,
    set_function,
    utility_coef,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: one thread is fastest


def _mlp(d: int, classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                               torch.nn.Tanh(), torch.nn.Linear(16, classes))


def _point(d: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g) * 2, torch.randn(d, generator=g) * 0.1


def _bit(S) -> int:
    return sum(1 << p for p in S)


def _shapley(v: torch.Tensor, n: int, i: int) -> float:
    others = [t for t in range(n) if t != i]
    return sum(math.factorial(len(S)) * math.factorial(n - len(S) - 1) / math.factorial(n)
               * (v[_bit(S) | 1 << i] - v[_bit(S)]).item()
               for m in range(n) for S in itertools.combinations(others, m))


def _shapley_interaction(v: torch.Tensor, n: int, i: int, j: int) -> float:
    """Grabisch-Roubens Shapley interaction index of the pair (i, j), by its definition."""
    others = [t for t in range(n) if t not in (i, j)]
    total = 0.0
    for m in range(n - 1):
        w = math.factorial(m) * math.factorial(n - m - 2) / math.factorial(n - 1)
        for S in itertools.combinations(others, m):
            s = _bit(S)
            total += w * (v[s | 1 << i | 1 << j] - v[s | 1 << i] - v[s | 1 << j] + v[s]).item()
    return total


# -- exact computation and the identities the decomposition rests on -----------------------------------

@pytest.mark.parametrize("n", [6, 7, 8])
def test_exact_identities(n):
    f = _mlp(n, seed=n)
    x, base = _point(n, seed=n)
    v = set_function(f, x, base)
    Imat = exact_interactions(f, x, base)                      # (n-1, n, n), all orders
    assert Imat.shape == (n - 1, n, n)
    assert torch.allclose(Imat, Imat.transpose(1, 2)) and torch.all(torch.diagonal(Imat, dim1=1, dim2=2) == 0)
    # v is the paper's log-probability of the predicted class
    c = int(f(x[None]).argmax(1))
    assert v[-1].item() == pytest.approx(torch.log_softmax(f(x[None]), 1)[0, c].item(), abs=1e-6)
    assert v[0].item() == pytest.approx(torch.log_softmax(f(base[None]), 1)[0, c].item(), abs=1e-6)

    w = torch.tensor([utility_coef(n, m) for m in range(n - 1)], dtype=torch.float64)
    single = torch.tensor([(v[1 << i] - v[0]).item() for i in range(n)], dtype=torch.float64)
    # efficiency / decomposition: v(N) - v(empty) = sum_i [v(i) - v(empty)] + sum_{i != j} sum_m w_m I^(m)(i,j)
    rhs = single.sum() + (w[:, None, None] * Imat).sum()
    assert (v[-1] - v[0]).item() == pytest.approx(rhs.item(), abs=1e-9)
    for i in range(n):
        # Shapley value: phi(i) = v(i) - v(empty) + sum_{j != i} sum_m w_m I^(m)(i,j)
        phi = single[i] + (w[:, None] * Imat[:, i, :]).sum()
        assert phi.item() == pytest.approx(_shapley(v, n, i), abs=1e-9)
    for i, j in [(0, 1), (2, n - 1), (n - 2, n - 1)]:
        # Shapley interaction index: (1/(n-1)) sum_m I^(m)(i,j)
        assert (Imat[:, i, j].sum() / (n - 1)).item() == pytest.approx(_shapley_interaction(v, n, i, j), abs=1e-9)


def test_exact_single_order_and_definition():
    n = 6
    f = _mlp(n, seed=3)
    x, base = _point(n, seed=3)
    v = set_function(f, x, base, label=2)
    I2 = exact_interactions(f, x, base, 2, label=2)
    assert I2.shape == (n, n)
    # by hand for the pair (1, 4) at order 2
    dv = [(v[_bit(S) | 2 | 16] - v[_bit(S) | 2] - v[_bit(S) | 16] + v[_bit(S)]).item()
          for S in itertools.combinations([0, 2, 3, 5], 2)]
    assert I2[1, 4].item() == pytest.approx(np.mean(dv), abs=1e-12)
    assert torch.allclose(interactions_from_values(v, n, [2])[0], I2)


def test_appendix_b_random_set_function():
    # Appendix B's check on a random set function (not a network), n = 6
    n = 6
    rng = np.random.default_rng(0)
    v = torch.from_numpy(rng.normal(size=2 ** n))
    Imat = interactions_from_values(v, n)
    w = torch.tensor([utility_coef(n, m) for m in range(n - 1)], dtype=torch.float64)
    rhs = sum(v[1 << i] - v[0] for i in range(n)) + (w[:, None, None] * Imat).sum()
    assert (v[-1] - v[0]).item() == pytest.approx(rhs.item(), abs=1e-9)
    phi2 = v[4] - v[0] + (w[:, None] * Imat[:, 2, :]).sum()
    assert phi2.item() == pytest.approx(_shapley(v, n, 2), abs=1e-9)


def test_additive_model_has_no_interactions():
    d = 10
    lin = torch.nn.Linear(d, 4)

    class Additive(torch.nn.Module):      # a sum of per-feature nonlinear terms per class
        def forward(self, x):
            return lin(torch.sin(3 * x) + x ** 2)

    x, base = _point(d, seed=5)
    for f in (lin, Additive()):
        Imat = exact_interactions(f, x, base, output="logit")
        assert Imat.abs().max().item() < 1e-5
        R = sampled_interactions(f, x, base, [0, 3, 8], samples=20, output="logit",
                                 generator=torch.Generator().manual_seed(0), num_pairs=10)
        assert R.mean.abs().max().item() < 1e-5
    # but the paper's log-probability couples the features through the softmax normaliser
    assert exact_interactions(lin, x, base).abs().max().item() > 1e-4


# -- the Monte-Carlo estimator ----------------------------------------------------------------

@pytest.mark.parametrize("n,output", [(8, "log_prob"), (10, "log_odds")])
def test_sampled_matches_exact_within_mc_error(n, output):
    f = _mlp(n, seed=10 + n)
    x, base = _point(n, seed=n)
    E = exact_interactions(f, x, base, output=output)
    orders = list(range(n - 1))
    R = sampled_interactions(f, x, base, orders, samples=400, output=output,
                             generator=torch.Generator().manual_seed(0), num_pairs=1000)
    assert len(R.pairs) == n * (n - 1) // 2                  # all pairs when few
    exact = E[:, R.pairs[:, 0], R.pairs[:, 1]]
    err = (R.mean - exact).abs()
    # orders 0 and n-2 have a single context: exact; the rest within 5 standard errors
    assert torch.all(err[[0, -1]] < 1e-5)
    assert torch.all(err <= 5 * R.sem + 1e-6), (err / (R.sem + 1e-12)).max()
    assert exact.abs().mean() > 10 * R.sem.mean()            # the check is not vacuous


def test_grid_players_match_exact():
    # a 4x4 "image" with 2x2 cells: 4 players
    P = player_matrix(16, 2)
    assert P.shape == (4, 16) and torch.all(P.sum(0) == 1) and torch.all(P.sum(1) == 4)
    assert P[0, [0, 1, 4, 5]].sum() == 4 and P[3, [10, 11, 14, 15]].sum() == 4
    f = _mlp(16, seed=2)
    x, base = _point(16, seed=2)
    E = exact_interactions(f, x, base, grid=2)
    R = sampled_interactions(f, x, base, [0, 1, 2], samples=300, grid=2,
                             generator=torch.Generator().manual_seed(1))
    exact = E[:, R.pairs[:, 0], R.pairs[:, 1]]
    assert torch.all((R.mean - exact).abs() <= 5 * R.sem + 1e-6)
    with pytest.raises(ValueError):
        player_matrix(15, 2)


def test_sampled_deterministic_under_seed_and_batched():
    n = 9
    f = _mlp(n, seed=4)
    X = torch.randn(3, n, generator=torch.Generator().manual_seed(0))
    base = torch.zeros(n)

    def go(seed):
        return sampled_interactions(f, X, base, [1, 4, 7], samples=30, num_pairs=5,
                                    generator=torch.Generator().manual_seed(seed), label=[0, 1, 2])

    a, b, c = go(7), go(7), go(8)
    assert a.mean.shape == (3, 3, 5)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.pairs, b.pairs)
    assert not torch.equal(a.mean, c.mean)
    assert orders_from_ratios(66, [0.05, 0.5, 0.95]) == [3, 32, 60]


def test_profile_table():
    class Task:
        name, box = "toy", None

        class data:
            @staticmethod
            def sample(n, rng):
                return rng.normal(size=(n, 8)).astype(np.float32)

    f = _mlp(8, seed=6)
    X = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    t = interaction_profile(f, Task, X, ratios=(0.1, 0.5, 0.9), attacked=X + 0.5, samples=10, num_pairs=5)
    assert list(t["input"].unique()) == ["clean", "attacked"] and len(t) == 6
    assert list(t["order"][:3]) == [0, 3, 5] and (t["mean_abs"] >= 0).all()
    assert t["coef"].iloc[0] == pytest.approx(utility_coef(8, 0))


# -- the CLI on a tiny real run -----------------------------------------------------------------

def test_cli_writes_csv_and_png(tmp_path, capsys):
    config = {
        "name": "inter", "seeds": [0], "budgets": [0, 10],
        "task": {"name": "hidden-feature", "dim": 8},
        "judge": {"test_points": 40, "steps": 5, "restarts": 1, "strong_steps": 5, "strong_restarts": 1},
        "protocols": [{"name": "passive"}],
    }
    run = teachsim.run(config, out=tmp_path / "run", executor="serial", progress=False)
    rc = main(["interactions", str(run.dir), "--points", "5", "--samples", "10", "--ratios", "0.2", "0.5", "0.9"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "mean_abs" in out and "interactions.csv" in out
    table = pd.read_csv(run.dir / "interactions.csv")
    assert set(table["input"]) == {"clean", "attacked"} and len(table) == 6
    assert set(table["budget"]) == {10.0} and (table["n_players"] == 8).all()
    assert (run.dir / "plots" / "interactions.png").stat().st_size > 1000
    assert main(["interactions", str(run.dir), "--budget", "0", "--points", "3", "--samples", "5",
                 "--ratios", "0.5"]) == 0


# -- the same checks on a student a real run trained --------------------------------------------

@pytest.fixture(scope="module")
def trained_student(tmp_path_factory, tiny_base):
    """A saved student of a real run: hidden-feature in dimension 10 (10 players), passive."""
    cfg = {**tiny_base, "seeds": [0], "task": {"name": "hidden-feature", "dim": 10, "manifold_dim": 2},
           "protocols": [{"name": "passive"}]}
    run = teachsim.run(cfg, out=tmp_path_factory.mktemp("trained") / "run", executor="serial", progress=False)
    model = run.student(1, 20)
    x, y = run.test_set(1)
    return model, torch.from_numpy(x[:3]), y[:3], torch.from_numpy(data_mean(run.task(1)))


def test_on_a_trained_student_the_estimator_matches_exact_and_the_orders_sum_to_the_utility(trained_student):
    model, xs, ys, base = trained_student
    n = xs.shape[1]
    w = torch.tensor([utility_coef(n, m) for m in range(n - 1)], dtype=torch.float64)
    for x, y in zip(xs, ys):
        v = set_function(model, x, base, label=int(y))
        E = exact_interactions(model, x, base, label=int(y))
        single = torch.tensor([(v[1 << i] - v[0]).item() for i in range(n)], dtype=torch.float64)
        # the decomposition the paper's findings rest on: the utility is the weighted sum of orders
        assert (v[-1] - v[0]).item() == pytest.approx((single.sum() + (w[:, None, None] * E).sum()).item(), abs=1e-6)
        R = sampled_interactions(model, x, base, list(range(n - 1)), label=int(y), samples=300, num_pairs=1000,
                                 generator=torch.Generator().manual_seed(int(y)))
        exact = E[:, R.pairs[:, 0], R.pairs[:, 1]]
        err = (R.mean - exact).abs()
        assert torch.all(err <= 5 * R.sem + 1e-6), (err / (R.sem + 1e-12)).max()
        assert exact.abs().mean() > 5 * R.sem.mean()           # a trained student interacts: not vacuous


def test_the_strong_split_is_the_judge_s_and_profiles_each_group(tmp_path, tiny_base, capsys):
    """Interactions under the teacher-relative view: the points where the judge's search
    found a teacher-certain counterexample, and those where it did not, profiled apart.
    The split is the judge's own: on the test set it gives exactly strong_robust_acc."""
    from teachsim.platform.judge import strong_counterexamples

    cfg = {**tiny_base, "seeds": [0], "protocols": [{"name": "passive"}],
           "judge": {**tiny_base["judge"], "strong_radius": 0.6}}   # some points robust, some not
    run = teachsim.run(cfg, out=tmp_path / "run", executor="serial", progress=False)
    spec, final = run.spec(1), max(cfg["budgets"])
    model = run.student(1, final)
    x, _ = run.test_set(1)
    found = strong_counterexamples(model, run.task(1), x, spec.judge, spec.seed)
    scores = run.scores
    judged = scores[(scores["budget"] == final) & (scores["metric"] == "strong_robust_acc")]["value"].item()
    assert int((~found).sum()) == round(judged * len(found))   # the same points, not merely a close share
    assert 0 < found.sum() < len(found)                     # both groups exist here: the test means something

    assert main(["interactions", str(run.dir), "--split", "strong", "--points", "40", "--samples", "10",
                 "--pairs", "4", "--ratios", "0.2", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "strong split: a teacher-certain counterexample within strong_radius" in out
    table = pd.read_csv(run.dir / "interactions.csv")
    groups = table.groupby("group")["points"].first()
    assert set(groups.index) <= {"counterexample found", "no counterexample"}
    assert groups.sum() == 40 or groups.sum() == table["points"].max()   # every kept point in one group
    assert set(table["input"]) == {"clean", "attacked"} and set(table["ratio"]) == {0.2, 0.8}
