"""The rows a study is shown as: the best-trial table, one row per configuration over its
repeats, and a confirmation's confirmed configurations. :func:`export_rows` picks the table a
study is exported as; ``hpo export``, ``hpo confirm`` and ``hpo report`` all show these rows, so
they always agree with each other.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence, Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.results.status import point_state
from hpo.storage import records
from hpo.study import plan
from hpo.study.confirm import configuration_key, confirmations_of
from hpo.study.create import load_study
from hpo.study.definition import StudyDefinition


def export_rows(storage: optuna.storages.BaseStorage, study: optuna.Study, definition: StudyDefinition,
                by: str | None = None) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """A study's table, as rows and columns: one row per trial (``by="trial"``) or per
    configuration (the default for a confirmation study, whose rows set the search's value beside
    the confirmed mean). A search that has been confirmed gets its confirmed mean and spread
    beside each confirmed configuration."""
    confirms = records.CONFIRMS in records.record_of(study)
    by = by or ("configuration" if confirms else "trial")
    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    if by == "configuration" and confirms:
        rows, columns = confirmed_rows(study, definition), confirmed_columns_of(definition)
    elif by == "configuration":
        rows, columns = configuration_rows(study, definition), configuration_columns(definition)
    else:
        rows, columns = best_trial_rows(study, definition), export_columns(definition)
    confirmed = confirmed_by_configuration(storage, study.study_name, definition)
    if confirmed:
        rows = [{**row, **confirmed_columns(row, confirmed, definition)} for row in rows]
        columns = (*columns, *confirmed_extra(definition))
    return rows, columns


def best_trial_rows(study: optuna.Study, definition: StudyDefinition) -> list[dict[str, Any]]:
    """The best-trial table, best first: one row per finished trial that tells something.

    COMPLETE trials are ranked by the study's metric; PRUNED trials follow; a FAIL trial is
    listed only when its point failed for good (a failure later retried successfully is not a
    result). WAITING and RUNNING trials are not results yet.
    """
    trials = study.get_trials(deepcopy=False)
    by_slot = plan.by_slot(trials)
    final_failures = {slot for slot, attempts in by_slot.items() if point_state(attempts) == "failed"}

    def key(trial: FrozenTrial) -> tuple[int, float, int]:
        order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}.get(trial.state, 2)
        return order, definition.rank_key(trial.value) if order < 2 else 0.0, trial.number

    chosen = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
              or (t.state == TrialState.FAIL and t.system_attrs.get(records.SLOT) in final_failures
                  and t is max(by_slot[t.system_attrs[records.SLOT]], key=lambda x: x.number))]
    rows = []
    rank = 0
    for trial in sorted(chosen, key=key):
        if trial.state == TrialState.COMPLETE:
            rank += 1
        rows.append(trial_row(trial, rank if trial.state == TrialState.COMPLETE else None, definition))
    return rows


def export_columns(definition: StudyDefinition) -> tuple[str, ...]:
    """The best-trial table's columns, in order: what trial_row gives, as hpo export and report
    show it; the study's own parameters in the middle (the epochs: those a pruned trial ran)."""
    return ("rank", "trial", *definition.parameter_names, *definition.scores, "duration_s", "state", "note")


# A note (a failed trial's error) longer than this is cut in the terminal table; the other formats keep it whole.
SHORT_NOTE = 40


def short_view(rows: list[dict[str, Any]], columns: Sequence[str],
               definition: StudyDefinition) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The best-trial table as a terminal shows it by default: rank, trial, the parameters that
    differ between its rows (a value every row shares says nothing in a ranking), the metric on
    the validation and test sets, the state and the note, cut to :data:`SHORT_NOTE` characters.
    ``hpo export --all`` and every other format give all of ``columns``; a table of another view
    (per configuration, a confirmation's) is given as it is."""
    trial_view = export_columns(definition)
    if tuple(columns[:len(trial_view)]) != trial_view:
        return rows, tuple(columns)
    varying = {name for name in definition.parameter_names
               if len({repr(row.get(name)) for row in rows}) > 1}
    keep = {"rank", "trial", definition.curve_metric, definition.test_metric, definition.metric, "state", "note",
            *varying} | (set(columns) - set(trial_view))  # a confirmation's columns stay
    if not varying:  # one configuration (or none yet): its parameters are what the table is about
        keep |= set(definition.parameter_names)
    shown = tuple(c for c in columns if c in keep)
    cut = [{**row, "note": _cut(row.get("note"))} for row in rows]
    return cut, shown


def _cut(note: Any) -> Any:
    if not isinstance(note, str):
        return note
    line = note.splitlines()[0] if note.strip() else note
    return line if len(line) <= SHORT_NOTE and line == note else line[:SHORT_NOTE - 1].rstrip() + "…"


def trial_row(trial: FrozenTrial, rank: int | None, definition: StudyDefinition) -> dict[str, Any]:
    params = records.trial_params(trial)
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration else None
    note = "diverged" if attrs.get("diverged") else attrs.get(records.ERROR, "")
    return {
        "rank": rank,
        "trial": trial.number,
        **{name: params.get(name) for name in definition.parameter_names},
        **_scores(trial, definition),
        "epochs": attrs.get("epochs_run", len(trial.intermediate_values) or None),
        "duration_s": round(duration, 1) if duration is not None else None,
        "state": trial.state.name,
        "note": note,
    }


def _scores(trial: FrozenTrial, definition: StudyDefinition) -> dict[str, Any]:
    """A trial's numbers of the table; a PRUNED trial's validation metric is its last epoch's."""
    scores = {name: trial.user_attrs.get(name) for name in definition.scores}
    curve = definition.curve_metric
    if trial.state == TrialState.PRUNED and scores.get(curve) is None and trial.intermediate_values and \
            curve in scores:
        scores[curve] = trial.intermediate_values[max(trial.intermediate_values)]
    return scores


# --- one row per configuration -------------------------------------------------------------------

def configuration_columns(definition: StudyDefinition) -> tuple[str, ...]:
    """The per-configuration table's columns for a study: its parameters, n, then the mean and
    spread of its metric and of its test numbers (test accuracy and loss for a study of hpo's own
    compile; a test metric is not listed twice), and the trials."""
    tests = [column for test in definition.test_scores for column in (f"mean_{test}", f"std_{test}")]
    after = ("n", f"mean_{definition.metric}", f"std_{definition.metric}", *tests, "trials")
    return tuple(dict.fromkeys(("rank", *definition.parameter_names, *after)))


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite values: None for the mean of none, and
    for the spread of fewer than two."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return (statistics.fmean(finite) if finite else None,
            statistics.stdev(finite) if len(finite) > 1 else None)


def configuration_rows(study: optuna.Study, definition: StudyDefinition) -> list[dict[str, Any]]:
    """The best-trial table by configuration: one row per distinct set of PARAMETERS over its
    COMPLETE trials, ranked by the mean of the study's metric in the study's direction.

    Repeats of a configuration (seeds, grid repeats) give n, mean and standard deviation of the
    metric, of test accuracy and of test loss, and the trial numbers. A value that is not finite
    (a loss that blew up) is left out of the means; a configuration with no finite metric ranks last.
    """
    names = definition.parameter_names
    groups: dict[tuple[Any, ...], list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        groups.setdefault(configuration_key(records.trial_params(trial), names), []).append(trial)
    rows = [_configuration_row(dict(zip(names, key, strict=True)), trials, definition)
            for key, trials in groups.items()]
    mean = f"mean_{definition.metric}"
    rows.sort(key=lambda row: (definition.rank_key(row[mean]), row["trials"][0]))
    return [{"rank": rank, **row} for rank, row in enumerate(rows, 1)]


def _configuration_row(params: dict[str, Any], trials: list[FrozenTrial],
                       definition: StudyDefinition) -> dict[str, Any]:
    row = {**params, "n": len(trials), "trials": sorted(t.number for t in trials)}
    columns = {definition.metric: [t.value for t in trials]}
    columns.update({name: [t.user_attrs.get(name) for t in trials] for name in definition.test_scores})
    for name, values in columns.items():
        row[f"mean_{name}"], row[f"std_{name}"] = mean_std(values)
    return row


# --- a confirmation's rows -----------------------------------------------------------------------

# A confirmation's columns after its parameters: the search's number beside the confirmed mean and spread
# ("{test}": the confirmation's metric, test accuracy for a study of hpo's own compile).
CONFIRMED_AFTER = ("search_trial", "search_value", "n", "mean_{test}", "std_{test}", "mean_test_loss", "trials")


def confirmed_after(definition: StudyDefinition) -> tuple[str, ...]:
    """:data:`CONFIRMED_AFTER` for a confirmation of ``definition``'s metric."""
    return tuple(dict.fromkeys(c.format(test=definition.test_metric) for c in CONFIRMED_AFTER))


def confirmed_columns_of(definition: StudyDefinition) -> tuple[str, ...]:
    """A confirmation's columns: its configurations, then :func:`confirmed_after`."""
    return ("rank", *definition.parameter_names, *confirmed_after(definition))


def confirmed_rows(study: optuna.Study, definition: StudyDefinition) -> list[dict[str, Any]]:
    """Per confirmed configuration: the search trial and value it was chosen by, and the mean and
    standard deviation of test accuracy (and mean test loss) over its COMPLETE confirmation
    trials; ranked by mean test accuracy."""
    linked = records.record_of(study).get(records.CONFIRMS) or {}
    by_point: dict[int, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        point = trial.system_attrs.get(records.POINT)
        if point is not None:
            by_point.setdefault(int(point), []).append(trial)
    rows = []
    for index, point in enumerate(definition.points):
        trials = by_point.get(index, [])
        test = definition.test_metric
        score = mean_std(t.user_attrs.get(test) for t in trials)
        rows.append({
            **{key: point.get(key) for key in definition.parameter_names},
            "search_trial": _at(linked.get("trials"), index),
            "search_value": _at(linked.get("values"), index),
            "n": len(trials),
            f"mean_{test}": score[0],
            f"std_{test}": score[1],
            "mean_test_loss": mean_std(t.user_attrs.get("test_loss") for t in trials)[0],
            "trials": sorted(t.number for t in trials),
        })
    rows.sort(key=lambda row: definition.rank_key(row[f"mean_{definition.test_metric}"]))  # its test metric
    return [{"rank": rank, **row} for rank, row in enumerate(rows, 1)]


def _at(values: Any, index: int) -> Any:
    return values[index] if isinstance(values, list) and index < len(values) else None


Confirmed = dict[tuple[Any, ...], dict[str, Any]]  # configuration -> its confirmed row


def confirmed_rows_of(storage: optuna.storages.BaseStorage, search_name: str) -> list[dict[str, Any]]:
    """:func:`confirmed_rows` of every study that confirms ``search_name``, oldest first, each
    row naming its ``confirmation``."""
    rows = []
    for name in confirmations_of(storage, search_name):
        study, definition = load_study(storage, name)
        rows += [{"confirmation": name, **row} for row in confirmed_rows(study, definition)]
    return rows


def confirmed_by_configuration(storage: optuna.storages.BaseStorage, search_name: str,
                               search: StudyDefinition) -> Confirmed:
    """For a search: its confirmed configurations -> the newest confirmation's row."""
    return {configuration_key(row, search.parameter_names): row for row in confirmed_rows_of(storage, search_name)}


def confirmed_extra(search: StudyDefinition) -> tuple[str, ...]:
    """What a search's exported rows gain once it has been confirmed."""
    return ("confirmed_n", f"confirmed_{search.test_metric}", "confirmed_std")


def confirmed_columns(row: dict[str, Any], confirmed: Confirmed, search: StudyDefinition) -> dict[str, Any]:
    """:func:`confirmed_extra` for one of a search's exported rows (None where its configuration was not)."""
    match = confirmed.get(configuration_key(row, search.parameter_names))
    test = search.test_metric
    return {"confirmed_n": match["n"] if match else None,
            f"confirmed_{test}": match[f"mean_{test}"] if match else None,
            "confirmed_std": match[f"std_{test}"] if match else None}
