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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


from hpo.study import plan
from hpo.storage import records
from hpo.study.definition import StudyDefinition, name_problem
from hpo.study.space import Spec
from hpo.errors import ConfigError, NotReady

CONFIRM_SUFFIX = "-confirm"


def top_trials(study: optuna.Study, definition: StudyDefinition, k: int) -> list[FrozenTrial]:
    """The best COMPLETE trial of each of the ``k`` best distinct configurations, best first."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    chosen: dict[tuple[Any, ...], FrozenTrial] = {}
    for trial in sorted(complete, key=lambda t: (definition.rank_key(t.value), t.number)):
        key = configuration_key(records.trial_params(trial), definition.parameter_names)
        if key not in chosen:
            chosen[key] = trial
        if len(chosen) == k:
            break
    return list(chosen.values())


def configuration_key(params: Mapping[str, Any], names: Sequence[str]) -> tuple[Any, ...]:
    """What tells one configuration from another: its values of the study's parameters ``names``
    (None where a conditional parameter did not apply)."""
    return tuple(params.get(name) for name in names)


def confirmation_definition(search: StudyDefinition, trials: Sequence[FrozenTrial], repeats: int,
                            name: str | None = None) -> StudyDefinition:
    """The confirmation study of ``trials`` (a search's best): their configurations as listed grid
    points, ``repeats`` trainings each, on the whole training set, scored on the test set."""
    if not trials:
        raise NotReady(f"study {search.name!r} has no COMPLETE trial to confirm yet")
    names = search.parameter_names
    points = tuple({key: value for key, value in records.trial_params(t).items() if key in names} for t in trials)

    def values(name: str) -> tuple[Any, ...]:
        return tuple(dict.fromkeys(point[name] for point in points if name in point))

    # The search's parameters with the values its best configurations have; one that none of them
    # has (a setting of an optimizer none chose) is left out.
    space: dict[str, Spec] = {key: values(key) for key in search.space if values(key)}
    conditional = {value: {key: values(f"{value}.{key}") for key in table if values(f"{value}.{key}")}
                   for value, table in search.conditional.items()}
    numbers = ", ".join(str(t.number) for t in trials)
    return StudyDefinition(
        name=name or f"{search.name}{CONFIRM_SUFFIX}",
        description=(f"Confirms the {len(trials)} best configurations of study {search.name} (trials {numbers}): "
                     f"{repeats} fresh seeds each, trained on the whole training set, scored on the test set."),
        direction=search.direction,
        metric=search.test_metric,
        sampler="grid",
        seed=search.seed + plan.CONFIRM_SEED_OFFSET,
        pruner="none",
        protocol="test",
        validation_split=0.0,
        trials=1,
        max_retries=search.max_retries,
        space=space,
        repeats=repeats,
        points=points,
        conditional={value: table for value, table in conditional.items() if table},
        builder=search.builder,
        data=search.data,
        subset=search.subset,
        loss=search.loss,
        metrics=search.metrics,
    )


def link(search_study: optuna.Study, search: StudyDefinition, trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """What the confirmation study stores about its search (user attribute ``confirms``)."""
    return {"study": search_study.study_name, "metric": search.metric,
            "trials": [t.number for t in trials], "values": [t.value for t in trials]}


@dataclass(frozen=True)
class Confirmation:
    """A confirmation study to create: its definition, the search trials it confirms (best
    first) and the link stored with it."""

    definition: StudyDefinition
    trials: list[FrozenTrial]
    link: dict[str, Any]


def prepare(search_study: optuna.Study, search: StudyDefinition, top: int, repeats: int,
            name: str | None = None) -> Confirmation:
    """The confirmation of a search's ``top`` best configurations, ``repeats`` fresh seeds each,
    checked (its name, and that no seed of it is a search's) before anything is written."""
    best = top_trials(search_study, search, top)
    definition = confirmation_definition(search, best, repeats, name)
    problem = name_problem(definition.name)
    if problem:
        raise ConfigError(f"--name {definition.name!r} {problem}")
    plan.check_fresh_seeds(search_study.get_trials(deepcopy=False), search, definition)
    return Confirmation(definition, best, link(search_study, search, best))


def confirmations_of(storage: optuna.storages.BaseStorage, search_name: str) -> list[str]:
    """Names of the studies that confirm ``search_name``, oldest first."""
    return [name for name, record in records.records_by_name(storage).items()
            if (record.get(records.CONFIRMS) or {}).get("study") == search_name]
