"""Where a study stands, as hpo status shows it."""

from __future__ import annotations

from pathlib import Path

from hpo.results.status import study_status
from hpo.study import queueing
from hpo.study.plan import trial_sampler

from conftest import SMALL_GRID, created_study


def test_status_shows_how_many_epochs_each_running_trial_has_done(storage_url: str, tmp_path: Path) -> None:
    study, definition = created_study(storage_url, tmp_path, SMALL_GRID.replace("epochs = [1]", "epochs = [3]"))
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
