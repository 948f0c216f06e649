"""The worker loop: claim a queued trial, train it, record it, repeat until the study is done.

One process runs one loop. Many processes, on one machine or many, share a study through its
database. A failed trial does not kill its worker: it is marked FAIL with its message and
queued again (up to the study's ``max_retries``). SIGTERM or Ctrl-C fails the current trial as
retryable and exits; a half-trained model is never recorded as a result.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from types import FrameType
from typing import Callable

import optuna
from optuna.trial import TrialState

from hpo import queue
from hpo.storage import retrying

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


def run_worker(study: optuna.Study, objective: Objective, *, poll_interval: float = 2.0,
               max_trials: int | None = None) -> WorkerSummary:
    """Run trials of ``study`` until its queue is empty and no trial is running anywhere.

    A worker waits while other workers still run trials: if one of them dies, its trial is
    queued again and someone has to pick it up.
    """
    summary = WorkerSummary()
    storage = study._storage
    with _Signals() as signals:
        while signals.requested is None and (max_trials is None or summary.complete < max_trials):
            retrying(lambda: queue.recover(study), what="recover stale trials")
            trial = retrying(lambda: queue.claim(study), what="claim a trial")
            if trial is None:
                running = retrying(lambda: storage.get_all_trials(
                    study._study_id, deepcopy=False, states=(TrialState.RUNNING,)), what="poll")
                if not running:
                    break
                time.sleep(poll_interval)
                continue
            state = _run_one(study, trial, objective, signals)
            if state == TrialState.COMPLETE:
                summary.complete += 1
            elif state == TrialState.PRUNED:
                summary.pruned += 1
            else:
                summary.failed += 1
        summary.interrupted = signals.requested is not None
    return summary


def _run_one(study: optuna.Study, trial: optuna.Trial, objective: Objective, signals: _Signals) -> TrialState:
    storage = study._storage
    with Heartbeat(storage, trial._trial_id):
        try:
            signals.training = True
            try:
                value = objective(trial)
            finally:
                signals.training = False
        except optuna.TrialPruned as exc:
            log.info("trial %d pruned: %s", trial.number, exc)
            return _finish(study, trial, TrialState.PRUNED)
        except Interrupted as exc:
            log.warning("trial %d interrupted by %s; it will be retried", trial.number, exc)
            _fail(study, trial, f"interrupted by {exc}", count_attempt=False)
            return TrialState.FAIL
        except Exception as exc:  # noqa: BLE001  (a trial's failure is recorded, not fatal)
            log.error("trial %d failed: %s\n%s", trial.number, exc, traceback.format_exc())
            _fail(study, trial, f"{type(exc).__name__}: {exc}", count_attempt=True)
            return TrialState.FAIL
        return _finish(study, trial, TrialState.COMPLETE, value)


def _finish(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None = None) -> TrialState:
    try:
        retrying(lambda: study.tell(trial, value, state=state), what=f"record a {state.name} trial")
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            raise
        log.warning("trial %d was declared dead while it trained (no heartbeat reached the "
                    "database); its retry stands and this result is dropped", trial.number)
        return TrialState.FAIL
    return state


def _fail(study: optuna.Study, trial: optuna.Trial, message: str, *, count_attempt: bool) -> None:
    storage = study._storage

    def record() -> bool:
        try:
            storage.set_trial_user_attr(trial._trial_id, "error", message[:2000])
            return storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # another worker already failed it as stale, and queued its retry

    if retrying(record, what="record a failed trial"):
        frozen = retrying(lambda: storage.get_trial(trial._trial_id), what="read a failed trial")
        retrying(lambda: queue.requeue(study, frozen, count_attempt=count_attempt), what="queue a retry")
