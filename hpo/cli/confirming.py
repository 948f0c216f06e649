"""``hpo confirm``: a search's best configurations trained again with fresh seeds."""

from __future__ import annotations

from typing import Any

import click

from hpo.api.run import PoolOptions
from hpo.api.run import confirm as confirm_search
from hpo.api.run import plan_confirmation
from hpo.cli.common import common_options, invoked_as, pool_options, storage_flag, storage_hint, url
from hpo.results import formats
from hpo.results.rows import confirmed_columns_of, confirmed_rows


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
    planned = plan_confirmation(url(ctx), study, top=top, repeats=repeats, name=name)
    found = len(planned.confirmation.trials)
    if found < top:
        click.echo(f"hpo: study {study} has {found} COMPLETE configurations; confirming those", err=True)
    ready, outcome = confirm_search(url(ctx), planned, PoolOptions(**options))
    definition = planned.confirmation.definition
    rows = confirmed_rows(ready.study, definition)
    click.echo(formats.render(rows, "table", confirmed_columns_of(definition)), nl=False)
    click.echo(f"{storage_hint(ctx)}search {planned.search.metric} beside the confirmed test accuracy; again: "
               f"{invoked_as()}{storage_flag(ctx)} export {definition.name}", err=True)
    ctx.exit(outcome.code)
