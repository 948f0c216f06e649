"""The Python API's verbs: tune a model on arrays in memory, launch study files, and look at
what a study holds. Each runs what the matching command runs (:mod:`hpo.api.run`), raises
:class:`hpo.HpoError` where the command would print one line, and never exits the caller's
process: an interrupt (Ctrl-C, a notebook's "interrupt kernel") stops the workers cleanly and
then raises ``KeyboardInterrupt`` in the caller.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import optuna

from hpo import paths
from hpo.api import arrays, prepare
from hpo.api import space as spaces
from hpo.api.progress import Bar, in_notebook
from hpo.api.result import Result
from hpo.api.run import PoolOptions, plan_confirmation, run
from hpo.api.run import confirm as confirm_planned
from hpo.api.run import create as create_file
from hpo.api.run import launch as launch_files
from hpo.errors import HpoError
from hpo.storage.url import StorageURL
from hpo.study.builder import BuilderIdentity
from hpo.study.definition import StudyDefinition
from hpo.study.files import load_definitions
from hpo.workers.inputs import Loader
from hpo.workers.pool import Display, Outcome

F = TypeVar("F", bound=Callable[..., Any])


def _quietly(function: F) -> F:
    """``function`` with Optuna's own log lines ("A new study created ...") held back while it
    runs: the caller sees hpo's progress, and Optuna's warnings still."""
    @functools.wraps(function)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        before = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(max(before, optuna.logging.WARNING))
        try:
            return function(*args, **kwargs)
        finally:
            optuna.logging.set_verbosity(before)

    return cast(F, quiet)  # the same signature, wrapped


@_quietly
def tune(build: Callable[..., Any], train_data: tuple[Any, Any], *, space: Mapping[str, Any],
         test_data: tuple[Any, Any], trials: int = 20, workers: int | None = None, storage: str | None = None,
         name: str | None = None, metric: str = "val_accuracy", direction: str | None = None,
         sampler: str = "tpe", seed: int = 0, pruner: str = "none", protocol: str = "validation_split",
         validation_split: float = 0.2,
         subset: int | None = None, repeats: int = 1, max_retries: int = 2, loss: str | None = None,
         metrics: Sequence[str] | None = None, class_names: Sequence[str] | None = None, description: str = "",
         threads: int | None = None, gpus: str | None = None, checkpoint_every: int = 1,
         artifacts: str | None = None, logs: str = "hpo-logs", progress: bool = True,
         keep_models: str = "best") -> Result:
    """Tune ``build`` on arrays in memory with a pool of worker processes; the study's result.

    ``build(params, input_shape, num_classes)`` returns a Keras model, as a ``[model] builder``
    does; it may be defined in a notebook cell or a script's ``__main__`` (it is pickled, and the
    study records the pickle's SHA-256 as the builder's identity). ``train_data`` and
    ``test_data`` are ``(x, y)`` pairs; the last ``validation_split`` of the training set scores
    each trial (``metric``, in ``direction``; ``protocol="test"`` validates on the test set, as the
    report did), and every trial is scored on the test set. ``space`` is the study file's
    ``[space]`` in Python (:mod:`hpo.api.space`). The study is kept in ``storage`` (default
    ``sqlite:///hpo.db``, or ``HPO_STORAGE``) under ``name`` (default: the builder's name): run
    again, it goes on where it stopped; the same name with other data or another builder is refused.

    Any Keras task: the arrays may be of any shape and dtype (integer labels ``(N,)`` are classes;
    other targets, floats say, are not, and ``build`` gets ``num_classes=None``). A model ``build``
    returns compiled keeps its loss and metrics; one not compiled takes ``loss`` and ``metrics``
    (Keras' names), or hpo's sparse cross-entropy and accuracy for classes. ``metric`` is any
    ``val_<name>`` or ``test_<name>`` the model reports; ``direction`` may be left out for losses,
    errors (``val_mae``), accuracies and AUCs. ``keep_models``: whose trained models are saved with
    their artifacts: ``"best"`` (a trial's, when it is the best so far), ``"all"`` or ``"none"``.
    """
    url = StorageURL.resolve(storage)
    identity = BuilderIdentity.of_function(build)
    data = arrays.check(train_data, test_data, class_names)
    folder = paths.artifact_dir(url, artifacts, make=False).resolve() / "data"
    definition = spaces.definition(
        name=name if name is not None else identity.builder.partition(":")[2], space=space,
        source=str(data.path(folder)), builder=identity.builder, trials=trials, metric=metric, direction=direction,
        sampler=sampler, seed=seed, pruner=pruner, protocol=protocol, validation_split=validation_split, subset=subset,
        max_retries=max_retries, repeats=repeats, description=description, loss=loss, metrics=metrics,
        keep_models=keep_models)
    options = PoolOptions(workers=workers, gpus=gpus, threads=threads, checkpoint_every=checkpoint_every,
                          artifacts=artifacts, log_dir=logs)
    options.pool(url, [definition.name])  # every option checked before anything is written
    with _written(data, folder):
        checked = prepare.check_new(url, definition, Loader(None, None), origin=spaces.ORIGIN, builder=identity)
    _, outcome = run(url, [checked], options, display=_display(progress, [definition]))
    _raise_for(outcome, options)
    return Result(url, definition.name, artifacts)


@contextlib.contextmanager
def _written(data: arrays.Arrays, folder: Path) -> Any:
    """The arrays written for the checks that read them; taken away again where a check refuses
    the study (nothing is left of a refused call), kept once the study may use them."""
    made = [p for p in (folder.parent, folder) if not p.exists()]
    path, wrote = arrays.write(data, folder)
    try:
        yield path
    except BaseException:
        if wrote:
            path.unlink(missing_ok=True)
            for created in reversed(made):
                with contextlib.suppress(OSError):  # not empty: something else is there now
                    created.rmdir()
        raise


@_quietly
def launch(*study_files: str, workers: int | None = None, storage: str | None = None, data: str | None = None,
           subset: int | None = None, threads: int | None = None, gpus: str | None = None,
           checkpoint_every: int = 1, artifacts: str | None = None, logs: str = "hpo-logs",
           progress: bool = True) -> Result | list[Result]:
    """``hpo launch``: each study file's study created if need be and run on one pool of workers;
    its result (a list of them for several files)."""
    if not study_files:
        raise HpoError("launch: name at least one study file")
    url = StorageURL.resolve(storage)
    options = PoolOptions(workers=workers, gpus=gpus, data=data, subset=subset, threads=threads,
                          checkpoint_every=checkpoint_every, artifacts=artifacts, log_dir=logs)
    display = _display(progress, [d for _, d in load_definitions(study_files)])
    ready, outcome = launch_files(url, study_files, options, display=display)
    _raise_for(outcome, options)
    found = [Result(url, r.definition.name, artifacts) for r in ready]
    return found[0] if len(found) == 1 else found


@_quietly
def confirm(study: str, *, top: int = 3, repeats: int = 3, name: str | None = None, workers: int | None = None,
            storage: str | None = None, data: str | None = None, threads: int | None = None,
            gpus: str | None = None, artifacts: str | None = None, logs: str = "hpo-logs",
            progress: bool = True) -> Result:
    """``hpo confirm``: the search's ``top`` configurations trained ``repeats`` times with fresh
    seeds; the confirmation study's result (``.table()`` holds each one's mean and spread)."""
    url = StorageURL.resolve(storage)
    options = PoolOptions(workers=workers, gpus=gpus, data=data, threads=threads, artifacts=artifacts, log_dir=logs)
    planned = plan_confirmation(url, study, top=top, repeats=repeats, name=name)
    ready, outcome = confirm_planned(url, planned, options,
                                     display=_display(progress, [planned.confirmation.definition]))
    _raise_for(outcome, options)
    return Result(url, ready.definition.name, artifacts)


@_quietly
def create(study_file: str, *, storage: str | None = None, data: str | None = None,
           subset: int | None = None) -> Result:
    """``hpo create``: the study file's study created and its trials queued (or found unchanged),
    its data and builder recorded; its result."""
    url = StorageURL.resolve(storage)
    ready, _ = create_file(url, study_file, data, subset)
    return Result(url, ready.definition.name)


def results(name: str, storage: str | None = None, artifacts: str | None = None) -> Result:
    """A stored study's result (``hpo export``, ``status`` and ``report`` as methods)."""
    return Result(StorageURL.resolve(storage), name, artifacts)


def _display(progress: bool, definitions: Sequence[StudyDefinition]) -> Display | None:
    """A progress bar in a notebook; the launcher's line on stderr elsewhere; or nothing at all."""
    if not progress:
        return _Silent()
    if in_notebook():
        return Bar(sum(d.n_trials for d in definitions), "+".join(d.name for d in definitions))
    return None


class _Silent:
    def show(self, statuses: Sequence[Any], final: bool = False) -> None:
        pass


def _raise_for(outcome: Outcome, options: PoolOptions) -> None:
    """A launch that did not end well, as Python says it: the signal that stopped it raised again
    in the caller (``KeyboardInterrupt`` for SIGINT) once every worker is gone, an error otherwise."""
    if outcome.stopped_by is not None:
        signal.raise_signal(outcome.stopped_by)  # the caller's own handler: Python's raises KeyboardInterrupt
        raise KeyboardInterrupt  # a handler that returned: the launch was still stopped
    if outcome.code != 0:
        raise HpoError(f"the launch ended with an error: a worker exited with one; see its log in {options.log_dir}/")

