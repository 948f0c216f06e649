"""hpo.storage.records: the private Optuna names hpo leans on, and the writes that must be one transaction.

The first test fails when an Optuna upgrade moves a private name. The others check, on SQLite
and PostgreSQL, what a reader of the database relies on: queued trials are numbered as Optuna
numbers them, a claim is taken once, and a result is written whole or not at all.
"""

from __future__ import annotations

import optuna
from optuna.artifacts import _upload
from optuna.samplers import GridSampler
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from hpo.storage import records
from hpo.storage.open import open_storage


def test_the_private_optuna_names_hpo_uses_still_exist(tmp_path) -> None:
    storage = RDBStorage(f"sqlite:///{tmp_path / 'hpo.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    assert records.storage_of(study) is study._storage._backend  # past Optuna's cache
    assert records.study_id(study) == study._study_id
    assert records.trial_id(trial) == trial._trial_id
    assert records.engine_of(records.storage_of(study)) is storage.engine
    assert records.claimed_trial(study, trial._trial_id).number == trial.number  # Optuna's cache told of it
    grid = GridSampler({"a": [1, 2], "b": ["x"]}, seed=0)
    assert sorted(records.grid_point(grid, i)["a"] for i in range(2)) == [1, 2]


def test_artifacts_are_registered_under_optunas_own_key() -> None:
    # The dashboard and optuna.artifacts.get_all_artifact_meta find artifacts by this prefix.
    assert records.ARTIFACT_PREFIX == _upload.ARTIFACTS_ATTR_PREFIX
    key, meta = records.artifact_attr("abc", "curves.png")
    assert key == "artifacts:abc" and '"mimetype": "image/png"' in meta


def _study(storage_url: str) -> optuna.Study:
    return optuna.create_study(storage=open_storage(storage_url), study_name="s")


def test_queued_trials_are_numbered_after_the_study_s_trials(storage_url: str) -> None:
    study = _study(storage_url)
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))
    records.add_waiting_trials(records.storage_of(study), study, [{"hpo:slot": i} for i in range(3)])
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state for t in trials] == [TrialState.WAITING] * 4
    assert [t.system_attrs.get("hpo:slot") for t in trials] == [None, 0, 1, 2]
    study.add_trial(optuna.trial.create_trial(value=1.0))
    assert study.get_trials()[-1].number == 4  # Optuna's own numbering goes on from there


def test_a_trial_is_claimed_once_with_who_holds_it(storage_url: str) -> None:
    study = _study(storage_url)
    records.add_waiting_trials(records.storage_of(study), study, [{}])
    trial_id = records.trial_id(study.get_trials()[0])
    storage = records.storage_of(study)
    assert records.claim_trial(storage, trial_id, {records.WORKER: "a:1"})
    assert not records.claim_trial(storage, trial_id, {records.WORKER: "b:2"})
    claimed = storage.get_trial(trial_id)
    assert claimed.state == TrialState.RUNNING and claimed.system_attrs[records.WORKER] == "a:1"
    assert claimed.datetime_start is not None


def test_a_result_is_written_whole_or_not_at_all(storage_url: str) -> None:
    study = _study(storage_url)
    first, second = study.ask(), study.ask()
    storage = records.storage_of(study)
    result = {"test_accuracy": 0.5, "test_loss": 1.5}
    assert records.finish_trial(storage, first._trial_id, TrialState.COMPLETE, value=0.4, user_attrs=result,
                               system_attrs={"artifacts:x": "{}"})
    done = storage.get_trial(first._trial_id)
    assert (done.state, done.value, done.user_attrs, done.system_attrs["artifacts:x"]) == (
        TrialState.COMPLETE, 0.4, result, "{}")
    # Another process failed the second trial first: the late result writes nothing at all.
    assert records.finish_trial(storage, second._trial_id, TrialState.FAIL, user_attrs={records.ERROR: "dead"})
    assert not records.finish_trial(storage, second._trial_id, TrialState.COMPLETE, value=0.9, user_attrs=result)
    failed = storage.get_trial(second._trial_id)
    assert (failed.state, failed.value, failed.user_attrs) == (TrialState.FAIL, None, {records.ERROR: "dead"})


def test_a_pruned_trial_keeps_its_last_reported_value(storage_url: str) -> None:
    study = _study(storage_url)
    trial = study.ask()
    trial.report(0.3, 1)
    trial.report(0.35, 2)
    assert records.finish_trial(records.storage_of(study), trial._trial_id, TrialState.PRUNED)
    pruned = study.get_trials()[0]
    assert (pruned.state, pruned.value) == (TrialState.PRUNED, 0.35)
