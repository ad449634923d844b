"""Config: load a TOML experiment, check every key before work starts, expand to episodes.

The resolved config (defaults filled in) is what gets written to ``config.toml`` and
hashed into episode keys. Each error names the dotted field, what was expected and
what came.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from . import registry
from .errors import ConfigError, TeachsimError
from .platform import judge_params as judge_mod
from .platform.spec import EpisodeSpec
from .schema import Choice, Float, Int, IntList, Param, Str, resolve, suggest, unknown_key

TOP = ("name", "description", "seeds", "budgets", "time_limit", "task", "student", "judge", "protocols", "sweep",
       "report", "interactions")

REPORT_PARAMS: dict[str, Param] = {
    "target": Float(0.9, lo=0.0, hi=1.0, doc="target of the budget-to tables and the dimension-sweep plot"),
    "metric": Choice("strong_robust_acc", judge_mod.METRICS,
                     doc="metric of the dimension-sweep plot (budget to reach the target)"),
}

RATIOS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95]


def _ratios(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and 0 <= r <= 1 for r in v)


INTERACTIONS_PARAMS: dict[str, Param] = {
    "points": Int(30, lo=1, hi=10_000, doc="correctly classified test points profiled per episode"),
    "samples": Int(50, lo=1, hi=100_000, doc="contexts per point, order and pair"),
    "pairs": Int(20, lo=1, hi=10_000, doc="player pairs (adjacent cells on images)"),
    "ratios": Param(list(RATIOS), "a non-empty list of order ratios in [0, 1]", _ratios,
                    "order ratios r; order m = int(r (n - 2))", lambda v: [float(r) for r in v]),
    "low": Float(0.3, lo=0.0, hi=1.0, doc="orders with r <= low form the low band of the findings"),
    "high": Float(0.7, lo=0.0, hi=1.0, doc="orders with r >= high form the high band of the findings"),
}

STUDENT_PARAMS: dict[str, Param] = {
    "model": Str("mlp", doc="mlp | linear | cnn (registered models)"),
    "hidden": IntList([100], lo=1, doc="hidden layer widths of the mlp"),
    "init_std": Float(0.0, lo=0.0, doc="std of the first layer's normal init; 0 = PyTorch's default init"),
    "method": Str("erm", doc="learning method (teachsim list methods)"),
    "initial_labels": Int(200, lo=0, doc="passive labels before the protocol starts; free, reported apart"),
    "steps": Int(200, lo=0, doc="optimiser steps each time the student learns"),
    "optimizer": Choice("adam", ("adam", "sgd"), doc="adam, or sgd (plain gradient descent)"),
    "lr": Float(0.01, lo=0.0, doc="learning rate"),
    "batch_size": Int(128, lo=1, doc="mini-batch size"),
    "weight_decay": Float(0.0, lo=0.0, doc="weight decay"),
    "invariance_scale": Float(2.0, lo=0.0, doc="std of the augmentation along directions a teacher "
                              "states its label ignores (an invariance explanation)"),
    "invariance_penalty": Float(1.0, lo=0.0, doc="weight of the input-gradient penalty along those directions"),
}
SWEEPABLE = ("task", "student", "judge")




@dataclass(frozen=True)
class Experiment:
    """A resolved experiment: the config with defaults, and its episodes."""

    config: dict[str, Any]
    episodes: tuple[EpisodeSpec, ...]

    @property
    def name(self) -> str:
        return self.config["name"]


def load(source: str | Path | Mapping[str, Any]) -> Experiment:
    """Read and resolve a config from a TOML file path or a dict."""
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError("config", f"expected a TOML file, got {str(path)!r} (no such file)")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"expected valid TOML in {path}, got a syntax error: {exc}") from None
        raw.setdefault("name", path.stem)
    return resolve_experiment(raw)


def _safe_name(name: Any) -> bool:
    """True for an experiment name that is one plain folder name on every OS: ``..``, ``.``,
    hidden names and separators would put results outside ``runs/`` (``name = ".."`` once
    overwrote the user's own config.toml)."""
    return (isinstance(name, str) and 0 < len(name) <= 100 and not name.startswith((".", "-"))
            and not any(ch in name for ch in "/\\:") and all(ch.isprintable() for ch in name)
            and name.strip() == name)


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError.expected(key, "a table", value)
    return value


def _plugin_table(raw: Mapping[str, Any], where: str, reg: registry.Registry, default: str | None,
                  base: Mapping[str, Param] | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    name = raw.get("name", default)
    if name is None:
        raise ConfigError(f"{where}.name", f"missing; expected one of {', '.join(reg.names())}")
    if not isinstance(name, str):
        raise ConfigError.expected(f"{where}.name", "a string", name)
    entry = reg.get(name, f"{where}.name")
    schema = {**(base or {}), **entry.params}
    body = {k: v for k, v in raw.items() if k != "name"}
    try:
        return {"name": reg.canonical(name), **resolve(schema, body, where, ignore=extra)}
    except ConfigError as exc:
        if "name" in raw or not exc.field.startswith(f"{where}."):
            raise
        # a forgotten name makes the default's schema judge keys meant for another plugin
        raise ConfigError(exc.field, f"{exc.detail} ({where}.name is not given, so these are the "
                          f"default {name!r}'s keys; set {where}.name)") from None


def resolve_student(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check the ``[student]`` table; the method's own parameters live in it too."""
    method = raw.get("method", "erm")
    if not isinstance(method, str):
        raise ConfigError.expected("student.method", "a string", method)
    entry = registry.methods.get(method, "student.method")
    out = resolve({**STUDENT_PARAMS, **entry.params}, raw, "student")
    out["method"] = registry.methods.canonical(method, "student.method")
    out["model"] = registry.models.canonical(out["model"], "student.model")
    return out


def resolve_judge(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check the ``[judge]`` table."""
    out = resolve(judge_mod.PARAMS, raw, "judge")
    known = [n for n in registry.attacks.names() if n != "teacher"]
    for i, name in enumerate(out["attacks"]):
        if name not in known:
            raise ConfigError(f"judge.attacks[{i}]", f"expected an l_p attack{suggest(name, known)} "
                              f"({', '.join(known)}), got {name!r}")
    for i, attacks in enumerate(out["attack_sets"]):
        for j, name in enumerate(attacks):
            if name not in known:
                raise ConfigError(f"judge.attack_sets[{i}][{j}]", f"expected an l_p attack"
                                  f"{suggest(name, known)} ({', '.join(known)}), got {name!r}")
        if attacks in out["attack_sets"][:i]:
            raise ConfigError(f"judge.attack_sets[{i}]", f"expected distinct attack sets, got {attacks!r} twice")
    defaults = {k: judge_mod.PARAMS[k].default for k in judge_mod.ATTACK_OPTIONS}
    for key in judge_mod.ATTACK_OPTIONS:
        if key not in raw or out[key] == defaults[key]:
            continue   # the default changes nothing for an attack that does not take it
        for name in dict.fromkeys(out["attacks"] + [a for s in out["attack_sets"] for a in s]):
            takes = judge_mod.attack_options(name)
            if key not in takes and key not in judge_mod.FIXED_BY_DEFINITION.get(name, ()):
                raise ConfigError(f"judge.{key}", f"attack {name!r} does not take {key!r} (it takes: "
                                  f"{', '.join(takes) or 'none of steps, restarts, loss'}), so {key} = "
                                  f"{out[key]!r} would be ignored for it; remove judge.{key} or {name!r}")
    if not out["attack_sets"]:
        # absent rather than []: episode keys and config.toml stay as they were before the key
        del out["attack_sets"]
    for key, default in judge_mod.OPTIONAL.items():   # the same for keys added later
        if out.get(key) == default:
            del out[key]
    return out


PROTOCOL_EXTRA = ("label", "student")
"""Keys of a ``[[protocols]]`` entry that are not the protocol's own parameters: its legend
``label``, and ``student``, a table of ``[student]`` keys this protocol's episodes override
(``student = { method = "pgd-at" }`` reads "passive data, adversarially trained")."""


def _protocol_params(p: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol constructor's keyword arguments from a resolved ``[[protocols]]`` entry."""
    return {k: v for k, v in p.items() if k not in ("name", *PROTOCOL_EXTRA)}


def resolve_report(raw: Any) -> dict[str, Any] | None:
    """Check the optional ``[report]`` table (how the report reads the results; not part of
    any episode's key). Absent stays absent, so config.toml of older runs is unchanged."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError.expected("report", "a table", raw)
    return resolve(REPORT_PARAMS, raw, "report")


def resolve_interactions(raw: Any) -> dict[str, Any] | None:
    """Check the optional ``[interactions]`` table: after its episodes, a run profiles every
    finished one's student at the final budget (not part of any episode's key: adding or
    changing it re-profiles, never re-runs)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError.expected("interactions", "a table", raw)
    out = resolve(INTERACTIONS_PARAMS, raw, "interactions")
    if out["low"] >= out["high"]:
        raise ConfigError("interactions.low", f"expected low < high, got low = {out['low']:g} and "
                          f"high = {out['high']:g}")
    for band, pick in (("low", lambda r: r <= out["low"]), ("high", lambda r: r >= out["high"])):
        if not any(pick(r) for r in out["ratios"]):
            raise ConfigError("interactions.ratios", f"expected at least one ratio in the {band} band "
                              f"({'<=' if band == 'low' else '>='} {out[band]:g}), got {out['ratios']}")
    return out


def _protocol_label(p: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    if p.get("label"):
        return p["label"]
    opts = [f"{k}={v}" for k, v in _protocol_params(p).items() if defaults.get(k) != v]
    opts += [f"student.{k}={v}" for k, v in p.get("student", {}).items()]
    return p["name"] + (f"({', '.join(opts)})" if opts else "")


def _try_build(factory: Any, params: Mapping[str, Any], where: str) -> None:
    # Build the protocol once here, so that what only its constructor can check (a
    # strategy's parameters, a plugin's own rules) is a config error before anything runs.
    try:
        factory(**params)
    except ConfigError as exc:
        field = exc.field if exc.field.startswith(where) else f"{where}.{exc.field}"
        raise ConfigError(field, exc.detail) from None
    except Exception as exc:
        raise ConfigError(where, f"expected settings the protocol accepts; building it raised "
                          f"{type(exc).__name__}: {exc}") from None


def resolve_protocols(raw: Any) -> list[dict[str, Any]]:
    """Check the ``[[protocols]]`` array; labels must be unique."""
    if raw is None:
        raw = [{"name": "passive"}]
    if not isinstance(raw, list) or not raw or not all(isinstance(p, dict) for p in raw):
        raise ConfigError.expected("protocols", "a non-empty array of tables ([[protocols]])", raw)
    out, seen, settings = [], {}, {}
    for i, p in enumerate(raw):
        where = f"protocols[{i}]"
        label = p.get("label")
        if label is not None and (not isinstance(label, str) or not label):
            raise ConfigError.expected(f"{where}.label", "a non-empty string", label)
        student = p.get("student", {})
        if not isinstance(student, dict):
            raise ConfigError.expected(f"{where}.student", "a table of [student] keys to override", student)
        if "method" in student and not isinstance(student["method"], str):
            raise ConfigError.expected(f"{where}.student.method", "a string", student["method"])
        res = _plugin_table(p, where, registry.protocols, None, extra=PROTOCOL_EXTRA)
        _try_build(registry.protocols.get(res["name"]).factory, _protocol_params(res), where)
        if student:
            res["student"] = dict(student)
        defaults = {k: prm.default for k, prm in registry.protocols.get(res["name"]).params.items()}
        res["label"] = _protocol_label(res, defaults)
        if res["label"] in seen:
            raise ConfigError(f"{where}.label", f"expected a label unique in the experiment, got {res['label']!r} "
                              f"again (protocols[{seen[res['label']]}] has it); set label = \"...\"")
        seen[res["label"]] = i
        # The label is not part of an episode's key: two entries alike in all else would share
        # keys, and the second would overwrite the first's results.
        same = _key({k: v for k, v in res.items() if k != "label"})
        if same in settings:
            raise ConfigError(where, f"expected settings different from protocols[{settings[same]}] "
                              "(only the label differs, so their episodes would be identical)")
        settings[same] = i
        out.append(res)
    return out


def check_time_limit(field: str, value: Any) -> float | None:
    """Seconds one episode may take (a number > 0), or None for no limit. Not part of any
    episode key: it decides whether an episode is stopped, never what it computes."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError.expected(field, "a number of seconds > 0", value)
    return float(value)


MAX_SEED = 2**63 - 1
MAX_BUDGET = 10**15


def _numbers(raw: Mapping[str, Any], key: str, default: list, *, integer: bool) -> list:
    value = raw.get(key, default)
    # upper bounds: the store keeps seeds as SQLite integers (signed 64-bit) and budgets
    # as numbers; a larger value would be computed and then fail to be recorded
    top = MAX_SEED if integer else MAX_BUDGET
    kind = f"integers from 0 to {top}" if integer else f"numbers from 0 to {top:.0e}"
    ok = isinstance(value, list) and value and all(
        (isinstance(v, int) or (not integer and isinstance(v, float) and math.isfinite(v)))
        and not isinstance(v, bool) and 0 <= v <= top for v in value)
    if not ok:
        raise ConfigError.expected(key, f"a non-empty list of {kind}", value)
    if len(set(value)) != len(value):
        raise ConfigError.expected(key, "a list without repeats", value)
    if key == "budgets" and list(value) != sorted(value):
        raise ConfigError.expected(key, "an increasing list", value)
    return list(value)


def _set_path(cfg: dict[str, Any], path: str, value: Any) -> None:
    table, _, key = path.partition(".")
    cfg.setdefault(table, {})[key] = value


def _resolve_sweep(raw: Any) -> dict[str, list]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError.expected("sweep", "a table of dotted keys to lists", raw)
    for path, values in raw.items():
        table, dot, key = path.partition(".")
        if not dot or table not in SWEEPABLE or not key or "." in key:
            raise ConfigError(f"sweep.{path}", "expected a dotted key into "
                              f"{', '.join(SWEEPABLE)} such as \"task.dim\"")
        if key == "name":
            raise ConfigError(f"sweep.{path}", "expected a parameter, not the plugin name")
        if not isinstance(values, list) or not values:
            raise ConfigError.expected(f"sweep.{path}", "a non-empty list of values", values)
    return dict(raw)


def _key(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rejected(call: Callable[[], Any]) -> Any:
    """``call()``, with what a task raises about its parameters as a :class:`ConfigError`
    on ``task`` (a plugin's own ConfigError keeps its field; one without a field gets
    ``task``)."""
    try:
        return call()
    except ConfigError as exc:
        if exc.field:
            raise
        raise ConfigError("task", exc.detail) from None
    except TeachsimError:
        raise
    except Exception as exc:
        raise ConfigError("task", f"the task rejected its parameters: {type(exc).__name__}: {exc}") from None


def check_task_params(task: Mapping[str, Any]) -> tuple[int, int] | None:
    """Run the task's registered ``check(**params)`` on a resolved ``[task]`` table; its
    ``(dim, classes)``, or None where the task registered no check."""
    entry = registry.tasks.get(task["name"])
    if entry.checker is None:
        return None
    params = {k: v for k, v in task.items() if k != "name"}
    return _rejected(lambda: entry.checker(**params))


def _validate_task(task: Mapping[str, Any], student: Mapping[str, Any] | None = None,
                   test_points: int | None = None) -> None:
    # Cross-field rules (manifold_dim <= dim, a cnn needs square images, ...) without
    # building anything where the task was registered with a ``check``: checking a config
    # never trains a teacher or imports torch. A task without one is built once.
    shape = check_task_params(task)
    built = None
    if shape is None:
        from .platform.build import build_task   # the same build (and box check) an episode makes

        built = _rejected(lambda: build_task(task, 0))
    if student is None:
        return
    dim, classes = shape if shape is not None else (built.dim, built.classes)
    from .agents.rules import check_size

    check_size(dim, classes, list(student["hidden"]), student["model"], test_points or 0)
    if student["model"] == "cnn":   # the one built-in model with a rule of its own, checked without torch
        from .agents.rules import check_square_images

        check_square_images(dim)
        return
    entry = registry.models.get(student["model"], "student.model")
    module = entry.target.partition(":")[0] if isinstance(entry.target, str) else entry.target.__module__
    if module == "teachsim.agents.models":   # the other built-ins (mlp, linear) take any shape
        return
    import torch   # a plugin model: only building it can tell

    entry.factory(dim, classes, hidden=list(student["hidden"]), init_std=student["init_std"],
                  generator=torch.Generator().manual_seed(0))


def resolve_experiment(raw: Mapping[str, Any]) -> Experiment:
    """Resolve a raw config dict into an :class:`Experiment` (every key checked)."""
    if not isinstance(raw, Mapping):
        raise ConfigError.expected("config", "a table", raw)
    for key in raw:
        if key not in TOP:
            raise unknown_key("", key, TOP)
    name = raw.get("name", "experiment")
    if not _safe_name(name):
        raise ConfigError.expected("name", "a safe file name (1-100 characters, no path separators, NUL, "
                                   "control characters, leading '.' or '-'; it names the folder under runs/)", name)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError.expected("description", "a string", description)
    seeds = _numbers(raw, "seeds", [0, 1, 2], integer=True)
    budgets = _numbers(raw, "budgets", [0, 25, 50, 100, 200, 400], integer=False)
    limit = check_time_limit("time_limit", raw.get("time_limit"))
    sweep = _resolve_sweep(raw.get("sweep"))
    protocols = resolve_protocols(raw.get("protocols"))

    base = {"task": _table(raw, "task"), "student": _table(raw, "student"), "judge": _table(raw, "judge")}
    if not isinstance(base["task"].get("name", "hidden-feature"), str):
        raise ConfigError.expected("task.name", "a string", base["task"]["name"])

    def resolved(tables: Mapping[str, Any]) -> dict[str, Any]:
        out = {"task": _plugin_table(tables["task"], "task", registry.tasks, "hidden-feature"),
               "student": resolve_student(tables["student"]),
               "judge": resolve_judge(tables["judge"])}
        # each protocol's student: the [student] table with that protocol's overrides
        out["students"] = []
        for i, proto in enumerate(protocols):
            if not proto.get("student"):
                out["students"].append(out["student"])
                continue
            try:
                student = resolve_student({**tables["student"], **proto["student"]})
                _validate_task(out["task"], student, out["judge"]["test_points"])
            except ConfigError as exc:
                field = exc.field.replace("student", f"protocols[{i}].student", 1)
                raise ConfigError(field, exc.detail) from None
            out["students"].append(student)
        return out

    plain = resolved(base)
    _validate_task(plain["task"], plain["student"], plain["judge"]["test_points"])
    variants: list[tuple[str, dict[str, Any]]] = []
    keys = list(sweep)
    for combo in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
        tables = copy.deepcopy(base)
        for path, value in zip(keys, combo):
            _set_path(tables, path, value)
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, combo))
        try:
            res = resolved(tables)
            _validate_task(res["task"], res["student"], res["judge"]["test_points"])
        except ConfigError as exc:
            path = next((p for p in keys if exc.field.startswith(p)), None)
            if path is not None:
                raise ConfigError(f"sweep.{path}", exc.detail) from None
            # a cross-field rule broken only by this combination (e.g. manifold_dim > a swept dim)
            raise ConfigError(exc.field, f"{exc.detail} (in the sweep variant {label})") from None
        twin = next((other for other, r in variants if r == res), None)
        if twin is not None:
            raise ConfigError("sweep", f"expected variants that differ, got {label!r} resolving to the "
                              f"same config as {twin!r} (their episodes would share keys)")
        variants.append((label, res))

    config = {"name": name, "description": description, "seeds": seeds, "budgets": budgets,
              **{k: v for k, v in plain.items() if k != "students"}, "protocols": protocols}
    if limit is not None:   # absent when unset: older run directories' config.toml stays the same
        config["time_limit"] = limit
    report = resolve_report(raw.get("report"))
    if report is not None:
        config["report"] = report
    interactions = resolve_interactions(raw.get("interactions"))
    if interactions is not None:
        config["interactions"] = interactions
    if sweep:
        config["sweep"] = sweep
    episodes = []
    for label, res in variants:
        for proto, student in zip(protocols, res["students"]):
            pcfg = {k: v for k, v in proto.items() if k not in PROTOCOL_EXTRA}
            for seed in seeds:
                payload = {"task": res["task"], "student": student, "judge": res["judge"],
                           "protocol": pcfg, "budgets": budgets, "seed": seed}
                episodes.append(EpisodeSpec(_key(payload), name, proto["label"], label, seed,
                                            tuple(float(b) for b in budgets), res["task"], student,
                                            pcfg, res["judge"]))
    return Experiment(config, tuple(episodes))


def to_toml(config: Mapping[str, Any]) -> str:
    """The resolved config as TOML text."""
    import tomli_w

    return tomli_w.dumps(dict(config))
