"""End to end through the command line on a tiny experiment."""

from __future__ import annotations

import copy
import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import teachsim
from teachsim.cli import main
from teachsim.platform.judge import ALWAYS as METRICS
from tiny import TINY_TOML as TINY, cli as _cli, one_line_error as _one_line_error, rows as _rows

ROOT = Path(__file__).resolve().parents[1]


LABELS = {"passive", "passive(batch=5)"}

BOOM_PLUGIN = '''
import teachsim
from teachsim.protocols.base import Protocol


class Boom(Protocol):
    """A protocol whose student always crashes."""

    def student_turn(self, student, inbox, ctx):
        raise RuntimeError("boom from the plugin")


teachsim.register_protocol("boom-test", Boom)
'''


def _episodes(run_dir: Path) -> list[tuple]:
    return _rows(run_dir, "SELECT episode_id, key, protocol, seed, status, error, started_at, finished_at"
                          " FROM episodes ORDER BY episode_id")


def _scores(run_dir: Path) -> list[tuple]:
    return _rows(run_dir, "SELECT episode_id, budget, metric, value FROM scores ORDER BY episode_id, budget, metric")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One finished run of the tiny config, made by the real command in its own process."""
    base = tmp_path_factory.mktemp("tiny")
    (base / "tiny.toml").write_text(TINY)
    proc = _cli("run", "tiny.toml", "--out", "run", "--quiet", cwd=base)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "4 finished, 0 failed" in proc.stdout
    return base / "run"


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the shared run, for tests that write into it."""
    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest)
    (tmp_path / "tiny.toml").write_text(TINY)
    return dest


# -- run ---------------------------------------------------------------------------------------

def test_run_writes_the_run_directory(tiny_run):
    for name in ("results.sqlite", "config.toml", "summary.csv"):
        assert (tiny_run / name).is_file(), name
    eps = _episodes(tiny_run)
    assert len(eps) == 4
    assert {e[2] for e in eps} == LABELS and {e[3] for e in eps} == {0, 1}
    assert all(e[4] == "finished" and e[5] == "" for e in eps)
    assert len({e[1] for e in eps}) == 4
    keys = {e[1] for e in eps}
    assert {p.stem for p in (tiny_run / "transcripts").glob("*.npz")} == keys
    assert {p.stem for p in (tiny_run / "students").glob("*.pt")} == keys
    # every metric at every checkpoint, for every episode
    scores = _scores(tiny_run)
    assert len(scores) == 4 * 3 * len(METRICS)
    assert {s[1] for s in scores} == {0.0, 10.0, 20.0} and {s[2] for s in scores} == set(METRICS)
    assert all(0.0 <= s[3] <= 1.0 for s in scores if not math.isnan(s[3]))
    # the protocol spends exactly the final budget, after the free initial labels
    for eid, spent in _rows(tiny_run, "SELECT episode_id, MAX(cum_cost) FROM messages GROUP BY episode_id"):
        assert spent == 20.0, eid
    initial = _rows(tiny_run, "SELECT size, cost FROM messages WHERE phase = 'initial'")
    assert initial == [(10, 0.0)] * 4


def test_run_writes_resolved_config(tiny_run):
    import tomllib

    cfg = tomllib.loads((tiny_run / "config.toml").read_text())
    assert cfg["task"]["dim"] == 6 and cfg["task"]["gamma"] == 0.1       # given, and a default filled in
    assert cfg["judge"]["norm"] == "l2" and cfg["student"]["method"] == "erm"
    assert [p["label"] for p in cfg["protocols"]] == ["passive", "passive(batch=5)"]


def test_summary_csv(tiny_run):
    import pandas as pd

    s = pd.read_csv(tiny_run / "summary.csv")
    assert {"protocol", "budget", "metric", "mean"} <= set(s.columns)
    assert set(s["protocol"]) == LABELS and set(s["metric"]) == set(METRICS)
    assert len(s) == 2 * 3 * len(METRICS)


def test_students_load_without_code(tiny_run):
    import torch

    for path in (tiny_run / "students").glob("*.pt"):
        flat = torch.load(path, weights_only=True)
        assert {k.split("/")[0] for k in flat} == {"0", "10", "20"}


# -- show, list, transcript -------------------------------------------------------------------

def test_show(tiny_run, capsys):
    assert main(["show", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "4 finished, 0 failed" in out
    for name in [*LABELS, *METRICS]:
        assert name in out, name
    assert main(["show", str(tiny_run), "--metric", "clean_acc"]) == 0
    out = capsys.readouterr().out
    assert "clean_acc" in out and "strong_robust_acc" not in out


@pytest.mark.parametrize("what,needles", [
    ([], ["tasks:", "protocols:", "methods:", "attacks:", "suites:", "metrics:", "hidden-feature", "passive",
          "quick", "strong_robust_acc"]),
    (["tasks"], ["tasks:", "hidden-feature", "manifold_dim"]),
    (["protocols"], ["protocols:", "passive", "batch"]),
])
def test_list(capsys, what, needles):
    assert main(["list", *what]) == 0
    out = capsys.readouterr().out
    for needle in needles:
        assert needle in out, needle
    if what == ["tasks"]:
        assert "protocols:" not in out


def test_list_unknown_kind_is_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["list", "taks"])
    assert exc.value.code == 2
    _one_line_error(capsys.readouterr().err)


def test_transcript(tiny_run, capsys):
    assert main(["transcript", str(tiny_run), "1"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.startswith("# episode 1: passive, seed 0, finished (key ")   # which episode, in words
    n = _rows(tiny_run, "SELECT COUNT(*) FROM messages WHERE episode_id = 1")[0][0]
    assert n >= 3 and len(lines) == n
    assert "initial" in lines[0] and "answer" in lines[0]
    assert any("query" in line for line in lines) and "cum=20" in lines[-1]
    key = _rows(tiny_run, "SELECT key FROM episodes WHERE episode_id = 1")[0][0]
    assert main(["transcript", str(tiny_run), key]) == 0
    assert capsys.readouterr().out.splitlines() == [header, *lines]


def test_show_episodes_lists_ids_and_keys_for_transcript(tiny_run, capsys):
    assert main(["show", str(tiny_run), "--episodes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"] and all(r[4] == "finished" for r in rows)
    keys = dict(_rows(tiny_run, "SELECT episode_id, key FROM episodes"))
    assert {int(r[0]): r[1] for r in rows} == keys
    assert main(["transcript", str(tiny_run), rows[2][0]]) == 0


@pytest.mark.parametrize("argv", [["transcript", "{run}", "99"], ["show", "{tmp}/nowhere"],
                                  ["transcript", "{tmp}/nowhere", "1"]], ids=["no-episode", "show", "transcript"])
def test_bad_run_dir_or_episode_is_exit_2(tiny_run, tmp_path, capsys, argv):
    argv = [a.format(run=tiny_run, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    _one_line_error(captured.err, captured.out)


@pytest.mark.parametrize("argv, needle", [
    (["show", "{run}", "--target", "nan"], "--target: expected a number in [0, 1]"),
    (["show", "{run}", "--target", "5"], "--target: expected a number in [0, 1]"),
    (["report", "{run}", "--target", "inf"], "--target: expected a number in [0, 1]"),
    (["interactions", "{run}", "--ratios", "5"], "--ratios: expected order ratios r in [0, 1]"),
    (["interactions", "{run}", "--ratios", "0.5", "nan"], "--ratios"),
    (["interactions", "{run}", "--ratios", "-1"], "--ratios"),
    (["interactions", "{run}", "--points", "0"], "--points: expected an integer >= 1, got 0"),
    (["interactions", "{run}", "--samples", "0"], "--samples: expected an integer >= 1, got 0"),
    (["interactions", "{run}", "--budget", "15"], "--budget: expected one of the run's checkpoints 0, 10, 20"),
], ids=["show-nan", "show-5", "report-inf", "ratio-5", "ratio-nan", "ratio-negative", "points-0", "samples-0",
        "budget-not-a-checkpoint"])
def test_bad_analysis_options_are_one_line_and_write_nothing(tiny_run, capsys, argv, needle):
    """Each of these once gave a traceback, an all-NaN table, or a 'never' for a target no
    score can reach."""
    before = sorted(p.name for p in tiny_run.iterdir())
    assert main([a.format(run=tiny_run) for a in argv]) == 2
    captured = capsys.readouterr()
    assert needle in _one_line_error(captured.err, captured.out)
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_a_plugin_whose_params_are_plain_values_is_named_in_one_line(tmp_path):
    """PARAMS = {"flip": 0.1} (values, not Params) once gave a traceback in list, check-protocol and run."""
    plugin = tmp_path / "plain.py"
    example = (ROOT / "examples" / "my_protocol.py").read_text()
    flip = '"flip": Float(0.1, lo=0.0, hi=1.0, doc="share of labels the teacher gets wrong")'
    assert flip in example
    plugin.write_text(example.replace(flip, '"flip": 0.1'))
    for args in (["list", "protocols"], ["check-protocol", "noisy-teacher"]):
        proc = _cli("--plugin", str(plugin), *args, cwd=tmp_path)
        assert proc.returncode == 2
        line = _one_line_error(proc.stderr, proc.stdout)
        assert "protocol 'noisy-teacher': PARAMS['flip'] is 0.1, expected a parameter from teachsim.schema such " \
               "as Float(0.1, doc=...)" in line


# -- re-run, resume, a different config -------------------------------------------------------

@pytest.mark.parametrize("flags", [[], ["--resume"]], ids=["rerun", "resume"])
def test_rerun_runs_nothing_new(run_copy, capsys, flags):
    before_eps, before_scores = _episodes(run_copy), _scores(run_copy)
    before_msgs = _rows(run_copy, "SELECT * FROM messages ORDER BY episode_id, idx")
    cfg = run_copy.parent / "tiny.toml"
    assert main(["run", str(cfg), "--out", str(run_copy), *flags]) == 0
    captured = capsys.readouterr()
    assert "4 finished episode(s) kept, 0 to run" in captured.err
    assert "ok (" not in captured.err           # no episode ran
    assert _episodes(run_copy) == before_eps
    assert _scores(run_copy) == before_scores
    assert _rows(run_copy, "SELECT * FROM messages ORDER BY episode_id, idx") == before_msgs


def test_different_config_into_existing_dir_is_exit_2(run_copy, capsys):
    before = (run_copy / "config.toml").read_text()
    before_eps = _episodes(run_copy)
    other = run_copy.parent / "other.toml"
    other.write_text(TINY.replace("steps = 30", "steps = 31"))
    for flags in ([], ["--resume"]):
        assert main(["run", str(other), "--out", str(run_copy), "--quiet", *flags]) == 2
        captured = capsys.readouterr()
        line = _one_line_error(captured.err, captured.out)
        assert "different" in line and str(run_copy) in line
    assert (run_copy / "config.toml").read_text() == before
    assert _episodes(run_copy) == before_eps


def test_out_that_is_a_file_is_exit_2(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(cfg), "--out", str(tmp_path / "afile"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "--out" in _one_line_error(captured.err, captured.out)


def test_resume_after_interruption_recomputes_only_the_lost_episode(run_copy, capsys):
    before = {e[1]: e for e in _episodes(run_copy)}
    scores_before = {e[1]: [s[1:] for s in _scores(run_copy) if s[0] == e[0]] for e in before.values()}
    lost_id, lost_key = 2, next(k for k, e in before.items() if e[0] == 2)
    # simulate a crash before episode 2's transaction committed: its rows are not there
    con = sqlite3.connect(run_copy / "results.sqlite")
    with con:
        for table in ("scores", "messages", "checkpoints", "episodes"):
            con.execute(f"DELETE FROM {table} WHERE episode_id = ?", (lost_id,))
    con.close()
    assert len(_episodes(run_copy)) == 3
    # what an interrupted run says of itself: show, show --episodes, the report, the API
    assert main(["show", str(run_copy)]) == 0
    out = capsys.readouterr().out
    assert "3 finished, 0 failed, 1 not run episodes" in out and "not run yet: 1 of the planned" in out
    assert main(["show", str(run_copy), "--episodes"]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[0].isdigit()]
    assert [row[:2] for row in listed if "not" in row] == [["2", lost_key]] and len(listed) == 4
    r = teachsim.open_run(run_copy)
    assert list(r.not_run["key"]) == [lost_key] and "1 not run" in repr(r)
    assert "1 not run (interrupted" in r.report().read_text()

    assert main(["run", str(run_copy.parent / "tiny.toml"), "--out", str(run_copy), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "3 finished episode(s) kept, 1 to run" in err
    assert r.not_run.empty and "not run" not in repr(r)
    after = {e[1]: e for e in _episodes(run_copy)}
    assert sorted(after) == sorted(before)                                     # same keys, none duplicated
    assert len(_rows(run_copy, "SELECT key FROM episodes")) == 4
    for key, row in after.items():
        assert row[4] == "finished"
        if key == lost_key:
            assert row[6] > before[key][7]                                     # started after the first run ended
        else:
            assert row == before[key]                                          # same id, same finished_at
    new_id = after[lost_key][0]
    # the recomputed episode is the same episode: same seed, same scores (deterministic on CPU)
    assert [s[1:] for s in _scores(run_copy) if s[0] == new_id] == scores_before[lost_key]
    assert _rows(run_copy, f"SELECT COUNT(*) FROM messages WHERE episode_id = {new_id}")[0][0] > 0
    assert _rows(run_copy, "SELECT COUNT(*) FROM scores")[0][0] == 4 * 3 * len(METRICS)
    assert not _rows(run_copy, "SELECT * FROM scores WHERE episode_id NOT IN (SELECT episode_id FROM episodes)")


# -- bench ------------------------------------------------------------------------------------

def test_bench_unknown_suite_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "NOPE", "--out", str(tmp_path / "b")]) == 2
    captured = capsys.readouterr()
    line = _one_line_error(captured.err, captured.out)
    assert "'NOPE'" in line and "quick" in line
    assert main(["bench", "quik", "--out", str(tmp_path / "b")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "did you mean 'quick'" in line
    assert not (tmp_path / "b").exists()


# -- plugins ----------------------------------------------------------------------------------

def test_failing_plugin_protocol_is_recorded_and_exit_1(tmp_path):
    (tmp_path / "boom_plugin.py").write_text(BOOM_PLUGIN)
    cfg = TINY.replace("seeds = [0, 1]", "seeds = [0]").replace(
        'name = "passive"\nbatch = 5', 'name = "boom-test"')
    (tmp_path / "boom.toml").write_text(cfg)
    args = ["--plugin", "boom_plugin.py", "run", "boom.toml", "--out", "run", "--quiet"]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "boom from the plugin" in proc.stderr and "1 failed" in proc.stdout
    run_dir = tmp_path / "run"
    eps = {e[2]: e for e in _episodes(run_dir)}
    assert set(eps) == {"passive", "boom-test"}
    assert eps["passive"][4] == "finished" and eps["passive"][5] == ""
    assert eps["boom-test"][4] == "failed"
    assert "RuntimeError: boom from the plugin" in eps["boom-test"][5]
    assert eps["boom-test"][7]                                                   # finished_at recorded
    boom_id = eps["boom-test"][0]
    assert not _rows(run_dir, f"SELECT * FROM scores WHERE episode_id = {boom_id}")
    assert len(_rows(run_dir, f"SELECT * FROM scores WHERE episode_id = {eps['passive'][0]}")) == 3 * len(METRICS)

    r = teachsim.open_run(run_dir)
    assert set(r.scores["protocol"]) == {"passive"}
    with pytest.raises(teachsim.RunError):
        r.student(boom_id, 20)

    # --plugin after the subcommand works too; a re-run retries the failure and keeps the rest
    proc = _cli("run", "boom.toml", "--out", "run", "--quiet", "--plugin", "boom_plugin.py", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    again = {e[2]: e for e in _episodes(run_dir)}
    assert again["passive"] == eps["passive"]
    assert again["boom-test"][0] == boom_id and again["boom-test"][4] == "failed"
    assert again["boom-test"][6] > eps["boom-test"][7]
    assert len(_episodes(run_dir)) == 2


@pytest.mark.parametrize("executor", ["serial", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_plugin_that_calls_sys_exit_fails_its_episode_alone(tmp_path, executor):
    """SystemExit (any BaseException but Ctrl-C) inside a turn once ended a serial run with
    exit 0, that episode unrecorded and the rest never run; on every executor it fails alone."""
    (tmp_path / "exit_plugin.py").write_text(BOOM_PLUGIN.replace('raise RuntimeError("boom from the plugin")',
                                                                 "import sys; sys.exit(3)"))
    cfg = TINY.replace("seeds = [0, 1]", "seeds = [0]").replace('name = "passive"\nbatch = 5', 'name = "boom-test"')
    (tmp_path / "exit.toml").write_text(cfg)
    proc = _cli("--plugin", "exit_plugin.py", "run", "exit.toml", "--out", "run", "--quiet", "--executor", executor,
                cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "1 failed" in proc.stdout
    eps = {e[2]: e for e in _episodes(tmp_path / "run")}
    assert eps["passive"][4] == "finished"
    assert eps["boom-test"][4] == "failed" and "SystemExit: 3" in eps["boom-test"][5]


@pytest.mark.parametrize("body,needle", [
    ("def broken(:\n    pass\n", "SyntaxError"),
    ("raise ImportError('no such thing')\n", "no such thing"),
], ids=["syntax-error", "import-error"])
def test_bad_plugin_is_exit_2_one_line(tmp_path, body, needle):
    (tmp_path / "bad_plugin.py").write_text(body)
    (tmp_path / "tiny.toml").write_text(TINY)
    proc = _cli("--plugin", "bad_plugin.py", "run", "tiny.toml", "--out", "run", cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr, proc.stdout)
    assert "bad_plugin.py" in line and needle in line
    assert not (tmp_path / "run").exists()


def test_missing_plugin_is_exit_2(tmp_path, capsys):
    assert main(["--plugin", str(tmp_path / "nope.py"), "list"]) == 2
    captured = capsys.readouterr()
    assert "nope.py" in _one_line_error(captured.err, captured.out)


# -- the Python API ---------------------------------------------------------------------------

def test_open_run_frames(tiny_run):
    r = teachsim.open_run(tiny_run)
    eps = r.episodes
    assert {"episode_id", "key", "protocol", "task", "seed", "status", "error", "started_at", "finished_at",
            "host"} <= set(eps.columns)
    assert len(eps) == 4 and set(eps["task"]) == {"hidden-feature"}
    s = r.scores
    assert {"episode_id", "budget", "metric", "value"} <= set(s.columns)
    assert len(s) == 4 * 3 * len(METRICS)
    with pytest.raises(teachsim.RunError):
        teachsim.open_run(tiny_run / "students")


def test_saved_student_and_test_set(tiny_run):
    import torch

    r = teachsim.open_run(tiny_run)
    x, y = r.test_set(1)
    assert x.shape == (100, 6) and y.shape == (100,)
    assert not (y == -1).any() and set(np.unique(y)) <= {0, 1}
    model = r.student(1, 20)
    assert isinstance(model, torch.nn.Module) and not model.training
    with torch.no_grad():
        logits = model(torch.as_tensor(x))
    assert tuple(logits.shape) == (100, 2)
    # the saved student is the one the judge scored
    s = r.scores
    judged = s[(s["episode_id"] == 1) & (s["budget"] == 20) & (s["metric"] == "clean_acc")]["value"].iloc[0]
    assert (logits.argmax(1).numpy() == y).mean() == pytest.approx(judged, abs=1e-6)
    with pytest.raises(teachsim.RunError):
        r.student(1, 15)


# -- re-running into a directory that holds another config --------------------------------------

def test_a_config_that_adds_protocols_or_seeds_extends_the_run(tmp_path, tiny_config, capsys):
    run_dir = tmp_path / "run"
    base = copy.deepcopy(tiny_config)
    base["protocols"] = base["protocols"][:1]
    first = teachsim.run(base, out=run_dir, executor="serial", progress=False)
    kept = first.episodes[["episode_id", "key", "finished_at"]]
    more = copy.deepcopy(base)
    more["seeds"] = [0, 1, 2]
    more["protocols"].append({"name": "passive", "batch": 5, "label": "small batches"})
    more["description"] = "now with small batches"
    r = teachsim.run(more, out=run_dir, executor="serial", progress=True)
    assert "extending the experiment" in capsys.readouterr().err
    eps = r.episodes
    assert len(eps) == 6 and (eps["status"] == "finished").all()
    # the recorded episodes are untouched (same ids, keys, timestamps): nothing ran twice
    same = eps.merge(kept, on=["episode_id", "key", "finished_at"])
    assert len(same) == len(kept)
    assert r.config["description"] == "now with small batches"
    assert set(r.summary()["protocol"]) == {"passive", "small batches"}


@pytest.mark.parametrize("change, says", [
    ("other-setting", "ran with student.steps = 30, this config has 31"),
    ("budgets", "ran with budgets = [0.0, 10.0, 20.0], this config has [0.0, 10.0, 40.0]"),
    ("relabel", "are not in this config"),
    ("dropped-protocol", "are not in this config")])
def test_a_config_that_changes_recorded_episodes_is_refused(tmp_path, tiny_config, change, says):
    """The refusal names the setting that differs, not only that something does."""
    run_dir = tmp_path / "run"
    teachsim.run(tiny_config, out=run_dir, executor="serial", progress=False)
    other = copy.deepcopy(tiny_config)
    if change == "other-setting":
        other["student"]["steps"] = 31                  # every key changes
    elif change == "budgets":
        other["budgets"] = [0, 10, 40]
    elif change == "relabel":
        other["protocols"][0]["label"] = "renamed"      # same key, another label
    else:
        other["protocols"] = other["protocols"][:1]
    with pytest.raises(teachsim.RunError, match="holds a different experiment") as info:
        teachsim.run(other, out=run_dir, executor="serial", progress=False)
    assert says in str(info.value), str(info.value)
    assert len(teachsim.open_run(run_dir).episodes) == 4   # nothing lost


SPIN = """
import sys, threading, time, torch
from teachsim.cli import leave
from teachsim.runners.cohort import THREAD

def spin():   # an interrupted cohort's episode, still inside torch
    x = torch.randn(300, 300)
    while True:
        x = (x @ x).tanh()

if sys.argv[1] == "busy":
    threading.Thread(target=spin, daemon=True, name=THREAD + "abc").start()
    time.sleep(0.3)
print("bye", flush=False)
leave(130)
"""


@pytest.mark.parametrize("threads", ["busy", "idle"])
def test_the_command_exits_with_its_code_while_episode_threads_are_still_in_torch(tmp_path, threads):
    # a second Ctrl-C during a cohort's shutdown returned 130 while episode threads computed:
    # the interpreter's exit then aborted the process under them (exit 134, "terminate called")
    script = tmp_path / "spin.py"
    script.write_text(SPIN)
    res = subprocess.run([sys.executable, str(script), threads], capture_output=True, text=True, timeout=120)
    assert (res.returncode, res.stdout, res.stderr) == (130, "bye\n", "")
