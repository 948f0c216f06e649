"""Running studies on a pool of worker processes on this machine: study files (``launch``) and
the confirmation of a search (``confirm``). The CLI's commands and the Python API call these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import optuna

from hpo.api import prepare
from hpo.api.prepare import Checked, Ready
from hpo.storage import records
from hpo.storage.url import StorageURL
from hpo.study import confirm as confirmation
from hpo.study.confirm import Confirmation
from hpo.study.definition import StudyDefinition
from hpo.study.files import load_definition, load_definitions
from hpo.errors import ConfigError
from hpo.training import limits
from hpo.workers.inputs import Loader
from hpo.workers.placement import MIN_WORKER_MEMORY_GIB
from hpo.workers.pool import Display, Outcome, Pool


@dataclass(frozen=True)
class PoolOptions:
    """How a pool of workers here runs (``hpo launch``'s options): every one checked when the
    pool is made, before anything is written."""

    workers: int | None = None
    gpus: str | None = None
    data: str | None = None
    subset: int | None = None
    threads: int | None = None
    checkpoint_every: int = 1
    artifacts: str | None = None
    log_dir: str = "hpo-logs"

    def pool(self, url: StorageURL, names: Sequence[str]) -> Pool:
        return Pool(url, names, workers=self.workers, gpus=self.gpus, data=self.data, subset=self.subset,
                    threads=self.threads, checkpoint_every=self.checkpoint_every, artifacts=self.artifacts,
                    log_dir=self.log_dir)


def run(url: StorageURL, checked: Sequence[Checked], options: PoolOptions, *, attrs: dict[str, object] | None = None,
        display: Display | None = None) -> tuple[list[Ready], Outcome]:
    """Create the checked studies and run one pool of workers on them all until they are done."""
    names = [c.definition.name for c in checked]
    pool = options.pool(url, names)
    fit = _workers_that_fit(checked, len(pool.placements), given=options.workers is not None)
    if fit < len(pool.placements):
        pool = dataclasses.replace(options, workers=fit).pool(url, names)
    ready = prepare.create(url, checked, attrs)
    return ready, pool.run([r.loaded for r in ready], display=display)


def _workers_that_fit(checked: Sequence[Checked], workers: int, *, given: bool) -> int:
    """How many of ``workers`` can train the studies' largest model side by side in the memory
    available here (each with TensorFlow's own share): all, or fewer where the count was hpo's
    choice; a count given (``-n``) that cannot fit is refused in one line.

    Raises:
        ConfigError: ``-n`` workers cannot fit.
    """
    sized = [(c.model_bytes, c.definition.name) for c in checked if c.model_bytes]
    if not sized:
        return workers  # studies that exist already were sized when they were created
    need, name = max(sized)
    each = need + int(MIN_WORKER_MEMORY_GIB * 2**30)
    available = limits.available_memory()
    fit = max(1, available // each)
    if workers <= fit:
        return workers
    if not given:
        return fit
    raise ConfigError(f"-n {workers}: study {name}'s largest model needs about {limits.human(need)} to train, "
                      f"{limits.human(each)} a worker with TensorFlow's own; this machine has "
                      f"{limits.human(available)} available, room for {available // each}")


def create(url: StorageURL, study_file: str, data: str | None = None,
           subset: int | None = None) -> tuple[Ready, Checked]:
    """``hpo create``: the study file's study created and its trials queued (or found unchanged),
    what it trains with recorded."""
    checked = prepare.check_new(url, load_definition(study_file), Loader(data, subset), origin=study_file,
                                study_file=study_file)
    return prepare.create(url, [checked])[0], checked


def launch(url: StorageURL, study_files: Sequence[str], options: PoolOptions,
           display: Display | None = None) -> tuple[list[Ready], Outcome]:
    """``hpo launch``: each study file's study created if need be, and one pool run on them all
    (a quoted glob names several; they share the workers, taken in the order given)."""
    definitions = load_definitions(study_files)  # everything checked before the first write
    options.pool(url, [d.name for _, d in definitions])  # the options too
    loader = Loader(options.data, options.subset)
    checked = [prepare.check_new(url, d, loader, origin=file, study_file=file) for file, d in definitions]
    return run(url, checked, options, display=display)


@dataclass(frozen=True)
class Planned:
    """A confirmation to run: the search it confirms, and the confirmation study's plan."""

    search: StudyDefinition
    search_study: optuna.Study
    confirmation: Confirmation


def plan_confirmation(url: StorageURL, study: str, *, top: int = 3, repeats: int = 3,
                      name: str | None = None) -> Planned:
    """The confirmation of search ``study``'s ``top`` configurations, ``repeats`` fresh seeds each,
    checked; nothing written."""
    search_study, search = prepare.existing(url, study)
    return Planned(search, search_study, confirmation.prepare(search_study, search, top, repeats, name))


def confirm(url: StorageURL, planned: Planned, options: PoolOptions,
            display: Display | None = None) -> tuple[Ready, Outcome]:
    """``hpo confirm``: the planned configurations trained again with fresh seeds, as a study of
    their own linked to the trials they confirm."""
    definition = planned.confirmation.definition
    # On the search's data, as the search recorded it; its builder is loaded by the workers.
    inputs = Loader(options.data, options.subset).inputs(definition, attrs=records.record_of(planned.search_study))
    ready, outcome = run(url, [Checked(definition, inputs, None)], options,
                         attrs={records.CONFIRMS: planned.confirmation.link}, display=display)
    return ready[0], outcome
