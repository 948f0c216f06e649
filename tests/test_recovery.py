"""Workers that lose nothing: killed, interrupted, or many at once on SQLite.

These run real ``hpo worker`` processes training real models on a small subset of CIFAR-10,
against SQLite and the real PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.storage import records

from conftest import ROOT, STUDIES, run_hpo, study_body, wait_for, write_study

ARTIFACTS = ROOT / "test-artifacts"


def _worker(storage: str, study: str, data_path: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "--storage", storage, "worker", study, "--data", data_path,
         "--subset", "200", "--threads", "1", *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ},
    )




def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def _grid_outcome(trials: list[optuna.trial.FrozenTrial]) -> dict[str, object]:
    complete = Counter(t.system_attrs[records.GRID_ID] for t in trials if t.state == TrialState.COMPLETE)
    completed_points = set(complete)
    return {
        "trials_per_state": dict(Counter(t.state.name for t in trials)),
        "complete_points": len(completed_points),
        "duplicate_complete_points": sum(1 for n in complete.values() if n > 1),
        "wasted_trainings": sum(1 for t in trials if t.state != TrialState.COMPLETE
                                and t.system_attrs[records.GRID_ID] in completed_points
                                and t.state != TrialState.WAITING),
        "running_left": sum(t.state == TrialState.RUNNING for t in trials),
    }


@pytest.mark.chaos
@pytest.mark.postgres
def test_chaos_kill_a_worker_mid_trial_on_postgres(postgres_url: str, data_path: str, tmp_path: Path) -> None:
    assert run_hpo("create", str(STUDIES / "exp3.toml"), "--subset", "200", storage=postgres_url).returncode == 0
    workers = [_worker(postgres_url, "exp3", data_path, tmp_path / f"worker-{i}.log") for i in range(4)]
    try:
        def victim() -> optuna.trial.FrozenTrial | None:
            for t in _trials(postgres_url, "exp3"):
                # Mid-trial: running, and at least one epoch reported.
                if t.state == TrialState.RUNNING and t.intermediate_values:
                    return t
            return None

        killed = wait_for(victim, 300, "a trial in the middle of training")
        pid = int(killed.system_attrs[records.WORKER].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        for w in workers:
            w.wait(timeout=900)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()

    trials = _trials(postgres_url, "exp3")
    outcome = _grid_outcome(trials)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "chaos-postgres.json").write_text(json.dumps(outcome, indent=2))
    print("chaos outcome:", json.dumps(outcome))

    assert sorted(w.returncode for w in workers) == [-signal.SIGKILL, 0, 0, 0]
    assert outcome["complete_points"] == 27
    assert outcome["duplicate_complete_points"] == 0
    assert outcome["running_left"] == 0
    # The killed worker's run (its trial and, with shared epoch prefixes, the rest of its group
    # not yet passed) is the only training spent on points that other trials completed.
    run = [t for t in trials if t.system_attrs.get(records.WORKER) == killed.system_attrs[records.WORKER]
           and t.state == TrialState.FAIL]
    assert killed.number in {t.number for t in run} and 1 <= len(run) <= 3
    assert outcome["wasted_trainings"] == len(run)
    for dead in run:
        # Found dead by its pid (same host) or by its missing heartbeats, whichever came first.
        assert "died" in dead.user_attrs["error"] or "heartbeats" in dead.user_attrs["error"]
        retries = [t for t in trials if t.system_attrs.get(records.RETRY_OF) == dead.number]
        assert [t.state for t in retries] == [TrialState.COMPLETE]
        assert retries[0].system_attrs[records.GRID_ID] == dead.system_attrs[records.GRID_ID]


@pytest.mark.slow
def test_four_workers_finish_the_grid_on_sqlite_without_lock_errors(data_path: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    result = run_hpo("launch", str(STUDIES / "exp3.toml"), "-n", "4", "--threads", "1", "--data", data_path,
                     "--subset", "200", "--logs", str(tmp_path / "logs"), storage=db, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _trials(db, "exp3")
    outcome = _grid_outcome(trials)
    assert outcome["complete_points"] == 27 and outcome["duplicate_complete_points"] == 0
    assert outcome["trials_per_state"] == {"COMPLETE": 27}
    logs = "".join(p.read_text() for p in (tmp_path / "logs" / "exp3").glob("*.log"))
    assert "database is locked" not in logs


# Long enough that a signal sent after the first epoch always finds the trial training: on
# 200 images an epoch is 7 steps, a fraction of a second, and CI once saw a 200-epoch trial
# finish before the test's signal arrived.
INTERRUPTIBLE = study_body(data={"protocol": "validation_split"}, batch_size=[32], epochs=[5000])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_worker_fails_its_trial_as_retryable_and_exits_quickly(
        sig: signal.Signals, data_path: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "long", INTERRUPTIBLE)
    assert run_hpo("create", str(study), "--subset", "200", storage=db).returncode == 0
    worker = _worker(db, str(study), data_path, tmp_path / "worker.log")
    try:
        wait_for(lambda: any(
            t.state == TrialState.RUNNING and t.intermediate_values for t in _trials(db, "long")),
            180, "the first epoch")
        sent = time.monotonic()
        worker.send_signal(sig)
        code = worker.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code == 130, (tmp_path / "worker.log").read_text()[-2000:]
    # That the signal stopped the trial rather than waited for it shows in its state, below. This
    # bound catches a worker stuck on its way out; an orderly stop takes seconds, and 60 leaves
    # room for a loaded 2-core machine.
    assert took < 60
    trials = _trials(db, "long")
    first, retry = sorted(trials, key=lambda t: t.number)
    assert first.state == TrialState.FAIL and first.user_attrs["error"] == f"interrupted by {sig.name}"
    assert "test_accuracy" not in first.user_attrs  # a partly trained model is never a result
    assert retry.state == TrialState.WAITING and retry.system_attrs[records.RETRY_OF] == first.number
    # An interruption is not the trial's fault: it does not use up a retry.
    assert retry.system_attrs[records.ATTEMPT] == 0


def test_ctrl_c_on_launch_stops_every_worker_and_leaves_nothing_running(data_path: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "long", INTERRUPTIBLE.replace("[0.001]", "[0.001, 0.0001]"))
    assert run_hpo("create", str(study), "--subset", "200", storage=db).returncode == 0
    launcher = subprocess.Popen(
        [sys.executable, "-m", "hpo", "--storage", db, "launch", str(study), "-n", "2", "--threads", "1",
         "--data", data_path, "--subset", "200", "--logs", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: sum(
            t.state == TrialState.RUNNING and bool(t.intermediate_values) for t in _trials(db, "long")) == 2,
            240, "both workers training")
        launcher.send_signal(signal.SIGINT)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130, stderr[-2000:]
    assert "stopping 2 workers" in stderr
    states = Counter(t.state.name for t in _trials(db, "long"))
    assert states == {"FAIL": 2, "WAITING": 2}
