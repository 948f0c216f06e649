"""Creating and loading studies, on SQLite and PostgreSQL: queued once, a changed definition
refused, a missing study named; the pruner a study file asks for."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpo.errors import ConfigError, StudyNotFound
from hpo.results.status import study_status
from hpo.storage import records
from hpo.storage.open import open_storage
from hpo.study.create import create_study, load_study, make_pruner
from hpo.study.files import load_definition

from conftest import SMALL_GRID, STUDIES, created_study, study_body, write_study


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
    study, _ = created_study(storage_url, tmp_path)
    changed = load_definition(write_study(tmp_path, "grid", SMALL_GRID.replace("epochs = [1]", "epochs = [1, 2]")))
    with pytest.raises(ConfigError, match=r"already exists with a different definition .*space\.epochs"):
        create_study(open_storage(storage_url), changed)
    assert len(study.get_trials()) == 6


def test_unknown_study_is_a_clear_error(storage_url: str) -> None:
    with pytest.raises(StudyNotFound, match="no study named 'nope'"):
        load_study(open_storage(storage_url), "nope")


def _pruned_steps(min_resource: int, tmp_path: Path) -> set[int]:
    """Where a Hyperband study over epochs 5..15 prunes 30 ever worse trials."""
    body = study_body("tpe", pruner="hyperband", learning_rate={"low": 1e-3, "high": 1e-2},
                      epochs={"low": 5, "high": 15}).replace('type = "hyperband"',
                                                             f'type = "hyperband"\nmin_resource = {min_resource}')
    definition = load_definition(write_study(tmp_path, f"hb{min_resource}", body))
    study = optuna.create_study(direction="maximize", pruner=make_pruner(definition))
    steps = set()
    for i in range(30):
        trial = study.ask()
        for step in range(1, definition.max_epochs + 1):
            trial.report(1.0 - i / 100, step)
            if trial.should_prune():
                steps.add(step)
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, 1.0 - i / 100)
    return steps


def test_hyperband_prunes_at_rungs_from_min_resource_to_the_top_of_the_epoch_range(tmp_path: Path) -> None:
    # Reduction factor 3 over 1..15 epochs: rungs at 1, 3 and 9; from 5: at 5 (and 15, the end).
    assert _pruned_steps(1, tmp_path) and _pruned_steps(1, tmp_path) <= {1, 3, 9}
    assert _pruned_steps(5, tmp_path) and _pruned_steps(5, tmp_path) <= {5, 15}


def test_a_study_made_when_hpo_kept_its_record_in_user_attributes_still_loads(storage_url: str,
                                                                             tmp_path: Path) -> None:
    """Until issue 30 the definition, data, builder and uid were study user attributes (the
    dashboard showed them as JSON). A database made then is read as it is: nothing is migrated."""
    study, definition = created_study(storage_url, tmp_path)
    record = records.record_of(study)
    engine = sqlalchemy.create_engine(storage_url)
    with engine.begin() as conn:  # the layout an older hpo wrote
        conn.execute(sqlalchemy.text("DELETE FROM study_system_attributes WHERE key LIKE 'hpo:%'"))
        conn.execute(sqlalchemy.text("DELETE FROM study_user_attributes"))
    engine.dispose()
    for key, value in record.items():
        study.set_user_attr(records.STUDY_RECORD_BEFORE[key], value)

    assert records.record_of(study) == record
    again, created = create_study(open_storage(storage_url), definition)
    assert not created and len(again.get_trials()) == 6
    assert records.records_by_name(open_storage(storage_url))["grid"][records.UID] == record[records.UID]
    changed = load_definition(write_study(tmp_path, "grid", SMALL_GRID.replace("epochs = [1]", "epochs = [1, 2]")))
    with pytest.raises(ConfigError, match="already exists with a different definition"):
        create_study(open_storage(storage_url), changed)
