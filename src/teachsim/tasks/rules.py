"""What checking a config needs to know of the built-in tasks, without torch: their
parameter tables and the rules between parameters. The task classes use the same
tables and call the same checks, so the two cannot drift apart."""

from __future__ import annotations

from ..errors import ConfigError
from ..schema import Choice, Float, Int, Param

HIDDEN_FEATURE: dict[str, Param] = {
    "dim": Int(50, lo=1, doc="ambient dimension d"),
    "manifold_dim": Int(2, lo=1, doc="data dimension k (coordinates 0..k-1)"),
    "classes": Int(2, lo=2, doc="number of classes"),
    "gamma": Float(0.1, lo=0.0, doc="teacher abstains where its boundary distance is below this"),
    "off_std": Float(0.0, lo=0.0, doc="std of the off-manifold coordinates in the data"),
    "broad_std": Float(2.0, lo=0.0, doc="std of the off-manifold coordinates in the broad test distribution"),
    "teacher": Choice("linear", ("linear", "net"), doc="linear rule or a fixed small random network of z"),
}


def hidden_feature(*, dim: int = 50, manifold_dim: int = 2, classes: int = 2, teacher: str = "linear",
                   **_: object) -> tuple[int, int]:
    """Check hidden-feature's parameters together; returns ``(dim, classes)``."""
    if manifold_dim > dim:
        raise ConfigError("task.manifold_dim", f"expected at most task.dim = {dim}, got {manifold_dim}")
    if teacher == "linear" and classes > 2 and manifold_dim < 2:
        raise ConfigError("task.classes", "expected 2 when manifold_dim = 1 with a linear teacher "
                          f"(more classes need a plane to split), got {classes}")
    return dim, classes


SPHERES: dict[str, Param] = {
    "dim": Int(50, lo=2, doc="ambient dimension d"),
    "outer_radius": Float(1.3, above=1.0, doc="radius of the outer sphere (the inner one has radius 1)"),
    "gamma": Float(0.05, lo=0.0, doc="teacher abstains within this distance of the middle sphere"),
}


def spheres(*, dim: int = 50, outer_radius: float = 1.3, gamma: float = 0.05, **_: object) -> tuple[int, int]:
    """Check spheres' parameters together; returns ``(dim, classes)``."""
    if outer_radius <= 1.0:
        raise ConfigError.expected("task.outer_radius", "a number > 1 (the inner sphere has radius 1)",
                                   outer_radius)
    # with a little room: (1.3 - 1) / 2 is 0.15000000000000002 in floats, and a gamma of
    # exactly half the gap abstains on the data (float32 norms land on either side)
    if gamma >= (outer_radius - 1) / 2 * (1 - 1e-6):
        raise ConfigError("task.gamma", f"expected less than half the gap, {(outer_radius - 1) / 2:g} "
                          f"(else the teacher abstains on the data), got {gamma}")
    return dim, 2


DIGITS: dict[str, Param] = {
    "confidence": Float(0.8, lo=0.5, hi=0.999,
                        doc="teacher abstains where its top class probability is below this"),
    "broad_std": Float(0.3, lo=0.0, doc="std of the high-frequency noise of the broad distribution"),
    "test_share": Float(0.3, lo=0.05, hi=0.9, doc="share of the images held out for the judge"),
    "teacher_hidden": Int(32, lo=1, doc="width of the teacher network"),
    "teacher_steps": Int(300, lo=1, doc="training steps of the teacher network"),
}


def digits(**_: object) -> tuple[int, int]:
    """Digits' shape: scikit-learn's 8x8 images, 10 classes, whatever the parameters."""
    return 64, 10
