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


# A protocol that never finishes its first turn, as a user's bug would: ``how`` = "loop"
# (a turn that never returns), "learn" (learn() of 10**15 steps) or "masked" (SIGALRM
# blocked, then a loop: only the Ray driver can stop it).
STUCK_PLUGIN = '''
import signal

import teachsim
from teachsim import messages as m
from teachsim.protocols.base import Protocol
from teachsim.schema import Choice


class Stuck(Protocol):
    PARAMS = {"how": Choice("loop", ("loop", "learn", "masked"))}
    legal = {m.STUDENT: {"query"}, m.TEACHER: {"answer"}}

    def student_turn(self, student, inbox, ctx):
        if self.how == "learn":
            student.learn(10**15, force=True)
        if self.how == "masked":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        while True:
            pass

    def teacher_turn(self, teacher, inbox, ctx):
        return []


teachsim.register_protocol("stuck", Stuck)
'''


def train_mlp(task, n: int, steps: int, seed: int):
    """A 64-64 ReLU MLP trained by Adam (lr 1e-2, batches of 128) on ``n`` labelled draws
    of ``task`` (abstentions dropped); returns ``(model, rng, labels)``: the rng ready for
    more draws, the labels it trained on."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from teachsim.agents.models import mlp
    from teachsim.messages import ABSTAIN

    rng = np.random.default_rng(seed)
    x = task.data.sample(n, rng)
    y = task.label(x)
    keep = y != ABSTAIN
    x, y = torch.from_numpy(x[keep]), torch.from_numpy(y[keep])
    g = torch.Generator().manual_seed(seed)
    model = mlp(task.dim, task.classes, hidden=[64, 64], init_std=0.0, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, rng, y
