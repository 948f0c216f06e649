"""The study queue on SQLite and PostgreSQL: each grid point claimed once, failures retried, none lost."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import optuna

from hpo.storage import records
from hpo.study import queueing

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
