"""Config validation: every bad key is caught before anything runs,
reported by the CLI as one line naming the dotted field, with exit code 2."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

import teachsim
from teachsim.cli import main
from teachsim import config as config_mod
from tiny import TINY_TOML as TINY

PREFIX = "teachsim: error: "



def _edit(old: str, new: str) -> str:
    assert TINY.count(old) == 1, old
    return TINY.replace(old, new)


# (id, config text, the field the message must start with, substrings it must also contain)
BAD = [
    ("unknown-top-key", "seed = [0]\n" + TINY, "seed", ["unknown key", "did you mean 'seeds'"]),
    ("unknown-task-key", _edit("dim = 6", "dimm = 6"), "task.dimm", ["did you mean 'dim'"]),
    ("string-for-int", _edit("dim = 6", 'dim = "6"'), "task.dim", ["expected an integer", "'6'"]),
    ("out-of-range", _edit("dim = 6", "dim = 0"), "task.dim", ["expected an integer >= 1", "got 0"]),
    ("bool-for-int", _edit("steps = 30", "steps = true"), "student.steps", ["expected an integer", "True"]),
    ("cross-field", _edit("manifold_dim = 2", "manifold_dim = 9"), "task.manifold_dim", ["task.dim = 6", "9"]),
    # no name: the default task's keys judged another task's: the message says so
    ("task-name-missing", _edit('name = "hidden-feature"\n', 'outer_radius = 1.5\n'), "task.outer_radius",
     ["unknown key", "task.name is not given", "default 'hidden-feature'"]),
    ("unknown-task", _edit('name = "hidden-feature"', 'name = "hiden-feature"'), "task.name",
     ["unknown task", "did you mean 'hidden-feature'"]),
    ("unknown-protocol", _edit('name = "passive"\nbatch', 'name = "pasive"\nbatch'), "protocols[1].name",
     ["unknown protocol", "did you mean 'passive'"]),
    ("unknown-protocol-key", _edit("batch = 5", "batchh = 5"), "protocols[1].batchh", ["did you mean 'batch'"]),
    ("unknown-attack", _edit("test_points = 100", 'test_points = 100\nattacks = ["pgd", "pdg"]'),
     "judge.attacks[1]", ["'pdg'"]),
    ("bad-norm", _edit("test_points = 100", 'test_points = 100\nnorm = "l3"'), "judge.norm", ["'l2'", "'l3'"]),
    ("duplicate-label", _edit("batch = 5", 'batch = 5\nlabel = "passive"'), "protocols[1].label",
     ["unique", "protocols[0]"]),
    ("empty-label", _edit("batch = 5", 'batch = 5\nlabel = ""'), "protocols[1].label", ["non-empty string"]),
    ("budgets-not-increasing", _edit("budgets = [0, 10, 20]", "budgets = [0, 20, 10]"), "budgets", ["increasing"]),
    ("budgets-negative", _edit("budgets = [0, 10, 20]", "budgets = [-1, 10]"), "budgets", ["from 0"]),
    ("budgets-huge", _edit("budgets = [0, 10, 20]", "budgets = [0, 1e16]"), "budgets", ["from 0 to 1e+15"]),
    # the name is the folder under runs/: "..", separators, NUL or a huge name would escape it
    ("name-dotdot", _edit('name = "tiny"', 'name = ".."'), "name", ["safe file name", "'..'"]),
    ("name-separator", _edit('name = "tiny"', 'name = "a/b"'), "name", ["safe file name", "'a/b'"]),
    ("name-backslash", _edit('name = "tiny"', 'name = "a\\\\b"'), "name", ["safe file name"]),
    ("name-nul", _edit('name = "tiny"', 'name = "a\\u0000b"'), "name", ["safe file name"]),
    ("name-too-long", _edit('name = "tiny"', f'name = "{"n" * 101}"'), "name", ["1-100 characters"]),
    ("empty-seeds", _edit("seeds = [0, 1]", "seeds = []"), "seeds", ["non-empty"]),
    ("float-seed", _edit("seeds = [0, 1]", "seeds = [0.5]"), "seeds", ["integers"]),
    # SQLite keeps seeds as signed 64-bit integers: 2**63 was computed, then failed to record
    ("seed-too-large", _edit("seeds = [0, 1]", f"seeds = [0, {2**63}]"), "seeds", [f"from 0 to {2**63 - 1}"]),
    ("time-limit-zero", "time_limit = 0\n" + TINY, "time_limit", ["a number of seconds > 0", "got 0"]),
    ("time-limit-string", 'time_limit = "1h"\n' + TINY, "time_limit", ["a number of seconds > 0", "'1h'"]),
    # validation once built the model: a typo'd dim now stops here, sized, instead of deep in an episode
    ("dim-huge", _edit("dim = 6", "dim = 1000000000"), "student",
     ["at most 268435456 parameters", "task dim 1000000000"]),
    ("test-set-huge", _edit("dim = 6", "dim = 300000").replace("hidden = [16]", "hidden = [2]")
     .replace("test_points = 100", "test_points = 1000"), "judge.test_points", ["1000 points of dim 300000"]),
    ("seed-negative", _edit("seeds = [0, 1]", "seeds = [-1]"), "seeds", ["integers from 0"]),
    ("unknown-method", _edit("steps = 30", 'steps = 30\nmethod = "ermm"'), "student.method",
     ["unknown method", "did you mean 'erm'"]),
    ("unknown-model", _edit("steps = 30", 'steps = 30\nmodel = "mlpp"'), "student.model", ["did you mean 'mlp'"]),
    ("unknown-student-key", _edit("steps = 30", "steps = 30\nhiden = [3]"), "student.hiden",
     ["did you mean 'hidden'"]),
    ("bad-hidden", _edit("hidden = [16]", "hidden = [0]"), "student.hidden", ["integers >= 1", "[0]"]),
    ("bad-sweep-path", TINY + '\n[sweep]\n"task.dimm" = [5, 8]\n', "sweep.task.dimm", ["did you mean 'dim'"]),
    ("sweep-bad-table", TINY + '\n[sweep]\n"model.dim" = [5]\n', "sweep.model.dim", ['"task.dim"']),
    ("sweep-bad-value", TINY + '\n[sweep]\n"task.dim" = [5, 0]\n', "sweep.task.dim", ["got 0"]),
    ("sweep-not-list", TINY + '\n[sweep]\n"task.dim" = 5\n', "sweep.task.dim", ["list"]),
    # manifold_dim = 2 is fine against dim = 6 but not against the swept dim = 1
    ("sweep-cross-field", TINY + '\n[sweep]\n"task.dim" = [5, 1]\n', "task.manifold_dim",
     ["sweep variant task.dim=1"]),
    ("sweep-repeated-variant", TINY + '\n[sweep]\n"task.dim" = [5, 5]\n', "sweep", ["differ"]),
    ("protocols-alike-but-label", _edit("batch = 5", 'batch = 25\nlabel = "again"'), "protocols[1]",
     ["protocols[0]", "only the label differs"]),
    ("task-not-a-table", _edit("[task]\nname = \"hidden-feature\"\ndim = 6\nmanifold_dim = 2\n", "")
     .replace('seeds = [0, 1]', 'seeds = [0, 1]\ntask = 3'), "task", ["a table", "3"]),
    ("protocols-empty", TINY.split("[[protocols]]")[0].replace('seeds = [0, 1]', 'seeds = [0, 1]\nprotocols = []'),
     "protocols", ["non-empty array"]),
    ("invalid-toml", TINY + "\n[task\n", "config", ["TOML"]),
    ("protocol-student-unknown-method", _edit("batch = 5", 'batch = 5\nstudent = { method = "pgd-att" }'),
     "protocols[1].student.method", ["unknown method", "did you mean 'pgd-at'"]),
    ("protocol-student-unknown-key", _edit("batch = 5", "batch = 5\nstudent = { hiden = [4] }"),
     "protocols[1].student.hiden", ["did you mean 'hidden'"]),
    ("protocol-student-method-param", _edit("batch = 5", "batch = 5\nstudent = { eps = 0.5 }"),
     "protocols[1].student.eps", ["unknown key"]),   # erm has no training attack
    ("protocol-student-not-table", _edit("batch = 5", "batch = 5\nstudent = 3"),
     "protocols[1].student", ["a table", "3"]),
    ("report-bad-metric", TINY.split("[[protocols]]")[0] + '[report]\nmetric = "strong"\n',
     "report.metric", ["'strong_robust_acc'", "'strong'"]),
    ("report-bad-target", TINY + '\n[report]\ntarget = 2\n', "report.target", ["in [0.0, 1.0]", "got 2"]),
    ("report-unknown-key", TINY + '\n[report]\ntargett = 0.5\n', "report.targett", ["did you mean 'target'"]),
]


def _check_one_line(err: str, out: str, field: str, needles: list[str]) -> str:
    assert "Traceback" not in err and "Traceback" not in out
    assert err.endswith("\n")
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(PREFIX), line
    assert line.startswith(f"{PREFIX}{field}: "), f"expected the field {field!r} first: {line}"
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


@pytest.mark.parametrize("text,field,needles", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_is_one_line_exit_2_and_runs_nothing(tmp_path, capsys, text, field, needles):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = tmp_path / "run"
    code = main(["run", str(cfg), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    _check_one_line(captured.err, captured.out, field, needles)
    assert captured.out == ""
    assert not (out / "results.sqlite").exists()
    assert not out.exists()


def test_a_dotdot_name_writes_nothing_anywhere(tmp_path, monkeypatch, capsys):
    """Without --out the run would go to runs/NAME: with name = ".." it once landed in the
    current folder and overwrote the user's own config.toml."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "config.toml"
    mine.write_text("# the user's own file\n")
    (tmp_path / "bad.toml").write_text(_edit('name = "tiny"', 'name = ".."'))
    assert main(["run", "bad.toml", "--quiet"]) == 2
    assert mine.read_text() == "# the user's own file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "config.toml"]


@pytest.mark.parametrize("name", ['"a\\u0000b"', f'"{"n" * 300}"', '"a/b"'], ids=["nul", "300-chars", "separator"])
def test_a_bad_name_without_out_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, name):
    """Without --out the name becomes runs/NAME: a NUL or an over-long name once gave a traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text(_edit('name = "tiny"', f"name = {name}"))
    assert main(["run", "bad.toml", "--quiet"]) == 2
    captured = capsys.readouterr()
    _check_one_line(captured.err, captured.out, "name", ["safe file name"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_every_bad_case_is_distinct():
    texts = [c[1] for c in BAD]
    assert len(set(texts)) == len(texts) >= 12
    for _, text, _, _ in BAD:   # the base config itself is valid: each case breaks exactly one thing
        assert text != TINY
    config_mod.load(tomllib.loads(TINY))


def test_missing_config_file(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(tmp_path / "nope.toml"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    _check_one_line(captured.err, captured.out, "config", ["nope.toml", "no such file"])
    assert not out.exists()


def test_bad_argument_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "x.toml"), "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(PREFIX) and "--bogus" in err


@pytest.mark.parametrize("text,field,needle", [
    ("seed = [0]\n" + TINY, "seed", "did you mean 'seeds'"),
    (_edit("manifold_dim = 2", "manifold_dim = 9"), "task.manifold_dim", "9"),
    (TINY + "\n[task\n", "config", "TOML"),
], ids=["did-you-mean", "cross-field", "invalid-toml"])
def test_bad_config_in_a_real_process(tmp_path, text, field, needle):
    """The installed entry point, in its own process: no warnings or tracebacks leak to stderr."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "teachsim", "run", str(cfg), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _check_one_line(proc.stderr, proc.stdout, field, [needle])
    assert not (out / "results.sqlite").exists()


# -- the Python API --------------------------------------------------------------------------

@pytest.mark.parametrize("raw,field", [
    ({"seed": [0]}, "seed"),
    ({"task": {"dim": 0}}, "task.dim"),
    ({"task": {"dim": 3, "manifold_dim": 4}}, "task.manifold_dim"),
    ({"judge": {"attacks": ["pgd", "nope"]}}, "judge.attacks[1]"),
    ({"protocols": [{"name": "passive"}, {"name": "passive", "label": "passive"}]}, "protocols[1].label"),
    ({"sweep": {"task.dimm": [5, 8]}}, "sweep.task.dimm"),
    ({"student": {"hidden": "16"}}, "student.hidden"),
])
def test_api_raises_config_error_with_field(raw, field):
    with pytest.raises(teachsim.ConfigError) as exc:
        config_mod.load(raw)
    assert exc.value.field == field
    assert str(exc.value).startswith(f"{field}: ")
    assert isinstance(exc.value, teachsim.TeachsimError) and isinstance(exc.value, ValueError)


def test_api_run_rejects_bad_config_before_creating_anything(tmp_path):
    with pytest.raises(teachsim.ConfigError) as exc:
        teachsim.run({"task": {"dim": "6"}}, out=tmp_path / "run", progress=False)
    assert exc.value.field == "task.dim"
    assert not (tmp_path / "run").exists()


def test_valid_config_resolves_defaults():
    exp = config_mod.load({"name": "d", "task": {"manifold_dim": 3}, "seeds": [4]})
    cfg = exp.config
    assert cfg["task"]["name"] == "hidden-feature"
    assert cfg["task"]["dim"] == 50 and cfg["task"]["manifold_dim"] == 3
    assert cfg["judge"]["norm"] == "l2" and cfg["judge"]["attacks"] == ["pgd"]
    assert isinstance(cfg["judge"]["eps"], float)
    assert cfg["student"]["model"] == "mlp@3" and cfg["student"]["method"] == "erm"
    assert cfg["budgets"] == [0, 25, 50, 100, 200, 400]
    assert [p["name"] for p in cfg["protocols"]] == ["passive"]
    assert cfg["protocols"][0]["label"] == "passive"
    assert len(exp.episodes) == 1
    ep = exp.episodes[0]
    assert ep.seed == 4 and ep.task["dim"] == 50 and ep.judge["norm"] == "l2"
    # the resolved config round-trips through config.toml and resolves to itself
    again = config_mod.load(tomllib.loads(config_mod.to_toml(cfg)))
    assert again.config == cfg
    assert [e.key for e in again.episodes] == [e.key for e in exp.episodes]


def test_protocol_labels_default_to_name_plus_options():
    exp = config_mod.load(tomllib.loads(TINY))
    assert [p["label"] for p in exp.config["protocols"]] == ["passive", "passive(batch=5)"]


def test_sweep_expands_variants_protocols_and_seeds():
    raw = tomllib.loads(TINY + '\n[sweep]\n"task.dim" = [5, 8]\n')
    exp = config_mod.load(raw)
    assert len(exp.episodes) == 2 * 2 * 2          # variants x protocols x seeds
    keys = [e.key for e in exp.episodes]
    assert len(set(keys)) == len(keys)
    assert {e.variant for e in exp.episodes} == {"task.dim=5", "task.dim=8"}
    assert {(e.variant, e.task["dim"]) for e in exp.episodes} == {("task.dim=5", 5), ("task.dim=8", 8)}
    assert {e.label for e in exp.episodes} == {"passive", "passive(batch=5)"}
    assert sorted({e.seed for e in exp.episodes}) == [0, 1]
    assert exp.config["sweep"] == {"task.dim": [5, 8]}
    # the same config gives the same keys; a different one different keys
    assert [e.key for e in config_mod.load(tomllib.loads(TINY + '\n[sweep]\n"task.dim" = [5, 8]\n')).episodes] == keys
    other = config_mod.load(tomllib.loads(TINY + '\n[sweep]\n"task.dim" = [5, 9]\n'))
    assert set(e.key for e in other.episodes) & set(keys) == {e.key for e in exp.episodes if e.task["dim"] == 5}


def test_keys_change_with_any_setting():
    a = config_mod.load(tomllib.loads(TINY))
    assert len({e.key for e in a.episodes}) == 4
    for old, new in (("steps = 30", "steps = 31"), ("dim = 6", "dim = 7"), ("seeds = [0, 1]", "seeds = [2, 3]"),
                     ("budgets = [0, 10, 20]", "budgets = [0, 10, 30]"), ("\nrestarts = 1", "\nrestarts = 2")):
        b = config_mod.load(tomllib.loads(_edit(old, new)))
        assert not {e.key for e in a.episodes} & {e.key for e in b.episodes}, new
    # a protocol option changes that protocol's keys only
    b = config_mod.load(tomllib.loads(_edit("batch = 5", "batch = 6")))
    assert {e.key for e in a.episodes} & {e.key for e in b.episodes} == {
        e.key for e in a.episodes if e.label == "passive"}


def test_config_file_name_defaults_the_experiment_name(tmp_path):
    path = tmp_path / "my-exp.toml"
    path.write_text(TINY.replace('name = "tiny"\n', ""))
    assert config_mod.load(path).name == "my-exp"


def test_a_protocol_can_override_the_student():
    """``student = {...}`` in a [[protocols]] entry: "passive data, adversarially trained"."""
    text = _edit("batch = 5", 'batch = 5\nstudent = { method = "pgd-at", eps = 0.5 }')
    exp = config_mod.load(tomllib.loads(text))
    by_label = {s.label: s for s in exp.episodes}
    plain, trained = by_label["passive"], by_label["passive(batch=5, student.method=pgd-at, student.eps=0.5)"]
    assert plain.student["method"] == "erm" and "eps" not in plain.student
    assert trained.student["method"] == "pgd-at" and trained.student["eps"] == 0.5
    assert trained.student["hidden"] == [16] and trained.student["steps"] == 30   # the rest from [student]
    assert "student" not in trained.protocol_cfg                                   # not a protocol parameter
    assert exp.config["protocols"][1]["student"] == {"method": "pgd-at", "eps": 0.5}   # kept in config.toml
    # the override is part of the key: same protocol settings, another student, other episodes
    again = config_mod.load(tomllib.loads(_edit("batch = 5", "batch = 5\nstudent = { steps = 31 }")))
    assert {s.key for s in again.episodes} != {s.key for s in exp.episodes}
    # it applies in every sweep variant, on top of the swept value
    swept = config_mod.load(tomllib.loads(text + '\n[sweep]\n"student.steps" = [10, 20]\n'))
    got = {(s.variant, s.label.split("(")[0], s.student["method"], s.student["steps"]) for s in swept.episodes}
    assert ("student.steps=10", "passive", "pgd-at", 10) in got and ("student.steps=20", "passive", "erm", 20) in got


def test_report_table_is_optional_and_checked():
    exp = config_mod.load(tomllib.loads(TINY))
    assert "report" not in exp.config           # absent stays absent: older run directories still match
    exp = config_mod.load(tomllib.loads(TINY + "\n[report]\ntarget = 0.5\n"))
    assert exp.config["report"] == {"target": 0.5, "metric": "strong_robust_acc"}
    assert {s.key for s in exp.episodes} == {s.key for s in config_mod.load(tomllib.loads(TINY)).episodes}


# -- behaviour versions in names ------------------------------------------------------------------

def _noisy(version):
    from teachsim.protocols.passive import Passive

    return type("Versioned", (Passive,), {"VERSION": version})


@pytest.mark.filterwarnings("ignore:protocol 'versioned' is registered again")
def test_a_versioned_name_is_stored_with_its_version_and_checked(tiny_config, restore_registry):
    from teachsim import registry

    registry.protocols.register("versioned", _noisy(1))
    tiny_config["protocols"] = [{"name": "versioned"}]
    one = config_mod.resolve_experiment(tiny_config)
    assert one.config["protocols"][0]["name"] == "versioned"     # version 1: the bare name, keys as before
    registry.protocols.register("versioned", _noisy(2))
    two = config_mod.resolve_experiment(tiny_config)
    assert two.config["protocols"][0]["name"] == "versioned@2"
    assert {s.key for s in one.episodes}.isdisjoint(s.key for s in two.episodes)
    tiny_config["protocols"] = [{"name": "versioned@2"}]
    assert config_mod.resolve_experiment(tiny_config).config["protocols"][0]["name"] == "versioned@2"
    tiny_config["protocols"] = [{"name": "versioned@1"}]
    with pytest.raises(teachsim.ConfigError, match="installed here is version 2, the config asks for version 1"):
        config_mod.resolve_experiment(tiny_config)
    tiny_config["protocols"] = [{"name": "versioned@x"}]
    with pytest.raises(teachsim.ConfigError, match="NAME@VERSION"):
        config_mod.resolve_experiment(tiny_config)


@pytest.mark.filterwarnings("ignore:protocol 'versioned' is registered again")
def test_a_run_is_not_resumed_by_another_version(tmp_path, tiny_config, restore_registry):
    from teachsim import registry

    registry.protocols.register("versioned", _noisy(1))
    tiny_config["protocols"] = [{"name": "versioned"}]
    tiny_config["seeds"] = [0]
    teachsim.run(tiny_config, out=tmp_path / "run", executor="serial", progress=False)
    registry.protocols.register("versioned", _noisy(2))
    with pytest.raises(teachsim.RunError, match="another version"):
        teachsim.run(tiny_config, out=tmp_path / "run", executor="serial", progress=False, resume=True)
