"""The ``hpo`` command line: subcommands over one storage, errors as one line and exit code 2.

Results go to stdout (``--format``); logs and progress to stderr. Every :class:`HpoError` is
translated here, once; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import click

from hpo import tables
from hpo.errors import HpoError

log = logging.getLogger("hpo")


class _Group(click.Group):
    """Turns the project's errors into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HpoError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"hpo: error: {exc}", err=True)
            ctx.exit(2)


def _storage_url(ctx: click.Context) -> str:
    from hpo.storage import resolve_url  # noqa: PLC0415

    return resolve_url(ctx.obj["storage"])


def _open(ctx: click.Context, heartbeat: bool = True, retry_for: float = 0.0):  # type: ignore[no-untyped-def]
    from hpo.storage import open_storage  # noqa: PLC0415

    return open_storage(ctx.obj["storage"], heartbeat=heartbeat, retry_for=retry_for)


def _study_ref(ctx: click.Context, ref: str, *, create: bool):  # type: ignore[no-untyped-def]
    """A study named by its TOML file (created if ``create``) or by its name."""
    from hpo.config import load_definition  # noqa: PLC0415
    from hpo.study import create_study, load_study  # noqa: PLC0415

    storage = _open(ctx, retry_for=60.0)
    if ref.endswith(".toml") or Path(ref).is_file():
        definition = load_definition(ref)
        if create:
            study, _ = create_study(storage, definition)
            return storage, study, definition
        ref = definition.name
    study, definition = load_study(storage, ref)
    return storage, study, definition


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--storage", envvar="HPO_STORAGE", metavar="URL",
              help="Study database [env HPO_STORAGE; default sqlite:///hpo.db].")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="hpo")
@click.pass_context
def main(ctx: click.Context, storage: str | None, debug: bool) -> None:
    """Hyperparameter optimisation of Keras CIFAR-10 models on Optuna."""
    ctx.ensure_object(dict)
    ctx.obj.update(storage=storage, debug=debug)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("optuna", "absl", "tensorflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    import optuna  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.WARNING)
    # hpo relies on heartbeats and metric names on purpose; the notice helps no user.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.pass_context
def create(ctx: click.Context, study_file: str) -> None:
    """Create the study in STUDY_FILE and queue its trials (idempotent)."""
    from hpo.config import load_definition  # noqa: PLC0415
    from hpo.study import create_study  # noqa: PLC0415

    definition = load_definition(study_file)
    _, created = create_study(_open(ctx), definition)
    verb = "created" if created else "already exists, unchanged"
    click.echo(f"study {definition.name} {verb}: {definition.n_trials} trials "
               f"({definition.sampler} sampler)", err=True)


_data_options = [
    click.option("--data", envvar="HPO_DATA", metavar="PATH",
                 help="CIFAR-10 archive, folder or .npz [env HPO_DATA; default: download]."),
    click.option("--subset", type=click.IntRange(min=10), metavar="N",
                 help="Train on a stratified subset of N images (N/5 test images)."),
    click.option("--threads", type=click.IntRange(min=1), metavar="T", help="CPU threads per worker."),
]


def _with_data_options(fn):  # type: ignore[no-untyped-def]
    for option in reversed(_data_options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("study")
@_with_data_options
@click.option("--artifacts", envvar="HPO_ARTIFACTS", metavar="DIR",
              help="Artifact folder [env HPO_ARTIFACTS; default: beside an SQLite file, else ./hpo-artifacts].")
@click.option("--max-trials", type=click.IntRange(min=1), help="Stop after this many completed trials.")
@click.pass_context
def worker(ctx: click.Context, study: str, data: str | None, subset: int | None, threads: int | None,
           artifacts: str | None, max_trials: int | None) -> None:
    """Run trials of STUDY (a name or a .toml file) until it is done."""
    from hpo import device  # noqa: PLC0415

    started = time.perf_counter()
    device.apply(threads)
    from hpo.data import load_dataset  # noqa: PLC0415
    from hpo.objective import run_trial  # noqa: PLC0415
    from hpo.worker import run_worker  # noqa: PLC0415

    storage, optuna_study, definition = _study_ref(ctx, study, create=True)
    dataset = load_dataset(data, subset=subset)
    on_complete = _artifact_hook(ctx, artifacts)
    # Paid once per worker, not per trial: imports, connecting, loading the data.
    environment = {**device.describe(), "subset": subset,
                   "worker_startup_seconds": round(time.perf_counter() - started, 2)}
    summary = run_worker(
        optuna_study,
        lambda trial: run_trial(trial, definition, dataset, environment=environment, on_complete=on_complete),
        max_trials=max_trials,
    )
    click.echo(f"worker done: {summary.complete} complete, {summary.pruned} pruned, "
               f"{summary.failed} failed", err=True)
    if summary.interrupted:
        # Everything is in the database. TensorFlow's interpreter teardown can take seconds on
        # a busy machine, longer than a container's stop grace period: skip it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def _artifact_hook(ctx: click.Context, folder: str | None):  # type: ignore[no-untyped-def]
    from hpo.artifacts import TrialArtifacts, artifact_dir  # noqa: PLC0415

    return TrialArtifacts(artifact_dir(_storage_url(ctx), folder))


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("-n", "--workers", type=click.IntRange(min=1), help="Worker processes [default: from the hardware].")
@click.option("--gpus", metavar="IDS", help="Comma-separated GPU ids, workers placed round-robin.")
@_with_data_options
@click.option("--artifacts", envvar="HPO_ARTIFACTS", metavar="DIR", help="Artifact folder (see hpo worker).")
@click.option("--logs", "log_dir", default="hpo-logs", show_default=True, help="Folder for worker logs.")
@click.pass_context
def launch(ctx: click.Context, study_file: str, workers: int | None, gpus: str | None, data: str | None,
           subset: int | None, threads: int | None, artifacts: str | None, log_dir: str) -> None:
    """Create STUDY_FILE's study if needed and run worker processes on this machine."""
    from hpo import launch as launcher  # noqa: PLC0415
    from hpo.data import load_dataset  # noqa: PLC0415

    _, study, definition = _study_ref(ctx, study_file, create=True)
    gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else []
    n = workers or launcher.default_workers(gpu_ids)
    placements = launcher.plan(n, gpus=gpu_ids, threads=threads)
    # Decode and cache the data once here, so N workers do not all start by decoding it.
    load_dataset(data, subset=subset)
    args: list[str] = []
    for flag, value in (("--data", data), ("--subset", subset), ("--artifacts", artifacts)):
        if value is not None:
            args += [flag, str(value)]
    code = launcher.launch(study, definition, _storage_url(ctx), placements, args,
                           Path(log_dir) / definition.name)
    storage_flag = f" --storage {ctx.obj['storage']}" if ctx.obj["storage"] else ""
    click.echo(f"best trials: hpo{storage_flag} export {definition.name}\n"
               f"dashboard:   hpo{storage_flag} dashboard   (then open http://127.0.0.1:8080)", err=True)
    ctx.exit(code)


@main.command()
@click.argument("study", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def status(ctx: click.Context, study: str | None, fmt: str) -> None:
    """Trials by state, queue coverage and the best value, per study."""
    import optuna  # noqa: PLC0415

    from hpo import queue  # noqa: PLC0415
    from hpo.results import study_status  # noqa: PLC0415
    from hpo.study import DEFINITION, load_study  # noqa: PLC0415

    storage = _open(ctx)
    # Without a name: every study hpo created (other Optuna studies may share the database).
    names = [study] if study else [s.study_name for s in optuna.get_all_study_summaries(storage)
                                   if DEFINITION in s.user_attrs]
    statuses = []
    for name in names:
        optuna_study, definition = load_study(storage, name)
        queue.recover(optuna_study)
        statuses.append(study_status(optuna_study, definition))
    if fmt == "json":
        click.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
        return
    if not statuses:
        click.echo("no studies yet; create one with: hpo create studies/exp3.toml", err=True)
    rows = [{
        "study": s.name, "sampler": s.sampler,
        **{state: s.points[state] for state in ("pending", "running", "complete", "pruned", "failed")},
        "total": s.total_points, "duplicates": s.duplicates,
        "best": s.best_value, "best_trial": s.best_trial,
    } for s in statuses]
    click.echo(tables.render(rows, "table"), nl=False)
    for s in statuses:
        if s.running_epochs:
            click.echo(f"{s.name}: running trials at epoch {s.running_progress()}")
        for point in s.failed_points:
            click.echo(f"{s.name}: point {point['slot']} {point['params']} failed after "
                       f"{point['attempts']} attempts: {point['error']}")


@main.command()
@click.argument("study")
@click.option("--format", "fmt", type=click.Choice(list(tables.FORMATS)), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write to FILE, not stdout.")
@click.pass_context
def export(ctx: click.Context, study: str, fmt: str, output: str | None) -> None:
    """Write STUDY's best-trial table, best first."""
    from hpo.results import best_trial_rows  # noqa: PLC0415

    _, optuna_study, definition = _study_ref(ctx, study, create=False)
    rows = best_trial_rows(optuna_study, definition)
    text = tables.render(rows, fmt, columns=EXPORT_COLUMNS)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {len(rows)} rows to {output}", err=True)
    else:
        click.echo(text, nl=False)


EXPORT_COLUMNS = ("rank", "trial", "architecture", "augmentation", "learning_rate", "batch_size", "epochs",
                  "val_accuracy", "test_accuracy", "test_loss", "duration_s", "state", "note")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--artifacts", envvar="HPO_ARTIFACTS", metavar="DIR", help="Artifact folder (see hpo worker).")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, artifacts: str | None) -> None:
    """Serve optuna-dashboard on the same storage (loopback only unless --host says otherwise)."""
    from hpo.dashboard import serve  # noqa: PLC0415

    serve(_open(ctx, heartbeat=False), host=host, port=port,
          artifacts=_artifact_folder(ctx, artifacts))


def _artifact_folder(ctx: click.Context, folder: str | None) -> Path | None:
    from hpo.artifacts import artifact_dir  # noqa: PLC0415

    return artifact_dir(_storage_url(ctx), folder)



@main.command()
@click.argument("studies", nargs=-1)
@click.option("--output", "-o", required=True, type=click.Path(), metavar="DIR",
              help="Folder for report.md, its CSV files and figures (created if needed).")
@click.option("--artifacts", envvar="HPO_ARTIFACTS", metavar="DIR", help="Artifact folder (see hpo worker).")
@click.pass_context
def report(ctx: click.Context, studies: tuple[str, ...], output: str, artifacts: str | None) -> None:
    """Write the report into DIR: Table 1 reproduced, figures and findings.

    Without STUDIES, covers every study of the report's experiments in the storage; other
    studies named here get their best-trial table and their best trial's plots.
    """
    from hpo.report import write_report  # noqa: PLC0415

    path = write_report(_open(ctx, heartbeat=False), list(studies), Path(output),
                        artifacts=_artifact_folder(ctx, artifacts), storage_url=_storage_url(ctx),
                        best_columns=EXPORT_COLUMNS)
    click.echo(f"wrote {path}", err=True)
