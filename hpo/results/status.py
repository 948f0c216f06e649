"""Where a study stands: trials by state, queue coverage per point and repeat, failed points,
running trials' epochs and the best value so far. Read-only: ``hpo status`` and the progress
line of ``hpo launch`` show it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.study import plan

from hpo.storage import records
from hpo.study.data import DataIdentity
from hpo.study.definition import StudyDefinition

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
    data: dict[str, Any] | None = None   # what the study trains on (hpo.study.data.DataIdentity), None if unknown
    parameters: tuple[str, ...] = ()     # the study's parameters, as Optuna names them

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

    def row(self) -> dict[str, Any]:
        """The study's row of ``hpo status``'s table."""
        return {"study": self.name, "sampler": self.sampler, **{state: self.points[state] for state in POINT_STATES},
                "total": self.total_points, "duplicates": self.duplicates, "best": self.best_value,
                "best_trial": self.best_trial}

    def notes(self) -> list[str]:
        """The lines ``hpo status`` prints under its table: coverage per repeat, running trials'
        epochs, and every point that failed for good."""
        lines = []
        if self.data is not None:
            lines.append(f"{self.name}: trains on {DataIdentity.from_dict(self.data).description}")
        repeats = self.repeat_summary()
        if len(repeats) > 1:
            lines.append(f"{self.name}: " + "; ".join(repeats))
        if self.running_epochs:
            lines.append(f"{self.name}: running trials at epoch {self.running_progress()}")
        lines += [f"{self.name}: point {point['slot']} {point['params']} failed after {point['attempts']} attempts: "
                  f"{point['error']}" for point in self.failed_points]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.name, "sampler": self.sampler, "metric": self.metric,
            "trials": self.trials, "points": {**self.points, "total": self.total_points},
            "duplicates": self.duplicates, "best_value": self.best_value, "best_trial": self.best_trial,
            "failed_points": self.failed_points,
            "data": self.data,
            "parameters": list(self.parameters),
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
    by_slot = plan.by_slot(trials)
    points: Counter[str] = Counter({s: 0 for s in POINT_STATES})
    failed_points = []
    for slot in range(definition.n_trials):
        state = point_state(by_slot.get(slot, []))
        points[state] += 1
        if state == "failed":
            last = max(by_slot.get(slot, []), key=lambda t: t.number, default=None)
            failed_points.append({
                "slot": slot,
                "params": records.trial_params(last) if last else {},
                "attempts": len(by_slot.get(slot, [])),
                "error": last.user_attrs.get(records.ERROR) if last else "never ran",
            })
    duplicates = sum(1 for attempts in by_slot.values()
                     if sum(t.state == TrialState.COMPLETE for t in attempts) > 1)
    best = best_of(trials, definition)
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
        data=study.user_attrs.get(records.DATA_IDENTITY),
        parameters=definition.parameter_names,
    )


def _coverage(definition: StudyDefinition, by_slot: dict[int, list[FrozenTrial]]) -> list[dict[str, Any]]:
    """Each grid point's parameters and the state of each of its repeats (slot = repeat x points + id)."""
    points = plan.grid_points(definition)
    return [{"point": grid_id, "params": params,
             "repeats": [point_state(by_slot.get(r * len(points) + grid_id, [])) for r in range(definition.repeats)]}
            for grid_id, params in enumerate(points)]


def _epochs(trial: FrozenTrial) -> tuple[int, int | None]:
    """Epochs a running trial has reported (one intermediate value each) and epochs it will run."""
    planned = records.trial_params(trial).get("epochs")
    return len(trial.intermediate_values), int(planned) if planned is not None else None


def best_of(trials: Iterable[FrozenTrial], definition: StudyDefinition) -> FrozenTrial | None:
    """The best COMPLETE trial among ``trials`` (already read; study.best_trial reads them again)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return min(complete, key=lambda t: definition.rank_key(t.value), default=None)


