"""What checking a config needs to know of the built-in models and methods, without
torch: the methods' parameter tables and the models' shape rules (``methods.py`` and
``models.py`` use the same ones)."""

from __future__ import annotations

import math

from ..errors import ConfigError
from ..schema import Choice, Float, Int, Param

ATTACK_PARAMS: dict[str, Param] = {
    "eps": Float(1.0, lo=0.0, doc="radius of the training attack's ball"),
    "norm": Choice("l2", ("l2", "linf"), doc="norm of the training attack's ball"),
    "attack_steps": Int(10, lo=1, doc="iterations of the training attack (step 2.5 * eps / attack_steps)"),
}
"""The parameters every adversarial training method shares."""

PGD_AT: dict[str, Param] = dict(ATTACK_PARAMS)
TRADES: dict[str, Param] = {**ATTACK_PARAMS, "trades_beta": Float(6.0, lo=0.0, doc="weight of the KL term")}
BETA_AT: dict[str, Param] = dict(ATTACK_PARAMS)
LRAT: dict[str, Param] = dict(ATTACK_PARAMS)
GAIRAT: dict[str, Param] = {
    **ATTACK_PARAMS,
    "gairat_lambda": Float(-1.0, doc="lambda of the tanh weight (the paper's fixed schedule)"),
    "gairat_burn_in": Float(0.5, lo=0.0, hi=1.0, doc="share of each learn call's steps trained "
                            "unweighted first (the paper: epoch 60 of 120)")}
MAIL: dict[str, Param] = {
    **ATTACK_PARAMS,
    "mail_slope": Float(1.0, doc="slope of the sigmoid weight"),
    "mail_bias": Float(-1.5, doc="bias added to the probabilistic margin")}


MAX_FLOATS = 2**28
"""The most float32 numbers (1 GiB) one student copy or one test set may hold: an episode
keeps a student per checkpoint, so a larger one is a typo (``dim = 1000000000``) that
would otherwise fail deep inside the episode, or exhaust the machine."""


def check_size(dim: int, classes: int, hidden: list[int], model: str, test_points: int) -> None:
    """Refuse, before anything is built, an MLP or linear student, or a judge test set,
    too large for any machine this runs on."""
    model = model.split("@")[0]   # "mlp@2": the name without its version
    sizes = [dim, *([] if model == "linear" else hidden), classes]
    params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    if model in ("mlp", "linear") and params > MAX_FLOATS:
        raise ConfigError("student", f"expected a student of at most {MAX_FLOATS} parameters (1 GiB), got a "
                          f"{model} of {params} ({4 * params / 2**30:.3g} GiB per copy, one per checkpoint) "
                          f"for task dim {dim} and hidden {list(hidden)}")
    if test_points * dim > MAX_FLOATS:
        raise ConfigError("judge.test_points", f"expected a test set of at most {MAX_FLOATS} numbers (1 GiB), got "
                          f"{test_points} points of dim {dim}")


def check_square_images(dim: int) -> int:
    """The side of the square single-channel images a ``cnn`` student reads as flat
    vectors of ``dim = side^2`` (side >= 4); anything else is a config error."""
    side = math.isqrt(dim)
    if side * side != dim or side < 4:
        raise ConfigError("student.model", f"expected a task whose inputs are square images (dim = side^2, "
                          f"side >= 4) for model 'cnn', got dim = {dim}")
    return side
