"""The commands that create studies and run their trials: create, worker, launch, confirm."""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

import click

from hpo import paths
from hpo.cli.common import (artifacts_option, common_options, data_options, existing_study, is_study_file,
                            open_storage_of, pool_options, stacked, storage_flag, url)
from hpo.results import formats
from hpo.results.rows import CONFIRMED_COLUMNS, confirmed_rows
from hpo.storage import records
from hpo.study import confirm as confirmation
from hpo.study.create import create_study
from hpo.study.files import load_definition, load_definitions
from hpo.training.data import load_dataset
from hpo.workers import device
from hpo.workers.liveness import Settings
from hpo.workers.loop import Job, run_worker
from hpo.workers.pool import Pool


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@common_options
@click.pass_context
def create(ctx: click.Context, study_file: str) -> None:
    """Create the study in STUDY_FILE and queue its trials (idempotent)."""
    definition = load_definition(study_file)
    _, created = create_study(open_storage_of(ctx), definition)
    verb = "created" if created else "already exists, unchanged"
    click.echo(f"study {definition.name} {verb}: {definition.n_trials} trials ({definition.sampler} sampler)", err=True)


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
    dataset = load_dataset(data, subset=subset)
    chosen = [existing[s] if s not in files else
              (create_study(open_storage_of(ctx, retry_for=60.0), files[s])[0], files[s]) for s in studies]
    folder = paths.artifact_dir(url(ctx), artifacts)

    from hpo.training.artifacts import TrialArtifacts  # noqa: PLC0415  (matplotlib; after device.apply)
    from hpo.training.checkpoints import Checkpoints  # noqa: PLC0415  (Keras, as the objective)
    from hpo.training.objective import run_trial  # noqa: PLC0415  (Keras, after device.apply set its threads)

    files_of_trials = TrialArtifacts(folder)
    # Paid once per worker, not per trial: imports, connecting, loading the data.
    environment = {**device.describe(), records.SUBSET: subset,
                   records.WORKER_STARTUP: round(time.perf_counter() - started, 2)}
    jobs = []
    for study, definition in chosen:
        checkpoints = Checkpoints(folder, definition.name) if checkpoint_every else None
        objective = functools.partial(run_trial, definition=definition, data=dataset, environment=environment,
                                      checkpoints=checkpoints, checkpoint_every=checkpoint_every)
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
    names = [d.name for d in definitions]
    pool = Pool(url(ctx), names, **options)
    storage = open_storage_of(ctx, retry_for=60.0)
    code = pool.run([(create_study(storage, d)[0], d) for d in definitions])
    flag = storage_flag(ctx)
    report = f"report:      hpo{flag} report --output report/\n" if len(names) > 1 else ""
    click.echo(f"best trials: hpo{flag} export {names[0]}\n{report}"
               f"dashboard:   hpo{flag} dashboard   (then open http://127.0.0.1:8080)", err=True)
    ctx.exit(code)


@click.command()
@click.argument("study")
@click.option("--top", "top", type=click.IntRange(min=1), default=3, show_default=True,
              help="Confirm the K best configurations of STUDY.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Trainings of each, with fresh seeds.")
@click.option("--name", help="The confirmation study's name [default: STUDY-confirm].")
@pool_options
@common_options
@click.pass_context
def confirm(ctx: click.Context, study: str, top: int, repeats: int, name: str | None, **options: Any) -> None:
    """Train STUDY's best configurations again with fresh seeds, on the whole training set, and
    score them on the test set: the search's value beside a mean and spread one can defend.

    The runs are a study of their own (STUDY-confirm), linked to the trials they confirm.
    """
    _, search_study, search = existing_study(ctx, study)
    planned = confirmation.prepare(search_study, search, top, repeats, name)
    if len(planned.trials) < top:
        click.echo(f"hpo: study {study} has {len(planned.trials)} COMPLETE configurations; confirming those", err=True)
    definition = planned.definition
    pool = Pool(url(ctx), [definition.name], **options)
    confirm_study, _ = create_study(open_storage_of(ctx, retry_for=60.0), definition, {records.CONFIRMS: planned.link})
    code = pool.run([(confirm_study, definition)])
    click.echo(formats.render(confirmed_rows(confirm_study, definition), "table", CONFIRMED_COLUMNS), nl=False)
    click.echo(f"search {search.metric} beside the confirmed test accuracy; again: "
               f"hpo{storage_flag(ctx)} export {definition.name}", err=True)
    ctx.exit(code)
