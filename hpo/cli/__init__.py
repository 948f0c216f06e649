"""The ``hpo`` command line: it parses and prints; the work is done by the modules it calls.

Results go to stdout (``--format``); logs and progress to stderr. Every :class:`HpoError` is
translated here, once, into one line and exit code 2; ``--debug`` shows the traceback instead.
Keras and matplotlib take seconds to load, so the modules that use them (the objective, the
artifacts, the report) are imported by the commands that need them.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import click

from hpo.cli import confirming, running, showing
from hpo.cli.common import STORAGE_HELP, setup_logging
from hpo.errors import HpoError


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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--storage", metavar="URL", help=STORAGE_HELP)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="hpo")
@click.pass_context
def main(ctx: click.Context, storage: str | None, debug: bool) -> None:
    """Hyperparameter optimisation of Keras image classifiers on Optuna.

    --storage and --debug go before or after the subcommand.
    """
    ctx.ensure_object(dict).update(storage=storage, debug=debug)
    setup_logging(debug)


for command in (running.create, running.worker, running.launch, confirming.confirm,
                showing.status, showing.export, showing.dashboard, showing.report):
    main.add_command(command)
