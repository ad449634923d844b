"""The paper's claim on a small real run: at equal budget an
active teacher makes the student strongly robust w.r.t. the teacher where passive data
do not, and an active student's gain shows mostly in weak robustness (its own attack's
directions), not in strong robustness."""

from __future__ import annotations

import tomllib

import pytest

import teachsim

CONFIG = tomllib.loads("""
name = "claim"
seeds = [0, 1]
budgets = [0, 100, 400]

[task]
name = "hidden-feature"
dim = 50
manifold_dim = 2

[student]
init_std = 0.5
initial_labels = 50
steps = 100

[judge]
eps = 2.0
test_points = 200
steps = 20
restarts = 1
strong_steps = 100
strong_restarts = 2

[[protocols]]
name = "passive"
batch = 50
label = "passive"

[[protocols]]
name = "membership"
eps = 2.0
batch = 50
label = "student: adversarial queries"

[[protocols]]
name = "active-teacher"
push = "counterexample"
batch = 50
label = "teacher: counterexamples"

[[protocols]]
name = "active-teacher"
push = "invariance"
batch = 50
label = "teacher: invariance"
""")


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    run = teachsim.run(CONFIG, out=tmp_path_factory.mktemp("claim"), executor="serial", progress=False)
    assert (run.episodes.status == "finished").all()
    s = run.summary()
    s = s[s.budget == 400]
    return {(row.protocol, row.metric): row.mean for row in s.itertuples()}


@pytest.mark.slow
def test_active_teacher_beats_passive_on_strong_robustness(final):
    """The teacher that states its invariance does; counterexample pushes do not (the
    paper suite finds the same at every dimension: benchmarks/RESULTS.md)."""
    passive = final[("passive", "strong_robust_acc")]
    invariance = final[("teacher: invariance", "strong_robust_acc")]
    assert invariance >= passive + 0.5, (invariance, passive)
    # ... and beats the active student there too
    assert invariance >= final[("student: adversarial queries", "strong_robust_acc")] + 0.3


@pytest.mark.slow
def test_active_student_gains_mostly_in_weak_robustness(final):
    gain = {m: final[("student: adversarial queries", m)] - final[("passive", m)]
            for m in ("weak_robust_acc", "strong_robust_acc")}
    assert gain["weak_robust_acc"] > 0.1, gain
    assert gain["weak_robust_acc"] > gain["strong_robust_acc"], gain
