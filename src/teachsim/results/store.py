"""The results store: ``results.sqlite`` plus ``transcripts/`` and ``students/``.

Only the driver and a re-judging (``teachsim judge``) write, and one process at a time: a
:class:`Store` holds the run directory's lock (``.teachsim.lock``, an advisory ``flock``
the kernel releases when its process dies, so a lock left by a killed run is simply
taken over). Files for an episode are written first (atomically, by rename), then its
rows in one transaction; the row is what marks an episode finished, so a run killed at
any moment resumes without losing or duplicating results. The database also records
which episodes the directory's experiment has (``planned``, by key, label and variant):
an episode that is not one of them is refused at write time, whatever happened to
``config.toml``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import socket
import sqlite3
import sys
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError, RunError
from ..platform.episode import EpisodeResult

LOCK = ".teachsim.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, someone else's
        return True
    return True


def _command(limit: int = 400) -> str:
    """This process's command line as a shell would take it (so a refused second writer
    sees the other run's --out), shortened to ``limit`` characters."""
    import shlex

    text = shlex.join(sys.argv)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()   # the locks this process holds


def _forget_held_locks() -> None:
    """In a forked child (a cohort's judge process): close the child's copies of the held
    locks' descriptors. An flock belongs to the open file, which a fork shares: a child
    keeping its copy would hold the run directory past the driver's death (a kill -9), and
    the next run would be refused until the child ended."""
    for lock in list(_HELD):
        if lock.fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_held_locks)


class RunLock:
    """The one-writer lock of a run directory (``with RunLock(dir): ...``).

    Raises:
        RunError: another live process holds it; the message names it.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None
        self.took_over: str = ""   # who held the lock last, if that process is gone

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(f"{self.path.parent} is being written by {holder}; one run directory has one "
                           "writer at a time: wait for it to finish, or choose another --out") from None
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if previous:
            self.took_over = previous   # held by a process that is gone (the kernel released it)
        me = (f"process {os.getpid()} on {socket.gethostname()} (since "
              f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}: {_command()})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        self.fd = fd
        _HELD.add(self)
        return self

    def release(self) -> None:
        _HELD.discard(self)
        if self.fd is not None:
            os.ftruncate(self.fd, 0)   # an empty file: released cleanly, nothing to take over
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    episode_id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, protocol TEXT NOT NULL,
    task TEXT NOT NULL, variant TEXT NOT NULL DEFAULT '', seed INTEGER NOT NULL,
    status TEXT NOT NULL, error TEXT NOT NULL DEFAULT '', started_at TEXT, finished_at TEXT,
    host TEXT, seconds REAL, attempts INTEGER NOT NULL DEFAULT 1, initial_labels INTEGER,
    spent REAL, probed INTEGER, refused INTEGER, spec TEXT NOT NULL, device TEXT, cut INTEGER,
    protocol_name TEXT);
CREATE TABLE IF NOT EXISTS scores (
    episode_id INTEGER NOT NULL, budget REAL NOT NULL, metric TEXT NOT NULL, value REAL,
    judge TEXT NOT NULL DEFAULT 'default', version INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (episode_id, judge, budget, metric));
CREATE TABLE IF NOT EXISTS flags (
    episode_id INTEGER NOT NULL, budget REAL NOT NULL, flag TEXT NOT NULL, value REAL,
    judge TEXT NOT NULL DEFAULT 'default', PRIMARY KEY (episode_id, judge, budget, flag));
CREATE TABLE IF NOT EXISTS judges (name TEXT PRIMARY KEY, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    episode_id INTEGER NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL, sender TEXT NOT NULL,
    receiver TEXT NOT NULL, size INTEGER NOT NULL, cost REAL NOT NULL, cum_cost REAL NOT NULL,
    phase TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', cut INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (episode_id, idx));
CREATE TABLE IF NOT EXISTS planned (key TEXT PRIMARY KEY, label TEXT NOT NULL, variant TEXT NOT NULL,
    episode_id INTEGER);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS interactions (
    episode_id INTEGER NOT NULL, budget REAL NOT NULL, input TEXT NOT NULL, point INTEGER NOT NULL,
    label INTEGER NOT NULL, ratio REAL NOT NULL, ord INTEGER NOT NULL, n_players INTEGER NOT NULL,
    mean REAL, mean_abs REAL, coef REAL NOT NULL, PRIMARY KEY (episode_id, input, point, ratio));
CREATE TABLE IF NOT EXISTS checkpoints (
    episode_id INTEGER NOT NULL, budget REAL NOT NULL, cum_cost REAL NOT NULL, reached INTEGER NOT NULL,
    PRIMARY KEY (episode_id, budget));
"""


SCORE_ROW = "INSERT INTO scores (episode_id, budget, metric, value, judge, version) VALUES (?, ?, ?, ?, ?, ?)"


def connect(path: Path) -> sqlite3.Connection:
    """The writer's connection (WAL while it writes; :meth:`Store.close` turns it back)."""
    try:
        con = sqlite3.connect(path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
    except sqlite3.DatabaseError as exc:
        raise unreadable(path, exc) from None
    return con


def read_only(path: Path, timeout: float = 5) -> sqlite3.Connection:
    """A reader's connection that never writes: not even SQLite's WAL index. A database in
    WAL mode needs a writable ``-shm`` beside it, so in a read-only directory (a mount, an
    archive) an ordinary open fails; it is then opened as immutable, which is exact there
    since nothing can write it. A file that is not a readable database is a RunError."""
    uri = f"file:{Path(path).resolve()}"
    try:
        con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout)
        try:
            con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            con.close()
            if "unable to open" not in str(exc) and "readonly" not in str(exc):
                raise
            wal = Path(f"{path}-wal")
            if wal.is_file() and wal.stat().st_size > 0:   # immutable would not see those results
                raise RunError(f"{path} has results not yet folded into it ({wal.name}, left by a run that was "
                               "stopped) and cannot be read where it cannot be written: copy the run directory "
                               "somewhere writable and read the copy") from None
            con = sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=timeout)
            con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise unreadable(path, exc) from None
    return con


@contextlib.contextmanager
def reading(path: Path, timeout: float = 5) -> Iterator[sqlite3.Connection]:
    """A :func:`read_only` connection to ``path``, closed afterwards; a file that opens but
    fails as it is read (a damaged page) is :func:`unreadable` too."""
    con = read_only(path, timeout)
    try:
        yield con
    except sqlite3.DatabaseError as exc:
        raise unreadable(path, exc) from None
    finally:
        con.close()


def has_table(con: sqlite3.Connection, name: str) -> bool:
    """Whether the database has the table ``name`` (a run directory created but never
    written, or an older one, may not)."""
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def recorded_plugins(run_dir: Path) -> list[dict[str, Any]]:
    """The plugins the last run in ``run_dir`` loaded (file, SHA-256, what each provided);
    [] when none were recorded or the directory cannot be read (only hints depend on it)."""
    path = Path(run_dir) / "results.sqlite"
    if not path.is_file():
        return []
    try:
        with reading(path) as con:
            row = con.execute("SELECT value FROM meta WHERE name = 'plugins'").fetchone() \
                if has_table(con, "meta") else None
        return json.loads(row[0]) if row else []
    except (RunError, ValueError):
        return []


def _plugin_where(record: dict[str, Any]) -> str:
    return record.get("file") or record["plugin"]


def changed_plugins(run_dir: Path, records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(plugin, recorded sha256, current sha256)`` for each of ``records`` (this process's
    ``registry.plugin_records()``) whose file changed since ``run_dir`` recorded it."""
    before = {_plugin_where(r): r.get("sha256") for r in recorded_plugins(run_dir)}
    return [(_plugin_where(r), before[_plugin_where(r)], r["sha256"]) for r in records
            if before.get(_plugin_where(r)) and r.get("sha256") and before[_plugin_where(r)] != r["sha256"]]


def plugin_error(run_dir: Path, exc: ConfigError) -> ConfigError | None:
    """For an unknown protocol, task, ... name that a plugin recorded in ``run_dir``
    provided: the error naming that plugin file and its hash, in place of the generic "from
    a plugin?" hint and of a guess at a built-in name (the name was the plugin's, not a
    typo). None when no recorded plugin provided it."""
    import re

    from ..registry import PLUGIN_HINT

    text = str(exc)
    for record in recorded_plugins(run_dir):
        for kind, names in record.get("provides", {}).items():
            if any(f"unknown {kind} {name!r}" in text or f"unknown {kind} '{name}@" in text
                   or (f"a registered {kind}" in text and f"got {name!r}" in text) for name in names):
                where, digest = _plugin_where(record), (record.get("sha256") or "")[:12]
                hint = (f"; the run in {run_dir} loaded it from the plugin {where}"
                        + (f" (sha256 {digest}...)" if digest else "") + f": pass --plugin {where}")
                detail = re.sub(r" \(did you mean '[^']*'\?\)", "", exc.detail.replace(PLUGIN_HINT, ""))
                return ConfigError(exc.field, detail + hint)
    return None


def unreadable(path: Path, exc: Exception) -> RunError:
    """The one-line error for a results database that cannot be read (changes nothing)."""
    return RunError(f"{path} is not a readable teachsim database ({exc}); it may be truncated or corrupt: "
                    "nothing was changed")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a kill mid-write leaves the old file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def different_experiment(run_dir: Path, recorded, episodes) -> RunError | None:
    """The refusal for a run directory whose ``recorded`` episodes (key, label, variant,
    spec JSON rows) are not all among the new ``episodes`` (``EpisodeSpec``s), else None.
    An experiment may grow (more protocols, seeds, sweep values), never change: episode
    keys hash each episode's resolved settings and seed, so a kept result is exactly what
    the new config would compute. The refusal names the first setting that differs."""
    wanted = {s.key: (s.label, s.variant) for s in episodes}
    for key, label, variant, spec in recorded:
        if wanted.get(key) != (label, variant):
            where = f"{label!r}" + (f" in {variant}" if variant else "")
            return RunError(f"{run_dir} holds a different experiment: its recorded episodes of {where} "
                            f"{_what_differs(json.loads(spec), episodes)}; choose another --out or remove that "
                            "directory")
    return None


def _what_differs(old: dict[str, Any], episodes) -> str:
    """How the new config differs for a recorded episode: the first differing setting."""
    same = [s for s in episodes if (s.label, s.variant) == (old["protocol"], old["variant"])]
    if not same:
        name = old["protocol_cfg"]["name"]
        other = next((s.protocol_cfg["name"] for s in episodes
                      if s.protocol_cfg["name"].split("@")[0] == name.split("@")[0] and s.protocol_cfg["name"] != name),
                     None)
        if other is not None:
            return f"ran with protocol {name!r}, this config has {other!r} (another version of it)"
        return "are not in this config (a protocol renamed or dropped, or a sweep value gone)"
    twin = next((s for s in same if s.seed == old["seed"]), None)
    if twin is None:
        return f"include seed {old['seed']}, which this config does not"
    new = twin.as_dict()
    for part in ("budgets", "task", "student", "protocol_cfg", "judge"):
        a, b = old.get(part), new.get(part)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    name = "protocol" if part == "protocol_cfg" else part
                    return f"ran with {name}.{k} = {_short(a.get(k))}, this config has {_short(b.get(k))}"
        return f"ran with {part} = {_short(a)}, this config has {_short(b)}"
    return "ran with other settings (another version of a protocol, task, method or model)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Store:
    """Writes episode results into a run directory."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.dir).acquire()   # before anything is written
        except OSError as exc:
            raise RunError(f"{self.dir} cannot be written ({exc.strerror}); a read-only run directory can be "
                           "shown, but not run, extended or judged into") from None
        try:
            (self.dir / "transcripts").mkdir(parents=True, exist_ok=True)
            (self.dir / "students").mkdir(exist_ok=True)
            self.con = connect(self.dir / "results.sqlite")
            self.con.executescript(SCHEMA)
            # columns added since the first run directories: older ones gain them (empty)
            for table, column, decl in (("episodes", "device", "TEXT"), ("episodes", "cut", "INTEGER"),
                                        ("episodes", "protocol_name", "TEXT"),
                                        ("messages", "cut", "INTEGER NOT NULL DEFAULT 0"),
                                        ("planned", "episode_id", "INTEGER")):
                if column not in {row[1] for row in self.con.execute(f"PRAGMA table_info({table})")}:
                    with self.con:
                        self.con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            if "version" not in {row[1] for row in self.con.execute("PRAGMA table_info(scores)")}:
                with self.con:   # scores from before the column were made by judge version 1
                    self.con.execute("ALTER TABLE scores ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
        except BaseException as exc:
            self.lock.release()
            if isinstance(exc, sqlite3.DatabaseError):
                raise unreadable(self.dir / "results.sqlite", exc) from None
            if isinstance(exc, OSError):
                raise RunError(f"{self.dir} cannot be written ({exc.strerror})") from None
            raise

    def close(self) -> None:
        # leave one self-contained file, no -wal/-shm beside it: a copy, an archive or a
        # read-only mount of the run directory then reads like any other (best effort: a
        # reader holding the database open keeps WAL, which is harmless)
        try:
            self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.con.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error:
            pass
        self.con.close()
        self.lock.release()

    def plan(self, episodes, config: str | None = None, plugins: list[dict[str, Any]] | None = None) -> None:
        """Record the experiment's episodes (``EpisodeSpec``s), its resolved ``config``
        (TOML text) and the ``plugins`` it loaded (``registry.plugin_records()``; table
        ``meta``): from now on only these episodes may be written. Every episode already
        recorded must be one of them, with the same label and variant (an experiment may
        grow, never change)."""
        wanted = {s.key: (s.label, s.variant) for s in episodes}
        with self.con:
            refused = different_experiment(
                self.dir, self.con.execute("SELECT key, protocol, variant, spec FROM episodes"), episodes)
            if refused is not None:
                raise refused
            if config is not None:
                self.con.execute("INSERT OR REPLACE INTO meta VALUES ('config', ?)", (config,))
            if plugins is not None:
                self.con.execute("INSERT OR REPLACE INTO meta VALUES ('plugins', ?)", (json.dumps(plugins),))
            # episode ids follow the config's episode order, whatever the executor or the order
            # episodes finish in; recorded episodes keep theirs, new ones come after
            ids = dict(self.con.execute("SELECT key, episode_id FROM episodes"))
            ids |= {k: i for k, i in self.con.execute("SELECT key, episode_id FROM planned") if k not in ids and i}
            taken = set(ids.values())
            nxt = max(taken, default=0) + 1
            for s in episodes:
                if s.key not in ids:
                    while nxt in taken:
                        nxt += 1
                    ids[s.key] = nxt
                    taken.add(nxt)
            self.con.execute("DELETE FROM planned")
            self.con.executemany("INSERT INTO planned (key, label, variant, episode_id) VALUES (?, ?, ?, ?)",
                                 [(k, lab, var, ids[k]) for k, (lab, var) in wanted.items()])

    def status_by_key(self) -> dict[str, str]:
        """key -> status of every recorded episode."""
        return dict(self.con.execute("SELECT key, status FROM episodes"))

    def write(self, result: EpisodeResult, attempts: int = 1) -> int:
        """Record one episode (replacing an earlier failed record of the same key)."""
        spec = result.spec
        planned = self.con.execute("SELECT label, variant, episode_id FROM planned WHERE key = ?",
                                   (spec.key,)).fetchone()
        if planned is None and self.con.execute("SELECT COUNT(*) FROM planned").fetchone()[0]:
            raise RunError(f"{self.dir}: episode {spec.key} ({spec.label}, seed {spec.seed}) is not one of the "
                           "episodes of the experiment this directory holds; nothing was written")
        if result.status == "finished" or result.payloads:   # a failed episode keeps what it delivered
            buf = io.BytesIO()
            np.savez_compressed(buf, **result.payloads)
            atomic_write(self.dir / "transcripts" / f"{spec.key}.npz", buf.getvalue())
        if result.status == "finished":
            atomic_write(self.dir / "students" / f"{spec.key}.pt", _students_bytes(result.snapshots))
        stats = result.stats
        with self.con:  # one transaction per episode, finished or failed
            before = self.con.execute("SELECT episode_id, status, attempts FROM episodes WHERE key = ?",
                                      (spec.key,)).fetchone()
            old = before[:1] if before else None
            if before and before[1] != "finished":   # a failed episode run again (--resume): every attempt counts
                attempts += int(before[2] or 0)
            # the id this episode gets: its old record's, else the one planned for it; rows
            # under that id without an episode (orphans) go first, so nothing is mixed in
            eid_planned = old or ((planned[2],) if planned and planned[2] else None)
            if eid_planned:
                for table in ("scores", "flags", "messages", "checkpoints", "episodes"):
                    self.con.execute(f"DELETE FROM {table} WHERE episode_id = ?", eid_planned)
            cur = self.con.execute(
                "INSERT INTO episodes (episode_id, key, protocol, task, variant, seed, status, error, started_at,"
                " finished_at, host, seconds, attempts, initial_labels, spent, probed, refused, spec, device, cut,"
                " protocol_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (old[0] if old else (planned[2] if planned else None), spec.key, spec.label, spec.task["name"],
                 spec.variant, spec.seed,
                 result.status, result.error, result.started_at, result.finished_at, result.host, result.seconds,
                 attempts, spec.student["initial_labels"], stats.get("spent"), stats.get("probed"),
                 stats.get("refused"), json.dumps(spec.as_dict(), sort_keys=True), _device_text(stats),
                 stats.get("cut"), spec.protocol_cfg["name"]))
            eid = cur.lastrowid if not old else old[0]
            self.con.executemany(SCORE_ROW, [(eid, b, metric, v, "default", result.judge_version)
                                             for b, metric, v in result.scores])
            self.con.executemany("INSERT INTO flags VALUES (?, ?, ?, ?, 'default')",
                                 [(eid, b, flag, v) for b, flag, v in result.flags])
            for name, j in result.judged.items():   # the judge's attack_sets, scored in the same pass
                self.con.execute("INSERT OR REPLACE INTO judges VALUES (?, ?)", (name, json.dumps(j["config"])))
                self.con.executemany(SCORE_ROW, [(eid, b, mt, v, name, result.judge_version)
                                                 for b, mt, v in j["scores"]])
                self.con.executemany("INSERT INTO flags VALUES (?, ?, ?, ?, ?)",
                                     [(eid, b, f, v, name) for b, f, v in j["flags"]])
            self.con.executemany(
                "INSERT INTO messages (episode_id, idx, kind, sender, receiver, size, cost, cum_cost, phase, reason,"
                " cut) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(eid, r["idx"], r["kind"], r["sender"], r["receiver"], r["size"], r["cost"], r["cum_cost"],
                  r["phase"], r["reason"], r.get("cut", 0)) for r in result.messages])
            self.con.executemany("INSERT INTO checkpoints VALUES (?, ?, ?, ?)",
                                 [(eid, b, c, int(r)) for b, c, r in result.checkpoints])
        return eid


    def judging(self, name: str) -> str | None:
        """What the re-judging ``name`` was asked (its overrides, JSON), or None."""
        row = self.con.execute("SELECT value FROM meta WHERE name = ?", (f"judging:{name}",)).fetchone()
        return row[0] if row else None

    def start_judging(self, name: str, asked: str) -> None:
        """Begin the re-judging ``name`` afresh with ``asked`` (JSON overrides): scores an
        earlier, different judging left under that name go first, in the same transaction,
        so a name never holds two judges' scores."""
        with self.con:
            for table in ("scores", "flags"):
                self.con.execute(f"DELETE FROM {table} WHERE judge = ?", (name,))
            self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"judging:{name}", asked))

    def start_profiling(self, asked: str) -> bool:
        """Begin (or resume) the ``[interactions]`` profiles with settings ``asked`` (JSON):
        profiles made with other settings go first, in one transaction, so the table never
        mixes two settings. Returns whether earlier profiles are kept."""
        row = self.con.execute("SELECT value FROM meta WHERE name = 'interactions'").fetchone()
        if row is not None and row[0] == asked:
            return True
        with self.con:
            self.con.execute("DELETE FROM interactions")
            self.con.execute("INSERT OR REPLACE INTO meta VALUES ('interactions', ?)", (asked,))
        return False

    def write_profile(self, episode_id: int, budget: float, rows) -> None:
        """Record one episode's interaction profile (``point_profiles`` rows), replacing any."""
        with self.con:
            self.con.execute("DELETE FROM interactions WHERE episode_id = ?", (episode_id,))
            self.con.executemany("INSERT INTO interactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 [(episode_id, budget, r.input, int(r.point), int(r.label), float(r.ratio),
                                   int(r.order), int(r.n_players), float(r.mean), float(r.mean_abs), float(r.coef))
                                  for r in rows.itertuples()])

    def write_judgement(self, name: str, judge_cfg: dict[str, Any] | None, episode_id: int,
                        scores: list[tuple[float, str, float]], flags: list[tuple[float, str, float]],
                        version: int) -> None:
        """Record a (re-)judging of one episode under the judge ``name``, replacing what that
        judge had recorded for it (one transaction). ``judge_cfg`` None: the run's own judge,
        whose config is the run's."""
        with self.con:
            if judge_cfg is not None:
                self.con.execute("INSERT OR REPLACE INTO judges VALUES (?, ?)", (name, json.dumps(judge_cfg)))
            for table in ("scores", "flags"):
                self.con.execute(f"DELETE FROM {table} WHERE episode_id = ? AND judge = ?", (episode_id, name))
            self.con.executemany(SCORE_ROW, [(episode_id, b, mt, v, name, version) for b, mt, v in scores])
            self.con.executemany("INSERT INTO flags VALUES (?, ?, ?, ?, ?)",
                                 [(episode_id, b, f, v, name) for b, f, v in flags])


def _device_text(stats: dict[str, Any]) -> str | None:
    """Where the episode ran: ``cpu``, or ``cuda:0 (GPU 1)`` with the GPU id(s) Ray assigned
    (``cpu (GPU 1)``: Ray assigned GPU 1, but the worker saw no usable CUDA device)."""
    device = stats.get("device")
    gpus = stats.get("gpu_ids")
    if device and gpus:
        return f"{device} (GPU {','.join(map(str, gpus))})"
    return device


def budget_text(budget: float) -> str:
    """A checkpoint's budget as text that reads back as the same float: ``10``, ``0.5``,
    and, where 6 significant digits would merge two checkpoints (10 and 10.000001,
    1234567), every digit it takes."""
    short = f"{budget:g}"
    return short if float(short) == budget else repr(float(budget))


def _students_bytes(snapshots: dict[float, dict[str, Any]]) -> bytes:
    import torch

    # np.array copies: arrays that came back from a Ray worker are read-only views
    flat = {f"{budget_text(budget)}/{name}": torch.as_tensor(np.array(t)) for budget, s in snapshots.items()
            for name, t in s.items()}
    buf = io.BytesIO()
    torch.save(flat, buf)
    return buf.getvalue()


def load_students(path: Path) -> dict[float, dict[str, Any]]:
    """Read ``students/KEY.pt`` (no code is executed: ``weights_only=True``)."""
    import pickle

    import torch

    try:
        flat = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise RunError(f"{path} cannot be loaded as saved students ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}); only tensors are ever loaded") from None
    if not isinstance(flat, dict):
        raise RunError(f"{path} holds no saved students (a {type(flat).__name__}, not a dict of tensors)")
    out: dict[float, dict[str, Any]] = {}
    for k, v in flat.items():
        budget, _, name = k.partition("/")
        out.setdefault(float(budget), {})[name] = v
    return out


def version_column(con: sqlite3.Connection, prefix: str = "") -> str | None:
    """The SQL for a score row's judge version: its ``version`` column, or ``1`` in a run
    directory from before the column; None when there is no scores table yet."""
    columns = {row[1] for row in con.execute("PRAGMA table_info(scores)")}
    if not columns:
        return None
    return f"{prefix}version" if "version" in columns else "1"
