"""How hpo launch places workers and reports progress."""

from __future__ import annotations

import io

from hpo.launch import Placement, Progress, default_workers, describe, plan
from hpo.results import StudyStatus


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
            epochs: list[tuple[int, int | None]] | None = None) -> StudyStatus:
    pending = 27 - complete - running - failed
    return StudyStatus(name="exp3", sampler="grid", trials={}, total_points=27, duplicates=0,
                       points={"pending": pending, "running": running, "complete": complete,
                               "pruned": 0, "failed": failed},
                       best_value=best, best_trial=None, metric="val_accuracy", running_epochs=epochs or [])


def test_progress_line_counts_and_estimates_time_left() -> None:
    now = [100.0]
    out = io.StringIO()
    progress = Progress(out, 27, clock=lambda: now[0])
    progress.show(_status(0, 2))
    now[0] += 60
    progress.show(_status(3, 2, best=0.61234))
    now[0] += 60
    progress.show(_status(3, 2, best=0.61234))  # nothing new: no new line when not a terminal
    lines = out.getvalue().splitlines()
    assert lines[0] == "exp3: 0/27 done, 2 running, 0 failed, best val_accuracy -, 0m00s elapsed, ETA -"
    # 3 trials in 60 s, 24 left: 8 minutes.
    assert lines[1] == "exp3: 3/27 done, 2 running, 0 failed, best val_accuracy 0.6123, 1m00s elapsed, ETA 8m00s"
    assert len(lines) == 2


def test_progress_line_shows_each_running_trials_epoch() -> None:
    """A 10-epoch trial on the full data takes many minutes: the line moves with every epoch."""
    out = io.StringIO()
    progress = Progress(out, 27, clock=lambda: 0.0)
    progress.show(_status(0, 2, epochs=[(3, 10), (0, None)]))
    progress.show(_status(0, 2, epochs=[(4, 10), (0, 5)]))
    assert out.getvalue().splitlines() == [
        "exp3: 0/27 done, 2 running (epochs 3/10, 0/?), 0 failed, best val_accuracy -, 0m00s elapsed, ETA -",
        "exp3: 0/27 done, 2 running (epochs 4/10, 0/5), 0 failed, best val_accuracy -, 0m00s elapsed, ETA -",
    ]
