"""The built-in suites (``teachsim bench NAME``): each resolves, and asks what its issue asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from teachsim.cli import SUITES_DIR, suite_names
from teachsim import config as config_mod

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> config_mod.Experiment:
    return config_mod.load(SUITES_DIR / f"{name}.toml")


def test_suites_are_listed_and_live_in_benchmarks_suites_too():
    assert {"quick", "paper", "methods", "real"} <= set(suite_names())
    # benchmarks/suites is the same folder (a link), so the files are never two copies
    bench = ROOT / "benchmarks" / "suites"
    assert bench.resolve() == SUITES_DIR.resolve()
    out = subprocess.run([sys.executable, "-m", "teachsim", "list", "suites"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert all(name in out for name in ("quick", "paper", "methods", "real"))


@pytest.mark.parametrize("name", ["quick", "paper", "methods", "real", "interactions", "interactions-hidden"])
def test_every_suite_resolves_with_a_question(name):
    exp = _load(name)
    assert exp.config["description"].endswith("?") or "?" in exp.config["description"]
    assert exp.episodes


def test_paper_suite_covers_the_claim():
    exp = _load("paper")
    cfg = exp.config
    assert cfg["task"]["name"] == "hidden-feature" and cfg["sweep"] == {"task.dim": [20, 50, 200]}
    assert len(cfg["seeds"]) == 5 and max(cfg["budgets"]) == 800
    protos = cfg["protocols"]
    strategies = {p["strategy"] for p in protos if p["name"] == "active-student"}
    assert strategies == {"random", "uncertainty", "margin", "entropy", "qbc", "density"}
    assert {p["push"] for p in protos if p["name"] == "active-teacher"} == {
        "boundary", "counterexample", "invariance", "offmanifold"}
    assert any(p["name"] == "membership" for p in protos)
    passive = [p for p in protos if p["name"] == "passive"]
    assert [p.get("student", {}).get("method", "erm") for p in passive] == ["erm", "pgd-at", "pgd-at"]
    assert len(exp.episodes) == len(protos) * 3 * 5 == 225
    assert {s.task["dim"] for s in exp.episodes} == {20, 50, 200}


def test_methods_suite_trains_every_method_against_several_attack_sets():
    exp = _load("methods")
    methods = {s.student["method"].split("@")[0] for s in exp.episodes}
    assert methods == {"erm", "pgd-at", "trades", "beta-at", "lrat", "gairat", "mail"}
    assert len(exp.config["judge"]["attack_sets"]) >= 3


def test_real_suite_is_digits():
    assert {s.task["name"] for s in _load("real").episodes} == {"digits"}


@pytest.mark.parametrize("name", ["interactions", "interactions-hidden"])
def test_interaction_suites_compare_erm_with_adversarial_training_and_profile_students(name):
    exp = _load(name)
    assert {s.student["method"].split("@")[0] for s in exp.episodes} == {"erm", "pgd-at", "trades"}
    assert len(exp.config["seeds"]) >= 5 and exp.config["interactions"]["points"] >= 20
    if name == "interactions":
        assert {s.task["name"] for s in exp.episodes} == {"digits"}
        assert {s.student["model"] for s in exp.episodes} == {"cnn"}
