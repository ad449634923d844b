"""The tiny experiment the tests share: real runs in seconds."""

import tomllib

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
