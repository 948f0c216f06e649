"""A trial's artifacts are all or nothing.

Real workers training real models on a small subset; a real full disk (a tiny tmpfs, as root).
A worker that comes back late links nothing either: tests/test_liveness.py.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Iterator

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState


from conftest import ok, run_hpo, small_file_system, study_body, write_study




@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 KiB file system: room for a plot or two, not for a trial's model (about 3.7 MB)."""
    with small_file_system(tmp_path / "full", "200k") as folder:
        yield folder


def test_a_full_artifact_disk_keeps_the_trial_and_registers_no_file(tiny_disk: Path, data_path: str,
                                                                     tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "full", study_body())
    result = run_hpo("worker", str(study), "--data", data_path, "--subset", "100", "--threads", "1",
                     "--artifacts", str(tiny_disk), storage=db, cwd=tmp_path)
    ok(result)
    (trial,) = optuna.load_study(study_name="full", storage=db).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["test_accuracy"] is not None
    assert "artifacts not saved" in result.stderr and "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    assert get_all_artifact_meta(trial, storage=optuna.storages.get_storage(db)) == []
    assert list(tiny_disk.iterdir()) == []  # what was written before the disk filled is gone too

    # The report of such a trial says its figures are missing; it copies nothing broken.
    ok(run_hpo("report", "full", "-o", str(tmp_path / "report"), "--artifacts", str(tiny_disk), storage=db))
    assert not list((tmp_path / "report").glob("*.png"))


def test_a_full_disk_under_the_checkpoints_lets_the_trial_train_on_and_leaves_no_partial_file(
        tiny_disk: Path, data_path: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "full", study_body(epochs=[3]))
    result = run_hpo("worker", str(study), "--data", data_path, "--subset", "100", "--threads", "1",
                     "--artifacts", str(tiny_disk), storage=db, cwd=tmp_path)
    ok(result)
    (trial,) = optuna.load_study(study_name="full", storage=db).get_trials()
    assert trial.state == TrialState.COMPLETE and len(trial.intermediate_values) == 3
    # A checkpoint after epochs 1 and 2 (none after the last): each one line, the run goes on.
    assert result.stderr.count("checkpoint not saved (No space left on device); training goes on") == 2
    assert "Traceback" not in result.stderr
    assert [p for p in tiny_disk.rglob("*") if p.is_file()] == []  # no torn checkpoint, no .partial


@pytest.mark.parametrize("keep", ["best", "none"])
def test_the_models_kept_are_the_best_so_far_or_none(keep: str, data_path: str, tmp_path: Path) -> None:
    """A trial saves its model with "best" (the default) only if no COMPLETE trial was better when
    it finished, so the study's best always has one; "none" saves plots and metrics only."""
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "kept", study_body(study={} if keep == "best" else {"keep_models": keep},
                                                     learning_rate=[0.01, 0.003, 0.001, 0.0003, 0.0001]))
    ok(run_hpo("worker", str(study), "--data", data_path, "--subset", "200", "--threads", "1",
               storage=db, cwd=tmp_path))
    loaded = optuna.load_study(study_name="kept", storage=db)
    storage = optuna.storages.get_storage(db)
    trials = sorted(loaded.get_trials(), key=lambda t: t.datetime_complete)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    files = {t.number: {m.filename.split("_trial")[0] for m in get_all_artifact_meta(t, storage=storage)}
             for t in trials}
    assert all({"learning_curves", "confusion_matrix", "metrics"} <= kinds for kinds in files.values())
    with_model = {n for n, kinds in files.items() if "model" in kinds}
    if keep == "none":
        assert with_model == set()
        return
    best_so_far, expected = -1.0, set()
    for t in trials:
        if t.value >= best_so_far:
            expected.add(t.number)
            best_so_far = t.value
    assert with_model == expected and loaded.best_trial.number in with_model
    assert len(list((tmp_path / "hpo-artifacts").glob("*.keras"))) == len(expected)


def test_keep_models_takes_one_of_its_three_values(tmp_path: Path) -> None:
    study = write_study(tmp_path, "kept", study_body(study={"keep_models": "some"}))
    result = run_hpo("create", str(study), storage=f"sqlite:///{tmp_path / 'hpo.db'}", cwd=tmp_path)
    assert result.returncode == 2 and "study.keep_models" in result.stderr and "best, all, none" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
