"""Cross-attack evaluation: ``[judge] attack_sets`` scored in the episode's judging pass,
and the train-method x test-attack matrix (``Run.attack_matrix``, ``show --matrix``)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

import teachsim
from teachsim.cli import main
from teachsim import config as config_mod

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: one thread is fastest

SETS = [["fgsm"], ["pgd", "fgsm"]]
NAMES = ["fgsm/l2/2", "pgd+fgsm/l2/2"]
METHODS = ["erm", "pgd-at"]

# student.attack_steps cannot be set here: erm does not take it, and the sweep runs erm too.
CFG = {
    "name": "attack-matrix", "seeds": [0, 1], "budgets": [0, 20],
    "task": {"name": "hidden-feature", "dim": 8, "manifold_dim": 2},
    "student": {"hidden": [16], "steps": 25, "initial_labels": 10},
    "judge": {"test_points": 60, "steps": 5, "restarts": 1, "strong_steps": 5, "strong_restarts": 1,
              "attack_sets": SETS},
    "sweep": {"student.method": METHODS},
    "protocols": [{"name": "passive"}],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return teachsim.run(CFG, out=tmp_path_factory.mktemp("am") / "run", executor="serial", progress=False)


def test_every_attack_set_is_scored_at_every_checkpoint(run):
    assert run.judges == ["default", *sorted(NAMES)]
    default = run.scores
    assert len(default) == 4 * 2 * 6   # episodes x checkpoints x metrics
    for name in NAMES:
        s = run.scores_of(name)
        assert len(s) == len(default)
        assert set(zip(s["episode_id"], s["budget"])) == set(zip(default["episode_id"], default["budget"]))
        assert s["value"].notna().all() or s["metric"][s["value"].isna()].eq("weak_robust_acc").all()
        # what the attack set does not touch is the judge's own number
        merged = default.merge(s, on=["episode_id", "budget", "metric"], suffixes=("", "_set"))
        same = merged[merged["metric"].isin(["clean_acc", "broad_acc", "strong_robust_acc"])]
        np.testing.assert_array_equal(same["value"], same["value_set"])
    flags = run.flags
    assert set(flags["judge"]) == {"default", *NAMES}


def test_a_set_scores_exactly_as_a_rejudging_with_it(run):
    # Every attack draws from its own judge stream (seed, "judge", "attack", name) and the
    # test set is the judge's, so the in-episode set and the re-judging run the same
    # computation on the same (saved, exact) weights: the numbers match exactly.
    for attacks, name in zip(SETS, NAMES):
        again = run.rejudge(f"check-{name}", progress=False, attacks=attacks)
        key = ["episode_id", "budget", "metric"]
        merged = run.scores_of(name).merge(run.scores_of(again), on=key, suffixes=("", "_re"))
        assert len(merged) == len(run.scores)
        np.testing.assert_array_equal(merged["value"].to_numpy(), merged["value_re"].to_numpy())


def test_a_larger_set_never_scores_higher(run):
    key = ["episode_id", "budget"]
    one = run.scores_of("fgsm/l2/2")
    two = run.scores_of("pgd+fgsm/l2/2")
    m = one[one["metric"] == "lp_robust_acc"].merge(two[two["metric"] == "lp_robust_acc"], on=key)
    assert len(m) == 8
    assert (m["value_y"] <= m["value_x"] + 1e-12).all()


def test_attack_matrix(run):
    table = run.attack_matrix()
    assert list(table.index) == METHODS
    assert table.index.name == "method"
    # every judge by default: the run's own, its attack sets, then the re-judgings (the test
    # above made check-*), as `show --matrix` and the report print them
    rejudged = sorted(j for j in run.judges if j.startswith("check-"))
    assert "check-fgsm/l2/2" in rejudged
    assert list(table.columns) == ["default", *NAMES, *rejudged]
    s = run.scores
    final = s[(s["metric"] == "lp_robust_acc") & (s["budget"] == 20)]
    want = final.groupby("variant")["value"].mean()
    assert table.loc["pgd-at", "default"] == pytest.approx(want["student.method=pgd-at"])
    picked = run.attack_matrix(judges=["check-fgsm/l2/2", "default"])   # a re-judging as a column
    assert list(picked.columns) == ["check-fgsm/l2/2", "default"]
    pd.testing.assert_series_equal(picked["check-fgsm/l2/2"], table["fgsm/l2/2"], check_names=False)
    at0 = run.attack_matrix("clean_acc", budget=0)
    assert list(at0.columns) == ["default", *NAMES, *rejudged]
    # clean accuracy does not depend on the attack set
    for name in NAMES:
        pd.testing.assert_series_equal(at0[name], at0["default"], check_names=False)


def test_matrix_rows_are_variant_labels_when_more_is_swept_and_the_method_when_not(tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["seeds"] = [0]
    cfg["sweep"] = {"student.method": ["erm"], "student.lr": [0.01, 0.02]}
    cfg["judge"]["attack_sets"] = [["fgsm"]]
    r = teachsim.run(cfg, out=tmp_path / "two", executor="serial", progress=False)
    table = r.attack_matrix()
    assert list(table.index) == ["student.method=erm, student.lr=0.01", "student.method=erm, student.lr=0.02"]
    assert list(table.columns) == ["default", "fgsm/l2/2"]
    cfg = copy.deepcopy(cfg)
    del cfg["sweep"]
    cfg["student"]["method"] = "pgd-at"
    cfg["budgets"] = [0]
    r = teachsim.run(cfg, out=tmp_path / "plain", executor="serial", progress=False)
    assert list(r.attack_matrix().index) == ["pgd-at"]


def test_show_matrix(run, capsys):
    assert main(["show", str(run.dir), "--matrix"]) == 0
    out = capsys.readouterr().out
    assert "lp_robust_acc" in out and all(n in out for n in NAMES)
    lines = out.splitlines()
    assert any(line.startswith("erm ") for line in lines) and any(line.startswith("pgd-at ") for line in lines)
    assert main(["show", str(run.dir), "--matrix", "--metric", "weak_robust_acc"]) == 0
    assert "weak_robust_acc" in capsys.readouterr().out
    assert main(["show", str(run.dir), "--matrix", "--metric", "lp_robust"]) == 2
    assert main(["show", str(run.dir), "--judge", "pgd+fgsm/l2/2"]) == 0
    assert "judge: pgd+fgsm/l2/2" in capsys.readouterr().out


def test_bad_attack_set_is_a_config_error(tmp_path, capsys):
    cfg = copy.deepcopy(CFG)
    cfg["judge"]["attack_sets"] = [["fgsm"], ["pgd", "fgsmm"]]
    with pytest.raises(teachsim.ConfigError, match=r"judge\.attack_sets\[1\]\[1\]"):
        config_mod.load(cfg)
    path = tmp_path / "bad.toml"
    path.write_text('[judge]\nattack_sets = [["pgd", "fgsmm"]]\n[[protocols]]\nname = "passive"\n')
    assert main(["run", str(path), "--executor", "serial", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "judge.attack_sets[0][1]" in err and "did you mean 'fgsm'" in err
    for bad in ([["pgd"], ["pgd"]], [[]], ["pgd"]):
        cfg["judge"]["attack_sets"] = bad
        with pytest.raises(teachsim.ConfigError, match=r"judge\.attack_sets"):
            config_mod.load(cfg)


def test_no_attack_sets_leaves_keys_and_config_as_before():
    plain = copy.deepcopy(CFG)
    del plain["judge"]["attack_sets"]
    empty = copy.deepcopy(plain)
    empty["judge"]["attack_sets"] = []
    a, b = config_mod.load(plain), config_mod.load(empty)
    assert [s.key for s in a.episodes] == [s.key for s in b.episodes]
    assert "attack_sets" not in config_mod.to_toml(b.config)
    assert "attack_sets" not in b.episodes[0].judge


def test_matrix_rows_are_protocols_when_each_overrides_the_method(tmp_path):
    """The methods suite's shape: no sweep, one [[protocols]] entry per method."""
    cfg = copy.deepcopy(CFG)
    del cfg["sweep"]
    cfg["seeds"] = [0]
    cfg["judge"]["attack_sets"] = [["fgsm"]]
    cfg["protocols"] = [{"name": "passive", "label": "erm"},
                        {"name": "passive", "label": "pgd-at", "student": {"method": "pgd-at", "attack_steps": 3}}]
    r = teachsim.run(cfg, out=tmp_path / "per-protocol", executor="serial", progress=False)
    eps = r.episodes
    methods = {row.protocol: r.spec(int(row.episode_id)).student["method"] for row in eps.itertuples()}
    assert methods == {"erm": "erm", "pgd-at": "pgd-at"}
    table = r.attack_matrix()
    assert list(table.index) == ["erm", "pgd-at"] and table.index.name == "protocol"
    assert list(table.columns) == ["default", "fgsm/l2/2"]
    # each cell is that protocol's own score, not a mean over protocols
    s = r.scores
    final = s[(s["metric"] == "lp_robust_acc") & (s["budget"] == 20)].set_index("protocol")["value"]
    assert table.loc["erm", "default"] == pytest.approx(final["erm"])
    assert table.loc["pgd-at", "default"] == pytest.approx(final["pgd-at"])
