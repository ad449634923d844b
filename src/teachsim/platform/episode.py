"""``run_episode(spec) -> EpisodeResult``: build, converse, judge.

Episodes are pure functions of a picklable :class:`~teachsim.platform.spec.EpisodeSpec`:
same spec, same transcript and scores. The runner that calls them (serial or Ray) only
moves specs in and results out; the driver alone writes results.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import EpisodeTimeout
from ..protocols.channel import Delivery
from .build import build_model, build_protocol, build_student, build_task
from .loop import Loop
from .spec import EpisodeSpec


@dataclass
class EpisodeResult:
    """Everything the driver stores for one episode. Plain data: travels between processes."""

    spec: EpisodeSpec
    status: str                                 # "finished" | "failed"
    error: str = ""
    started_at: str = ""
    finished_at: str = ""
    host: str = ""
    seconds: float = 0.0
    scores: list[tuple[float, str, float]] = field(default_factory=list)
    flags: list[tuple[float, str, float]] = field(default_factory=list)
    # the judge's attack_sets: judge name -> {"config": ..., "scores": rows, "flags": rows}
    judged: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    payloads: dict[str, np.ndarray] = field(default_factory=dict)
    snapshots: dict[float, dict[str, Any]] = field(default_factory=dict)
    checkpoints: list[tuple[float, float, bool]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    judge_version: int = 1                      # the judge behaviour version that made the scores


def transcript_rows(log: list[Delivery]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Message rows for the database and the payload arrays for ``transcripts/``."""
    rows, arrays = [], {}
    for d in log:
        msg = d.message
        rows.append({"idx": d.idx, "kind": msg.kind, "sender": msg.sender, "receiver": msg.receiver,
                     "size": msg.size, "cost": d.cost, "cum_cost": d.cum_cost, "phase": d.phase,
                     "reason": msg.reason, "cut": d.cut})
        for name in ("points", "labels", "probs", "vectors", "mask"):
            value = getattr(msg, name)
            if value is not None:
                arrays[f"{d.idx}.{name}"] = value
    return rows, arrays


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def resolve_device(device: Any = "cpu"):
    """``device`` as a torch device, or the CPU where it is not usable in this process
    (``"cuda"`` without a visible CUDA device, say)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        return dev
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError):   # no such device here, or torch built without it
        return torch.device("cpu")
    return dev


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`EpisodeTimeout` in this thread once ``seconds`` have passed (None: no
    limit). A one-shot ``SIGALRM`` interrupts Python code anywhere, a turn that loops
    forever or a ``learn()`` of 10**15 steps included; one long native call (a single
    huge matrix product) finishes first. Only the main thread receives signals, so
    elsewhere this does nothing (the Ray driver stops such a worker itself)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    armed = True

    def on_alarm(signum, frame):
        nonlocal armed
        if armed:   # never after the block ended, whatever the timing
            armed = False
            raise EpisodeTimeout(f"the episode ran past its time limit of {seconds:g} s (time_limit)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            armed = False
    finally:   # runs even if the alarm struck as the block ended: the handler never outlives it
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def warm_up() -> None:
    """Import what an episode imports on first use: torch, the agents, the judge, and
    torch._dynamo, which a torch optimiser's first step imports (800 modules, about 2 s).
    Once per process (then free), before any time limit starts: a Ray worker calls it when
    it starts, so the first episode's limit is not spent on imports."""
    import torch._dynamo  # noqa: F401

    from ..agents import cohort, teacher  # noqa: F401
    from . import judge  # noqa: F401


def run_episode(spec: EpisodeSpec, device: Any = "cpu", *, limit: float | None = None) -> EpisodeResult:
    """Run one episode and judge its snapshots. Never raises (but for KeyboardInterrupt):
    a failure is a result.

    ``device`` is where the student trains and is judged (``"cpu"``, ``"cuda:0"``, ...);
    where it is not usable the episode runs on the CPU. ``result.stats["device"]`` says
    which. Results are plain CPU data whatever the device. ``limit`` (seconds, None for
    none) fails the episode with :class:`~teachsim.errors.EpisodeTimeout` when it runs
    longer (see :func:`time_limit`).
    """
    from .. import seeding
    from ..agents.cohort import current

    # One torch thread per episode: small episodes run fastest so, and runs stay
    # reproducible. A cohort sets that once for all its episodes' threads (run_cohort, a
    # Ray worker's cohort), and its episodes leave the count alone: torch's count is the
    # process's, and an episode still judging after its cohort was interrupted would
    # otherwise reset it under the caller, who had its own count back by then.
    with contextlib.nullcontext() if current() is not None else seeding.single_thread():
        return _episode(spec, device, limit)


def _model(student_cfg, task, seed: int, weights: dict, dev):
    """A checkpoint's student: the episode's model with the snapshot's weights, on ``dev``."""
    model = build_model(student_cfg, task, seed)
    model.load_state_dict(weights)
    return model.to(dev)


@functools.lru_cache(maxsize=8)
def _task(task_json: str, seed: int):
    return build_task(json.loads(task_json), seed)


@dataclass
class CheckpointJudge:
    """An episode's judge for its cohort: ``judge(items)`` judges ``items`` of episodes that
    share the task, seed and judge in one pass, each a list of ``(budget, weights)``
    checkpoints (an episode's, or one of them); one ``(scores, flags, judged)`` each
    (``judge.join_checkpoints`` makes an episode's of several).

    In this process it uses the episode's own ``task``. Pickled for a cohort's judge
    process it leaves the task behind (a digits task is 2.6 s to build and not small): the
    process builds it from its config, once per task and seed (the same task: tasks are
    seeded)."""

    task_cfg: dict
    student_cfg: dict
    judge_cfg: dict
    seed: int
    device: str
    task: Any = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "task": None}

    def __call__(self, items: list) -> list:
        from .judge import judge_episodes

        task = self.task if self.task is not None else _task(json.dumps(self.task_cfg, sort_keys=True), self.seed)
        return judge_episodes([{b: _model(self.student_cfg, task, self.seed, w, self.device) for b, w in item}
                               for item in items], task, self.judge_cfg, self.seed)


def _episode(spec: EpisodeSpec, device: Any, limit: float | None) -> EpisodeResult:
    from ..agents.cohort import PASS, current, leave_barrier
    from ..agents.teacher import Teacher
    from .judge import VERSION, join_checkpoints, judge_episodes

    import torch

    warm_up()
    result = EpisodeResult(spec, "failed", started_at=now(), host=socket.gethostname())
    t0 = time.perf_counter()
    stats: dict[str, Any] = {}
    loop = None
    cohort = current()
    waiting: dict[float, Any] = {}   # in a cohort: each checkpoint's judging, under way
    try:
        with time_limit(limit):
            dev = resolve_device(device)
            stats["device"] = str(dev)
            if dev.type == "cuda":
                # full float32 and repeatable kernels: cuDNN's convolutions (cnn students)
                # default to TF32 and may pick nondeterministic algorithms
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            task = build_task(spec.task, spec.seed)
            student = build_student(spec.student, task, spec.seed)
            student.model.to(dev)
            # checkpoints of one task, seed and judge share the test set and every stream
            key = json.dumps([spec.task, spec.seed, spec.judge, str(dev)], sort_keys=True, default=str)
            judge = CheckpointJudge(spec.task, spec.student, spec.judge, spec.seed, str(dev), task)

            def taken(budget: float, weights: dict) -> None:   # judged while the episode goes on
                waiting[budget] = cohort.submit(key, [(budget, weights)], judge, PASS.get(dev.type))

            # the Loop kept apart from its run: a failure still has what was delivered
            loop = Loop(build_protocol(spec.protocol_cfg), Teacher(task), student, spec.budgets,
                        seed=spec.seed, initial_labels=spec.student["initial_labels"],
                        on_snapshot=taken if cohort is not None and cohort.ahead else None)
            conv = loop.run()
            if cohort is None:   # alone: all checkpoints in one pass
                models = {b: _model(spec.student, task, spec.seed, w, dev) for b, w in conv.snapshots.items()}
                result.scores, result.flags, result.judged = judge_episodes([models], task, spec.judge, spec.seed)[0]
            else:   # learns no more: the others need not wait for it
                leave_barrier()
                if not cohort.ahead:   # judged at the end, all checkpoints as one item
                    waiting[0.0] = cohort.submit(key, sorted(conv.snapshots.items()), judge, PASS.get(dev.type))
                result.scores, result.flags, result.judged = join_checkpoints(
                    [cohort.result(waiting[b]) for b in sorted(waiting)])

            result.judge_version = VERSION
            result.messages, result.payloads = transcript_rows(conv.channel.log)
            result.payloads["learn_log"] = np.asarray(student.learn_log, dtype=np.int64).reshape(-1, 2)
            result.snapshots = {b: {k: v.cpu().numpy() for k, v in s.items()} for b, s in conv.snapshots.items()}
            result.checkpoints = conv.checkpoints
            result.stats = {**stats, "spent": conv.channel.spent, "probed": conv.channel.probed,
                            "refused": conv.channel.refused, "cut": conv.channel.cut, "turns": conv.turns,
                            "labelled": student.n_labelled, "initial_labels": spec.student["initial_labels"]}
        result.status = "finished"
    except KeyboardInterrupt:
        raise   # the user stops the run (finished episodes are kept; --resume goes on)
    except BaseException as exc:  # noqa: BLE001 - one episode's failure is recorded; the experiment goes on.
        # BaseException, not Exception: a plugin's sys.exit() (SystemExit) once ended a
        # serial run with exit 0, the episode unrecorded and the rest never run.
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-8)}"
        result.stats = stats
        if loop is not None:   # what was delivered before the failure: `teachsim transcript` shows it
            ch = loop.channel
            result.messages, result.payloads = transcript_rows(ch.log)
            result.stats.update(spent=ch.spent, probed=ch.probed, refused=ch.refused, cut=ch.cut, turns=loop.turn)
    finally:
        if cohort is not None:   # failed or interrupted: what it handed over is judged for nobody
            cohort.drop(waiting.values())
    result.finished_at = now()
    result.seconds = time.perf_counter() - t0
    return result
