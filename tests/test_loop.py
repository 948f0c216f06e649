"""The worker loop, on SQLite and PostgreSQL: it records what a run hands back, retries what
may go well on another try, fails once what cannot, and drops a trial another worker took over."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.errors import ConfigError, TrialError
from hpo.results.rows import best_trial_rows
from hpo.results.status import study_status
from hpo.storage import records
from hpo.study import queueing
from hpo.study.definition import StudyDefinition
from hpo.training.events import Finished, Objective, Run
from hpo.training.objective import run_trial
from hpo.workers.loop import Job, run_worker

from conftest import created_study, study_body, wait_for


def _failing(definition: StudyDefinition, error: Exception) -> Objective:
    """An objective whose lr 0.01 points raise ``error``; the others complete at 0.5."""
    def objective(run: Run) -> Iterator[Finished]:
        lr = run.trial.suggest_categorical("learning_rate", [0.01, 0.001, 0.0001])
        for name, values in definition.grid.items():
            run.trial.suggest_categorical(name, values)
        if lr == 0.01:
            raise error
        yield Finished(run.trial, 0.5, {}, result=None)

    return objective


def test_a_failing_point_is_retried_then_reported_failed_never_dropped(storage_url: str, tmp_path: Path) -> None:
    study, definition = created_study(storage_url, tmp_path)  # max_retries = 1
    summary = run_worker([Job(study, definition, _failing(definition, RuntimeError("exploded")))], poll_interval=0.1)
    assert summary.complete == 4 and summary.failed == 4  # 2 points x (1 try + 1 retry)
    status = study_status(study, definition)
    assert status.points == {"pending": 0, "running": 0, "complete": 4, "pruned": 0, "failed": 2}
    assert {p["params"]["learning_rate"] for p in status.failed_points} == {0.01}
    assert all("RuntimeError: exploded" in p["error"] for p in status.failed_points)
    rows = best_trial_rows(study, definition)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4 + ["FAIL"] * 2
    assert all("exploded" in r["note"] for r in rows[4:])


def test_a_shorter_point_taken_over_by_another_worker_is_dropped_and_the_run_goes_on(
        storage_url: str, tmp_path: Path, small_data, caplog: pytest.LogCaptureFixture) -> None:
    """Mid-run, another process finds the 2-epoch point dead (as when its heartbeats stop
    arriving) and fails it: its retry stands, this run writes nothing more to it and still
    completes its own 3-epoch point."""
    study, definition = created_study(storage_url, tmp_path, study_body(seed=5, batch_size=[32], epochs=[2, 3]),
                                      "taken")
    taken: list[int] = []

    def take_over(run) -> None:
        """Another process: once epoch 1 is reported, fail the shorter trial, before epoch 2 ends."""
        other = optuna.load_study(study_name="taken", storage=storage_url)
        wait_for(lambda: other._storage.get_trial(run.trial._trial_id).intermediate_values, 60, "epoch 1",
                 interval=0.02)
        queueing.fail(other, records.trial_id(run.shorter[0]), "worker stopped sending heartbeats")
        queueing.sync(other, definition)

    def objective(run):
        if not taken:
            taken.append(run.shorter[0].number)
            threading.Thread(target=take_over, args=(run,)).start()
        return run_trial(run, definition, small_data)

    with caplog.at_level("WARNING"):
        summary = run_worker([Job(study, definition, objective)])
    trials = study.get_trials()
    lost = next(t for t in trials if t.number == taken[0])
    assert lost.state == TrialState.FAIL and "test_accuracy" not in lost.user_attrs
    assert f"trial {lost.number} was recovered by another worker" in caplog.text
    # The run's own 3-epoch point completed; the 2-epoch point's retry completed in a run of its own.
    assert sorted((t.system_attrs[records.EPOCHS], t.state.name) for t in trials) == [
        (2, "COMPLETE"), (2, "FAIL"), (3, "COMPLETE")]
    assert (summary.complete, summary.dropped, summary.failed) == (2, 1, 0)


@pytest.mark.parametrize("error", [TrialError("this model cannot be built"), ConfigError("unknown architecture")])
def test_a_trial_that_no_retry_can_mend_fails_once(error: Exception, storage_url: str, tmp_path: Path) -> None:
    """keras-tuner's FailedTrialError: the same configuration fails the same way every time, so
    its point fails for good at once instead of using up max_retries (here 1) on a certainty."""
    study, definition = created_study(storage_url, tmp_path)
    discarded = _Discarded()
    summary = run_worker([Job(study, definition, _failing(definition, error), checkpoints=discarded)],
                         poll_interval=0.1)
    assert summary.complete == 4 and summary.failed == 2  # 2 points x 1 try, no retry
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(failed) == 2 and all(t.system_attrs[records.FATAL] for t in failed)
    assert all(str(error) in t.user_attrs[records.ERROR] for t in failed)
    assert study_status(study, definition).points == {"pending": 0, "running": 0, "complete": 4, "pruned": 0,
                                                      "failed": 2}
    # Failed for good: nothing will go on from their checkpoints, which are deleted.
    assert sorted(discarded.slots) == sorted(t.system_attrs[records.SLOT] for t in failed)


class _Discarded:
    """A checkpoint store that keeps only which slots the loop told it to discard."""

    def __init__(self) -> None:
        self.slots: list[int] = []

    def discard(self, slot: int) -> None:
        self.slots.append(slot)
