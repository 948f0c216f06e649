"""Every name hpo stores in the database, and every use of Optuna's private API, in one place.

A newcomer finds any stored key with one grep here; an Optuna upgrade that moves a private
name touches only this module (tests/test_stored.py fails when one moves).
"""

from __future__ import annotations

import dataclasses
import json
import mimetypes
from typing import Any, cast

import optuna
from optuna.artifacts import ArtifactMeta
from optuna.trial import FrozenTrial

# --- study user attributes ---------------------------------------------------------------------
DEFINITION = "definition"          # the resolved study definition (hpo.config.StudyDefinition.to_dict)
CONFIRMS = "confirms"              # a confirmation study: its search, the trials and values it confirms

# --- trial system attributes (hpo's queue) -----------------------------------------------------
SLOT = "hpo:slot"                  # position of the trial in the queue: grid id, or budget index
ATTEMPT = "hpo:attempt"            # 0 for the first try, then 1, 2, ... for retries
RETRY_OF = "hpo:retry_of"          # number of the trial this one retries
WORKER = "hpo:worker"              # "host/pid-namespace:pid" of the worker that claimed the trial
INTERRUPTED = "hpo:interrupted"    # set on a FAIL trial stopped by a signal: its retry is free
REPEAT = "hpo:repeat"              # grid: which training of its point (0, 1, ...)
GROUP = "hpo:group"                # grid with shared prefixes: slot of the longest point of the group
RUN_SEED = "hpo:seed"              # grid: the training seed, fixed when queued (a group shares one)
EPOCHS = "hpo:epochs"              # grid: the point's epochs, so that workers claim the longest first
POINT = "hpo:point"                # grid: the point's index (its grid id; a confirmation's configuration)

# --- trial system attributes that Optuna itself reads ------------------------------------------
FIXED_PARAMS = "fixed_params"      # optuna.Trial suggests these values as they are (a retry's params)
GRID_ID = "grid_id"                # GridSampler: which grid point the trial runs
GRID_SEARCH_SPACE = "search_space"  # GridSampler: the grid the id refers to

ARTIFACT_PREFIX = "artifacts:"     # + artifact id: optuna.artifacts.ArtifactMeta as JSON (the dashboard reads it)

# --- trial user attributes ---------------------------------------------------------------------
ERROR = "error"                    # why a trial failed
SEED = "seed"                      # the seed the trial's sampler and training ran with
FIXED = "fixed"                    # the study's single-valued parameters (not Optuna parameters)
PREFIX_RUN = "prefix_run"          # number of the trial whose training run completed this one
REPEAT_ATTR = "repeat"             # the grid repeat, shown beside the parameters
DATA = "data"                      # where the worker's data came from (hpo.data.Dataset.source)
TRAIN_IMAGES = "train_images"      # training images the worker loaded (before a validation split)
SUBSET = "subset"                  # the worker's --subset, or None
WORKER_STARTUP = "worker_startup_seconds"  # the worker's imports, connection and data load
# The rest are the trial's results: hpo.train.TrainResult.metrics() and hpo.device.describe().


# --- Optuna's private API ----------------------------------------------------------------------
# Study and Trial keep their storage ids private; the queue needs them for locked, per-row
# updates that the public API (study.tell, study.enqueue_trial) does not offer.

def storage_of(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The study's storage: an RDBStorage (hpo opens no other kind), under Optuna's cache."""
    return cast(optuna.storages.RDBStorage, study._storage)


def engine_of(storage: optuna.storages.BaseStorage) -> Any:
    """The SQLAlchemy engine under an RDB storage (a study's storage wraps it in a cache)."""
    backend: Any = getattr(storage, "_backend", storage)
    return backend.engine


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def stale_trial_ids(storage: optuna.storages.RDBStorage, study: optuna.Study) -> list[int]:
    """RUNNING trials whose heartbeat is older than the storage's grace period."""
    return list(storage._get_stale_trial_ids(study_id(study)))


def grid_point(sampler: optuna.samplers.GridSampler, grid_id: int) -> dict[str, Any]:
    """The parameters GridSampler gives the trial with this grid id."""
    return dict(zip(sampler._param_names, sampler._all_grids[grid_id], strict=True))


def register_artifact(trial: optuna.Trial, artifact_id: str, filename: str) -> None:
    """Link a file already written to the artifact store to ``trial``, as ``upload_artifact`` does.

    Raises ``UpdateFinishedTrialError`` if the trial has finished meanwhile.
    """
    mimetype, encoding = mimetypes.guess_type(filename)
    meta = ArtifactMeta(artifact_id=artifact_id, filename=filename,
                        mimetype=mimetype or "application/octet-stream", encoding=encoding)
    trial.storage.set_trial_system_attr(trial_id(trial), ARTIFACT_PREFIX + artifact_id,
                                        json.dumps(dataclasses.asdict(meta)))


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """The trial as stored now (a live Trial keeps no system attributes of its own)."""
    return trial.storage.get_trial(trial_id(trial))
