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

import logging
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from types import FrameType
from collections.abc import Callable

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
    """Records the trial's heartbeat every interval, in a thread, surviving database hiccups.

    Optuna's own heartbeat thread dies on the first failed write; then a live trial looks
    dead and is retried by another worker while this one still trains it.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id
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
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as exc:  # noqa: BLE001  (keep beating; the database may come back)
                log.warning("heartbeat for trial %d failed: %s", self._trial_id, str(exc).splitlines()[0])


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


Objective = Callable[[optuna.Trial], float]


def run_worker(study: optuna.Study, definition: StudyDefinition, objective: Objective, *,
               poll_interval: float = 2.0, max_trials: int | None = None) -> WorkerSummary:
    """Run trials of ``study`` until its queue is empty and no trial is running anywhere.

    A worker waits while other workers still run trials: if one of them dies, its trial is
    queued again and someone has to pick it up.
    """
    summary = WorkerSummary()
    storage = stored.storage_of(study)
    sampler_for = trial_sampler(definition)
    with _Signals() as signals:
        while signals.requested is None and (max_trials is None or summary.complete < max_trials):
            retrying(lambda: queue.recover(study, definition), what="recover stale trials")
            trial = retrying(lambda: queue.claim(study, sampler_for), what="claim a trial")
            if trial is None:
                # Nothing waiting. A retry whose queueing was cut short (a crash between failing
                # a trial and queueing its retry) is queued now; else wait for running trials.
                if retrying(lambda: queue.sync(study, definition), what="queue missing trials"):
                    continue
                running = retrying(lambda: storage.get_all_trials(
                    stored.study_id(study), deepcopy=False, states=(TrialState.RUNNING,)), what="poll")
                if not running:
                    break
                time.sleep(poll_interval)
                continue
            state = _run_one(study, definition, trial, objective, signals)
            if state == TrialState.COMPLETE:
                summary.complete += 1
            elif state == TrialState.PRUNED:
                summary.pruned += 1
            elif state == TrialState.FAIL:
                summary.failed += 1
            else:
                summary.dropped += 1
        summary.interrupted = signals.requested is not None
    return summary


def _run_one(study: optuna.Study, definition: StudyDefinition, trial: optuna.Trial, objective: Objective,
             signals: _Signals) -> TrialState | None:
    """Train one claimed trial and record how it ended; None if its result was dropped."""
    with Heartbeat(stored.storage_of(study), stored.trial_id(trial)):
        try:
            signals.training = True
            try:
                value = objective(trial)
            finally:
                signals.training = False
        except optuna.TrialPruned as exc:
            log.info("trial %d pruned: %s", trial.number, exc)
            return _finish(study, trial, TrialState.PRUNED)
        except optuna.exceptions.UpdateFinishedTrialError:
            _dropped(trial)
            return None
        except Interrupted as exc:
            log.warning("trial %d interrupted by %s; it will be retried", trial.number, exc)
            return _fail(study, definition, trial, f"interrupted by {exc}", interrupted=True)
        except Exception as exc:  # noqa: BLE001  (a trial's failure is recorded, not fatal)
            if _recovered(study, trial):
                _dropped(trial)
                return None
            log.error("trial %d failed: %s\n%s", trial.number, exc, traceback.format_exc())
            return _fail(study, definition, trial, f"{type(exc).__name__}: {exc}")
        return _finish(study, trial, TrialState.COMPLETE, value)


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


def _fail(study: optuna.Study, definition: StudyDefinition, trial: optuna.Trial, message: str, *,
          interrupted: bool = False) -> TrialState | None:
    """Fail the trial and queue its retry; None if another worker had already recovered it."""
    if not retrying(lambda: queue.fail(study, stored.trial_id(trial), message, interrupted=interrupted),
                    what="record a failed trial"):
        _dropped(trial)
        return None
    retrying(lambda: queue.sync(study, definition), what="queue a retry")
    return TrialState.FAIL
