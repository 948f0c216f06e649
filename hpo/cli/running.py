"""The commands that create studies and run their trials: create, worker, launch."""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

import click

from hpo import paths
from hpo.cli.common import (artifacts_option, common_options, data_options, existing_study, is_study_file,
                            open_storage_of, pool_options, source_options, stacked, storage_flag, url)
from hpo.storage import records
from hpo.study.builder import LoadedBuilder, load_builder
from hpo.storage.open import StorageEmpty
from hpo.study.create import create_study, record_inputs, stored_attrs
from hpo.study.definition import StudyDefinition
from hpo.study.files import load_definition, load_definitions
from hpo.workers import device
from hpo.workers.inputs import Inputs, Loader
from hpo.workers.liveness import Settings
from hpo.workers.loop import Job, run_worker
from hpo.workers.pool import Pool


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@stacked(source_options)
@common_options
@click.pass_context
def create(ctx: click.Context, study_file: str, data: str | None, subset: int | None) -> None:
    """Create the study in STUDY_FILE and queue its trials (idempotent); it records its data."""
    definition = load_definition(study_file)
    attrs = attrs_of(ctx, definition.name)
    inputs = Loader(data, subset).inputs(definition, study_file=study_file, attrs=attrs)
    _builder_of(definition, inputs, new=attrs is None, origin=study_file)
    _, created = create_study(open_storage_of(ctx), definition, data=inputs.identity, builder=inputs.builder)
    verb = "created" if created else "already exists, unchanged"
    click.echo(f"study {definition.name} {verb}: {definition.n_trials} trials ({definition.sampler} sampler) "
               f"on {inputs.identity.description}", err=True)


@click.command()
@click.argument("studies", metavar="STUDY...", nargs=-1, required=True)
@stacked(data_options)
@artifacts_option("Artifact folder [env HPO_ARTIFACTS; default: beside an SQLite file, else ./hpo-artifacts].")
@click.option("--max-trials", type=click.IntRange(min=1), help="Stop after this many completed trials.")
@common_options
@click.pass_context
def worker(ctx: click.Context, studies: tuple[str, ...], data: str | None, subset: int | None,
           threads: int | None, checkpoint_every: int, artifacts: str | None, max_trials: int | None) -> None:
    """Run trials of each STUDY (a name or a .toml file), in order, until all are done."""
    started = time.perf_counter()
    device.apply(threads)
    # Everything is checked before the first write: a refused command changes nothing.
    Settings.from_environment()
    paths.artifact_dir(url(ctx), artifacts, make=False)
    files = {s: load_definition(s) for s in studies if is_study_file(s)}
    existing = {s: existing_study(ctx, s)[1:] for s in studies if s not in files}
    loader = Loader(data, subset)  # each study's data, checked against what it recorded
    attrs = {s: attrs_of(ctx, files[s].name) if s in files else existing[s][0].user_attrs for s in studies}
    inputs = {s: loader.inputs(files[s], study_file=s, attrs=attrs[s]) if s in files
              else loader.inputs(existing[s][1], attrs=attrs[s]) for s in studies}
    builders = {s: _builder_of(files[s] if s in files else existing[s][1], inputs[s], new=attrs[s] is None, origin=s)
                for s in studies}
    storage = open_storage_of(ctx, retry_for=60.0)
    chosen = []
    for s in studies:
        if s in files:
            chosen.append((create_study(storage, files[s], data=inputs[s].identity, builder=inputs[s].builder)[0],
                           files[s]))
        else:  # a study created before hpo recorded its data takes this worker's
            record_inputs(storage, existing[s][0], inputs[s].identity, inputs[s].builder)
            chosen.append(existing[s])
    folder = paths.artifact_dir(url(ctx), artifacts)

    from hpo.training.artifacts import TrialArtifacts  # noqa: PLC0415  (matplotlib; after device.apply)
    from hpo.training.checkpoints import Checkpoints  # noqa: PLC0415  (Keras, as the objective)
    from hpo.training.objective import run_trial  # noqa: PLC0415  (Keras, after device.apply set its threads)

    files_of_trials = TrialArtifacts(folder)
    # Paid once per worker, not per trial: imports, connecting, loading the data.
    environment = {**device.describe(), records.WORKER_STARTUP: round(time.perf_counter() - started, 2)}
    jobs = []
    for s, (study, definition) in zip(studies, chosen, strict=True):
        checkpoints = Checkpoints(folder, definition.name) if checkpoint_every else None
        objective = functools.partial(run_trial, definition=definition, data=inputs[s].data,
                                      environment={**environment, records.SUBSET: inputs[s].data.subset},
                                      checkpoints=checkpoints, checkpoint_every=checkpoint_every, builder=builders[s])
        jobs.append(Job(study, definition, objective, files_of_trials, checkpoints))
    summary = run_worker(jobs, max_trials=max_trials)
    dropped = f", {summary.dropped} dropped (recovered by another worker)" if summary.dropped else ""
    click.echo(f"worker done: {summary.complete} complete, {summary.pruned} pruned, {summary.failed} failed{dropped}",
               err=True)
    if summary.interrupted:
        # Everything is in the database. TensorFlow's interpreter teardown can take seconds on
        # a busy machine, longer than a container's stop grace period: skip it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


@click.command()
@click.argument("study_files", metavar="STUDY_FILE...", nargs=-1, required=True)
@pool_options
@common_options
@click.pass_context
def launch(ctx: click.Context, study_files: tuple[str, ...], **options: Any) -> None:
    """Create each STUDY_FILE's study if needed and run one pool of worker processes on them all.

    Several files (or a quoted glob such as 'studies/exp*.toml') share the workers: they take
    the studies in the order given, and move on while a study's last trials train elsewhere.
    """
    definitions = load_definitions(study_files)  # everything checked before the first write
    names = [d.name for _, d in definitions]
    pool = Pool(url(ctx), names, **options)
    loader = Loader(options["data"], options["subset"])
    attrs = [attrs_of(ctx, d.name) for _, d in definitions]
    inputs = [loader.inputs(d, study_file=file, attrs=a) for (file, d), a in zip(definitions, attrs, strict=True)]
    for (file, d), i, a in zip(definitions, inputs, attrs, strict=True):
        _builder_of(d, i, new=a is None, origin=file)
    storage = open_storage_of(ctx, retry_for=60.0)
    code = pool.run([(create_study(storage, d, data=i.identity, builder=i.builder)[0], d)
                     for (_, d), i in zip(definitions, inputs, strict=True)])
    flag = storage_flag(ctx)
    report = f"report:      hpo{flag} report --output report/\n" if len(names) > 1 else ""
    click.echo(f"best trials: hpo{flag} export {names[0]}\n{report}"
               f"dashboard:   hpo{flag} dashboard   (then open http://127.0.0.1:8080)", err=True)
    ctx.exit(code)


def _builder_of(definition: StudyDefinition, inputs: Inputs, *, new: bool, origin: str) -> LoadedBuilder | None:
    """The study's own model builder, imported; tried once on the data (a dry build) where the
    study is about to be created, so that a builder that cannot serve it is refused before any write."""
    if inputs.builder is None:
        return None
    loaded = load_builder(inputs.builder)
    if new:
        device.apply()  # before Keras: its log level, and the GPU memory it takes as needed
        from hpo.training.probe import check_builder  # noqa: PLC0415  (Keras: only for a model of the user's own)
        check_builder(loaded, definition, input_shape=inputs.data.input_shape, num_classes=inputs.data.num_classes,
                      origin=origin)
    return loaded


def attrs_of(ctx: click.Context, name: str) -> dict[str, Any] | None:
    """The stored user attributes of study ``name``, or None where it does not exist yet; reading
    them makes nothing (no database file, no schema)."""
    try:
        storage = open_storage_of(ctx, retry_for=60.0, create=False)
    except StorageEmpty:
        return None
    return stored_attrs(storage, name)
