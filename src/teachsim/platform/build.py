"""Building an episode's parts from its resolved config: the task, the student's model,
the student and the protocol, each through the registry."""

from __future__ import annotations

from typing import Any, Mapping

from .. import registry, seeding
from ..protocols.base import Protocol


def build_task(task_cfg: Mapping[str, Any], seed: int):
    """The task of an episode (its mechanism is seeded by the episode seed), its boxes
    checked and made per-feature arrays (:func:`teachsim.tasks.base.settle_boxes`)."""
    from ..tasks.base import settle_boxes

    params = {k: v for k, v in task_cfg.items() if k != "name"}
    return settle_boxes(registry.tasks.get(task_cfg["name"]).factory(seed, **params))


def build_model(student_cfg: Mapping[str, Any], task, seed: int):
    """The student's torch model, initialised from the episode seed."""
    factory = registry.models.get(student_cfg["model"]).factory
    return factory(task.dim, task.classes, hidden=list(student_cfg["hidden"]),
                   init_std=student_cfg["init_std"], generator=seeding.torch_generator(seed, "student", "init"))


def build_student(student_cfg: Mapping[str, Any], task, seed: int):
    """A fresh student: model, method and the data distribution, never the mechanism."""
    from ..agents.student import Student

    entry = registry.methods.get(student_cfg["method"])
    method_params = {k: v for k, v in student_cfg.items() if k in entry.params}
    return Student(build_model(student_cfg, task, seed), entry.factory, task.data, task.classes, seed=seed,
                   steps=student_cfg["steps"], lr=student_cfg["lr"], batch_size=student_cfg["batch_size"],
                   weight_decay=student_cfg["weight_decay"], method_params=method_params,
                   invariance_scale=student_cfg["invariance_scale"],
                   invariance_penalty=student_cfg["invariance_penalty"], optimizer=student_cfg["optimizer"])


def build_protocol(protocol_cfg: Mapping[str, Any]) -> Protocol:
    params = {k: v for k, v in protocol_cfg.items() if k != "name"}
    return registry.protocols.get(protocol_cfg["name"]).factory(**params)
