"""hpo.stored leans on a few private names of Optuna's: this fails when an upgrade moves one."""

from __future__ import annotations

import optuna
from optuna.artifacts import _upload
from optuna.samplers import GridSampler
from optuna.storages import RDBStorage

from hpo import stored


def test_the_private_optuna_names_hpo_uses_still_exist(tmp_path) -> None:
    storage = RDBStorage(f"sqlite:///{tmp_path / 'hpo.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    assert stored.storage_of(study) is study._storage
    assert stored.study_id(study) == study._study_id
    assert stored.trial_id(trial) == trial._trial_id
    assert stored.engine_of(stored.storage_of(study)) is storage.engine
    assert stored.stale_trial_ids(storage, study) == []
    grid = GridSampler({"a": [1, 2], "b": ["x"]}, seed=0)
    assert sorted(stored.grid_point(grid, i)["a"] for i in range(2)) == [1, 2]


def test_artifacts_are_registered_under_optunas_own_key() -> None:
    # The dashboard and optuna.artifacts.get_all_artifact_meta find artifacts by this prefix.
    assert stored.ARTIFACT_PREFIX == _upload.ARTIFACTS_ATTR_PREFIX
