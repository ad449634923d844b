"""The examples stay true: ``examples/one_episode.py`` (one episode written out by hand)
gives exactly what the platform's ``run_episode`` gives on the same settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from teachsim.config import resolve_experiment
from teachsim.platform.episode import run_episode, transcript_rows

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_episode_by_hand_equals_run_episode():
    ex = _load("one_episode")
    log, scores = ex.run()
    exp = resolve_experiment({
        "name": "by-hand", "seeds": [ex.SEED], "budgets": list(ex.BUDGETS),
        "task": {"name": "hidden-feature", **ex.TASK},
        "student": {"hidden": ex.HIDDEN, "steps": ex.STEPS, "initial_labels": ex.INITIAL_LABELS},
        "judge": ex.JUDGE, "protocols": [{"name": "passive", "batch": ex.BATCH}]})
    result = run_episode(exp.episodes[0])
    assert result.status == "finished", result.error
    rows, payloads = transcript_rows(log)
    assert len(rows) > 3 and rows == result.messages
    assert payloads.keys() <= result.payloads.keys()
    assert all(np.array_equal(v, result.payloads[k]) for k, v in payloads.items())
    assert scores == result.scores   # same computation, same streams: equal, not close
    assert {b for b, _, _ in scores} == set(ex.BUDGETS)
