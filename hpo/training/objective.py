"""The trial objective: Optuna's side of one training run.

It turns the study's search space into concrete parameters, seeds the run from the trial's own
recorded seed, trains, and hands back every epoch's validation accuracy (live curves in the
dashboard, and the pruner's input) and each trial's results, the report's Table 1 numbers among
them. The worker loop (:mod:`hpo.workers.loop`) reports and records them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import optuna

from hpo.study import plan
from hpo.storage import records
from hpo.study.definition import Range, StudyDefinition
from hpo.training.data import Dataset
from hpo.training.events import Begun, EpochEnd, Event, Finished, Run, TrainResult
from hpo.storage.open import retrying
from hpo.training.train import Params, Training

log = logging.getLogger(__name__)


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


def run_trial(
    run: Run,
    definition: StudyDefinition,
    data: Dataset,
    *,
    environment: Mapping[str, Any] | None = None,
) -> Iterator[Event]:
    """Train ``run.trial``, an epoch at a time, and hand back what the worker loop records.

    Yields a :class:`Begun` with what each trial runs with, an :class:`EpochEnd` after every
    epoch, and a :class:`Finished` for each of ``run.shorter`` when the run passes its epoch
    count (its own result, as a run of that many epochs gives it), then for ``run.trial`` at the
    end. Writes nothing to the trials but the
    parameters the sampler draws for them.
    """
    trial = run.trial
    params = {t.number: retrying(functools.partial(suggest, t, definition), what="suggest parameters")
              for t in run.trials}
    seed = plan.run_seed(records.frozen(trial), definition)
    shared = {records.PREFIX_RUN: trial.number} if run.shorter else {}
    described = {}
    for t in run.trials:
        repeat = records.frozen(t).system_attrs.get(records.REPEAT)
        described[t.number] = {records.SEED: seed, records.SINGLE_VALUED: definition.fixed, records.DATA: data.source,
                               records.TRAIN_IMAGES: int(len(data.x_train)), **shared, **(environment or {}),
                               **({records.REPEAT_SHOWN: repeat} if repeat is not None else {})}
    log.info("trial %d: %s (seed %d)%s", trial.number, params[trial.number], seed,
             "".join(f"; trial {t.number} at epoch {params[t.number].epochs}" for t in run.shorter))
    yield Begun(described)

    def finished(t: optuna.Trial, result: TrainResult) -> Finished:
        metrics = result.metrics()
        value = metrics[definition.metric]
        if value is None:  # a loss that blew up to inf/nan still ranks, last
            value = float("-inf") if definition.direction == "maximize" else float("inf")
        log.info("trial %d: %s = %.4f, test accuracy %s%s", t.number, definition.metric, value,
                 metrics["test_accuracy"], " (diverged)" if result.diverged else "")
        return Finished(t, float(value), metrics, result)

    training = Training(params[trial.number], data, protocol=definition.protocol,
                        fraction=definition.validation_split, seed=seed)
    for epoch in training.epochs():
        yield EpochEnd(epoch, training.history["val_accuracy"][-1])
        for t in run.shorter:
            if params[t.number].epochs == epoch and t.number not in run.done:  # else given up by the loop
                yield finished(t, training.result())
    yield finished(trial, training.result())
