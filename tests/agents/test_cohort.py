"""Cohorts: students trained as one stacked model give bit for bit the weights they get
alone, for every method; episodes run as a cohort give the transcripts and scores they
give one by one; a failing episode fails alone."""

from __future__ import annotations

import copy
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch

import teachsim
from teachsim import registry, seeding
from teachsim.agents import cohort as C
from teachsim.agents.models import cnn, mlp
from teachsim.agents.student import Student
from teachsim.cli import main
from teachsim.platform.build import build_task
from tests.tiny import TINY, cli, one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK = build_task({"name": "hidden-feature", "dim": 6, "manifold_dim": 2}, 0)
METHODS = [("erm", {}), ("pgd-at", {"eps": 0.3, "norm": "linf"}), ("pgd-at", {"eps": 0.5, "norm": "l2"}),
           ("trades", {"eps": 0.3, "norm": "linf"}), ("beta-at", {"eps": 0.3, "norm": "linf", "attack_steps": 3}),
           ("lrat", {"eps": 0.3, "norm": "l2"}), ("gairat", {"eps": 0.3, "norm": "linf"}),
           ("mail", {"eps": 0.3, "norm": "linf"})]


def _student(method: str, params: dict, seed: int, n: int, optimizer: str = "adam", hidden=(16,)):
    model = mlp(6, 2, hidden=list(hidden), init_std=0.0, generator=torch.Generator().manual_seed(seed))
    s = Student(model, registry.methods.get(method).factory, TASK.data, 2, seed=seed, steps=20, batch_size=16,
                method_params=params, optimizer=optimizer)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    return s, X, (X[:, 0] > 0).astype(np.int64)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("method,params", METHODS, ids=[f"{m}-{p.get('norm', '')}" for m, p in METHODS])
def test_a_cohort_trains_each_student_bit_for_bit_as_alone(method, params, optimizer):
    alone, together = [], []
    for seed, n in ((0, 40), (1, 70), (2, 33)):
        s, X, y = _student(method, params, seed, n, optimizer)
        s._fit(s.model, X, y, 20, torch.Generator().manual_seed(seed + 100))
        alone.append(s)
        s, X, y = _student(method, params, seed, n, optimizer)
        together.append(C.Request(s, X, y, 20, torch.Generator().manual_seed(seed + 100)))
    C.fit_together(together)
    for a, r in zip(alone, together):
        for (name, p), q in zip(a.model.named_parameters(), r.student.model.parameters()):
            assert torch.equal(p, q), (name, (p - q).abs().max().item())
        assert not r.student.model.training
    # and they did learn something (the comparison is not between untouched models)
    fresh, _, _ = _student(method, params, 0, 40, optimizer)
    assert not torch.equal(fresh.model[0].weight, alone[0].model[0].weight)



@pytest.mark.parametrize("method,params", [m for m in METHODS if m[0] not in ("erm", "beta-at")],
                         ids=lambda v: v if isinstance(v, str) else v.get("norm", ""))
def test_students_with_different_radii_train_together_bit_for_bit_as_alone(method, params):
    # the paper suite trains pgd-at at two radii: each student's training attack runs in
    # its own ball, with the step and projection it takes alone
    radii = (0.5, 2.0, params["eps"], 0.101)   # 0.101: its step rounds differently in float32 arithmetic

    def make(seed, eps):
        s, X, y = _student(method, {**params, "eps": eps}, seed, 50)
        return C.Request(s, X, y, 20, torch.Generator().manual_seed(seed + 100))

    alone = [make(seed, eps) for seed, eps in enumerate(radii)]
    for r in alone:
        C.fit_together([r])
    together = [make(seed, eps) for seed, eps in enumerate(radii)]
    assert len({r.key() for r in together}) == 1
    C.fit_together(together)
    for a, r in zip(alone, together):
        for (name, p), q in zip(a.model.named_parameters(), r.model.parameters()):
            assert torch.equal(p, q), (r.params()["eps"], name, (p - q).abs().max().item())
    # a radius of 0 (no attack: no random start drawn) keeps to its own kind
    assert make(0, 0.0).key() != together[0].key()
    # beta-at's radius is used beyond the training attack: keyed as before
    b1, b2 = (C.Request(*_student("beta-at", {"eps": e, "norm": "linf"}, 0, 50), 20, torch.Generator())
              for e in (0.3, 0.5))
    assert b1.key() != b2.key()


@pytest.mark.parametrize("method,params", [METHODS[0], METHODS[2], METHODS[3], METHODS[6]],
                         ids=["erm", "pgd-at-l2", "trades", "gairat"])
def test_odd_batches_train_together_bit_for_bit_as_alone(method, params):
    # students holding fewer points than a batch train on all of them: 37 rows each, padded
    # to 48 inside the stacked model (and alone too), never a different number
    def make(seed):
        s, X, y = _student(method, params, seed, 37)
        s.batch_size = 64
        return C.Request(s, X, y, 20, torch.Generator().manual_seed(seed + 100))

    alone = [make(seed) for seed in range(4)]
    for r in alone:
        C.fit_together([r])
    together = [make(seed) for seed in range(4)]
    assert together[0].batch == 37 and len({r.key() for r in together}) == 1
    C.fit_together(together)
    for a, r in zip(alone, together):
        for (name, p), q in zip(a.model.named_parameters(), r.model.parameters()):
            assert torch.equal(p, q), (name, (p - q).abs().max().item())

@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_erm_students_with_different_numbers_of_points_train_together_bit_for_bit(optimizer):
    # Early learn calls train erm on all of a student's points (fewer than a batch): each
    # student has its own count, so they stack only as a ragged cohort (each block padded
    # to the largest with zero-weight rows). Weights must be those of training alone.
    sizes = [37, 40, 51, 64, 65, 100]

    def make(seed, n):
        s, X, y = _student("erm", {}, seed, n, optimizer, hidden=(16, 16))
        s.batch_size = 128
        return C.Request(s, X, y, 20, torch.Generator().manual_seed(seed + 100))

    alone = [make(seed, n) for seed, n in enumerate(sizes)]
    for r in alone:
        C.fit_together([r])
    together = [make(seed, n) for seed, n in enumerate(sizes)]
    assert all(r.ragged for r in together) and len({r.key() for r in together}) == 1
    C.fit_together(together)
    for a, r in zip(alone, together):
        for (name, p), q in zip(a.model.named_parameters(), r.model.parameters()):
            assert torch.equal(p, q), (len(r.y), name, (p - q).abs().max().item())
    # what draws random numbers per row, or samples mini-batches, keeps to equal sizes
    s, X, y = _student("pgd-at", {"eps": 0.5, "norm": "l2"}, 0, 37)
    s.batch_size = 128
    assert not C.Request(s, X, y, 20, torch.Generator()).ragged
    assert not make(0, 200).ragged


def test_draws_are_each_student_s_own():
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    drawn = seeding.randn((6, 2), seeding.Generators(gens))
    alone = torch.cat([torch.randn((2, 2), generator=torch.Generator().manual_seed(i)) for i in range(3)])
    assert torch.equal(drawn, alone)
    with pytest.raises(ValueError, match="divisible"):
        seeding.randn((5,), seeding.Generators(gens))


@pytest.mark.parametrize("method,params", [METHODS[0], METHODS[2]], ids=["erm", "pgd-at-l2"])
def test_a_committee_s_members_train_together_bit_for_bit_as_one_by_one(method, params):
    # query by committee: each member a bootstrap copy of the student from its own
    # generator; they train as one batched model (with the cohort's students, in a cohort)
    for n in (40, 200):   # all points at every step, and mini-batches
        s, X, y = _student(method, params, 0, n)
        s._X, s._y = [X], [y]   # as if received
        together = s.committee(3, round_=2)
        by_one = []
        for i in range(3):
            model = copy.deepcopy(s.model)
            g = seeding.torch_generator(s.seed, "student", "committee", 2, i)
            pick = torch.randint(n, (n,), generator=g).numpy()
            s._fit(model, X[pick], y[pick], s.steps, g)
            by_one.append(model)
        for a, b in zip(by_one, together.members):
            assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        assert not torch.equal(together.members[0][0].weight, together.members[1][0].weight)
        assert torch.equal(s.model[0].weight, _student(method, params, 0, n)[0].model[0].weight)   # untouched


def test_a_committee_alone_lets_a_time_limit_through(monkeypatch):
    # one episode's own committee (no cohort) is not retried member by member: the time
    # limit's alarm (or Ctrl-C) raised inside its training stops the episode, as before
    from teachsim.errors import EpisodeTimeout

    calls = []

    def alarm(group, check=None):
        calls.append(len(group))
        raise EpisodeTimeout("ran past its time limit")

    monkeypatch.setattr(C, "fit_together", alarm)
    s, X, y = _student("erm", {}, 0, 40)
    s._X, s._y = [X], [y]
    with pytest.raises(EpisodeTimeout):
        s.committee(3, round_=1)
    assert calls == [3]


def test_the_barrier_waits_for_every_episode_not_every_request(monkeypatch):
    # one episode's committee brings three requests, another episode one: they train as
    # one batch of four only once both episodes are waiting
    import threading
    import time

    groups = []
    real = C.fit_together
    monkeypatch.setattr(C, "fit_together", lambda g, check=None: (groups.append(len(g)), real(g, check))[1])
    cohort = C.Cohort()
    cohort.join()
    cohort.join()
    requests = [C.Request(*_student("erm", {}, seed, 40), 20, torch.Generator().manual_seed(seed)) for seed in range(4)]

    def episode(mine, delay):
        time.sleep(delay)
        cohort.fit(*mine)
        cohort.leave()

    threads = [threading.Thread(target=episode, args=(requests[:3], 0.0)),
               threading.Thread(target=episode, args=(requests[3:], 0.3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert groups == [4] and all(r.done and r.error is None for r in requests)


def test_what_cannot_stack_trains_alone_as_before():
    g = torch.Generator().manual_seed(0)
    assert C.stackable(mlp(6, 2, hidden=[4], init_std=0.0, generator=g)) is not None
    assert C.stackable(cnn(64, 10, hidden=[8], init_std=0.0, generator=g)) is None
    s, X, y = _student("erm", {}, 0, 20)
    assert C.batchable(s)
    s.explanations.append(_invariance(np.eye(6, dtype=np.float32)[2:]))
    assert C.batchable(s)   # an invariance basis stacks too (its augmentation and penalty per student)
    s.model = cnn(64, 10, hidden=[8], init_std=0.0, generator=g)
    assert not C.batchable(s)


def _invariance(vectors):
    return type("E", (), {"reason": "invariance", "vectors": vectors})()


class _Boxed:
    box = (np.full(6, -1.5, np.float32), np.full(6, 1.5, np.float32))


@pytest.mark.parametrize("boxed", [False, True], ids=["no-box", "box"])
@pytest.mark.parametrize("method,params", [METHODS[0], METHODS[2]], ids=["erm", "pgd-at-l2"])
def test_invariance_students_train_in_a_cohort_bit_for_bit_as_alone(method, params, boxed):
    # each student its own stated directions (3 of 6 dimensions), augmentation and
    # gradient penalty both on; in a box the shifted copies are projected back into it
    def make(seed, n, stated=True):
        s, X, y = _student(method, params, seed, n)
        if stated:
            s.explanations.append(_invariance(np.random.default_rng(seed + 7).normal(size=(3, 6)).astype(np.float32)))
        if boxed:
            s.data = _Boxed()
            X = np.clip(X, -1.5, 1.5)
        return C.Request(s, X, y, 20, torch.Generator().manual_seed(seed + 100))

    cases = ((0, 40), (1, 70), (2, 33))
    alone = [make(seed, n) for seed, n in cases]
    for r in alone:
        C.fit_together([r])
    together = [make(seed, n) for seed, n in cases]
    C.fit_together(together)
    for a, r in zip(alone, together):
        assert a.basis is not None and a.basis.shape == (3, 6)
        for (name, p), q in zip(a.model.named_parameters(), r.model.parameters()):
            assert torch.equal(p, q), (name, (p - q).abs().max().item())
    plain = make(0, 40, stated=False)   # the explanation changed the training
    C.fit_together([plain])
    assert not torch.equal(plain.model[0].weight, alone[0].model[0].weight)



@pytest.mark.parametrize("boxed", [False, True], ids=["no-box", "box"])
def test_one_invariant_direction_in_more_dimensions_stacks_bit_for_bit(boxed):
    # a single direction (m = 1) in 50 dimensions: a bmm over the stacked students changed
    # the last bit here, so each student's products are its own mm
    task = build_task({"name": "hidden-feature", "dim": 50, "manifold_dim": 2}, 0)

    class Boxed:
        box = (np.full(50, -1.5, np.float32), np.full(50, 1.5, np.float32))

    def make(seed):
        model = mlp(50, 2, hidden=[16], init_std=0.0, generator=torch.Generator().manual_seed(seed))
        s = Student(model, registry.methods.get("erm").factory, Boxed() if boxed else task.data, 2, seed=seed,
                    steps=20, batch_size=16)
        rng = np.random.default_rng(seed)
        s.explanations.append(_invariance(rng.normal(size=(1, 50)).astype(np.float32)))
        X = rng.normal(size=(40, 50)).astype(np.float32)
        X = np.clip(X, -1.5, 1.5) if boxed else X
        return C.Request(s, X, (X[:, 0] > 0).astype(np.int64), 20, torch.Generator().manual_seed(seed + 100))

    alone = [make(seed) for seed in range(4)]
    for r in alone:
        C.fit_together([r])
    together = [make(seed) for seed in range(4)]
    C.fit_together(together)
    for a, r in zip(alone, together):
        for (name, p), q in zip(a.model.named_parameters(), r.model.parameters()):
            assert torch.equal(p, q), (name, (p - q).abs().max().item())

def test_invariance_students_train_through_the_cohort_as_the_student_does():
    # Student._fit sends a stackable student (with or without an invariance basis) here
    s, X, y = _student("erm", {}, 0, 40)
    s.explanations.append(_invariance(np.eye(6, dtype=np.float32)[3:]))
    twin = copy.deepcopy(s)
    s._fit(s.model, X, y, 20, torch.Generator().manual_seed(5))
    C.fit_together([C.Request(twin, X, y, 20, torch.Generator().manual_seed(5))])
    assert all(torch.equal(p, q) for p, q in zip(s.model.parameters(), twin.model.parameters()))


def test_a_student_whose_batch_fails_is_trained_alone(monkeypatch):
    requests = [C.Request(*_student("erm", {}, seed, 30), 5, torch.Generator().manual_seed(seed)) for seed in (0, 1)]
    calls = []
    real = C.fit_together

    def flaky(group, check=None):
        calls.append(len(group))
        if len(group) > 1:
            raise RuntimeError("boom")
        real(group, check)
    monkeypatch.setattr(C, "fit_together", flaky)
    C.Cohort()._train(requests)   # what the last of two waiting episodes does (30 points: batches of 16)
    assert calls == [2, 1, 1] and all(r.done and r.error is None for r in requests)
    # alone, from the generator's start: as if the batch had never been tried
    s, X, y = _student("erm", {}, 0, 30)
    real([C.Request(s, X, y, 5, torch.Generator().manual_seed(0))])
    assert torch.equal(s.model[0].weight, requests[0].student.model[0].weight)


# -- whole episodes ---------------------------------------------------------------------------

def _config():
    cfg = copy.deepcopy(TINY)
    cfg["student"]["initial_labels"] = 130   # from the first learn call on, batches of 128 rows: batched
    cfg["protocols"] = [{"name": "passive"}, {"name": "active-student", "strategy": "qbc"},
                        {"name": "active-teacher", "push": "counterexample"},
                        {"name": "active-teacher", "push": "invariance"},
                        {"name": "passive", "student": {"method": "trades", "eps": 0.5}, "label": "trades"},
                        {"name": "passive", "student": {"method": "trades", "eps": 0.2}, "label": "trades 0.2"}]
    return cfg   # (the two trades radii train together)


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return bool(a == b)


def test_a_cohort_gives_the_transcripts_and_scores_of_one_by_one(tmp_path, monkeypatch):
    cfg = _config()
    one = teachsim.run(cfg, out=tmp_path / "one", executor="serial", progress=False, cohort=1)
    sizes = []
    real = C.fit_together
    monkeypatch.setattr(C, "fit_together", lambda group, check=None: (sizes.append(len(group)), real(group, check))[1])
    many = teachsim.run(cfg, out=tmp_path / "many", executor="serial", progress=False, cohort=4)
    assert max(sizes) >= 3   # students did train together (passive, qbc's committee, counterexample, trades)
    again = teachsim.run(cfg, out=tmp_path / "again", executor="serial", progress=False, cohort=10)
    keys = list(one.episodes["key"])
    assert len(keys) == 12 and (one.episodes["status"] == "finished").all()
    for run in (many, again):
        assert (run.episodes["status"] == "finished").all()
        for key in keys:
            assert _same(one.transcript(key), run.transcript(key)), key
        scores = [r.scores.merge(r.episodes[["episode_id", "key"]]).set_index(["key", "budget", "metric"])["value"]
                  .sort_index() for r in (one, run)]
        assert scores[0].equals(scores[1])
        for key in keys[:3]:
            for budget in (0, 20):
                a = one.student(key, budget).state_dict()
                b = run.student(key, budget).state_dict()
                assert all(torch.equal(a[k], b[k]) for k in a)


def _passes(cohort, items, run, most=None):
    """Submit ``items`` (key = item % 2) from threads at once; each thread's outcome."""
    out, start = {}, threading.Barrier(len(items))

    def episode(i):
        start.wait()
        time.sleep(0.01 * (i > 0))   # item 0's pass starts first; the others wait behind it
        try:
            out[i] = cohort.result(cohort.submit(i % 2, i, run, most))
        except ValueError as exc:
            out[i] = exc

    threads = [threading.Thread(target=episode, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def _recording_run(passes, running, most, lock):
    def run(items):
        with lock:
            passes.append(list(items))
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.1)
            if 3 in items:
                raise ValueError("item 3 cannot be judged")
            return [10 * i for i in items]
        finally:
            with lock:
                running[0] -= 1
    return run


def test_judge_passes_take_one_key_at_most_most_items_and_a_failure_fails_its_own_item():
    """Cohort.submit: a judge thread takes the waiting items of the oldest key, at most
    ``most`` of them; a pass that raises is run again item by item, so only the failing
    item gets the error; while the cohort trains, ``judges`` passes at a time."""
    cohort = C.Cohort(judges=1)
    cohort.join()   # an episode at the training barrier: one judge at a time
    passes, running, most, lock = [], [0], [0], threading.Lock()
    out = _passes(cohort, range(8), _recording_run(passes, running, most, lock))
    assert all(out[i] == 10 * i for i in range(8) if i != 3) and isinstance(out[3], ValueError)
    assert most[0] == 1                                      # one pass at a time
    assert all(len({i % 2 for i in p}) == 1 for p in passes)   # one key per pass
    assert max(len(p) for p in passes) >= 3                  # the waiting ones went together
    assert [3] in passes and sorted(i for p in passes if 3 not in p for i in p) == [0, 1, 2, 4, 5, 6, 7]
    passes.clear()
    _passes(cohort, range(8), _recording_run(passes, running, most, lock), most=2)
    assert max(len(p) for p in passes) <= 2
    # nothing trains any more: the training's core judges too
    cohort.leave()
    passes.clear()
    most[0] = 0
    _passes(cohort, [0, 2, 4, 6, 1, 5, 7, 9], _recording_run(passes, running, most, lock), most=1)
    assert most[0] == 2


def _pass(items):   # module level: a judge process gets it pickled
    if -1 in items:
        raise ValueError("cannot judge -1")
    return [(i, os.getpid()) for i in items]


def test_a_judge_process_runs_passes_in_another_process_and_hands_back_their_errors():
    process = C.JudgeProcess()
    try:
        got = process(_pass, [1, 2])
        assert [i for i, _ in got] == [1, 2] and {pid for _, pid in got} == {process.process.pid} != {os.getpid()}
        with pytest.raises(ValueError, match="cannot judge -1"):
            process(_pass, [-1])
        os.kill(process.process.pid, signal.SIGINT)   # Ctrl-C reaches the whole group: ignored
        time.sleep(0.2)
        assert process(_pass, [3])[0][1] == process.process.pid
        process.process.kill()   # dead before a pass: its passes run in the caller instead
        process.process.join(5)
        assert process(_pass, [4]) == [(4, os.getpid())] and not process.alive
    finally:
        process.close()
    assert not process.process.is_alive()


def _segfault() -> None:
    """A crash in native code, say a plugin's (pytest's fault handler, forked with the
    process, would print a trace of it)."""
    import faulthandler

    faulthandler.disable()
    os.kill(os.getpid(), signal.SIGSEGV)


class _Picky(Exception):
    def __init__(self, a, b):   # pickle rebuilds it from (message,): a TypeError in the driver
        super().__init__(f"{a} and {b}")


def _picky(items):
    raise _Picky("this", "that")


def test_an_error_that_pickle_cannot_rebuild_comes_back_by_name_and_message():
    process = C.JudgeProcess()
    try:
        with pytest.raises(RuntimeError, match="^_Picky: this and that$"):
            process(_picky, [1])
        assert process.alive
    finally:
        process.close()


def _die(items):   # module level: a judge process gets it pickled
    _segfault()


def test_a_pass_that_kills_its_judge_process_fails_and_is_not_judged_again_in_the_caller():
    process = C.JudgeProcess()
    try:
        with pytest.raises(C.JudgeProcessDied, match="SIGSEGV"):
            process(_die, [1])
        assert not process.alive
        assert process(_pass, [2]) == [(2, os.getpid())]   # later passes: here
    finally:
        process.close()


def test_judge_processes_end_as_soon_as_the_driver_closes_them():
    # each fork inherits the earlier processes' driver ends; holding them kept those alive
    # past close() until killed (5 s each)
    processes = [C.JudgeProcess() for _ in range(3)]
    for process in processes:
        assert process(_pass, [1])[0][1] == process.process.pid
    for process in processes:
        process.close()
    assert [p.process.exitcode for p in processes] == [0, 0, 0]


def test_a_judge_process_ends_when_the_driver_s_end_closes():
    process = C.JudgeProcess()
    process.conn.close()   # as when the driver dies
    process.process.join(10)
    assert not process.process.is_alive()


SPY: list = []   # [path]: where _spy_judge notes the process each pass ran in


def _spy_judge(judge, items):
    from teachsim.platform import episode as E

    with open(SPY[0], "a") as f:
        f.write(f"{os.getpid()}\n")
    return E._real_judge(judge, items)


def test_a_cohort_judges_its_checkpoints_in_a_judge_process_beside_the_training(tmp_path, monkeypatch):
    """With a core to spare, a serial cohort forks a judge process and judges checkpoints
    there as they are taken, with the scores of one at a time; the process is gone once
    the run ends."""
    import multiprocessing

    from teachsim import config
    from teachsim.platform import episode as E
    from teachsim.runners import cohort as R
    from teachsim.runners.serial import run_serial

    specs = config.load(_config()).episodes[:3]
    alone = {r.spec.key: r for r, _ in run_serial(specs)}
    monkeypatch.setattr(R, "cores", lambda: 2)
    monkeypatch.setattr(E, "_real_judge", E.CheckpointJudge.__call__, raising=False)
    monkeypatch.setattr(E.CheckpointJudge, "__call__", _spy_judge)
    monkeypatch.setattr(sys.modules[__name__], "SPY", [str(tmp_path / "pids")])
    results = [r for r, _ in R.run_cohort(specs, size=3)]
    assert all(r.status == "finished" for r in results)
    pids = set((tmp_path / "pids").read_text().split())
    # the judge process judged (and this one too, once nothing trained: the training's core)
    assert len(pids - {str(os.getpid())}) == 1
    assert all(r.scores == alone[r.spec.key].scores for r in results)
    assert multiprocessing.active_children() == []
    # no core to spare: no judge process, each episode's checkpoints judged at its end, in this one
    monkeypatch.setattr(R, "cores", lambda: 1)
    (tmp_path / "pids").unlink()
    results = [r for r, _ in R.run_cohort(specs, size=3)]
    assert set((tmp_path / "pids").read_text().split()) == {str(os.getpid())}
    assert all(r.status == "finished" and r.scores == alone[r.spec.key].scores for r in results)


def _crash_judge(judge, items):
    """Crashes the judge process on seed 1's checkpoints (in the driver it would end the
    test; there it only raises, which the test would see as a wrong error)."""
    from teachsim.platform import episode as E

    if judge.seed == 1:
        if os.getpid() == DRIVER[0]:
            raise AssertionError("seed 1 was judged again in the driver")
        _segfault()
    return E._real_judge(judge, items)


DRIVER: list = []


def test_episodes_finished_when_the_run_is_interrupted_are_still_handed_over(monkeypatch):
    """An episode that finished while the driver was busy (recording another) is in the
    cohort's hands when Ctrl-C comes: it is handed over before the interruption goes on,
    not computed again by the resume."""
    from teachsim import config
    from teachsim.runners import cohort as R

    monkeypatch.setattr(R, "cores", lambda: 1)
    specs = [s for s in config.load(_config()).episodes if s.label == "passive"]
    assert len(specs) == 2
    run = R.run_cohort(specs, size=2)
    first, _ = next(run)
    end = time.monotonic() + 120
    while any(t.name.startswith(R.THREAD) for t in threading.enumerate()):   # the other one finishes
        assert time.monotonic() < end
        time.sleep(0.05)
    second, attempts = run.throw(KeyboardInterrupt())   # Ctrl-C while the driver records the first
    assert {first.spec.key, second.spec.key} == {s.key for s in specs}
    assert second.status == "finished" and attempts == 1
    with pytest.raises(KeyboardInterrupt):
        next(run)


def test_a_crashed_judge_process_fails_only_the_episode_it_was_judging(monkeypatch):
    from teachsim import config
    from teachsim.platform import episode as E
    from teachsim.runners import cohort as R
    from teachsim.runners.serial import run_serial

    cfg = _config()
    cfg["seeds"] = [0, 1, 2]
    specs = [s for s in config.load(cfg).episodes if s.label == "passive"]
    assert sorted(s.seed for s in specs) == [0, 1, 2]
    alone = {r.spec.key: r for r, _ in run_serial([s for s in specs if s.seed != 1])}
    monkeypatch.setattr(R, "cores", lambda: 2)
    # one judge, no second one in the driver once nothing trains: seed 1's first pass goes
    # to the judge process, whatever the threads' timing
    monkeypatch.setattr(C.Cohort, "_allowed", lambda self: self.judges)
    monkeypatch.setattr(E, "_real_judge", E.CheckpointJudge.__call__, raising=False)
    monkeypatch.setattr(E.CheckpointJudge, "__call__", _crash_judge)
    monkeypatch.setattr(sys.modules[__name__], "DRIVER", [os.getpid()])
    results = {r.spec.seed: r for r, _ in R.run_cohort(specs, size=3)}
    assert results[1].status == "failed" and "JudgeProcessDied" in results[1].error
    assert "SIGSEGV" in results[1].error
    for seed in (0, 2):
        assert results[seed].status == "finished", results[seed].error
        assert results[seed].scores == alone[results[seed].spec.key].scores


PROTOCOL = '''
import teachsim
from teachsim import messages as m
from teachsim.protocols.base import ROUND_PARAMS, Protocol


class Breaks(Protocol):
    PARAMS = ROUND_PARAMS

    def student_turn(self, student, inbox, ctx):
        self.train(student)
        if ctx.spent >= 10:
            raise RuntimeError("this protocol fails half way")
        return [m.query(student.data.sample(5, ctx.rng))]

    def teacher_turn(self, teacher, inbox, ctx):
        return [teacher.answer(q) for q in inbox if q.kind == "query"]


teachsim.register_protocol("breaks", Breaks)
'''


def test_a_failing_episode_fails_alone_and_the_cohort_goes_on(tmp_path, restore_registry):
    plugin = tmp_path / "breaks.py"
    plugin.write_text(PROTOCOL)
    registry.load_plugin(str(plugin))
    cfg = copy.deepcopy(TINY)
    cfg["protocols"] = [{"name": "passive"}, {"name": "breaks"}]
    run = teachsim.run(cfg, out=tmp_path / "run", executor="serial", progress=False, cohort=4)
    eps = run.episodes.set_index("protocol")
    assert set(eps.loc["passive", "status"]) == {"finished"}
    assert set(eps.loc["breaks", "status"]) == {"failed"}
    assert all("fails half way" in e for e in eps.loc["breaks", "error"])


def test_cohort_options_are_checked(tmp_path):
    cfg = tmp_path / "tiny.toml"
    from tests.tiny import TINY_TOML

    cfg.write_text(TINY_TOML)
    for args, says in ((["--cohort", "0"], "--cohort"), (["--cohort", "2", "--time-limit", "30"], "time limit"),
                       (["--executor", "ray", "--cohort", "2", "--time-limit", "30"], "time limit")):
        res = cli("run", str(cfg), "--out", str(tmp_path / "run"), *args, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert says in one_line_error(res.stderr, res.stdout)
    res = cli("run", str(cfg), "--out", str(tmp_path / "run"), "--cohort", "many", cwd=tmp_path)
    assert res.returncode == 2 and "integer >= 1 or 'auto'" in res.stderr and "Traceback" not in res.stderr
    assert main  # the in-process entry point is the same parser


def test_cohort_auto_sizes_per_device_and_worker_share():
    from teachsim.runners import AUTO_COHORT, auto_cohort, make_executor

    assert auto_cohort(100, 1) == AUTO_COHORT["cpu"] == 16
    assert auto_cohort(15, 2) == 8          # each of 2 workers gets a share
    assert auto_cohort(3, 4) == 1
    assert auto_cohort(200, 1, "gpu") == AUTO_COHORT["gpu"] and auto_cohort(100, 2, "gpu") == 50
    runner = make_executor("serial", cohort="auto")
    runner.start(40)
    assert runner.cohort == 16 and "cohorts of 16" in runner.description
    runner = make_executor("serial")   # auto is the default
    runner.start(40)
    assert runner.cohort == 16
    runner = make_executor("serial", cohort=1)
    runner.start(40)
    assert runner.cohort == 1 and "one episode at a time" in runner.description
    runner = make_executor("serial", cohort="auto")
    runner.start(1)
    assert runner.cohort == 1 and "one episode at a time" in runner.description


def test_cohort_auto_yields_to_a_time_limit(tmp_path):
    # --cohort N with a time limit is refused; auto runs one at a time instead
    cfg = tmp_path / "tiny.toml"
    from tests.tiny import TINY_TOML

    cfg.write_text(TINY_TOML)
    res = cli("run", str(cfg), "--out", str(tmp_path / "run"), "--executor", "serial", "--cohort", "auto",
              "--time-limit", "300", cwd=tmp_path)
    assert res.returncode == 0, res.stderr   # not refused, as --cohort 2 with a time limit is
    assert (teachsim.open_run(tmp_path / "run").episodes["status"] == "finished").all()


def test_a_cohort_the_caller_stops_reading_stops_its_episodes(tmp_path, restore_registry, monkeypatch):
    # Ctrl-C (or a caller that stops early) must not leave episode threads computing behind
    # the run: the cohort cancels them, each stopping at its next step, learn call or judge
    from teachsim import config as config_mod
    from teachsim.runners.cohort import episodes_alive, run_cohort

    plugin = tmp_path / "breaks.py"
    plugin.write_text(PROTOCOL)
    registry.load_plugin(str(plugin))
    cfg = copy.deepcopy(TINY)
    cfg["seeds"], cfg["budgets"] = [0, 1], [0, 10, 20, 40, 80, 160]
    cfg["protocols"] = [{"name": "passive"}, {"name": "breaks"}]   # 3 of these 4 at once: 1 or 2 breaks
    trained = []
    real = C.fit_together
    monkeypatch.setattr(C, "fit_together", lambda group, check=None: (real(group, check), trained.append(1)))
    results = run_cohort(config_mod.load(cfg).episodes, size=3)
    first, _ = next(results)
    assert first.status == "failed"      # breaks fails early; the passive episodes are mid-conversation
    before = len(trained)
    results.close()   # what a KeyboardInterrupt in the consuming loop does too
    assert not episodes_alive()
    assert len(trained) - before <= 1    # at most the training under way finished (not the episodes)


def test_a_cohort_takes_the_other_seeds_of_what_it_runs(monkeypatch):
    # a group's seeds share its schedule, so their students learn at the same moments and
    # train as one; a cohort filled one group at a time (a Ray worker) would get none
    import threading

    from teachsim import config as config_mod
    from teachsim.platform.episode import EpisodeResult
    from teachsim.runners import cohort as runner

    cfg = copy.deepcopy(TINY)
    cfg["seeds"] = [0, 1, 2]
    cfg["protocols"] = [{"name": "passive"}, {"name": "passive", "batch": 5}]
    specs = config_mod.resolve_experiment(cfg).episodes
    a0, a1, a2, b0, b1, b2 = specs                  # config order: each protocol's seeds together
    assert runner.partner([b0, b1, a1, a2], [a0]) == 2     # another seed of a running group first
    assert runner.partner([b0, b1], [a0, a1]) is None      # none waits: the caller's own order
    assert runner.partner([b0, a2], []) is None

    # run_cohort fills and refills its cohort so
    started, both = [], threading.Barrier(2)

    def fake(spec, **_):
        started.append((spec.label, spec.seed))
        if len(started) <= 2:
            both.wait(timeout=10)    # the first two are in the cohort at once
        return EpisodeResult(spec, "finished")

    monkeypatch.setattr(runner, "run_episode", fake)
    out = list(runner.run_cohort([a0, b0, b1, a1], size=2))
    assert len(out) == 4
    assert set(started[:2]) == {("passive", 0), ("passive", 1)}


# -- what does not stack, and what must not leak between episodes -------------------------------

def _noisy(model, x, y, ctx):
    """A user's method, written as for one student: the model itself, a plain generator."""
    assert not isinstance(model, C.Stacked) and ctx.cohort == 1
    noise = 0.01 * torch.randn(x.shape, generator=ctx.generator)
    return torch.nn.functional.cross_entropy(model(x + noise), y)


def _specs(protocols, seeds=(0, 1)):
    from teachsim.config import load

    cfg = copy.deepcopy(TINY)
    cfg["seeds"], cfg["protocols"] = list(seeds), protocols
    return load(cfg).episodes


def test_a_users_method_trains_alone_as_written_in_a_cohort_too(restore_registry):
    # a method without STACKS once got the stacked model and a cohort's Generators (mlp
    # students), alone too: torch.randn(generator=ctx.generator) raised, means mixed students
    from teachsim.runners.cohort import run_cohort
    from teachsim.runners.serial import run_serial

    teachsim.register_method("noisy-test", _noisy)
    s, _, _ = _student("erm", {}, 0, 20)
    s.method = _noisy
    assert not C.batchable(s)
    specs = _specs([{"name": "passive"}, {"name": "passive", "student": {"method": "noisy-test"}, "label": "noisy"}])
    one = {r.spec.key: r for r, _ in run_serial(specs)}
    many = {r.spec.key: r for r, _ in run_cohort(specs, size=4)}
    assert all(r.status == "finished" for r in [*one.values(), *many.values()]), [r.error for r in many.values()]
    for key, r in one.items():
        assert r.scores == many[key].scores and r.messages == many[key].messages
        assert all(np.array_equal(r.snapshots[b][k], many[key].snapshots[b][k]) for b in r.snapshots
                   for k in r.snapshots[b])


def test_an_episode_that_trains_alone_does_not_hold_up_its_cohort(restore_registry):
    # it never arrives at the others' barrier: it leaves it at its first learn call (before,
    # every other episode waited for its whole episode at each of their learn calls)
    from teachsim.runners.cohort import run_cohort

    others_done, waited = threading.Event(), []

    def patient(model, x, y, ctx):
        if not waited:
            waited.append(others_done.wait(30))
        return torch.nn.functional.cross_entropy(model(x), y)

    teachsim.register_method("patient-test", patient)
    specs = _specs([{"name": "passive"}, {"name": "passive", "batch": 5},
                    {"name": "passive", "student": {"method": "patient-test"}, "label": "patient"}], seeds=(0,))
    results = []
    for result, _ in run_cohort(specs, size=3):
        results.append(result)
        if len(results) == 2:
            others_done.set()
    assert waited == [True], "the other episodes waited for the one that trains alone"
    assert results[-1].spec.label == "patient" and all(r.status == "finished" for r in results)


def test_training_ignores_the_calling_threads_no_grad():
    # grad mode is per thread: in a cohort the last to arrive trains everyone, so a
    # protocol's torch.no_grad() around its learn call must not decide for the others
    a, X, y = _student("erm", {}, 0, 30)
    b, _, _ = _student("erm", {}, 0, 30)
    C.fit_together([C.Request(a, X, y, 5, torch.Generator().manual_seed(0))])
    with torch.no_grad():
        C.fit_together([C.Request(b, X, y, 5, torch.Generator().manual_seed(0))])
        b._fit(b.model, X, y, 0, torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_a_key_that_cannot_be_computed_fails_only_its_own_student(monkeypatch):
    requests = [C.Request(*_student("erm", {}, seed, 30), 5, torch.Generator().manual_seed(seed)) for seed in range(3)]
    real = C.Request.key

    def key(self):
        if self is requests[1]:
            raise ValueError("no key")
        return real(self)
    monkeypatch.setattr(C.Request, "key", key)
    C.Cohort()._train(requests)
    assert all(r.done for r in requests)
    assert [type(r.error).__name__ if r.error else None for r in requests] == [None, "ValueError", None]
    assert requests[0].trained and requests[2].trained and not requests[1].trained


def test_boxes_group_by_their_values_not_their_repr():
    lo = np.zeros(2000, np.float32)
    other = lo.copy()
    other[1000] = -1.0   # hidden in numpy's shortened repr
    assert repr(lo) == repr(other)
    assert C._box_key((lo, lo + 1)) != C._box_key((other, lo + 1))
    assert C._box_key((lo, lo + 1)) == C._box_key((lo.copy(), lo + 1))


def test_a_cancel_wakes_an_episode_waiting_for_its_scores():
    cohort = C.Cohort(judges=1)
    cohort.join()
    gate = threading.Event()
    first = cohort.submit("k", 1, lambda items: (gate.wait(10), items)[1])
    outcome = []

    def waiter():
        try:
            cohort.result(first)
            outcome.append("judged")
        except C.Cancelled:
            outcome.append("cancelled")

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    cohort.cancel()
    thread.join(5)
    gate.set()
    assert not thread.is_alive() and outcome == ["cancelled"]
    with pytest.raises(C.Cancelled):
        cohort.submit("k", 2, lambda items: items)


def test_a_serial_cohort_says_its_size(tmp_path, capsys):
    cfg = copy.deepcopy(TINY)
    cfg["seeds"] = [0]
    teachsim.run(cfg, out=tmp_path / "run", executor="serial", progress=True, cohort="auto")
    assert "serial: cohorts of 2 episodes in this process" in capsys.readouterr().err


def test_an_episode_in_a_cohort_leaves_the_process_thread_count_to_the_cohort(monkeypatch):
    # torch's thread count is the process's: run_cohort sets 1 for all its episodes and gives
    # the caller its count back when it ends. An episode that restored the count it found
    # (1) at its end reset the caller's, when it was still judging after an interrupted
    # cohort had returned. Alone, an episode runs on one thread and restores what it found.
    from teachsim.platform import episode as E

    real = E.build_task

    def caller_changes_it(*args):   # what run_cohort's return does while this episode runs
        torch.set_num_threads(3)
        return real(*args)

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(E, "build_task", caller_changes_it)
        spec = _specs([{"name": "passive"}], seeds=(0,))[0]
        torch.set_num_threads(1)
        with C.member(C.Cohort(1)):
            assert E.run_episode(spec).status == "finished"
        assert torch.get_num_threads() == 3      # left as the cohort's caller set it

        monkeypatch.setattr(E, "build_task", lambda *a: (seen.append(torch.get_num_threads()), real(*a))[1])
        seen: list[int] = []
        torch.set_num_threads(2)
        assert E.run_episode(spec).status == "finished"
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_episode_s_judge_uses_its_own_task_here_and_leaves_it_behind_for_a_judge_process():
    import pickle

    from teachsim.platform.episode import CheckpointJudge

    task = build_task({"name": "hidden-feature", "dim": 5, "manifold_dim": 2}, 0)
    judge = CheckpointJudge({"name": "hidden-feature", "dim": 5, "manifold_dim": 2}, {}, {}, 0, "cpu", task)
    sent = pickle.loads(pickle.dumps(judge))
    assert judge.task is task and sent.task is None and sent.task_cfg == judge.task_cfg
