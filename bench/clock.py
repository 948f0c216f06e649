"""Per-epoch clocks for benchmarks: wall time, this process's CPU time, and other processes' load."""

from __future__ import annotations

import itertools
import os
import statistics
import time
from pathlib import Path
from typing import Any


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def epoch_times(begins: list[float], end: float) -> list[float]:
    marks = [*begins, end]
    return [b - a for a, b in itertools.pairwise(marks)]


def steady(epochs: list[float]) -> float:
    """Mean of epochs 2..E: epoch 1 also holds the graph trace."""
    return statistics.mean(epochs[1:]) if len(epochs) > 1 else epochs[0]


class Marks:
    """Wall time, this process's CPU time and the machine's busy time at each mark."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.busy: list[float] = []

    def mark(self) -> None:
        self.wall.append(time.time())
        self.cpu.append(time.process_time())
        self.busy.append(machine_busy())

    def summary(self) -> dict[str, list[float]]:
        """Per epoch: wall seconds, CPU seconds, and cores used by OTHER processes meanwhile."""
        wall = epoch_times(self.wall[:-1], self.wall[-1])
        cpu = epoch_times(self.cpu[:-1], self.cpu[-1])
        busy = epoch_times(self.busy[:-1], self.busy[-1])
        others = [max(0.0, b - c) / w for b, c, w in zip(busy, cpu, wall, strict=True)]
        return {"epochs": wall, "cpu_epochs": cpu, "others_cores": others}


def epoch_clock(marks: Marks) -> Any:
    """A Keras callback marking the start of every epoch and the end of training, so an epoch's
    time includes validation and every other callback. Keras is imported here, not at module
    import: a benchmark's child process configures its environment (threads) first."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            marks.mark()

        def on_train_end(self, logs: Any = None) -> None:
            marks.mark()

    return EpochClock()
