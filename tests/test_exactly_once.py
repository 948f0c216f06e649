"""Exactly once under concurrency: many processes creating, launching and recovering one study.

Real processes against real SQLite files and the real PostgreSQL server. Processes that must
race are held at a barrier and released together, so the race really happens.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo.study import queueing

from hpo.storage import records
from hpo.workers import liveness
from hpo.study.files import load_definition
from hpo.storage.open import open_storage
from hpo.study.create import create_study, load_study
from hpo.study.plan import trial_sampler

from conftest import STUDIES, ok, run_hpo, study_body, write_study

N_PROCESSES = 5


def _create_at_barrier(url: str, study_file: str, barrier: multiprocessing.synchronize.Barrier,
                       out: multiprocessing.Queue) -> None:
    definition = load_definition(study_file)
    storage = open_storage(url)
    barrier.wait(timeout=120)
    _, created = create_study(storage, definition)
    out.put(created)


def _run_together(target, args_for, n: int = N_PROCESSES) -> list:
    """Start ``n`` spawned processes, release them together, return what each put on the queue."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def _slots(url: str, name: str) -> Counter[int]:
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    return Counter(t.system_attrs[records.SLOT] for t in trials)


def test_concurrent_creates_queue_every_grid_point_once(storage_url: str) -> None:
    created = _run_together(_create_at_barrier, lambda i: (storage_url, str(STUDIES / "exp3.toml")))
    slots = _slots(storage_url, "exp3")
    print(f"{N_PROCESSES} concurrent creates queued {sum(slots.values())} trials for 27 points")
    assert sorted(slots) == list(range(27)) and set(slots.values()) == {1}
    assert created.count(True) >= 1  # the others found it made (or made it together, under the lock)


def test_concurrent_create_commands_queue_every_point_once(storage_url: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "hpo", "--storage", storage_url, "create",
                               str(STUDIES / "exp3.toml")], stderr=subprocess.PIPE, text=True)
             for _ in range(N_PROCESSES)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    slots = _slots(storage_url, "exp3")
    assert sum(slots.values()) == 27 and set(slots.values()) == {1}


def _recover_at_barrier(url: str, name: str, barrier: multiprocessing.synchronize.Barrier,
                        out: multiprocessing.Queue) -> None:
    study, definition = load_study(open_storage(url), name)
    barrier.wait(timeout=120)
    out.put(liveness.recover(study, definition))


GRID = study_body(study={"max_retries": 2}, learning_rate=[0.01, 0.001, 0.0001], batch_size=[32, 64])


def test_processes_recovering_the_same_dead_trial_queue_one_retry(storage_url: str, tmp_path: Path) -> None:
    definition = load_definition(write_study(tmp_path, "grid", GRID))
    study, _ = create_study(open_storage(storage_url), definition)
    trial = queueing.claim(study, trial_sampler(definition))
    assert trial is not None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study._storage.set_trial_system_attr(trial._trial_id, records.WORKER, f"{queueing.HOST}:{dead.pid}")

    recovered = _run_together(_recover_at_barrier, lambda i: (storage_url, "grid"))

    assert sorted(recovered) == [0] * (N_PROCESSES - 1) + [1]
    retries = [t for t in study.get_trials() if t.system_attrs.get(records.RETRY_OF) == trial.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert len(study.get_trials()) == 7


def test_a_retry_lost_to_a_crash_is_queued_by_the_next_worker(storage_url: str, tmp_path: Path) -> None:
    """A process that failed a trial and died before queueing its retry loses nothing."""
    definition = load_definition(write_study(tmp_path, "grid", GRID))
    study, _ = create_study(open_storage(storage_url), definition)
    trial = queueing.claim(study, trial_sampler(definition))
    assert trial is not None
    assert queueing.fail(study, trial._trial_id, "worker crashed before queueing the retry")
    assert queueing.sync(study, definition) == 1
    assert queueing.sync(study, definition) == 0  # idempotent
    retry = next(t for t in study.get_trials() if t.system_attrs.get(records.RETRY_OF) == trial.number)
    assert retry.system_attrs[records.GRID_ID] == trial._cached_frozen_trial.system_attrs[records.GRID_ID]
    assert retry.system_attrs[records.ATTEMPT] == 1


TINY_GRID = study_body(learning_rate=[0.001, 0.0001], batch_size=[64, 128])


def test_three_launchers_of_one_study_train_every_point_once(storage_url: str, data_path: str,
                                                             tmp_path: Path) -> None:
    study_file = write_study(tmp_path, "tiny", TINY_GRID)
    launchers = [subprocess.Popen(
        [sys.executable, "-m", "hpo", "--storage", storage_url, "launch", str(study_file), "-n", "1",
         "--threads", "1", "--data", data_path, "--subset", "200", "--logs", str(tmp_path / f"logs{i}")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    for launcher in launchers:
        _, err = launcher.communicate(timeout=900)
        assert launcher.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="tiny", storage=storage_url).get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 4}
    assert sorted(t.system_attrs[records.SLOT] for t in trials) == [0, 1, 2, 3]


def _continuous(sampler: str, trials: int) -> str:
    """A search of ``trials`` trials over a log learning rate, batch sizes and epochs."""
    return study_body(sampler, seed=7, study={"trials": trials}, learning_rate={"low": 1e-4, "high": 1e-2, "log": True},
                      batch_size=[32, 64, 128], epochs={"low": 1, "high": 3})



def _sample_at_barrier(url: str, name: str, barrier: multiprocessing.synchronize.Barrier,
                       out: multiprocessing.Queue) -> None:
    """A worker's sampling, for real (claim, the objective's suggest, tell), without the training."""
    from hpo.training.objective import suggest

    study, definition = load_study(open_storage(url), name)
    barrier.wait(timeout=120)
    drawn = []
    while (trial := queueing.claim(study, trial_sampler(definition))) is not None:
        params = suggest(trial, definition)
        drawn.append((params.learning_rate, params.batch_size, params.epochs))
        study.tell(trial, -abs(params.learning_rate - 1e-3))  # a value for TPE to learn from
    out.put(drawn)


def _parallel_draws(url: str, tmp_path: Path, sampler: str, trials: int) -> list[tuple]:
    definition = load_definition(write_study(tmp_path, "cont", _continuous(sampler, trials)))
    create_study(open_storage(url), definition)
    draws = _run_together(_sample_at_barrier, lambda i: (url, "cont"), n=3)
    return [d for worker in draws for d in worker]


def test_parallel_tpe_workers_never_repeat_a_configuration(storage_url: str, tmp_path: Path) -> None:
    # 16 trials: past TPE's 10 random start-up trials, into its model-based draws.
    drawn = _parallel_draws(storage_url, tmp_path, "tpe", 16)
    assert len(drawn) == 16
    assert len({lr for lr, _, _ in drawn}) == 16, drawn


def test_parallel_random_workers_never_repeat_a_configuration(storage_url: str, tmp_path: Path) -> None:
    drawn = _parallel_draws(storage_url, tmp_path, "random", 12)
    assert len({lr for lr, _, _ in drawn}) == 12, drawn




def test_launch_of_parallel_tpe_trains_eight_different_configurations(data_path: str, tmp_path: Path) -> None:
    study_file = write_study(tmp_path, "tpe8", _continuous("tpe", 8).replace(
        "{ low = 1, high = 3 }", "[1]"))
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    ok(run_hpo("launch", str(study_file), "-n", "2", "--threads", "1", "--data", data_path, "--subset", "200",
               "--logs", str(tmp_path / "logs"), storage=db, cwd=tmp_path))
    trials = optuna.load_study(study_name="tpe8", storage=db).get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 8}
    configurations = {tuple(sorted(t.params.items())) for t in trials}
    print(f"8 parallel TPE trials: {8 - len(configurations)} duplicate configurations")
    assert len(configurations) == 8
    assert len({t.user_attrs[records.SEED] for t in trials}) == 8
    assert len({t.system_attrs[records.WORKER] for t in trials}) == 2  # both workers drew and trained


def test_seeds_are_recorded_distinct_and_the_same_on_a_rerun(tmp_path: Path) -> None:
    """Random search is fully reproducible from the recorded seeds, however many workers ran it."""
    runs = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        drawn = sorted(_parallel_draws(f"sqlite:///{folder / 'hpo.db'}", folder, "random", 6))
        runs.append(drawn)
    assert runs[0] == runs[1]
