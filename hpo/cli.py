"""The ``hpo`` command line: subcommands over one storage, errors as one line and exit code 2.

Results go to stdout (``--format``); logs and progress to stderr. Every :class:`HpoError` is
translated here, once; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import optuna
from optuna import Study
from optuna.storages import RDBStorage

# Keras and matplotlib take seconds to load, so the modules that use them (hpo.training.objective,
# hpo.training.artifacts, hpo.results.report) are imported by the commands that need them; these load neither.
from hpo.study import confirm as confirmation
from hpo.workers import device
from hpo import paths
from hpo.storage import records
from hpo.results import formats
from hpo.workers import pool
from hpo.study.definition import MAX_NAME_LENGTH, StudyDefinition, load_definition, name_problem
from hpo.results.dashboard import serve
from hpo.training.data import load_dataset
from hpo.errors import ConfigError, HpoError, OutputError
from hpo.results.status import EXPORT_COLUMNS, best_trial_rows, configuration_columns, configuration_rows, study_status
from hpo.workers.liveness import Settings
from hpo.storage.open import StorageEmpty, check_whole, display_url, open_storage, resolve_url
from hpo.study.create import create_study, load_study
from hpo.workers.loop import Job, run_worker


def run(args: Sequence[str] | None = None) -> None:
    """The ``hpo`` command: click's own usage errors, like hpo's errors, as one line and exit code 2."""
    try:
        code = main.main(args, standalone_mode=False)
    except click.ClickException as exc:  # a bad option or argument
        ctx: click.Context | None = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        click.echo(f"hpo: error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


class _Group(click.Group):
    """Turns the project's errors into one line on stderr and exit code 2, and a reader that went
    away (``hpo export | head``) into the quiet end SIGPIPE gives ``yes | head``: 141."""
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
            ctx.exit(128 + signal.SIGPIPE)
        except HpoError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"hpo: error: {exc}", err=True)
            ctx.exit(2)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("optuna", "absl", "tensorflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)

    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.WARNING)
    # hpo relies on heartbeats and metric names on purpose; the notice helps no user.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _set_storage(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().ensure_object(dict)["storage"] = value


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().ensure_object(dict)["debug"] = True
        _setup_logging(True)


def _common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--storage`` and ``--debug`` after the subcommand too, as in ``optuna`` and ``datasette``."""
    fn = click.option("--storage", metavar="URL", expose_value=False, callback=_set_storage,
                      help="Study database [env HPO_STORAGE; default sqlite:///hpo.db].")(fn)
    return click.option("--debug", is_flag=True, expose_value=False, callback=_set_debug,
                        help="Show tracebacks and debug logs.")(fn)


def _artifacts_option(help_text: str = "Artifact folder (see hpo worker).") -> Callable[..., Any]:
    return click.option("--artifacts", envvar="HPO_ARTIFACTS", metavar="DIR", help=help_text)


def _storage_url(ctx: click.Context) -> str:
    return resolve_url(ctx.obj["storage"])


def _open(ctx: click.Context, *, retry_for: float = 0.0, create: bool = True) -> RDBStorage:
    return open_storage(ctx.obj["storage"], retry_for=retry_for, create=create)


def _artifact_folder(ctx: click.Context, folder: str | None, *, make: bool = True) -> Path:
    """The trials' artifact folder (checked, and made if ``make``)."""
    return paths.artifact_dir(_storage_url(ctx), folder, make=make)


def _is_study_file(ref: str) -> bool:
    try:
        return ref.endswith(".toml") or Path(ref).is_file()
    except OSError:  # a name too long to be a path, say: then it is a study name (and is checked as one)
        return False


def _checked_name(name: str) -> str:
    """A study name given on the command line: no study can have a longer one than the study
    files allow (its characters are not held to their rule: a study stored by other means may
    have others, and every file hpo writes from a name makes it safe first)."""
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"study name {name[:57]!r}... is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
    return name


def _definitions(study_files: Sequence[str]) -> list[StudyDefinition]:
    """The study files named, a quoted glob expanded (sorted); two files may not name one study."""
    files: list[str] = []
    for pattern in study_files:
        if not glob.has_magic(pattern) or Path(pattern).exists():
            files.append(pattern)
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ConfigError(f"{pattern}: no study file matches")
        files += matches
    definitions: dict[str, StudyDefinition] = {}
    for file in dict.fromkeys(files):
        definition = load_definition(file)
        if definition.name in definitions:
            raise ConfigError(f"{file}: study {definition.name!r} is also named by another study file")
        definitions[definition.name] = definition
    return list(definitions.values())


def _joined(names: Sequence[str]) -> str:
    """A log folder name for several studies, short enough for any file system."""
    joined = "+".join(names)
    return joined if len(joined) <= 100 else f"{names[0]}+{len(names) - 1}-more"


def _existing_study(ctx: click.Context, name: str) -> tuple[RDBStorage, Study, StudyDefinition]:
    """A study that must already exist; reading it writes nothing, not even an empty schema."""
    _checked_name(name)
    try:
        storage = _open(ctx, retry_for=60.0, create=False)
    except StorageEmpty as exc:
        raise HpoError(f"no study named {name!r}: {exc}") from None
    study, definition = load_study(storage, name)
    return storage, study, definition


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--storage", envvar="HPO_STORAGE", metavar="URL",
              help="Study database [env HPO_STORAGE; default sqlite:///hpo.db].")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="hpo")
@click.pass_context
def main(ctx: click.Context, storage: str | None, debug: bool) -> None:
    """Hyperparameter optimisation of Keras CIFAR-10 models on Optuna.

    --storage and --debug go before or after the subcommand.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(storage=storage, debug=debug)
    _setup_logging(debug)


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@_common_options
@click.pass_context
def create(ctx: click.Context, study_file: str) -> None:
    """Create the study in STUDY_FILE and queue its trials (idempotent)."""
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
    click.option("--threads", type=click.IntRange(min=1, max=1024), metavar="T", help="CPU threads per worker."),
]


def _stacked(options: Sequence[Callable[..., Any]]) -> Callable[..., Any]:
    """One decorator for several click options, in the order listed (as --help shows them)."""
    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


_with_data_options = _stacked(_data_options)


@main.command()
@click.argument("studies", metavar="STUDY...", nargs=-1, required=True)
@_with_data_options
@_artifacts_option("Artifact folder [env HPO_ARTIFACTS; default: beside an SQLite file, else ./hpo-artifacts].")
@click.option("--max-trials", type=click.IntRange(min=1), help="Stop after this many completed trials.")
@_common_options
@click.pass_context
def worker(ctx: click.Context, studies: tuple[str, ...], data: str | None, subset: int | None,
           threads: int | None, artifacts: str | None, max_trials: int | None) -> None:
    """Run trials of each STUDY (a name or a .toml file), in order, until all are done."""
    started = time.perf_counter()
    device.apply(threads)

    # Everything is checked before the first write: a refused command changes nothing.
    Settings.from_environment()
    _artifact_folder(ctx, artifacts, make=False)
    files = {s: load_definition(s) for s in studies if _is_study_file(s)}
    existing = {s: _existing_study(ctx, s)[1:] for s in studies if s not in files}
    dataset = load_dataset(data, subset=subset)
    chosen = [existing[s] if s not in files else (create_study(_open(ctx, retry_for=60.0), files[s])[0], files[s])
              for s in studies]
    folder = _artifact_folder(ctx, artifacts)

    from hpo.training.artifacts import TrialArtifacts  # noqa: PLC0415  (matplotlib; after device.apply)
    from hpo.training.objective import run_trial  # noqa: PLC0415  (Keras, after device.apply set its threads)

    files_of_trials = TrialArtifacts(folder)
    # Paid once per worker, not per trial: imports, connecting, loading the data.
    environment = {**device.describe(), records.SUBSET: subset,
                   records.WORKER_STARTUP: round(time.perf_counter() - started, 2)}
    jobs = [Job(study, definition, functools.partial(run_trial, definition=definition, data=dataset,
                                                      environment=environment), files_of_trials)
            for study, definition in chosen]
    summary = run_worker(jobs, max_trials=max_trials)
    dropped = f", {summary.dropped} dropped (recovered by another worker)" if summary.dropped else ""
    click.echo(f"worker done: {summary.complete} complete, {summary.pruned} pruned, "
               f"{summary.failed} failed{dropped}", err=True)
    if summary.interrupted:
        # Everything is in the database. TensorFlow's interpreter teardown can take seconds on
        # a busy machine, longer than a container's stop grace period: skip it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


# The options of a command that runs a pool of workers here (launch, confirm).
_pool_options = _stacked([
    click.option("-n", "--workers", type=click.IntRange(min=1), help="Worker processes [default: from the hardware]."),
    click.option("--gpus", metavar="IDS", help="Comma-separated GPU ids, workers placed round-robin."),
    *_data_options,
    _artifacts_option(),
    click.option("--logs", "log_dir", default="hpo-logs", show_default=True, help="Folder for worker logs."),
])


class _Pool:
    """A pool of worker processes on this machine for some studies: every option checked and the
    data decoded (once, for all workers) when made, before anything is written; then run."""

    def __init__(self, ctx: click.Context, names: Sequence[str], *, workers: int | None, gpus: str | None,
                 data: str | None, subset: int | None, threads: int | None, artifacts: str | None,
                 log_dir: str) -> None:
        self.ctx, self.names = ctx, list(names)
        self.url = _storage_url(ctx)
        Settings.from_environment()
        self.logs = paths.folder(Path(log_dir) / (names[0] if len(names) == 1 else _joined(names)), "--logs",
                                 make=False)
        _artifact_folder(ctx, artifacts, make=False)
        gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else []
        n_workers = pool.check_workers(workers) if workers else pool.default_workers(gpu_ids)
        self.placements = pool.plan(n_workers, gpus=gpu_ids, threads=threads)
        load_dataset(data, subset=subset)
        self.args: list[str] = []
        for flag, value in (("--data", data), ("--subset", subset), ("--artifacts", artifacts)):
            if value is not None:
                self.args += [flag, str(value)]

    def run(self, studies: Sequence[tuple[Study, StudyDefinition]]) -> int:
        return pool.launch(studies, self.url, self.placements, self.args, self.logs)

    def storage_flag(self) -> str:
        """' --storage URL' for the commands printed after a run, password hidden; nothing where
        HPO_STORAGE named the storage (it still does)."""
        storage = self.ctx.obj["storage"]
        from_flag = storage is not None and storage != os.environ.get("HPO_STORAGE")
        return f" --storage '{display_url(self.url)}'" if from_flag else ""


@main.command()
@click.argument("study_files", metavar="STUDY_FILE...", nargs=-1, required=True)
@_pool_options
@_common_options
@click.pass_context
def launch(ctx: click.Context, study_files: tuple[str, ...], **options: Any) -> None:
    """Create each STUDY_FILE's study if needed and run one pool of worker processes on them all.

    Several files (or a quoted glob such as 'studies/exp*.toml') share the workers: they take
    the studies in the order given, and move on while a study's last trials train elsewhere.
    """
    # Everything is checked before the first write: a refused command changes nothing.
    definitions = _definitions(study_files)
    names = [d.name for d in definitions]
    pool = _Pool(ctx, names, **options)
    storage = _open(ctx, retry_for=60.0)
    code = pool.run([(create_study(storage, d)[0], d) for d in definitions])
    flag = pool.storage_flag()
    report = f"report:      hpo{flag} report --output report/\n" if len(names) > 1 else ""
    click.echo(f"best trials: hpo{flag} export {names[0]}\n{report}"
               f"dashboard:   hpo{flag} dashboard   (then open http://127.0.0.1:8080)", err=True)
    ctx.exit(code)


@main.command()
@click.argument("study")
@click.option("--top", "top", type=click.IntRange(min=1), default=3, show_default=True,
              help="Confirm the K best configurations of STUDY.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Trainings of each, with fresh seeds.")
@click.option("--name", help="The confirmation study's name [default: STUDY-confirm].")
@_pool_options
@_common_options
@click.pass_context
def confirm(ctx: click.Context, study: str, top: int, repeats: int, name: str | None, **options: Any) -> None:
    """Train STUDY's best configurations again with fresh seeds, on the whole training set, and
    score them on the test set: the search's value beside a mean and spread one can defend.

    The runs are a study of their own (STUDY-confirm), linked to the trials they confirm.
    """
    _, search_study, search = _existing_study(ctx, study)
    best = confirmation.top_trials(search_study, search, top)
    definition = confirmation.confirmation_definition(search, best, repeats, name)
    problem = name_problem(definition.name)
    if problem:
        raise ConfigError(f"--name {definition.name!r} {problem}")
    confirmation.check_fresh_seeds(search_study, search, definition)
    if len(best) < top:
        click.echo(f"hpo: study {study} has {len(best)} COMPLETE configurations; confirming those", err=True)
    pool = _Pool(ctx, [definition.name], **options)
    storage = _open(ctx, retry_for=60.0)
    confirm_study, _ = create_study(
        storage, definition, {records.CONFIRMS: confirmation.link(search_study, search, best)})
    code = pool.run([(confirm_study, definition)])
    rows = confirmation.confirmed_rows(confirm_study, definition)
    click.echo(formats.render(rows, "table", columns=confirmation.CONFIRMED_COLUMNS), nl=False)
    flag = pool.storage_flag()
    click.echo(f"search {search.metric} beside the confirmed test accuracy; again: "
               f"hpo{flag} export {definition.name}", err=True)
    ctx.exit(code)


@main.command()
@click.argument("study", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_common_options
@click.pass_context
def status(ctx: click.Context, study: str | None, fmt: str) -> None:
    """Trials by state, queue coverage and the best value, per study."""
    studies = []
    if study:
        studies.append(_existing_study(ctx, study)[1:])
    else:
        try:
            storage = _open(ctx, create=False)
        except StorageEmpty:
            pass  # nothing created yet, and nothing is
        else:
            # Every study hpo created (other Optuna studies may share the database).
            studies = [load_study(storage, s.study_name) for s in optuna.get_all_study_summaries(storage)
                       if records.DEFINITION in s.user_attrs]
    # Reading writes nothing: recovering dead workers' trials is for workers (hpo.workers.liveness).
    statuses = [study_status(optuna_study, definition) for optuna_study, definition in studies]
    if fmt == "json":
        click.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
        return
    if not statuses:
        click.echo("no studies yet; create one with: hpo create studies/exp3.toml", err=True)
        return
    rows = [{
        "study": s.name, "sampler": s.sampler,
        **{state: s.points[state] for state in ("pending", "running", "complete", "pruned", "failed")},
        "total": s.total_points, "duplicates": s.duplicates,
        "best": s.best_value, "best_trial": s.best_trial,
    } for s in statuses]
    click.echo(formats.render(rows, "table"), nl=False)
    for s in statuses:
        repeats = s.repeat_summary()
        if len(repeats) > 1:
            click.echo(f"{s.name}: " + "; ".join(repeats))
        if s.running_epochs:
            click.echo(f"{s.name}: running trials at epoch {s.running_progress()}")
        for point in s.failed_points:
            click.echo(f"{s.name}: point {point['slot']} {point['params']} failed after "
                       f"{point['attempts']} attempts: {point['error']}")


@main.command()
@click.argument("study")
@click.option("--format", "fmt", type=click.Choice(list(formats.FORMATS)), default="table", show_default=True)
@click.option("--output", "-o", metavar="FILE",
              help="Write to FILE (a file is replaced whole; a pipe or device is written into; - is stdout).")
@click.option("--by", type=click.Choice(["trial", "configuration"]),
              help="One row per trial, or per configuration: n, mean and std over its COMPLETE trials "
                   "[default: trial; configuration for a confirmation study].")
@_common_options
@click.pass_context
def export(ctx: click.Context, study: str, fmt: str, output: str | None, by: str | None) -> None:
    """Write STUDY's best-trial table, best first.

    A search that has been confirmed (hpo confirm) gets the confirmed mean and spread of test
    accuracy beside each confirmed configuration; a confirmation study shows, per configuration,
    the search's value beside them.
    """
    target = paths.output_file(output, "--output") if output else None
    name = study
    if _is_study_file(study):
        name = load_definition(study).name
    storage, optuna_study, definition = _existing_study(ctx, name)
    confirms = records.CONFIRMS in optuna_study.user_attrs
    by = by or ("configuration" if confirms else "trial")
    columns: Sequence[str]
    if by == "configuration" and confirms:
        rows, columns = confirmation.confirmed_rows(optuna_study, definition), confirmation.CONFIRMED_COLUMNS
    elif by == "configuration":
        rows, columns = configuration_rows(optuna_study, definition), configuration_columns(definition.metric)
    else:
        rows, columns = best_trial_rows(optuna_study, definition), EXPORT_COLUMNS
    confirmed = confirmation.confirmed_by_configuration(storage, name)
    if confirmed:
        rows = [{**row, **confirmation.confirmed_columns(row, confirmed)} for row in rows]
        columns = (*columns, *confirmation.CONFIRMED_EXTRA)
    text = formats.render(rows, fmt, columns=columns)
    if target is None:
        click.echo(text, nl=False)
        return
    paths.write_text(target, text, "--output")
    click.echo(f"wrote {len(rows)} rows to {output}", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@_artifacts_option()
@_common_options
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, artifacts: str | None) -> None:
    """Serve optuna-dashboard on the same storage (loopback only unless --host says otherwise)."""
    _artifact_folder(ctx, artifacts, make=False)
    storage = _open(ctx)  # a damaged or foreign database is refused before the folder is made
    check_whole(storage)
    folder = _artifact_folder(ctx, artifacts)
    serve(storage, host=host, port=port, artifacts=folder)


@main.command()
@click.argument("studies", nargs=-1)
@click.option("--output", "-o", required=True, type=click.Path(), metavar="DIR",
              help="Folder for report.md, its CSV files and figures (created if needed).")
@_artifacts_option()
@_common_options
@click.pass_context
def report(ctx: click.Context, studies: tuple[str, ...], output: str, artifacts: str | None) -> None:
    """Write the report into DIR: Table 1 reproduced, figures and findings.

    Without STUDIES, covers the report's experiments, the searches (tpe, random) and their
    confirmations in the storage; other studies named here get their best-trial table and
    their best trial's plots. Searches get a progress figure and their confirmed configurations.
    """
    from hpo.results.report import write_report  # noqa: PLC0415  (matplotlib: only this command)

    for name in studies:
        _checked_name(name)
    folder = _artifact_folder(ctx, artifacts, make=False)
    storage = _open(ctx, create=False)
    paths.folder(output, "--output", make=False)
    try:
        path = write_report(storage, list(studies), Path(output), artifacts=folder if folder.is_dir() else None,
                            storage_url=_storage_url(ctx))
    except OSError as exc:  # a disk that fills while the figures are written
        raise OutputError(f"--output {output}: cannot write the report: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}", err=True)
