"""Tasks: the teacher's mechanism and the data it labels:
check_task on every built-in task, the checker catching broken user tasks, the spheres and
digits worlds, the cnn student, and a user task from a plugin file."""

from __future__ import annotations

import functools
import math
import textwrap

import numpy as np
import pytest
import torch

import teachsim
from teachsim import registry
from teachsim.agents.models import cnn, mlp
from teachsim.cli import main
from teachsim.errors import ConfigError
from teachsim.messages import ABSTAIN
from teachsim.tasks import digits as digits_mod
from teachsim.tasks.base import Distribution, Task
from teachsim.checks.task import check_task
from teachsim.tasks.digits import Digits, high_frequency_basis
from teachsim.tasks.hidden_feature import HiddenFeature
from teachsim.tasks.spheres import Spheres

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: one thread is fastest


@pytest.mark.parametrize("classes", [2, 3, 4, 5, 8, 10])
def test_net_teacher_gives_every_class_a_fair_share(classes):
    # A random network favours some classes; the task rebalances its biases so that no
    # class is (nearly) empty on the data distribution, whatever the seed.
    for seed in range(6):
        task = HiddenFeature(seed, dim=10, manifold_dim=2, classes=classes, teacher="net")
        x = torch.as_tensor(task.data.sample(20000, np.random.default_rng(123)))
        share = np.bincount(task.logits(x).argmax(1).numpy(), minlength=classes) / len(x)
        assert np.abs(share * classes - 1).max() < 0.3, (seed, share.round(3))


def _margin_to_two_graphs(task, x, target):
    """margin_to as defined: margin() where target is the top class, else minus the
    first-order distance from the top class's boundary with target (each its own graph)."""
    logits = task.logits(x)
    top = logits.argmax(dim=1)
    gap = logits.gather(1, top[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    (grad,) = torch.autograd.grad(gap.sum(), x, create_graph=True)
    away = -gap / (grad.flatten(1).norm(dim=1) + 1e-12)
    return torch.where(top == target, task.margin(x, create_graph=True), away)


@pytest.mark.parametrize("classes", [2, 3, 4])
@pytest.mark.parametrize("teacher", ["linear", "net"])
def test_margin_to_is_the_two_graph_form(teacher, classes):
    # The search calls margin_to at every step, so the default one builds a single graph.
    # Its values and input gradients (what the search steps along) must be the definition's,
    # bit for bit: the judge's scores depend on them.
    tasks = [HiddenFeature(seed, dim=20, classes=classes, teacher=teacher) for seed in range(2)]
    tasks += [Spheres(0, dim=10)] if classes == 2 else []
    for task in tasks:
        g = torch.Generator().manual_seed(classes)
        x = 2 * torch.randn(2000, task.dim, generator=g)
        for target in (torch.randint(classes, (len(x),), generator=g), task.logits(x).argmax(1)):
            got, want = [], []
            for f, out in ((task.margin_to, got), (functools.partial(_margin_to_two_graphs, task), want)):
                xg = x.clone().requires_grad_(True)
                m = f(xg, target)
                out += [m.detach(), torch.autograd.grad(m.sum(), xg)[0]]
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), task.name
            mine = target == task.logits(x).argmax(1)
            assert (got[0][~mine] <= 0).all() and torch.equal(got[0][mine], task.margin(x)[mine].detach())


CHECKS = {"builds", "samples", "labels", "certain", "gradient", "deterministic", "invariances"}

# small sizes where the default is large; every registered built-in must appear here or run
# with its defaults
SMALL = {"hidden-feature": {"dim": 8}, "spheres": {"dim": 10}}


# -- every built-in task conforms ----------------------------------------------------------------

@pytest.mark.parametrize("name", registry.tasks.names())
def test_check_task_passes_every_builtin(name):
    report = check_task(name, params=SMALL.get(name, {}))
    assert report.ok, str(report)
    assert set(report.results) == CHECKS
    # the same through the package API
    assert teachsim.check_task(name, params=SMALL.get(name, {})).ok


def test_builtin_catalogue_has_the_spec_tasks():
    assert {"hidden-feature", "spheres", "digits"} <= set(registry.tasks.names())


def test_check_task_passes_multiclass_net_teacher():
    report = check_task("hidden-feature", params={"dim": 8, "teacher": "net", "classes": 4}, seed=3)
    assert report.ok, str(report)
    assert "classes present in the data: 4" in report.results["certain"][1]


def test_check_task_unknown_task_or_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="did you mean 'spheres'"):
        check_task("sphere")
    with pytest.raises(ConfigError, match="outer_radius"):
        check_task("spheres", params={"radius": 2.0})


# -- the checker catches broken user tasks -------------------------------------------------------

class _Cube(Distribution):
    """Uniform in [lo, hi]^dim."""

    def __init__(self, dim: int, lo: float, hi: float):
        self.dim, self.lo, self.hi = dim, lo, hi

    def sample(self, n, rng):
        return rng.uniform(self.lo, self.hi, size=(n, self.dim)).astype(np.float32)


class GoodLinear(Task):
    """A linear teacher on a unit direction w; the label ignores the complement of w."""

    name = "good-linear-test"

    def __init__(self, seed: int, *, dim: int = 4, gamma: float = 0.05):
        self.dim, self.classes, self.gamma = dim, 2, gamma
        self.data = _Cube(dim, -1.0, 1.0)
        self.broad = _Cube(dim, -2.0, 2.0)
        w = self.direction(np.random.default_rng(seed))
        self._w = torch.as_tensor(w / np.linalg.norm(w), dtype=torch.float32)

    def direction(self, rng):
        return rng.standard_normal(self.dim)

    def logits(self, x):
        s = x @ self._w
        return torch.stack([-s / 2, s / 2], dim=1)   # top-two gap |w.x|, gradient norm 1

    def invariances(self):
        # an orthonormal basis of the complement of w
        q, _ = np.linalg.qr(np.column_stack([self._w.numpy(), np.eye(self.dim)[:, : self.dim - 1]]))
        return q[:, 1:].T.astype(np.float32)


class LyingLabels(GoodLinear):
    """Labels flipped: inconsistent with its own logits."""

    def label(self, points):
        y = super().label(points)
        return np.where(y == ABSTAIN, y, 1 - y)


class NeverCertainOnBroad(GoodLinear):
    """Data far from the boundary, the broad distribution hugging it: abstains on broad."""

    def __init__(self, seed: int, **kw):
        super().__init__(seed, **kw)
        self.gamma = 0.5
        self.data = _Shifted(self._w.numpy(), 2.0)
        self.broad = _Shifted(self._w.numpy(), 0.01)


class _Shifted(Distribution):
    """±offset along w plus small noise: the margin is about offset everywhere."""

    def __init__(self, w, offset: float):
        self.w, self.offset, self.dim = w, offset, len(w)

    def sample(self, n, rng):
        sign = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
        return (sign[:, None] * self.offset * self.w + 0.001 * rng.standard_normal((n, self.dim))).astype(np.float32)


class UnseededTeacher(GoodLinear):
    """The teacher's weights ignore the seed."""

    def direction(self, rng):
        return np.random.default_rng().standard_normal(self.dim)


class _GlobalRandom(_Cube):
    def sample(self, n, rng):
        return np.random.default_rng().uniform(self.lo, self.hi, size=(n, self.dim)).astype(np.float32)


class UnseededData(GoodLinear):
    """The data distribution ignores the generator it is given."""

    def __init__(self, seed: int, **kw):
        super().__init__(seed, **kw)
        self.data = _GlobalRandom(self.dim, -1.0, 1.0)


class _Float64(_Cube):
    def sample(self, n, rng):
        return super().sample(n, rng).astype(np.float64)


class WrongDtype(GoodLinear):
    """Samples float64."""

    def __init__(self, seed: int, **kw):
        super().__init__(seed, **kw)
        self.data = _Float64(self.dim, -1.0, 1.0)


class _OneTooWide(_Cube):
    def sample(self, n, rng):
        return rng.uniform(self.lo, self.hi, size=(n, self.dim + 1)).astype(np.float32)


class WrongShape(GoodLinear):
    """Broad samples have one feature too many."""

    def __init__(self, seed: int, **kw):
        super().__init__(seed, **kw)
        self.broad = _OneTooWide(self.dim, -2.0, 2.0)


class OutsideBox(GoodLinear):
    """States the box [-0.5, 0.5]^dim but samples [-1, 1]^dim."""

    def __init__(self, seed: int, **kw):
        super().__init__(seed, **kw)
        self.box = (np.full(self.dim, -0.5, np.float32), np.full(self.dim, 0.5, np.float32))


class WrongBoxShape(GoodLinear):
    """States a box with one value too many per side."""

    def __init__(self, seed: int, **kw):
        super().__init__(seed, **kw)
        self.box = (np.full(self.dim + 1, -2.0, np.float32), np.full(self.dim + 1, 2.0, np.float32))


class ScalarBox(GoodLinear):
    """States its box as two numbers: every feature in [-2, 2] (the broad cube's own)."""

    def __init__(self, seed: int, **kw):
        super().__init__(seed, **kw)
        self.box = (-2.0, 2.0)


class FalseInvariances(GoodLinear):
    """Claims to ignore w itself, the one direction it uses."""

    def invariances(self):
        basis = super().invariances()
        return np.concatenate([self._w.numpy()[None], basis[:-1]])


class NotOrthonormal(GoodLinear):
    """Invariant directions, but scaled by 2."""

    def invariances(self):
        return 2 * super().invariances()


class CrashesOnBuild(GoodLinear):
    def __init__(self, seed: int, **kw):
        raise RuntimeError("no world today")


BROKEN = [
    (LyingLabels, "labels"),
    (NeverCertainOnBroad, "certain"),
    (UnseededTeacher, "deterministic"),
    (UnseededData, "deterministic"),
    (WrongDtype, "samples"),
    (WrongShape, "samples"),
    (OutsideBox, "samples"),
    (WrongBoxShape, "builds"),
    (FalseInvariances, "invariances"),
    (NotOrthonormal, "invariances"),
    (CrashesOnBuild, "builds"),
]


def test_check_task_passes_a_good_user_task(restore_registry):
    teachsim.register_task("good-linear-test", GoodLinear)
    report = check_task("good-linear-test")
    assert report.ok, str(report)
    assert set(report.results) == CHECKS
    assert "3 orthonormal directions" in report.results["invariances"][1]


@pytest.mark.parametrize("factory, check", BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_check_task_catches_a_broken_user_task(restore_registry, factory, check):
    name = f"broken-{factory.__name__.lower()}-test"
    teachsim.register_task(name, factory)
    report = check_task(name)
    assert not report.ok
    assert check in report.results and not report.results[check][0], str(report)
    # everything checked before the failing check passed
    order = list(report.results)
    assert all(ok for k, (ok, _) in report.results.items() if order.index(k) < order.index(check)), str(report)
    assert f"FAIL {check}" in str(report) and "check(s) failed" in str(report)


def test_a_box_of_two_numbers_holds_for_every_feature_through_a_whole_episode(restore_registry, tiny_config):
    # a box of numbers once passed check-task and failed every episode at judging (after
    # all its training): a number now holds for every feature, everywhere the box is read
    from teachsim.config import load
    from teachsim.platform.build import build_task
    from teachsim.platform.episode import run_episode

    teachsim.register_task("scalar-box-test", ScalarBox)
    assert check_task("scalar-box-test").ok
    task = build_task({"name": "scalar-box-test"}, 0)
    for box in (task.box, task.data.box, task.broad.box):
        if box is not None:
            assert all(b.dtype == np.float32 and b.shape == (4,) for b in box)
    np.testing.assert_array_equal(task.box[0], np.full(4, -2.0, np.float32))
    spec = load({**tiny_config, "seeds": [0], "task": {"name": "scalar-box-test"}}).episodes[0]
    result = run_episode(spec)
    assert result.status == "finished", result.error
    strong = [v for _, k, v in result.scores if k == "strong_robust_acc"]
    assert len(strong) == len(spec.budgets) and all(0 <= v <= 1 for v in strong)


def test_a_bad_box_is_named_when_the_task_is_built(restore_registry):
    from teachsim.errors import PluginError
    from teachsim.platform.build import build_task

    teachsim.register_task("wrong-box-test", WrongBoxShape)
    with pytest.raises(PluginError, match=r"box: expected \(lo, hi\), each a number or 4 finite values"):
        build_task({"name": "wrong-box-test"}, 0)
    report = check_task("wrong-box-test")
    assert not report.results["builds"][0] and "box: expected (lo, hi)" in report.results["builds"][1]


def _at_most_width(*, dim: int = 4, gamma: float = 0.05):
    if gamma >= 0.5:
        raise ConfigError("gamma must be below 0.5")   # no field: the README's first try
    return dim, 2


def test_check_task_runs_the_tasks_registered_check(restore_registry, capsys):
    from teachsim.schema import Float, Int

    teachsim.register_task("checked-test", GoodLinear, check=_at_most_width,
                           params={"dim": Int(4, lo=1), "gamma": Float(0.05, lo=0.0)})
    assert check_task("checked-test", params={"gamma": 0.1}).ok
    with pytest.raises(ConfigError, match="^task: gamma must be below 0.5$"):
        check_task("checked-test", params={"gamma": 0.6})
    assert main(["check-task", "checked-test", "--param", "gamma=0.6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["teachsim: error: task: gamma must be below 0.5"], err


def test_cli_check_task_exit_codes(restore_registry, capsys):
    teachsim.register_task("good-linear-test", GoodLinear)
    teachsim.register_task("lying-test", LyingLabels)
    teachsim.register_task("crashing-test", CrashesOnBuild)
    assert main(["check-task", "good-linear-test"]) == 0
    assert "conforms" in capsys.readouterr().out
    assert main(["check-task", "lying-test"]) == 1
    assert "FAIL labels" in capsys.readouterr().out
    # a task that crashes when built is a failed check, not bad input
    assert main(["check-task", "crashing-test"]) == 1
    out = capsys.readouterr().out
    assert "FAIL builds" in out and "RuntimeError: no world today" in out
    assert main(["check-task", "no-such-task"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("teachsim: error: TASK: unknown task"), err
    assert main(["check-task", "spheres", "--param", "outer_radius=0.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("teachsim: error: --param outer_radius:"), err
    assert main(["check-task", "hidden-feature", "--param", "dim=8", "--seed", "4"]) == 0


# -- spheres ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spheres():
    return Spheres(0, dim=10, outer_radius=1.6, gamma=0.1)


def _norms(x):
    return np.linalg.norm(x.astype(np.float64), axis=1)


def test_spheres_data_lie_on_the_two_spheres_labelled_by_norm(spheres):
    x = spheres.data.sample(2000, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == (2000, 10)
    r = _norms(x)
    inner, outer = np.isclose(r, 1.0, atol=1e-5), np.isclose(r, 1.6, atol=1e-5)
    assert (inner | outer).all()
    assert 0.4 < inner.mean() < 0.6
    y = spheres.label(x)
    assert (y[inner] == 0).all() and (y[outer] == 1).all()
    # directions are uniform: no coordinate is favoured
    assert np.abs((x / r[:, None]).mean(0)).max() < 0.1


def test_spheres_margin_is_the_distance_to_the_middle_sphere(spheres):
    x = spheres.broad.sample(2000, np.random.default_rng(1))
    margin = spheres.margin(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(margin, np.abs(_norms(x) - 1.3), atol=1e-5)


def test_spheres_abstain_exactly_inside_the_band(spheres):
    x = spheres.broad.sample(5000, np.random.default_rng(2))
    d = _norms(x) - 1.3
    y = spheres.label(x)
    clear = np.abs(np.abs(d) - 0.1) > 1e-4   # leave float32 rounding at the band's edge aside
    assert ((y == ABSTAIN) == (np.abs(d) < 0.1))[clear].all()
    assert (y[clear & (d <= -0.1)] == 0).all() and (y[clear & (d >= 0.1)] == 1).all()


def test_spheres_broad_covers_the_band_and_its_surroundings(spheres):
    r = _norms(spheres.broad.sample(5000, np.random.default_rng(3)))
    gap = 0.6
    assert r.min() >= 1 - gap - 1e-5 and r.max() <= 1.6 + gap + 1e-5
    assert r.min() < 1 - 0.9 * gap and r.max() > 1.6 + 0.9 * gap
    in_band = np.abs(r - 1.3) < 0.1
    assert 0.02 < in_band.mean() < 0.3
    assert (r < 1.0).mean() > 0.1 and (r > 1.6).mean() > 0.1
    # radius uniform over [1 - gap, outer + gap]: the band holds 2 gamma / (3 gap) of it
    assert in_band.mean() == pytest.approx(0.2 / 1.8, abs=0.02)


def test_spheres_no_invariances_and_teacher_is_a_perfect_student(spheres):
    assert spheres.invariances() is None
    x = spheres.broad.sample(500, np.random.default_rng(4))
    y = spheres.label(x)
    pred = spheres.as_model()(torch.from_numpy(x)).argmax(1).numpy()
    assert (pred[y != ABSTAIN] == y[y != ABSTAIN]).all()


@pytest.mark.parametrize("params, field", [
    ({"outer_radius": 1.0}, "task.outer_radius"),
    ({"outer_radius": 0.5}, "task.outer_radius"),
    ({"outer_radius": 1.3, "gamma": 0.15}, "task.gamma"),        # exactly half the gap (0.15000000000000002)
    ({"outer_radius": 1.3, "gamma": 0.1499999}, "task.gamma"),   # half the gap up to float32 rounding
    ({"outer_radius": 1.3, "gamma": 0.2}, "task.gamma"),
])
def test_spheres_bad_parameters_are_config_errors_naming_the_field(params, field):
    with pytest.raises(ConfigError) as exc:
        Spheres(0, dim=4, **params)
    assert exc.value.field == field and str(exc.value).startswith(field)
    # the same through the config loader (before anything runs)
    with pytest.raises(ConfigError) as exc:
        check_task("spheres", params={"dim": 4, **params})
    assert exc.value.field == field


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.149, 0.14999])
def test_spheres_gamma_below_half_the_gap_never_abstains_on_the_data(gamma):
    # the rule behind the gamma error: an accepted gamma leaves the data certain
    task = Spheres(0, dim=10, outer_radius=1.3, gamma=gamma)
    y = task.label(task.data.sample(4000, np.random.default_rng(0)))
    assert (y != ABSTAIN).all()


# -- digits -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return Digits(0)


@pytest.fixture(scope="module")
def all_images():
    return digits_mod._images()


def test_digits_inputs_live_in_the_pixel_box(digits, all_images):
    x, y = all_images
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    lo, hi = digits.box
    assert (lo == 0).all() and (hi == 1).all() and lo.shape == (64,)
    for dist in (digits.data, digits.test, digits.broad):
        s = dist.sample(500, np.random.default_rng(0))
        assert s.dtype == np.float32 and s.shape == (500, 64)
        assert s.min() >= 0.0 and s.max() <= 1.0
        assert dist.box is not None and (dist.box[0] == 0).all() and (dist.box[1] == 1).all()


def test_digits_test_images_are_held_out(digits, all_images):
    train = {r.tobytes() for r in digits.data.images}
    test = {r.tobytes() for r in digits.test.images}
    assert not train & test
    assert len(train) + len(test) == len(all_images[0])
    assert len(test) == round(0.3 * len(all_images[0]))
    # the judge draws from the held-out images
    drawn = digits.test.sample(300, np.random.default_rng(1))
    assert all(r.tobytes() in test for r in drawn)
    # the split depends on the seed
    other = Digits(1, teacher_steps=5)
    assert {r.tobytes() for r in other.test.images} != test


def test_digits_teacher_is_deterministic_per_seed(digits, all_images):
    x = torch.from_numpy(all_images[0])
    again = Digits(0)
    assert torch.equal(digits.logits(x), again.logits(x))
    # not only the cache: training from scratch gives the same weights bit for bit
    fresh = digits_mod._teacher_weights.__wrapped__(0, 32, 300)
    cached = digits.weights
    assert all(torch.equal(a, b) for a, b in zip(fresh, cached))


def test_digits_teacher_differs_across_seeds(digits, all_images):
    x = torch.from_numpy(all_images[0])
    other = Digits(1)
    assert not torch.allclose(digits.logits(x), other.logits(x), atol=1e-3)
    # ... but both learnt the digits
    y = all_images[1]
    for task in (digits, other):
        lab = task.label(all_images[0])
        assert (lab[lab != ABSTAIN] == y[lab != ABSTAIN]).mean() >= 0.9


def test_digits_teacher_agrees_with_the_true_digits_and_abstains_sometimes(digits, all_images):
    x, y = all_images
    lab = digits.label(x)
    certain = lab != ABSTAIN
    assert (lab[certain] == y[certain]).mean() >= 0.9
    assert 0.01 <= 1 - certain.mean() <= 0.5
    assert set(np.unique(lab[certain])) == set(range(10))
    # the same on the held-out images
    lt = digits.label(digits.test.images)
    assert 0.01 <= (lt == ABSTAIN).mean() <= 0.5


def test_digits_margin_is_the_log_odds_of_the_top_class(digits, all_images):
    x = torch.from_numpy(all_images[0][:300])
    p = torch.softmax(digits.logits(x).double(), 1).max(1).values
    margin = digits.margin(x).detach().numpy()
    assert np.isfinite(margin).all()   # finite even where the top probability rounds to 1 in float32
    sure = p.numpy() < 0.999
    assert sure.mean() > 0.3
    np.testing.assert_allclose(margin[sure], torch.log(p / (1 - p)).numpy()[sure], rtol=1e-3, atol=1e-3)
    assert digits.gamma == pytest.approx(math.log(0.8 / 0.2))
    certain = digits.label(x.numpy()) != ABSTAIN
    assert (certain == (p.numpy() >= 0.8 - 1e-6)).mean() > 0.99


def test_digits_logits_ignore_the_high_frequency_directions(digits, all_images):
    V = high_frequency_basis()
    assert V.shape == (48, 64)
    np.testing.assert_allclose(V @ V.T, np.eye(48), atol=1e-6)
    np.testing.assert_array_equal(digits.invariances(), V)
    # the directions are orthogonal to every 2x2 block constant: pooling removes them
    blocks = digits_mod._pool(torch.from_numpy(V)).numpy()
    assert np.abs(blocks).max() < 1e-6
    x = all_images[0][:400]
    shift = (np.random.default_rng(0).standard_normal((len(x), 48)) @ V).astype(np.float32)   # unclipped
    before = digits.logits(torch.from_numpy(x))
    after = digits.logits(torch.from_numpy(x + shift))
    assert float((after - before).abs().max()) < 1e-4
    # ... while a low-frequency change (a block's constant) moves them
    bump = np.zeros(64, np.float32)
    bump[[0, 1, 8, 9]] = 0.5
    assert float((digits.logits(torch.from_numpy(x + bump)) - before).abs().max()) > 1e-2


def test_digits_broad_points_stay_in_the_box_and_differ_from_the_images(digits):
    b = digits.broad.sample(2000, np.random.default_rng(5))
    assert b.min() >= 0.0 and b.max() <= 1.0
    images = {r.tobytes() for r in digits.data.images}
    assert np.mean([r.tobytes() in images for r in b]) < 0.05
    # the noise is high-frequency: the pooled image moves only through the clipping
    y = digits.label(b)
    assert 0.3 < (y != ABSTAIN).mean() <= 1.0


# -- the cnn student -----------------------------------------------------------------------------------

def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_cnn_builds_for_square_images_with_deterministic_init():
    a = cnn(64, 10, hidden=[16], init_std=0.0, generator=torch.Generator().manual_seed(0))
    b = cnn(64, 10, hidden=[16], init_std=0.0, generator=torch.Generator().manual_seed(0))
    c = cnn(64, 10, hidden=[16], init_std=0.0, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b)))
    assert not all(torch.equal(p, q) for p, q in zip(_params(a), _params(c)))
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(2))
    assert a(x).shape == (5, 10)
    assert torch.equal(a(x), b(x))
    assert any(isinstance(m, torch.nn.Conv2d) for m in a.modules())
    # no hidden layers, other sizes
    assert cnn(16, 3, hidden=[], init_std=0.1, generator=torch.Generator().manual_seed(0))(x[:, :16]).shape == (5, 3)
    assert cnn(49, 2, hidden=[8, 8], init_std=0.0, generator=torch.Generator().manual_seed(0))(
        torch.zeros(2, 49)).shape == (2, 2)
    # the registered name builds the same model
    d = registry.models.make("cnn", 64, 10, hidden=[16], init_std=0.0, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(d)))


@pytest.mark.parametrize("dim", [50, 63, 9])
def test_cnn_rejects_non_square_or_tiny_inputs(dim):
    with pytest.raises(ConfigError) as exc:
        cnn(dim, 2, hidden=[8], init_std=0.0, generator=torch.Generator().manual_seed(0))
    assert exc.value.field == "student.model" and f"dim = {dim}" in str(exc.value)


def test_mlp_init_is_deterministic_too():
    a = mlp(64, 10, hidden=[16], init_std=0.0, generator=torch.Generator().manual_seed(0))
    b = mlp(64, 10, hidden=[16], init_std=0.0, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b)))


# -- a user task from a plugin file ----------------------------------------------------------------

PLUGIN = '''
import numpy as np
import torch

import teachsim
from teachsim.schema import Float
from teachsim.tasks.base import Distribution, Task


class Cube(Distribution):
    dim, box = 3, (np.zeros(3, np.float32), np.ones(3, np.float32))

    def sample(self, n, rng):
        return rng.uniform(0, 1, size=(n, 3)).astype(np.float32)


class Tilted(Task):
    """A linear teacher through the centre of the unit cube."""

    PARAMS = {"gamma": Float(0.05, lo=0.0, doc="abstain band")}
    name = "tilted"

    def __init__(self, seed, *, gamma=0.05):
        self.dim, self.classes, self.gamma = 3, 2, gamma
        self.data = self.broad = Cube()
        self.box = Cube.box
        w = np.random.default_rng(seed).standard_normal(3)
        self._w = torch.as_tensor(w / np.linalg.norm(w), dtype=torch.float32)

    def logits(self, x):
        s = (x - 0.5) @ self._w
        return torch.stack([-s, s], dim=1)


teachsim.register_task("tilted-test", Tilted)
'''

PLUGIN_RUN = """\
name = "tilted"
seeds = [0]
budgets = [0, 10]

[task]
name = "tilted-test"
gamma = 0.02

[student]
hidden = [8]
steps = 10
initial_labels = 10

[judge]
eps = 0.2
strong_radius = 0.4
test_points = 40
steps = 3
restarts = 1
strong_steps = 3
strong_restarts = 1

[[protocols]]
name = "passive"

[[protocols]]
name = "active-teacher"
push = "counterexample"
probes = 50
"""


@pytest.fixture
def plugin_file(tmp_path, restore_registry):
    """The plugin file; what loading it leaves in this process is undone after the test."""
    import sys

    path = tmp_path / "tilted_plugin.py"
    path.write_text(textwrap.dedent(PLUGIN))
    plugins = list(registry.PLUGINS)
    yield path
    registry.PLUGINS[:] = plugins
    sys.modules.pop("teachsim_plugin_tilted_plugin", None)


# each main() call loads the plugin again, which registers its task again
@pytest.mark.filterwarnings("ignore:task 'tilted-test' is registered again")
def test_plugin_task_passes_check_task_on_the_command_line(plugin_file, capsys):
    assert main(["--plugin", str(plugin_file), "check-task", "tilted-test"]) == 0
    out = capsys.readouterr().out
    assert "check-task tilted-test" in out and "conforms" in out
    assert main(["--plugin", str(plugin_file), "check-task", "tilted-test", "--param", "gamma=0.01"]) == 0
    capsys.readouterr()
    assert main(["--plugin", str(plugin_file), "check-task", "tilted-test", "--param", "gama=0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("teachsim: error: --param gama:") and "gamma" in err[0], err


def test_plugin_task_runs_an_experiment(plugin_file, tmp_path, capsys):
    cfg = tmp_path / "tilted.toml"
    cfg.write_text(PLUGIN_RUN)
    out = tmp_path / "run"
    assert main(["--plugin", str(plugin_file), "run", str(cfg), "--executor", "serial", "--quiet",
                 "--out", str(out)]) == 0
    r = teachsim.open_run(out)
    eps = r.episodes
    assert len(eps) == 2 and set(eps["status"]) == {"finished"}
    s = r.scores
    assert set(s["budget"]) == {0.0, 10.0}
    values = s["value"].dropna()
    assert len(values) > 0 and values.between(0, 1).all()
    # the student lives in the user's world
    x, y = r.test_set(int(eps["episode_id"].iloc[0]))
    assert x.shape[1] == 3 and x.min() >= 0 and x.max() <= 1
