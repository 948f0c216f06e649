"""Whether a trial's worker is alive, judged without trusting any clock but the observer's own.

A worker beats for each trial it holds: it raises a count stored on the trial (``hpo:beat``)
every ``interval`` seconds. When it claims a trial it records its own settings with the claim
(``hpo:liveness``: interval and grace period), so every observer judges the trial by the
settings of the worker that holds it, never by its own.

An observer (a worker looking for dead trials, see :func:`hpo.study.queueing.recover`)
declares a trial dead at once when its worker ran on this host and its process is gone, else
only when it has seen the same count for longer than the trial's grace period, measured on the
observer's own monotonic clock. No two clocks are ever compared: a worker whose clock is ahead,
behind, stepped by NTP or frozen beats like any other, and a process that looks once (``hpo
status``) cannot judge at all, so it never recovers anything.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import ConfigError
from hpo.storage import records
from hpo.study import queueing
from hpo.study.definition import StudyDefinition

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5
DEFAULT_GRACE_S = 30


@dataclass(frozen=True)
class Settings:
    """How often a worker beats, and how long its trials may go without a beat."""

    interval: int = DEFAULT_INTERVAL_S
    grace: int = DEFAULT_GRACE_S

    @classmethod
    def from_environment(cls) -> Settings:
        """``HPO_HEARTBEAT_INTERVAL`` and ``HPO_GRACE_PERIOD``, checked: the grace period must be
        longer than the interval."""
        interval = _seconds("HPO_HEARTBEAT_INTERVAL", DEFAULT_INTERVAL_S)
        grace = _seconds("HPO_GRACE_PERIOD", DEFAULT_GRACE_S)
        if grace <= interval:
            raise ConfigError(f"HPO_GRACE_PERIOD={grace} must be longer than HPO_HEARTBEAT_INTERVAL={interval}")
        return cls(interval, grace)

    @classmethod
    def of(cls, trial: FrozenTrial) -> Settings:
        """The settings the trial's worker claimed it with (the defaults for a trial claimed by an
        older hpo, which recorded none)."""
        recorded = trial.system_attrs.get(records.LIVENESS)
        if not isinstance(recorded, Mapping):
            return cls()
        return cls(int(recorded.get("interval", DEFAULT_INTERVAL_S)), int(recorded.get("grace", DEFAULT_GRACE_S)))

    def claim_attrs(self) -> dict[str, Any]:
        """What a worker records on a trial it claims (beside who it is, hpo.study.queueing.holder):
        its settings and a first beat."""
        return {records.LIVENESS: {"interval": self.interval, "grace": self.grace}, records.BEAT: 0}


def _seconds(variable: str, default: int) -> int:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{variable}={text!r} must be a whole number of seconds, at least 1")
    return value


class Heartbeat:
    """Beats for a run's trials every interval, in a thread, surviving database hiccups.

    A trial whose beat the database refuses has been finished by another process (found dead
    while this worker was frozen or cut off): it gets no more beats, and the run learns of it
    when it next writes to the trial.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, trials: Sequence[optuna.Trial],
                 settings: Settings) -> None:
        self._storage, self._settings = storage, settings
        self._trials = {records.trial_id(t): t.number for t in trials}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        beat = 0
        while not self._stop.wait(self._settings.interval):
            beat += 1
            for trial_id, number in list(self._trials.items()):
                try:
                    self._storage.set_trial_system_attr(trial_id, records.BEAT, beat)
                except optuna.exceptions.UpdateFinishedTrialError:
                    del self._trials[trial_id]
                except Exception as exc:  # noqa: BLE001  (keep beating; the database may come back)
                    log.warning("heartbeat for trial %d failed: %s", number, str(exc).splitlines()[0])


class Watch:
    """An observer's memory of the beats it has seen, on its own monotonic clock.

    Held by a worker for its whole life and asked on every look for the trials that have been
    silent too long. A trial it sees for the first time is never silent: it is only timed from then.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (beat, when first seen at that beat)

    def silent_for(self, trial: FrozenTrial) -> float:
        """Seconds this observer has seen the trial's beat unchanged (0 when it changed, or is new)."""
        now, beat = self._clock(), trial.system_attrs.get(records.BEAT)
        key = records.trial_id(trial)
        previous = self._seen.get(key)
        if previous is None or previous[0] != beat:
            self._seen[key] = (beat, now)
            return 0.0
        return now - previous[1]

    def silent(self, trial: FrozenTrial) -> bool:
        """Whether the trial's worker has not beaten for the grace period it claimed the trial with."""
        return self.silent_for(trial) > Settings.of(trial).grace

    def forget(self, keep: Sequence[FrozenTrial]) -> None:
        """Drop what it remembers of trials that are no longer running."""
        running = {records.trial_id(t) for t in keep}
        for key in [k for k in self._seen if k not in running]:
            del self._seen[key]


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this host and PID namespace still runs (a zombie does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def recover(study: optuna.Study, definition: StudyDefinition, watch: Watch | None = None) -> int:
    """Fail the RUNNING trials whose worker is gone, and queue their retries.

    A worker is gone at once when it ran on this host and its process no longer exists, and,
    with a ``watch`` (the observer's memory of the beats it has seen), when its beat has stood
    still for the grace period it claimed the trial with. Returns how many trials were recovered.
    """
    storage = records.storage_of(study)
    running = storage.get_all_trials(records.study_id(study), deepcopy=False, states=(TrialState.RUNNING,))
    recovered = 0
    for trial in running:
        host, _, pid = str(trial.system_attrs.get(records.WORKER, "")).rpartition(":")
        if host == queueing.HOST and pid.isdigit() and not alive(int(pid)):
            reason = f"worker process {pid} on {host} died"
        elif watch is not None and watch.silent(trial):
            reason = (f"worker {host}:{pid} stopped sending heartbeats "
                      f"(none for {watch.silent_for(trial):.0f} s, its grace period {Settings.of(trial).grace} s)")
        else:
            continue
        if queueing.fail(study, records.trial_id(trial), reason):
            log.warning("trial %d: %s; recovering it", trial.number, reason)
            recovered += 1
    if watch is not None:
        watch.forget(running)
    if recovered:
        queueing.sync(study, definition)
    return recovered
