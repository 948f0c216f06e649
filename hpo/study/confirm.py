"""Confirmation runs: a search's best configurations trained again with fresh seeds.

A search's best trial is the maximum over many noisy runs, scored on the validation split it
was chosen by, so its number is optimistic. ``hpo confirm STUDY --top K --repeats N`` makes a
study of its own (``STUDY-confirm``): a grid that lists the K best configurations, each trained
N times with seeds the search never used, on the whole training set, scored on the test set.
Its mean and spread are a number a user can defend. The confirmation study names the search
and, per configuration, the search trial it confirms (study user attribute ``confirms``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.workers import queueing

from hpo.storage import records
from hpo.study.definition import PARAMETERS, Range, StudyDefinition
from hpo.errors import ConfigError
from hpo.results.status import mean_std, trial_params
from hpo.study.create import load_study

# Confirmation seeds: the search's seed moved this far, so that (with fewer than 100,003 trials
# a study, see hpo.workers.queueing.trial_seed) no confirmation trial trains with a seed of the search.
SEED_OFFSET = 7919
CONFIRM_SUFFIX = "-confirm"


def top_trials(study: optuna.Study, definition: StudyDefinition, k: int) -> list[FrozenTrial]:
    """The best COMPLETE trial of each of the ``k`` best distinct configurations, best first."""
    sign = -1.0 if definition.direction == "maximize" else 1.0
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    chosen: dict[tuple[Any, ...], FrozenTrial] = {}
    for trial in sorted(complete, key=lambda t: (sign * float(t.value or 0.0), t.number)):
        key = _key(trial_params(trial))
        if key not in chosen:
            chosen[key] = trial
        if len(chosen) == k:
            break
    return list(chosen.values())


def _key(params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(params.get(name) for name in PARAMETERS)


def confirmation_definition(search: StudyDefinition, trials: Sequence[FrozenTrial], repeats: int,
                            name: str | None = None) -> StudyDefinition:
    """The confirmation study of ``trials`` (a search's best): their configurations as listed grid
    points, ``repeats`` trainings each, on the whole training set, scored on the test set."""
    if not trials:
        raise ConfigError(f"study {search.name!r} has no COMPLETE trial to confirm yet")
    points = tuple({key: trial_params(t)[key] for key in PARAMETERS} for t in trials)
    space: dict[str, Range | tuple[Any, ...]] = {
        key: tuple(dict.fromkeys(point[key] for point in points)) for key in PARAMETERS}
    numbers = ", ".join(str(t.number) for t in trials)
    return StudyDefinition(
        name=name or f"{search.name}{CONFIRM_SUFFIX}",
        description=(f"Confirms the {len(trials)} best configurations of study {search.name} (trials {numbers}): "
                     f"{repeats} fresh seeds each, trained on the whole training set, scored on the test set."),
        direction="maximize",
        metric="test_accuracy",
        sampler="grid",
        seed=search.seed + SEED_OFFSET,
        pruner="none",
        protocol="test",
        validation_split=0.0,
        trials=1,
        max_retries=search.max_retries,
        space=space,
        repeats=repeats,
        points=points,
    )


def link(search_study: optuna.Study, search: StudyDefinition, trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """What the confirmation study stores about its search (user attribute ``confirms``)."""
    return {"study": search_study.study_name, "metric": search.metric,
            "trials": [t.number for t in trials], "values": [t.value for t in trials]}


def check_fresh_seeds(search_study: optuna.Study, search: StudyDefinition, confirmation: StudyDefinition) -> None:
    """Refuse a confirmation whose seeds a search trial trained with (never expected: see SEED_OFFSET)."""
    trials = search_study.get_trials(deepcopy=False)
    used = {int(t.user_attrs[records.SEED]) for t in trials if records.SEED in t.user_attrs}
    used |= {queueing.trial_seed(search, t.number) for t in trials}
    mine = {queueing.trial_seed(confirmation, slot) for slot in range(confirmation.n_trials)}
    if used & mine:
        raise ConfigError(f"confirmation seeds {sorted(used & mine)[:3]} were used by study {search.name!r}")


def confirmations_of(storage: optuna.storages.BaseStorage, search_name: str) -> list[str]:
    """Names of the studies that confirm ``search_name``, oldest first."""
    return [s.study_name for s in optuna.get_all_study_summaries(storage)
            if (s.user_attrs.get(records.CONFIRMS) or {}).get("study") == search_name]


# The confirmed table's columns: the search's number beside the confirmation's mean and spread.
CONFIRMED_COLUMNS = ("rank", *PARAMETERS, "search_trial", "search_value", "n", "mean_test_accuracy",
                     "std_test_accuracy", "mean_test_loss", "trials")


def confirmed_rows(study: optuna.Study, definition: StudyDefinition) -> list[dict[str, Any]]:
    """Per confirmed configuration: the search trial and value it was chosen by, and the mean and
    standard deviation of test accuracy (and mean test loss) over its COMPLETE confirmation
    trials; ranked by mean test accuracy."""
    linked = study.user_attrs.get(records.CONFIRMS) or {}
    by_point: dict[int, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        point = trial.system_attrs.get(records.POINT)
        if point is not None:
            by_point.setdefault(int(point), []).append(trial)
    rows = []
    for index, point in enumerate(definition.points):
        trials = by_point.get(index, [])
        accuracy = mean_std(t.user_attrs.get("test_accuracy") for t in trials)
        rows.append({
            **{key: point.get(key) for key in PARAMETERS},
            "search_trial": _at(linked.get("trials"), index),
            "search_value": _at(linked.get("values"), index),
            "n": len(trials),
            "mean_test_accuracy": accuracy[0],
            "std_test_accuracy": accuracy[1],
            "mean_test_loss": mean_std(t.user_attrs.get("test_loss") for t in trials)[0],
            "trials": sorted(t.number for t in trials),
        })
    rows.sort(key=lambda row: (row["mean_test_accuracy"] is None, -(row["mean_test_accuracy"] or 0.0)))
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


def confirmed_by_configuration(storage: optuna.storages.BaseStorage, search_name: str) -> Confirmed:
    """For a search: its confirmed configurations -> the newest confirmation's row."""
    return {_key(row): row for row in confirmed_rows_of(storage, search_name)}


# What a search's exported rows gain once it has been confirmed.
CONFIRMED_EXTRA = ("confirmed_n", "confirmed_test_accuracy", "confirmed_std")


def confirmed_columns(row: dict[str, Any], confirmed: Confirmed) -> dict[str, Any]:
    """CONFIRMED_EXTRA for one of a search's exported rows (None where its configuration was not)."""
    match = confirmed.get(_key(row))
    return {"confirmed_n": match["n"] if match else None,
            "confirmed_test_accuracy": match["mean_test_accuracy"] if match else None,
            "confirmed_std": match["std_test_accuracy"] if match else None}
