"""The trial objective: Optuna's side of one training run.

It turns the study's search space into concrete parameters, seeds the run from the trial's own
recorded seed, trains, and hands back every epoch's validation accuracy (live curves in the
dashboard, and the pruner's input) and each trial's results, the report's Table 1 numbers among
them. The worker loop (:mod:`hpo.workers.loop`) reports and records them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo.study import plan
from hpo.storage import records
from hpo.study.definition import StudyDefinition
from hpo.study.space import Range, Spec, is_integer_range, resolve
from hpo.study.builder import LoadedBuilder
from hpo.training.data import Dataset
from hpo.training.events import Begun, EpochEnd, Event, Finished, Run, TrainResult
from hpo.storage.open import retrying
from hpo.training.checkpoints import Checkpoints, Identity, model_code_version
from hpo.errors import TrialError
from hpo.training.models import StudyCompile
from hpo.training.train import Params, Training, TrainingState

log = logging.getLogger(__name__)


def study_compile(definition: StudyDefinition) -> StudyCompile:
    """How the study compiles a builder's model: its [model] loss and metrics, and whether its
    space names the optimizer."""
    optimizer_named = "optimizer" in definition.space or any(
        "optimizer" in table for table in definition.conditional.values())
    return StudyCompile(definition.loss, definition.metrics, optimizer_named)


def suggest(trial: optuna.Trial, definition: StudyDefinition) -> Params:
    """The trial's parameters: those that apply drawn by the sampler (in the order
    :func:`hpo.study.space.resolve` gives), the single-valued ones as defined."""
    fixed = definition.fixed

    def draw(optuna_name: str, name: str, spec: Spec) -> Any:
        if optuna_name in fixed:
            return fixed[optuna_name]
        if not isinstance(spec, Range):
            return trial.suggest_categorical(optuna_name, list(spec))
        if is_integer_range(name, spec):
            return trial.suggest_int(optuna_name, int(spec.low), int(spec.high), log=spec.log)
        return trial.suggest_float(optuna_name, spec.low, spec.high, log=spec.log)

    return Params.from_mapping(resolve(definition.space, definition.conditional, draw, definition.has_builder))


def run_trial(
    run: Run,
    definition: StudyDefinition,
    data: Dataset,
    *,
    environment: Mapping[str, Any] | None = None,
    checkpoints: Checkpoints | None = None,
    checkpoint_every: int = 1,
    builder: LoadedBuilder | None = None,
) -> Iterator[Event]:
    """Train ``run.trial``, an epoch at a time, and hand back what the worker loop records.

    Yields a :class:`Begun` with what each trial runs with, an :class:`EpochEnd` after every
    epoch, and a :class:`Finished` for each of ``run.shorter`` when the run passes its epoch
    count (its own result, as a run of that many epochs gives it), then for ``run.trial`` at the
    end. Writes nothing to the trials but the parameters the sampler draws for them.

    With ``checkpoints``, the run saves its state every ``checkpoint_every`` epochs and when it
    is stopped, and a retry of its slot goes on from there: its earlier epochs are handed back
    again (so the trial's curve is whole), and the trial records where it resumed.
    """
    trial = run.trial
    params = {t.number: retrying(functools.partial(suggest, t, definition), what="suggest parameters")
              for t in run.trials}
    frozen = records.frozen(trial)
    seed = plan.run_seed(frozen, definition)
    training = Training(params[trial.number], data, protocol=definition.protocol,
                        fraction=definition.validation_split, seed=seed, builder=builder,
                        compile=study_compile(definition))
    curve = definition.curve_metric
    identity = Identity(definition.name, str(records.record_of(trial.study).get(records.UID, "")),
                        int(frozen.system_attrs.get(records.SLOT, -trial.number - 1)),
                        dataclasses.asdict(params[trial.number]), seed, data.fingerprint,
                        model_code_version() + (builder.sha256 if builder else ""))
    before = _epochs_of_earlier_attempts(trial, frozen)  # trained by this slot's failed attempts
    loaded = checkpoints.load(identity) if checkpoints is not None else None
    if loaded is not None and any(_passed(params[t.number].epochs, loaded[0]) for t in run.shorter):
        # A point of the group that the checkpoint has passed without its result: only a run from
        # the start can give it (never expected: a run saves only after its points on the way).
        log.warning("checkpoint of slot %d is past a point of this run; training from scratch", identity.slot)
        loaded = None
    if loaded is not None:
        training.restore(loaded[0])
    resumed = {records.RESUMED_FROM: training.epochs_run, records.RESUMED_BATCHES: training.batches_done} \
        if loaded is not None else {}
    shared = {records.PREFIX_RUN: trial.number} if run.shorter else {}
    described = {}
    for t in run.trials:
        repeat = records.frozen(t).system_attrs.get(records.REPEAT)
        described[t.number] = {records.SEED: seed, records.SINGLE_VALUED: definition.fixed, records.DATA: data.source,
                               records.TRAIN_IMAGES: int(len(data.x_train)), **shared, **resumed,
                               **(environment or {}), **({records.REPEAT_SHOWN: repeat} if repeat is not None else {})}
    shown = ", ".join(f"{name}={value}" for name, value in params[trial.number].values().items())
    log.info("trial %d: %s (seed %d)%s%s", trial.number, shown, seed,
             "".join(f"; trial {t.number} at epoch {params[t.number].epochs}" for t in run.shorter),
             f"; resumed after epoch {training.epochs_run} (+{training.batches_done} batches)" if resumed else "")
    yield Begun(described)
    for epoch, value in enumerate(training.history.get(curve, []), 1):  # the curve before the resume
        yield EpochEnd(epoch, value)

    first = training.epochs_run

    def trained() -> int:
        """Whole epochs every attempt of this slot has trained, this one's so far included."""
        return before + training.epochs_run - first

    def finished(t: optuna.Trial, result: TrainResult) -> Finished:
        metrics = result.metrics()
        if definition.metric not in metrics:
            raise TrialError(f"the study's metric {definition.metric} is not among what the model reports: "
                             f"{', '.join(m for m in metrics if m.startswith(('val_', 'test_')))}")
        value = metrics[definition.metric]
        if value is None:  # a loss that blew up to inf/nan still ranks, last
            value = definition.worst
        log.info("trial %d: %s = %.4f, %s %s%s", t.number, definition.metric, value, definition.test_metric,
                 metrics.get(definition.test_metric), " (diverged)" if result.diverged else "")
        return Finished(t, float(value), {**metrics, records.EPOCHS_ALL_ATTEMPTS: trained()}, result)

    if checkpoints is not None:
        training.on_stop = lambda state: checkpoints.save(identity, state, trained())
    for t in run.shorter:  # a point that ends where the checkpoint does: its result is the state restored
        if loaded is not None and params[t.number].epochs == training.epochs_run and t.number not in run.done:
            yield finished(t, training.result())
    for epoch in training.epochs():
        if curve not in training.history:
            reported = ", ".join(name for name in training.history if name.startswith("val_"))
            raise TrialError(f"the study's metric {definition.metric} needs {curve} every epoch; the model "
                             f"reports {reported or 'nothing on the validation set'} (name it in its metrics)")
        yield EpochEnd(epoch, training.history[curve][-1])
        for t in run.shorter:
            if params[t.number].epochs == epoch and t.number not in run.done:  # else given up by the loop
                yield finished(t, training.result())
        # Saved once the epoch is reported and its points recorded: a retry never goes on from
        # an epoch no attempt reported, nor past a point it would then never complete.
        if checkpoints is not None and checkpoint_every and epoch % checkpoint_every == 0 \
                and epoch < params[trial.number].epochs:
            checkpoints.save(identity, training.state(), trained())
    yield finished(trial, training.result())
    # Reached only when the loop asks for more after the last result. A loop that lets go of the
    # run earlier (pruned, or stopped between two events) says itself what becomes of the checkpoint.
    if checkpoints is not None:
        checkpoints.discard(identity.slot)


def _passed(epochs: int, state: TrainingState) -> bool:
    """Whether a state saved after ``state.epochs_done`` epochs (and some batches) is past ``epochs``."""
    return epochs < state.epochs_done or (epochs == state.epochs_done and state.batches_done > 0)


def _epochs_of_earlier_attempts(trial: optuna.Trial, frozen: FrozenTrial) -> int:
    """Whole epochs the failed attempts before this trial trained (each reported them; a resumed
    one also handed back the epochs it resumed after, which it did not train)."""
    if records.RETRY_OF not in frozen.system_attrs:
        return 0
    slot = frozen.system_attrs.get(records.SLOT)
    earlier = [t for t in trial.study.get_trials(deepcopy=False)
               if t.system_attrs.get(records.SLOT) == slot and t.number < trial.number]
    return sum(len(t.intermediate_values) - int(t.user_attrs.get(records.RESUMED_FROM, 0)) for t in earlier)
