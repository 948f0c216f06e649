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
QUEUE_BATCH = 1000  # trials queued per transaction; the lock is checked between batches


def counted_attempts(attempts: Sequence[FrozenTrial]) -> int:
    """Failures that use up a retry: an interruption (SIGTERM, Ctrl-C) is not the trial's fault."""
    return sum(1 for t in attempts if t.state == TrialState.FAIL and not t.system_attrs.get(records.INTERRUPTED))


def sync(study: optuna.Study, definition: StudyDefinition) -> int:
    """Queue what the study's slots lack, under the study's lock; returns how many were added.

    Deciding from the stored states alone, under the lock, makes this idempotent: two
    processes that recover the same dead trial at once queue one retry between them.
    """
    with study_lock(records.storage_of(study), study.study_name) as still_held:
        return add_missing(study, definition, still_held)


def add_missing(study: optuna.Study, definition: StudyDefinition, still_held: StillHeld) -> int:
    """:func:`sync`'s work, for a caller that already holds the study's lock.

    A slot with no trial yet gets its first (a study being created, or a create that died
    half-way). A slot whose trials all failed gets a retry, until its ``max_retries`` are used,
    unless its last failure was fatal (a configuration no retry can mend).
    A slot holding a WAITING, RUNNING, COMPLETE or PRUNED trial needs nothing.
    """
    slots = plan.by_slot(study.get_trials(deepcopy=False))
    planned = plan.Slots(definition)
    missing = []
    for slot in range(definition.n_trials):
        attempts = slots.get(slot, [])
        if any(t.state in LIVE for t in attempts):
            continue
        if not attempts:
            missing.append(planned.first_try(slot))
            continue
        attempt = counted_attempts(attempts)
        # Else failed for good (its retries used up, or a failure no retry mends, hpo:fatal);
        # hpo status and export show it.
        if attempt <= definition.max_retries and not attempts[-1].system_attrs.get(records.FATAL):
            missing.append(_retry_attrs(attempts[-1], attempt))
    storage = records.storage_of(study)
    for start in range(0, len(missing), QUEUE_BATCH):
        still_held()
        records.add_waiting_trials(storage, study, missing[start:start + QUEUE_BATCH])
    return len(missing)


def _retry_attrs(last: FrozenTrial, attempt: int) -> dict[str, Any]:
    """A retry runs what the failed try ran: the same slot and grid point, the same parameters."""
    system_attrs = {k: v for k, v in last.system_attrs.items()
                    if not k.startswith(records.ARTIFACT_PREFIX) and k not in (records.WORKER, records.INTERRUPTED)}
    system_attrs.update({records.ATTEMPT: attempt, records.RETRY_OF: last.number})
    if last.params:
        system_attrs[records.FIXED_PARAMS] = dict(last.params)
    log.info("trial %d queued again (attempt %d)", last.number, attempt + 1)
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
    """Move a WAITING trial (the first in :func:`hpo.study.plan.claim_order`) to RUNNING for this
    process, or return None if none is left.

    The claim is one transaction under the trial's row lock (SELECT ... FOR UPDATE on
    PostgreSQL; on SQLite every transaction is BEGIN IMMEDIATE, see hpo.storage.open), so a
    trial is claimed once, and it records who holds the trial with the system attributes
    ``attrs`` (a worker's heartbeat settings, :mod:`hpo.workers.liveness`). The study's sampler is
    then made afresh by ``sampler_for(trial number)``: each trial samples with its own seed, so
    parallel workers never repeat each other's draws.
    """
    storage = records.storage_of(study)
    waiting = storage.get_all_trials(records.study_id(study), deepcopy=False, states=(TrialState.WAITING,))
    for frozen in sorted(waiting, key=plan.claim_order):
        if _take(storage, frozen, attrs):
            study.sampler = sampler_for(frozen.number)
            return optuna.Trial(study, records.trial_id(frozen))
    return None


def _take(storage: optuna.storages.RDBStorage, frozen: FrozenTrial, attrs: Mapping[str, Any] | None) -> bool:
    """WAITING -> RUNNING for this process; False if another was first."""
    return records.claim_trial(storage, records.trial_id(frozen), {records.WORKER: holder(), **(attrs or {})})


def claim_group(study: optuna.Study, trial: optuna.Trial, attrs: Mapping[str, Any] | None = None) -> list[optuna.Trial]:
    """Claim, for the worker that holds ``trial``, the WAITING trials of its prefix group.

    Each is claimed as :func:`claim` claims one, so a trial another worker took first is left
    to it: groups may split under contention, and every trial still runs once.
    """
    storage = records.storage_of(study)
    group = records.frozen(trial).system_attrs.get(records.GROUP)
    if group is None:
        return []
    waiting = storage.get_all_trials(records.study_id(study), deepcopy=False, states=(TrialState.WAITING,))
    return [optuna.Trial(study, records.trial_id(frozen)) for frozen in waiting
            if frozen.system_attrs.get(records.GROUP) == group and _take(storage, frozen, attrs)]


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
