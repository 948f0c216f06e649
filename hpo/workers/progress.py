"""The launcher's one line of progress on stderr, and its other lines: none of them may stop a
launch when the terminal or pipe they go to is gone."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from hpo.results.status import StudyStatus


def say(out: TextIO, line: str) -> None:
    """Print a line of progress; a terminal or pipe that is gone stops nothing (the logs keep all)."""
    with contextlib.suppress(OSError, ValueError):  # BrokenPipeError, EIO from a closed terminal
        print(line, file=out, flush=True)


class Progress:
    """One line of progress: redrawn in place on a terminal, printed on change otherwise."""

    def __init__(self, out: TextIO, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.total, self.clock = out, total, clock
        self.started = clock()
        self.first_done: int | None = None  # trials finished before this launch say nothing of its speed
        self.first_work: tuple[float, int] | None = None  # when this launch's first epoch was seen, and the
        # epochs trained by then: the pace counts from there, not through the workers' start-up
        self.last = ""
        self.last_work: int | None = None
        self.tty = out.isatty()

    def show(self, statuses: Sequence[StudyStatus], final: bool = False) -> None:
        done = sum(done_of(s) for s in statuses)
        if self.first_done is None:
            self.first_done = done
        counts = summary(statuses, self.total)
        work = work_of(statuses)
        if work is not None and self.first_work is None and self.last_work is not None and work[0] > self.last_work:
            self.first_work = (self.clock(), work[0])
        self.last_work = work[0] if work is not None else None
        line = counts + self._eta(done, work)
        if self.tty:
            with contextlib.suppress(OSError, ValueError):  # a closed terminal stops no training
                self.out.write("\r\033[K" + line + ("\n" if final else ""))
                self.out.flush()
        elif final or counts != self.last:
            say(self.out, line)
        self.last = counts

    def _eta(self, done: int, work: tuple[int, int] | None) -> str:
        """Time left at this launch's pace: in epochs trained, from the first epoch seen, where every
        run's epochs are known (trials that share a run finish in bursts, a 15-epoch point costs three
        5-epoch ones, and the workers' start-up is no training); otherwise in trials finished."""
        elapsed = self.clock() - self.started
        if self.total - done <= 0:
            return f", {_duration(elapsed)} elapsed"
        if work is None:
            seconds, fresh, remaining = elapsed, done - (self.first_done or 0), self.total - done
        elif self.first_work is None:
            fresh = 0
        else:
            since, trained = self.first_work
            seconds, fresh, remaining = self.clock() - since, work[0] - trained, work[1] - work[0]
        if fresh <= 0:
            return f", {_duration(elapsed)} elapsed, ETA -"
        return f", {_duration(elapsed)} elapsed, ETA {_duration(seconds / fresh * remaining)}"


def summary(statuses: Sequence[StudyStatus], total: int, with_done: bool = True) -> str:
    """What the studies stand at: trials done of ``total`` (unless ``with_done`` is false: a
    progress bar shows that itself), running (with their epochs), failed, and the best value."""
    done = sum(done_of(s) for s in statuses)
    running = sum(s.points["running"] for s in statuses)
    runs = sum(len(s.running_runs) for s in statuses)
    failed = sum(s.points["failed"] for s in statuses)
    epochs = ", ".join(s.runs_progress() for s in statuses if s.running_runs)
    # Points that differ only in epochs train as one run: "6 running in 2 runs (epochs 5/15 x3, ...)".
    shared = f" in {runs} run{'s' if runs != 1 else ''}" if 0 < runs < running else ""
    head = (f"{done}/{total} done, " if with_done else "") + \
        f"{running} running{shared}{f' (epochs {epochs})' if epochs else ''}, {failed} failed"
    if len(statuses) == 1:
        return f"{statuses[0].name}: {head}, best {statuses[0].metric} {_best(statuses[0])}"
    each = ", ".join(f"{s.name} {done_of(s)}/{s.total_points} best {_best(s)}" for s in statuses)
    return f"{len(statuses)} studies: {head} ({each})"


def work_of(statuses: Sequence[StudyStatus]) -> tuple[int, int] | None:
    """Epochs trained and planned over all the studies, or None if any study's are not known."""
    if not statuses or any(s.work is None for s in statuses):
        return None
    return sum(s.work[0] for s in statuses if s.work), sum(s.work[1] for s in statuses if s.work)


def done_of(status: StudyStatus) -> int:
    return status.points["complete"] + status.points["pruned"] + status.points["failed"]


def _best(status: StudyStatus) -> str:
    return f"{status.best_value:.4f}" if status.best_value is not None else "-"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
