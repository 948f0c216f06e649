"""The study queue on SQLite and PostgreSQL: each grid point claimed once, failures retried, none lost."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.study import queueing

from hpo.storage import records
from hpo.workers import liveness
from hpo.study.definition import load_definition
from hpo.errors import ConfigError, StudyNotFound
from hpo.results.rows import best_trial_rows
from hpo.results.status import study_status
from hpo.training.events import Finished, Run
from hpo.storage.open import open_storage
from hpo.study.create import create_study, load_study
from hpo.study.plan import trial_sampler
from hpo.workers.loop import Job, run_worker

from conftest import STUDIES, write_study

SMALL_GRID = """
max_retries = 1
[sampler]
type = "grid"
[space]
architecture = "base"
augmentation = "none"
learning_rate = [0.01, 0.001, 0.0001]
batch_size = [32, 64]
epochs = [1]
"""


def _system_attrs(study: optuna.Study, trial: optuna.Trial) -> dict:
    return study._storage.get_trial(trial._trial_id).system_attrs


def _study(storage_url: str, tmp_path: Path, body: str = SMALL_GRID, name: str = "grid"):
    definition = load_definition(write_study(tmp_path, name, body))
    study, created = create_study(open_storage(storage_url), definition)
    assert created
    return study, definition


def test_create_queues_one_trial_per_grid_point_and_is_idempotent(storage_url: str) -> None:
    definition = load_definition(STUDIES / "exp3.toml")
    storage = open_storage(storage_url)
    study, created = create_study(storage, definition)
    again, created_again = create_study(open_storage(storage_url), definition)
    assert created and not created_again
    trials = again.get_trials()
    assert len(trials) == 27 and {t.state for t in trials} == {TrialState.WAITING}
    assert sorted(t.system_attrs["grid_id"] for t in trials) == list(range(27))
    status = study_status(again, definition)
    assert status.points["pending"] == 27 and status.total_points == 27


def test_changed_definition_under_same_name_is_refused_and_nothing_changes(storage_url: str, tmp_path: Path) -> None:
    study, _ = _study(storage_url, tmp_path)
    changed = load_definition(write_study(tmp_path, "grid", SMALL_GRID.replace("epochs = [1]", "epochs = [1, 2]")))
    with pytest.raises(ConfigError, match=r"already exists with a different definition .*space\.epochs"):
        create_study(open_storage(storage_url), changed)
    assert len(study.get_trials()) == 6


def test_grid_sampler_gives_each_queued_trial_its_own_point(storage_url: str, tmp_path: Path) -> None:
    study, definition = _study(storage_url, tmp_path)
    seen = []
    while (trial := queueing.claim(study, trial_sampler(definition))) is not None:
        params = {name: trial.suggest_categorical(name, values) for name, values in definition.grid.items()}
        assert params == study.sampler.point(_system_attrs(study, trial)["grid_id"])
        seen.append(tuple(sorted(params.items())))
        study.tell(trial, 0.5)
    assert sorted(seen) == sorted(tuple(sorted(p.items())) for p in definition.grid_points)


def _claim_all(storage_url: str, name: str, out: multiprocessing.Queue[list[int]]) -> None:
    study, definition = load_study(open_storage(storage_url), name)
    claimed = []
    while (trial := queueing.claim(study, trial_sampler(definition))) is not None:
        claimed.append(_system_attrs(study, trial)["grid_id"])
        study.tell(trial, 1.0)
    out.put(claimed)


def test_concurrent_workers_never_claim_the_same_point(storage_url: str, tmp_path: Path) -> None:
    _study(storage_url, tmp_path, SMALL_GRID.replace("epochs = [1]", "epochs = [1, 2, 3, 4, 5]"))  # 30 points
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[list[int]] = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(storage_url, "grid", results)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [g for _ in procs for g in results.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(claimed) == list(range(30))


def test_a_failing_point_is_retried_then_reported_failed_never_dropped(storage_url: str, tmp_path: Path) -> None:
    study, definition = _study(storage_url, tmp_path)  # max_retries = 1

    def objective(run: Run) -> Iterator[Finished]:
        lr = run.trial.suggest_categorical("learning_rate", [0.01, 0.001, 0.0001])
        for name, values in definition.grid.items():
            run.trial.suggest_categorical(name, values)
        if lr == 0.01:
            raise RuntimeError("exploded")
        yield Finished(run.trial, 0.5, {}, result=None)

    summary = run_worker([Job(study, definition, objective)], poll_interval=0.1)
    assert summary.complete == 4 and summary.failed == 4  # 2 points x (1 try + 1 retry)
    status = study_status(study, definition)
    assert status.points == {"pending": 0, "running": 0, "complete": 4, "pruned": 0, "failed": 2}
    assert {p["params"]["learning_rate"] for p in status.failed_points} == {0.01}
    assert all("RuntimeError: exploded" in p["error"] for p in status.failed_points)
    rows = best_trial_rows(study, definition)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4 + ["FAIL"] * 2
    assert all("exploded" in r["note"] for r in rows[4:])


def test_trial_of_a_dead_worker_is_failed_and_queued_again(storage_url: str, tmp_path: Path) -> None:
    study, definition = _study(storage_url, tmp_path)
    trial = queueing.claim(study, trial_sampler(definition))
    assert trial is not None
    # Pretend a worker process on this host claimed it and died: a pid that no longer exists.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study._storage.set_trial_system_attr(trial._trial_id, records.WORKER, f"{queueing.HOST}:{dead.pid}")
    assert liveness.recover(study, definition) == 1
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.FAIL and "died" in frozen.user_attrs["error"]
    retries = [t for t in study.get_trials() if t.system_attrs.get(records.RETRY_OF) == trial.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert retries[0].system_attrs["grid_id"] == frozen.system_attrs["grid_id"]
    assert study_status(study, definition).points["pending"] == 6


def test_own_live_trial_is_not_recovered(storage_url: str, tmp_path: Path) -> None:
    study, definition = _study(storage_url, tmp_path)
    trial = queueing.claim(study, trial_sampler(definition))
    assert trial is not None and liveness.recover(study, definition) == 0
    assert study._storage.get_trial(trial._trial_id).system_attrs[records.WORKER].endswith(f":{os.getpid()}")


def test_status_shows_how_many_epochs_each_running_trial_has_done(storage_url: str, tmp_path: Path) -> None:
    study, definition = _study(storage_url, tmp_path, SMALL_GRID.replace("epochs = [1]", "epochs = [3]"))
    first, second = queueing.claim(study, trial_sampler(definition)), queueing.claim(study, trial_sampler(definition))
    assert first is not None and second is not None
    for name, values in definition.grid.items():
        first.suggest_categorical(name, values)
    first.report(0.31, step=1)
    first.report(0.42, step=2)  # second has not suggested its params yet
    status = study_status(study, definition)
    assert status.running_epochs == [(2, 3), (0, None)]
    assert status.running_progress() == "2/3, 0/?"
    assert status.to_dict()["running_epochs"] == [{"done": 2, "planned": 3}, {"done": 0, "planned": None}]


def test_unknown_study_is_a_clear_error(storage_url: str) -> None:
    with pytest.raises(StudyNotFound, match="no study named 'nope'"):
        load_study(open_storage(storage_url), "nope")
