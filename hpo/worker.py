"""The worker loop: claim a queued trial, train it, record it, repeat until the study is done.

One process runs one loop. Many processes, on one machine or many, share a study through its
database. A failed trial does not kill its worker: it is marked FAIL with its message and
queued again (up to the study's ``max_retries``). SIGTERM or Ctrl-C fails the current trial as
retryable and exits; a half-trained model is never recorded as a result. A worker that comes
back after its trial was declared dead and retried elsewhere (frozen, or cut off from the
database past the grace period) drops its result with one warning: the database refuses every
write to a finished trial, so nothing it sends changes the stored trials.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from types import FrameType
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import TrialState

from hpo import queue, stored
from hpo.config import StudyDefinition
from hpo.storage import retrying
from hpo.study import trial_sampler

log = logging.getLogger(__name__)


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived while a trial was training.

    A BaseException, so that no ``except Exception`` in Keras or here mistakes it for a
    trial's own failure.
    """


@dataclass
class WorkerSummary:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    dropped: int = 0  # trained, but recovered by another worker meanwhile
    interrupted: bool = False


class Heartbeat:
    """Records the heartbeat of a run's trials every interval, in a thread, surviving database
    hiccups.

    Optuna's own heartbeat thread dies on the first failed write; then a live trial looks
    dead and is retried by another worker while this one still trains it.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_ids: Sequence[int]) -> None:
        self._storage, self._trial_ids = storage, list(trial_ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = self._storage.get_heartbeat_interval() or 5
        while not self._stop.wait(interval):
            for trial_id in self._trial_ids:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception as exc:  # noqa: BLE001  (keep beating; the database may come back)
                    log.warning("heartbeat for trial %d failed: %s", trial_id, str(exc).splitlines()[0])


class _Signals:
    """Turns SIGTERM/SIGINT into :class:`Interrupted` while training, a stop flag otherwise."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self.training = False

    def __enter__(self) -> _Signals:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.requested = signum
        if self.training:
            self.training = False  # a second signal during clean-up must not interrupt it
            raise Interrupted(signal.Signals(signum).name)


@dataclass
class Run:
    """What one training run completes: ``trial``, trained to its end, and on a grid with shared
    epoch prefixes the claimed ``shorter`` trials of its group, each completed on the way with
    ``complete(trial, value)`` when the run passes its epoch count."""

    trial: optuna.Trial
    shorter: list[optuna.Trial]
    complete: Callable[[optuna.Trial, float], None]
    # For a shorter trial whose writes were refused (another process found it dead and retried
    # it): give it up, and train on for the others.
    drop: Callable[[optuna.Trial], None]
    done: set[int] = field(default_factory=set)  # numbers of the shorter trials finished so far

    @property
    def trials(self) -> list[optuna.Trial]:
        return [self.trial, *self.shorter]

    @property
    def unfinished(self) -> list[optuna.Trial]:
        return [t for t in self.trials if t.number not in self.done]


Objective = Callable[[Run], float]  # returns the value of run.trial


@dataclass
class Job:
    """A study a worker runs trials of, with the objective that trains them."""

    study: optuna.Study
    definition: StudyDefinition
    objective: Objective


def run_worker(jobs: Sequence[Job], *, poll_interval: float = 2.0,
               max_trials: int | None = None) -> WorkerSummary:
    """Run trials of the ``jobs``' studies, in order, until no trial is waiting or running in any.

    A worker waits while other workers still run trials: if one of them dies, its trial is
    queued again and someone has to pick it up. With several studies, a worker takes the next
    study's trials while the last ones of a study train elsewhere, so no core idles.
    """
    summary = WorkerSummary()
    with _Signals() as signals:
        while signals.requested is None and (max_trials is None or summary.complete < max_trials):
            claimed = _claim(jobs)
            if claimed is None:
                # Nothing waiting. A retry whose queueing was cut short (a crash between failing
                # a trial and queueing its retry) is queued now; else wait for running trials.
                if sum(retrying(functools.partial(queue.sync, j.study, j.definition), what="queue missing trials")
                       for j in jobs):
                    continue
                if not any(_running(job.study) for job in jobs):
                    break
                time.sleep(poll_interval)
                continue
            job, trial = claimed
            _run_one(job, _shared_run(job, trial, summary), signals, summary)
        summary.interrupted = signals.requested is not None
    return summary


def _claim(jobs: Sequence[Job]) -> tuple[Job, optuna.Trial] | None:
    for job in jobs:
        retrying(functools.partial(queue.recover, job.study, job.definition), what="recover stale trials")
        trial = retrying(functools.partial(queue.claim, job.study, trial_sampler(job.definition)), what="claim a trial")
        if trial is not None:
            return job, trial
    return None


def _running(study: optuna.Study) -> bool:
    return bool(retrying(lambda: stored.storage_of(study).get_all_trials(
        stored.study_id(study), deepcopy=False, states=(TrialState.RUNNING,)), what="poll"))


def _shared_run(job: Job, trial: optuna.Trial, summary: WorkerSummary) -> Run:
    """The run for a claimed trial: with the rest of its prefix group, the longest point first."""
    group = retrying(lambda: queue.claim_group(job.study, trial), what="claim a trial's group")
    trials = sorted([trial, *group], key=lambda t: -queue.planned_epochs(stored.frozen(t)))

    def complete(shorter: optuna.Trial, value: float) -> None:
        state = _finish(job.study, shorter, TrialState.COMPLETE, value)
        run.done.add(shorter.number)
        _count(summary, state)

    def drop(shorter: optuna.Trial) -> None:
        _dropped(shorter)
        run.done.add(shorter.number)
        summary.dropped += 1

    run = Run(trials[0], trials[1:], complete, drop)
    return run


def _run_one(job: Job, run: Run, signals: _Signals, summary: WorkerSummary) -> None:
    """Train one run and record how its trials ended."""
    study, trial = job.study, run.trial
    with Heartbeat(stored.storage_of(study), [stored.trial_id(t) for t in run.trials]):
        try:
            signals.training = True
            try:
                value = job.objective(run)
            finally:
                signals.training = False
        except optuna.TrialPruned as exc:
            log.info("trial %d pruned: %s", trial.number, exc)
            _count(summary, _finish(study, trial, TrialState.PRUNED))
            return
        except Interrupted as exc:
            log.warning("trial %d interrupted by %s; it will be retried", trial.number, exc)
            _fail_run(job, run, f"interrupted by {exc}", summary, interrupted=True)
            return
        except Exception as exc:  # noqa: BLE001  (a trial's failure is recorded, not fatal)
            if not _lost(job, run, summary):  # else its writes were refused: UpdateFinishedTrialError
                log.error("trial %d failed: %s\n%s", trial.number, exc, traceback.format_exc())
            _fail_run(job, run, f"{type(exc).__name__}: {exc}", summary)
            return
        _count(summary, _finish(study, trial, TrialState.COMPLETE, value))


def _lost(job: Job, run: Run, summary: WorkerSummary) -> bool:
    """Drop, with a warning each, the run's unfinished trials that another process has finished
    (found dead, and retried); True if its main trial is among them."""
    lost = [t for t in run.unfinished if _recovered(job.study, t)]
    for t in lost:
        _dropped(t)
    summary.dropped += len(lost)
    return run.trial in lost


def _count(summary: WorkerSummary, state: TrialState | None) -> None:
    if state == TrialState.COMPLETE:
        summary.complete += 1
    elif state == TrialState.PRUNED:
        summary.pruned += 1
    elif state == TrialState.FAIL:
        summary.failed += 1
    else:
        summary.dropped += 1


def _recovered(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether another process has finished this worker's trial (found it dead, and retried it)."""
    frozen = retrying(lambda: stored.storage_of(study).get_trial(stored.trial_id(trial)), what="read a trial")
    return frozen.state != TrialState.RUNNING


def _dropped(trial: optuna.Trial) -> None:
    log.warning("trial %d was recovered by another worker while this one trained it (no heartbeat "
                "reached the database in time); its retry stands and this result is dropped", trial.number)


def _finish(study: optuna.Study, trial: optuna.Trial, state: TrialState,
            value: float | None = None) -> TrialState | None:
    try:
        retrying(lambda: study.tell(trial, value, state=state), what=f"record a {state.name} trial")
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        if not _recovered(study, trial):
            raise
        _dropped(trial)
        return None
    return state


def _fail_run(job: Job, run: Run, message: str, summary: WorkerSummary, *, interrupted: bool = False) -> None:
    """Fail the run's trials still RUNNING (a group's shorter points already passed stay COMPLETE;
    one another process failed first is its to retry), then queue their retries."""
    for trial in run.unfinished:
        fail = functools.partial(queue.fail, job.study, stored.trial_id(trial), message, interrupted=interrupted)
        if retrying(fail, what="record a failed trial"):
            summary.failed += 1
    retrying(lambda: queue.sync(job.study, job.definition), what="queue a retry")
