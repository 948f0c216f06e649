"""The study queue on SQLite and PostgreSQL: each grid point claimed once, failures retried, none lost."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import optuna

from hpo.study import queueing

from hpo.storage.open import open_storage
from hpo.study.create import load_study
from hpo.study.plan import trial_sampler

from conftest import SMALL_GRID, created_study

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










