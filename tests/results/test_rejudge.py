"""Re-judging saved students with another attack set, and the judge's sanity flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import teachsim
from teachsim.cli import main
from teachsim.platform.judge import PARAMS, make_test_set, sanity_flags
from teachsim.schema import resolve
from teachsim.tasks.hidden_feature import HiddenFeature


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_base):
    return teachsim.run(tiny_base, out=tmp_path_factory.mktemp("rj") / "run", progress=False)


def test_rejudge_adds_scores_under_a_new_name_and_keeps_the_original(tiny_run):
    before = tiny_run.scores
    name = tiny_run.rejudge(progress=False, attacks=["pgd", "apgd-ce", "beta"])
    assert name == "pgd+apgd-ce+beta/l2/2"
    assert tiny_run.judges == ["default", name]
    pd.testing.assert_frame_equal(tiny_run.scores, before)
    after = tiny_run.scores_of(name)
    key = ["episode_id", "budget", "metric"]
    merged = before.merge(after, on=key, suffixes=("_pgd", "_all"))
    assert len(merged) == len(before)
    by = merged.set_index("metric")
    # same test set, same students: clean numbers agree; a larger attack set never raises lp robustness
    np.testing.assert_allclose(by.loc["clean_acc", "value_pgd"], by.loc["clean_acc", "value_all"])
    lp = by.loc["lp_robust_acc"]
    assert (lp["value_all"] <= lp["value_pgd"] + 1e-12).all()
    summary = pd.read_csv(tiny_run.dir / "summary.csv")
    assert set(summary["judge"]) == {"default", name}


def test_rejudge_rejects_bad_overrides_before_any_work(tiny_run):
    with pytest.raises(teachsim.ConfigError, match="judge.norm"):
        tiny_run.rejudge(progress=False, norm="l3")
    with pytest.raises(teachsim.ConfigError, match="--name"):
        tiny_run.rejudge("default", progress=False)


def test_judge_names_round_trip_whatever_their_quotes(tiny_run):
    """Names once went into SQL by string formatting: "def'ault" showed the default judge's
    numbers as its own and "o'brien" showed nothing."""
    for name in ("def'ault", "o'brien", 'say "hi"; --'):
        assert tiny_run.rejudge(name, progress=False, attacks=["fgsm"]) == name
        got = tiny_run.scores_of(name)
        assert len(got) == len(tiny_run.scores)
        assert name in tiny_run.judges
    # the same judge under three names: the same numbers, read back under each name
    a, b = tiny_run.scores_of("def'ault"), tiny_run.scores_of("o'brien")
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    for bad in ("", " padded", "tab\there"):
        with pytest.raises(teachsim.ConfigError, match="--name"):
            tiny_run.rejudge(bad, progress=False, attacks=["fgsm"])


def test_judge_command(tiny_run, capsys):
    assert main(["judge", str(tiny_run.dir), "--attacks", "fgsm", "--eps", "0.5", "--name", "fgsm", "--quiet"]) == 0
    assert main(["show", str(tiny_run.dir), "--judge", "fgsm"]) == 0
    assert "judge: fgsm" in capsys.readouterr().out
    assert main(["judge", str(tiny_run.dir), "--attacks", "pgdd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "judge.attacks[0]" in err[0] and "did you mean 'pgd'" in err[0]
    assert main(["show", str(tiny_run.dir), "--judge", "nope"]) == 2


def test_flags_are_recorded_per_checkpoint(tiny_run):
    flags = tiny_run.flags
    default = flags[flags["judge"] == "default"]
    assert set(default["flag"]) == {"zero_grad_share", "stochastic", "strong_exact"}
    assert len(default) == 3 * len(tiny_run.scores[["episode_id", "budget"]].drop_duplicates())
    assert (default[default["flag"] == "stochastic"]["value"] == 0).all()
    assert (default[default["flag"] == "strong_exact"]["value"] == 0).all()   # an MLP: the search


class Noisy(torch.nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x) + torch.randn(len(x), 2)


def test_sanity_flags_detect_masking_and_randomness():
    task = HiddenFeature(0, dim=6, manifold_dim=2)
    cfg = resolve(PARAMS, {"test_points": 50}, "judge")
    test = make_test_set(task, cfg, 0)
    flat = torch.nn.Sequential(torch.nn.Linear(6, 2), torch.nn.ReLU())   # dead ReLU: no gradient anywhere
    with torch.no_grad():
        flat[0].weight.zero_()
        flat[0].bias.fill_(-1.0)
    assert sanity_flags(flat, task, test, cfg)["zero_grad_share"] == 1.0
    healthy = torch.nn.Linear(6, 2)
    flags = sanity_flags(healthy, task, test, cfg)
    assert flags == {"zero_grad_share": 0.0, "stochastic": 0.0}
    assert sanity_flags(Noisy(healthy), task, test, cfg)["stochastic"] == 1.0


# -- judge versions ----------------------------------------------------------------------------
def _make_old(run_dir) -> None:
    """Turn a run directory into one written before judge versions (version 1, no column)."""
    import sqlite3

    con = sqlite3.connect(run_dir / "results.sqlite")
    with con:
        con.execute("ALTER TABLE scores DROP COLUMN version")
    con.close()


def test_a_run_scored_by_an_older_judge_is_refused_until_rejudged(tmp_path, tiny_base, capsys):
    from teachsim.errors import RunError
    from teachsim.platform.judge import VERSION

    out = tmp_path / "old"
    run = teachsim.run(tiny_base, out=out, progress=False)
    before = run.scores
    _make_old(out)
    assert teachsim.open_run(out).judge_versions["default"] == [1]
    with pytest.raises(RunError, match="judge version 1.*teachsim judge"):
        teachsim.run(tiny_base, out=out, progress=False, resume=True)
    assert main(["show", str(out)]) == 0
    assert "judge version 1" in capsys.readouterr().out      # show warns
    # the upgrade re-scores every episode with this judge, no retraining, then resume works
    assert main(["judge", str(out), "--quiet"]) == 0
    upgraded = teachsim.open_run(out)
    assert upgraded.judge_versions["default"] == [VERSION]
    pd.testing.assert_frame_equal(upgraded.scores, before)   # same judge code: the same numbers
    assert upgraded.upgrade_judge(progress=False) == 0        # nothing left to do
    episodes = upgraded.episodes
    again = teachsim.run(tiny_base, out=out, progress=False, resume=True)
    pd.testing.assert_frame_equal(again.episodes, episodes)   # nothing re-ran


def test_upgrading_names_an_episode_whose_students_are_missing(tmp_path, tiny_base):
    from teachsim.errors import RunError

    out = tmp_path / "old"
    run = teachsim.run(tiny_base, out=out, progress=False)
    _make_old(out)
    key = run.episodes["key"].iloc[0]
    (out / "students" / f"{key}.pt").unlink()
    with pytest.raises(RunError, match="episode 1 .*no saved students"):
        run.upgrade_judge(progress=False)


def _copy(run, tmp_path):
    import shutil

    shutil.copytree(run.dir, tmp_path / "copy")
    return teachsim.open_run(tmp_path / "copy")


def test_a_missing_students_file_is_named_and_nothing_is_judged(tiny_run, tmp_path, capsys):
    """A missing students/KEY.pt once gave a traceback after half the episodes, and show
    presented the half as the judge's scores: now the judging refuses before any work."""
    run = _copy(tiny_run, tmp_path)
    third = run.episodes.sort_values("episode_id").iloc[2]
    run.file("students", third["key"]).unlink()
    code = main(["judge", str(run.dir), "--attacks", "fgsm", "--name", "half", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert f"episode {third['episode_id']} ({third['protocol']}, seed {third['seed']}) has no saved students" in err
    assert "nothing was judged" in err
    assert "half" not in run.judges


def test_an_interrupted_judging_is_marked_partial_and_the_same_command_finishes_it(tiny_run, tmp_path, capsys,
                                                                                  monkeypatch):
    run = _copy(tiny_run, tmp_path)
    from teachsim.results import reader

    real, calls = reader.Run.spec, []

    def interrupt_third(self, episode):      # Ctrl-C while the third episode is judged
        calls.append(episode)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, episode)

    monkeypatch.setattr(reader.Run, "spec", interrupt_third)
    argv = ["judge", str(run.dir), "--attacks", "fgsm", "--name", "quick", "--quiet"]
    assert main(argv) == 130
    assert "run the same teachsim judge command again" in capsys.readouterr().err
    assert run.judge_coverage("quick") == (2, 4)
    assert main(["show", str(run.dir), "--judge", "quick"]) == 0
    assert "judge 'quick' is partial: it scored 2 of the 4 finished episodes" in capsys.readouterr().err
    html = run.report(judge="quick").read_text()
    assert "partial judge" in html and "scored 2 of the 4 finished episodes" in html

    monkeypatch.setattr(reader.Run, "spec", real)
    judged = run.scores_of("quick")
    calls.clear()
    assert main(argv) == 0                    # the same command: only the two left are judged
    assert run.judge_coverage("quick") == (4, 4)
    after = run.scores_of("quick")
    kept = after[after["episode_id"].isin(judged["episode_id"])]
    pd.testing.assert_frame_equal(kept.reset_index(drop=True), judged.reset_index(drop=True))
    assert main(["show", str(run.dir), "--judge", "quick"]) == 0
    assert "partial" not in capsys.readouterr().err


def test_a_different_judging_under_a_used_name_starts_over(tiny_run, tmp_path):
    """One name never holds two judges' scores: asking another attack set under it
    replaces every episode's scores, and an interruption cannot leave a mix."""
    run = _copy(tiny_run, tmp_path)
    run.rejudge("mine", progress=False, attacks=["fgsm"])
    run.rejudge("mine", progress=False, attacks=["pgd"], eps=0.5)
    fresh = run.rejudge("other", progress=False, attacks=["pgd"], eps=0.5)
    pd.testing.assert_frame_equal(run.scores_of("mine").reset_index(drop=True),
                                  run.scores_of(fresh).reset_index(drop=True))


@pytest.mark.parametrize("command", ["transcript", "judge"])
def test_a_crafted_key_in_the_database_never_reaches_outside_the_run(tiny_run, tmp_path, capsys, command):
    """An episode key altered to '../x' once made transcript and judge read outside the
    run directory: keys are checked to be keys teachsim writes."""
    import sqlite3

    run = _copy(tiny_run, tmp_path)
    (tmp_path / "x.npz").write_bytes(b"not yours")
    con = sqlite3.connect(run.dir / "results.sqlite")
    with con:
        con.execute("UPDATE episodes SET key = '../../x' WHERE episode_id = 1")
    con.close()
    argv = (["transcript", str(run.dir), "1"] if command == "transcript"
            else ["judge", str(run.dir), "--attacks", "fgsm", "--name", "n", "--quiet"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'../../x' is not an episode key teachsim writes" in err and "Traceback" not in err
