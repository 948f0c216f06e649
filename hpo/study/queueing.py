"""The trial queue: every trial a study will run exists up front, as a WAITING trial.

Optuna's GridSampler, left to itself, picks a random unvisited point for each new trial. With
several workers, idle ones re-run points that are still running, and a FAIL trial counts as
visited, so its point is silently skipped. Here GridSampler stays the sampler, but the points
are handed out by a queue instead:

- Every slot of a study (a grid point, or an index of the trial budget) gets one WAITING trial,
  tagged with its slot (and its ``grid_id``, which GridSampler then honours).
- A worker claims a trial by moving it WAITING -> RUNNING in one locked update, so no two live
  workers ever hold the same point.
- A trial that fails, or whose worker dies, is FAIL; a fresh WAITING copy of it is queued until
  the study's ``max_retries`` are used up. Nothing is dropped silently.

What is queued is decided from the trials' states alone, under the study's lock
(:mod:`hpo.storage.lock`): :func:`sync` adds what a slot lacks, so any number of processes may create,
launch or recover the same study at once and each slot still holds one live trial.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.storage import records
from hpo.study.definition import StudyDefinition
from hpo.study import plan
from hpo.storage.lock import StillHeld, study_lock

log = logging.getLogger(__name__)


LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
QUEUE_BATCH = 1000  # trials per write: an SQLite transaction, a savepoint of the lock's transaction on PostgreSQL


def counted_attempts(attempts: Sequence[records.Attempt]) -> int:
    """Failures that use up a retry: an interruption (SIGTERM, Ctrl-C) is not the trial's fault."""
    return sum(1 for t in attempts if t.state == TrialState.FAIL and not t.interrupted)


def sync(study: optuna.Study, definition: StudyDefinition) -> int:
    """Queue what the study's slots lack, under the study's lock; returns how many were added.

    Deciding from the stored states alone, under the lock, makes this idempotent: two
    processes that recover the same dead trial at once queue one retry between them. A first
    look without the lock finds, nearly always, nothing to queue, so idle workers polling a
    study's end do not queue up for its lock (and, on PostgreSQL, for connections).
    """
    if not missing_trials(study, definition):
        return 0  # a slot that lacks a trial lacks it until someone queues one: the next look sees it
    with study_lock(records.storage_of(study), study.study_name) as still_held:
        return add_missing(study, definition, still_held)


def add_missing(study: optuna.Study, definition: StudyDefinition, still_held: StillHeld) -> int:
    """:func:`sync`'s work, for a caller that already holds the study's lock."""
    missing = missing_trials(study, definition)
    storage = records.storage_of(study)
    for start in range(0, len(missing), QUEUE_BATCH):
        still_held()
        records.add_waiting_trials(storage, study, missing[start:start + QUEUE_BATCH])
    if len(missing) >= QUEUE_BATCH:
        records.refresh_statistics(storage)  # else the next claims are planned for the tables as they were
    for attrs in missing:
        if records.RETRY_OF in attrs:
            log.info("trial %d queued again (attempt %d)", attrs[records.RETRY_OF], attrs[records.ATTEMPT] + 1)
    return len(missing)


def missing_trials(study: optuna.Study, definition: StudyDefinition) -> list[dict[str, Any]]:
    """The system attributes of the WAITING trials the study's slots lack, read from its trials.

    A slot with no trial yet gets its first (a study being created, or a create that died
    half-way). A slot whose trials all failed gets a retry, until its ``max_retries`` are used,
    unless its last failure was fatal (a configuration no retry can mend).
    A slot holding a WAITING, RUNNING, COMPLETE or PRUNED trial needs nothing.
    """
    # Asked of the database, not read from every trial (a study may hold 100,000): which slots
    # hold no trial, and the attempts of those whose trials all failed; the whole trial only of
    # a slot that gets a retry, which carries what its last try ran.
    storage, study_id, n = records.storage_of(study), records.study_id(study), definition.n_trials
    held = None if records.slots_held(storage, study_id, n) == n else records.held_slots(storage, study_id)
    failed = records.attempts_of_slots_without(storage, study_id, LIVE)
    planned = plan.Slots(definition)
    missing = []
    for slot in range(n):
        attempts = failed.get(slot, [])
        if not attempts:
            if held is not None and slot not in held:
                missing.append(planned.first_try(slot))
            continue  # else it holds a live trial: nothing to add
        attempt = counted_attempts(attempts)
        # Else failed for good (its retries used up, or a failure no retry mends, hpo:fatal);
        # hpo status and export show it.
        if attempt <= definition.max_retries and not attempts[-1].fatal:
            missing.append(_retry_attrs(storage.get_trial(attempts[-1].trial_id), attempt))
    return missing


def _retry_attrs(last: FrozenTrial, attempt: int) -> dict[str, Any]:
    """A retry runs what the failed try ran: the same slot and grid point, the same parameters."""
    system_attrs = {k: v for k, v in last.system_attrs.items()
                    if not k.startswith(records.ARTIFACT_PREFIX) and k not in (records.WORKER, records.INTERRUPTED)}
    system_attrs.update({records.ATTEMPT: attempt, records.RETRY_OF: last.number})
    if last.params:
        system_attrs[records.FIXED_PARAMS] = dict(last.params)
    return system_attrs


def holder() -> str:
    """This process as a claim records it: "host/pid-namespace:pid" (two containers may share a
    host name, never a PID namespace)."""
    return f"{HOST}:{os.getpid()}"


def _machine() -> str:
    try:
        return f"{socket.gethostname()}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


HOST = _machine()


def claim(study: optuna.Study, sampler_for: Callable[[int], optuna.samplers.BaseSampler],
          attrs: Mapping[str, Any] | None = None) -> optuna.Trial | None:
    """Move a WAITING trial (the first in :data:`hpo.study.plan.CLAIM_ORDER`) to RUNNING for this
    process, or return None if none is left.

    The claim is one transaction under the trial's row lock (SELECT ... FOR UPDATE on
    PostgreSQL; on SQLite every transaction is BEGIN IMMEDIATE, see hpo.storage.open), so a
    trial is claimed once, and it records who holds the trial with the system attributes
    ``attrs`` (a worker's heartbeat settings, :mod:`hpo.workers.liveness`). The study's sampler is
    then made afresh by ``sampler_for(trial number)``: each trial samples with its own seed, so
    parallel workers never repeat each other's draws.
    """
    claimed = records.claim_next(records.storage_of(study), records.study_id(study), plan.CLAIM_ORDER,
                                 _holder_attrs(attrs))
    if claimed is None:
        return None
    trial_id, number = claimed
    study.sampler = sampler_for(number)
    return records.claimed_trial(study, trial_id)


def _take(storage: optuna.storages.RDBStorage, trial_id: int, attrs: Mapping[str, Any] | None) -> bool:
    """WAITING -> RUNNING for this process; False if another was first."""
    return records.claim_trial(storage, trial_id, _holder_attrs(attrs))


def _holder_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a claim records on its trial: who holds it, and the claimer's own ``attrs``."""
    return {records.WORKER: holder(), **(attrs or {})}


def claim_group(study: optuna.Study, trial: optuna.Trial, attrs: Mapping[str, Any] | None = None) -> list[optuna.Trial]:
    """Claim, for the worker that holds ``trial``, the WAITING trials of its prefix group.

    Each is claimed as :func:`claim` claims one, so a trial another worker took first is left
    to it: groups may split under contention, and every trial still runs once.
    """
    storage = records.storage_of(study)
    group = records.frozen(trial).system_attrs.get(records.GROUP)
    if group is None:
        return []
    waiting = records.waiting_with(storage, records.study_id(study), records.GROUP, group)
    return [records.claimed_trial(study, trial_id) for trial_id in waiting if _take(storage, trial_id, attrs)]


def fail(study: optuna.Study, trial_id: int, message: str, *, interrupted: bool = False, fatal: bool = False) -> bool:
    """Mark a RUNNING trial FAIL with ``message``; False if it had already finished. An
    ``interrupted`` trial's retry is free; a ``fatal`` one is not retried at all.

    One transaction under the trial's row lock, so of several processes failing the same trial
    (its worker, and others that found it dead) exactly one succeeds, and a result its worker
    was writing at that moment is either complete or not there at all.
    """
    system_attrs = {**({records.INTERRUPTED: True} if interrupted else {}), **({records.FATAL: True} if fatal else {})}
    return records.finish_trial(records.storage_of(study), trial_id, TrialState.FAIL,
                                user_attrs={records.ERROR: message[:2000]}, system_attrs=system_attrs)
