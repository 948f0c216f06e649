"""Where a study stands: trials by state, queue coverage per point and repeat, failed points,
running trials' epochs and the best value so far. Read-only: ``hpo status`` and the progress
line of ``hpo launch`` show it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
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
    # Per training run now going, oldest first: (epochs done, epochs planned or None, trials it
    # carries). Grid points that differ only in epochs share one run (hpo.study.plan).
    running_runs: list[tuple[int, int | None, int]] = field(default_factory=list)
    # (epochs trained, epochs planned) over the study's runs, where every slot's epochs are known:
    # what an estimate of the time left counts, since trials of a shared run finish in bursts.
    work: tuple[int, int] | None = None

    def repeat_summary(self) -> list[str]:
        """Per repeat of a grid, from 1: "repeat 1: 27/27 complete" (+ running, pending, failed where any)."""
        n_repeats = len(self.coverage[0]["repeats"]) if self.coverage else 0
        lines = []
        for r in range(n_repeats):
            states = Counter(point["repeats"][r] for point in self.coverage)
            rest = ", ".join(f"{states[s]} {s}" for s in POINT_STATES if s != "complete" and states[s])
            done = f"repeat {r + 1}: {states['complete']}/{len(self.coverage)} complete"  # counted from 1, as people do
            lines.append(f"{done}, {rest}" if rest else done)
        return lines

    def runs_progress(self) -> str:
        """Epochs done of each training run, and the trials a shared run carries: "3/15 x3, 0/5"."""
        return ", ".join(_epochs_text(done, planned) + (f" x{n}" if n > 1 else "")
                         for done, planned, n in self.running_runs)

    def running_progress(self) -> str:
        """Epochs done of each running trial, "3/10, 0/5" ("?" before a trial has its params)."""
        return ", ".join(_epochs_text(done, planned) for done, planned in self.running_epochs)

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
        if repeats:  # a grid's coverage, one repeat or several
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
        running_runs=_running_runs(trials),
        work=_work(definition, by_slot),
        coverage=_coverage(definition, by_slot) if definition.sampler == "grid" else [],
        data=records.record_of(study).get(records.DATA_IDENTITY),
        parameters=definition.parameter_names,
    )


def _coverage(definition: StudyDefinition, by_slot: dict[int, list[FrozenTrial]]) -> list[dict[str, Any]]:
    """Each grid point's parameters and the state of each of its repeats (slot = repeat x points + id)."""
    points = plan.grid_points(definition)
    return [{"point": grid_id, "params": params,
             "repeats": [point_state(by_slot.get(r * len(points) + grid_id, [])) for r in range(definition.repeats)]}
            for grid_id, params in enumerate(points)]


def _epochs_text(done: int, planned: int | None) -> str:
    return f"{done}/{planned if planned is not None else '?'}"


def _group(trial: FrozenTrial) -> Any:
    """The training run a trial is part of: its shared-prefix group's, or its own."""
    return trial.system_attrs.get(records.GROUP, ("trial", trial.number))


def _running_runs(trials: Sequence[FrozenTrial]) -> list[tuple[int, int | None, int]]:
    runs: dict[Any, list[tuple[int, int | None]]] = {}
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            runs.setdefault(_group(trial), []).append(_epochs(trial))
    return [(max(done for done, _ in run), None if any(p is None for _, p in run) else max(p or 0 for _, p in run),
             len(run)) for run in runs.values()]


def _work(definition: StudyDefinition, by_slot: dict[int, list[FrozenTrial]]) -> tuple[int, int] | None:
    """Epochs trained and planned over the study's runs (a shared run counted once, at its
    longest point), or None where some slot's epochs are not known before it runs (a search)."""
    planned: dict[Any, int] = {}
    trained: dict[Any, int] = {}
    finished: dict[Any, bool] = {}
    for slot in range(definition.n_trials):
        attempts = by_slot.get(slot)
        if not attempts:
            return None
        epochs = plan.planned_epochs(attempts[0]) or records.trial_params(attempts[0]).get("epochs")
        if not isinstance(epochs, int) or epochs <= 0:
            return None
        group = attempts[0].system_attrs.get(records.GROUP, slot)
        planned[group] = max(planned.get(group, 0), epochs)
        finished[group] = finished.get(group, True) and point_state(attempts) not in ("running", "pending")
        running = [len(t.intermediate_values) for t in attempts if t.state == TrialState.RUNNING]
        trained[group] = max(trained.get(group, 0), *running, 0)
    total = sum(planned.values())
    return sum(planned[g] if finished[g] else min(trained[g], planned[g]) for g in planned), total


def _epochs(trial: FrozenTrial) -> tuple[int, int | None]:
    """Epochs a running trial has reported (one intermediate value each) and epochs it will run."""
    planned = records.trial_params(trial).get("epochs")
    return len(trial.intermediate_values), int(planned) if planned is not None else None


def best_of(trials: Iterable[FrozenTrial], definition: StudyDefinition) -> FrozenTrial | None:
    """The best COMPLETE trial among ``trials`` (already read; study.best_trial reads them again)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return min(complete, key=lambda t: definition.rank_key(t.value), default=None)


