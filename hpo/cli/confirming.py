"""``hpo confirm``: a search's best configurations trained again with fresh seeds."""

from __future__ import annotations

from typing import Any

import click

from hpo.cli.common import common_options, existing_study, open_storage_of, pool_options, storage_flag, url
from hpo.results import formats
from hpo.results.rows import confirmed_columns_of, confirmed_rows
from hpo.storage import records
from hpo.study import confirm as confirmation
from hpo.study.create import create_study
from hpo.workers.inputs import Loader
from hpo.workers.pool import Pool


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
    inputs = Loader(options["data"], options["subset"]).inputs(definition, attrs=search_study.user_attrs)
    confirm_study, _ = create_study(open_storage_of(ctx, retry_for=60.0), definition, {records.CONFIRMS: planned.link},
                                    data=inputs.identity, builder=inputs.builder)
    code = pool.run([(confirm_study, definition)])
    rows = confirmed_rows(confirm_study, definition)
    click.echo(formats.render(rows, "table", confirmed_columns_of(definition)), nl=False)
    click.echo(f"search {search.metric} beside the confirmed test accuracy; again: "
               f"hpo{storage_flag(ctx)} export {definition.name}", err=True)
    ctx.exit(code)
