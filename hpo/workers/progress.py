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
        self.last = ""
        self.tty = out.isatty()

    def show(self, statuses: Sequence[StudyStatus], final: bool = False) -> None:
        done = sum(_done(s) for s in statuses)
        if self.first_done is None:
            self.first_done = done
        counts = self._counts(statuses, done)
        line = counts + self._eta(done)
        if self.tty:
            with contextlib.suppress(OSError, ValueError):  # a closed terminal stops no training
                self.out.write("\r\033[K" + line + ("\n" if final else ""))
                self.out.flush()
        elif final or counts != self.last:
            say(self.out, line)
        self.last = counts

    def _counts(self, statuses: Sequence[StudyStatus], done: int) -> str:
        running = sum(s.points["running"] for s in statuses)
        failed = sum(s.points["failed"] for s in statuses)
        epochs = ", ".join(s.running_progress() for s in statuses if s.running_epochs)
        head = f"{done}/{self.total} done, {running} running{f' (epochs {epochs})' if epochs else ''}, {failed} failed"
        if len(statuses) == 1:
            return f"{statuses[0].name}: {head}, best {statuses[0].metric} {_best(statuses[0])}"
        each = ", ".join(f"{s.name} {_done(s)}/{s.total_points} best {_best(s)}" for s in statuses)
        return f"{len(statuses)} studies: {head} ({each})"

    def _eta(self, done: int) -> str:
        elapsed = self.clock() - self.started
        fresh = done - (self.first_done or 0)
        remaining = self.total - done
        if remaining <= 0:
            return f", {_duration(elapsed)} elapsed"
        if fresh <= 0:
            return f", {_duration(elapsed)} elapsed, ETA -"
        return f", {_duration(elapsed)} elapsed, ETA {_duration(elapsed / fresh * remaining)}"


def _done(status: StudyStatus) -> int:
    return status.points["complete"] + status.points["pruned"] + status.points["failed"]


def _best(status: StudyStatus) -> str:
    return f"{status.best_value:.4f}" if status.best_value is not None else "-"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
