"""What every ``hpo`` command shares: logging, the options given before or after the
subcommand, the storage URL resolved once, and studies looked up by name."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import click
import optuna
from optuna import Study
from optuna.storages import RDBStorage

from hpo.api.prepare import checked_name, existing
from hpo.api.worker import is_study_file
from hpo.storage.open import open_storage
from hpo.storage.url import StorageURL
from hpo.storage import records
from hpo.study.definition import StudyDefinition


def _not_retracing(record: logging.LogRecord) -> bool:
    """TensorFlow warns that a tf.function was traced again when each trial builds a model of its
    own, which is what a study does: a warning with nothing to act on."""
    return "triggered tf.function retracing" not in record.getMessage()


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("optuna", "absl", "tensorflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    tensorflow = logging.getLogger("tensorflow")
    tensorflow.removeFilter(_not_retracing)
    if not debug:
        tensorflow.addFilter(_not_retracing)
    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.WARNING)
    # hpo relies on metric names on purpose; the notice helps no user.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def set_root(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A callback that keeps an option given after the subcommand (``hpo status --storage URL``)."""
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value:
            ctx.find_root().ensure_object(dict)[key] = value
            if key == "debug":
                setup_logging(True)

    return callback


def stacked(options: Sequence[Callable[..., Any]]) -> Callable[..., Any]:
    """One decorator for several click options, in the order listed (as --help shows them)."""
    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


STORAGE_HELP = "Study database [env HPO_STORAGE; default sqlite:///hpo.db]."
common_options = stacked([  # --storage and --debug after the subcommand too, as in optuna and datasette
    click.option("--storage", metavar="URL", expose_value=False, callback=set_root("storage"), help=STORAGE_HELP),
    click.option("--debug", is_flag=True, expose_value=False, callback=set_root("debug"),
                 help="Show tracebacks and debug logs."),
])


def artifacts_option(help_text: str = "Artifact folder (see hpo worker).") -> Callable[..., Any]:
    return click.option("--artifacts", envvar="HPO_ARTIFACTS", metavar="DIR", help=help_text)


source_options = [  # which data: every command that creates or trains a study
    click.option("--data", envvar="HPO_DATA", metavar="PATH",
                 help="A local copy of the named data set the studies train on (cifar10, mnist, ...): an archive "
                      "(an image folder's .tar.gz, the official cifar-10-python.tar.gz or cifar-100-python.tar.gz), "
                      "a folder or an .npz [env HPO_DATA; default: Keras' download]. A study whose data.source is "
                      "a path reads that path."),
    click.option("--subset", type=click.IntRange(min=10), metavar="N",
                 help="Train on a stratified subset of N images (N/5 test images); recorded with the study when "
                      "it is created [default: the study's]."),
]
data_options = [
    *source_options,
    click.option("--threads", type=click.IntRange(min=1, max=1024), metavar="T", help="CPU threads per worker."),
    click.option("--checkpoint-every", envvar="HPO_CHECKPOINT_EVERY", type=click.IntRange(min=0), default=1,
                 show_default=True, metavar="E",
                 help="Save a running trial's state every E epochs (and when stopped), for a retry to go on "
                      "from; 0: never [env HPO_CHECKPOINT_EVERY]."),
]
pool_options = stacked([  # a command that runs a pool of workers here (launch, confirm)
    click.option("-n", "--workers", type=click.IntRange(min=1), help="Worker processes [default: from the hardware]."),
    click.option("--gpus", metavar="IDS", help="Comma-separated GPU ids, workers placed round-robin."),
    *data_options,
    artifacts_option(),
    click.option("--logs", "log_dir", default="hpo-logs", show_default=True, help="Folder for worker logs."),
])


def url(ctx: click.Context) -> StorageURL:
    """The storage URL (``--storage``, ``HPO_STORAGE``, or hpo.db here), checked once."""
    obj = ctx.find_root().ensure_object(dict)
    if not isinstance(obj.get("url"), StorageURL):
        obj["url"] = StorageURL.resolve(obj.get("storage"))
    return obj["url"]


def open_storage_of(ctx: click.Context, *, retry_for: float = 0.0, create: bool = True) -> RDBStorage:
    return open_storage(url(ctx), retry_for=retry_for, create=create)


def existing_study(ctx: click.Context, name: str) -> tuple[RDBStorage, Study, StudyDefinition]:
    """A study that must already exist; reading it writes nothing, not even an empty schema."""
    study, definition = existing(url(ctx), name)
    return records.storage_of(study), study, definition


def invoked_as() -> str:
    """How to run hpo again as this process was run, for the commands printed after a run: ``hpo``
    where that is on the PATH, else the script's path (``.venv/bin/hpo``), else ``python -m hpo``."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "hpo":
        found = shutil.which("hpo")
        if found and os.path.realpath(found) == os.path.realpath(script):
            return "hpo"
        return shlex.quote(script)
    python = sys.executable or "python3"
    return f"{shlex.quote(python)} -m hpo"


def storage_flag(ctx: click.Context) -> str:
    """' --storage URL' for the commands printed after a run; nothing where HPO_STORAGE (or the
    default) named the storage: it still does. A URL with a password is never printed: the
    commands then read it from HPO_STORAGE (see :func:`storage_hint`)."""
    if not ctx.find_root().ensure_object(dict).get("storage"):
        return ""
    return ' --storage "$HPO_STORAGE"' if _password_withheld(ctx) else f" --storage '{url(ctx)}'"


def storage_hint(ctx: click.Context) -> str:
    """The line that goes before the printed commands when their URL is read from HPO_STORAGE."""
    if not _password_withheld(ctx):
        return ""
    return (f"(the storage URL's password is not printed; first: export HPO_STORAGE='{url(ctx)}', "
            "with the password in place of ***)\n")


def _password_withheld(ctx: click.Context) -> bool:
    """Whether --storage gave a URL with a password, which the printed commands leave out."""
    return bool(ctx.find_root().ensure_object(dict).get("storage")) and bool(url(ctx).parsed.password)


__all__ = ["checked_name", "is_study_file"]  # re-exported for the commands
