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


def check_square_images(dim: int) -> int:
    """The side of the square single-channel images a ``cnn`` student reads as flat
    vectors of ``dim = side^2`` (side >= 4); anything else is a config error."""
    side = math.isqrt(dim)
    if side * side != dim or side < 4:
        raise ConfigError("student.model", f"expected a task whose inputs are square images (dim = side^2, "
                          f"side >= 4) for model 'cnn', got dim = {dim}")
    return side
