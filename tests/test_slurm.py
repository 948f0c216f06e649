"""hpo on a real Slurm cluster: deploy/slurm/hpo-array.sbatch run as a job array.

The cluster is Slurm's own daemons (22.05 on Debian 12; tests/slurm_cluster.py): munged, slurmctld, and a
slurmd on each of two simulated hosts (network namespaces with host names of their own), two
CPUs each. Every array task runs ``hpo worker`` on a study in the real PostgreSQL server,
reached over its host's link, with the artifact folder (and the checkpoints in it) on the
filesystem both hosts share. The cases:

- four tasks train a 2 x 2 x 2 copy of exp3's grid, every point exactly once;
- a task cancelled (``scancel``) and a task requeued (``scontrol requeue``) mid-trial: both
  trials fail as interrupted, their retries go on from their checkpoints, the study completes
  once, and the requeued task runs again and ends COMPLETED;
- a task that reaches its time limit (``--time=1``, ``--signal=B:USR1@5``): the batch script stops
  the worker and requeues the task, and the retry goes on from the checkpoint (the test then lifts
  the limit, so that the rest of the point trains in one run).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

import netns
import slurm_cluster
from conftest import ROOT, missing, ok, run_hpo, study_body, wait_for, write_study
from hpo.storage import records

SCRIPT = ROOT / "deploy" / "slurm" / "hpo-array.sbatch"
SUBSET = "200"
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE"}

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slurm]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.Cluster]:
    problem = slurm_cluster.unavailable()
    if problem is not None:
        missing(f"cannot run a Slurm cluster here: {problem}")
    with slurm_cluster.cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


class Array:
    """One submitted job array of hpo-array.sbatch on a study, and what its tasks wrote."""

    def __init__(self, slurm: slurm_cluster.Cluster, storage: str, study: str, folder: Path, *options: str) -> None:
        self.slurm, self.storage, self.study = slurm, storage, study
        self.logs = folder / "logs"
        self.logs.mkdir()
        env = {"HPO_STORAGE": _via(storage, slurm.hosts[0]), "HPO_ARTIFACTS": str(folder / "artifacts"),
               "HPO_BIN": f"{sys.executable} -m hpo"}  # HPO_DATA and the heartbeat settings: conftest's
        self.id = slurm.sbatch(f"--output={self.logs}/%A_%a.out", "--cpus-per-task=1", *options, str(SCRIPT), study,
                               env=env)

    def tasks(self) -> dict[str, dict[str, str]]:
        return self.slurm.tasks(self.id)

    def wait(self, timeout: float = 600) -> dict[str, dict[str, str]]:
        """Wait until every task has ended for good (none pending, running or requeued)."""
        wait_for(lambda: all(t["JobState"] in DONE for t in self.tasks().values()), timeout,
                 f"array {self.id} to end:\n{self.text()[-4000:]}")
        return self.tasks()

    def text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.logs.glob("*.out")))

    def task_of(self, trial: int) -> str | None:
        """The array task whose worker began ``trial`` (its log says so), as ``ARRAY_TASK``."""
        for path in self.logs.glob("*.out"):
            if re.search(rf"INFO hpo\.training\.objective: trial {trial}: ", path.read_text(errors="replace")):
                return path.stem
        return None

    def trials(self) -> list[FrozenTrial]:
        storage = optuna.storages.RDBStorage(self.storage)  # a new one each time: nothing cached
        try:
            return storage.get_all_trials(storage.get_study_id_from_name(self.study))
        finally:
            storage.engine.dispose()


def _via(url: str, host: netns.Host) -> str:
    """The storage URL as the nodes see it: the server behind a host's link (its forwarder)."""
    return make_url(url).set(host=host.gateway).render_as_string(hide_password=False)


def _created(postgres_url: str, folder: Path, name: str, body: str) -> None:
    ok(run_hpo("create", str(write_study(folder, name, body)), "--subset", SUBSET, storage=postgres_url))


def _mid_trial(array: Array, epochs: int, busy: set[str]) -> tuple[FrozenTrial, str] | None:
    """A trial RUNNING with two or more epochs reported and five or more to go, and its task
    (one not in ``busy``)."""
    for t in array.trials():
        if t.state == TrialState.RUNNING and 2 <= len(t.intermediate_values) <= epochs - 5:
            task = array.task_of(t.number)
            if task is not None and task not in busy:
                return t, task
    return None


def _wait_mid_trial(array: Array, epochs: int, busy: set[str]) -> tuple[FrozenTrial, str]:
    found = wait_for(lambda: _mid_trial(array, epochs, busy), 300,
                     f"a trial in the middle of training (tasks busy: {busy}):\n{array.text()[-3000:]}")
    assert found is not None
    return found


def _completed_once(trials: list[FrozenTrial], points: int) -> None:
    complete = Counter(t.system_attrs[records.GRID_ID] for t in trials if t.state == TrialState.COMPLETE)
    assert len(complete) == points, Counter(t.state.name for t in trials)
    assert max(complete.values()) == 1, complete
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def _resumed(trials: list[FrozenTrial], interrupted: FrozenTrial, epochs: int) -> FrozenTrial:
    """The interrupted trial failed as retryable and its retry completed its point from its
    checkpoint, every epoch trained once: the retry."""
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs[records.ERROR] == "interrupted by SIGTERM"
    assert interrupted.system_attrs.get(records.INTERRUPTED)
    (retry,) = [t for t in trials if t.system_attrs.get(records.RETRY_OF) == interrupted.number]
    assert retry.state == TrialState.COMPLETE, (retry.number, retry.state, retry.user_attrs.get(records.ERROR))
    assert retry.user_attrs[records.RESUMED_FROM] == len(interrupted.intermediate_values) >= 2
    assert retry.user_attrs[records.EPOCHS_ALL_ATTEMPTS] == epochs
    assert sorted(retry.intermediate_values) == list(range(1, epochs + 1))  # the whole curve
    return retry


GRID_POINTS = 8
# exp3's grid in small: 2 learning rates x 2 batch sizes x 1 and 2 epochs (4 runs, shared prefixes).
GRID = study_body(study={"max_retries": 2}, data={"protocol": "validation_split", "validation_split": 0.2},
                  learning_rate=[0.01, 0.001], batch_size=[32, 64], epochs=[1, 2])


def test_an_array_of_four_tasks_on_two_nodes_trains_every_grid_point_once(
        slurm: slurm_cluster.Cluster, postgres_url: str, data_path: str, tmp_path: Path) -> None:
    _created(postgres_url, tmp_path, "grid", GRID)
    array = Array(slurm, postgres_url, "grid", tmp_path, "--array=0-3")
    tasks = array.wait()
    log = array.text()
    assert {t["JobState"] for t in tasks.values()} == {"COMPLETED"}, log[-4000:]
    assert {t["ExitCode"] for t in tasks.values()} == {"0:0"}
    assert {t["NodeList"] for t in tasks.values()} == {"host1", "host2"}  # two per node, at once
    trials = array.trials()
    _completed_once(trials, GRID_POINTS)
    assert {t.user_attrs["host"] for t in trials} <= {"host1", "host2"}
    status = run_hpo("status", "grid", "--format", "json", storage=postgres_url)
    ok(status)
    (shown,) = json.loads(status.stdout)
    assert shown["points"]["complete"] == shown["points"]["total"] == GRID_POINTS
    assert shown["duplicates"] == 0
    assert "Traceback" not in log


STOPPED_EPOCHS = 30


def test_a_cancelled_and_a_requeued_task_s_trials_go_on_from_their_checkpoints(
        slurm: slurm_cluster.Cluster, postgres_url: str, data_path: str, tmp_path: Path) -> None:
    _created(postgres_url, tmp_path, "stops",
             study_body(study={"max_retries": 1}, learning_rate=[0.01, 0.001], batch_size=[32],
                        epochs=[STOPPED_EPOCHS]))
    array = Array(slurm, postgres_url, "stops", tmp_path, "--array=0-1")
    cancelled, cancelled_task = _wait_mid_trial(array, STOPPED_EPOCHS, set())
    slurm.run("scancel", cancelled_task)
    requeued, requeued_task = _wait_mid_trial(array, STOPPED_EPOCHS, {cancelled_task})
    slurm.run("scontrol", "requeue", requeued_task)
    tasks = array.wait()
    log = array.text()

    assert tasks[cancelled_task]["JobState"] == "CANCELLED", log[-4000:]
    # The requeued task ran again, took both retries and ended when the study was done.
    assert tasks[requeued_task]["JobState"] == "COMPLETED", log[-4000:]
    assert tasks[requeued_task]["Restarts"] == "1"
    trials = array.trials()
    _completed_once(trials, 2)
    by_number = {t.number: t for t in trials}
    for interrupted in (cancelled, requeued):
        _resumed(trials, by_number[interrupted.number], STOPPED_EPOCHS)
    assert "Traceback" not in log


# Longer than a one-minute run can train: 150 epochs take 80 s on this subset on a 2-core CPU
# host (2026-12-03), where a run trains 40 s at most before its signal.
LIMITED_EPOCHS = 150


def test_a_task_at_its_time_limit_is_requeued_and_its_retry_goes_on_from_the_checkpoint(
        slurm: slurm_cluster.Cluster, postgres_url: str, data_path: str, tmp_path: Path) -> None:
    # One point that takes longer to train than a one-minute task has for it. slurmctld checks
    # limits every 30 s and signals at the first check within LEAD + 30 s of the limit, so the
    # script hears USR1 25 to 55 s into each run: after the worker's start-up (imports, data),
    # mostly, and never late enough for the whole trial.
    _created(postgres_url, tmp_path, "limit",
             study_body(study={"max_retries": 1}, learning_rate=[0.001], batch_size=[32], epochs=[LIMITED_EPOCHS]))
    array = Array(slurm, postgres_url, "limit", tmp_path, "--array=0", "--time=1", "--signal=B:USR1@5")
    task = f"{array.id}_0"

    def resumed() -> bool:
        trials = array.trials()
        assert not any(t.state == TrialState.COMPLETE for t in trials), \
            f"the point was trained within one run: raise LIMITED_EPOCHS\n{array.text()[-3000:]}"
        assert not all(t["JobState"] in DONE for t in array.tasks().values()), \
            f"the task ended before the point was done:\n{array.text()[-3000:]}"
        return any(t.state == TrialState.RUNNING and t.user_attrs.get(records.RESUMED_FROM, 0) >= 2 for t in trials)

    wait_for(resumed, 480, f"a retry going on from a checkpoint:\n{array.text()[-3000:]}")
    # The time limit has done its part: lift it, so the point need not wait out more runs.
    slurm.run("scontrol", "update", f"JobId={task}", "TimeLimit=10")
    tasks = array.wait()
    log = array.text()

    assert tasks[task]["JobState"] == "COMPLETED", log[-4000:]
    assert int(tasks[task]["Restarts"]) >= 1
    assert "near its time limit, stopping the worker" in log
    assert f"requeueing task {task}" in log
    trials = array.trials()
    _completed_once(trials, 1)
    # Every attempt before the last was stopped by the time limit's signal; the last went on
    # from the checkpoint the one before it saved, and no epoch was trained twice.
    (done,) = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(t.user_attrs[records.ERROR] == "interrupted by SIGTERM" for t in trials if t is not done)
    _resumed(trials, next(t for t in trials if t.number == done.system_attrs[records.RETRY_OF]), LIMITED_EPOCHS)
    assert "Traceback" not in log
