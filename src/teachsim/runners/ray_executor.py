"""The Ray executor: episodes on a pool of Ray actors, results streamed back as they finish.

Only this module imports ``ray`` (``import teachsim`` never does). The driver starts or
joins a Ray cluster, keeps one actor per worker (each loads the run's plugins once and
is reused for every episode it gets, so there is no process start per episode), hands
each idle worker the next episode, and yields ``(result, attempts)`` as results arrive;
the caller, in the driver, alone writes them.

Faults: an episode whose worker process dies (killed, out of memory, a crash) is
resubmitted to a fresh worker, up to :data:`LOST_RETRIES` times; an episode that returns
a failed result is rerun ``retries`` times, then yielded as failed. Either way every
attempt counts in ``attempts``.

GPUs: each worker holds ``gpus_per_episode`` of a GPU for its life (Ray's fractional
packing: 0.25 puts four workers on a GPU), runs its episodes on the GPU Ray assigned it,
with its CUDA memory capped to its share; without a usable CUDA device it runs on the
CPU. ``result.stats`` records ``device``, ``gpu_ids`` and ``worker_pid``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import ray
import ray.exceptions

from ..errors import ClusterLost, ConfigError, RunError
from ..platform.episode import EpisodeResult, now
from ..platform.spec import EpisodeSpec

LOST_RETRIES = 3
"""Resubmissions of an episode whose worker died under it alone, before it is recorded as
failed. A worker that dies running a cohort does not count against its episodes: which of
them killed it is unknown. From then on new workers run one episode at a time, so the one
that did dies alone, and the cohort workers left are finite: the retries end."""

HEALTH_S = 5.0     # how often the driver asks whether the cluster still has a live node
STOP_GRACE = 30.0  # seconds past the time limit before the driver stops a worker itself
_WAIT_S = 0.5   # ray.wait timeout: how often the driver wakes up (and can be interrupted)


def _same_file(path: str, data: bytes) -> bool:
    """Whether ``path`` is readable here and holds exactly ``data``."""
    try:
        return Path(path).read_bytes() == data
    except OSError:
        return False


class _Worker:
    """One reused worker process (a Ray actor). Takes the driver's user code once (plugins
    as source, registrations by value: a node need not read the driver's folders), then
    runs episodes."""

    def __init__(self, plugins: list[tuple[str, str, dict[str, bytes]]],
                 registrations: list[tuple[str, str, str, bytes]], gpu_share: float, cohort: int = 1,
                 cpus: float = 1.0):
        from ray import cloudpickle

        from .. import registry

        self.cohort = _cohort_of(cohort, judges=max(1, int(cpus)))   # one judge per CPU it holds

        self.node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
        # Best effort: a plugin or entry these episodes do not use must not stop the worker;
        # an episode that needs a missing one fails with "unknown ..." plus this note.
        self.problems: list[str] = []
        for spec, how, files in plugins:
            try:
                if how == "file" and not _same_file(spec, files[os.path.basename(spec)]):
                    # this node cannot read the plugin (or reads another version): its source,
                    # written where this worker can read it
                    here = tempfile.mkdtemp(prefix="teachsim-plugin-")
                    atexit.register(shutil.rmtree, here, True)
                    for fname, data in files.items():
                        os.makedirs(os.path.join(here, os.path.dirname(fname)), exist_ok=True)
                        with open(os.path.join(here, fname), "wb") as f:
                            f.write(data)
                    registry.load_plugin(os.path.join(here, os.path.basename(spec)))
                else:   # the same file is here (one machine, a shared folder): load it where it is
                    registry.load_plugin(spec)
            except Exception as exc:  # noqa: BLE001 - e.g. a package it imports is not installed here
                cause = exc.__cause__ or exc
                self.problems.append(f"plugin {spec} could not be loaded on node {self.node}: "
                                     f"{type(cause).__name__}: {cause}")
        for kind, name, source, blob in registrations:
            try:
                target, params, check, version = cloudpickle.loads(blob)
            except Exception as exc:  # noqa: BLE001 - e.g. a package the plugin imports is not installed here
                self.problems.append(f"{source} could not be loaded on node {self.node}: its {kind} {name!r}: "
                                     f"{type(exc).__name__}: {exc}")
            else:
                registry.REGISTRIES[kind].add(registry.Entry(name, target, params, check, version))
        from ..platform.episode import warm_up

        warm_up()   # imports now, before the driver's clock of any episode's time limit starts
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self.device = "cpu"
        if self.gpu_ids:
            import torch

            if torch.cuda.is_available():   # Ray set CUDA_VISIBLE_DEVICES to our GPU(s): it is cuda:0 here
                self.device = "cuda:0"
                if gpu_share < 1:
                    torch.cuda.set_per_process_memory_fraction(gpu_share, 0)

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "node": self.node, "gpu_ids": self.gpu_ids,
                "device": self.device, "problems": self.problems}

    def run(self, spec: EpisodeSpec, time_limit: float | None = None) -> EpisodeResult:
        from ..platform.episode import run_episode

        if self.cohort is None:
            result = run_episode(spec, device=self.device, limit=time_limit)
        else:   # one of the concurrent calls of a cohort actor (max_concurrency = cohort size)
            from ..agents.cohort import member

            with member(self.cohort):
                result = run_episode(spec, device=self.device)
        result.stats.update(gpu_ids=self.gpu_ids, worker_pid=os.getpid())
        if result.status != "finished" and self.problems:
            first, _, rest = result.error.partition("\n")
            result.error = f"{first} [{'; '.join(self.problems)}]\n{rest}"   # the first line says it too
        return result


_RemoteWorker = ray.remote(max_restarts=0, max_task_retries=0)(_Worker)


def _cohort_of(size: int, judges: int = 1):
    """A worker's cohort (None for one episode at a time). Its episodes run in threads of
    the worker: torch gets one thread first, so no episode restores another count."""
    if size <= 1:
        return None
    import torch

    from ..agents.cohort import Cohort

    torch.set_num_threads(1)
    return Cohort(judges)



LOOPBACK = "127.0.0.1"
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While an embedded Ray starts: keep every one of its servers on 127.0.0.1.

    On Linux a new local Ray takes the machine's outward address as its node address and
    its servers (GCS, raylet, agents, workers) listen on every interface, even with
    ``_node_ip_address="127.0.0.1"``: a run on a laptop would be reachable from its
    network. Ray's single-node mode (the one it uses on macOS and Windows) resolves the
    node address to loopback. It is read from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` twice:
    by the daemons started here (they inherit the environment) and by this process when
    Ray was imported, so the driver's flag is set for the start too. Both are restored
    afterwards, so joining a real cluster later in this process is unaffected; a user who
    set the variable keeps their value.
    """
    from ray._private import ray_constants   # private: no public switch exists for this

    if _SINGLE_NODE_ENV in os.environ:        # the user's explicit choice wins
        yield
        return
    was = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_NODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = was
        os.environ.pop(_SINGLE_NODE_ENV, None)


@dataclass
class _Item:
    spec: EpisodeSpec
    failures: int = 0    # attempts that returned a failed result
    losses: int = 0      # attempts whose worker died under it alone
    shared: int = 0      # attempts whose worker died running a cohort: not counted against it

    @property
    def attempts(self) -> int:
        return self.failures + self.losses + self.shared


class _Queue:
    """Episodes waiting for a worker, longest first as far as is known.

    The last episodes of a run decide when it ends: one long episode started last keeps a
    single worker busy while the others idle. So the queue first starts one episode of each
    group (protocol and task variant) to learn what a group costs, then hands out the
    episodes of the costliest groups first. Episodes to run again go first of all. A
    cohort worker's free slot takes a partner of the episodes it runs where one waits
    (:func:`teachsim.runners.cohort.partner`: the group's other seeds first), so that
    their students train as one.
    """

    def __init__(self, items: Iterable[_Item]):
        self.items = list(items)
        self.retry: collections.deque[_Item] = collections.deque()
        self.started: set[tuple[str, str]] = set()
        self.seconds: dict[tuple[str, str], list[float]] = {}

    def __len__(self) -> int:
        return len(self.items) + len(self.retry)

    @staticmethod
    def _group(item: _Item) -> tuple[str, str]:
        return item.spec.label, item.spec.variant

    def pop(self, live: Sequence[EpisodeSpec] = ()) -> _Item:
        """The next episode for a worker slot; ``live``: what that worker runs now."""
        if self.retry:
            return self.retry.popleft()
        if live:   # (a partner's group has started: its running seed was popped here)
            from .cohort import partner

            i = partner([item.spec for item in self.items], live)
            if i is not None:
                return self.items.pop(i)
        for i, item in enumerate(self.items):          # a group not started yet: learn its cost
            if self._group(item) not in self.started:
                self.started.add(self._group(item))
                return self.items.pop(i)
        known = {g: sum(s) / len(s) for g, s in self.seconds.items()}
        guess = sum(known.values()) / len(known) if known else 0.0
        i = max(range(len(self.items)), key=lambda i: known.get(self._group(self.items[i]), guess))
        return self.items.pop(i)                        # max keeps the first of equals: spec order

    def again(self, item: _Item) -> None:
        self.retry.append(item)

    def learn(self, item: _Item, result: EpisodeResult) -> None:
        if result.status == "finished":
            self.seconds.setdefault(self._group(item), []).append(result.seconds)


def _first_line(exc: BaseException, limit: int = 400) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_reachable(address: str, field: str) -> None:
    """A quick TCP check, so an unreachable cluster is one clear line, not a long hang."""
    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError.expected(field, "a Ray cluster address HOST:PORT (or ray://HOST:PORT, or auto)", address)
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
    except OSError as exc:
        raise ConfigError(field, f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc})") from None
    # Ray's GCS (and its client server) speak gRPC: an HTTP/2 server answers the connection
    # preface with a SETTINGS frame (type 4). Anything else is not Ray, and ray.init would
    # retry against it for minutes.
    head = b""
    with conn:
        try:
            conn.settimeout(5)
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            while len(head) < 4:
                chunk = conn.recv(4 - len(head))
                if not chunk:
                    break
                head += chunk
        except OSError:
            pass
    if len(head) < 4 or head[3] != 4:
        raise ConfigError(field, f"{address!r} does not answer like a Ray cluster (no gRPC server on that port)")


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Callable[[], list[str]]]:
    """Capture this process's file descriptor 2 (where Ray's C++ side logs) in a block.

    Yields a function that returns the captured lines (after the block).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    lines: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def _user_code() -> tuple[list[tuple[str, str, dict[str, bytes]]], list[tuple[str, str, str, bytes]], list[str]]:
    """The user code the workers need, sent with the job (nothing is read from a node's
    disk, so a node that cannot see the plugin's folder, any other machine of a cluster,
    runs it all the same):

    - plugins: ``(plugin, "file", files)``: a file plugin travels as source, the plugin
      file with the modules under its folder that it imported (its helpers, sub-packages
      with their ``__init__``), relative path -> bytes; the worker loads it where it is if
      it reads the very same file there, else from a copy. ``(plugin, "module", {})``: a
      module plugin (``--plugin pkg.mod``) is imported there by name (install it on every
      node);
    - registrations the driver's own code made (``teachsim.register_*`` in a script or a
      notebook), pickled by value: ``(kind, name, source, blob)``;
    - the problems met (what cannot be sent), for the run's output.
    """
    from ray import cloudpickle

    from .. import registry

    plugins, shipped = [], set()
    for spec in registry.PLUGINS:
        if not os.path.isfile(spec):
            plugins.append((spec, "module", {}))
            continue
        folder = os.path.dirname(spec)
        files = {os.path.basename(spec): Path(spec).read_bytes()}
        for mod in list(sys.modules.values()):   # its helpers: the modules under its folder it imported
            file = getattr(mod, "__file__", None)
            if not (file and os.path.isabs(file) and file.endswith(".py")):
                continue
            try:
                inside = os.path.commonpath([folder, file]) == folder
            except ValueError:
                inside = False
            if inside:
                rel = os.path.relpath(file, folder)
                files.setdefault(rel, Path(file).read_bytes())
                parent = os.path.dirname(rel)
                while parent:   # a sub-package's __init__ files travel with it
                    init = os.path.join(folder, parent, "__init__.py")
                    if os.path.isfile(init):
                        files.setdefault(os.path.join(parent, "__init__.py"), Path(init).read_bytes())
                    parent = os.path.dirname(parent)
        plugins.append((spec, "file", files))
    for entries in registry.PROVIDED.values():
        shipped |= set(entries)
    registrations, problems = [], []
    for kind, reg in registry.REGISTRIES.items():
        for name, entry in reg.entries().items():
            target = entry.target
            module = getattr(target, "__module__", "") or ""
            if isinstance(target, str) or module.split(".")[0] == "teachsim" or (kind, name) in shipped:
                continue
            try:
                blob = cloudpickle.dumps((target, entry.declared, entry.check, entry.version))
            except Exception as exc:  # noqa: BLE001 - the episodes that need it fail saying so
                problems.append(f"the {kind} {name!r} registered by the driver's own code cannot be sent to Ray "
                                f"workers ({type(exc).__name__}: {exc}); put it in a plugin file")
                continue
            registrations.append((kind, name, "the driver's own code", blob))
    return plugins, registrations, problems


class RayExecutor:
    """Runs episodes on Ray. Use as a context manager: :meth:`start`, :meth:`run`, :meth:`close`.

    Args:
        address: an existing cluster (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``);
            default: ``RAY_ADDRESS`` if set, else an embedded local Ray started here.
        workers: most episodes at once (default: as many as the cluster fits).
        cpus_per_episode: CPUs Ray reserves for each worker.
        gpus_per_episode: GPUs (or a fraction of one) Ray reserves for each worker.
        note: where to say one-line notes (what was started, capped or ignored).
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None, cpus_per_episode: float = 1.0,
                 gpus_per_episode: float = 0.0, note: Callable[[str], None] | None = None, cohort: int | str = 1):
        self.address, self.requested = address, workers
        self.auto = cohort == "auto"   # sized at start (runners.auto_cohort)
        # episodes each worker advances at once, their students trained together
        self.cohort = 1 if self.auto else cohort
        self.cpus, self.gpus = float(cpus_per_episode), float(gpus_per_episode)
        self.note = note or (lambda text: None)
        self.workers = 0
        self.room = 0                # workers the cluster fits (start)
        self.started_ray = False     # we called ray.init (and so call ray.shutdown)
        self.embedded = False        # ... and it started a local instance
        self._reaper = None          # the watcher that stops that instance if this process dies
        self.worker_info: list[dict[str, Any]] = []
        self.description = ""
        self._where = "the Ray this process had already started"

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, episodes: int) -> None:
        """Start or join Ray and size the worker pool for ``episodes`` episodes.

        Raises:
            ConfigError: the address cannot be reached, or an episode's resources do not
                fit the cluster (nothing has run).
        """
        if not ray.is_initialized():
            self._init()
        elif self.address:
            raise ConfigError("--address", "this process is already connected to a Ray instance; "
                              "leave --address out to use it, or call ray.shutdown() first")
        nodes = [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
                 for n in ray.nodes() if n.get("Alive")]
        cpus, gpus = sum(c for c, _ in nodes), sum(g for _, g in nodes)
        if self.gpus > 0 and gpus == 0:
            self.note("ray: no GPU in the cluster; episodes run on the CPU (--gpus-per-episode ignored)")
            self.gpus = 0.0
        # an episode's worker lives on one node: count what fits node by node
        fit = sum(min(math.floor(c / self.cpus + 1e-9), math.floor(g / self.gpus + 1e-9) if self.gpus else 1 << 30)
                  for c, g in nodes)
        if fit == 0:
            self.close()
            most_c, most_g = max((c for c, _ in nodes), default=0), max((g for _, g in nodes), default=0)
            if self.cpus > most_c:
                raise ConfigError("--cpus-per-episode", f"expected at most the {most_c:g} CPUs of the cluster's "
                                  f"largest node, got {self.cpus:g}")
            raise ConfigError("--gpus-per-episode", f"expected at most the {most_g:g} GPUs of the cluster's "
                              f"largest node, got {self.gpus:g}")
        want = self.requested or fit
        if self.requested and self.requested > fit:
            self.note(f"ray: --workers {self.requested}: the cluster fits {fit} episode(s) at once; using {fit}")
        if self.auto:
            from . import auto_cohort

            # resources asked per episode (other than 1 CPU, or a share of a GPU, or several)
            # are what each episode gets: one at a time. A cohort takes 1 CPU or 1 GPU per worker.
            alone = self.cpus != 1 or (self.gpus and self.gpus != 1)
            self.cohort = 1 if alone else auto_cohort(episodes, min(want, fit), "gpu" if self.gpus else "cpu")
        self.workers = max(1, min(want, fit, math.ceil(episodes / self.cohort)))
        self.room = min(want, fit)   # workers at most, one episode at a time each (cohorts stopped)
        where = "local Ray" if self.embedded else f"Ray cluster {self._where}"
        share = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        self.description = (f"ray: {self.workers} worker(s) x ({share}) on {where} "
                            f"({cpus:g} CPUs, {gpus:g} GPUs)"
                            + (f", each advancing a cohort of {self.cohort} episodes" if self.cohort > 1 else ""))

    def _init(self) -> None:
        import signal
        import threading

        main = threading.current_thread() is threading.main_thread()
        term = signal.getsignal(signal.SIGTERM) if main else None
        try:
            self._start_ray()
        finally:
            # ray.init sets SIGTERM to sys.exit(15): keep a handler already set (the command
            # line's, which stops the run as Ctrl-C does and prints how to resume it)
            if callable(term) and signal.getsignal(signal.SIGTERM) is not term:
                signal.signal(signal.SIGTERM, term)

    def _start_ray(self) -> None:
        # The driver writes the students with torch. Loaded after ray.init inside a `ray job
        # submit` entrypoint, torch's MKL failed to load ("Intel oneMKL FATAL ERROR: Cannot
        # load libtorch_cpu.so", then a segfault): load it before Ray starts its threads.
        import torch  # noqa: F401

        address = self.address or os.environ.get("RAY_ADDRESS") or None
        field = "--address" if self.address else "RAY_ADDRESS"
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address and address != "local":
            _check_reachable(address, field)
            with _stderr_captured() as said:
                try:
                    ray.init(address=address, **quiet)
                    error = None
                except Exception as exc:  # noqa: BLE001 - Ray raises many kinds here
                    error = exc
            if error is not None:
                # Ray's C++ client retries for ~20 s, a warning line a second; say it once.
                auth = [ln for ln in said() if "auth" in ln.lower()]
                why = auth[-1].split("RPC error:")[-1].strip() if auth else _first_line(error)
                raise ConfigError(field, f"cannot connect to the Ray cluster at {address!r}: {why}"
                                  + (" (set RAY_AUTH_TOKEN to the cluster's token)" if auth else "")) from None
            sys.stderr.write("".join(f"{ln}\n" for ln in said()))
            self._where = address
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            # Ray runs workers at nice 15 by default; here they are the run itself, and the
            # serial executor runs episodes at normal priority: so do they.
            os.environ.setdefault("RAY_worker_niceness", "0")
            # Ray (2.50+) turns token authentication on for a new local cluster and says so
            # in a warning on every start: keep the safe default, drop the notice.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            from . import reaper

            before = reaper.children(os.getpid())
            try:
                with _loopback_only():
                    ray.init(address="local", include_dashboard=False, _node_ip_address=LOOPBACK, **quiet)
            except Exception as exc:  # noqa: BLE001
                raise RunError(f"could not start a local Ray: {_first_line(exc)}") from None
            # stops what this Ray started if this process dies without ray.shutdown() (kill -9)
            self._reaper = reaper.watch(before)
            self.embedded = True
            self._where = "local"
        self.started_ray = True

    def close(self) -> None:
        """Disconnect from Ray, shutting down the local Ray if this executor started it."""
        if self.started_ray:
            self.started_ray = False
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001, S110 - best effort on the way out
                pass
        if self._reaper is not None:   # what ray.shutdown() left running, the watcher stops
            from .reaper import GRACE

            self._reaper.stdin.close()
            try:
                self._reaper.wait(GRACE + 5)
            except subprocess.TimeoutExpired:
                pass
            self._reaper = None

    # -- running -----------------------------------------------------------------------
    def _new_worker(self, plugins, registrations, cohort: int):
        return _RemoteWorker.options(num_cpus=self.cpus, num_gpus=self.gpus, max_concurrency=cohort).remote(
            plugins, registrations, min(1.0, self.gpus) if self.gpus else 1.0, cohort, self.cpus)

    def run(self, specs: Iterable[EpisodeSpec], *, retries: int = 0,
            time_limit: float | None = None) -> Iterator[tuple[EpisodeResult, int]]:
        """Yield ``(result, attempts)`` for every spec, in the order episodes finish.

        ``time_limit``: seconds an episode may take. The worker enforces it (the episode
        fails with ``EpisodeTimeout``, and ``retries`` apply as to any failure); one that has
        not answered :data:`STOP_GRACE` seconds later (stuck in native code) is stopped from
        here and recorded failed with ``EpisodeTimeout``, without a retry (its worker would
        only have to be stopped again)."""

        queue = _Queue(_Item(s) for s in specs)
        if not queue:
            return
        if not self.workers:
            self.start(len(queue))
        plugins, registrations, problems = _user_code()
        said = set(problems)
        for problem in problems:
            self.note(f"ray: {problem}")
        starting: dict[Any, Any] = {}        # ready ref -> actor
        running: dict[Any, tuple[Any, _Item]] = {}   # run ref -> (actor, item)
        since: dict[Any, tuple[float, str]] = {}     # run ref -> (monotonic start, ISO start)
        idle: list[Any] = []
        actors: list[Any] = []
        failed_starts = 0
        died_with: dict[Any, int] = {}      # dead actor -> episodes it was running
        size: dict[Any, int] = {}           # actor -> the cohort it advances (its slots)
        cohort = self.cohort                # 1 after a worker died running a cohort (LOST_RETRIES)
        if cohort > 1:
            from . import refuse_time_limit

            refuse_time_limit(time_limit)

        def spawn() -> None:
            actor = self._new_worker(plugins, registrations, cohort)
            actors.append(actor)
            size[actor] = cohort
            starting[actor.info.remote()] = actor

        def free(actor: Any) -> None:
            """One of ``actor``'s episodes ended: its slot is free again, unless it is gone, or
            it is a cohort worker left from before cohorts stopped: it takes no more episodes
            and, once it has none, is replaced by a worker that runs one at a time."""
            if actor not in actors:
                return
            if size[actor] <= cohort:
                idle.append(actor)
            elif not any(a is actor for a, _ in running.values()):
                retire(actor)
                spawn()

        def stop_cohorts() -> None:
            """From now on one episode at a time (LOST_RETRIES), on as many workers as fit:
            idle or starting cohort workers go now, busy ones once their episodes end (free)."""
            nonlocal cohort
            cohort = 1
            self.note("ray: a worker died running a cohort; its episodes are retried, from now on one at a time")
            for actor in [a for a in actors if not any(b is a for b, _ in running.values())]:
                for ready in [r for r, a in starting.items() if a is actor]:
                    del starting[ready]
                retire(actor)
            idle.clear()   # what is left is busy cohort workers: they take no more episodes
            while len(actors) < self.room:
                spawn()

        def dispatch() -> None:
            while idle and queue:
                actor = idle.pop()
                item = queue.pop([i.spec for a, i in running.values() if a is actor] if size[actor] > 1 else ())
                ref = actor.run.remote(item.spec, time_limit)
                running[ref] = (actor, item)
                since[ref] = (time.monotonic(), now())

        def overdue() -> list[tuple[EpisodeResult, int]]:
            """Episodes past their limit whose worker did not stop them: stop the worker."""
            if not time_limit:
                return []
            out = []
            for ref in [r for r, (t, _) in since.items() if time.monotonic() - t > time_limit + STOP_GRACE]:
                actor, item = running.pop(ref)
                started = since.pop(ref)[1]
                if retire(actor):
                    spawn()
                out.append((EpisodeResult(item.spec, "failed", started_at=started, finished_at=now(),
                                          error=f"EpisodeTimeout: the episode ran past its time limit of "
                                                f"{time_limit:g} s and its Ray worker, still busy "
                                                f"{STOP_GRACE:g} s later, was stopped"), item.attempts + 1))
            return out

        def retire(actor: Any) -> bool:
            """Stop ``actor``; whether it was still live (a cohort's episodes each report
            its death: only the first replaces it)."""
            live = actor in actors
            if live:
                actors.remove(actor)
            idle[:] = [a for a in idle if a is not actor]
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001, S110 - it may be gone already
                pass
            return live

        def check_alive() -> None:
            """A cluster whose last node died never starts the workers the run waits for:
            say so instead of waiting for ever (Ray notices a dead node in ~15 s)."""
            try:
                alive = any(n.get("Alive") for n in ray.nodes())
                why = "no live node left"
            except Exception as exc:  # noqa: BLE001 - the head itself is gone
                alive, why = False, f"its head does not answer ({_first_line(exc)})"
            if not alive:
                raise ClusterLost(f"the Ray cluster was lost mid-run: {why} (a raylet killed or out of memory, "
                                  "or a lost machine)")

        checked = time.monotonic()
        try:
            for _ in range(self.workers):
                spawn()
            while queue or running:
                if starting and time.monotonic() - checked > HEALTH_S:
                    checked = time.monotonic()
                    check_alive()
                dispatch()
                if not starting and not running:   # every worker is gone and none is coming
                    spawn()
                done, _ = ray.wait([*starting, *running], num_returns=1, timeout=_WAIT_S)
                finished: list[tuple[EpisodeResult, int]] = []
                for ref in done:
                    if ref in starting:
                        actor = starting.pop(ref)
                        try:
                            info = ray.get(ref)
                            self.worker_info.append(info)
                            for problem in set(info["problems"]) - said:   # once per run, not per worker
                                said.add(problem)
                                self.note(f"ray: {problem}")
                        except ray.exceptions.RayError as exc:
                            retire(actor)
                            failed_starts += 1
                            if failed_starts > 2 * self.workers + 2:
                                raise RunError(f"Ray workers fail to start: {_first_line(exc)}") from None
                            spawn()
                        else:
                            idle.extend([actor] * size[actor])   # one slot per episode it advances at once
                        continue
                    actor, item = running.pop(ref)
                    started = since.pop(ref, (0.0, now()))[1]
                    try:
                        result = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                            ray.exceptions.ObjectLostError) as exc:
                        # the worker process died under the episode: a new worker, and again
                        if actor not in died_with:   # the first of its episodes to report it
                            died_with[actor] = 1 + sum(a is actor for a, _ in running.values())
                        replace = retire(actor)      # only the first report of its death replaces it
                        if died_with[actor] > 1:     # a cohort: whose fault is unknown (LOST_RETRIES)
                            item.shared += 1
                            if cohort > 1:
                                stop_cohorts()
                                replace = False   # stop_cohorts refilled the workers
                        else:
                            item.losses += 1
                        if replace:
                            spawn()
                        if item.losses <= LOST_RETRIES:
                            queue.again(item)
                        else:
                            finished.append((EpisodeResult(
                                item.spec, "failed", started_at=started, finished_at=now(),
                                error=f"the Ray worker died {item.losses} times running this episode alone"
                                      + (f" ({item.shared} more in a cohort)" if item.shared else "") + "; "
                                      f"last: {type(exc).__name__}: {_first_line(exc)}"), item.attempts))
                        continue
                    except ray.exceptions.RayTaskError as exc:   # e.g. a result that cannot be sent back
                        result = EpisodeResult(item.spec, "failed", started_at=started, finished_at=now(),
                                               error=f"{type(exc).__name__}: {exc}"[:4000])
                    free(actor)
                    item.failures += result.status != "finished"
                    queue.learn(item, result)
                    if result.status != "finished" and item.failures <= retries:
                        queue.again(item)
                    else:
                        finished.append((result, item.attempts + (result.status == "finished")))
                finished += overdue()
                # Hand the freed workers their next episodes before the caller writes these
                # results: the workers compute while the driver writes.
                dispatch()
                yield from finished
        finally:
            while actors:
                retire(actors[-1])
