"""Strong robustness against exact and independent references.

The teacher-relative search is only as good as what it finds, so it is measured here
against answers of other kinds: the exact distance computation for affine students under
affine teachers (itself checked against a dense grid), a dense grid for any student in 2
and 3 dimensions, a complete MILP check for ReLU MLPs in linf, and a much stronger run of
the search on MLPs elsewhere, and a penalty-method search (another formulation and
optimiser) on MLPs in many dimensions, curved teachers and the digits box. The students
are trained for real on small samples, with budgets from none (mid-curve, where the old
search was 0.25 too optimistic) to many.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from teachsim import messages, seeding
from teachsim.attacks import exact as E
from teachsim.attacks.apgd import apgd_ce
from teachsim.attacks.pgd import fgsm, pgd
from teachsim.attacks.teacher import teacher_attack
from teachsim.platform import judge as J
from teachsim.config import resolve_student
from teachsim.platform.build import build_student
from teachsim.schema import resolve
from teachsim.tasks.digits import Digits
from teachsim.tasks.hidden_feature import HiddenFeature
from teachsim.tasks.spheres import Spheres


def student(task, labels: int, *, model: str = "linear", hidden=(16,), seed: int = 0, steps: int = 150):
    """A student trained for real on ``labels`` teacher-labelled data points."""
    cfg = resolve_student({"model": model, "hidden": list(hidden), "steps": steps, "initial_labels": 0,
                           "init_std": 0.5})
    s = build_student(cfg, task, seed)
    x = task.data.sample(max(labels, 1), seeding.rng(seed, "test-labels"))
    s.observe(messages.answer(x, task.label(x)))
    s.learn()
    for p in s.model.parameters():
        p.requires_grad_(False)
    return s.model.eval()


def points(task, n: int, seed: int = 0) -> np.ndarray:
    return J.make_test_set(task, {"test_points": n}, seed).x


def search(model, task, x, radius, norm, **kw) -> np.ndarray:
    """The judge's search (no exact shortcut): True where it found a counterexample."""
    _, found = teacher_attack(model, task, torch.from_numpy(x), radius=radius, norm=norm, box=task.box,
                              generator=seeding.torch_generator(0, "judge", "teacher"), **kw)
    return found.numpy()


# -- the exact reference, checked by brute force -------------------------------------------
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("classes", [2, 3])
def test_exact_reference_matches_a_dense_grid_in_2d(norm, classes):
    task = HiddenFeature(1, dim=2, manifold_dim=2, classes=classes, gamma=0.1)
    model = student(task, 6, seed=1)
    x = points(task, 60)
    radius = 0.8 if norm == "l2" else 0.5
    ex = E.exact_strong(model, task, x, radius=radius, norm=norm)
    found, _ = E.grid_strong(model, task, x, radius=radius, norm=norm, per_radius=60)
    # the grid can only miss counterexamples (every one it reports is real), and only in
    # slivers thinner than its spacing: agreement except where the exact distance is within
    # a grid step of the radius
    near = np.abs(ex.distance - radius) < 2 * radius / 60
    assert not (found & ex.robust).any()
    assert ((~ex.robust) == found)[~near].all()
    assert 0 < (~ex.robust).sum() < len(x)     # the case is not trivial either way


def test_exact_witnesses_are_real_counterexamples():
    task = HiddenFeature(0, dim=20, manifold_dim=2, gamma=0.1)
    model = student(task, 20)
    x = points(task, 150)
    ex = E.exact_strong(model, task, x, radius=1.5, norm="l2")
    bad = ~ex.robust
    w = ex.witness[bad]
    assert bad.sum() > 20
    labels = task.label(w)
    pred = model(torch.from_numpy(w)).argmax(1).numpy()
    assert ((labels >= 0) & (labels != pred)).all()
    assert (np.linalg.norm(w - x[bad], axis=1) <= 1.5 + 1e-4).all()


def test_min_distance_is_the_brute_force_minimum():
    rng = np.random.default_rng(0)
    for norm in ("l2", "linf"):
        for _ in range(5):
            G, h = rng.normal(size=(3, 2)), rng.normal(size=3)
            x = rng.normal(size=2) * 2
            d, y = E.min_distance(x, G, h, norm)
            if d == np.inf:   # empty: then no point of a wide grid is inside
                g = np.stack(np.meshgrid(*[np.linspace(-50, 50, 1001)] * 2), -1).reshape(-1, 2)
                assert not (g @ G.T <= h).all(axis=1).any()
                continue
            span = np.linspace(-1.2 * d - 0.1, 1.2 * d + 0.1, 801)
            g = x + np.stack(np.meshgrid(span, span), -1).reshape(-1, 2)   # holds the nearest point
            ok = (g @ G.T <= h).all(axis=1)
            dist = np.abs(g[ok] - x).max(axis=1) if norm == "linf" else np.linalg.norm(g[ok] - x, axis=1)
            assert dist.min() - 4 * (span[1] - span[0]) <= d <= dist.min() + 1e-9
            assert (G @ y <= h + 1e-7).all()



def test_min_distance_with_a_box_is_the_brute_force_minimum():
    # the l2 projection by Newton on the dual (the box costs nothing there) against the
    # primal active-set method on the box as rows, and against a dense grid
    rng = np.random.default_rng(1)
    solved = 0
    for _ in range(20):
        G, h = rng.normal(size=(2, 2)), rng.normal(size=2)
        x = rng.normal(size=2)
        box = (np.array([-1.0, -1.5]), np.array([1.5, 1.0]))
        d, y = E.min_distance(x, G, h, "l2", box)
        bG, bh = E._box_rows(box, 2)
        ref, _ = E._l2_point(x, np.concatenate([G, bG]), np.concatenate([h, bh]))
        if d == np.inf:
            assert ref == np.inf
            continue
        solved += 1
        assert E._l2_dual(x, G, h, E._bounds(box, 2)) is not None   # certified, not the fallback
        assert d == pytest.approx(ref, rel=1e-9, abs=1e-12)
        assert (G @ y <= h + 1e-9).all() and (y >= box[0]).all() and (y <= box[1]).all()
        span = np.linspace(-1.5, 1.5, 601)
        g = np.stack(np.meshgrid(span, span), -1).reshape(-1, 2)
        ok = (g @ G.T <= h).all(axis=1) & (g >= box[0]).all(axis=1) & (g <= box[1]).all(axis=1)
        if ok.any():   # no point of the grid is nearer, and the nearest is close
            near = np.linalg.norm(g[ok] - x, axis=1).min()
            assert d <= near + 1e-9 and near <= d + 2 * (span[1] - span[0])
    assert solved >= 10



def test_l2_dual_agrees_with_the_primal_method_on_digits_like_boxes():
    # many coordinates at the box's bound (digits' pixels at 0), up to 10 rows: wherever
    # the dual certifies a point it is the primal method's optimum; where it does not,
    # the polyhedron is empty and min_distance's fallback says so
    rng = np.random.default_rng(0)
    certified = 0
    for _ in range(60):
        dim, k = int(rng.choice([5, 20, 64])), int(rng.choice([2, 3, 10]))
        x = rng.uniform(size=dim)
        x[rng.uniform(size=dim) < 0.5] = 0.0
        G = rng.normal(size=(k, dim))
        h = G @ x - rng.uniform(size=k) * np.linalg.norm(G, axis=1) * rng.choice([0.1, 1.0])
        box = (np.zeros(dim), np.ones(dim))
        bG, bh = E._box_rows(box, dim)
        ref, _ = E._l2_point(x, np.concatenate([G, bG]), np.concatenate([h, bh]))
        got = E._l2_dual(x, G, h, box)
        if got is None:
            assert ref == np.inf and E.min_distance(x, G, h, "l2", box)[0] == np.inf
        else:
            certified += 1
            assert got[0] == pytest.approx(ref, rel=1e-9)
    assert certified >= 20

def _two_binding_rows_distance(x, G, h) -> float:
    """The l2 distance from ``x`` to {G y <= h} for two rows that both bind at the nearest
    point (asserted), in rational arithmetic: y = x - G^T lam with (G G^T) lam = G x - h."""
    from fractions import Fraction

    A = [[Fraction(float(v)) for v in row] for row in G]
    X = [Fraction(float(v)) for v in x]
    M = [[sum(a * b for a, b in zip(A[p], A[q])) for q in range(2)] for p in range(2)]
    rhs = [sum(a * v for a, v in zip(A[p], X)) - Fraction(float(h[p])) for p in range(2)]
    det = M[0][0] * M[1][1] - M[0][1] * M[1][0]
    lam = [(rhs[0] * M[1][1] - rhs[1] * M[0][1]) / det, (M[0][0] * rhs[1] - M[1][0] * rhs[0]) / det]
    assert min(lam) > 0   # both rows bind at the nearest point
    return float(sum((A[0][k] * lam[0] + A[1][k] * lam[1]) ** 2 for k in range(len(X)))) ** 0.5


def test_min_distance_on_nearly_parallel_rows_matches_rational_arithmetic():
    # The polish's typical piece on hidden-feature: the teacher's certain side and the
    # student's other side, two nearly opposite rows in 50 dimensions whose wedge lies far
    # away. The primal active-set method cycled here (and ended 5e-7 off); the dual lands
    # on the exact answer, computed with fractions.
    rng = np.random.default_rng(2)
    u = rng.normal(size=50)
    G = np.stack([u, -u + 1e-3 * rng.normal(size=50)])
    x = rng.normal(size=50)
    h = np.array([u @ x - 0.2, -u @ x - 0.3])
    d, y = E.min_distance(x, G, h, "l2")
    exact = _two_binding_rows_distance(x, G, h)
    assert exact > 10 and d == pytest.approx(exact, rel=1e-8)
    assert (G @ y <= h + 1e-8 * np.linalg.norm(G, axis=1)).all()


def test_pair_bound_is_the_exact_distance_of_two_rows_and_never_above_min_distance():
    # l2_pair_bound lets the polish skip pieces far outside the ball: it must never be
    # above the true distance. Two nearly opposite rows (the hidden-feature pieces whose
    # wedge lies far away) against fractions, closer and closer to opposite; then random
    # polyhedra of 1 to 5 rows, with and without a box, against min_distance.
    rng = np.random.default_rng(3)
    for noise in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5):
        u = rng.normal(size=50)
        G = np.stack([u, -u + noise * rng.normal(size=50)])
        x = rng.normal(size=50)
        h = np.array([u @ x - 0.2, -u @ x - 0.3])
        exact = _two_binding_rows_distance(x, G, h)
        assert E.l2_pair_bound(x, G, h) == pytest.approx(exact, rel=1e-8), noise
    checked = 0
    for _ in range(300):
        dim, k = int(rng.integers(2, 12)), int(rng.integers(1, 6))
        G, h, x = rng.normal(size=(k, dim)), rng.normal(size=k), rng.normal(size=dim) * 2
        box = (-np.full(dim, 3.0), np.full(dim, 3.0)) if rng.uniform() < 0.5 else None
        try:
            d, _ = E.min_distance(x, G, h, "l2", box)
        except np.linalg.LinAlgError:
            continue
        checked += 1
        assert E.l2_pair_bound(x, G, h) <= d * (1 + 1e-9) + 1e-12
    assert checked > 250
    # a zero row that cannot hold: empty, infinitely far
    assert E.l2_pair_bound(np.zeros(3), np.zeros((1, 3)), np.array([-1.0])) == np.inf


@pytest.mark.parametrize("teacher,leak,radius", [("linear", 1e-3, 1.0), ("net", 1e-2, 2.0)])
def test_the_polish_skips_far_pieces_without_changing_the_search(teacher, leak, radius, monkeypatch):
    # A student that is the teacher plus an off-manifold leak. A small leak: no point
    # breaks, every point reaches the polish, and its pieces are two nearly opposite rows
    # meeting far away, which the polish skips (attacks.teacher.FAR). A larger one: the
    # polish finds counterexamples (a screen that skipped pieces it keeps would change
    # them). Either way the search's answer is the one without the screen.
    from teachsim.attacks import teacher as T

    task = HiddenFeature(0, dim=10, manifold_dim=2, gamma=0.1, teacher=teacher)
    x = torch.from_numpy(points(task, 60))
    g = torch.Generator().manual_seed(0)
    off = torch.nn.Linear(10, 2, bias=False)
    with torch.no_grad():
        off.weight.copy_(leak * torch.randn(2, 10, generator=g))
    model = lambda z: task.logits(z) + off(z)   # noqa: E731
    solve, solved = E.min_distance, []

    def counted(*args, **kwargs):
        solved.append(1)
        return solve(*args, **kwargs)

    def run(far):
        monkeypatch.setattr(T, "FAR", far)
        solved.clear()
        out, found = teacher_attack(model, task, x, radius=radius, norm="l2", box=task.box,
                                    generator=seeding.torch_generator(0, "judge", "teacher"))
        return out, found, len(solved)

    monkeypatch.setattr(E, "min_distance", counted)
    out, found, n = run(T.FAR)
    ref_out, ref_found, n_ref = run(np.inf)
    assert torch.equal(out, ref_out) and torch.equal(found, ref_found)
    if leak < 1e-2:
        assert n_ref - n > 20 and not found.any()   # the polish did skip pieces here
    else:
        assert found.any()
        greedy_out, _, _ = run(0.01)   # skips nearly every piece, so the comparison can fail
        assert not torch.equal(greedy_out, ref_out)


def test_min_distance_reports_an_empty_polyhedron_with_a_box():
    G, h = np.array([[1.0, 0.0]]), np.array([-2.0])    # x0 <= -2, outside the box [-1, 1]^2
    assert E.min_distance(np.zeros(2), G, h, "l2", (-1.0, 1.0)) == (np.inf, None)
    assert E.min_distance(np.zeros(2), G, h, "linf", (-1.0, 1.0)) == (np.inf, None)

# -- the search against the exact answer ----------------------------------------------------
def _search_matches_exact(task, x, radius, norm) -> list[float]:
    """Students trained on 2, 30 and 400 labels: the search's robust fraction is within
    0.01 of the exact one and never below it; returns the exact robust fractions."""
    accs = []
    for labels in (2, 30, 400):
        model = student(task, labels, seed=labels)
        ex = E.exact_strong(model, task, x, radius=radius, norm=norm)
        found = search(model, task, x, radius, norm)
        assert not (found & ex.robust).any()
        assert (1 - found.mean()) - ex.robust_acc <= 0.01, (labels, 1 - found.mean(), ex.robust_acc)
        accs.append(ex.robust_acc)
    return accs


@pytest.mark.parametrize("norm,radius", [("l2", 1.5), ("linf", 0.3)])
@pytest.mark.parametrize("dim", [5, 20, 50])
def test_search_finds_what_the_exact_answer_finds(norm, radius, dim):
    """Binary affine students, from no labels to many: the search's robust fraction is
    within 0.01 of the exact one and never below it (every counterexample is real)."""
    task = HiddenFeature(dim, dim=dim, manifold_dim=2, gamma=0.1)
    x = points(task, 150, seed=dim)
    _search_matches_exact(task, x, radius, norm)


@pytest.mark.slow
@pytest.mark.parametrize("norm,radius", [("l2", 0.8), ("linf", 0.2)])
@pytest.mark.parametrize("classes,dim", [(3, 5), (3, 20), (4, 5)])
def test_search_finds_what_the_exact_answer_finds_with_several_classes(norm, radius, classes, dim):
    """3 and 4 classes: the counterexample set is a union of pieces with kinks (the
    teacher's runner-up and the student's choice change); version 2 missed up to 0.12 of
    the points here. The search must be within 0.01 of exact, never below it."""
    task = HiddenFeature(dim, dim=dim, manifold_dim=2, classes=classes, gamma=0.1)
    x = points(task, 150, seed=dim)
    accs = _search_matches_exact(task, x, radius, norm)
    assert max(accs) > 0.05   # some points are robust, so the search had something to miss


def test_the_issue_case_end_to_end(tmp_path):
    """The reported case, run as a user would (hidden-feature d 20, linear teacher and
    student, 40 initial labels, passive to budget 60, l2, strong radius 1.5, 300 test
    points, seed 0) with the exact shortcut off: the old search said 0.68 at budget 60,
    the exact answer is 0.41; the judge's search must now say the same."""
    import teachsim

    cfg = {"name": "issue", "seeds": [0], "budgets": [60],
           "task": {"name": "hidden-feature", "dim": 20, "manifold_dim": 2, "gamma": 0.1, "teacher": "linear"},
           "student": {"model": "linear", "initial_labels": 40},
           "judge": {"norm": "l2", "strong_radius": 1.5, "test_points": 300, "strong_exact": False},
           "protocols": [{"name": "passive"}]}
    run = teachsim.run(cfg, out=tmp_path / "issue", executor="serial", progress=False)
    s = run.scores
    judged = float(s[s["metric"] == "strong_robust_acc"]["value"].iloc[0])
    task = run.task(1)
    x, _ = run.test_set(1)
    ex = E.exact_strong(run.student(1, 60), task, x, radius=1.5, norm="l2")
    assert 0.2 < ex.robust_acc < 0.6          # mid-curve
    assert ex.robust_acc <= judged <= ex.robust_acc + 0.01


def test_judge_uses_the_exact_answer_for_affine_students_and_says_so():
    task = HiddenFeature(0, dim=20, manifold_dim=2, gamma=0.1)
    model = student(task, 40)
    cfg = resolve(J.PARAMS, {"test_points": 150, "strong_radius": 1.5}, "judge")
    test = J.make_test_set(task, cfg, 0)
    scores, flags, _ = J.judge_episode({0.0: model}, task, cfg, 0)
    got = {k: v for _, k, v in scores}
    ex = E.exact_strong(model, task, test.x, radius=1.5, norm="l2")
    assert got["strong_robust_acc"] == pytest.approx(ex.robust_acc)
    assert got["strong_robust_lb"] == got["strong_robust_acc"]       # exact: the interval is a point
    assert {k: v for _, k, v in flags}["strong_exact"] == 1.0
    off = J.judge(model, task, test, {**cfg, "strong_exact": False}, 0)
    assert "strong_robust_lb" not in off
    assert abs(off["strong_robust_acc"] - ex.robust_acc) <= 0.01


# -- MLP students ---------------------------------------------------------------------------
# Version 2 of the search missed 7 of the grid's 45 counterexamples on the 2-d net teacher
# (80 labels) and 5 of 120 on spheres (10 labels); the linearise-and-project polish of
# version 3 finds all of them (measured: 0 misses in every case below).
@pytest.mark.parametrize("make,radius,norm", [
    (lambda: HiddenFeature(2, dim=2, manifold_dim=2, gamma=0.1, teacher="net"), 0.6, "l2"),
    (lambda: HiddenFeature(3, dim=3, manifold_dim=2, gamma=0.1), 0.5, "linf"),
    (lambda: Spheres(0, dim=2, outer_radius=1.6, gamma=0.05), 0.4, "l2"),
])
@pytest.mark.slow
def test_search_on_mlps_matches_a_dense_grid(make, radius, norm):
    task = make()
    x = points(task, 120)
    for labels in (10, 80):
        model = student(task, labels, model="mlp", hidden=(32,), seed=labels)
        found = search(model, task, x, radius, norm)
        grid, _ = E.grid_strong(model, task, x, radius=radius, norm=norm, per_radius=30 if task.dim == 3 else 60)
        # both only report real counterexamples; the search may miss at most 0.01 of the points
        assert (grid & ~found).mean() <= 0.01, (labels, (grid & ~found).sum(), grid.sum())


@pytest.mark.slow
def test_search_on_mlps_matches_a_ten_times_stronger_search():
    """No exact answer for an MLP in d = 20 under l2: the default search is within 0.02 of
    one with 5x the steps and 2x the restarts (10x the work per target class)."""
    task = HiddenFeature(0, dim=20, manifold_dim=2, gamma=0.1)
    x = points(task, 100)
    model = student(task, 40, model="mlp", hidden=(32,), seed=40)
    base = search(model, task, x, 1.5, "l2")
    strong = search(model, task, x, 1.5, "l2", steps=1000, restarts=6)
    assert 0 < base.sum() < len(x)
    assert (strong & ~base).mean() <= 0.02


# A reference of another kind where no exact one applies: a Carlini-Wagner-style penalty
# search (Adam on distance + both constraints, every class, 3 starts). Measured at these
# mid-curve radii (100-150 points): it and the search agree point for point on every
# hidden-feature and spheres case; on digits version 3 of the search missed 0.11 of its
# points (the box cut the l2 Frank-Wolfe step, and counterexamples at the edge of the ball
# needed a restart that climbs the teacher's certainty), version 4 misses none.
@pytest.mark.parametrize("name,make,radius,norm,labels", [
    ("hidden-feature d20 linear", lambda: HiddenFeature(0, dim=20, manifold_dim=2, gamma=0.1), 0.7, "l2", 40),
    ("hidden-feature d20 linf", lambda: HiddenFeature(0, dim=20, manifold_dim=2, gamma=0.1), 0.15, "linf", 40),
    ("hidden-feature d20 net", lambda: HiddenFeature(1, dim=20, manifold_dim=2, gamma=0.1, teacher="net"),
     0.5, "l2", 80),
    ("spheres d10", lambda: Spheres(0, dim=10, outer_radius=1.6, gamma=0.05), 0.15, "l2", 80),
    ("digits", lambda: Digits(0), 0.3, "l2", 50),
])
@pytest.mark.slow
def test_search_on_mlps_finds_what_a_penalty_search_finds(name, make, radius, norm, labels):
    task = make()
    x = points(task, 150 if name == "digits" else 100)
    model = student(task, labels, model="mlp", hidden=(64,) if name == "digits" else (32,), seed=labels)
    found = search(model, task, x, radius, norm)
    ref = E.penalty_strong(model, task, x, radius=radius, norm=norm)
    assert 0.1 < ref.mean() < 0.9, ref.mean()        # mid-curve: there is something to miss
    assert (ref & ~found).mean() <= 0.02, (ref & ~found).sum()


def test_penalty_reference_agrees_with_the_exact_answer():
    """The penalty reference is itself checked where the exact answer exists."""
    task = HiddenFeature(2, dim=10, manifold_dim=2, classes=3, gamma=0.1)
    x = points(task, 120)
    model = student(task, 30, seed=3)
    exact = ~E.exact_strong(model, task, x, radius=0.8, norm="l2").robust
    ref = E.penalty_strong(model, task, x, radius=0.8, norm="l2")
    assert not (ref & ~exact).any()                  # everything it reports is real
    assert (exact & ~ref).mean() <= 0.02 and exact.any()


def test_milp_certificate_is_a_lower_bound_and_tight_where_it_finishes():
    task = HiddenFeature(1, dim=5, manifold_dim=2, gamma=0.1)
    x = points(task, 40)
    model = student(task, 40, model="mlp", hidden=(8,), seed=2)
    found = search(model, task, x, 0.3, "linf")
    certified = E.milp_strong(model, task, x, radius=0.3, time_limit=5.0)
    assert not (certified & found).any()             # lower bound <= upper bound, point by point
    assert certified.mean() >= (1 - found.mean()) - 0.025   # the two meet up to a point
    assert 0 < certified.sum() < len(x)


def test_judge_certify_records_the_interval():
    task = HiddenFeature(1, dim=5, manifold_dim=2, gamma=0.1)
    model = student(task, 40, model="mlp", hidden=(8,), seed=2)
    cfg = resolve(J.PARAMS, {"test_points": 30, "norm": "linf", "strong_radius": 0.3, "certify": True}, "judge")
    out = J.judge(model, task, J.make_test_set(task, cfg, 0), cfg, 0)
    assert out["strong_robust_lb"] <= out["strong_robust_acc"] <= out["clean_acc"]


# -- the l_p metric against the exact answer ------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("l2", 0.5), ("linf", 0.1)])
def test_lp_attacks_match_the_exact_answer_on_affine_students(norm, eps):
    task = HiddenFeature(4, dim=20, manifold_dim=2, gamma=0.1)
    x = points(task, 300)
    y = task.label(x)
    model = student(task, 30)
    exact = E.exact_lp(model, x, y, eps=eps, norm=norm)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(0)
    for attack in (pgd, apgd_ce, fgsm):
        adv = attack(model, xt, yt, eps=eps, norm=norm, generator=g)
        robust = (model(adv).argmax(1) == yt).numpy() & (model(xt).argmax(1) == yt).numpy()
        assert not (exact & ~robust).any()   # an attack never breaks a truly robust point
        assert abs(int(robust.sum()) - int(exact.sum())) <= 1, attack.__name__
