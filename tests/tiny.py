"""What the tests share: the tiny experiment (real runs in seconds) and helpers for
running the command line and reading a run directory."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

PREFIX = "teachsim: error: "

TINY_TOML = """\
name = "tiny"
seeds = [0, 1]
budgets = [0, 10, 20]

[task]
name = "hidden-feature"
dim = 6
manifold_dim = 2

[student]
hidden = [16]
steps = 30
initial_labels = 10

[judge]
test_points = 100
steps = 10
restarts = 1
strong_steps = 10
strong_restarts = 1

[[protocols]]
name = "passive"

[[protocols]]
name = "passive"
batch = 5
"""

TINY = tomllib.loads(TINY_TOML)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m teachsim ARGS`` in ``cwd``, its output captured."""
    return subprocess.run([sys.executable, "-m", "teachsim", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def one_line_error(err: str, out: str = "") -> str:
    """The one line of a bad-input error: no traceback, one line, our prefix."""
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0]


def rows(run_dir: Path, sql: str, *args) -> list[tuple]:
    """Rows of a query on a run directory's database."""
    con = sqlite3.connect(run_dir / "results.sqlite")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()
