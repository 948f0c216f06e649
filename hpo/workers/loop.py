"""The worker loop: claim a queued trial, train it, record it, repeat until the study is done.

One process runs one loop. Many processes, on one machine or many, share a study through its
database. A failed trial does not kill its worker: it is marked FAIL with its message and
queued again (up to the study's ``max_retries``). SIGTERM, Ctrl-C or SIGHUP stops the current
trial at its next batch boundary, fails it as retryable and exits; a half-trained model is
never recorded as a result. A worker that comes back after its trial was declared dead and
retried elsewhere (frozen, or cut off from the database past the grace period) drops its
result with one warning: the database refuses every write to a finished trial, so nothing it
sends changes the stored trials.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.study import queueing

from hpo.errors import ConfigError, DataError, TrialError, ended_by
from hpo.storage import records
from hpo.study.definition import StudyDefinition
from hpo.study import plan
from hpo.workers import liveness
from hpo.workers.liveness import Heartbeat, Settings, Watch
from hpo.workers.stopping import Signals
from hpo.training.events import STOP, Artifacts, Begun, CheckpointStore, EpochEnd, Finished, Objective, Run, Stopped
from hpo.storage.open import StorageUnusable, retrying

log = logging.getLogger(__name__)

# A trial that raises one of these fails once, without retries: the study's own configuration,
# its data or its model cannot serve it (keras-tuner's FailedTrialError). Anything else (a lost
# connection, a crash, memory) may go well on another try, and is retried up to max_retries.
FATAL_IN_A_TRIAL = (TrialError, ConfigError, DataError)


@dataclass
class WorkerSummary:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    dropped: int = 0  # trained, but recovered by another worker meanwhile
    interrupted: bool = False


@dataclass
class Job:
    """A study a worker runs trials of, with the objective that trains them, the store for its
    trials' files (none: the trials keep their numbers only) and for its runs' checkpoints."""

    study: optuna.Study
    definition: StudyDefinition
    objective: Objective
    artifacts: Artifacts | None = None
    checkpoints: CheckpointStore | None = None


def run_worker(jobs: Sequence[Job], *, poll_interval: float = 2.0,
               max_trials: int | None = None) -> WorkerSummary:
    """Run trials of the ``jobs``' studies, in order, until no trial is waiting or running in any.

    A worker waits while other workers still run trials: if one of them dies, its trial is
    queued again and someone has to pick it up. With several studies, a worker takes the next
    study's trials while the last ones of a study train elsewhere, so no core idles.
    """
    settings = Settings.from_environment()
    watch = Watch()  # the beats this worker has seen, for as long as it lives
    summary = WorkerSummary()
    with Signals() as signals:
        while signals.requested is None and (max_trials is None or summary.complete < max_trials):
            claimed = _claim(jobs, settings, watch)
            if claimed is None:
                # Nothing waiting. A retry whose queueing was cut short (a crash between failing
                # a trial and queueing its retry) is queued now; else wait for running trials.
                if sum(retrying(functools.partial(queueing.sync, j.study, j.definition), what="queue missing trials")
                       for j in jobs):
                    continue
                if not any(_running(job.study) for job in jobs):
                    break
                time.sleep(poll_interval)
                continue
            job, trial = claimed
            _run_one(job, _shared_run(job, trial, settings), settings, summary, signals)
        summary.interrupted = signals.requested is not None
    return summary


def _claim(jobs: Sequence[Job], settings: Settings, watch: Watch) -> tuple[Job, optuna.Trial] | None:
    for job in jobs:
        retrying(functools.partial(liveness.recover, job.study, job.definition, watch), what="recover stale trials")
        trial = retrying(functools.partial(queueing.claim, job.study, plan.trial_sampler(job.definition),
                                           settings.claim_attrs()),
                         what="claim a trial")
        if trial is not None:
            return job, trial
    return None


def _running(study: optuna.Study) -> bool:
    return bool(retrying(lambda: records.storage_of(study).get_all_trials(
        records.study_id(study), deepcopy=False, states=(TrialState.RUNNING,)), what="poll"))


def _shared_run(job: Job, trial: optuna.Trial, settings: Settings) -> Run:
    """The run for a claimed trial: with the rest of its prefix group, the longest point first
    (the run trains to its epochs, the others finish on the way)."""
    group = retrying(functools.partial(queueing.claim_group, job.study, trial, settings.claim_attrs()),
                     what="claim a trial's group")
    trials = sorted([trial, *group], key=lambda t: -plan.planned_epochs(records.frozen(t)))
    return Run(trials[0], trials[1:])


class _Recorder:
    """Writes what a run hands back to its trials: every epoch's value, and each trial's result
    with what it ran with, in one transaction. A trial whose writes are refused has been
    finished by another process (found dead while this worker was frozen or cut off): it is
    given up with one warning, and the run trains on for the others."""

    def __init__(self, job: Job, run: Run, summary: WorkerSummary) -> None:
        self.job, self.run, self.summary = job, run, summary
        self.storage = records.storage_of(job.study)

    def begin(self, event: Begun) -> None:
        """Record what each of the run's trials runs with (seed, data, host, ...), a transaction
        per trial, so a running trial shows it too."""
        for trial in self.run.unfinished:
            attrs = event.attrs.get(trial.number, {})
            write = functools.partial(records.set_user_attrs, self.storage, records.trial_id(trial), attrs)
            if not retrying(write, what="record what a trial runs with"):
                if trial is self.run.trial:
                    raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} finished elsewhere")
                self.give_up(trial)

    def epoch(self, event: EpochEnd) -> None:
        """Report the epoch to the run's unfinished trials: each is recorded as soon as it has
        trained its own epochs, so every one left trains this epoch."""
        for trial in self.run.unfinished:
            try:
                retrying(functools.partial(trial.report, event.value, event.epoch), what="report an epoch")
            except optuna.exceptions.UpdateFinishedTrialError:
                if trial is self.run.trial:
                    raise
                self.give_up(trial)

    def finished(self, event: Finished) -> None:
        """Record a trial's result and link its files, all at once, or give it up."""
        links = ({} if self.job.artifacts is None else
                 self.job.artifacts.save(event.trial, event.result, model=self.keeps_model(event.value)))
        if self.finish(event.trial, TrialState.COMPLETE, event.value, dict(event.metrics), links):
            return
        if self.job.artifacts is not None:
            self.job.artifacts.remove(links)

    def keeps_model(self, value: float | None) -> bool:
        """Whether a trial that ends with ``value`` saves its trained model (the study's
        ``keep_models``): with "best", when no COMPLETE trial has a better value yet. The models
        kept are the best so far as each finished, so the study's best always has one, and a
        27-trial grid keeps a handful (one model of the report's base CNN: about 10 MB)."""
        keep = self.job.definition.keep_models
        if keep != "best":
            return keep == "all"
        if value is None or math.isnan(value):
            return False
        try:  # one query, however many trials the study holds
            best = retrying(lambda: self.job.study.best_value, what="read the study's best value")
        except ValueError:  # no COMPLETE trial yet
            return True
        if math.isnan(best):
            return True
        return value >= best if self.job.definition.direction == "maximize" else value <= best

    def finish(self, trial: optuna.Trial, state: TrialState, value: float | None = None,
               attrs: dict[str, Any] | None = None, links: Mapping[str, str] | None = None) -> bool:
        """``trial`` RUNNING -> ``state`` with its attributes; False (and given up) if another
        process finished it first."""
        done = retrying(functools.partial(records.finish_trial, self.storage, records.trial_id(trial), state,
                                          value=value, user_attrs=attrs, system_attrs=links),
                        what=f"record a {state.name} trial")
        # Refused: another process finished it, or this one did and the reply to its commit got
        # lost before a retry (then the trial holds what this one wrote).
        if done or _state(self.job.study, trial) == state:
            self.run.done.add(trial.number)
            _count(self.summary, state)
            return True
        self.give_up(trial)
        return False

    def give_up(self, trial: optuna.Trial) -> None:
        _dropped(trial)
        self.run.done.add(trial.number)
        self.summary.dropped += 1


def _run_one(job: Job, run: Run, settings: Settings, summary: WorkerSummary, signals: Signals | None = None) -> None:
    """Train one run and record how its trials ended."""
    study, trial = job.study, run.trial
    record = _Recorder(job, run, summary)
    # Should its code not stop on a signal, the watchdog fails the run as retryable.
    fail = functools.partial(_fail_run, job, record, interrupted=True)
    running = signals.running(trial.number, fail) if signals is not None else contextlib.nullcontext()
    with Heartbeat(records.storage_of(study), run.trials, settings), running:
        try:
            for event in job.objective(run):
                STOP.check()
                if isinstance(event, Begun):
                    record.begin(event)
                elif isinstance(event, EpochEnd):
                    record.epoch(event)
                    if retrying(trial.should_prune, what="ask the pruner"):
                        log.info("trial %d pruned after epoch %d (%s %.4f)", trial.number,
                                 event.epoch, job.definition.curve_metric, event.value)
                        record.finish(trial, TrialState.PRUNED)
                        _discard_checkpoint(job, record)  # never to be retried
                        return
                else:
                    record.finished(event)
        except Stopped as exc:
            log.warning("trial %d interrupted by %s; it will be retried", trial.number, exc)
            _fail_run(job, record, f"interrupted by {exc}", interrupted=True)
            return
        except StorageUnusable as exc:
            # Not the trial's fault, and no other trial would fare better: leave the run's trials
            # retryable where the database still takes that much, and stop this worker. Where it
            # does not, they stay RUNNING under a dead process, and the next worker recovers them.
            with contextlib.suppress(StorageUnusable):
                _fail_run(job, record, f"stopped: {exc}", interrupted=True)
            raise
        except FATAL_IN_A_TRIAL as exc:
            # The same configuration, data or model fails the same way every time: once is enough.
            log.error("trial %d failed, and will not be retried: %s", trial.number, exc)
            _fail_run(job, record, f"{type(exc).__name__}: {exc}", fatal=True)
            return
        except Exception as exc:  # noqa: BLE001  (a trial's failure is recorded, not fatal)
            if not _lost(job, record):  # else its writes were refused: UpdateFinishedTrialError
                log.error("trial %d failed: %s\n%s", trial.number, exc, traceback.format_exc())
            _fail_run(job, record, f"{type(exc).__name__}: {exc}")
            return
        except (SystemExit, KeyboardInterrupt) as exc:
            # Not a signal (those only ask the loop to stop, hpo.workers.stopping): the trial's own
            # code would end the worker, and would again on a retry. It fails once; the worker goes on.
            message = f"the trial's code {ended_by(exc)}, which would end the worker"
            log.error("trial %d failed, and will not be retried: %s\n%s", trial.number, message,
                      traceback.format_exc())
            _fail_run(job, record, message, fatal=True)
            return


def _lost(job: Job, record: _Recorder) -> bool:
    """Give up, with a warning each, the run's unfinished trials that another process has
    finished (found dead, and retried); True if its main trial is among them."""
    lost = [t for t in record.run.unfinished if _state(job.study, t) != TrialState.RUNNING]
    for t in lost:
        record.give_up(t)
    return record.run.trial in lost


def _count(summary: WorkerSummary, state: TrialState) -> None:
    if state == TrialState.COMPLETE:
        summary.complete += 1
    elif state == TrialState.PRUNED:
        summary.pruned += 1
    else:
        summary.failed += 1


def _state(study: optuna.Study, trial: optuna.Trial) -> TrialState:
    """The trial's state as stored now (another process may have finished it)."""
    frozen = retrying(lambda: records.storage_of(study).get_trial(records.trial_id(trial)), what="read a trial")
    return frozen.state


def _dropped(trial: optuna.Trial) -> None:
    log.warning("trial %d was recovered by another worker while this one trained it (no heartbeat "
                "reached the database in time); its retry stands and this result is dropped", trial.number)


def _fail_run(job: Job, record: _Recorder, message: str, *, interrupted: bool = False, fatal: bool = False) -> None:
    """Fail the run's trials still RUNNING (a group's shorter points already passed stay
    COMPLETE; one another process failed first is its to retry), then queue their retries."""
    for trial in record.run.unfinished:
        fail = functools.partial(queueing.fail, job.study, records.trial_id(trial), message, interrupted=interrupted,
                                 fatal=fatal)
        if retrying(fail, what="record a failed trial"):
            record.summary.failed += 1
    retrying(lambda: queueing.sync(job.study, job.definition), what="queue a retry")
    slot = records.frozen(record.run.trial).system_attrs.get(records.SLOT)
    if slot is not None and _over(job.study, int(slot)):
        _discard_checkpoint(job, record)  # failed for good: no retry will go on from it


def _discard_checkpoint(job: Job, record: _Recorder) -> None:
    slot = records.frozen(record.run.trial).system_attrs.get(records.SLOT)
    if job.checkpoints is not None and slot is not None:
        job.checkpoints.discard(int(slot))


def _over(study: optuna.Study, slot: int) -> bool:
    """Whether a slot has no trial left that could still run (its retries used up, or fatal)."""
    attempts = plan.by_slot(retrying(lambda: study.get_trials(deepcopy=False), what="read trials")).get(slot, [])
    return not any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in attempts)
