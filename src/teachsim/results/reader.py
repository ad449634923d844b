"""``teachsim.open_run`` and :class:`Run`: the Python face of a run directory (read it,
tabulate it, re-judge it)."""

from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from .. import config as config_mod
from ..errors import ConfigError, RunError
from ..platform.spec import EpisodeSpec
from .store import has_table, reading, unreadable, version_column
from .summary import auc, budget_to, curve_table, summarize


_KEY = re.compile(r"[0-9a-f]{16}")



def _saved_models(spec: EpisodeSpec, path: Path, task) -> dict[float, Any]:
    """The episode's saved students (``students/KEY.pt``), one model per checkpoint."""
    from ..platform.build import build_model
    from .store import load_students

    models = {}
    for budget, weights in load_students(path).items():
        models[budget] = build_model(spec.student, task, spec.seed)
        models[budget].load_state_dict(weights)
    return models


def counts(episodes: pd.DataFrame, not_run: pd.DataFrame) -> str:
    """``"7 finished, 0 failed"``, and ``", 13 not run"`` while planned episodes have no
    record (:attr:`Run.episodes`, :attr:`Run.not_run`): what ``show``, the report and
    ``repr`` say of a run's episodes."""
    status = episodes["status"]
    text = f"{int((status == 'finished').sum())} finished, {int((status != 'finished').sum())} failed"
    return f"{text}, {len(not_run)} not run" if len(not_run) else text


def open_run(run_dir: str | Path) -> Run:
    """Open an existing run directory."""
    return Run(run_dir)


class Run:
    """A run directory: episodes, scores, saved students and test sets.

    Attributes are read from ``results.sqlite`` on each access, so a Run opened while an
    experiment is still going sees the episodes finished so far.
    """

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        if not (self.dir / "results.sqlite").is_file():
            raise RunError(f"{self.dir} is not a run directory (no results.sqlite)")

    def __repr__(self) -> str:
        try:
            said, judges = counts(self.episodes, self.not_run), ", ".join(self.judges)
        except (RunError, sqlite3.Error) as exc:
            return f"Run({str(self.dir)!r}: unreadable: {exc})"
        return f"Run({str(self.dir)!r}: {said} episodes; judges: {judges or 'none yet'})"

    def _query(self, sql: str, params: tuple = ()) -> pd.DataFrame:
        path = self.dir / "results.sqlite"
        with reading(path) as con:
            try:
                return pd.read_sql_query(sql, con, params=params)
            except pd.errors.DatabaseError as exc:   # pandas' own wrapping of a damaged page
                raise unreadable(path, exc) from None

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config: ``config.toml`` (a user may edit its ``[report]`` table), or,
        where that file is gone, the copy the store recorded with the episodes. What the
        reader relies on is checked: a damaged or crafted config is a RunError."""
        import tomllib

        where = self.dir / "config.toml"
        if where.is_file():
            try:
                text = where.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise RunError(f"{where} cannot be read ({exc}); it holds the run's config") from None
        else:
            with reading(self.dir / "results.sqlite") as con:
                rows = con.execute("SELECT value FROM meta WHERE name = 'config'").fetchall() \
                    if has_table(con, "meta") else []
            if not len(rows):
                raise RunError(f"{where} is missing and {self.dir / 'results.sqlite'} holds no copy of the config")
            text, where = rows[0][0], self.dir / "results.sqlite"
        try:
            cfg = tomllib.loads(text)
            if not isinstance(cfg.get("name", ""), str) or not isinstance(cfg.get("budgets", []), list) \
                    or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in cfg.get("budgets", [])):
                raise ConfigError("name/budgets", "expected a name and a list of budgets")
            config_mod.resolve_report(cfg.get("report"))
            for table in ("task", "student", "judge", "sweep"):
                if not isinstance(cfg.get(table, {}), dict):
                    raise ConfigError.expected(table, "a table", cfg[table])
        except (tomllib.TOMLDecodeError, ConfigError) as exc:
            raise RunError(f"{where}: the run's config is damaged ({exc}); nothing was changed") from None
        return cfg

    @property
    def episodes(self) -> pd.DataFrame:
        """One row per episode (the README's columns and a few more). ``protocol`` is the
        protocol's label in this experiment, ``protocol_name`` the registered name."""
        eps = self._query("SELECT * FROM episodes ORDER BY episode_id")
        if "protocol_name" not in eps or eps["protocol_name"].isna().any():   # rows from before the column
            names = [json.loads(s)["protocol_cfg"]["name"] for s in eps["spec"]]
            eps["protocol_name"] = eps.get("protocol_name", pd.Series(names)).fillna(pd.Series(names))
        return eps

    @property
    def not_run(self) -> pd.DataFrame:
        """The experiment's planned episodes that have no record yet (columns episode_id, key,
        protocol, variant): the run was interrupted, or is still going. ``teachsim run``
        with ``--resume`` runs them. Empty for a directory made before runs recorded their
        plan."""
        with reading(self.dir / "results.sqlite") as con:
            planned = has_table(con, "planned")
        if not planned:
            return pd.DataFrame(columns=["episode_id", "key", "protocol", "variant"])
        return self._query("SELECT p.episode_id, p.key, p.label AS protocol, p.variant FROM planned p "
                           "LEFT JOIN episodes e USING (key) WHERE e.key IS NULL ORDER BY p.episode_id")

    @property
    def scores(self) -> pd.DataFrame:
        """episode_id, budget, metric, value, with protocol, variant and seed joined on
        (the run's own judge; see :meth:`scores_of` for re-judgings)."""
        return self.scores_of("default")

    def scores_of(self, judge: str) -> pd.DataFrame:
        """Scores recorded under a judge name (``"default"``, or one given to ``teachsim judge``)."""
        scores = self._query(
            "SELECT s.episode_id, s.budget, s.metric, s.value, e.protocol, e.variant, e.seed"
            " FROM scores s JOIN episodes e USING (episode_id) WHERE e.status = 'finished'"
            " AND s.judge = ? ORDER BY s.episode_id, s.budget, s.metric", (judge,))
        names = self.episodes.set_index("episode_id")["protocol_name"]   # the registered name beside the label
        scores.insert(scores.columns.get_loc("protocol") + 1, "protocol_name",
                      scores["episode_id"].map(names).to_numpy())
        return scores

    @property
    def judge_versions(self) -> dict[str, list[int]]:
        """Judge name -> the judge versions its scores were made by
        (``teachsim.platform.judge_params.VERSION`` is this teachsim's; older ones overstate
        ``strong_robust_acc``, see the README)."""
        with reading(self.dir / "results.sqlite") as con:
            version = version_column(con) or "1"
            rows = con.execute(f"SELECT judge, {version} FROM scores GROUP BY judge, {version}").fetchall()
        out: dict[str, list[int]] = {}
        for name, v in rows:
            out.setdefault(name, []).append(int(v))
        return {k: sorted(v) for k, v in out.items()}

    @property
    def judges(self) -> list[str]:
        """Judge names with scores in this run: ``"default"`` first, then re-judgings."""
        names = self._query("SELECT DISTINCT judge FROM scores")["judge"].tolist()
        return sorted(names, key=lambda n: (n != "default", n))

    @property
    def flags(self) -> pd.DataFrame:
        """Sanity flags per (episode, judge, budget): zero_grad_share, stochastic, strong_exact
        (older run directories also hold too_few_classes, which was always 0)."""
        return self._query("SELECT * FROM flags ORDER BY episode_id, judge, budget, flag")

    @property
    def messages(self) -> pd.DataFrame:
        """Every delivered message of every episode (no payloads)."""
        return self._query("SELECT * FROM messages ORDER BY episode_id, idx")

    def summary(self, judge: str = "default") -> pd.DataFrame:
        """Mean and 95% interval per (variant, protocol, budget, metric) across seeds."""
        return summarize(self.scores_of(judge))

    def auc(self, judge: str = "default") -> pd.DataFrame:
        """Normalised area under each mean curve."""
        return curve_table(self.summary(judge), auc, "auc")

    def budget_to(self, metric: str, target: float, judge: str = "default") -> pd.DataFrame:
        """First checkpoint where the mean of ``metric`` reaches ``target`` (inf if never)."""
        s = self.summary(judge)
        return curve_table(s[s["metric"] == metric], lambda b, v: budget_to(b, v, target), "budget_to")

    def attack_matrix(self, metric: str = "lp_robust_acc", budget: float | None = None,
                      judges: list[str] | None = None) -> pd.DataFrame:
        """Train-method x test-attack matrix: ``metric`` per training method (rows) under
        every judge of the run (columns: judge names, ``"default"`` first, then its
        ``attack_sets``, then re-judgings by ``teachsim judge``; or only the given
        ``judges``), mean over seeds at the final budget (or ``budget``).

        Rows are the training methods: the swept ``student.method`` values, or, without a
        sweep, the protocols' labels when there are several (a ``[[protocols]]`` entry can
        override the student, e.g. ``student = { method = "pgd-at" }``), else the run's
        method. Where any other key is swept, rows are the full variant labels. With a
        sweep and several protocols, each row label is joined with the protocol's label.
        """
        from ..platform.judge import attack_set_name

        judge_cfg = config_mod.resolve_judge(self.config.get("judge", {}))
        names = ["default"] + [attack_set_name(s, judge_cfg["norm"], judge_cfg["eps"])
                               for s in judge_cfg.get("attack_sets", [])]
        names = list(judges) if judges is not None else list(dict.fromkeys(names + self.judges))
        sweep = self.config.get("sweep", {})
        by_method = "student.method" in sweep and len(sweep) == 1
        method = self.config.get("student", {}).get("method", "erm")
        several = len(self.config.get("protocols", [])) > 1

        def row_label(variant: str, protocol: str) -> str:
            head = variant.partition("=")[2] if by_method else variant
            if several:
                return f"{head} / {protocol}" if head else protocol
            return head or method

        cols, order = {}, []
        for name in names:
            s = self.scores_of(name)
            s = s[s["metric"] == metric]
            if s.empty:
                continue
            at = s["budget"].max() if budget is None else float(budget)
            s = s[np.isclose(s["budget"], at)]
            rows = [row_label(v, p) for v, p in zip(s["variant"], s["protocol"])]
            order += [r for r in dict.fromkeys(rows) if r not in order]
            cols[name] = s.assign(row=rows).groupby("row", sort=False)["value"].mean()
        table = pd.DataFrame(cols).reindex(order)
        table.index.name = ("protocol" if several and not sweep else
                            "method" if by_method or not sweep else "variant")
        table.columns.name = metric
        return table

    def report(self, target: float | None = None, judge: str = "default") -> Path:
        """Build ``report.html`` with ``plots/*.png`` in the run directory; return the html path.

        Args:
            target: level for the budget-to-target tables and the sweep plot (default: the
                config's ``[report] target``, else 0.9).
            judge: whose scores to show: ``"default"`` or a re-judging's name.
        """
        from .report import build_report

        return build_report(self, target=target, judge=judge)

    def write_summary(self) -> Path:
        """Write ``summary.csv``: one row per (judge, variant, protocol, budget, metric)."""
        path = self.dir / "summary.csv"
        parts = [self.summary(j).assign(judge=j) for j in self.judges]
        table = pd.concat(parts, ignore_index=True) if parts else summarize(self.scores)
        if "judge" in table:
            table = table[["judge", *[c for c in table.columns if c != "judge"]]]
        from .store import atomic_write

        atomic_write(path, table.to_csv(index=False).encode())
        return path

    def rejudge(self, name: str | None = None, progress: bool = True, **overrides: Any) -> str:
        """Re-score every finished episode's saved students with a changed judge; no retraining.

        Args:
            name: judge name to record the scores under (default: derived from the
                attack set, norm and eps, e.g. ``"pgd+beta/linf/0.1"``).
            **overrides: ``[judge]`` keys to change (``attacks``, ``norm``, ``eps``, ...).

        Returns:
            the judge name; read the scores with ``scores_of(name)`` or ``summary(name)``.
        """
        import sys

        from ..platform.judge import VERSION, attack_set_name, judge_all
        from .store import Store

        base = config_mod.resolve_judge({**self.config["judge"], **overrides})   # errors before any work
        if name is None:
            name = attack_set_name(base["attacks"], base["norm"], base["eps"])
        if name == "default":
            raise ConfigError("--name", "expected a name other than 'default' (the run's own judge)")
        if not isinstance(name, str) or not 0 < len(name) <= 100 or name.strip() != name \
                or not name.isprintable():
            raise ConfigError.expected("--name", "1-100 printable characters without leading or trailing spaces",
                                       name)
        episodes = self.episodes
        done = episodes[episodes["status"] == "finished"]
        self._check_students(done)
        asked = json.dumps(overrides, sort_keys=True)
        store = Store(self.dir)
        try:
            # a judging records what it was asked (its overrides) and resumes: the same
            # command again skips the episodes it already scored at this judge version; a
            # different one under the same name starts over, so one name never mixes two
            covered = set()
            if store.judging(name) == asked:
                covered = set(self._query("SELECT DISTINCT episode_id FROM scores WHERE judge = ? AND "
                                          "version = ?", (name, VERSION))["episode_id"])
            else:
                store.start_judging(name, asked)
            todo = [row for row in done.itertuples() if int(row.episode_id) not in covered]
            if progress and covered:
                print(f"judge {name!r}: {len(covered)} episode(s) already judged are kept", file=sys.stderr)
            for i, row in enumerate(todo, 1):
                spec = self.spec(int(row.episode_id))
                cfg = config_mod.resolve_judge({**spec.judge, **overrides})
                task = self._build_task(spec)
                with self._needs_plugins():
                    models = _saved_models(spec, self.file("students", row.key), task)
                scores, flags = judge_all(models, task, cfg, spec.seed)
                store.write_judgement(name, cfg, int(row.episode_id), scores, flags, VERSION)
                if progress:
                    print(f"[{i}/{len(todo)}] judged episode {row.episode_id} ({row.protocol}, seed {row.seed})",
                          file=sys.stderr, flush=True)
        finally:
            store.close()
        self.write_summary()
        return name

    def profile_interactions(self, settings: Mapping[str, Any] | None = None, progress: bool = True) -> int:
        """Profile the multi-order interactions of every finished episode's student at the
        final budget (``analysis.interactions.point_profiles``) with the ``[interactions]``
        settings (default: the config's), into the run's database. Resumes: episodes
        already profiled with the same settings are kept; other settings start over.
        Returns how many episodes were profiled now."""
        import sys

        from ..analysis.interactions import point_profiles, profiled_points
        from .store import Store

        raw = settings if settings is not None else self.config.get("interactions")
        if raw is None:
            raise ConfigError("interactions", "expected an [interactions] table in the config (or settings)")
        cfg = config_mod.resolve_interactions(dict(raw))
        budget = max(float(b) for b in self.config["budgets"])
        done = self.episodes[self.episodes["status"] == "finished"]
        self._check_students(done)
        store = Store(self.dir)
        try:
            kept = set()
            if store.start_profiling(json.dumps(cfg, sort_keys=True)):
                kept = set(self._query("SELECT DISTINCT episode_id FROM interactions")["episode_id"])
            todo = [row for row in done.itertuples() if int(row.episode_id) not in kept]
            for i, row in enumerate(todo, 1):
                eid = int(row.episode_id)
                spec, model, task = self.spec(eid), self.student(eid, budget), self.task(eid)
                x, y = profiled_points(model, *self.test_set(eid), cfg["points"])
                table = point_profiles(model, task, x, y, ratios=cfg["ratios"], judge=spec.judge,
                                       samples=cfg["samples"], num_pairs=cfg["pairs"], seed=spec.seed)
                store.write_profile(eid, budget, table)
                if progress:
                    print(f"[{i}/{len(todo)}] interactions of episode {eid} ({row.protocol}, seed {row.seed})",
                          file=sys.stderr, flush=True)
        finally:
            store.close()
        return len(todo)

    def interaction_profiles(self) -> pd.DataFrame:
        """The ``[interactions]`` profiles (one row per episode, view, point and order), with
        the episode's protocol, variant, seed and student method joined on; empty if none."""
        with reading(self.dir / "results.sqlite") as con:
            if not has_table(con, "interactions"):
                return pd.DataFrame()
        rows = self._query("SELECT * FROM interactions ORDER BY episode_id, input, point, ord")
        if rows.empty:
            return rows
        eps = self.episodes
        eps = eps.assign(method=[json.loads(s)["student"]["method"].split("@")[0] for s in eps["spec"]])
        rows = rows.rename(columns={"ord": "order"})
        return rows.merge(eps[["episode_id", "protocol", "variant", "seed", "method"]], on="episode_id")

    def findings(self):
        """Ren et al.'s two findings from the profiles (``analysis.findings.findings``)."""
        from ..analysis.findings import HIGH, LOW, findings

        cfg = self.config.get("interactions") or {}
        profiles = self.interaction_profiles()
        return findings(profiles, cfg.get("low", LOW), cfg.get("high", HIGH)) if not profiles.empty else []

    def file(self, kind: str, key: str) -> Path:
        """An episode's saved file: ``students/KEY.pt`` or ``transcripts/KEY.npz``. The key
        comes from the database, so it is checked to be a key teachsim writes: one altered
        to ``../x`` must not make a command read or write outside the run directory."""
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise RunError(f"{self.dir}: {key!r} is not an episode key teachsim writes (16 hex digits); "
                           "results.sqlite was altered, refusing to use it as a file name")
        return self.dir / kind / (key + {"students": ".pt", "transcripts": ".npz"}[kind])

    @contextlib.contextmanager
    def _needs_plugins(self) -> Iterator[None]:
        """Building an episode's task or model: an unknown name names the plugin this run
        directory recorded for it."""
        from .store import plugin_error

        try:
            yield
        except ConfigError as exc:
            better = plugin_error(self.dir, exc)
            if better is None:
                raise
            raise better from None

    def _build_task(self, spec: EpisodeSpec):
        """The episode's task, naming the plugin it needs when it is a plugin's."""
        from ..platform.build import build_task

        with self._needs_plugins():
            return build_task(spec.task, spec.seed)

    def _check_students(self, episodes: pd.DataFrame) -> None:
        """Refuse, before any work, a judging that would stop part way: every episode it
        scores needs its saved students (``students/KEY.pt``)."""
        missing = [row for row in episodes.itertuples()
                   if not self.file("students", row.key).is_file()]
        if missing:
            row = missing[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise RunError(f"episode {row.episode_id} ({row.protocol}, seed {row.seed}) has no saved students: "
                           f"{self.file('students', row.key)} is missing{more}; nothing was judged")

    def underspent(self) -> pd.DataFrame:
        """Finished episodes that ended (``done``, or both sides silent) having spent less
        than the final budget: their "final budget" scores are the last student's, not at
        that budget. Columns episode_id, protocol, seed, spent, budget."""
        budget = float(max(self.config.get("budgets") or [0]))
        eps = self.episodes
        # a whole label unspent: an episode stuck at 99.5 of 100 could not have spent more
        short = eps[(eps["status"] == "finished") & (budget - eps["spent"].astype(float) >= 1 - 1e-9)]
        return short.assign(budget=budget)[["episode_id", "protocol", "seed", "spent", "budget"]]

    def judge_coverage(self, name: str = "default") -> tuple[int, int]:
        """(episodes the judge ``name`` scored, finished episodes): a judging that stopped part
        way covers fewer; ``teachsim show``/report say so."""
        covered = int(self._query("SELECT COUNT(DISTINCT s.episode_id) AS n FROM scores s JOIN episodes e "
                                  "USING (episode_id) WHERE s.judge = ? AND e.status = 'finished'",
                                  (name,))["n"].iloc[0])
        finished = int((self.episodes["status"] == "finished").sum())
        return covered, finished

    def upgrade_judge(self, progress: bool = True) -> int:
        """Re-score, with this teachsim's judge, every finished episode whose own scores (and
        those of its ``attack_sets``) were made by another judge version; no retraining.
        Episodes already up to date are skipped, so an interrupted upgrade resumes where it
        stopped. Returns the number of episodes re-scored.

        Raises:
            RunError: an episode's saved students are missing (named, nothing else changed
                for that episode).
        """
        import sys

        from ..platform.judge import VERSION, judge_episode
        from .store import Store

        with reading(self.dir / "results.sqlite") as con:
            version = version_column(con, "s.") or "1"
            stale = [int(e) for (e,) in con.execute(
                f"SELECT DISTINCT s.episode_id FROM scores s JOIN episodes e USING (episode_id) WHERE "
                f"e.status = 'finished' AND s.judge = 'default' AND {version} != ? ORDER BY s.episode_id",
                (VERSION,))]
        if not stale:   # up to date: nothing to write, so nothing is opened for writing
            return 0
        episodes = self.episodes
        self._check_students(episodes[episodes["episode_id"].isin(stale)])
        store = Store(self.dir)
        try:
            for i, eid in enumerate(stale, 1):
                spec = self.spec(eid)
                path = self.file("students", spec.key)
                task = self._build_task(spec)
                with self._needs_plugins():
                    models = _saved_models(spec, path, task)
                scores, flags, judged = judge_episode(models, task, spec.judge, spec.seed)
                # the attack sets first: the run's own judge at the new version marks it done
                for name, j in judged.items():
                    store.write_judgement(name, j["config"], eid, j["scores"], j["flags"], VERSION)
                store.write_judgement("default", None, eid, scores, flags, VERSION)
                if progress:
                    print(f"[{i}/{len(stale)}] re-scored episode {eid} ({spec.label}, seed {spec.seed}) "
                          f"with judge version {VERSION}", file=sys.stderr, flush=True)
        finally:
            store.close()
        self.write_summary()
        return len(stale)

    # -- one episode -------------------------------------------------------------------
    def _row(self, episode: int | str) -> pd.Series:
        episodes = self.episodes
        match = episodes[(episodes["episode_id"] == episode) | (episodes["key"] == str(episode))]
        if match.empty:
            raise RunError(f"no episode {episode!r} in {self.dir} (episode ids: "
                           f"{', '.join(map(str, episodes['episode_id']))})")
        return match.iloc[0]

    def spec(self, episode: int | str) -> EpisodeSpec:
        """The resolved spec an episode ran with."""
        return EpisodeSpec.from_dict(json.loads(self._row(episode)["spec"]))

    def task(self, episode: int | str):
        """The episode's task (teacher mechanism included)."""
        return self._build_task(self.spec(episode))

    def student(self, episode: int | str, budget: float):
        """The saved student at checkpoint ``budget``: a torch module in eval mode (inputs -> logits)."""
        from ..platform.build import build_model
        from .store import load_students

        row = self._row(episode)
        if row["status"] != "finished":
            raise RunError(f"episode {row['episode_id']} {row['status']}; it has no saved students")
        spec = self.spec(episode)
        saved = load_students(self.file("students", spec.key))
        match = [b for b in saved if b == float(budget)] or [b for b in saved if math.isclose(b, float(budget))]
        if not match:
            raise RunError(f"episode {row['episode_id']} has no checkpoint {budget}; "
                           f"checkpoints: {', '.join(f'{b:g}' for b in sorted(saved))}")
        task = self.task(episode)
        with self._needs_plugins():
            model = build_model(spec.student, task, spec.seed)
        model.load_state_dict(saved[match[0]])
        return model.eval()

    def test_set(self, episode: int | str) -> tuple[np.ndarray, np.ndarray]:
        """The judge's test inputs and teacher labels for an episode (regenerated from its seed)."""
        from ..platform.judge import make_test_set

        spec = self.spec(episode)
        test = make_test_set(self.task(episode), spec.judge, spec.seed)
        return test.x, test.y

    def transcript(self, episode: int | str) -> list[dict[str, Any]]:
        """The episode's messages in order, each with its payload arrays."""
        row = self._row(episode)
        msgs = self._query("SELECT * FROM messages WHERE episode_id = ? ORDER BY idx", (int(row["episode_id"]),))
        path = self.file("transcripts", row["key"])
        payload = {}
        if path.exists():
            try:   # plain arrays only: a transcript never unpickles anything
                with np.load(path, allow_pickle=False) as arrays:
                    payload = {k: arrays[k] for k in arrays.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise RunError(f"{path} cannot be read as a transcript ({type(exc).__name__}: {exc})") from None
        out = []
        for rec in msgs.to_dict("records"):
            rec["payload"] = {k.split(".", 1)[1]: v for k, v in payload.items()
                              if k.split(".", 1)[0] == str(rec["idx"])}
            out.append(rec)
        return out
