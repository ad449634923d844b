"""``teachsim.run``: run an experiment into a run directory, extending or resuming what it
holds, refusing what belongs to another experiment or judge version."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..config import Experiment
from ..errors import ConfigError, RunError
from ..runners import EXECUTORS  # noqa: F401 - the executors run() accepts
from .reader import Run
from .store import (atomic_write, changed_plugins, different_experiment, has_table, plugin_error, reading,
                    version_column)


def _recorded_rows(run_dir: Path) -> list[tuple[str, str, str, str, str]]:
    """(key, status, protocol, variant, spec) of the episodes an existing run directory holds (read-only)."""
    path = run_dir / "results.sqlite"
    if not path.is_file():
        return []
    with reading(path, timeout=30) as con:
        if not has_table(con, "episodes"):   # created but never written
            return []
        return list(con.execute("SELECT key, status, protocol, variant, spec FROM episodes"))


def _recorded(run_dir: Path) -> dict[str, str]:
    """key -> status of the episodes an existing run directory holds (read-only)."""
    return {key: status for key, status, *_ in _recorded_rows(run_dir)}


def _stale_judge(run_dir: Path) -> set[int]:
    """The judge versions other than this teachsim's that scored finished episodes of an
    existing run directory under its own judge (read-only; empty: up to date or new)."""
    from ..platform.judge_params import VERSION

    path = run_dir / "results.sqlite"
    if not path.is_file():
        return set()
    with reading(path, timeout=30) as con:
        version = version_column(con, "s.")
        if version is None or not has_table(con, "episodes"):   # nothing scored yet
            return set()
        rows = con.execute(f"SELECT DISTINCT {version} FROM scores s JOIN episodes e USING (episode_id)"
                           " WHERE s.judge = 'default' AND e.status = 'finished'").fetchall()
    return {int(v) for (v,) in rows} - {VERSION}


def _check_same_or_extended(run_dir: Path, exp: Experiment, note) -> None:
    """Refuse a run directory that holds another experiment, before anything starts (read
    only); one that the new config only adds to is extended: its recorded episodes are
    kept and only the new ones run. The store checks the same again under its lock."""
    rows = _recorded_rows(run_dir)
    refused = different_experiment(run_dir, [(key, p, v, spec) for key, _, p, v, spec in rows], exp.episodes)
    if refused is not None:
        raise refused
    if note is not None and rows:
        note(f"extending the experiment in {run_dir}: its {len(rows)} recorded episodes are kept, "
             f"{len(exp.episodes) - len(rows)} are new")


def _guess_run_dir(config: Any, out: str | Path | None) -> Path:
    """The run directory a config would go to, without resolving it (it may not resolve)."""
    if out is not None:
        return Path(out)
    name = None
    if isinstance(config, Mapping):
        name = config.get("name")
    else:
        try:
            import tomllib

            name = tomllib.loads(Path(config).read_text()).get("name") or Path(config).stem
        except (OSError, ValueError):
            pass
    return Path("runs") / (name if isinstance(name, str) and name else "experiment")


def run(config: str | Path | Mapping[str, Any] | Experiment, *, out: str | Path | None = None,
        executor: str | None = None, address: str | None = None, workers: int | None = None,
        cpus_per_episode: float | None = None, gpus_per_episode: float | None = None,
        resume: bool = False, retries: int = 0, progress: bool = True, plugins: tuple[str, ...] = (),
        time_limit: float | None = None, cohort: int | str | None = None) -> Run:
    """Run an experiment and return its :class:`Run`.

    Args:
        config: a TOML path, a config dict, or a resolved :class:`Experiment`.
        out: run directory (default ``runs/<name>``).
        executor: ``"ray"`` (default; ``$TEACHSIM_EXECUTOR`` overrides the default) or
            ``"serial"`` (one episode at a time in this process, no Ray).
        address: Ray cluster to run on (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``);
            default ``$RAY_ADDRESS``, else an embedded local Ray started for this run.
        workers: most episodes at once (Ray; default: as many as the cluster fits).
        cpus_per_episode: CPUs Ray reserves per episode (default 1).
        gpus_per_episode: GPUs Ray reserves per episode; a fraction packs several
            episodes on one GPU (default 0). Without a GPU episodes run on the CPU.
        resume: say that ``out`` may hold this experiment already (``--resume``). It
            changes nothing: re-running into a directory of the same experiment always
            keeps its finished episodes and runs the rest, and so does a config that only
            adds to it (more protocols, seeds or sweep values). A directory of another
            experiment, or of another judge or component version, is refused either way.
        retries: extra attempts for an episode that fails (one whose Ray worker dies is
            also resubmitted, up to 3 times, whatever this is).
        progress: print progress to stderr.
        plugins: plugin files or modules to load first (Ray workers load them too).
        time_limit: seconds one episode may take before it is stopped and recorded
            failed (``EpisodeTimeout``); default the config's ``time_limit``, else none.
        cohort: episodes advanced together in one process (each Ray worker's, or the
            serial executor's), their students trained as one batched model; 1 runs
            one at a time; default ``"auto"``: sized per device (``runners.auto_cohort``;
            1 where a time limit applies). Same results either way.

    Raises:
        ConfigError: bad config or option, or an unreachable cluster (nothing has run).
        RunError: ``out`` holds a different experiment (one whose recorded episodes the
            new config would not reproduce under the same labels).
        KeyboardInterrupt: the run was interrupted; every finished episode is kept.
    """
    import sys

    from .. import registry
    from ..runners import make_executor, refuse_time_limit
    from ..runners.progress import Progress
    from .store import Store

    for plugin in plugins:
        registry.load_plugin(plugin)
    note = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else None
    runner = make_executor(executor, address=address, workers=workers, cpus_per_episode=cpus_per_episode,
                           gpus_per_episode=gpus_per_episode, note=note, cohort=cohort)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError.expected("--retries", "an integer >= 0", retries)
    try:
        exp = config if isinstance(config, Experiment) else config_mod.load(config)
    except ConfigError as exc:   # a plugin's name: say which plugin the run directory used
        better = plugin_error(_guess_run_dir(config, out), exc)
        if better is not None:
            raise better from None
        raise
    limit = (config_mod.check_time_limit("--time-limit", time_limit) if time_limit is not None
             else exp.config.get("time_limit"))
    if limit and getattr(runner, "auto", False):   # --cohort auto yields to a time limit: one at a time
        runner.auto = False
    if getattr(runner, "cohort", 1) > 1:   # refused before anything runs (the executors check too)
        refuse_time_limit(limit, "--time-limit" if time_limit is not None else "time_limit")
    run_dir = Path(out) if out is not None else Path("runs") / exp.name
    text = config_mod.to_toml(exp.config)
    cfg_path = run_dir / "config.toml"
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out: expected a directory, got {str(run_dir)!r} (an existing file)")
    if not cfg_path.exists() or cfg_path.read_text() != text:
        # the recorded episodes decide, not config.toml (which a user may delete or edit);
        # checked again under the lock when the store plans the experiment
        _check_same_or_extended(run_dir, exp, note)
    stale = _stale_judge(run_dir)
    if stale:
        from ..platform.judge_params import VERSION

        raise RunError(f"{run_dir} was scored by judge version {', '.join(map(str, sorted(stale)))} and this "
                       f"teachsim's judge is version {VERSION}: its scores would mix two judges. Re-score the "
                       f"saved students first (no retraining): teachsim judge {run_dir}")

    with runner:
        recorded = _recorded(run_dir)
        pending = sum(recorded.get(s.key) != "finished" for s in exp.episodes)
        if pending:
            runner.start(pending)   # connect first: a bad cluster leaves nothing behind
        store = Store(run_dir)   # takes the run directory's lock: one writer at a time
        if store.lock.took_over and note is not None:
            note(f"{run_dir}: taking over the lock left by {store.lock.took_over}, which is gone")
        try:
            plugins = registry.plugin_records()
            for where, old, new in changed_plugins(run_dir, plugins) if note is not None else ():
                note(f"note: the plugin {where} changed since this run directory recorded it (sha256 {old[:12]}... "
                     f"-> {new[:12]}...); its recorded episodes are kept: if the change alters results, raise the "
                     "plugin's VERSION")
            store.plan(exp.episodes, config=text, plugins=plugins)
            atomic_write(cfg_path, text.encode())   # show and report read it: never half of it
            status = store.status_by_key()
            todo = [s for s in exp.episodes if status.get(s.key) != "finished"]
            bar = Progress(len(todo), skipped=len(exp.episodes) - len(todo), enabled=progress)
            if todo and (runner.name != "serial" or getattr(runner, "cohort", 1) > 1):
                bar.note(runner.description)   # where episodes run (one at a time in this process: said by nothing)
            for result, attempts in runner.run(todo, retries=retries, time_limit=limit):
                store.write(result, attempts)
                bar.update(result)
        finally:
            store.close()
    result_run = Run(run_dir)
    if exp.config.get("interactions") is not None:   # after the episodes: a profile failing loses none
        result_run.profile_interactions(exp.config["interactions"], progress=progress)
    result_run.write_summary()
    return result_run
