"""The attacks: balls, boxes, determinism, closed forms, a reference PGD,
and the teacher-relative attack behind ``strong_robust_acc``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from teachsim.agents.models import mlp
from teachsim.attacks.apgd import apgd_ce
from teachsim.attacks.beta import beta
from teachsim.attacks.common import norm_of
from teachsim.attacks.pgd import fgsm, pgd
from teachsim.attacks.teacher import teacher_attack
from teachsim.messages import ABSTAIN
from teachsim.tasks.hidden_feature import HiddenFeature
from tiny import train_mlp

NORMS = ("linf", "l2")
ATTACKS = {"fgsm": fgsm, "pgd": pgd, "apgd-ce": apgd_ce, "beta": beta}   # every l_p attack: the same checks
ITERATIVE = ("pgd", "apgd-ce", "beta")                                  # the ones with a generator and steps



def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def within(d: torch.Tensor, eps: float, norm: str) -> bool:
    return bool((norm_of(d, norm) <= eps * (1 + 1e-5) + 1e-6).all())


@pytest.fixture(scope="module")
def small_mlp() -> nn.Module:
    """An untrained MLP: gradients everywhere, boundaries close to the data."""
    return frozen(mlp(8, 3, hidden=[16], init_std=0.0, generator=gen(0)))


def _fit(task, n_train: int, steps: int, *, min_share: float = 0.0):
    """An MLP trained on ``task``'s labelled data and a held-out test set: (model, x, y),
    checked to be what the fixtures claim (accurate; every class present when asked)."""
    model, rng, labels = train_mlp(task, n_train, steps, seed=0)
    assert torch.bincount(labels, minlength=task.classes).min() >= min_share * len(labels)
    frozen(model)
    xte = task.data.sample(600, rng)
    yte = task.label(xte)
    keep = yte != ABSTAIN
    x, y = torch.from_numpy(xte[keep]), torch.from_numpy(yte[keep])
    assert (predict(model, x) == y).float().mean() > 0.95  # the fixture is what it claims
    return model, x, y


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained on hidden-feature data (accurate on the manifold, not robust off it)."""
    task = HiddenFeature(0, dim=10, manifold_dim=2)
    return (task, *_fit(task, 2000, 200))


# --------------------------------------------------------------------------- balls and boxes


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("eps", [0.05, 0.5, 3.0])
def test_output_within_eps(small_mlp, name, norm, eps):
    x = torch.randn(300, 8, generator=gen(1))
    y = predict(small_mlp, x)
    xa = ATTACKS[name](small_mlp, x, y, eps=eps, norm=norm, generator=gen(2))
    assert xa.shape == x.shape and xa.dtype == x.dtype
    assert within(xa - x, eps, norm)
    # the attack actually moved (it is not trivially within the ball by doing nothing): out
    # to the ball's edge, or until the point flipped (pgd keeps the first flipped iterate,
    # which from its first start at x can be close to x)
    far = norm_of(xa - x, norm) > 0.5 * eps
    flipped = predict(small_mlp, xa) != y
    assert (far | flipped).float().mean() > 0.5 and (norm_of(xa - x, norm) > 0).float().mean() > 0.5


def _box(dim: int) -> tuple[np.ndarray, np.ndarray]:
    # per-feature bounds, none of them [0, 1]: half the features in [-3, 0.5], half in [-1, 2]
    lo = np.where(np.arange(dim) % 2 == 0, -3.0, -1.0).astype(np.float32)
    hi = np.where(np.arange(dim) % 2 == 0, 0.5, 2.0).astype(np.float32)
    return lo, hi


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("norm,eps", [("linf", 1.0), ("l2", 3.0)])
def test_box_respected_and_no_implicit_unit_clamp(small_mlp, name, norm, eps):
    lo, hi = _box(8)
    x = torch.from_numpy(lo + (hi - lo) * np.random.default_rng(3).uniform(size=(400, 8)).astype(np.float32))
    y = predict(small_mlp, x)
    free = ATTACKS[name](small_mlp, x, y, eps=eps, norm=norm, generator=gen(4))
    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    # the box is binding: unconstrained, the attack leaves it
    assert ((free < lo_t) | (free > hi_t)).any()
    for box in ((lo, hi), (torch.from_numpy(lo), torch.from_numpy(hi)), (lo.tolist(), hi.tolist())):
        xa = ATTACKS[name](small_mlp, x, y, eps=eps, norm=norm, box=box, generator=gen(4))
        assert within(xa - x, eps, norm)
        assert bool(((xa >= lo_t) & (xa <= hi_t)).all())
        # nothing is clamped to [0, 1]: outputs below 0 and above 1 exist where the box allows
        assert (xa < 0).any()
        assert (xa[:, 1::2] > 1).any()
        assert (xa[:, 0::2] < -1).any()


@pytest.mark.parametrize("norm", NORMS)
def test_no_box_means_unbounded(small_mlp, norm):
    x = 5 * torch.randn(200, 8, generator=gen(5))
    y = predict(small_mlp, x)
    xa = pgd(small_mlp, x, y, eps=1.0, norm=norm, generator=gen(6), steps=10)
    assert (xa < -1).any() and (xa > 2).any()


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("norm", NORMS)
def test_eps_zero_returns_x(small_mlp, name, norm):
    x = torch.randn(100, 8, generator=gen(7))
    y = torch.randint(0, 3, (100,), generator=gen(8))  # some points already wrong
    xa = ATTACKS[name](small_mlp, x, y, eps=0.0, norm=norm, generator=gen(9))
    assert torch.equal(xa, x)


@pytest.mark.parametrize("name", ITERATIVE)
@pytest.mark.parametrize("norm", NORMS)
def test_deterministic_for_a_seed(small_mlp, name, norm):
    x = torch.randn(200, 8, generator=gen(10))
    y = predict(small_mlp, x)
    a = ATTACKS[name](small_mlp, x, y, eps=0.3, norm=norm, generator=gen(11), steps=10)
    b = ATTACKS[name](small_mlp, x, y, eps=0.3, norm=norm, generator=gen(11), steps=10)
    c = ATTACKS[name](small_mlp, x, y, eps=0.3, norm=norm, generator=gen(12), steps=10)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the generator really drives the random start


@pytest.mark.parametrize("norm", NORMS)
def test_fgsm_is_deterministic(small_mlp, norm):
    x = torch.randn(200, 8, generator=gen(10))
    y = predict(small_mlp, x)
    assert torch.equal(fgsm(small_mlp, x, y, eps=0.3, norm=norm), fgsm(small_mlp, x, y, eps=0.3, norm=norm))


@pytest.mark.parametrize("name", ITERATIVE)
def test_attacks_do_not_touch_inputs(small_mlp, name):
    x = torch.randn(50, 8, generator=gen(13))
    x0 = x.clone()
    y = predict(small_mlp, x)
    y0 = y.clone()
    ATTACKS[name](small_mlp, x, y, eps=0.5, norm="l2", generator=gen(14), steps=5)
    assert torch.equal(x, x0) and not x.requires_grad
    assert torch.equal(y, y0)


# --------------------------------------------------------------------------- linear closed form


@pytest.mark.parametrize("name", ITERATIVE)
@pytest.mark.parametrize("norm,eps", [("l2", 0.2), ("l2", 0.5), ("l2", 1.0),
                                      ("linf", 0.1), ("linf", 0.2), ("linf", 0.5)])
def test_matches_linear_closed_form(name, norm, eps):
    g = gen(20)
    d = 10
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g))
        lin.bias.copy_(torch.randn(2, generator=g))
    frozen(lin)
    x = torch.randn(400, d, generator=g)
    y = predict(lin, x)  # every point correctly classified by construction
    w = lin.weight[0] - lin.weight[1]
    b = lin.bias[0] - lin.bias[1]
    dual = w.norm() if norm == "l2" else w.abs().sum()  # the dual norm of the attack's norm
    dist = (x @ w + b).abs() / dual
    xa = ATTACKS[name](lin, x, y, eps=eps, norm=norm, generator=gen(21))
    assert within(xa - x, eps, norm)
    adv = predict(lin, xa) != y
    inside = dist < eps * (1 - 0.02)
    outside = dist > eps * (1 + 0.02)
    assert inside.sum() > 20 and outside.sum() > 20  # both regimes are exercised
    assert bool(adv[inside].all()), f"missed {int((inside & ~adv).sum())} of {int(inside.sum())} points within eps"
    assert not bool(adv[outside].any())


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "fgsm"])
@pytest.mark.parametrize("norm", NORMS)
def test_ce_attacks_work_on_saturated_students(name, norm):
    # A student confident by logit gaps of hundreds (what long Adam training gives): plain
    # float32 cross-entropy has an exactly-zero gradient there and the attack would stand
    # still. Our ce loss must still find every point within eps of the boundary.
    from teachsim import registry

    g = gen(30)
    d = 10
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(400 * torch.randn(2, d, generator=g))
        lin.bias.zero_()
    frozen(lin)
    x = torch.randn(300, d, generator=g)
    y = predict(lin, x)
    w = lin.weight[0] - lin.weight[1]
    dist = (x @ w).abs() / (w.norm() if norm == "l2" else w.abs().sum())
    eps = float(dist.median())
    xg = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(F.cross_entropy(lin(xg), y, reduction="sum"), xg)
    assert (plain.abs().sum(1) == 0).float().mean() > 0.3   # the trap is real
    kw = {} if name == "fgsm" else {"steps": 20}
    xa = registry.attacks.get(name).factory(lin, x, y, eps=eps, norm=norm, generator=gen(31), **kw)
    inside = dist < eps * 0.98
    assert bool((predict(lin, xa) != y)[inside].all())


# --------------------------------------------------------------------------- reference PGD


def reference_pgd(model, x, y, *, eps, norm, generator, steps=100, restarts=5):
    """Textbook PGD (Madry et al.): CE ascent, uniform random start, projection; returns
    which points any iterate of any restart (or x itself) misclassifies."""
    alpha = 2.5 * eps / steps
    n, d = x.shape
    adv = predict(model, x) != y
    for _ in range(restarts):
        if norm == "linf":
            delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
        else:
            delta = torch.randn(x.shape, generator=generator)
            delta = delta / delta.norm(dim=1, keepdim=True)
            delta = delta * eps * torch.rand(n, 1, generator=generator) ** (1 / d)
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
            with torch.no_grad():
                if norm == "linf":
                    delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
                else:
                    delta = delta + alpha * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    delta = delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1)
                adv |= predict(model, x + delta) != y
    return adv


@pytest.mark.parametrize("norm,eps,budget", [
    # the judge's defaults (50 steps, 2 restarts) against the reference's 100 x 5
    ("l2", 0.2, {}), ("l2", 0.5, {}), ("linf", 0.1, {}), ("linf", 0.2, {}), ("linf", 0.3, {}),
    # at l2 eps = 1.0 the defaults trail the reference by ~0.5% of points on average (up to
    # ~1.1% for unlucky seeds); at the reference's own budget ours is at least as strong
    ("l2", 1.0, {"steps": 100, "restarts": 5}),
])
def test_pgd_at_least_as_strong_as_reference(trained, norm, eps, budget):
    _, model, x, y = trained
    ref = reference_pgd(model, x, y, eps=eps, norm=norm, generator=gen(30))
    xa = pgd(model, x, y, eps=eps, norm=norm, generator=gen(31), **budget)
    ours = predict(model, xa) != y
    assert 0 < int(ref.sum()) < len(x)  # eps chosen where the comparison means something
    slack = max(1, int(0.01 * len(x)))
    assert int(ours.sum()) >= int(ref.sum()) - slack, (
        f"{norm} eps={eps}: reference found {int(ref.sum())}, ours {int(ours.sum())} of {len(x)}")


# --------------------------------------------------------------------------- teacher attack


class OffManifoldStudent(nn.Module):
    """The teacher's logits plus ``c * x[:, k]`` on class 0: agrees with the teacher on the
    manifold (where x[:, k] = 0) but uses a coordinate the teacher cannot perceive."""

    def __init__(self, task, k: int, c: float):
        super().__init__()
        self.task, self.k, self.c = task, k, c

    def forward(self, x):
        logits = self.task.logits(x)
        bump = torch.zeros_like(logits)
        bump[:, 0] = self.c * x[:, self.k]
        return logits + bump


def _certain(task, dist, n, seed):
    x = dist.sample(n, np.random.default_rng(seed))
    y = task.label(x)
    keep = y != ABSTAIN
    return torch.from_numpy(x[keep]), torch.from_numpy(y[keep])


def _check_found(task, model, x, xf, found, radius, norm, box=None):
    assert xf.shape == x.shape
    assert within(xf - x, radius, norm)
    if box is not None:
        assert bool(((xf >= torch.as_tensor(box[0])) & (xf <= torch.as_tensor(box[1]))).all())
    if found.any():
        pts = xf[found]
        assert bool((task.margin(pts) >= task.gamma).all())
        t = torch.from_numpy(task.label(pts))
        assert bool((t != ABSTAIN).all())
        assert bool((predict(model, pts) != t).all())


TEACHERS = [dict(teacher="linear", classes=2), dict(teacher="linear", classes=3), dict(teacher="net", classes=3)]


@pytest.mark.parametrize("kw", TEACHERS, ids=lambda kw: f"{kw['teacher']}-{kw['classes']}")
@pytest.mark.parametrize("norm", NORMS)
def test_teacher_attack_finds_nothing_against_the_teacher(kw, norm):
    task = HiddenFeature(0, dim=10, manifold_dim=2, **kw)
    x, _ = _certain(task, task.broad, 200, 40)
    model = frozen(task.as_model())
    xf, found = teacher_attack(model, task, x, radius=3.0, norm=norm, generator=gen(41), steps=20)
    assert not bool(found.any())
    assert within(xf - x, 3.0, norm)


@pytest.mark.parametrize("kw", TEACHERS, ids=lambda kw: f"{kw['teacher']}-{kw['classes']}")
@pytest.mark.parametrize("norm", NORMS)
def test_teacher_attack_finds_off_manifold_counterexamples(kw, norm):
    task = HiddenFeature(0, dim=10, manifold_dim=2, **kw)
    x, y = _certain(task, task.data, 200, 42)
    student = frozen(OffManifoldStudent(task, k=5, c=50.0))
    assert torch.equal(predict(student, x), y)  # agrees on the manifold
    radius = 0.5
    xf, found = teacher_attack(student, task, x, radius=radius, norm=norm, generator=gen(43), steps=20)
    assert found.float().mean() >= 0.95
    _check_found(task, student, x, xf, found, radius, norm)


@pytest.mark.parametrize("norm", NORMS)
def test_teacher_attack_radius_zero_finds_exactly_the_errors(norm):
    task = HiddenFeature(0, dim=10, manifold_dim=2, classes=3)
    x, y = _certain(task, task.broad, 300, 44)  # off-manifold coordinates are nonzero here
    student = frozen(OffManifoldStudent(task, k=5, c=1.0))
    wrong = predict(student, x) != y
    assert 0.05 < wrong.float().mean() < 0.95
    xf, found = teacher_attack(student, task, x, radius=0.0, norm=norm, generator=gen(45))
    assert torch.equal(found, wrong)
    assert torch.equal(xf, x)


@pytest.mark.parametrize("norm", NORMS)
def test_teacher_attack_on_trained_student_is_verified(trained, norm):
    task, model, x, _ = trained
    radius = 1.0 if norm == "l2" else 0.3
    xf, found = teacher_attack(model, task, x, radius=radius, norm=norm, generator=gen(46), steps=30)
    assert found.any()
    _check_found(task, model, x, xf, found, radius, norm)


def test_teacher_attack_respects_box():
    task = HiddenFeature(0, dim=10, manifold_dim=2)
    x, _ = _certain(task, task.data, 200, 47)
    lo = np.full(10, -4.0, np.float32)
    hi = np.full(10, 4.0, np.float32)
    lo[5], hi[5] = -0.01, 0.01  # the student's off-manifold feature is nearly boxed out
    x = x.clamp(torch.from_numpy(lo), torch.from_numpy(hi))
    student = frozen(OffManifoldStudent(task, k=5, c=50.0))
    xf, found = teacher_attack(student, task, x, radius=0.5, norm="l2", box=(lo, hi), generator=gen(48), steps=20)
    _check_found(task, student, x, xf, found, 0.5, "l2", box=(lo, hi))
    free, found_free = teacher_attack(student, task, x, radius=0.5, norm="l2", generator=gen(48), steps=20)
    assert found_free.float().mean() > found.float().mean()


class _OffManifoldOnly(nn.Module):
    """The student seen through the off-manifold coordinates only (the first k are pinned
    to x0's), so a plain l_p attack on it moves only what the teacher cannot perceive."""

    def __init__(self, model, x0, k):
        super().__init__()
        self.model, self.x0, self.k = model, x0, k

    def forward(self, x):
        return self.model(torch.cat([self.x0[:, : self.k], x[:, self.k:]], 1))


@pytest.mark.parametrize("radius", [2.0, 4.0])
def test_teacher_attack_at_least_as_strong_as_off_manifold_pgd(trained, radius):
    # Moving only off-manifold coordinates never changes the teacher's label or margin, so
    # every student flip found that way is a valid counterexample: the teacher attack (at
    # the judge's defaults) must find at least as many.
    task, model, x, y = trained
    off = pgd(_OffManifoldOnly(model, x, task.k), x, y, eps=radius, norm="l2", generator=gen(50))
    xo = torch.cat([x[:, : task.k], off[:, task.k:]], 1)
    t = torch.from_numpy(task.label(xo))
    baseline = (t != ABSTAIN) & (predict(model, xo) != t)
    assert baseline.sum() > 20
    xf, found = teacher_attack(model, task, x, radius=radius, norm="l2", generator=gen(51))
    _check_found(task, model, x, xf, found, radius, "l2")
    assert int(found.sum()) >= int(baseline.sum()), (
        f"radius {radius}: teacher attack {int(found.sum())}, off-manifold pgd {int(baseline.sum())} of {len(x)}")


# --------------------------------------------------------------------------- apgd-ce and beta


@pytest.fixture(scope="module")
def trained4():
    """A small MLP trained on a 4-class hidden-feature task with a network teacher.

    Seed 2 of the task: its teacher splits the data about evenly over the 4 classes (at
    seed 0 with 4 classes one class takes ~90% of the data and one none)."""
    task = HiddenFeature(2, dim=10, manifold_dim=2, classes=4, teacher="net")
    return (task, *_fit(task, 3000, 400, min_share=0.1))   # min_share: really 4 classes


def robust_acc(model, x, y, xa) -> float:
    """Fraction of points the model gets right both at x and at x_adv."""
    return ((predict(model, x) == y) & (predict(model, xa) == y)).float().mean().item()


# eps where a fair share of points, but not all, can be flipped on trained4
STRENGTH_CASES = [("linf", 0.1), ("linf", 0.2), ("linf", 0.3), ("l2", 0.2), ("l2", 0.4), ("l2", 0.8)]


@pytest.mark.parametrize("norm,eps", STRENGTH_CASES)
def test_beta_at_least_as_strong_as_margin_pgd(trained4, norm, eps):
    _, model, x, y = trained4
    clean = robust_acc(model, x, y, x)
    ref = robust_acc(model, x, y, pgd(model, x, y, eps=eps, norm=norm, generator=gen(60), steps=50, restarts=1,
                                      loss="margin"))
    xa = beta(model, x, y, eps=eps, norm=norm, generator=gen(61), steps=50, restarts=1)
    assert within(xa - x, eps, norm)
    ours = robust_acc(model, x, y, xa)
    assert ref < clean  # eps chosen where the comparison means something
    assert ours <= ref + 0.005, f"{norm} eps={eps}: robust acc under beta {ours:.4f}, under margin pgd {ref:.4f}"


@pytest.mark.parametrize("norm,eps", STRENGTH_CASES)
def test_apgd_at_least_as_strong_as_pgd(trained4, norm, eps):
    _, model, x, y = trained4
    clean = robust_acc(model, x, y, x)
    ref = robust_acc(model, x, y, pgd(model, x, y, eps=eps, norm=norm, generator=gen(62), steps=100, restarts=1))
    xa = apgd_ce(model, x, y, eps=eps, norm=norm, generator=gen(63), steps=100, restarts=1)
    assert within(xa - x, eps, norm)
    ours = robust_acc(model, x, y, xa)
    assert ref < clean
    assert ours <= ref + 0.005, f"{norm} eps={eps}: robust acc under apgd-ce {ours:.4f}, under pgd {ref:.4f}"


def test_beta_targets_every_wrong_class(trained4):
    # per point the result is the target with the largest final margin: on a 4-class
    # problem the classes it lands in are spread over all the wrong ones
    _, model, x, y = trained4
    xa = beta(model, x, y, eps=0.8, norm="l2", generator=gen(64))
    flipped = predict(model, xa) != y
    assert flipped.float().mean() > 0.5
    landed = predict(model, xa)[flipped]
    assert len(torch.unique(landed)) == 4


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 0.5)])
def test_beta_on_two_classes(trained, norm, eps):
    # one wrong class per point: beta is a single targeted margin ascent
    _, model, x, y = trained
    clean = robust_acc(model, x, y, x)
    xa = beta(model, x, y, eps=eps, norm=norm, generator=gen(65))
    assert xa.shape == x.shape
    assert within(xa - x, eps, norm)
    ours = robust_acc(model, x, y, xa)
    ref = robust_acc(model, x, y, pgd(model, x, y, eps=eps, norm=norm, generator=gen(66), restarts=1,
                                      loss="margin"))
    assert ours < clean
    assert ours <= ref + 0.005, f"{norm} eps={eps}: robust acc under beta {ours:.4f}, under margin pgd {ref:.4f}"


class _Recorder(nn.Module):
    """The model, recording every batch it is called on (pgd calls it once per iterate)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("labels", ["predicted", "random"])
@pytest.mark.parametrize("eps", [0.4, 3.0])
def test_pgd_keeps_first_misclassified_else_highest_loss_iterate(small_mlp, norm, loss, labels, eps):
    # pins pgd's per-point bookkeeping to its docstring, replayed from the iterates it
    # evaluated; at eps = 3.0 every point flips and pgd stops early
    from teachsim.attacks.common import loss_per_point

    x = torch.randn(200, 8, generator=gen(70))
    y = predict(small_mlp, x) if labels == "predicted" else torch.randint(0, 3, (200,), generator=gen(71))
    rec = _Recorder(small_mlp)
    xa = pgd(rec, x, y, eps=eps, norm=norm, generator=gen(72), steps=8, restarts=3, loss=loss)
    assert (len(rec.seen) < 3 * 9) == (eps == 3.0)
    best, best_loss = x.clone(), torch.full((200,), -float("inf"))
    found = torch.zeros(200, dtype=torch.bool)
    with torch.no_grad():
        for it in rec.seen:
            logits = small_mlp(it)
            per = loss_per_point(logits, y, loss)
            wrong = (logits.argmax(1) != y) & ~found
            better = (per > best_loss) & ~found
            best[wrong | better] = it[wrong | better]
            best_loss = torch.where(better, per, best_loss)
            found |= wrong
    assert torch.equal(xa, best)
    assert bool(found.all()) == (eps == 3.0) and found.any()


@pytest.mark.parametrize("classes", [2, 4, 10])
@pytest.mark.parametrize("kind", ["ce", "margin"])
def test_per_step_loss_equals_the_loss_and_argmax(classes, kind):
    """PGD's per-step objective (labels precomputed, misclassification from the same ops)
    gives the values and gradients of ``loss_per_point`` and the argmax's verdict, also on
    saturated logits (gaps of hundreds)."""
    from teachsim.attacks.common import loss_and_flipped, loss_per_point

    g = torch.Generator().manual_seed(classes)
    logits = (torch.randn(400, classes, generator=g) * 100).requires_grad_(True)
    y = torch.randint(classes, (400,), generator=g)
    per, flipped = loss_and_flipped(y, classes, kind)(logits)
    want = loss_per_point(logits, y, kind)
    (g1,) = torch.autograd.grad(per.sum(), logits)
    (g2,) = torch.autograd.grad(want.sum(), logits)
    assert torch.equal(per, want) if classes == 2 or kind == "margin" else torch.allclose(per, want)
    assert torch.allclose(g1, g2, atol=1e-5)
    assert torch.equal(flipped, logits.argmax(1) != y)


def _plain_pgd(model, x, y, *, eps, norm, steps, restarts, generator, box=None):
    """The documented pgd, written for reading, not speed: every iterate of every restart
    is kept, then per point the first misclassified one is chosen, else the highest loss."""
    from teachsim.attacks.common import ascent, as_box, clip, loss_per_point, project, random_in_ball

    b = as_box(box, x)
    alpha = 2.5 * eps / steps
    iterates, losses, wrong = [], [], []
    for r in range(restarts):
        # the first of several restarts starts at x
        delta = torch.zeros_like(x) if restarts > 1 and r == 0 else random_in_ball(x, eps, norm, generator)
        xa = clip(x + delta, b)
        delta = xa - x
        for t in range(steps + 1):
            xa = xa.detach().requires_grad_(True)
            logits = model(xa)
            per = loss_per_point(logits, y, "ce")
            iterates.append(xa.detach())
            losses.append(per.detach())
            wrong.append(logits.detach().argmax(1) != y)
            if t == steps:
                break
            (grad,) = torch.autograd.grad(per.sum(), xa)
            with torch.no_grad():
                delta = project(delta + alpha * ascent(grad, norm), eps, norm)
                xa = clip(x + delta, b)
                delta = xa - x
    wrong, losses = torch.stack(wrong), torch.stack(losses)
    first_wrong = torch.where(wrong.any(0), wrong.float().argmax(0), losses.argmax(0))
    return torch.stack(iterates)[first_wrong, torch.arange(len(x))]


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("norm", NORMS)
def test_pgd_is_the_documented_best_iterate(classes, norm):
    """The fast pgd (lazy row copies, in-place steps, shared loss and verdict, early stop)
    returns what the plain description says, point for point."""
    model = frozen(mlp(6, classes, hidden=[16], init_std=1.0, generator=gen(classes)))
    x = torch.randn(300, 6, generator=gen(1))
    y = predict(model, x)
    eps = 0.5 if norm == "l2" else 0.2
    box = (np.full(6, -1.5, np.float32), np.full(6, 1.5, np.float32))
    fast = pgd(model, x, y, eps=eps, norm=norm, steps=20, restarts=2, generator=gen(5), box=box)
    slow = _plain_pgd(model, x, y, eps=eps, norm=norm, steps=20, restarts=2, generator=gen(5), box=box)
    # the fast one stops once every point has flipped; until then it is the same walk
    flipped = predict(model, slow) != y
    assert 0 < flipped.float().mean() < 1, "a case where the choice between iterates matters"
    assert torch.allclose(fast, slow, atol=1e-5)
