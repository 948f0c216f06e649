"""The study queue on SQLite and PostgreSQL: each grid point claimed once, failures retried, none lost."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from hpo.storage import records
from hpo.study import plan, queueing
from hpo.workers import liveness

from hpo.storage.open import open_storage
from hpo.study.create import load_study
from hpo.study.plan import trial_sampler

from hpo.study.definition import StudyDefinition

from conftest import SMALL_GRID, created_study, study_body

def _system_attrs(study: optuna.Study, trial: optuna.Trial) -> dict:
    return study._storage.get_trial(trial._trial_id).system_attrs






def test_grid_sampler_gives_each_queued_trial_its_own_point(storage_url: str, tmp_path: Path) -> None:
    study, definition = created_study(storage_url, tmp_path)
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
    created_study(storage_url, tmp_path, SMALL_GRID.replace("epochs = [1]", "epochs = [1, 2, 3, 4, 5]"))  # 30 points
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[list[int]] = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(storage_url, "grid", results)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [g for _ in procs for g in results.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(claimed) == list(range(30))


def test_a_failed_point_is_retried_with_its_parameters_until_its_retries_are_used(storage_url: str,
                                                                                 tmp_path: Path) -> None:
    """One point, one retry allowed: a try that fails twice fails for good; an interrupted try
    (SIGTERM, Ctrl-C) is not counted; a fatal one is not retried; sync twice queues once."""
    one_point = study_body(study={"max_retries": 1})

    def claim_and_fail(study: optuna.Study, definition: StudyDefinition, **how: bool) -> optuna.trial.FrozenTrial:
        trial = queueing.claim(study, trial_sampler(definition))
        assert trial is not None
        for name, values in definition.grid.items():
            trial.suggest_categorical(name, values)
        assert queueing.fail(study, trial._trial_id, "boom", **how)
        return study._storage.get_trial(trial._trial_id)

    study, definition = created_study(storage_url, tmp_path, one_point)
    first = claim_and_fail(study, definition)
    assert queueing.sync(study, definition) == 1 and queueing.sync(study, definition) == 0
    interrupted = claim_and_fail(study, definition, interrupted=True)
    assert queueing.sync(study, definition) == 1  # free: the point's one retry is still to come
    counted = claim_and_fail(study, definition)
    assert queueing.sync(study, definition) == 0  # retries used up: failed for good
    tries = [interrupted, counted]
    assert all(t.system_attrs[records.SLOT] == first.system_attrs[records.SLOT] for t in tries)
    assert all(records.trial_params(t) == records.trial_params(first) for t in tries)
    assert [t.system_attrs[records.ATTEMPT] for t in tries] == [1, 1]
    assert [t.system_attrs[records.RETRY_OF] for t in tries] == [first.number, interrupted.number]

    other, definition = created_study(storage_url, tmp_path, one_point, name="other")
    claim_and_fail(other, definition, fatal=True)  # a configuration no retry mends
    assert queueing.sync(other, definition) == 0


def test_claims_follow_the_plan_s_order_with_a_retry_among_them(storage_url: str, tmp_path: Path) -> None:
    """The database picks the claimed trial: the order is still plan.claim_order's, a retry included."""
    body = study_body(study={"repeats": 2, "max_retries": 1, "share_prefixes": False}, learning_rate=[0.01, 0.001],
                      epochs=[1, 3])
    study, definition = created_study(storage_url, tmp_path, body)
    first = queueing.claim(study, trial_sampler(definition))
    assert first is not None
    queueing.fail(study, first._trial_id, "lost")
    assert queueing.sync(study, definition) == 1  # its retry: the same repeat and epochs, the last number
    waiting = study._storage.get_all_trials(study._study_id, states=(optuna.trial.TrialState.WAITING,))
    expected = [t.number for t in sorted(waiting, key=plan.claim_order)]
    taken = []
    while (trial := queueing.claim(study, trial_sampler(definition))) is not None:
        taken.append(trial.number)
    assert taken == expected
    # The retry (repeat 0, 3 epochs) comes after the other 3-epoch point of repeat 0, before the rest.
    assert len(taken) == 8 and taken.index(max(taken)) == 1


def test_claim_recover_and_sync_read_no_list_of_the_queue(storage_url: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Claiming, recovering and queueing cost a query or a few however many trials a study holds:
    none of them reads the whole queue of WAITING trials (in a study of 100,000, seconds a call;
    BENCHMARKS.md, r)."""
    study, definition = created_study(storage_url, tmp_path)
    trial = queueing.claim(study, trial_sampler(definition))
    read = RDBStorage._get_trials

    def no_listing(self: RDBStorage, study_id: int, states: Any, *args: Any) -> Any:
        assert states is not None and TrialState.WAITING not in states, "read every WAITING trial"
        return read(self, study_id, states, *args)

    monkeypatch.setattr(RDBStorage, "_get_trials", no_listing)
    assert queueing.fail(study, trial._trial_id, "lost")
    assert liveness.recover(study, definition, liveness.Watch()) == 0
    assert queueing.sync(study, definition) == 1
    trial = queueing.claim(study, trial_sampler(definition))
    assert trial is not None and trial.number == 1  # the oldest WAITING trial
    trial.suggest_categorical("learning_rate", definition.grid["learning_rate"])  # Optuna's cache knows the trial
