"""How hpo launch places workers, reports progress, and runs several studies in one pool."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest

from hpo.storage import records
from hpo.storage.open import StorageEmpty, open_storage
from hpo.errors import HpoError
from hpo.workers.placement import Placement, check_workers, default_workers, describe, max_workers, plan
from hpo.workers.progress import Progress
from hpo.results.status import StudyStatus

from conftest import ok, run_hpo, study_body, user_error, wait_for, write_study


def test_cpu_workers_split_the_cores_between_them() -> None:
    assert plan(2, cpus=2) == [Placement(1, None)] * 2
    assert plan(1, cpus=2) == [Placement(2, None)]
    assert plan(4, cpus=2) == [Placement(1, None)] * 4  # never zero threads
    assert plan(2, cpus=8, threads=3) == [Placement(3, None)] * 2  # the flag wins
    assert describe(plan(2, cpus=2)) == "2 x 1 thread"


def test_gpu_workers_go_round_robin() -> None:
    placements = plan(5, gpus=["0", "1"], cpus=16)
    assert {p.threads for p in placements} == {3}
    assert [p.gpu for p in placements] == ["0", "1", "0", "1", "0"]
    assert describe(placements) == "gpu 0: 3, gpu 1: 2"
    assert default_workers(["0", "1"]) == 4


def test_cpu_default_is_one_worker_per_core_as_memory_allows() -> None:
    assert default_workers([], cpus=2, memory_gib=24) == 2
    assert default_workers([], cpus=64, memory_gib=16) == 8
    assert default_workers([], cpus=4, memory_gib=1) == 1


def _status(complete: int, running: int, failed: int = 0, best: float | None = None,
            epochs: list[tuple[int, int | None]] | None = None,
            runs: list[tuple[int, int | None, int]] | None = None, work: tuple[int, int] | None = None) -> StudyStatus:
    pending = 27 - complete - running - failed
    return StudyStatus(name="exp3", sampler="grid", trials={}, total_points=27, duplicates=0,
                       points={"pending": pending, "running": running, "complete": complete,
                               "pruned": 0, "failed": failed},
                       best_value=best, best_trial=None, metric="val_accuracy", running_epochs=epochs or [],
                       running_runs=runs if runs is not None else [(d, p, 1) for d, p in epochs or []], work=work)


def test_progress_line_counts_and_estimates_time_left() -> None:
    now = [100.0]
    out = io.StringIO()
    progress = Progress(out, 27, clock=lambda: now[0])
    progress.show([_status(0, 2)])
    now[0] += 60
    progress.show([_status(3, 2, best=0.61234)])
    now[0] += 60
    progress.show([_status(3, 2, best=0.61234)])  # nothing new: no new line when not a terminal
    lines = out.getvalue().splitlines()
    assert lines[0] == "exp3: 0/27 done, 2 running, 0 failed, best val_accuracy -, 0m00s elapsed, ETA -"
    # 3 trials in 60 s, 24 left: 8 minutes.
    assert lines[1] == "exp3: 3/27 done, 2 running, 0 failed, best val_accuracy 0.6123, 1m00s elapsed, ETA 8m00s"
    assert len(lines) == 2


def test_progress_line_shows_each_running_trials_epoch() -> None:
    """A 10-epoch trial on the full data takes many minutes: the line moves with every epoch."""
    out = io.StringIO()
    progress = Progress(out, 27, clock=lambda: 0.0)
    progress.show([_status(0, 2, epochs=[(3, 10), (0, None)])])
    progress.show([_status(0, 2, epochs=[(4, 10), (0, 5)])])
    assert out.getvalue().splitlines() == [
        "exp3: 0/27 done, 2 running (epochs 3/10, 0/?), 0 failed, best val_accuracy -, 0m00s elapsed, ETA -",
        "exp3: 0/27 done, 2 running (epochs 4/10, 0/5), 0 failed, best val_accuracy -, 0m00s elapsed, ETA -",
    ]


def test_points_that_share_a_run_are_counted_as_the_runs_that_train_them() -> None:
    """exp3's 27 points train as 9 runs: 6 points in training are 2 runs, each carrying 3."""
    out = io.StringIO()
    Progress(out, 27, clock=lambda: 0.0).show([_status(0, 6, runs=[(3, 15, 3), (3, 15, 3)])])
    assert out.getvalue().splitlines() == [
        "exp3: 0/27 done, 6 running in 2 runs (epochs 3/15 x3, 3/15 x3), 0 failed, best val_accuracy -, "
        "0m00s elapsed, ETA -"]


def test_the_time_left_is_counted_in_epochs_where_a_grid_plans_them() -> None:
    """Shared runs finish their points in bursts, and workers start before they train: the pace
    counts epochs from the first one seen. 45 epochs in the 60 s after it, 225 of 280 left: 5 minutes."""
    now = [0.0]
    out = io.StringIO()
    progress = Progress(out, 27, clock=lambda: now[0])
    progress.show([_status(0, 2, runs=[(0, 15, 3), (0, 15, 3)], work=(0, 280))])
    now[0] += 10  # the workers' start-up, then their first epochs
    progress.show([_status(0, 2, runs=[(5, 15, 3), (5, 15, 3)], work=(10, 280))])
    now[0] += 60
    progress.show([_status(3, 2, runs=[(15, 15, 3), (12, 15, 3)], work=(55, 280))])
    lines = out.getvalue().splitlines()
    assert lines[1].endswith("0m10s elapsed, ETA -")
    assert lines[2].endswith("1m10s elapsed, ETA 5m00s")


# 4 learning rates x 3 epoch counts: 12 points, trained as 4 runs of 16 epochs that share their prefixes.
SHARED_RUNS = study_body(seed=3, learning_rate=[0.01, 0.003, 0.001, 0.0003], batch_size=[32], epochs=[4, 8, 16])
_LINE = re.compile(r"^eta: (\d+)/12 done.* (\d+)m(\d+)s elapsed(?:, ETA (\d+)m(\d+)s)?$")


def test_a_launch_shows_its_runs_and_a_time_left_within_twice_the_real_one(data_path: str, tmp_path: Path) -> None:
    """A CPU launch as a user sees it: the shared runs counted as runs, no TensorFlow or CUDA log
    line, and once a quarter of the points are done an ETA within 2x of the time it really took."""
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    launched = run_hpo("launch", str(write_study(tmp_path, "eta", SHARED_RUNS)), "-n", "2", "--subset", "800",
                       "--data", data_path, storage=db, cwd=tmp_path)
    ok(launched)
    lines = launched.stderr.splitlines()
    assert any(re.search(r"6 running in 2 runs \(epochs \d+/16 x3, \d+/16 x3\)", line) for line in lines), lines
    noise = [line for line in lines if re.search(r"tensorflow|cuda|absl|oneDNN|cpu_feature_guard|^[IWE]\d{4} ",
                                                 line, re.IGNORECASE)]
    assert noise == []
    progress = [m for m in map(_LINE.match, lines) if m]
    # The work is done at the first line that says so (after it, the workers only exit).
    end = next(int(m[2]) * 60 + int(m[3]) for m in progress if m[1] == "12")
    checked = []
    for m in progress:
        elapsed = int(m[2]) * 60 + int(m[3])
        if m[4] is not None and int(m[1]) >= 3 and end - elapsed >= 8:
            eta, real = int(m[4]) * 60 + int(m[5]), end - elapsed
            checked.append((eta, real))
            assert real / 2 <= eta <= real * 2, f"ETA {eta} s, {real} s left in fact: {m[0]}"
    assert checked, lines


def test_progress_line_counts_every_study_of_a_launch() -> None:
    out = io.StringIO()
    other = _status(1, 0)
    other.name, other.total_points = "exp1", 3
    Progress(out, 30, clock=lambda: 0.0).show([_status(3, 2, best=0.5), other])
    assert out.getvalue().splitlines() == [
        "2 studies: 4/30 done, 2 running, 0 failed (exp3 3/27 best 0.5000, exp1 1/3 best -), 0m00s elapsed, ETA -"]


def _tiny(sampler: str, epochs: object) -> str:
    return study_body(sampler, seed=1, epochs=epochs)



def test_one_launch_runs_several_studies_through_one_pool(storage_url: str, data_path: str, tmp_path: Path) -> None:
    folder = tmp_path / "studies"
    folder.mkdir()
    write_study(folder, "grid", _tiny("grid", [1, 2]))
    write_study(folder, "seeds", "trials = 3\n" + _tiny("fixed", 1))
    # A quoted glob, as a user may pass it; the launcher expands it (sorted: grid, then seeds).
    result = run_hpo("launch", str(folder / "*.toml"), "-n", "2", "--threads", "1", "--data", data_path,
                     "--subset", "100", "--logs", str(tmp_path / "logs"), storage=storage_url, cwd=tmp_path)
    ok(result)
    assert "2 workers on 2 studies (grid, seeds)" in result.stderr
    assert "2 studies: 5/5 done" in result.stderr
    statuses = json.loads(run_hpo("status", "--format", "json", storage=storage_url).stdout)
    assert {s["study"]: s["points"]["complete"] for s in statuses} == {"grid": 2, "seeds": 3}
    # One pool: the worker that found the grid's one run taken went on to the next study at once,
    # rather than idling until the grid was done.
    grid, seeds = (optuna.load_study(study_name=n, storage=storage_url).get_trials() for n in ("grid", "seeds"))
    assert min(t.datetime_start for t in seeds) < max(t.datetime_complete for t in grid)
    assert len(list((tmp_path / "logs" / "grid+seeds").glob("worker-*.log"))) == 2


def test_two_study_files_may_not_name_one_study(tmp_path: Path) -> None:
    a = write_study(tmp_path, "same", _tiny("grid", [1]))
    b = tmp_path / "copy.toml"
    b.write_text(a.read_text())
    result = run_hpo("launch", str(a), str(b), storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    user_error(result, "copy.toml", "study 'same' is also named by another study file")
    assert not (tmp_path / "hpo.db").exists()


def test_a_glob_that_matches_nothing_is_one_line(tmp_path: Path) -> None:
    result = run_hpo("launch", str(tmp_path / "nothing*.toml"), storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    user_error(result, "nothing*.toml: no study file matches")


def test_max_workers_follow_memory() -> None:
    assert max_workers(memory_gib=24) == 48 and max_workers(memory_gib=0.2) == 1
    assert check_workers(48, memory_gib=24) == 48
    with pytest.raises(HpoError, match="-n 49: at most 48 workers"):
        check_workers(49, memory_gib=24)


# --- a launch and its workers live and end together ---------------------------------------------

LONG = study_body(learning_rate=[0.001, 0.0001], batch_size=[32], epochs=[5000])


def _launcher(db: str, study: Path, data_path: str, tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "--storage", db, "launch", str(study), "-n", "2", "--threads", "1",
         "--data", data_path, "--subset", "200", "--logs", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _training(db: str) -> list[optuna.trial.FrozenTrial]:
    # hpo's own opening, read-only: Optuna's would create the tables itself, racing the launcher's
    # creation of them (two processes stamping the schema version at once on a new file).
    try:
        trials = optuna.load_study(study_name="long", storage=open_storage(db, create=False)).get_trials()
    except (StorageEmpty, KeyError):
        return []
    return [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values]


def _worker_pids(db: str) -> list[int]:
    trials = optuna.load_study(study_name="long", storage=db).get_trials()
    return sorted({int(t.system_attrs[records.WORKER].rsplit(":", 1)[1]) for t in trials
                   if records.WORKER in t.system_attrs})


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("how", ["SIGHUP", "SIGKILL"])
def test_no_worker_outlives_its_launcher(how: str, data_path: str, tmp_path: Path) -> None:
    """A closed terminal (SIGHUP) stops a launch as Ctrl-C does; a launcher killed outright
    (SIGKILL, the OOM killer) takes its workers with it: each fails its trial as retryable."""
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "long", LONG)
    launcher = _launcher(db, study, data_path, tmp_path)
    try:
        wait_for(lambda: len(_training(db)) == 2, 240, "both workers training")
        pids = _worker_pids(db)
        launcher.send_signal(getattr(signal, how))
        _, stderr = launcher.communicate(timeout=60)
        wait_for(lambda: all(_gone(pid) for pid in pids), 60, "the workers to exit")
    finally:
        if launcher.poll() is None:
            launcher.kill()
    if how == "SIGHUP":
        assert launcher.returncode == 130 and "stopping 2 workers" in stderr, stderr[-2000:]
    states = Counter(t.state.name for t in optuna.load_study(study_name="long", storage=db).get_trials())
    assert states == {"FAIL": 2, "WAITING": 2}, states
    for trial in optuna.load_study(study_name="long", storage=db).get_trials():
        if trial.state == optuna.trial.TrialState.FAIL:
            assert trial.user_attrs[records.ERROR] == "interrupted by SIGTERM"  # the launcher's, or the kernel's
            assert trial.system_attrs[records.INTERRUPTED] is True  # their retries are free


def test_a_worker_that_cannot_be_started_stops_the_ones_started_before_it(data_path: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "long", LONG)
    (tmp_path / "logs" / "long" / "worker-2.log").mkdir(parents=True)  # the third worker's log cannot be opened
    result = run_hpo("launch", str(study), "-n", "3", "--threads", "1", "--data", data_path, "--subset", "200",
                     "--logs", str(tmp_path / "logs"), storage=db, timeout=300)
    user_error(result, "cannot start worker 3 of 3", "the 2 started are stopped")
    # The two it had started were stopped before they claimed anything, or failed their claim as
    # retryable; none is left running, nothing is lost.
    trials = optuna.load_study(study_name="long", storage=db).get_trials()
    assert not _training(db) and all(t.state != optuna.trial.TrialState.RUNNING for t in trials)
    assert all(_gone(pid) for pid in _worker_pids(db))
