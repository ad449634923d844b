"""Nothing silent: points cut to fit, episodes that stop short of the final budget, failed
episodes and which registered protocol ran are all visible in the results, show, transcript
and the report."""

from __future__ import annotations

import pytest

import teachsim
from teachsim.cli import main

PLUGIN = '''
import teachsim
from teachsim import messages as m
from teachsim.protocols.base import ROUND_PARAMS, Protocol


class Overask(Protocol):
    """Asks for 40 labels a round, whatever the budget left."""

    PARAMS = ROUND_PARAMS

    def student_turn(self, student, inbox, ctx):
        self.train(student)
        return [m.query(student.data.sample(40, ctx.rng))]

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]


class Quitter(Overask):
    """One round of 5 labels, then done."""

    def student_turn(self, student, inbox, ctx):
        self.train(student)
        if ctx.spent:
            return [m.done(m.STUDENT, "had enough")]
        return [m.query(student.data.sample(5, ctx.rng))]


class Breaks(Overask):
    """Answers once, then raises on the teacher's second turn."""

    def teacher_turn(self, teacher, inbox, ctx):
        if ctx.spent:
            raise RuntimeError("the teacher broke <here>")
        return [teacher.answer(q).head(5) for q in inbox if q.kind == "query"]


for name, cls in (("overask", Overask), ("quitter", Quitter), ("breaks", Breaks)):
    teachsim.register_protocol(name, cls)
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_base):
    from teachsim import registry

    base = tmp_path_factory.mktemp("visible")
    (base / "plugin.py").write_text(PLUGIN)
    cfg = {**tiny_base, "seeds": [0], "budgets": [0, 10, 30],
           "protocols": [{"name": "overask"}, {"name": "quitter"}, {"name": "breaks"}]}
    with registry.scoped():
        return teachsim.run(cfg, out=base / "run", executor="serial", progress=False,
                            plugins=(str(base / "plugin.py"),))


def _episode(run, name):
    eps = run.episodes
    return eps[eps["protocol_name"] == name].iloc[0]


def test_cut_points_are_recorded_on_the_message_the_episode_and_the_transcript(run, capsys):
    over = _episode(run, "overask")
    assert over["status"] == "finished" and over["spent"] == 30
    assert over["cut"] == 10                            # 40 asked, 30 fitted the final budget
    msgs = run.messages
    cut = msgs[(msgs["episode_id"] == over["episode_id"]) & (msgs["cut"] > 0)]
    assert cut["cut"].tolist() == [10] and cut["kind"].tolist() == ["answer"]
    assert main(["transcript", str(run.dir), str(over["episode_id"])]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "cut=" in line]
    assert len(lines) == 1 and "cut=10" in lines[0]


def test_an_episode_that_stops_short_of_the_final_budget_is_flagged(run, capsys):
    quit_ = _episode(run, "quitter")
    assert quit_["status"] == "finished" and quit_["spent"] == 5
    short = run.underspent()
    assert short["episode_id"].tolist() == [quit_["episode_id"]]
    assert main(["show", str(run.dir)]) == 0
    out = capsys.readouterr().out
    assert "1 episode(s) ended having spent less than the final budget 30" in out
    assert f"episode {quit_['episode_id']} (quitter, seed 0): spent 5 / 30" in out
    page = run.report().read_text()
    assert "Episodes that spent less than the final budget" in page and "5 / 30" in page


def test_a_failed_episode_shows_its_first_error_line_and_keeps_its_partial_transcript(run, capsys):
    broke = _episode(run, "breaks")
    assert broke["status"] == "failed"
    assert main(["show", str(run.dir)]) == 0
    out = capsys.readouterr().out
    assert f"failed: episode {broke['episode_id']} (breaks, seed 0): RuntimeError: the teacher broke <here>" in out
    assert f"teachsim transcript {run.dir} ID" in out
    assert main(["transcript", str(run.dir), str(broke["episode_id"])]) == 0
    out = capsys.readouterr().out.splitlines()
    delivered = [line for line in out if " protocol " in line]
    assert [line.split()[2] for line in delivered] == ["query", "answer", "query"]
    assert out[len(out) - out[::-1].index(delivered[-1])] == f"episode {broke['episode_id']} failed after the " \
                                                             "messages above:"
    assert any("RuntimeError: the teacher broke <here>" in line for line in out)


def test_results_carry_the_registered_name_beside_the_label(run):
    assert set(run.episodes["protocol_name"]) == {"overask", "quitter", "breaks"}
    assert not run.scores.query("protocol_name == 'overask'").empty
    assert repr(run) == f"Run({str(run.dir)!r}: 2 finished, 1 failed episodes; judges: default)"


FLAKY = '''
import teachsim
from teachsim import messages as m
from teachsim.protocols.base import ROUND_PARAMS, Protocol


class Flaky(Protocol):
    """Fails on some seeds (its first draw), after one round of 5 labels."""

    PARAMS = ROUND_PARAMS

    def student_turn(self, student, inbox, ctx):
        self.train(student)
        if ctx.spent and ctx.rng.random() < 0.5:
            raise RuntimeError("unlucky seed")
        return [m.query(student.data.sample(5, ctx.rng))]

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]


teachsim.register_protocol("flaky", Flaky)
'''


def test_a_mean_over_fewer_seeds_says_so_and_intervals_stay_in_0_1(tmp_path, tiny_base, capsys):
    from teachsim import registry

    (tmp_path / "plugin.py").write_text(FLAKY)
    cfg = {**tiny_base, "seeds": [0, 1, 2, 3], "budgets": [0, 10], "protocols": [{"name": "flaky"}]}
    with registry.scoped():
        run = teachsim.run(cfg, out=tmp_path / "run", executor="serial", progress=False,
                           plugins=(str(tmp_path / "plugin.py"),))
        finished = int((run.episodes["status"] == "finished").sum())
        assert 2 <= finished < 4   # (seeds chosen so: some finish, some fail)
        assert main(["show", str(run.dir)]) == 0
    out = capsys.readouterr().out
    assert f"flaky (n={finished}/4)" in out
    s = run.summary()
    assert ((s["lo"] >= 0) & (s["hi"] <= 1)).all() and s["lo"].notna().all()


def test_intervals_are_clipped_to_the_range_of_a_fraction():
    import pandas as pd

    from teachsim.results.summary import summarize

    scores = pd.DataFrame({"variant": "", "protocol": "p", "seed": [0, 1, 2], "budget": 0,
                           "metric": "clean_acc", "value": [1.0, 1.0, 0.98]})
    row = summarize(scores).iloc[0]
    assert row["hi"] == 1.0 and 0 < row["lo"] < row["mean"] < 1.0
