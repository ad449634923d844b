"""A run directory that is read-only, truncated, corrupt or crafted: reading it works where
it can, everything else is one line, exit 2, and nothing in it changes."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

import teachsim
from teachsim.cli import main
from tiny import PREFIX


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_base):
    cfg = {**tiny_base, "seeds": [0]}
    out = tmp_path_factory.mktemp("damaged") / "run"
    teachsim.run(cfg, out=out, executor="serial", progress=False)
    (out.parent / "cfg.toml").write_text(teachsim.config.to_toml(cfg))
    return out


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    return lines[0]


def test_a_finished_run_leaves_one_self_contained_database(made):
    """No -wal/-shm beside results.sqlite: a copy, an archive or a read-only mount reads as is."""
    assert sorted(p.name for p in made.glob("results.sqlite*")) == ["results.sqlite"]


@pytest.fixture(params=["closed", "wal-on-disk"])
def read_only(request, made, tmp_path):
    """The run directory on a read-only bind mount (root; CI is). "wal-on-disk": a database
    left in WAL mode without its -shm, which SQLite cannot open read-only in the usual way."""
    copy = tmp_path / "copy"
    shutil.copytree(made, copy)
    if request.param == "wal-on-disk":
        con = sqlite3.connect(copy / "results.sqlite")
        con.execute("PRAGMA journal_mode=WAL")
        con.close()
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "--bind", str(copy), str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True, capture_output=True)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_read_only_run_directory_is_shown_and_refuses_writes_in_one_line(read_only, made, capsys):
    before = _digest(read_only)
    assert main(["show", str(read_only)]) == 0
    assert "2 finished" in capsys.readouterr().out
    assert main(["transcript", str(read_only), "1"]) == 0
    capsys.readouterr()
    assert len(teachsim.open_run(read_only).scores) > 0
    cfg = str(made.parent / "cfg.toml")
    for argv, needle in ((["report", str(read_only)], "cannot write the report"),
                         (["run", cfg, "--out", str(read_only), "--executor", "serial", "--quiet"],
                          "cannot be written"),
                         (["judge", str(read_only), "--attacks", "fgsm", "--quiet"], "cannot be written")):
        assert main(argv) == 2, argv
        assert needle in _one_line(capsys)
    assert _digest(read_only) == before


def _truncate(run: Path) -> None:
    path = run / "results.sqlite"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(run: Path) -> None:
    (run / "results.sqlite").write_bytes(bytes(range(256)) * 200)


def _bad_toml(run: Path) -> None:
    (run / "config.toml").write_text("this is [[ not toml\n")


def _crafted_report(run: Path) -> None:
    path = run / "config.toml"
    path.write_text(path.read_text() + '\n[report]\ntarget = "nope"\n')


def test_without_config_toml_the_store_s_copy_is_read(made, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(made, run)
    (run / "config.toml").unlink()
    assert main(["show", str(run)]) == 0
    assert main(["judge", str(run), "--attacks", "fgsm", "--name", "again", "--quiet"]) == 0
    assert "again" in teachsim.open_run(run).judges


@pytest.mark.parametrize("damage, needle", [
    (_truncate, "cannot be read"), (_garbage, "not a readable teachsim database"),
    (_bad_toml, "config is damaged"), (_crafted_report, "config is damaged")],
    ids=["truncated", "garbage", "bad-config-toml", "crafted-report-target"])
@pytest.mark.parametrize("command", ["show", "report", "judge", "judge-name", "resume"])
def test_a_damaged_run_directory_is_one_line_and_untouched(made, tmp_path, capsys, damage, needle, command):
    run = tmp_path / "copy"
    shutil.copytree(made, run)
    damage(run)
    before = _digest(run)
    argv = {"show": ["show", str(run)], "report": ["report", str(run)], "judge": ["judge", str(run), "--quiet"],
            "judge-name": ["judge", str(run), "--attacks", "fgsm", "--quiet"],
            "resume": ["run", str(made.parent / "cfg.toml"), "--out", str(run), "--resume", "--executor", "serial",
                       "--quiet"]}[command]
    code = main(argv)
    if damage in (_bad_toml, _crafted_report) and command in ("judge", "resume"):
        # neither needs the damaged config text: the run's own judge is up to date (nothing
        # written), and a resume of the same experiment is decided by the recorded episodes
        # (nothing to run; it writes its config.toml and record anew)
        assert code == 0, capsys.readouterr().err
        if command == "judge":
            assert _digest(run) == before
        return
    assert code == 2
    line = _one_line(capsys)
    assert needle in line or "not a readable teachsim database" in line, line
    assert _digest(run) == before


class _Payload:
    """What a hostile file would carry: unpickling it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


def test_pickle_payloads_in_saved_files_never_execute(made, tmp_path, capsys):
    """students/*.pt load with weights_only and transcripts never unpickle: a crafted file is
    one line, exit 2, and its code never runs."""
    import numpy as np
    import torch

    run = tmp_path / "copy"
    shutil.copytree(made, run)
    key = teachsim.open_run(run).episodes["key"].iloc[0]
    marker = tmp_path / "pwned"
    torch.save({"0/w": _Payload(marker)}, run / "students" / f"{key}.pt")
    np.savez(run / "transcripts" / f"{key}.npz", **{"0.points": np.array([_Payload(marker)], dtype=object)})
    assert main(["judge", str(run), "--attacks", "fgsm", "--name", "x", "--quiet"]) == 2
    assert "cannot be loaded as saved students" in _one_line(capsys)
    assert main(["transcript", str(run), "1"]) == 2
    assert "cannot be read as a transcript" in _one_line(capsys)
    assert not marker.exists()


def test_html_in_labels_descriptions_and_errors_is_escaped_in_the_report(tmp_path, tiny_config, restore_registry):
    plugin = tmp_path / "boom.py"
    plugin.write_text(
        "import teachsim\n"
        "from teachsim.protocols.passive import Passive\n"
        "class Boom(Passive):\n"
        "    def student_turn(self, student, inbox, ctx):\n"
        "        raise RuntimeError('<script>alert(1)</script>')\n"
        "teachsim.register_protocol('boom', Boom)\n")
    tiny_config.update(seeds=[0], description="<img src=x onerror=alert(1)>")
    tiny_config["protocols"] = [{"name": "passive", "label": "<b>bold</b>"}, {"name": "boom"}]
    run = teachsim.run(tiny_config, out=tmp_path / "run", executor="serial", progress=False, plugins=(str(plugin),))
    page = run.report().read_text()
    for raw in ("<script>", "<img src=x", "<b>bold</b>"):
        assert raw not in page, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
