"""The trial queue: every trial a study will run exists up front, as a WAITING trial.

Optuna's GridSampler, left to itself, picks a random unvisited point for each new trial. With
several workers, idle ones re-run points that are still running, and a FAIL trial counts as
visited, so its point is silently skipped. Here GridSampler stays the sampler, but the points
are handed out by a queue instead:

- ``hpo create`` adds one WAITING trial per grid point (or per budgeted trial), tagged with its
  ``grid_id``, which GridSampler then honours.
- A worker claims a trial by moving it WAITING -> RUNNING in one locked update, so no two live
  workers ever hold the same point.
- A trial that fails, or whose worker dies, is FAIL; a fresh WAITING copy of it is queued until
  the study's ``max_retries`` are used up. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import StudyDefinition

log = logging.getLogger(__name__)


def _machine() -> str:
    """This host and PID namespace: two containers may share a host name, never both."""
    try:
        return f"{socket.gethostname()}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


HOST = _machine()
SLOT = "hpo:slot"          # position of the trial in the queue: grid id, or budget index
ATTEMPT = "hpo:attempt"    # 0 for the first try, then 1, 2, ... for retries
RETRY_OF = "hpo:retry_of"  # number of the trial this one retries
WORKER = "hpo:worker"      # "host:pid" of the worker that claimed the trial


class QueuedGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, with the queue rather than the sampler deciding when a study ends.

    Every trial arrives with its ``grid_id`` already set, so ``before_trial`` and
    ``sample_independent`` work as in GridSampler. Its ``after_trial`` would call
    ``study.stop()``, which only exists inside ``study.optimize``; the queue makes it moot.
    """

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        return None

    def point(self, grid_id: int) -> dict[str, Any]:
        """The parameters GridSampler gives the trial with this grid id."""
        return dict(zip(self._param_names, self._all_grids[grid_id]))


def fill(study: optuna.Study, definition: StudyDefinition) -> int:
    """Queue the trials of a new study; returns how many were added.

    Slots already present (a create that was interrupted half-way) are not added twice.
    """
    present = {t.system_attrs.get(SLOT) for t in study.get_trials(deepcopy=False)}
    search_space = grid_search_space(definition) if definition.sampler == "grid" else {}
    added = 0
    for slot in range(definition.n_trials):
        if slot in present:
            continue
        system_attrs: dict[str, Any] = {SLOT: slot, ATTEMPT: 0}
        if definition.sampler == "grid":
            system_attrs.update(grid_id=slot, search_space=search_space)
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=system_attrs))
        added += 1
    return added


def grid_search_space(definition: StudyDefinition) -> dict[str, list[Any]]:
    # GridSampler keys its grid ids to the sorted parameter names; so must the stored copy.
    return {name: values for name, values in sorted(definition.grid.items())}


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Move one WAITING trial to RUNNING for this process, or return None if none is left.

    ``set_trial_state_values`` locks the row (SELECT ... FOR UPDATE on PostgreSQL; on SQLite
    every transaction is BEGIN IMMEDIATE, see hpo.storage), so a trial is claimed once.
    """
    storage = study._storage
    for frozen in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.set_trial_system_attr(frozen._trial_id, WORKER, f"{HOST}:{os.getpid()}")
        storage.record_heartbeat(frozen._trial_id)
        return optuna.Trial(study, frozen._trial_id)
    return None


def requeue(study: optuna.Study, trial: FrozenTrial, *, count_attempt: bool = True) -> bool:
    """Queue a fresh try of a failed trial; False once its retries are used up."""
    definition_max = study.user_attrs.get("definition", {}).get("max_retries", 2)
    attempt = trial.system_attrs.get(ATTEMPT, 0) + (1 if count_attempt else 0)
    if attempt > definition_max:
        log.warning("trial %d failed for good: %d retries used", trial.number, definition_max)
        return False
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k != WORKER}
    system_attrs.update({ATTEMPT: attempt, RETRY_OF: trial.number})
    if trial.params:
        system_attrs["fixed_params"] = dict(trial.params)
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=system_attrs))
    log.info("trial %d queued again (attempt %d of %d)", trial.number, attempt + 1, definition_max + 1)
    return True


def recover(study: optuna.Study) -> int:
    """Fail the RUNNING trials whose worker is gone, and queue their retries.

    A worker is gone when its heartbeat is older than the grace period, or at once when it ran
    on this host and its process no longer exists. Returns how many trials were recovered.
    """
    storage = study._storage
    # Trials whose heartbeat is older than the grace period (needs a storage with heartbeats).
    stale = set(storage._get_stale_trial_ids(study._study_id)) if storage.get_heartbeat_interval() else set()
    recovered = 0
    for trial in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(trial.system_attrs.get(WORKER, "")).rpartition(":")
        if trial._trial_id in stale:
            reason = f"worker {host}:{pid} stopped sending heartbeats"
        elif host == HOST and pid.isdigit() and not _alive(int(pid)):
            reason = f"worker process {pid} on {host} died"
        else:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "error", reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished, or another process recovered it first
        log.warning("trial %d: %s; recovering it", trial.number, reason)
        requeue(study, storage.get_trial(trial._trial_id))
        recovered += 1
    return recovered


def _alive(pid: int) -> bool:
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

