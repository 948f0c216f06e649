"""The commands that create studies and run their trials: create, worker, launch. They parse and
print; the work is :mod:`hpo.api`'s."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from hpo.api.run import PoolOptions
from hpo.api.run import create as create_study
from hpo.api.run import launch as launch_files
from hpo.api.worker import work
from hpo.cli.common import (artifacts_option, common_options, data_options, invoked_as, pool_options, source_options,
                            stacked, storage_flag, storage_hint, url)


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@stacked(source_options)
@common_options
@click.pass_context
def create(ctx: click.Context, study_file: str, data: str | None, subset: int | None) -> None:
    """Create the study in STUDY_FILE and queue its trials (idempotent); it records its data."""
    ready, checked = create_study(url(ctx), study_file, data, subset)
    definition = ready.definition
    verb = "created" if ready.created else "already exists, unchanged"
    click.echo(f"study {definition.name} {verb}: {definition.n_trials} trials ({definition.sampler} sampler) "
               f"on {checked.inputs.identity.description}", err=True)


@click.command()
@click.argument("studies", metavar="STUDY...", nargs=-1, required=True)
@stacked(data_options)
@artifacts_option("Artifact folder [env HPO_ARTIFACTS; default: beside an SQLite file, else ./hpo-artifacts].")
@click.option("--max-trials", type=click.IntRange(min=1), help="Stop after this many completed trials.")
@common_options
@click.pass_context
def worker(ctx: click.Context, studies: tuple[str, ...], **options: Any) -> None:
    """Run trials of each STUDY (a name or a .toml file), in order, until all are done."""
    summary = work(url(ctx), studies, **options)
    dropped = f", {summary.dropped} dropped (recovered by another worker)" if summary.dropped else ""
    click.echo(f"worker done: {summary.complete} complete, {summary.pruned} pruned, {summary.failed} failed{dropped}",
               err=True)
    if summary.interrupted:
        # Everything is in the database. TensorFlow's interpreter teardown can take seconds on
        # a busy machine, longer than a container's stop grace period: skip it. (This process is
        # a worker's own: a Python caller of hpo.api.worker.work gets the summary instead.)
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
    ready, outcome = launch_files(url(ctx), study_files, PoolOptions(**options))
    hpo, flag = invoked_as(), storage_flag(ctx)
    report = f"report:      {hpo}{flag} report --output report/\n" if len(ready) > 1 else ""
    click.echo(f"{storage_hint(ctx)}best trials: {hpo}{flag} export {ready[0].definition.name}\n{report}"
               f"dashboard:   {hpo}{flag} dashboard   (then open http://127.0.0.1:8080)", err=True)
    ctx.exit(outcome.code)
