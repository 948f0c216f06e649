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
from collections import defaultdict
from typing import Any
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.storage import records
from hpo.study.definition import StudyDefinition
from hpo.workers.liveness import DEFAULT_SETTINGS, Settings, Watch
from hpo.storage.lock import StillHeld, study_lock

log = logging.getLogger(__name__)


def _machine() -> str:
    """This host and PID namespace: two containers may share a host name, never both."""
    try:
        return f"{socket.gethostname()}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


HOST = _machine()
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
QUEUE_BATCH = 1000  # trials queued per transaction; the lock is checked between batches


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
        return records.grid_point(self, grid_id)


def trial_seed(definition: StudyDefinition, index: int) -> int:
    """A seed for the trial with this number (or, on a grid, this slot): the study's seed and the
    index. Distinct for every trial of a study, and the same when the study is run again."""
    return definition.seed * 100_003 + index


def grid_points(definition: StudyDefinition) -> list[dict[str, Any]]:
    """A grid's points by grid id, as GridSampler (shuffled by the study's seed) numbers them;
    the points a grid lists (a confirmation), in their order."""
    if definition.points:
        return definition.grid_points
    sampler = QueuedGridSampler(grid_search_space(definition), seed=definition.seed)
    return [sampler.point(g) for g in range(len(definition.grid_points))]


def prefix_groups(points: list[dict[str, Any]]) -> dict[int, int]:
    """Grid id -> grid id of the longest point that differs from it only in epochs.

    Such points form a group that one training run completes (see :mod:`hpo.workers.loop`).
    """

    def key(point: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, repr(v)) for k, v in point.items() if k != "epochs"))

    longest: dict[tuple[tuple[str, str], ...], int] = {}
    for g, point in enumerate(points):
        other = longest.get(key(point))
        if other is None or point["epochs"] > points[other]["epochs"]:
            longest[key(point)] = g
    return {g: longest[key(point)] for g, point in enumerate(points)}


def planned_epochs(trial: FrozenTrial) -> int:
    """The epochs a queued grid trial will train (0 where the sampler has yet to draw them)."""
    return int(trial.system_attrs.get(records.EPOCHS, 0))


def claim_order(trial: FrozenTrial) -> tuple[int, int, int]:
    """Which WAITING trial a worker takes first: a grid's repeats in turn (a study stopped early
    holds whole repeats), within one the longest points first, so that the last runs of a study
    are short and no worker waits long on another's; else the oldest."""
    return int(trial.system_attrs.get(records.REPEAT, 0)), -planned_epochs(trial), trial.number


def _first_try(definition: StudyDefinition, slot: int, points: list[dict[str, Any]],
               groups: dict[int, int]) -> dict[str, Any]:
    """A slot's first trial. On a grid, slot = repeat x points + grid id, and the training seed
    is fixed now: the slot's own, or, with shared prefixes, that of its group's longest point."""
    attrs: dict[str, Any] = {records.SLOT: slot, records.ATTEMPT: 0}
    if definition.sampler != "grid":
        return attrs
    n_points = len(points)
    grid_id, repeat = slot % n_points, slot // n_points
    if definition.points:
        # Listed points are no product of axes for GridSampler: the trial suggests them as fixed.
        fixed = definition.fixed
        attrs[records.FIXED_PARAMS] = {k: v for k, v in points[grid_id].items() if k not in fixed}
    else:
        # GridSampler needs only the id; the grid itself is the study's, stored once with its definition.
        attrs[records.GRID_ID] = grid_id
    attrs.update({records.POINT: grid_id, records.REPEAT: repeat, records.RUN_SEED: trial_seed(definition, slot),
                  records.EPOCHS: int(points[grid_id].get("epochs", 0))})
    if groups:
        group = repeat * n_points + groups[grid_id]
        attrs.update({records.GROUP: group, records.RUN_SEED: trial_seed(definition, group)})
    return attrs


def grid_search_space(definition: StudyDefinition) -> dict[str, list[Any]]:
    # GridSampler keys its grid ids to the sorted parameter names; so must the stored copy.
    return {name: values for name, values in sorted(definition.grid.items())}


def by_slot(trials: Sequence[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
    """The trials of each queue slot, oldest first."""
    slots: dict[int, list[FrozenTrial]] = defaultdict(list)
    for trial in sorted(trials, key=lambda t: t.number):
        slot = trial.system_attrs.get(records.SLOT)
        if slot is not None:
            slots[int(slot)].append(trial)
    return slots


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
    half-way). A slot whose trials all failed gets a retry, until its ``max_retries`` are used.
    A slot holding a WAITING, RUNNING, COMPLETE or PRUNED trial needs nothing.
    """
    slots = by_slot(study.get_trials(deepcopy=False))
    points = grid_points(definition) if definition.sampler == "grid" else []
    groups = prefix_groups(points) if definition.shares_prefixes else {}
    missing = []
    for slot in range(definition.n_trials):
        attempts = slots.get(slot, [])
        if any(t.state in LIVE for t in attempts):
            continue
        if not attempts:
            missing.append(_first_try(definition, slot, points, groups))
            continue
        attempt = counted_attempts(attempts)
        if attempt <= definition.max_retries:  # else failed for good; hpo status and export show it
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


def claim(study: optuna.Study, sampler_for: Callable[[int], optuna.samplers.BaseSampler],
          settings: Settings = DEFAULT_SETTINGS) -> optuna.Trial | None:
    """Move a WAITING trial (the first in :func:`claim_order`) to RUNNING for this process, or
    return None if none is left.

    The claim is one transaction under the trial's row lock (SELECT ... FOR UPDATE on
    PostgreSQL; on SQLite every transaction is BEGIN IMMEDIATE, see hpo.storage.open), so a trial is
    claimed once, and it records who holds the trial and the heartbeat ``settings`` it is to be
    judged by. The study's sampler is then made afresh by ``sampler_for(trial number)``: each
    trial samples with its own seed, so parallel workers never repeat each other's draws.
    """
    storage = records.storage_of(study)
    waiting = storage.get_all_trials(records.study_id(study), deepcopy=False, states=(TrialState.WAITING,))
    for frozen in sorted(waiting, key=claim_order):
        if _take(storage, frozen, settings):
            study.sampler = sampler_for(frozen.number)
            return optuna.Trial(study, records.trial_id(frozen))
    return None


def _take(storage: optuna.storages.RDBStorage, frozen: FrozenTrial, settings: Settings) -> bool:
    """WAITING -> RUNNING for this process; False if another was first."""
    return records.claim_trial(storage, records.trial_id(frozen),
                              {records.WORKER: f"{HOST}:{os.getpid()}", **settings.claim_attrs()})


def claim_group(study: optuna.Study, trial: optuna.Trial, settings: Settings = DEFAULT_SETTINGS) -> list[optuna.Trial]:
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
            if frozen.system_attrs.get(records.GROUP) == group and _take(storage, frozen, settings)]


def fail(study: optuna.Study, trial_id: int, message: str, *, interrupted: bool = False) -> bool:
    """Mark a RUNNING trial FAIL with ``message``; False if it had already finished.

    One transaction under the trial's row lock, so of several processes failing the same trial
    (its worker, and others that found it dead) exactly one succeeds, and a result its worker
    was writing at that moment is either complete or not there at all.
    """
    system_attrs = {records.INTERRUPTED: True} if interrupted else {}
    return records.finish_trial(records.storage_of(study), trial_id, TrialState.FAIL,
                               user_attrs={records.ERROR: message[:2000]}, system_attrs=system_attrs)


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
        if host == HOST and pid.isdigit() and not _alive(int(pid)):
            reason = f"worker process {pid} on {host} died"
        elif watch is not None and watch.silent(trial):
            reason = (f"worker {host}:{pid} stopped sending heartbeats "
                      f"(none for {watch.silent_for(trial):.0f} s, its grace period {Settings.of(trial).grace} s)")
        else:
            continue
        if fail(study, records.trial_id(trial), reason):
            log.warning("trial %d: %s; recovering it", trial.number, reason)
            recovered += 1
    if watch is not None:
        watch.forget(running)
    if recovered:
        sync(study, definition)
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
