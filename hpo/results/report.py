"""``hpo report``: the report's Table 1 reproduced from the studies, with figures and findings.

Table 1 is all 30 of the report's rows, each measured on the stored trials (:mod:`hpo.results.table1`):
a row that no study has run says ``not run``. Everything in ``report.md`` is computed from the
storage, and the findings are derived from the same numbers as the table.

Every file is written inside the output folder: names derived from study names are sanitised,
and each path is resolved and checked before anything is written.
"""

from __future__ import annotations

import datetime
import logging
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

import optuna

from hpo import paths
from hpo.results import plots

from hpo.storage import records

from hpo.results import formats
from hpo.study.definition import PARAMETERS
from hpo.results.curves import search_curve
from hpo.results.rows import (best_trial_rows, confirmed_after, configuration_columns, configuration_rows,
                              confirmed_rows_of, export_columns)
from hpo.errors import StudyNotFound
from hpo.storage.url import StorageURL
from hpo.study.create import load_study
from hpo.results.table1 import (BEYOND_NOISE, NOISE_RULE, NOISE_TEST, NOT_RUN, TABLE1_COLUMNS, StudyResult, report_rows,
                        table1_rows)

log = logging.getLogger(__name__)

OTHER_TABLE_ROWS = 10  # best trials shown for a study outside Table 1
LISTED_ROWS = 8       # rows beyond noise spelled out in the findings


# --- Findings ------------------------------------------------------------------------------------

def findings(rows: Sequence[dict[str, Any]], experiments: Sequence[StudyResult],
             others: Sequence[StudyResult]) -> list[str]:
    """Markdown bullet lines, every number taken from Table 1's rows and the studies' trials.
    Table 1's lines only where one of the report's experiments is among the studies: a report on
    studies of one's own opens with their results."""
    measured = [row for row in rows if row["mean_test_accuracy"] is not None]
    lines = []
    if not experiments:
        lines += _best_trials(others)
        return lines + _data_findings(others)
    if measured:
        top = max(measured, key=lambda row: row["mean_test_accuracy"])
        lines.append(f"- Best configuration of Table 1: experiment {top['experiment']}, {_describe(top)}: "
                     f"mean test accuracy {top['mean_test_accuracy']:.4f} over {top['n']} run(s) "
                     f"(report: {top['report_accuracy']:.4f}).")
    else:
        lines.append("- No row of Table 1 has been run yet.")
    not_run = sum(row["n"] == 0 for row in rows)
    if not_run:
        lines.append(f"- {not_run} of the {len(rows)} rows of Table 1 not run yet (`{NOT_RUN}` in the table).")
    lines += _best_trials([*experiments, *others])
    by_experiment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_experiment[row["experiment"]].append(row)
    for experiment, group in sorted(by_experiment.items()):
        run = [row for row in group if row["diff_accuracy"] is not None]
        if not run:
            lines.append(f"- Experiment {experiment}: none of its {len(group)} rows run yet.")
            continue
        mad = statistics.fmean(abs(row["diff_accuracy"]) for row in run)
        lines.append(f"- Experiment {experiment}: mean absolute difference from the report in test accuracy "
                     f"{mad:.4f} ({mad * 100:.1f} points) over {len(run)} of {len(group)} rows.")
    lines += _beyond_noise(rows, len(measured))
    lines += _data_findings([*experiments, *others])
    return lines


def _best_trials(results: Sequence[StudyResult]) -> list[str]:
    lines = []
    for result in results:
        best = result.best
        if best is None:
            lines.append(f"- Study {result.name}: no COMPLETE trial yet.")
            continue
        test = result.definition.test_metric
        score = best.user_attrs.get(test)
        params = _describe(records.trial_params(best), result.definition.parameter_names)
        tested = "" if test == result.definition.metric else \
            f", {test.replace('_', ' ')} {'n/a' if score is None else f'{score:.4f}'}"
        lines.append(f"- Best trial of study {result.name}: trial {best.number} ({params}), "
                     f"{result.definition.metric} {best.value:.4f}{tested}.")
    return lines


def _beyond_noise(rows: Sequence[dict[str, Any]], run: int) -> list[str]:
    beyond = sorted((row for row in rows if BEYOND_NOISE in row["note"]), key=lambda r: -abs(r["diff_accuracy"]))
    below = sum(row["diff_accuracy"] < 0 for row in beyond)
    lines = [f"- Rows that differ from the report beyond run-to-run noise "
             f"({NOISE_TEST}): {len(beyond)} of the {run} rows run"
             + (f", {below} below the report and {len(beyond) - below} above; largest first:" if beyond else ".")]
    lines += [f"  - experiment {row['experiment']}, {_describe(row)}: measured {row['mean_test_accuracy']:.4f}, "
              f"report {row['report_accuracy']:.4f}, diff {row['diff_accuracy']:+.4f} "
              f"(tolerance {row['tolerance']:.4f})" for row in beyond[:LISTED_ROWS]]
    if len(beyond) > LISTED_ROWS:
        lines.append(f"  - and {len(beyond) - LISTED_ROWS} more, marked `{BEYOND_NOISE}` in Table 1.")
    return lines


def _describe(params: Mapping[str, Any], names: Sequence[str] = PARAMETERS) -> str:
    return ", ".join(f"{name} {params[name]:g}" if isinstance(params[name], float) else f"{name} {params[name]}"
                     for name in names if params.get(name) is not None)


def _data_findings(results: Sequence[StudyResult]) -> list[str]:
    sizes = sorted({int(t.user_attrs[records.TRAIN_IMAGES]) for r in results for t in r.complete
                    if t.user_attrs.get(records.TRAIN_IMAGES) is not None})
    subset = any(t.user_attrs.get(records.SUBSET) for r in results for t in r.complete)
    if not sizes:
        return []
    line = f"- Training images per trial: {', '.join(map(str, sizes))}."
    if subset:
        line += (" Some trials trained on a subset of the data (`--subset`): their accuracies are not "
                 "comparable with the report's, which trained on all 50,000 images.")
    return [line]


# --- Writing -------------------------------------------------------------------------------------

def select(storage: optuna.storages.BaseStorage, names: Sequence[str]) -> tuple[list[StudyResult], list[StudyResult]]:
    """The experiment studies (in report order) and the other studies to report on (without
    ``rows`` yet: :func:`table1_rows` fills them)."""
    if not names:
        by_name = records.records_by_name(storage)
        names = [name for name, record in by_name.items() if _reported(record)]
        if not names:  # an empty report would say nothing: say which studies there are to name
            own = [name for name, record in by_name.items() if records.DEFINITION in record]
            raise StudyNotFound("no experiment, search or confirmation to report by default; name the studies: "
                                f"hpo report {' '.join(own[:5])} --output DIR" if own else "no studies to report yet")
    results = [StudyResult(*load_study(storage, name)) for name in dict.fromkeys(names)]
    experiments = sorted((r for r in results if r.definition.experiment is not None),
                         key=lambda r: (r.definition.experiment, r.name))
    others = [r for r in results if r.definition.experiment is None]
    return experiments, others


def _reported(attrs: Mapping[str, Any]) -> bool:
    """Whether a study is in a report that names none: the report's experiments, the searches
    (tpe, random) and their confirmations."""
    definition = attrs.get(records.DEFINITION) or {}
    return (definition.get("experiment") is not None or definition.get("sampler") in ("tpe", "random")
            or records.CONFIRMS in attrs)


def write_report(storage: optuna.storages.BaseStorage, names: Sequence[str], output: Path, *,
                 artifacts: Path | None, storage_url: StorageURL) -> Path:
    """Write report.md, table1.csv and the figures into ``output``; returns report.md's path.

    The studies are read (and a damaged database refused) before the folder is made."""
    experiments, others = select(storage, names)
    rows = table1_rows(experiments)
    md = ["# hpo report", "",
          f"Storage `{storage_url}`, "
          f"written {datetime.datetime.now().isoformat(timespec='seconds')}.", "",
          "## Findings", "", *findings(rows, experiments, others), ""]
    out = paths.OutputFolder(output)
    if experiments:  # the report's Table 1, where one of its experiments is here
        md += _table1_section(out, experiments, rows, named=bool(names))
    for result in experiments:
        if result.definition.experiment == 3 and result.rows:
            path = plots.grid_heatmap(result.rows, out.path(f"{out.stem(result.name)}_heatmap.png"),
                                      f"Experiment 3 ({result.name}): test accuracy by learning rate and batch size")
            md += [f"### Experiment 3 ({result.name}): measured and reported test accuracy", "",
                   f"![heatmap]({path.name})", ""]
    searches = [r for r in [*experiments, *others] if r.definition.sampler in ("tpe", "random")]
    if searches:
        md += _search_section(out, storage, searches, experiments)
    md += ["## Best trial of each study", ""]
    for result in [*experiments, *others]:
        md += _study_section(out, storage, result, artifacts)
    path = out.path("report.md")
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    log.info("report written to %s", path)
    return path


def _search_section(out: paths.OutputFolder, storage: optuna.storages.BaseStorage, searches: Sequence[StudyResult],
                    experiments: Sequence[StudyResult]) -> list[str]:
    """The searches' progress (best so far against epochs and wall time) and their confirmed
    configurations: the search's value beside the confirmed mean and spread of test accuracy.

    The reference lines are drawn only where they belong: the report's numbers beside searches
    on the report's data (all of CIFAR-10), a stored exp3 grid's best beside searches on the
    grid's own data."""
    references: dict[str, float] = {}
    on_report_data = all(r.on_report_data for r in searches)
    if on_report_data:
        references["report's best test accuracy"] = max(row.reference.test_accuracy for row in report_rows())
    for result in experiments:
        best = result.best
        same_data = all(s.data is not None and result.data is not None and s.data.difference(result.data) is None
                        for s in searches)
        if result.definition.experiment == 3 and best is not None and best.value is not None and same_data:
            references[f"grid's best {result.definition.metric} ({result.name})"] = best.value
    if on_report_data and not any(name.startswith("grid's") for name in references):
        references["report's grid best test accuracy (exp3)"] = max(  # no exp3 study on this data: the report's
            row.reference.test_accuracy for row in report_rows() if row.experiment == 3)
    metric = searches[0].definition.metric
    curves = {r.name: search_curve(r.study, r.definition) for r in searches if r.definition.metric == metric}
    path = plots.search_progress(curves, references, out.path("search_progress.png"), metric)
    said = ("the reference lines are the report's best run and the exp3 grid's best (the stored grid study's, "
            "else the report's)." if on_report_data else
            "the searches did not train on the report's data (all of CIFAR-10), so the report's numbers are not "
            "drawn" + ("; the line is the exp3 grid's best on the same data." if references else "."))
    lines = ["## The searches", "",
             f"Best {metric} so far of each search against the training epochs it spent and against wall time; "
             f"{said}", "", f"![search progress]({path.name})", ""]
    rows = [{"search": result.name, **row} for result in searches for row in confirmed_rows_of(storage, result.name)]
    if rows:
        names = dict.fromkeys(name for result in searches for name in result.definition.parameter_names)
        after = dict.fromkeys(c for result in searches for c in confirmed_after(result.definition))
        columns = ("search", "confirmation", "rank", *names, *after)
        out.path("confirmed.csv").write_text(formats.render(rows, "csv", columns), encoding="utf-8")
        lines += ["### Confirmed top configurations", "",
                  "Each search's best configurations trained again with fresh seeds on the whole training set "
                  "(`hpo confirm`): `search_value` is what the search chose it by, `mean_test_accuracy` ± "
                  "`std_test_accuracy` over `n` confirmation runs is the number to quote "
                  "(also in [confirmed.csv](confirmed.csv)).", "",
                  formats.render(rows, "md", columns), ""]
    else:
        lines += ["No search confirmed yet: `hpo confirm STUDY --top 3 --repeats 3` trains its best "
                  "configurations again with fresh seeds.", ""]
    return lines


def _table1_section(out: paths.OutputFolder, experiments: Sequence[StudyResult], rows: list[dict[str, Any]], *,
                    named: bool) -> list[str]:
    out.path("table1.csv").write_text(formats.render(rows, "csv", TABLE1_COLUMNS), encoding="utf-8")
    present = {r.definition.experiment for r in experiments}
    missing = [str(e) for e in dict.fromkeys(row.experiment for row in report_rows()) if e not in present]
    lines = ["## Table 1, reproduced", "",
             f"{len(rows)} rows (also in [table1.csv](table1.csv)). `mean_test_accuracy` and `mean_test_loss` are "
             "means over the COMPLETE trials with exactly the row's parameters, `n` their number, "
             "`std_test_accuracy` their sample standard deviation; `report_*` are the report's numbers and "
             f"`diff_* = mean - report`. `tolerance` and `{BEYOND_NOISE}`: {NOISE_RULE}.", ""]
    if missing:
        where = "among the studies named" if named else "in this storage"
        lines += [f"Experiment(s) {', '.join(missing)}: no study {where}, so their rows say `{NOT_RUN}` "
                  "(create them with `hpo create studies/exp1.toml` ... `exp4.toml`).", ""]
    return lines + [formats.render(rows, "md", TABLE1_COLUMNS)]


def _listed(out: paths.OutputFolder, name: str, title: str, rows: Sequence[dict[str, Any]],
            columns: Sequence[str]) -> list[str]:
    """The first rows of a table in Markdown, all of them in the CSV file ``name``."""
    out.path(name).write_text(formats.render(rows, "csv", columns), encoding="utf-8")
    return [f"{title}, {min(len(rows), OTHER_TABLE_ROWS)} of {len(rows)} (all in [{name}]({name})):", "",
            formats.render(rows[:OTHER_TABLE_ROWS], "md", columns)]


def _study_section(out: paths.OutputFolder, storage: optuna.storages.BaseStorage, result: StudyResult,
                   artifacts: Path | None) -> list[str]:
    stem = out.stem(result.name)
    lines = [f"### {result.name}", "", result.definition.description, ""]
    if result.definition.experiment is None:
        lines += _listed(out, f"{stem}_best_trials.csv", "Best trials",
                         best_trial_rows(result.study, result.definition), export_columns(result.definition))
    configurations = configuration_rows(result.study, result.definition)
    if len(configurations) < len(result.complete):  # repeats: rank configurations by their mean, not one lucky run
        lines += _listed(out, f"{stem}_configurations.csv", "Configurations over their repeats, by mean "
                         f"{result.definition.metric}", configurations, configuration_columns(result.definition))
    best = result.best
    if best is None:
        return lines + ["No COMPLETE trial yet.", ""]
    described = _describe(records.trial_params(best), result.definition.parameter_names)
    lines += [f"Best trial: {best.number} ({described}), {result.definition.metric} {best.value:.4f}.", ""]
    figures, problem = ({}, "no artifact folder") if artifacts is None else \
        plots.best_trial_figures(storage, best, artifacts, out.path, stem)
    lines += [f"![{kind}]({path.name})" for kind, path in figures.items()]
    if problem:
        lines.append(f"Trial {best.number}: {problem}.")
    return lines + [""]
