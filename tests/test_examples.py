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


def test_a_protocol_written_from_the_docs_runs_through_every_command(tmp_path):
    """examples/show_and_correct.py (student shows, teacher corrects) uses only what
    docs/protocols.md documents: it conforms, runs, shows and transcribes."""
    from tiny import cli

    plugin, cfg = ROOT / "examples" / "show_and_correct.py", ROOT / "examples" / "show_and_correct.toml"
    check = cli("--plugin", str(plugin), "check-protocol", "show-and-correct", cwd=tmp_path)
    assert check.returncode == 0 and check.stdout.rstrip().endswith("conforms"), check.stdout + check.stderr
    run = cli("--plugin", str(plugin), "run", str(cfg), "--out", "run", "--executor", "serial", "--quiet",
              "--no-report", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    shown = cli("--plugin", str(plugin), "show", "run", cwd=tmp_path)
    assert shown.returncode == 0 and "show-and-correct(batch=10)" in shown.stdout, shown.stderr
    import teachsim

    eps = teachsim.open_run(tmp_path / "run").episodes
    ours = eps[eps["protocol_name"] == "show-and-correct"]
    assert len(ours) == 2 and set(ours["status"]) == {"finished"}
    text = cli("transcript", "run", str(ours["episode_id"].iloc[0]), cwd=tmp_path)
    assert text.returncode == 0
    kinds = {line.split()[2] for line in text.stdout.splitlines() if " protocol " in line}
    assert {"probe", "predictions", "push"} <= kinds, text.stdout
    for line in text.stdout.splitlines():
        if " push " in line:
            assert "reason=correction" in line
