"""The commands that show what studies hold: status, export, dashboard, report. They read only."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hpo import paths
from hpo.cli.common import artifacts_option, checked_name, common_options, existing_study, is_study_file, \
    open_storage_of, url
from hpo.errors import OutputError
from hpo.results import formats
from hpo.results.dashboard import serve
from hpo.results.rows import export_rows, short_view
from hpo.results.status import study_status
from hpo.storage import records
from hpo.storage.open import StorageEmpty, check_whole
from hpo.study.create import load_study
from hpo.study.files import load_definition


@click.command()
@click.argument("study", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@common_options
@click.pass_context
def status(ctx: click.Context, study: str | None, fmt: str) -> None:
    """Trials by state, queue coverage and the best value, per study. Reads only."""
    studies = []
    if study:
        studies.append(existing_study(ctx, study)[1:])
    else:
        try:
            storage = open_storage_of(ctx, create=False)
        except StorageEmpty:
            pass  # nothing created yet, and nothing is
        else:  # every study hpo created (other Optuna studies may share the database)
            studies = [load_study(storage, name) for name, record in records.records_by_name(storage).items()
                       if records.DEFINITION in record]
    statuses = [study_status(optuna_study, definition) for optuna_study, definition in studies]
    if fmt == "json":
        click.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
    elif not statuses:
        click.echo("no studies yet; create one with: hpo create studies/exp3.toml", err=True)
    else:
        click.echo(formats.render([s.row() for s in statuses], "table"), nl=False)
        for line in (line for s in statuses for line in s.notes()):
            click.echo(line)


@click.command()
@click.argument("study")
@click.option("--format", "fmt", type=click.Choice(list(formats.FORMATS)), default="table", show_default=True)
@click.option("--output", "-o", metavar="FILE",
              help="Write to FILE (a file is replaced whole; a pipe or device is written into; - is stdout).")
@click.option("--by", type=click.Choice(["trial", "configuration"]),
              help="One row per trial, or per configuration: n, mean and std over its COMPLETE trials "
                   "[default: trial; configuration for a confirmation study].")
@click.option("--all", "every", is_flag=True,
              help="Every column in the table on standard output too (by default it shows rank, trial, the parameters "
                   "that differ, the metric, state and note; -o FILE and the other formats have every column).")
@common_options
@click.pass_context
def export(ctx: click.Context, study: str, fmt: str, output: str | None, by: str | None, every: bool) -> None:
    """Write STUDY's best-trial table, best first.

    A search that has been confirmed (hpo confirm) gets the confirmed mean and spread of test
    accuracy beside each confirmed configuration; a confirmation study shows, per configuration,
    the search's value beside them.
    """
    target = paths.output_file(output, "--output") if output else None
    name = load_definition(study).name if is_study_file(study) else study
    storage, found, definition = existing_study(ctx, name)
    rows, columns = export_rows(storage, found, definition, by)
    if fmt == "table" and not every and target is None:  # a person reading a terminal; a file gets it all
        rows, columns = short_view(rows, columns, definition)
    text = formats.render(rows, fmt, columns=columns)
    if target is None:
        click.echo(text, nl=False)
        return
    paths.write_text(target, text, "--output")
    click.echo(f"wrote {len(rows)} rows to {output}", err=True)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@artifacts_option()
@common_options
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, artifacts: str | None) -> None:
    """Serve optuna-dashboard on the same storage (loopback only unless --host says otherwise)."""
    paths.artifact_dir(url(ctx), artifacts, make=False)
    storage = open_storage_of(ctx)  # a damaged or foreign database is refused before the folder is made
    check_whole(storage)
    serve(storage, host=host, port=port, artifacts=paths.artifact_dir(url(ctx), artifacts))


@click.command()
@click.argument("studies", nargs=-1)
@click.option("--output", "-o", required=True, type=click.Path(), metavar="DIR",
              help="Folder for report.md, its CSV files and figures (created if needed).")
@artifacts_option()
@common_options
@click.pass_context
def report(ctx: click.Context, studies: tuple[str, ...], output: str, artifacts: str | None) -> None:
    """Write the report into DIR: Table 1 reproduced, figures and findings.

    Without STUDIES, covers the report's experiments, the searches (tpe, random) and their
    confirmations in the storage; other studies named here get their best-trial table and
    their best trial's plots. Searches get a progress figure and their confirmed configurations.
    """
    from hpo.results.report import write_report  # noqa: PLC0415  (matplotlib: only this command)

    for name in studies:
        checked_name(name)
    folder = paths.artifact_dir(url(ctx), artifacts, make=False)
    storage = open_storage_of(ctx, create=False)
    check_whole(storage)  # it reads every study it reports: a damaged file is refused before any is written
    paths.folder(output, "--output", make=False)
    try:
        path = write_report(storage, list(studies), Path(output), artifacts=folder if folder.is_dir() else None,
                            storage_url=url(ctx))
    except OSError as exc:  # a disk that fills while the figures are written
        raise OutputError(f"--output {output}: cannot write the report: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}", err=True)
