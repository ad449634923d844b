"""One small registry type, used for tasks, protocols, strategies, methods, models, attacks.

Built-ins are registered by ``"module:attr"`` strings so that ``import teachsim`` imports
neither torch nor any implementation module; an entry is loaded the first time it is
used. A factory may carry ``PARAMS`` (a dict of :class:`teachsim.schema.Param`) that
the config loader checks user tables against.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError, PluginError
from .schema import Param, suggest


class TeachsimWarning(UserWarning):
    """Warnings teachsim emits (never printed directly)."""


_importing = threading.RLock()


def imported(module: str) -> Any:
    """``importlib.import_module(module)``, one thread at a time: how teachsim imports a
    heavy dependency (modAL, scikit-learn, scipy) where it is used, which keeps ``import
    teachsim`` light.

    A cohort's episodes are threads of one process, and CPython's per-module import locks
    let two threads that import a package with an import cycle (scikit-learn) for the
    first time at once fail with "partially initialized module" or ``_DeadlockError``
    (seen: an ``entropy`` and a ``qbc`` episode starting together in a Ray worker's
    cohort, the first of each recorded failed). Imported through here, the second waits.
    A plugin that imports such a package inside a function should do the same; not at
    module level (a thread holding a module's import lock while it waits here could
    deadlock with one importing through here)."""
    with _importing:
        return importlib.import_module(module)


def _load(ref: str, name: str) -> Any:
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot load {name!r} from {module}:{attr}: {exc}") from exc


@dataclass
class Entry:
    """A registered name: its factory (or a lazy ``"module:attr"``), its parameters and,
    optionally, a check of them that builds nothing.

    ``declared`` (the parameter table) and ``check`` may be lazy ``"module:attr"`` strings
    too: the built-ins point them at torch-free modules (``tasks/rules.py``,
    ``agents/rules.py``), so that checking a config imports no implementation.
    """

    name: str
    target: Callable[..., Any] | str
    declared: dict[str, Param] | str | None = field(default=None, repr=False)   # given at registration
    check: Callable[..., Any] | str | None = field(default=None, repr=False)
    version: int = 1   # behaviour version: bump it when results would change (names carry it: "passive@2")
    _params: dict[str, Param] | None = field(default=None, init=False, repr=False)

    @property
    def factory(self) -> Callable[..., Any]:
        """The callable, importing it on first use."""
        if isinstance(self.target, str):
            self.target = _load(self.target, self.name)
        return self.target

    @property
    def checker(self) -> Callable[..., Any] | None:
        """The check given at registration (``check(**params)`` raises ConfigError or
        returns what it found, for a task ``(dim, classes)``), or ``None``."""
        if isinstance(self.check, str):
            self.check = _load(self.check, self.name)
        return self.check

    @property
    def params(self) -> dict[str, Param]:
        """Declared parameters: the ones given at registration, else ``factory.PARAMS``."""
        if self._params is None:
            declared = _load(self.declared, self.name) if isinstance(self.declared, str) else self.declared
            table = declared if declared is not None else getattr(self.factory, "PARAMS", {})
            lazy = isinstance(self.declared, str) or isinstance(self.target, str)   # else checked at register()
            self._params = check_params(repr(self.name), table) if lazy else dict(table)
        return self._params

    @property
    def summary(self) -> str:
        """The first paragraph of the factory's docstring, on one line."""
        doc = (getattr(self.factory, "__doc__", None) or "").strip()
        return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())


class Registry:
    """Names to factories for one kind of plugin.

    Example:
        >>> r = Registry("colour")
        >>> r.register("red", lambda: "#f00")
        >>> r.make("red")
        '#f00'
        >>> r.get("rde")
        Traceback (most recent call last):
        ...
        teachsim.errors.ConfigError: colour: unknown colour 'rde' (did you mean 'red'?); known: red
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Callable[..., Any] | str, *,
                 params: dict[str, Param] | str | None = None,
                 check: Callable[..., Any] | str | None = None, version: int | None = None) -> None:
        """Add ``name``; a later registration of the same name replaces it with a warning.
        ``params`` overrides ``target.PARAMS``; ``check`` (tasks) checks parameters
        together without building anything (else checking a config builds the task once).
        ``version`` (default: a callable ``target``'s ``VERSION``, else 1; a lazy
        ``"module:attr"`` is not imported to read it) is the behaviour version: a name
        whose version is not 1 is stored as ``"name@version"`` in configs and episode keys,
        so results of one version are never resumed or extended by another."""
        if not isinstance(name, str) or not name or "@" in name:
            raise PluginError(f"a {self.kind} name must be a non-empty string without '@', got {name!r}")
        if version is None:
            version = 1 if isinstance(target, str) else getattr(target, "VERSION", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise PluginError(f"{self.kind} {name!r}: expected a version that is an integer >= 1, got {version!r}")
        if not (callable(target) or (isinstance(target, str) and ":" in target)):
            raise PluginError(f"{self.kind} {name!r}: expected a callable or 'module:attr', got {target!r}")
        if callable(target) and not isinstance(params, str):   # a plugin's table: checked as it loads
            check_params(f"{self.kind} {name!r}", params if params is not None else getattr(target, "PARAMS", {}))
        if name in self._entries:
            warnings.warn(f"{self.kind} {name!r} is registered again; the new one wins",
                          TeachsimWarning, stacklevel=2)
        self._entries[name] = Entry(name, target, params, check, version)

    def get(self, name: str, field_name: str | None = None) -> Entry:
        """The entry for ``name`` (or ``"name@version"``, which must be the registered
        version); an unknown name is a ConfigError naming ``field_name``."""
        base, version = name, None
        if isinstance(name, str) and "@" in name:
            base, _, tail = name.rpartition("@")
            if not tail.isdigit():
                raise ConfigError(field_name or self.kind, f"expected NAME or NAME@VERSION (an integer), "
                                  f"got {name!r}")
            version = int(tail)
        try:
            entry = self._entries[base]
        except (KeyError, TypeError):
            close = suggest(str(base), self.names())
            hint = "" if PLUGINS else PLUGIN_HINT
            raise ConfigError(field_name or self.kind,
                              f"unknown {self.kind} {name!r}{close}; known: {', '.join(self.names())}{hint}") from None
        if version is not None and version != entry.version:
            raise ConfigError(field_name or self.kind,
                              f"{self.kind} {base!r} installed here is version {entry.version}, the config "
                              f"asks for version {version}: results of the two are not comparable (install "
                              f"the version the run used, or start a new run directory)")
        return entry

    def canonical(self, name: str, field_name: str | None = None) -> str:
        """How ``name`` is stored in a resolved config and its episode keys: the bare name
        at version 1 (so keys stay what they always were), else ``"name@version"``."""
        entry = self.get(name, field_name)
        return entry.name if entry.version == 1 else f"{entry.name}@{entry.version}"

    def make(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory of ``name``."""
        return self.get(name).factory(*args, **kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and "@" in name:
            try:
                self.get(name)
            except ConfigError:
                return False
            return True
        return name in self._entries

    def entries(self) -> dict[str, Entry]:
        """A copy of name -> entry (changing it changes nothing here)."""
        return dict(self._entries)

    def add(self, entry: Entry) -> None:
        """Put ``entry`` under its name, replacing any, without a warning: for restoring
        a snapshot or installing what another process registered."""
        self._entries[entry.name] = entry

    def restore(self, entries: dict[str, Entry]) -> None:
        """Make the registry hold exactly ``entries`` (a snapshot from :meth:`entries`)."""
        self._entries = dict(entries)


tasks = Registry("task")
protocols = Registry("protocol")
strategies = Registry("strategy")
methods = Registry("method")
models = Registry("model")
attacks = Registry("attack")

for _name, _cls, _table in (("hidden-feature", "hidden_feature:HiddenFeature", "HIDDEN_FEATURE"),
                             ("spheres", "spheres:Spheres", "SPHERES"), ("digits", "digits:Digits", "DIGITS")):
    tasks.register(_name, f"teachsim.tasks.{_cls}", params=f"teachsim.tasks.rules:{_table}",
                   check=f"teachsim.tasks.rules:{_table.lower()}")
protocols.register("passive", "teachsim.protocols.passive:Passive")
protocols.register("active-student", "teachsim.protocols.active_student:ActiveStudent")
protocols.register("membership", "teachsim.protocols.membership:Membership")
protocols.register("active-teacher", "teachsim.protocols.active_teacher:ActiveTeacher")
for _name in ("random", "uncertainty", "margin", "entropy", "qbc", "density"):
    strategies.register(_name, f"teachsim.agents.strategies:{_name}")
methods.register("erm", "teachsim.agents.methods:erm", params={})
for _name, _attr in (("pgd-at", "pgd_at"), ("trades", "trades"), ("beta-at", "beta_at"), ("lrat", "lrat"),
                     ("gairat", "gairat"), ("mail", "mail")):
    methods.register(_name, f"teachsim.agents.methods:{_attr}", params=f"teachsim.agents.rules:{_attr.upper()}",
                     version=2 if _name == "trades" else 1)   # trades 2: a KL whose gradient stays finite
# version 2 (2026-12-05): trained through the stacked model (teachsim.agents.cohort), alone
# too, so episodes in a cohort train bit for bit as one by one; the arithmetic differs from
# version 1's F.linear at the last float digit
# mlp/linear 2: they train through the cohort's stacked model, alone too; 3: so do students
# holding an invariance explanation (augmentation and gradient penalty stacked), and odd
# batches are padded to a multiple of 16 rows inside it
models.register("mlp", "teachsim.agents.models:mlp", version=3)
models.register("linear", "teachsim.agents.models:linear", version=3)
models.register("cnn", "teachsim.agents.models:cnn")
attacks.register("fgsm", "teachsim.attacks.pgd:fgsm")
attacks.register("pgd", "teachsim.attacks.pgd:pgd")
attacks.register("apgd-ce", "teachsim.attacks.apgd:apgd_ce")
attacks.register("beta", "teachsim.attacks.beta:beta")
attacks.register("teacher", "teachsim.attacks.teacher:teacher_attack")

REGISTRIES = {r.kind: r for r in (tasks, protocols, strategies, methods, models, attacks)}


@contextlib.contextmanager
def scoped() -> Iterator[None]:
    """Registrations made inside the block (plugins loaded, ``register`` calls) are undone
    when it ends; what it replaced comes back.

    Example:
        >>> with scoped():
        ...     protocols.register("tmp", lambda: None)
        ...     "tmp" in protocols
        True
        >>> "tmp" in protocols
        False
    """
    saved = {kind: reg.entries() for kind, reg in REGISTRIES.items()}
    try:
        yield
    finally:
        for kind, reg in REGISTRIES.items():
            reg.restore(saved[kind])


def Registered(kind: str, default: str, doc: str = "") -> Param:
    """The name of a registered ``kind`` (``"strategy"``, ``"attack"``...), plugins included."""
    def ok(v: Any) -> bool:
        return isinstance(v, str) and v in REGISTRIES[kind]

    plural = "strategies" if kind == "strategy" else kind + "s"
    return Param(default, f"a registered {kind} (see: teachsim list {plural})", ok, doc, late=True)

PLUGINS: list[str] = []
"""Plugins loaded in this process, in order (file paths made absolute): what a Ray worker
loads before it runs an episode."""


def check_params(owner: str, table: Any) -> dict[str, Param]:
    """A parameter table as declared: names mapped to :class:`~teachsim.schema.Param`s."""
    if not isinstance(table, Mapping):
        raise PluginError(f"{owner}: PARAMS must be a dict of parameters, got {type(table).__name__}")
    for key, value in table.items():
        if not isinstance(value, Param):
            kind = {bool: "Bool", int: "Int", float: "Float", str: "Str"}.get(type(value), "Table")
            raise PluginError(f"{owner}: PARAMS[{key!r}] is {value!r}, expected a parameter from teachsim.schema "
                              f"such as {kind}({value!r}, doc=...)")
        if value.default is not None and not value.late and not value.ok(value.default):
            # the plugin's own default, said as it loads, never blamed on --param or a config;
            # a warning: a sentinel default ("" or 0 for "unset") may be meant
            warnings.warn(f"{owner}: the default of PARAMS[{key!r}] is {value.default!r}, which is not "
                          f"{value.expect} (the plugin's own default: a config that leaves {key} out gets it)",
                          TeachsimWarning, stacklevel=3)
    return dict(table)


PLUGIN_HINT = "; from a plugin? load it with --plugin FILE_OR_MODULE"

PROVIDED: dict[str, list[tuple[str, str]]] = {}
"""Plugin -> the (kind, name) entries it registered as it loaded."""

SOURCES: dict[str, tuple[str | None, str | None]] = {}
"""Plugin -> (the file it was read from, that file's SHA-256), taken as it loaded: the
file may be gone by the time a run records it (a ``ray job submit`` working directory
was once replaced under a running driver)."""


def _source(spec: str) -> tuple[str | None, str | None]:
    import hashlib
    import importlib.util
    import os

    if os.path.isfile(spec):
        path = spec
    else:
        try:
            path = getattr(importlib.util.find_spec(spec), "origin", None)
        except (ImportError, ValueError):
            path = None
    try:
        with open(path, "rb") as f:
            return path, hashlib.sha256(f.read()).hexdigest()
    except (OSError, TypeError):
        return path, None


def load_plugin(spec: str) -> None:
    """Import a plugin given as a ``.py`` file path or a dotted module name.

    The plugin registers what it provides with ``teachsim.register_*`` at import time. A
    file plugin's folder goes on ``sys.path``, so it may import sibling modules of its own.
    """
    import importlib.util
    import os
    import sys

    before = {(kind, name): entry for kind, reg in REGISTRIES.items() for name, entry in reg._entries.items()}
    try:
        if spec.endswith(".py") or os.path.sep in spec:
            if not os.path.isfile(spec):
                raise PluginError(f"--plugin: no such file {spec!r}")
            folder = os.path.dirname(os.path.abspath(spec))
            if folder not in sys.path:   # first, as for `python plugin.py`: its own helpers win
                sys.path.insert(0, folder)
            name = "teachsim_plugin_" + os.path.splitext(os.path.basename(spec))[0].replace("-", "_")
            module_spec = importlib.util.spec_from_file_location(name, spec)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
            spec = os.path.abspath(spec)
        else:
            importlib.import_module(spec)
        if spec not in PLUGINS:
            PLUGINS.append(spec)
        SOURCES[spec] = _source(spec)
    except PluginError:
        raise
    except Exception as exc:  # a plugin's own bug must still end in one clear line
        raise PluginError(f"--plugin {spec}: {type(exc).__name__}: {exc}") from exc
    provided = sorted((kind, name) for kind, reg in REGISTRIES.items()
                      for name, entry in reg._entries.items() if before.get((kind, name)) is not entry)
    if provided or spec not in PROVIDED:   # a module loaded again (a cache hit) keeps its record
        PROVIDED[spec] = provided


def plugin_records() -> list[dict[str, Any]]:
    """The plugins loaded in this process, as a run directory records them: the plugin (a
    file path or a module name), the file it was read from, that file's SHA-256, and what
    it provided."""
    out = []
    for spec in PLUGINS:
        path, digest = SOURCES[spec] if spec in SOURCES else _source(spec)
        provides: dict[str, list[str]] = {}
        for kind, name in PROVIDED.get(spec, []):
            provides.setdefault(kind, []).append(name)
        out.append({"plugin": spec, "file": path, "sha256": digest, "provides": provides})
    return out
