"""The trial objective: Optuna's side of one training run.

It turns the study's search space into concrete parameters, seeds the run from the trial's own
recorded seed, streams per-epoch validation accuracy to the study (live curves in the
dashboard, and the pruner's input), and records the report's Table 1 numbers on the trial.
"""

from __future__ import annotations

import logging
from typing import Any
from collections.abc import Callable, Mapping

import keras
import optuna

from hpo import stored
from hpo.config import Range, StudyDefinition
from hpo.data import Dataset
from hpo.storage import retrying
from hpo.study import trial_seed
from hpo.train import Params, TrainResult, train

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
    """Reports validation accuracy after every epoch and stops the fit if the pruner says so."""

    def __init__(self, trial: optuna.Trial) -> None:
        super().__init__()
        self.trial = trial

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        value = (logs or {}).get("val_accuracy")
        if value is None:
            return
        retrying(lambda: self.trial.report(float(value), step=epoch + 1), what="report an epoch")
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (val_accuracy {value:.4f})")


def _record(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    def write() -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    retrying(write, what="record the trial's attributes")


def run_trial(
    trial: optuna.Trial,
    definition: StudyDefinition,
    data: Dataset,
    *,
    environment: Mapping[str, Any] | None = None,
    on_complete: TrialHook | None = None,
) -> float:
    params = retrying(lambda: suggest(trial, definition), what="suggest parameters")
    seed = trial_seed(definition, trial.number)  # the seed its sampler drew the params with, too
    _record(trial, {stored.SEED: seed, stored.FIXED: definition.fixed, "data": data.source,
                    "train_images": int(len(data.x_train)), **(environment or {})})
    log.info("trial %d: %s (seed %d)", trial.number, params, seed)

    result = train(params, data, protocol=definition.protocol, fraction=definition.validation_split,
                   seed=seed, callbacks=[EpochReporter(trial)])
    metrics = result.metrics()
    _record(trial, metrics)
    if on_complete is not None:
        on_complete(trial, result)

    value = metrics[definition.metric]
    if value is None:  # a loss that blew up to inf/nan still ranks, last
        value = float("-inf") if definition.direction == "maximize" else float("inf")
    log.info("trial %d: %s = %.4f, test accuracy %s%s", trial.number, definition.metric, value,
             metrics["test_accuracy"], " (diverged)" if result.diverged else "")
    return float(value)
