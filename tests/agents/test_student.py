"""The student agent: training that diverges fails its episode instead of being scored."""

from __future__ import annotations

import math

import teachsim


def test_a_diverged_student_fails_its_episode_alone(tmp_path, tiny_config):
    """lr = 1e9 with plain gradient descent turns every weight into NaN; such a model
    predicts class 0 everywhere and was once scored as finished (0.38 on every accuracy).
    Now its episode fails with the learn call named, and the other protocol's episodes
    finish as usual."""
    tiny_config["seeds"] = [0]
    tiny_config["protocols"][1]["student"] = {"lr": 1e9, "optimizer": "sgd"}
    run = teachsim.run(tiny_config, out=tmp_path / "run", executor="serial", progress=False)
    eps = run.episodes.sort_values("episode_id")
    assert eps["status"].tolist() == ["finished", "failed"]
    error = eps["error"].iloc[1]
    assert error.startswith("DivergedError: training diverged at learn call 1: non-finite weights"), error
    assert "lower student.lr" in error
    scores = run.scores
    assert set(scores["protocol"]) == {eps["protocol"].iloc[0]}   # nothing of the failed one is averaged
    assert all(math.isfinite(v) for v in scores["value"])
