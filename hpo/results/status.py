"""What a study holds, summarised: trials by state, queue coverage, and the best-trial table.

Read-only. ``hpo status``, ``hpo export`` and ``hpo report`` all build on these functions, so
they always agree with each other.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.workers import queueing

from hpo.storage import records
from hpo.study.definition import PARAMETERS, StudyDefinition

POINT_STATES = ("pending", "running", "complete", "pruned", "failed")


@dataclass
class StudyStatus:
    name: str
    sampler: str
    trials: dict[str, int]          # trials by Optuna state
    points: dict[str, int]          # queue slots (grid points) by state
    duplicates: int                 # slots with more than one COMPLETE trial
    total_points: int
    best_value: float | None
    best_trial: int | None
    metric: str
    failed_points: list[dict[str, Any]] = field(default_factory=list)
    # Per RUNNING trial, oldest first: (epochs reported so far, epochs planned or None if unknown yet)
    running_epochs: list[tuple[int, int | None]] = field(default_factory=list)
    # A grid's coverage: per point (in grid id order) its parameters and the state of each repeat
    coverage: list[dict[str, Any]] = field(default_factory=list)

    def repeat_summary(self) -> list[str]:
        """Per repeat of a grid: "repeat 1: 27/27 complete" (+ running, pending, failed where any)."""
        n_repeats = len(self.coverage[0]["repeats"]) if self.coverage else 0
        lines = []
        for r in range(n_repeats):
            states = Counter(point["repeats"][r] for point in self.coverage)
            rest = ", ".join(f"{states[s]} {s}" for s in POINT_STATES if s != "complete" and states[s])
            done = f"repeat {r}: {states['complete']}/{len(self.coverage)} complete"
            lines.append(f"{done}, {rest}" if rest else done)
        return lines

    def running_progress(self) -> str:
        """Epochs done of each running trial, "3/10, 0/5" ("?" before a trial has its params)."""
        return ", ".join(f"{done}/{planned if planned is not None else '?'}" for done, planned in self.running_epochs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.name, "sampler": self.sampler, "metric": self.metric,
            "trials": self.trials, "points": {**self.points, "total": self.total_points},
            "duplicates": self.duplicates, "best_value": self.best_value, "best_trial": self.best_trial,
            "failed_points": self.failed_points,
            "running_epochs": [{"done": done, "planned": planned} for done, planned in self.running_epochs],
            "coverage": self.coverage,
        }


def point_state(attempts: list[FrozenTrial]) -> str:
    states = {t.state for t in attempts}
    if TrialState.COMPLETE in states:
        return "complete"
    if TrialState.RUNNING in states:
        return "running"
    if TrialState.WAITING in states:
        return "pending"
    if TrialState.PRUNED in states:
        return "pruned"
    return "failed"


def study_status(study: optuna.Study, definition: StudyDefinition) -> StudyStatus:
    trials = study.get_trials(deepcopy=False)
    by_slot = queueing.by_slot(trials)
    points: Counter[str] = Counter({s: 0 for s in POINT_STATES})
    failed_points = []
    for slot in range(definition.n_trials):
        state = point_state(by_slot.get(slot, []))
        points[state] += 1
        if state == "failed":
            last = max(by_slot.get(slot, []), key=lambda t: t.number, default=None)
            failed_points.append({
                "slot": slot,
                "params": trial_params(last) if last else {},
                "attempts": len(by_slot.get(slot, [])),
                "error": last.user_attrs.get(records.ERROR) if last else "never ran",
            })
    duplicates = sum(1 for attempts in by_slot.values()
                     if sum(t.state == TrialState.COMPLETE for t in attempts) > 1)
    best = _best(trials, definition.direction)
    return StudyStatus(
        name=study.study_name,
        sampler=definition.sampler,
        trials={s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        points=dict(points),
        duplicates=duplicates,
        total_points=definition.n_trials,
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        metric=definition.metric,
        failed_points=failed_points,
        running_epochs=[_epochs(t) for t in trials if t.state == TrialState.RUNNING],
        coverage=_coverage(definition, by_slot) if definition.sampler == "grid" else [],
    )


def _coverage(definition: StudyDefinition, by_slot: dict[int, list[FrozenTrial]]) -> list[dict[str, Any]]:
    """Each grid point's parameters and the state of each of its repeats (slot = repeat x points + id)."""
    points = queueing.grid_points(definition)
    return [{"point": grid_id, "params": params,
             "repeats": [point_state(by_slot.get(r * len(points) + grid_id, [])) for r in range(definition.repeats)]}
            for grid_id, params in enumerate(points)]


def _epochs(trial: FrozenTrial) -> tuple[int, int | None]:
    """Epochs a running trial has reported (one intermediate value each) and epochs it will run."""
    planned = trial_params(trial).get("epochs")
    return len(trial.intermediate_values), int(planned) if planned is not None else None


def _best(trials: list[FrozenTrial], direction: str) -> FrozenTrial | None:
    """The best COMPLETE trial among ``trials`` (already read; study.best_trial reads them again)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pick = max if direction == "maximize" else min
    return pick(complete, key=lambda t: cast(float, t.value), default=None)  # COMPLETE: a value


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters: the study's fixed ones, those a retry carries but has not suggested
    yet, and what the sampler drew."""
    params = dict(trial.user_attrs.get(records.FIXED, {}))
    params.update(trial.system_attrs.get(records.FIXED_PARAMS, {}))
    params.update(trial.params)
    return params


def best_trial_rows(study: optuna.Study, definition: StudyDefinition) -> list[dict[str, Any]]:
    """The best-trial table, best first: one row per finished trial that tells something.

    COMPLETE trials are ranked by the study's metric; PRUNED trials follow; a FAIL trial is
    listed only when its point failed for good (a failure later retried successfully is not a
    result). WAITING and RUNNING trials are not results yet.
    """
    trials = study.get_trials(deepcopy=False)
    by_slot = queueing.by_slot(trials)
    final_failures = {slot for slot, attempts in by_slot.items() if point_state(attempts) == "failed"}
    sign = -1.0 if definition.direction == "maximize" else 1.0

    def key(trial: FrozenTrial) -> tuple[int, float, int]:
        order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}.get(trial.state, 2)
        value = trial.value if trial.value is not None else float("inf") * -sign
        return order, sign * value if order < 2 else 0.0, trial.number

    chosen = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
              or (t.state == TrialState.FAIL and t.system_attrs.get(records.SLOT) in final_failures
                  and t is max(by_slot[t.system_attrs[records.SLOT]], key=lambda x: x.number))]
    rows = []
    rank = 0
    for trial in sorted(chosen, key=key):
        if trial.state == TrialState.COMPLETE:
            rank += 1
        rows.append(trial_row(trial, rank if trial.state == TrialState.COMPLETE else None))
    return rows


# The best-trial table's columns, in order: what trial_row gives, as hpo export and report show it.
EXPORT_COLUMNS = ("rank", "trial", "architecture", "augmentation", "learning_rate", "batch_size", "epochs",
                  "val_accuracy", "test_accuracy", "test_loss", "duration_s", "state", "note")


def trial_row(trial: FrozenTrial, rank: int | None) -> dict[str, Any]:
    params = trial_params(trial)
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration else None
    note = "diverged" if attrs.get("diverged") else attrs.get(records.ERROR, "")
    return {
        "rank": rank,
        "trial": trial.number,
        **{name: params.get(name) for name in PARAMETERS},
        "val_accuracy": attrs.get("val_accuracy"),
        "test_accuracy": attrs.get("test_accuracy"),
        "test_loss": attrs.get("test_loss"),
        "epochs": attrs.get("epochs_run", len(trial.intermediate_values) or None),
        "duration_s": round(duration, 1) if duration is not None else None,
        "state": trial.state.name,
        "note": note,
    }


# --- one row per configuration -------------------------------------------------------------------

# The per-configuration table's columns, in order; "{metric}" stands for the study's metric
# (configuration_columns fills it in).
CONFIGURATION_COLUMNS = ("rank", *PARAMETERS, "n", "mean_{metric}", "std_{metric}", "mean_test_accuracy",
                         "std_test_accuracy", "mean_test_loss", "std_test_loss", "trials")


def configuration_columns(metric: str) -> tuple[str, ...]:
    """CONFIGURATION_COLUMNS for a study scored on ``metric``; a test metric is not listed twice."""
    return tuple(dict.fromkeys(column.format(metric=metric) for column in CONFIGURATION_COLUMNS))


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
    groups: dict[tuple[Any, ...], list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        params = trial_params(trial)
        groups.setdefault(tuple(params.get(name) for name in PARAMETERS), []).append(trial)
    rows = [_configuration_row(dict(zip(PARAMETERS, key, strict=True)), trials, definition.metric)
            for key, trials in groups.items()]
    mean, sign = f"mean_{definition.metric}", -1.0 if definition.direction == "maximize" else 1.0
    rows.sort(key=lambda row: (row[mean] is None, sign * (row[mean] or 0.0), row["trials"][0]))
    return [{"rank": rank, **row} for rank, row in enumerate(rows, 1)]


def _configuration_row(params: dict[str, Any], trials: list[FrozenTrial], metric: str) -> dict[str, Any]:
    row = {**params, "n": len(trials), "trials": sorted(t.number for t in trials)}
    columns = {metric: [t.value for t in trials]}
    columns.update({name: [t.user_attrs.get(name) for t in trials] for name in ("test_accuracy", "test_loss")})
    for name, values in columns.items():
        row[f"mean_{name}"], row[f"std_{name}"] = mean_std(values)
    return row


# --- a search's progress -------------------------------------------------------------------------

@dataclass(frozen=True)
class CurvePoint:
    """Where a search stood when one more trial finished."""

    trial: int
    epochs: int            # training epochs spent so far, by every finished trial (pruned and failed too)
    seconds: float         # since the study's first trial started
    best: float | None     # the best metric of a COMPLETE trial so far


def epochs_trained(trial: FrozenTrial) -> int:
    """Epochs a trial trained itself: one reported value per epoch, so a trial pruned or failed
    after 3 epochs counts 3. A trial that a shared run completed on the way trained none itself
    (its run's trial counts them)."""
    run = trial.user_attrs.get(records.PREFIX_RUN)
    if run is not None and run != trial.number:
        return 0
    return len(trial.intermediate_values)


def search_curve(study: optuna.Study, definition: StudyDefinition) -> list[CurvePoint]:
    """Best metric so far against training epochs spent and wall time, trial by finished trial."""
    finished = [(t.datetime_complete, t) for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and t.datetime_complete]
    if not finished:
        return []
    start = min(t.datetime_start or ended for ended, t in finished)
    spent = _epochs_added([t for _, t in finished])
    pick = max if definition.direction == "maximize" else min
    points, epochs, best = [], 0, None
    for ended, trial in sorted(finished, key=lambda pair: (pair[0], pair[1].number)):
        epochs += spent[trial.number]
        if trial.state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value):
            best = trial.value if best is None else pick(best, trial.value)
        points.append(CurvePoint(trial.number, epochs, (ended - start).total_seconds(), best))
    return points


def _epochs_added(trials: list[FrozenTrial]) -> dict[int, int]:
    """Epochs each trial adds to its study's total when it finishes: its own; in a run that
    completed shorter trials on the way (shared prefixes), each adds the epochs since the one
    before it, and the run's own trial the rest, so the total is what the run trained."""
    added = {t.number: epochs_trained(t) for t in trials}
    runs: dict[int, list[FrozenTrial]] = {}
    for trial in trials:
        run = trial.user_attrs.get(records.PREFIX_RUN)
        if run is not None:
            runs.setdefault(int(run), []).append(trial)
    for members in runs.values():
        done = 0
        for trial in sorted(members, key=lambda t: len(t.intermediate_values)):
            added[trial.number] = max(0, len(trial.intermediate_values) - done)
            done = max(done, len(trial.intermediate_values))
    return added
