"""A search's progress: its best value so far against the training epochs it spent and wall time."""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.storage import records
from hpo.study.definition import StudyDefinition


@dataclass(frozen=True)
class CurvePoint:
    """Where a search stood when one more trial finished."""

    trial: int
    epochs: int            # training epochs spent so far, by every finished trial (pruned and failed too)
    seconds: float         # since the study's first trial started
    best: float | None     # the best metric of a COMPLETE trial so far
    value: float | None = None  # this trial's own metric, where it completed with a finite one


def epochs_trained(trial: FrozenTrial) -> int:
    """Epochs a trial trained itself: one reported value per epoch, so a trial pruned or failed
    after 3 epochs counts 3. A trial that a shared run completed on the way trained none itself
    (its run's trial counts them)."""
    run = trial.user_attrs.get(records.PREFIX_RUN)
    if run is not None and run != trial.number:
        return 0
    # A retry that went on from a checkpoint handed back the epochs before it; it trained the rest.
    return len(trial.intermediate_values) - int(trial.user_attrs.get(records.RESUMED_FROM, 0))


def search_curve(study: optuna.Study, definition: StudyDefinition) -> list[CurvePoint]:
    """Best metric so far against training epochs spent and wall time, trial by finished trial."""
    finished = [(t.datetime_complete, t) for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and t.datetime_complete]
    if not finished:
        return []
    start = min(t.datetime_start or ended for ended, t in finished)
    spent = _epochs_added([t for _, t in finished])
    points, epochs, best = [], 0, None
    for ended, trial in sorted(finished, key=lambda pair: (pair[0], pair[1].number)):
        epochs += spent[trial.number]
        value = trial.value if trial.state == TrialState.COMPLETE and trial.value is not None and \
            math.isfinite(trial.value) else None
        if value is not None:
            best = value if best is None or definition.rank_key(value) < definition.rank_key(best) else best
        points.append(CurvePoint(trial.number, epochs, (ended - start).total_seconds(), best, value))
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
        done = int(members[0].user_attrs.get(records.RESUMED_FROM, 0))  # a resumed run's earlier epochs
        for trial in sorted(members, key=lambda t: len(t.intermediate_values)):
            added[trial.number] = max(0, len(trial.intermediate_values) - done)
            done = max(done, len(trial.intermediate_values))
    return added
