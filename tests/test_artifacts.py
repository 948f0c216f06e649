"""A trial's artifacts are all or nothing; a worker that comes back late changes nothing.

Real workers training real models on a small subset; a real full disk (a tiny tmpfs, as root);
a real frozen worker (SIGSTOP past the grace period).
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Iterator

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from hpo import stored

from conftest import ok, run_hpo, wait_for, write_study

ONE_POINT = """
[sampler]
type = "grid"
[space]
architecture = "base"
augmentation = "none"
learning_rate = [0.001]
batch_size = [64]
epochs = [{epochs}]
"""


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 KiB file system: room for a plot or two, not for a trial's model (about 3.7 MB)."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_artifact_disk_keeps_the_trial_and_registers_no_file(tiny_disk: Path, data_path: str,
                                                                     tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "full", ONE_POINT.format(epochs=1))
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


def _freeze_outside_a_transaction(worker: subprocess.Popen[bytes], db: Path) -> None:
    """SIGSTOP the worker (alive, but no heartbeat, no progress) at a moment it holds no write
    lock on the SQLite file: one frozen inside a write transaction blocks every process until it
    resumes (README: where exactly-once stops), and nobody could recover its trial meanwhile."""
    for _ in range(100):
        worker.send_signal(signal.SIGSTOP)
        try:
            with sqlite3.connect(db, timeout=0.5, isolation_level=None) as probe:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # frozen holding the lock: let it finish, try again
            worker.send_signal(signal.SIGCONT)
            time.sleep(0.1)
    raise AssertionError("the worker held the database's write lock at every try")


def test_a_worker_frozen_past_the_grace_period_comes_back_calmly(data_path: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "frozen", ONE_POINT.format(epochs=4))
    env = {**os.environ, "HPO_HEARTBEAT_INTERVAL": "1", "HPO_GRACE_PERIOD": "4"}
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "hpo", "--storage", db, "worker", str(study), "--data", data_path,
         "--subset", "200", "--threads", "1"], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)

    def trials() -> list[optuna.trial.FrozenTrial]:
        try:
            return optuna.load_study(study_name="frozen", storage=db).get_trials()
        except KeyError:  # the worker has not created the study yet
            return []

    try:
        wait_for(lambda: any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials()), 180,
                 "the first epoch")
        _freeze_outside_a_transaction(worker, tmp_path / "hpo.db")
        frozen_at = time.monotonic()
        # Another process finds the trial dead once the grace period has passed, and queues its retry.
        wait_for(lambda: time.monotonic() - frozen_at > 6 and
                 run_hpo("status", "frozen", storage=db, env=env).returncode == 0 and
                 any(t.state == TrialState.FAIL for t in trials()), 120, "the frozen trial to be recovered")
        failed = next(t for t in trials() if t.state == TrialState.FAIL)
        worker.send_signal(signal.SIGCONT)
        code = worker.wait(timeout=600)
    finally:
        if worker.poll() is None:
            worker.kill()

    output = log.read_text()
    assert code == 0, output[-3000:]
    assert f"trial {failed.number} was recovered by another worker" in output
    assert not re.search(r"^\d\d:\d\d:\d\d ERROR ", output, re.M), output  # hpo's log lines
    assert "Traceback" not in output
    after = next(t for t in trials() if t.number == failed.number)
    assert after.state == TrialState.FAIL and "heartbeats" in after.user_attrs[stored.ERROR]
    assert "test_accuracy" not in after.user_attrs and after.value is None
    assert after.intermediate_values == failed.intermediate_values  # no late epoch reached the database
    assert get_all_artifact_meta(after, storage=optuna.storages.get_storage(db)) == []
    # The retry, trained by the same worker once it came back, is the point's one result.
    states = sorted(t.state.name for t in trials())
    assert states == ["COMPLETE", "FAIL"]
    assert "1 complete, 0 pruned, 0 failed, 1 dropped" in output


