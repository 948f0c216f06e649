"""One worker in this process: the studies it takes, their trials trained until none is left.

What ``hpo worker`` runs, and what every process a launch starts runs. The studies are checked
(:mod:`hpo.api.prepare`) before the worker claims anything, and what is paid once per worker
(imports, connecting, loading the data) is recorded with every trial it trains.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path

from hpo import paths
from hpo.api import prepare
from hpo.storage import records
from hpo.storage.url import StorageURL
from hpo.study.files import load_definition
from hpo.workers import device
from hpo.workers.inputs import Loader
from hpo.workers.liveness import Settings
from hpo.workers.loop import Job, WorkerSummary, run_worker


def is_study_file(ref: str) -> bool:
    """Whether ``ref`` names a study file (else it is a study's name)."""
    try:
        return ref.endswith(".toml") or Path(ref).is_file()
    except OSError:  # a name too long to be a path, say: then it is a study name (and is checked as one)
        return False


def work(url: StorageURL, studies: Sequence[str], *, data: str | None = None, subset: int | None = None,
         threads: int | None = None, checkpoint_every: int = 1, artifacts: str | None = None,
         max_trials: int | None = None) -> WorkerSummary:
    """Run trials of each study (a name, or a study file whose study is created if need be), in
    order, until all are done (or ``max_trials`` have completed)."""
    started = time.perf_counter()
    device.apply(threads)
    # Everything is checked before the first write: a refused worker changes nothing.
    Settings.from_environment()
    paths.artifact_dir(url, artifacts, make=False)
    loader = Loader(data, subset)  # each study's data, checked against what it recorded
    checked = [prepare.check_new(url, load_definition(s), loader, origin=s, study_file=s) if is_study_file(s)
               else prepare.check_existing(url, s, loader) for s in studies]
    ready = prepare.create(url, checked)
    folder = paths.artifact_dir(url, artifacts)

    device.import_backend()  # TensorFlow's import-time lines filtered out of the worker's log
    from hpo.training.artifacts import TrialArtifacts  # noqa: PLC0415  (matplotlib; after device.apply)
    from hpo.training.checkpoints import Checkpoints  # noqa: PLC0415  (Keras, as the objective)
    from hpo.training.objective import run_trial  # noqa: PLC0415  (Keras, after device.apply set its threads)

    files_of_trials = TrialArtifacts(folder)
    # Paid once per worker, not per trial: imports, connecting, loading the data.
    environment = {**device.describe(), records.WORKER_STARTUP: round(time.perf_counter() - started, 2)}
    jobs = []
    for c, r in zip(checked, ready, strict=True):
        definition = r.definition
        checkpoints = Checkpoints(folder, definition.name) if checkpoint_every else None
        objective = functools.partial(run_trial, definition=definition, data=c.inputs.data,
                                      environment={**environment, records.SUBSET: c.inputs.data.subset},
                                      checkpoints=checkpoints, checkpoint_every=checkpoint_every, builder=c.builder)
        jobs.append(Job(r.study, definition, objective, files_of_trials, checkpoints))
    return run_worker(jobs, max_trials=max_trials)
