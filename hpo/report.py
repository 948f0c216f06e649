"""``hpo report``: the report's Table 1 reproduced from the studies, with figures and findings.

Table 1's rows are the ``[[reference]]`` rows of the experiment studies (``experiment`` 1..4),
in the report's order. Each is measured as the mean over the COMPLETE trials that ran exactly
its parameters. Everything in ``report.md`` is computed from the storage: a row not run yet
says so, and the findings are derived from the same numbers as the table.

Every file is written inside the output folder: names derived from study names are sanitised,
and each path is resolved and checked before anything is written.
"""

from __future__ import annotations

import datetime
import logging
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import plots, stored, tables
from hpo.config import PARAMETERS, Reference, StudyDefinition
from hpo.errors import ConfigError, HpoError
from hpo.results import EXPORT_COLUMNS, best_trial_rows, trial_params
from hpo.storage import display_url
from hpo.study import load_study

log = logging.getLogger(__name__)

NOISE_FLOOR = 0.01   # run-to-run noise of one training, in test accuracy (seed README)
OTHER_TABLE_ROWS = 10  # best trials shown for a study outside Table 1
LISTED_ROWS = 8       # rows beyond noise spelled out in the findings
NOISE_TEST = "|diff_accuracy| > max(0.01, 2·std·√(1 + 1/n))"
NOISE_RULE = (f"a row differs from the report beyond run-to-run noise when {NOISE_TEST}: the report's "
              "number is ONE training run, so the difference between it and the mean of n measured "
              "runs varies with standard deviation std·√(1 + 1/n), std being the measured runs' "
              "spread; at least one percentage point (a single run's noise) where that is larger")

TABLE1_COLUMNS = ("study", "experiment", "architecture", "learning_rate", "batch_size", "epochs",
                  "augmentation", "n", "mean_test_accuracy", "std_test_accuracy", "mean_test_loss",
                  "report_accuracy", "report_loss", "diff_accuracy", "diff_loss", "tolerance", "note")
NOT_RUN = "not run"
BEYOND_NOISE = "beyond noise"


@dataclass
class StudyResult:
    """One study as the report reads it."""

    study: optuna.Study
    definition: StudyDefinition
    rows: list[dict[str, Any]] = field(default_factory=list)   # its Table 1 rows

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def complete(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    @property
    def best(self) -> FrozenTrial | None:
        return self.study.best_trial if self.complete else None


# --- Table 1 -------------------------------------------------------------------------------------

def reference_params(definition: StudyDefinition, reference: Reference) -> dict[str, Any]:
    """The full configuration of a reference row: its own params over the study's fixed ones."""
    return {**definition.fixed, **reference.params}


def same_params(wanted: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    for name, value in wanted.items():
        other = actual.get(name)
        if isinstance(value, float) or isinstance(other, float):
            if other is None or not math.isclose(float(value), float(other), rel_tol=1e-9):
                return False
        elif value != other:
            return False
    return True


def tolerance(std: float | None, n: int) -> float:
    """Two standard deviations of (mean of n runs - one run), floored at one point (see NOISE_RULE)."""
    if std is None or n < 2:
        return NOISE_FLOOR
    return max(NOISE_FLOOR, 2 * std * math.sqrt(1 + 1 / n))


def table1_rows(result: StudyResult) -> list[dict[str, Any]]:
    """One row per reference of the study, measured on its COMPLETE trials."""
    complete = result.complete
    rows = []
    for reference in result.definition.references:
        params = reference_params(result.definition, reference)
        runs = [t for t in complete if same_params(params, trial_params(t))]
        rows.append(_measure(result, params, reference, runs))
    return rows


def _measure(result: StudyResult, params: Mapping[str, Any], reference: Reference,
             runs: list[FrozenTrial]) -> dict[str, Any]:
    accuracies = [float(t.user_attrs["test_accuracy"]) for t in runs if t.user_attrs.get("test_accuracy") is not None]
    losses = [float(t.user_attrs["test_loss"]) for t in runs if t.user_attrs.get("test_loss") is not None]
    accuracy = statistics.fmean(accuracies) if accuracies else None
    loss = statistics.fmean(losses) if losses else None
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else None
    limit = tolerance(std, len(accuracies))
    diff = accuracy - reference.test_accuracy if accuracy is not None else None
    diverged = sum(1 for t in runs if t.user_attrs.get("diverged"))
    notes = [NOT_RUN if not runs else "", f"diverged {diverged} of {len(runs)}" if diverged else "",
             BEYOND_NOISE if diff is not None and abs(diff) > limit else ""]
    note = ", ".join(filter(None, notes))
    return {
        "study": result.name,
        "experiment": result.definition.experiment,
        **{name: params.get(name) for name in PARAMETERS},
        "n": len(runs),
        "mean_test_accuracy": accuracy,
        "std_test_accuracy": std,
        "mean_test_loss": loss,
        "report_accuracy": reference.test_accuracy,
        "report_loss": reference.test_loss,
        "diff_accuracy": diff,
        "diff_loss": loss - reference.test_loss if loss is not None else None,
        "tolerance": limit if runs else None,
        "note": note,
    }


# --- Findings ------------------------------------------------------------------------------------

def findings(experiments: Sequence[StudyResult], others: Sequence[StudyResult]) -> list[str]:
    """Markdown bullet lines, every number taken from the rows and trials."""
    rows = [row for result in experiments for row in result.rows]
    measured = [row for row in rows if row["mean_test_accuracy"] is not None]
    lines = []
    if measured:
        top = max(measured, key=lambda row: row["mean_test_accuracy"])
        lines.append(f"- Best configuration of Table 1: experiment {top['experiment']}, {_describe(top)}: "
                     f"mean test accuracy {top['mean_test_accuracy']:.4f} over {top['n']} run(s) "
                     f"(report: {top['report_accuracy']:.4f}).")
    elif rows:
        lines.append("- No row of Table 1 has been run yet.")
    for result in [*experiments, *others]:
        best = result.best
        if best is None:
            lines.append(f"- Study {result.name}: no COMPLETE trial yet.")
            continue
        accuracy = best.user_attrs.get("test_accuracy")
        lines.append(f"- Best trial of study {result.name}: trial {best.number} ({_describe(trial_params(best))}), "
                     f"{result.definition.metric} {best.value:.4f}, test accuracy "
                     f"{'n/a' if accuracy is None else f'{accuracy:.4f}'}.")
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
    lines += _beyond_noise(rows, len(measured)) if rows else []
    lines += _data_findings([*experiments, *others])
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


def _describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {params[name]:g}" if isinstance(params[name], float) else f"{name} {params[name]}"
                     for name in PARAMETERS if params.get(name) is not None)


def _data_findings(results: Sequence[StudyResult]) -> list[str]:
    sizes = sorted({int(t.user_attrs["train_images"]) for r in results for t in r.complete
                    if t.user_attrs.get("train_images") is not None})
    subset = any(t.user_attrs.get("subset") for r in results for t in r.complete)
    if not sizes:
        return []
    line = f"- Training images per trial: {', '.join(map(str, sizes))}."
    if subset:
        line += (" Some trials trained on a subset of the data (`--subset`): their accuracies are not "
                 "comparable with the report's, which trained on all 50,000 images.")
    return [line]


# --- Writing -------------------------------------------------------------------------------------

def safe_name(name: str) -> str:
    """A file-name stem from a study name: letters, digits, '-' and '_' only."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")
    return stem[:80] or "study"


class Output:
    """The output folder: every path handed out is unique and inside it."""

    def __init__(self, folder: Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder}: --output must be a folder, not a file")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder.resolve()
        self.stems: dict[str, str] = {}

    def path(self, name: str) -> Path:
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder) or path.parent != self.folder:
            raise HpoError(f"refusing to write {name!r} outside {self.folder}")
        return path

    def stem(self, study_name: str) -> str:
        """The study's file-name stem, the same on every call, and no other study's."""
        if study_name not in self.stems:
            stem, i = safe_name(study_name), 2
            while stem in self.stems.values():
                stem, i = f"{safe_name(study_name)}_{i}", i + 1
            self.stems[study_name] = stem
        return self.stems[study_name]


def select(storage: optuna.storages.BaseStorage, names: Sequence[str]) -> tuple[list[StudyResult], list[StudyResult]]:
    """The experiment studies (in report order) and the other studies to report on."""
    if not names:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)
                 if (s.user_attrs.get(stored.DEFINITION) or {}).get("experiment") is not None]
    results = [StudyResult(*load_study(storage, name)) for name in dict.fromkeys(names)]
    experiments = sorted((r for r in results if r.definition.experiment is not None),
                         key=lambda r: (r.definition.experiment, r.name))
    others = [r for r in results if r.definition.experiment is None]
    for result in experiments:
        result.rows = table1_rows(result)
    return experiments, others


def write_report(storage: optuna.storages.BaseStorage, names: Sequence[str], output: Path, *,
                 artifacts: Path | None, storage_url: str) -> Path:
    """Write report.md, table1.csv and the figures into ``output``; returns report.md's path."""
    out = Output(output)
    experiments, others = select(storage, names)
    rows = [row for result in experiments for row in result.rows]
    md = ["# hpo report", "",
          f"Storage `{display_url(storage_url)}`, "
          f"written {datetime.datetime.now().isoformat(timespec='seconds')}.", "",
          "## Findings", "", *findings(experiments, others), ""]
    md += _table1_section(out, experiments, rows, named=bool(names))
    for result in experiments:
        if result.definition.experiment == 3 and result.rows:
            path = plots.grid_heatmap(result.rows, out.path(f"{out.stem(result.name)}_heatmap.png"),
                                      f"Experiment 3 ({result.name}): test accuracy by learning rate and batch size")
            md += [f"### Experiment 3 ({result.name}): measured and reported test accuracy", "",
                   f"![heatmap]({path.name})", ""]
    md += ["## Best trial of each study", ""]
    for result in [*experiments, *others]:
        md += _study_section(out, storage, result, artifacts)
    path = out.path("report.md")
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    log.info("report written to %s", path)
    return path


def _table1_section(out: Output, experiments: Sequence[StudyResult], rows: list[dict[str, Any]], *,
                    named: bool) -> list[str]:
    if not experiments:
        where = "among the studies named" if named else "in this storage"
        return ["## Table 1", "", f"No study of the report's experiments {where} "
                "(create them with `hpo create studies/exp1.toml` ... `exp4.toml`).", ""]
    out.path("table1.csv").write_text(tables.render(rows, "csv", TABLE1_COLUMNS), encoding="utf-8")
    present = {r.definition.experiment for r in experiments}
    missing = [str(e) for e in (1, 2, 3, 4) if e not in present]
    lines = ["## Table 1, reproduced", "",
             f"{len(rows)} rows (also in [table1.csv](table1.csv)). `mean_test_accuracy` and `mean_test_loss` are "
             "means over the COMPLETE trials with exactly the row's parameters, `n` their number, "
             "`std_test_accuracy` their sample standard deviation; `report_*` are the report's numbers and "
             f"`diff_* = mean - report`. `tolerance` and `{BEYOND_NOISE}`: {NOISE_RULE}.", ""]
    if missing:
        lines += [f"Experiment(s) {', '.join(missing)}: no study in this storage, so their rows are absent.", ""]
    return lines + [tables.render(rows, "md", TABLE1_COLUMNS)]


def _study_section(out: Output, storage: optuna.storages.BaseStorage, result: StudyResult,
                   artifacts: Path | None) -> list[str]:
    stem = out.stem(result.name)
    lines = [f"### {result.name}", "", result.definition.description, ""]
    if result.definition.experiment is None:
        table = best_trial_rows(result.study, result.definition)
        out.path(f"{stem}_best_trials.csv").write_text(tables.render(table, "csv", EXPORT_COLUMNS), encoding="utf-8")
        lines += [f"Best trials, {min(len(table), OTHER_TABLE_ROWS)} of {len(table)} "
                  f"(all in [{stem}_best_trials.csv]({stem}_best_trials.csv)):", "",
                  tables.render(table[:OTHER_TABLE_ROWS], "md", EXPORT_COLUMNS)]
    best = result.best
    if best is None:
        return lines + ["No COMPLETE trial yet.", ""]
    lines += [f"Best trial: {best.number} ({_describe(trial_params(best))}), "
              f"{result.definition.metric} {best.value:.4f}.", ""]
    figures, problem = ({}, "no artifact folder") if artifacts is None else \
        plots.best_trial_figures(storage, best, artifacts, out.path, stem)
    lines += [f"![{kind}]({path.name})" for kind, path in figures.items()]
    if problem:
        lines.append(f"Trial {best.number}: {problem}.")
    return lines + [""]
