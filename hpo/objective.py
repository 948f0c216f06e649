"""The trial objective: Optuna's side of one training run.

It turns the study's search space into concrete parameters, seeds the run from the trial's own
recorded seed, streams per-epoch validation accuracy to the study (live curves in the
dashboard, and the pruner's input), and records the report's Table 1 numbers on the trial.
"""

from __future__ import annotations

import functools
import logging
from typing import Any
from collections.abc import Callable, Mapping

import keras
import optuna

from hpo import stored
from hpo.config import Range, StudyDefinition
from hpo.data import Dataset
from hpo.storage import retrying
from hpo.queue import trial_seed
from hpo.train import Params, TrainResult, train
from hpo.worker import Run

log = logging.getLogger(__name__)

# Called with the finished trial and its training result (artifacts, for instance).
TrialHook = Callable[[optuna.Trial, TrainResult], None]


def suggest(trial: optuna.Trial, definition: StudyDefinition) -> Params:
    """The trial's parameters: what varies drawn by the sampler, the fixed ones as defined."""
    values: dict[str, Any] = dict(definition.fixed)
    for name, spec in definition.space.items():
        if name in values:
            continue
        if isinstance(spec, Range):
            if name in ("batch_size", "epochs"):
                values[name] = trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
            else:
                values[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
        else:
            values[name] = trial.suggest_categorical(name, list(spec))
    return Params.from_mapping(values)


class EpochReporter(keras.callbacks.Callback):
    """Reports validation accuracy after every epoch and stops the fit if the pruner says so.

    ``shorter`` trials of a shared run get the epochs up to their own count, as their own
    training run would have reported them; one whose writes are refused (another process
    took it over) goes to ``on_lost`` and gets no more.
    """

    def __init__(self, trial: optuna.Trial, shorter: Mapping[optuna.Trial, int] | None = None,
                 on_lost: Callable[[optuna.Trial], None] | None = None) -> None:
        super().__init__()
        self.trial, self.on_lost = trial, on_lost
        self.shorter = dict(shorter or {})

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        value = (logs or {}).get("val_accuracy")
        if value is None:
            return
        step = epoch + 1
        retrying(functools.partial(self.trial.report, float(value), step), what="report an epoch")
        for trial, epochs in list(self.shorter.items()):
            if step > epochs:
                continue
            try:
                retrying(functools.partial(trial.report, float(value), step), what="report an epoch")
            except optuna.exceptions.UpdateFinishedTrialError:
                del self.shorter[trial]
                if self.on_lost is not None:
                    self.on_lost(trial)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {step} (val_accuracy {value:.4f})")


def _record(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    def write() -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    retrying(write, what="record the trial's attributes")


def run_trial(
    run: Run,
    definition: StudyDefinition,
    data: Dataset,
    *,
    environment: Mapping[str, Any] | None = None,
    on_complete: TrialHook | None = None,
) -> float:
    """Train ``run.trial`` and record its results; complete ``run.shorter`` at their epochs."""
    trial = run.trial
    params = {t.number: retrying(functools.partial(suggest, t, definition), what="suggest parameters")
              for t in run.trials}
    seed = run_seed(trial, definition)
    shared = {stored.PREFIX_RUN: trial.number} if run.shorter else {}
    for t in run.trials:
        repeat = stored.frozen(t).system_attrs.get(stored.REPEAT)
        _record(t, {stored.SEED: seed, stored.FIXED: definition.fixed, stored.DATA: data.source,
                    stored.TRAIN_IMAGES: int(len(data.x_train)), **shared, **(environment or {}),
                    **({stored.REPEAT_ATTR: repeat} if repeat is not None else {})})
    log.info("trial %d: %s (seed %d)%s", trial.number, params[trial.number], seed,
             "".join(f"; trial {t.number} at epoch {params[t.number].epochs}" for t in run.shorter))

    def finish(t: optuna.Trial, result: TrainResult) -> float:
        metrics = result.metrics()
        _record(t, metrics)
        if on_complete is not None:
            on_complete(t, result)
        value = metrics[definition.metric]
        if value is None:  # a loss that blew up to inf/nan still ranks, last
            value = float("-inf") if definition.direction == "maximize" else float("inf")
        log.info("trial %d: %s = %.4f, test accuracy %s%s", t.number, definition.metric, value,
                 metrics["test_accuracy"], " (diverged)" if result.diverged else "")
        return float(value)

    def milestone(t: optuna.Trial) -> Callable[[TrainResult], None]:
        def reached(result: TrainResult) -> None:
            if t.number in run.done:  # given up on the way (EpochReporter)
                return
            try:
                value = finish(t, result)
            except optuna.exceptions.UpdateFinishedTrialError:
                run.drop(t)
                return
            run.complete(t, value)

        return reached

    epochs = {t: params[t.number].epochs for t in run.shorter}
    result = train(params[trial.number], data, protocol=definition.protocol, fraction=definition.validation_split,
                   seed=seed, callbacks=[EpochReporter(trial, epochs, on_lost=run.drop)],
                   milestones={n: milestone(t) for t, n in epochs.items()})
    return finish(trial, result)


def run_seed(trial: optuna.Trial, definition: StudyDefinition) -> int:
    """The seed a trial trains with (and its sampler drew with): fixed when a grid trial was
    queued, shared by a prefix group; else the study's seed and the trial's number."""
    return int(stored.frozen(trial).system_attrs.get(stored.RUN_SEED, trial_seed(definition, trial.number)))
