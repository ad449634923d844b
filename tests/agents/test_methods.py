"""The learning methods: the adversarial-training family, their
weight rules against hand-computed values, determinism, boxes, config, and two small
science checks (pgd-at beats erm on l_p robustness; BETA is at least as strong as PGD-CE)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

import teachsim
from teachsim import registry
from teachsim.agents import methods as M
from teachsim.agents.models import mlp
from teachsim.attacks.beta import beta
from teachsim.attacks.pgd import pgd
from teachsim.cli import main
from teachsim.errors import ConfigError
from teachsim.messages import ABSTAIN
from teachsim.config import resolve_experiment, resolve_student
from teachsim.tasks.hidden_feature import HiddenFeature

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: one thread is fastest

NAMES = ("erm", "pgd-at", "trades", "beta-at", "lrat", "gairat", "mail")
ADVERSARIAL = NAMES[1:]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def method(name: str):
    return registry.methods.get(name).factory


def batch(dim: int = 6, classes: int = 3, n: int = 32, seed: int = 0):
    g = gen(seed)
    return torch.randn(n, dim, generator=g), torch.randint(classes, (n,), generator=g)


# -- weight rules against hand-computed values -----------------------------------------

def test_gairat_weights_by_hand():
    # K = 10, h = floor(10/2) = 5, lambda = -1:  raw(kappa) = (1 + tanh(-1 + 5 * (5 - kappa) / 5)) / 2
    #   kappa = 0  -> (1 + tanh(4)) / 2;  kappa = 5 -> (1 + tanh(-1)) / 2;  kappa = 10 -> (1 + tanh(-6)) / 2
    # normalised: raw * B / sum(raw), B = 3
    raw = [(1 + math.tanh(4)) / 2, (1 + math.tanh(-1)) / 2, (1 + math.tanh(-6)) / 2]
    want = [r * 3 / sum(raw) for r in raw]
    got = M.gairat_weights(torch.tensor([0, 5, 10]), 10, -1.0)
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert got.tolist() == pytest.approx([2.68037, 0.31961, 0.0000165], abs=1e-5)
    assert float(got.mean()) == pytest.approx(1.0)
    # K = 4, h = 2, lambda = 0: raw = (1 + tanh(5 * (2 - kappa) / 2)) / 2 -> kappa 1: (1 + tanh 2.5) / 2,
    # kappa 3: (1 - tanh 2.5) / 2; they sum to 1, so normalised = 2 * raw = 1 +- tanh(2.5) = 1.98661, 0.01339
    got = M.gairat_weights(torch.tensor([1, 3]), 4, 0.0)
    assert got.tolist() == pytest.approx([1.98661, 0.01339], abs=1e-5)


def test_mail_weights_by_hand():
    # w = 3 * sigmoid(slope * (pm + bias)); slope 1, bias -1.5:
    #   pm = -1 -> 3 sigmoid(-2.5) = 3 / (1 + e^2.5) = 0.22757;  pm = 0 -> 3 / (1 + e^1.5) = 0.54728
    #   pm = 0.5 -> 3 / (1 + e^1) = 0.80682;  pm = 1.5 -> 3 sigmoid(0) = 1.5
    want = [3 / (1 + math.exp(2.5)), 3 / (1 + math.exp(1.5)), 3 / (1 + math.exp(1.0)), 1.5]
    got = M.mail_weights(torch.tensor([-1.0, 0.0, 0.5, 1.5]), 1.0, -1.5)
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert got.tolist() == pytest.approx([0.22757, 0.54728, 0.80682, 1.5], abs=1e-5)
    # slope 2, bias 0, pm = 0.25 -> 3 sigmoid(0.5) = 3 / (1 + e^-0.5) = 1.86738; no batch normalisation
    assert M.mail_weights(torch.tensor([0.25]), 2.0, 0.0).tolist() == pytest.approx([1.86738], abs=1e-5)


def test_probabilistic_margin_by_hand():
    # logits (0, ln 2, ln 3) -> p = (1/6, 2/6, 3/6)
    #   y = 0: best other p = 3/6, PM = 3/6 - 1/6 = 1/3;  y = 2: best other 2/6, PM = 2/6 - 3/6 = -1/6
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]))
    pm = M.probabilistic_margin(logits, torch.tensor([0, 2]))
    assert pm.tolist() == pytest.approx([1 / 3, -1 / 6], abs=1e-6)


def test_lrat_weights_by_hand():
    # omega = 1 - c / (K + 1), K = 10: c = 0 -> 1; c = 3 -> 1 - 3/11 = 0.72727; c = 11 -> 0
    got = M.lrat_weights(torch.tensor([0, 3, 11]), 10)
    assert got.tolist() == pytest.approx([1.0, 8 / 11, 0.0], abs=1e-6)


def test_attack_trace_counts_kappa_by_hand():
    # One feature, logits (0, x): class 1 iff x > 0. x = 1, y = 1, linf eps 2, K = 4 steps of
    # 2.5 * 2 / 4 = 1.25 down the cross-entropy (start x + 0.001 N(0, 1)):
    #   iterates ~1 (correct), -0.25, -1 (eps-ball edge), -1, final -1: kappa = 1 (checked before each
    #   of the 4 steps), final wrong -> c = 1; GAIRAT (h = 2, lambda = 0) raw (1 + tanh(2.5)) / 2;
    #   LRAT omega = 1 - 1/5 = 0.8
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [1.0]]))
        model.bias.zero_()
    tr = M.train_attack(model, torch.tensor([[1.0], [5.0]]), torch.tensor([1, 1]), eps=2.0, norm="linf",
                        steps=4, generator=gen(0), start="near")
    assert tr.x_adv[:, 0].tolist() == pytest.approx([-1.0, 3.0], abs=1e-6)
    assert tr.kappa.tolist() == [1, 4]
    assert tr.final_correct.tolist() == [False, True]
    c = tr.kappa + tr.final_correct.long()
    assert M.lrat_weights(c, 4).tolist() == pytest.approx([0.8, 0.0])


# -- every method: a finite scalar loss, gradients, determinism, boxes --------------------

@pytest.mark.parametrize("name", NAMES)
def test_method_gives_finite_loss_with_gradients(name):
    model = mlp(6, 3, hidden=[8], init_std=0.0, generator=gen(0))
    model.train()
    x, y = batch()
    ctx = M.TrainContext(generator=gen(1), params={"eps": 0.5, "attack_steps": 3})
    loss = method(name)(model, x, y, ctx)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert model.training, "the method must leave the model in train mode"
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_gradients_stay_finite_when_probabilities_underflow(name):
    # a confident student (a cnn on digits after a few hundred steps) has classes whose softmax
    # is exactly 0: trades version 1 took log(0) * 0 = NaN in the gradient of its KL target
    model = mlp(6, 3, hidden=[8], init_std=0.0, generator=gen(0))
    with torch.no_grad():
        model[-1].weight.mul_(400.0)
        model[-1].bias.copy_(torch.tensor([200.0, 0.0, -200.0]))
    x, y = batch()
    assert (torch.softmax(model(x), 1) == 0).any()
    loss = method(name)(model, x, y, M.TrainContext(generator=gen(1), params={"eps": 0.5, "attack_steps": 3}))
    loss.backward()
    for pname, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), pname


def test_trades_is_version_2():
    assert registry.methods.get("trades").version == 2
    assert resolve_student({"method": "trades"})["method"] == "trades@2"


@pytest.mark.parametrize("name", NAMES)
def test_method_is_deterministic_under_a_seed(name):
    x, y = batch()
    losses = []
    for seed in (7, 7, 8):
        model = mlp(6, 3, hidden=[8], init_std=0.0, generator=gen(0))
        ctx = M.TrainContext(generator=gen(seed), params={"eps": 0.5, "attack_steps": 3})
        losses.append(method(name)(model, x, y, ctx).item())
    assert losses[0] == losses[1]
    if name != "erm":                      # a random start: another seed, another loss
        assert losses[0] != losses[2]


@pytest.mark.parametrize("norm", ("linf", "l2"))
@pytest.mark.parametrize("name", ADVERSARIAL)
def test_method_attacks_stay_in_the_box(name, norm):
    """Every input the method feeds the model lies in the box and within eps of the batch."""
    dim, eps = 6, 1.0
    model = mlp(dim, 3, hidden=[8], init_std=0.0, generator=gen(0))
    x = torch.rand(16, dim, generator=gen(2)) * 0.1
    y = torch.randint(3, (16,), generator=gen(3))
    box = (np.zeros(dim, np.float32), np.full(dim, 0.1, np.float32))     # far smaller than eps
    seen: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    try:
        ctx = M.TrainContext(generator=gen(1), box=box, params={"eps": eps, "norm": norm, "attack_steps": 3})
        method(name)(model, x, y, ctx)
    finally:
        hook.remove()
    inputs = torch.cat(seen)
    assert len(inputs) > len(x)                      # the attack's points were seen
    assert inputs.min() >= 0.0 and inputs.max() <= 0.1 + 1e-7


@pytest.mark.parametrize("start", ("ball", "near"))
@pytest.mark.parametrize("norm", ("linf", "l2"))
def test_train_attack_respects_box_and_ball(norm, start):
    dim, eps = 5, 0.3
    model = mlp(dim, 3, hidden=[8], init_std=0.0, generator=gen(0))
    x = torch.rand(64, dim, generator=gen(2))
    y = torch.randint(3, (64,), generator=gen(3))
    box = (np.full(dim, 0.0, np.float32), np.full(dim, 1.0, np.float32))
    tr = M.train_attack(model, x, y, eps=eps, norm=norm, steps=5, box=box, generator=gen(4), start=start)
    d = (tr.x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all()
    assert tr.x_adv.min() >= 0.0 and tr.x_adv.max() <= 1.0
    assert ((tr.x_adv == 0) | (tr.x_adv == 1)).any()   # the box was binding somewhere
    assert not tr.x_adv.requires_grad


# -- registry, CLI, config ----------------------------------------------------------------

def test_list_methods_shows_all_seven(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert f"  {name} " in out, name
    for key in ("eps", "norm", "attack_steps", "trades_beta", "gairat_lambda", "mail_slope", "mail_bias"):
        assert key in out, key


def test_config_with_method_params_resolves():
    out = resolve_student({"method": "pgd-at", "eps": 0.5})
    assert out["method"] == "pgd-at" and out["eps"] == 0.5
    assert out["norm"] == "l2" and out["attack_steps"] == 10
    assert resolve_student({"method": "trades"})["trades_beta"] == 6.0
    exp = resolve_experiment({"name": "x", "seeds": [0], "budgets": [0], "task": {"name": "hidden-feature"},
                              "student": {"method": "pgd-at", "eps": 0.5}, "protocols": [{"name": "passive"}]})
    assert exp is not None


def test_unknown_method_key_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        resolve_student({"method": "pgd-at", "trades_beta": 1.0})   # trades' key, not pgd-at's
    assert "student.trades_beta" in str(err.value)
    with pytest.raises(ConfigError) as err:
        resolve_student({"method": "gairat", "eps": -1.0})
    assert "student.eps" in str(err.value)
    with pytest.raises(ConfigError, match="student.method"):
        resolve_student({"method": "pgd_at"})


def test_student_receives_method_params():
    from teachsim.platform.build import build_student

    task = HiddenFeature(0, dim=4, manifold_dim=2)
    student = build_student(resolve_student({"method": "mail", "eps": 0.25, "hidden": [4]}), task, 0)
    assert student.method is M.mail
    assert student.method_params == {"eps": 0.25, "norm": "l2", "attack_steps": 10,
                                     "mail_slope": 1.0, "mail_bias": -1.5}


# -- science on small real runs ---------------------------------------------------------

def _robust_run(method_name: str, tmp_path) -> float:
    config = {
        "name": method_name, "seeds": [0, 1], "budgets": [0],
        "task": {"name": "hidden-feature", "dim": 10, "manifold_dim": 2},
        # init_std = 1: large random weights on the directions the data never vary, which
        # erm never trains away (its gradient there is 0) and an attack exploits
        "student": {"method": method_name, "hidden": [32], "init_std": 1.0, "steps": 200, "initial_labels": 300},
        "judge": {"norm": "linf", "eps": 0.3, "test_points": 300, "steps": 20, "restarts": 1,
                  "strong_steps": 10, "strong_restarts": 1},
        "protocols": [{"name": "passive"}],
    }
    if method_name != "erm":
        config["student"].update(eps=0.3, norm="linf")
    run = teachsim.run(config, out=tmp_path / method_name, executor="serial", progress=False)
    s = run.scores
    return float(s[s.metric == "lp_robust_acc"].value.mean())


@pytest.mark.slow
def test_pgd_at_raises_lp_robust_acc_over_erm(tmp_path):
    # measured: erm 0.51 (0.58, 0.44), pgd-at 0.71 (0.71, 0.72), about 5 s in all
    start = time.perf_counter()
    erm = _robust_run("erm", tmp_path)
    at = _robust_run("pgd-at", tmp_path)
    assert at >= erm + 0.1, (erm, at)
    assert time.perf_counter() - start < 40


@pytest.fixture(scope="module")
def four_class_student():
    """A small MLP trained (erm) on a 4-class hidden-feature task with a net teacher."""
    task = HiddenFeature(0, dim=10, manifold_dim=2, classes=4, teacher="net")
    rng = np.random.default_rng(0)
    x = task.data.sample(3000, rng)
    y = task.label(x)
    keep = y != ABSTAIN
    x, y = torch.from_numpy(x[keep]), torch.from_numpy(y[keep])
    model = mlp(10, 4, hidden=[32, 32], init_std=0.0, generator=gen(0))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = gen(1)
    ctx = M.TrainContext(generator=g)
    model.train()
    for _ in range(400):
        idx = torch.randint(len(y), (128,), generator=g)
        loss = M.erm(model, x[idx], y[idx], ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    xt = task.data.sample(600, rng)
    yt = task.label(xt)
    keep = yt != ABSTAIN
    return model, torch.from_numpy(xt[keep][:400]), torch.from_numpy(yt[keep][:400])


# measured at 10 steps (400 points): l2 0.5: pgd 0.378, beta 0.348; linf 0.2: pgd 0.528, beta 0.525
@pytest.mark.parametrize("norm, eps", [("l2", 0.5), ("linf", 0.2)])
def test_beta_is_at_least_as_strong_as_pgd_ce(four_class_student, norm, eps):
    model, x, y = four_class_student
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert correct.float().mean() > 0.9

    def robust(xa):
        with torch.no_grad():
            return (correct & (model(xa).argmax(1) == y)).float().mean().item()

    steps = 10
    r_pgd = robust(pgd(model, x, y, eps=eps, norm=norm, generator=gen(5), steps=steps, restarts=1, loss="ce"))
    r_beta = robust(beta(model, x, y, eps=eps, norm=norm, generator=gen(5), steps=steps))
    assert 0.05 < r_pgd < 0.95, r_pgd                 # an informative operating point
    assert r_beta <= r_pgd + 0.01, (r_beta, r_pgd)


def test_gairat_burn_in_trains_unweighted_first():
    """The first gairat_burn_in share of each learn call's steps is plain PGD-AT; then reweighted."""
    x, y = batch()
    params = {"eps": 0.5, "attack_steps": 3}

    def loss(name, step, steps, **extra):
        model = mlp(6, 3, hidden=[8], init_std=0.0, generator=gen(0))
        ctx = M.TrainContext(generator=gen(7), params={**params, **extra}, step=step, steps=steps)
        return method(name)(model, x, y, ctx).item()

    plain = loss("pgd-at", 0, 0)
    assert loss("gairat", 0, 10) == pytest.approx(plain)          # step 0 of 10: burn-in (default 0.5)
    assert loss("gairat", 4, 10) == pytest.approx(plain)          # step 4 < 5
    assert loss("gairat", 5, 10) != pytest.approx(plain)          # step 5: reweighted
    assert loss("gairat", 0, 10, gairat_burn_in=0.0) != pytest.approx(plain)
    assert loss("gairat", 9, 10, gairat_burn_in=1.0) == pytest.approx(plain)
