"""What the worker loop hands a training run, and what the run hands back.

The loop (:mod:`hpo.workers.loop`) claims trials and records them; the objective
(:mod:`hpo.training.objective`) trains. They meet here, in plain data: the loop passes a :class:`Run`,
and the objective yields a :class:`Begun` with what the run's trials run with, an
:class:`EpochEnd` after every epoch (the loop reports it to the run's trials and asks the
pruner) and a :class:`Finished` for each trial whose epochs are done (the loop records it, in
one transaction). As in Optuna's ``_run_trial``, the objective returns
results and the loop alone writes trial states. Light on purpose: importing this loads no Keras.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import optuna

if TYPE_CHECKING:
    import keras
    import numpy as np


@dataclass
class Run:
    """One training run: ``trial``, trained to its end, and on a grid with shared epoch prefixes
    the claimed ``shorter`` trials of its group, each finished on the way at its epoch count."""

    trial: optuna.Trial
    shorter: list[optuna.Trial] = field(default_factory=list)
    done: set[int] = field(default_factory=set)  # numbers of the trials recorded or given up so far

    @property
    def trials(self) -> list[optuna.Trial]:
        return [self.trial, *self.shorter]

    @property
    def unfinished(self) -> list[optuna.Trial]:
        return [t for t in self.trials if t.number not in self.done]


@dataclass
class TrainResult:
    history: dict[str, list[float]]
    val_accuracy: float
    val_loss: float
    test_accuracy: float
    test_loss: float
    epochs_run: int
    fit_seconds: float
    build_seconds: float
    images_per_second: float
    steps: int  # optimizer steps taken
    diverged: bool
    xla: bool  # whether the training step ran XLA-compiled (Keras' "auto": off on a CPU)
    model: keras.Model = field(repr=False)
    # counts[true class, predicted class] on the test set; None for a model of its own loss
    confusion: np.ndarray | None = field(repr=False)
    class_names: tuple[str, ...] = ()  # the data's, in label order: the confusion matrix's rows
    # A model compiled with its own loss and metrics: each of them, val_<name> and test_<name>
    # (empty for hpo's own compile, whose four are the fields above).
    scores: dict[str, float] = field(default_factory=dict)
    # What the val_* series were measured on: a held-out part of the training set, or the test set
    # itself (the report's protocol "test"); the learning curves say which.
    validated_on: str = "validation"

    def metrics(self) -> dict[str, Any]:
        """The numbers a trial records: finite floats, or None where training blew up."""
        scored = {name: _finite(value) for name, value in self.scores.items()} if self.scores else {
            "val_accuracy": _finite(self.val_accuracy),
            "val_loss": _finite(self.val_loss),
            "test_accuracy": _finite(self.test_accuracy),
            "test_loss": _finite(self.test_loss),
        }
        return {
            **scored,
            "epochs_run": self.epochs_run,
            "fit_seconds": round(self.fit_seconds, 3),
            "build_seconds": round(self.build_seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
            "train_steps": self.steps,
            "diverged": self.diverged,
            # Op determinism would turn XLA off and slow the GPU; runs are seeded instead, and
            # repeat exactly on one CPU machine (tests/test_objective.py; BENCHMARKS.md, c).
            "xla": self.xla,
            "deterministic_ops": False,
        }


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


@dataclass(frozen=True)
class Begun:
    """The run has its parameters: per trial number, what it runs with (seed, data, host, ...),
    recorded at once (a running trial shows it)."""

    attrs: Mapping[int, Mapping[str, Any]]


@dataclass(frozen=True)
class EpochEnd:
    """An epoch of the run has ended: its validation accuracy, for the trials still training."""

    epoch: int  # 1-based
    value: float


@dataclass(frozen=True)
class Finished:
    """A trial of the run has trained its epochs: everything the loop records for it."""

    trial: optuna.Trial
    value: float
    metrics: Mapping[str, Any]  # user attributes: its results
    result: TrainResult       # the model as of its epochs, scored (for the trial's artifacts)


Event = Begun | EpochEnd | Finished
Objective = Callable[[Run], Iterator[Event]]


class CheckpointStore(Protocol):
    """Where runs save their state (hpo.training.checkpoints.Checkpoints)."""

    def discard(self, slot: int) -> None:
        """Delete the slot's checkpoint: its trial has ended for good."""


class Artifacts(Protocol):
    """Files a finished trial leaves behind (hpo.training.artifacts.TrialArtifacts)."""

    def save(self, trial: optuna.Trial, result: TrainResult, *, model: bool = True) -> dict[str, str]:
        """Write the trial's files (its trained model too, with ``model``); return the system
        attributes that link them to it."""

    def remove(self, links: Mapping[str, str]) -> None:
        """Delete files :meth:`save` wrote, for a trial whose result was not recorded."""


class Stopped(BaseException):
    """The worker was asked to stop (SIGTERM, SIGINT, SIGHUP) while a run trained.

    A BaseException, so that no ``except Exception`` in Keras or here mistakes it for a trial's
    own failure. Raised only at safe points: a batch boundary, between epochs, between events.
    """


class StopRequest:
    """A stop asked for by a signal. The handler only sets it (raising from a signal handler
    can land inside TensorFlow's own bookkeeping); training checks it at every batch boundary,
    the worker loop after every event, and either raises :class:`Stopped` there."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._lock = threading.Lock()

    def set(self, reason: str) -> None:
        with self._lock:
            self.reason = self.reason or reason

    def clear(self) -> None:
        with self._lock:
            self.reason = None

    def check(self) -> None:
        if self.reason is not None:
            raise Stopped(self.reason)


STOP = StopRequest()  # one per process, as signals are
