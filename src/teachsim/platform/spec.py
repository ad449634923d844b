"""An episode's specification: plain, picklable data (no live objects), what travels to a
worker and is stored with the episode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything one episode needs, as plain picklable data (no live objects)."""

    key: str
    experiment: str
    label: str                    # the protocol entry's legend label, unique within the experiment
    variant: str                  # sweep values, "" without a sweep
    seed: int
    budgets: tuple[float, ...]
    task: Mapping[str, Any]
    student: Mapping[str, Any]
    protocol_cfg: Mapping[str, Any]   # the resolved [[protocols]] entry (name and parameters)
    judge: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, stored with the episode (the label under ``"protocol"``, as
        run directories have always stored it)."""
        return {"key": self.key, "experiment": self.experiment, "protocol": self.label,
                "variant": self.variant, "seed": self.seed, "budgets": list(self.budgets),
                "task": dict(self.task), "student": dict(self.student),
                "protocol_cfg": dict(self.protocol_cfg), "judge": dict(self.judge)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EpisodeSpec":
        """Inverse of :meth:`as_dict`."""
        return cls(d["key"], d["experiment"], d["protocol"], d["variant"], int(d["seed"]),
                   tuple(d["budgets"]), d["task"], d["student"], d["protocol_cfg"], d["judge"])
