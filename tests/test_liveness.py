"""A healthy trial is never declared dead: not by a bystander with other settings, not by a
worker whose clock differs; a frozen worker's trial is, and the worker comes back calmly.

Real workers training real models on a small subset, against SQLite and the real PostgreSQL
server; other clocks through libfaketime (Debian's ``faketime``), as a VM whose clock is off or
stepped by NTP would have them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import FrozenTrial, TrialState

from hpo.results.status import study_status
from hpo.storage.open import StorageEmpty, open_storage
from hpo.storage import records
from hpo.study import queueing
from hpo.study.plan import trial_sampler
from hpo.workers import liveness
from hpo.workers.liveness import Settings, Watch

from conftest import (created_study, freeze_outside_a_transaction, missing, ok, run_hpo, study_body, wait_for,
                      write_study)

# Points of several epochs each: two workers train side by side for a while, and each looks at
# the other's running trial between its own (a worker recovers dead trials before each claim,
# and at every poll while it waits for the last running ones).
def _points(learning_rates: list[float], epochs: list[int]) -> str:
    return study_body(learning_rate=learning_rates, batch_size=[32], epochs=epochs)


def _worker(storage: str, study: str | Path, data_path: str, log: Path, *, env: dict[str, str] | None = None,
            prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "hpo", "--storage", storage, "worker", str(study), "--data", data_path,
         "--subset", "200", "--threads", "1"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def _trials(storage: str, name: str) -> list[FrozenTrial]:
    try:  # hpo's read-only opening: Optuna's would create the tables, racing a launcher's creation
        return optuna.load_study(study_name=name, storage=open_storage(storage, create=False)).get_trials()
    except (StorageEmpty, KeyError):  # not created yet
        return []


def _finish(workers: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    try:
        return [w.wait(timeout=timeout) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()


def test_a_watch_judges_by_its_own_clock_and_the_claim_s_grace_period() -> None:
    now = [1000.0]
    watch = Watch(clock=lambda: now[0])
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={
        **Settings(interval=5, grace=30).claim_attrs(), records.BEAT: 7})
    trial._trial_id = 1
    assert not watch.silent(trial)  # first sighting: timed from now, whatever the trial's age
    now[0] += 29
    assert not watch.silent(trial)
    now[0] += 2
    assert watch.silent(trial)  # 31 s of this observer's time without a new beat, grace 30
    trial.system_attrs[records.BEAT] = 8
    assert not watch.silent(trial)  # it beat: timed afresh
    old = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={records.BEAT: 3})
    old._trial_id = 2
    watch.silent(old)
    now[0] += 29
    assert not watch.silent(old)  # claimed by an older hpo: the default grace period, 30 s


def test_a_bystander_with_a_short_grace_period_never_fails_a_healthy_trial(
        storage_url: str, data_path: str, tmp_path: Path) -> None:
    """The trial is judged by the settings its worker claimed it with (beats every 5 s, grace
    30 s), not by those of whoever looks: `hpo status` and another worker set to 1 s / 2 s."""
    # A long point, claimed first by the healthy worker, and a short one the bystander finishes
    # at once: then it waits, looking at the long one every poll, until that one is done.
    study = write_study(tmp_path, "calm", "share_prefixes = false\n" + _points([0.001], [60, 1]))
    ok(run_hpo("create", str(study), "--subset", "200", storage=storage_url))
    slow = {"HPO_HEARTBEAT_INTERVAL": "5", "HPO_GRACE_PERIOD": "30"}
    eager = {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_GRACE_PERIOD": "2"}
    healthy = _worker(storage_url, "calm", data_path, tmp_path / "healthy.log", env=slow)
    bystander = None
    try:
        wait_for(lambda: any(t.state == TrialState.RUNNING and t.intermediate_values
                             for t in _trials(storage_url, "calm")), 180, "the first epoch")
        for _ in range(4):  # as the issue found it: four looks over 8 s, each with a 2 s grace period
            ok(run_hpo("status", "calm", storage=storage_url, env=eager))
            time.sleep(2)
        bystander = _worker(storage_url, "calm", data_path, tmp_path / "bystander.log", env=eager)
        codes = _finish([healthy, bystander], timeout=600)
    finally:
        for w in (healthy, bystander):
            if w is not None and w.poll() is None:
                w.kill()
    assert codes == [0, 0], (tmp_path / "bystander.log").read_text()[-2000:]
    states = Counter(t.state.name for t in _trials(storage_url, "calm"))
    assert states == {"COMPLETE": 2}, states  # nobody failed a trial, nobody trained one twice


def _faketime() -> str:
    path = shutil.which("faketime")
    if path is None:
        missing("faketime is not installed (apt-get install faketime)")
    return path


@pytest.mark.parametrize("offset", ["+90s", "-90s"])
def test_workers_whose_clocks_differ_never_fail_each_other(offset: str, storage_url: str, data_path: str,
                                                          tmp_path: Path) -> None:
    """One worker's clock 90 s off (three grace periods of these tests): on SQLite every process
    writes its own clock into the database, and comparing two clocks killed healthy trials."""
    faketime = _faketime()
    study = write_study(tmp_path, "clocks", _points([0.01, 0.001, 0.0005, 0.0001], [12]))
    ok(run_hpo("create", str(study), "--subset", "200", storage=storage_url))
    settings = {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_GRACE_PERIOD": "20"}
    workers = [_worker(storage_url, "clocks", data_path, tmp_path / "normal.log", env=settings),
               _worker(storage_url, "clocks", data_path, tmp_path / "skewed.log", env=settings,
                       prefix=(faketime, "-f", offset))]
    codes = _finish(workers, timeout=900)
    assert codes == [0, 0], (tmp_path / "skewed.log").read_text()[-2000:]
    trials = _trials(storage_url, "clocks")
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 4}, [t.user_attrs.get("error") for t in trials]
    # Both trained: the test raced them, it did not leave one idle.
    hosts = Counter(t.system_attrs[records.WORKER] for t in trials)
    assert len(hosts) == 2, hosts


def test_a_worker_frozen_past_the_grace_period_comes_back_calmly(data_path: str, tmp_path: Path) -> None:
    """Frozen in the middle of training (its trial has 5,000 epochs to go, so the moment is the
    test's), it is found dead by another worker, which retries the point; resumed, it learns at
    its next write that the trial is no longer its own, drops it and writes nothing to it."""
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "frozen", _points([0.001], [5000]))
    ok(run_hpo("create", str(study), "--subset", "200", storage=db))
    frozen_log, other_log = tmp_path / "frozen.log", tmp_path / "other.log"
    worker = _worker(db, "frozen", data_path, frozen_log, env={"HPO_HEARTBEAT_INTERVAL": "1",
                                                               "HPO_GRACE_PERIOD": "4"})
    other = None
    try:
        wait_for(lambda: any(t.state == TrialState.RUNNING and t.intermediate_values
                             for t in _trials(db, "frozen")), 180, "the first epoch")
        freeze_outside_a_transaction(worker, tmp_path / "hpo.db")
        (before,) = _trials(db, "frozen")
        # Another worker finds the trial silent for its grace period (4 s, as claimed), fails it
        # and queues its retry, which it then trains itself.
        other = _worker(db, "frozen", data_path, other_log)
        wait_for(lambda: len(_trials(db, "frozen")) == 2 and any(
            t.state == TrialState.RUNNING and t.intermediate_values for t in _trials(db, "frozen")), 180,
            "the retry to train elsewhere")
        worker.send_signal(signal.SIGCONT)
        wait_for(lambda: "was recovered by another worker" in frozen_log.read_text(), 120,
                 "the frozen worker to notice")
        for w in (worker, other):
            w.send_signal(signal.SIGTERM)
        codes = _finish([worker, other], timeout=120)
    finally:
        for w in (worker, other):
            if w is not None and w.poll() is None:
                w.kill()

    output = frozen_log.read_text()
    assert codes == [130, 130], output[-3000:]
    assert f"trial {before.number} was recovered by another worker" in output
    assert not re.search(r"^\d\d:\d\d:\d\d ERROR ", output, re.M), output  # hpo's log lines
    assert "Traceback" not in output
    assert "0 complete, 0 pruned, 0 failed, 1 dropped" in output
    after = next(t for t in _trials(db, "frozen") if t.number == before.number)
    assert after.state == TrialState.FAIL and "heartbeats" in after.user_attrs[records.ERROR]
    assert "grace period 4 s" in after.user_attrs[records.ERROR]
    assert "test_accuracy" not in after.user_attrs and after.value is None
    assert after.intermediate_values == before.intermediate_values  # no late epoch reached the database
    assert get_all_artifact_meta(after, storage=optuna.storages.get_storage(db)) == []


def test_trial_of_a_dead_worker_is_failed_and_queued_again(storage_url: str, tmp_path: Path) -> None:
    study, definition = created_study(storage_url, tmp_path)
    trial = queueing.claim(study, trial_sampler(definition))
    assert trial is not None
    # Pretend a worker process on this host claimed it and died: a pid that no longer exists.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study._storage.set_trial_system_attr(trial._trial_id, records.WORKER, f"{queueing.HOST}:{dead.pid}")
    assert liveness.recover(study, definition) == 1
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.FAIL and "died" in frozen.user_attrs["error"]
    retries = [t for t in study.get_trials() if t.system_attrs.get(records.RETRY_OF) == trial.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert retries[0].system_attrs["grid_id"] == frozen.system_attrs["grid_id"]
    assert study_status(study, definition).points["pending"] == 6


def test_own_live_trial_is_not_recovered(storage_url: str, tmp_path: Path) -> None:
    study, definition = created_study(storage_url, tmp_path)
    trial = queueing.claim(study, trial_sampler(definition))
    assert trial is not None and liveness.recover(study, definition) == 0
    assert study._storage.get_trial(trial._trial_id).system_attrs[records.WORKER].endswith(f":{os.getpid()}")
