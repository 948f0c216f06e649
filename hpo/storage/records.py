"""Every name hpo stores in the database, and every use of Optuna's private API, in one place.

A newcomer finds any stored key with one grep here; an Optuna upgrade that moves a private
name touches only this module (tests/test_stored.py fails when one moves).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import mimetypes
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import optuna
import sqlalchemy
import sqlalchemy.orm
from optuna.artifacts import ArtifactMeta
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

# --- study system attributes: hpo's record of a study ----------------------------------------
# Machine-read JSON, kept out of the user attributes so that the dashboard, which shows those,
# shows the readable summary below instead (until issue 30 these were user attributes, under the
# names in STUDY_RECORD_BEFORE; studies made then are still read from there: see study_record).
DEFINITION = "hpo:definition"      # the resolved study definition (hpo.study.definition.StudyDefinition.to_dict)
CONFIRMS = "hpo:confirms"          # a confirmation study: its search, the trials and values it confirms
DATA_IDENTITY = "hpo:data"         # what the study trains on (hpo.study.data.DataIdentity.to_dict)
BUILDER = "hpo:builder"            # the user's model builder it trains (hpo.study.builder.BuilderIdentity.to_dict)
QUEUEING = "hpo:queueing"          # the definition a create is queueing trials for, set before the first; a
                                   # create that died half-way is finished only with the same one
UID = "hpo:uid"                    # a random id given at creation: two studies of one name (another database,
                                   # or one deleted and made again) never share checkpoints
STUDY_RECORD_BEFORE = {DEFINITION: "definition", CONFIRMS: "confirms", DATA_IDENTITY: "data",
                       BUILDER: "builder", QUEUEING: "queueing", UID: "uid"}

# --- study user attributes: the same record, as a person reads it in the dashboard -------------
SHOWN_STUDY = "study"              # sampler, trials, metric and direction, in words
SHOWN_DATA = "data set"            # hpo.study.data.DataIdentity.description
SHOWN_MODEL = "model"              # the builder, or the report's architectures
SHOWN_CONFIRMS = "confirmation of"  # a confirmation study: which search and trials, in words (not
                                   # "confirms": a study made before kept its record under that name)

# --- trial system attributes (hpo's queue) -----------------------------------------------------
SLOT = "hpo:slot"                  # position of the trial in the queue: grid id, or budget index
ATTEMPT = "hpo:attempt"            # 0 for the first try, then 1, 2, ... for retries
RETRY_OF = "hpo:retry_of"          # number of the trial this one retries
WORKER = "hpo:worker"              # "host/pid-namespace:pid" of the worker that claimed the trial
LIVENESS = "hpo:liveness"          # the claiming worker's {"interval": s, "grace": s} (hpo.workers.liveness)
BEAT = "hpo:beat"                  # the claiming worker's heartbeat: a count that grows while it lives
INTERRUPTED = "hpo:interrupted"    # set on a FAIL trial stopped by a signal: its retry is free
FATAL = "hpo:fatal"                # set on a FAIL trial that no retry could mend: its point fails for good
REPEAT = "hpo:repeat"              # grid: which training of its point (0, 1, ...)
GROUP = "hpo:group"                # grid with shared prefixes: slot of the longest point of the group
PLANNED_SEED = "hpo:seed"          # grid: the training seed, fixed when queued (a group shares one)
EPOCHS = "hpo:epochs"              # grid: the point's epochs, so that workers claim the longest first
POINT = "hpo:point"                # grid: the point's index (its grid id; a confirmation's configuration)

# --- trial system attributes that Optuna itself reads ------------------------------------------
FIXED_PARAMS = "fixed_params"      # optuna.Trial suggests these values as they are (a retry's params)
GRID_ID = "grid_id"                # GridSampler: which grid point the trial runs
# (GridSampler also reads "search_space", the grid the id refers to; hpo no longer stores that copy
# of the whole grid on every trial, as it did until issue 18: the id suffices.)

ARTIFACT_PREFIX = "artifacts:"     # + artifact id: optuna.artifacts.ArtifactMeta as JSON (the dashboard reads it)

# --- trial user attributes ---------------------------------------------------------------------
ERROR = "error"                    # why a trial failed
SEED = "seed"                      # the seed the trial's sampler and training ran with
SINGLE_VALUED = "fixed"            # the study's single-valued parameters (not Optuna parameters)
PREFIX_RUN = "prefix_run"          # number of the trial whose training run completed this one
RESUMED_FROM = "resumed_from_epoch"  # a retry that went on from its slot's checkpoint: the epochs it found done
RESUMED_BATCHES = "resumed_from_batch"  # ... and the batches of the next epoch (a run stopped mid-epoch)
EPOCHS_ALL_ATTEMPTS = "epochs_trained_all_attempts"  # whole epochs every attempt of the slot trained
REPEAT_SHOWN = "repeat"            # the grid repeat (hpo:repeat), shown beside the parameters
DATA = "data"                      # where the worker's data came from (hpo.training.data.Dataset.source)
TRAIN_IMAGES = "train_images"      # training images the worker loaded (before a validation split)
SUBSET = "subset"                  # the worker's --subset, or None
WORKER_STARTUP = "worker_startup_seconds"  # the worker's imports, connection and data load
# The rest are the trial's results: hpo.training.train.TrainResult.metrics() and hpo.workers.device.describe().


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters: the study's single-valued ones, those a retry carries but has not
    suggested yet, and what the sampler drew."""
    params = dict(trial.user_attrs.get(SINGLE_VALUED, {}))
    params.update(trial.system_attrs.get(FIXED_PARAMS, {}))
    params.update(trial.params)
    return params


# --- A study's record ---------------------------------------------------------------------------

def study_record(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, Any]:
    """hpo's record of a study (the keys above, where stored): its system attributes, or for a study
    created before they moved there, the user attributes it was stored in then."""
    return _record(storage.get_study_user_attrs(study_id), storage.get_study_system_attrs(study_id))


def record_of(study: optuna.Study) -> dict[str, Any]:
    """:func:`study_record` of a loaded study."""
    return study_record(study._storage, study._study_id)


def set_record(study: optuna.Study, key: str, value: Any) -> None:
    """Store one entry of the study's record (a JSON value)."""
    study._storage.set_study_system_attr(study._study_id, key, value)


def records_by_name(storage: optuna.storages.BaseStorage) -> dict[str, dict[str, Any]]:
    """Every study's name and record, read in one pass (hpo's studies have a definition in it)."""
    return {s.study_name: _record(s.user_attrs, s.system_attrs) for s in storage.get_all_studies()}


def _record(user: Mapping[str, Any], system: Mapping[str, Any]) -> dict[str, Any]:
    record = {key: user[before] for key, before in STUDY_RECORD_BEFORE.items() if before in user}
    record.update({key: system[key] for key in STUDY_RECORD_BEFORE if key in system})
    return record


# --- Optuna's private API ----------------------------------------------------------------------
# Study and Trial keep their storage ids private; the queue needs them for locked, per-row
# updates that the public API (study.tell, study.enqueue_trial) does not offer.

def storage_of(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The study's storage: the RDBStorage (hpo opens no other kind) itself, past Optuna's cache.

    The cache (``optuna.storages._CachedStorage``) reads every unfinished trial again on each
    ``get_all_trials``, whatever states are asked for: a worker's look for RUNNING trials before
    each claim would read the whole queue of WAITING ones, seconds a call in a study of 10,000
    (BENCHMARKS.md, r). The storage itself filters the states in SQL.
    """
    return _backend(study._storage)


def engine_of(storage: optuna.storages.BaseStorage) -> Any:
    """The SQLAlchemy engine under an RDB storage (a study's storage wraps it in a cache)."""
    backend: Any = getattr(storage, "_backend", storage)
    return backend.engine


def scoped_session_of(storage: optuna.storages.BaseStorage) -> Any:
    """The thread-local session registry every transaction of an RDB storage goes through,
    Optuna's and hpo's (:func:`hpo.storage.lock.study_lock` points it at the lock's connection)."""
    return _backend(storage).scoped_session


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def grid_point(sampler: optuna.samplers.GridSampler, grid_id: int) -> dict[str, Any]:
    """The parameters GridSampler gives the trial with this grid id."""
    return dict(zip(sampler._param_names, sampler._all_grids[grid_id], strict=True))


def artifact_attr(artifact_id: str, filename: str) -> tuple[str, str]:
    """The system attribute that links a file in the artifact store to a trial, as Optuna's
    ``upload_artifact`` writes it (the dashboard reads it)."""
    mimetype, encoding = mimetypes.guess_type(filename)
    meta = ArtifactMeta(artifact_id=artifact_id, filename=filename,
                        mimetype=mimetype or "application/octet-stream", encoding=encoding)
    return ARTIFACT_PREFIX + artifact_id, json.dumps(dataclasses.asdict(meta))


def claimed_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The live trial for one this process has just claimed (hpo.study.queueing.claim).

    Optuna's cache writes a trial's parameters only for a trial it has read itself
    (``set_trial_param`` looks up its study there), and a claim picks its trial past the cache:
    the cache is told of it, as an unfinished trial, which it reads afresh on every look.
    """
    cache = study._storage
    if isinstance(cache, _CachedStorage):
        trial = cache._backend.get_trial(trial_id)
        with cache._lock:
            info = cache._studies.setdefault(study._study_id, _StudyInfo())
            cache._add_trials_to_cache(study._study_id, [trial])
            info.unfinished_trial_ids.add(trial_id)
    return optuna.Trial(study, trial_id)


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """The trial as stored now (a live Trial keeps no system attributes of its own)."""
    return trial.storage.get_trial(trial_id(trial))


# --- Writes that must be one transaction -------------------------------------------------------
# Optuna writes a trial's attributes, values and state one call (one transaction) each. hpo needs
# some of them together: a claim that records who holds the trial, a result that appears whole
# or not at all, and queueing thousands of trials without a transaction per trial.

def _backend(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage:
    return cast(optuna.storages.RDBStorage, getattr(storage, "_backend", storage))


def add_waiting_trials(storage: optuna.storages.BaseStorage, study: optuna.Study,
                       system_attrs: Sequence[Mapping[str, Any]]) -> None:
    """Add one WAITING trial per mapping of system attributes, in one transaction.

    Numbers follow the study's trials in order, as ``study.add_trial`` gives them; the study's
    row is locked (on PostgreSQL) so that no other trial is numbered meanwhile.
    """
    backend = _backend(storage)
    with _create_scoped_session(backend.scoped_session) as session:
        study_row = models.StudyModel.find_or_raise_by_id(study_id(study), session, for_update=True)
        first = models.TrialModel.count(session, study_row)
        trials = [models.TrialModel(study_id=study_id(study), number=first + i, state=TrialState.WAITING)
                  for i in range(len(system_attrs))]
        session.add_all(trials)
        session.flush()  # assigns the trial ids
        session.add_all(models.TrialSystemAttributeModel(trial_id=trial.trial_id, key=key, value_json=json.dumps(value))
                        for trial, attrs in zip(trials, system_attrs, strict=True) for key, value in attrs.items())


def claim_next(storage: optuna.storages.BaseStorage, study_id: int, order: Sequence[tuple[str, int]],
               system_attrs: Mapping[str, Any]) -> tuple[int, int] | None:
    """Move the study's first WAITING trial, in ``order``, to RUNNING with ``system_attrs`` (who
    holds it), in one transaction under its row lock; its id and number, or None if none waits.

    ``order`` is (system attribute, 1 or -1) pairs, compared in turn as numbers (ascending or
    descending; missing counts as 0), then the trial's number (:data:`hpo.study.plan.CLAIM_ORDER`).
    The database picks the trial (one query, however long the queue): on PostgreSQL
    ``FOR UPDATE SKIP LOCKED``, so concurrent claimers take the next trials instead of queueing
    behind one row; on SQLite the transaction is BEGIN IMMEDIATE (hpo.storage.open), which
    serialises claims anyway.
    """
    backend = _backend(storage)
    skip_locked = True
    while True:
        with _create_scoped_session(backend.scoped_session) as session:
            trial = _first_waiting(session, study_id, order, skip_locked).first()
            if trial is not None and trial.state == TrialState.WAITING:
                trial.state = TrialState.RUNNING
                trial.datetime_start = datetime.datetime.now()
                for key, value in system_attrs.items():
                    backend._set_trial_attr_without_commit(session, models.TrialSystemAttributeModel, trial.trial_id,
                                                           key, value)
                return trial.trial_id, trial.number
            # Nothing unlocked was waiting: every WAITING trial is being claimed this moment, or
            # the one found was taken meanwhile (PostgreSQL rechecks a row it waited for). Look
            # again, this time waiting for the rows other claimers hold, until none is WAITING.
            t = models.TrialModel
            if session.query(t.trial_id).filter(t.study_id == study_id, t.state == TrialState.WAITING).first() is None:
                return None
        skip_locked = False


def _first_waiting(session: Any, study_id: int, order: Sequence[tuple[str, int]], skip_locked: bool) -> Any:
    t = models.TrialModel
    query = session.query(t).filter(t.study_id == study_id, t.state == TrialState.WAITING)
    keys = []
    for key, sign in order:
        attr = sqlalchemy.orm.aliased(models.TrialSystemAttributeModel)
        query = query.outerjoin(attr, sqlalchemy.and_(attr.trial_id == t.trial_id, attr.key == key))
        value = sqlalchemy.func.coalesce(sqlalchemy.cast(attr.value_json, sqlalchemy.Float), 0)
        keys.append(value if sign > 0 else value.desc())
    return query.order_by(*keys, t.number).limit(1).with_for_update(of=t, skip_locked=skip_locked)


def waiting_with(storage: optuna.storages.BaseStorage, study_id: int, key: str, value: Any) -> list[int]:
    """Ids of the study's WAITING trials whose system attribute ``key`` is ``value``, by number."""
    backend = _backend(storage)
    t, attr = models.TrialModel, models.TrialSystemAttributeModel
    with _create_scoped_session(backend.scoped_session) as session:
        rows = (session.query(t.trial_id).join(attr, attr.trial_id == t.trial_id)
                .filter(t.study_id == study_id, t.state == TrialState.WAITING, attr.key == key,
                        attr.value_json == json.dumps(value)).order_by(t.number).all())
    return [row[0] for row in rows]


@dataclasses.dataclass(frozen=True)
class Attempt:
    """A trial of a queue slot as the queue weighs it (hpo.study.queueing.add_missing): read
    without the rest of the trial, so that looking at 100,000 of them takes a moment."""

    trial_id: int
    number: int
    state: TrialState
    interrupted: bool
    fatal: bool


def _slot_join(session: Any, columns: Callable[[Any, Any], list[Any]]) -> tuple[Any, Any]:
    """A query of the study's trials joined to their slot attribute, and that attribute."""
    t, slot = models.TrialModel, sqlalchemy.orm.aliased(models.TrialSystemAttributeModel)
    query = session.query(*columns(t, slot)).select_from(t).join(
        slot, sqlalchemy.and_(slot.trial_id == t.trial_id, slot.key == SLOT))
    return query, slot


def slots_held(storage: optuna.storages.BaseStorage, study_id: int, below: int) -> int:
    """How many of the slots 0 .. ``below`` - 1 hold a trial (of any state), counted in the database."""
    with _create_scoped_session(_backend(storage).scoped_session) as session:
        query, slot = _slot_join(session, lambda t, s: [sqlalchemy.func.count(sqlalchemy.distinct(s.value_json))])
        # CASE: the server may test a row's value before its key, and other attributes are no numbers.
        number = sqlalchemy.case((slot.key == SLOT, sqlalchemy.cast(slot.value_json, sqlalchemy.Integer)))
        t = models.TrialModel
        return int(query.filter(t.study_id == study_id, number >= 0, number < below).scalar() or 0)


def held_slots(storage: optuna.storages.BaseStorage, study_id: int) -> set[int]:
    """Every slot that holds a trial."""
    with _create_scoped_session(_backend(storage).scoped_session) as session:
        query, slot = _slot_join(session, lambda t, s: [s.value_json])
        rows = query.filter(models.TrialModel.study_id == study_id).distinct().all()
    return {int(json.loads(row[0])) for row in rows}


def attempts_of_slots_without(storage: optuna.storages.BaseStorage, study_id: int,
                              live: Sequence[TrialState]) -> dict[int, list[Attempt]]:
    """The trials of each slot none of whose trials is in a ``live`` state, oldest first.

    The database picks those slots (every other one holds a live trial, and needs nothing), so
    the answer is a handful of rows however many trials the study holds.
    """
    t = models.TrialModel
    with _create_scoped_session(_backend(storage).scoped_session) as session:
        alive = sqlalchemy.func.max(sqlalchemy.case((t.state.in_(live), 1), else_=0))
        dead, slot = _slot_join(session, lambda t, s: [s.value_json])
        dead = dead.filter(t.study_id == study_id).group_by(slot.value_json).having(alive == 0)
        flags = {name: sqlalchemy.orm.aliased(models.TrialSystemAttributeModel) for name in (INTERRUPTED, FATAL)}
        query, slot = _slot_join(session, lambda t, s: [t.trial_id, t.number, t.state, s.value_json,
                                                         *(a.value_json for a in flags.values())])
        for name, attr in flags.items():
            query = query.outerjoin(attr, sqlalchemy.and_(attr.trial_id == t.trial_id, attr.key == name))
        rows = query.filter(t.study_id == study_id, slot.value_json.in_(dead.subquery().select())) \
            .order_by(t.number).all()
    slots: dict[int, list[Attempt]] = {}
    for row in rows:
        trial_id, number, state, at, interrupted, fatal = tuple(row)
        slots.setdefault(int(json.loads(at)), []).append(Attempt(
            trial_id, number, state, bool(interrupted and json.loads(interrupted)), bool(fatal and json.loads(fatal))))
    return slots


def refresh_statistics(storage: optuna.storages.BaseStorage) -> None:
    """Have PostgreSQL count the trial tables again (ANALYZE), after thousands of trials were queued.

    A claim sorts the WAITING trials in the database (:func:`claim_next`); planned with the
    statistics of the tables as they were before (empty, for a study just created), that sort
    looks each trial's attributes up one by one, 5x slower than the hash join it takes once the
    server has counted them (110 ms against 20 ms a claim at 10,000 trials; the server's own
    autovacuum would count them, a minute or so later). A user who does not own the tables gets
    the server's warning, no error. SQLite plans without statistics.
    """
    backend = _backend(storage)
    if backend.engine.dialect.name == "postgresql":
        with _create_scoped_session(backend.scoped_session) as session:  # under the queue lock, its transaction
            session.execute(sqlalchemy.text(f"ANALYZE {models.TrialModel.__tablename__}, "
                                            f"{models.TrialSystemAttributeModel.__tablename__}"))


def claim_trial(storage: optuna.storages.BaseStorage, trial_id: int, system_attrs: Mapping[str, Any]) -> bool:
    """WAITING -> RUNNING with ``system_attrs`` (who holds it), in one transaction under the
    trial's row lock; False if the trial was no longer WAITING."""
    backend = _backend(storage)
    with _create_scoped_session(backend.scoped_session) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        if trial.state != TrialState.WAITING:
            return False
        trial.state = TrialState.RUNNING
        trial.datetime_start = datetime.datetime.now()
        for key, value in system_attrs.items():
            backend._set_trial_attr_without_commit(session, models.TrialSystemAttributeModel, trial_id, key, value)
    return True


def set_user_attrs(storage: optuna.storages.BaseStorage, trial_id: int, attrs: Mapping[str, Any]) -> bool:
    """Set a RUNNING trial's user attributes in one transaction; False if it had finished."""
    backend = _backend(storage)
    with _create_scoped_session(backend.scoped_session) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        if trial.state != TrialState.RUNNING:
            return False
        for key, value in attrs.items():
            backend._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)
    return True


def finish_trial(storage: optuna.storages.BaseStorage, trial_id: int, state: TrialState, *,
                 value: float | None = None, user_attrs: Mapping[str, Any] | None = None,
                 system_attrs: Mapping[str, Any] | None = None) -> bool:
    """RUNNING -> ``state`` with its value and attributes, all in one transaction under the
    trial's row lock: a reader sees the result whole, or the trial still RUNNING. False, and
    nothing written, if the trial had already finished (another process found it dead).

    A PRUNED trial's value is its last reported one, as ``study.tell`` gives it.
    """
    backend = _backend(storage)
    with _create_scoped_session(backend.scoped_session) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        if trial.state != TrialState.RUNNING:
            return False
        for model, attrs in ((models.TrialUserAttributeModel, user_attrs), (models.TrialSystemAttributeModel,
                                                                             system_attrs)):
            for key, attr in (attrs or {}).items():
                backend._set_trial_attr_without_commit(session, model, trial_id, key, attr)
        if state == TrialState.PRUNED and value is None:
            value = _last_reported(session, trial_id)
        if value is not None:
            backend._set_trial_value_without_commit(session, trial, 0, value)
        trial.state = state
        trial.datetime_complete = datetime.datetime.now()
    return True


def _last_reported(session: Any, trial_id: int) -> float | None:
    model = models.TrialIntermediateValueModel
    last = session.query(model).filter(model.trial_id == trial_id).order_by(model.step.desc()).first()
    if last is None:
        return None
    value = model.stored_repr_to_intermediate_value(last.intermediate_value, last.intermediate_value_type)
    return None if math.isnan(value) else float(value)
