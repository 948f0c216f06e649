"""A study defined in Python: the search space and settings as the tables a study file holds.

``space`` takes what ``[space]`` takes, in Python's words: a value (single-valued), a list or
tuple (a categorical choice, or a grid axis), a ``range`` (its values), an :class:`hpo.Range`
(``Range(1e-4, 1e-2, log=True)``: sampled by TPE or random search) and a dict of further
parameters for one value of a categorical one (a conditional table, ``[space.<value>]``). It is
turned into the same tables a TOML file gives, and read by the same parser
(:func:`hpo.study.files.definition_from_tables`): the two forms give the same stored definition,
with the same one-line errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpo.errors import ConfigError
from hpo.study.definition import StudyDefinition
from hpo.study.files import definition_from_tables
from hpo.study.space import Range

ORIGIN = "hpo.tune"


def tables(space: Mapping[str, Any]) -> dict[str, Any]:
    """``space`` as ``[space]``'s table."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{ORIGIN}: space must be a dict of parameters, got {_shown(space)}")
    return {_key(name, "space"): _spec(value, f"space.{name}", depth=0) for name, value in space.items()}


def _key(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"{ORIGIN}: {where}: parameter names are strings, got {_shown(name)}")
    return name


def _spec(value: Any, where: str, depth: int) -> Any:
    if isinstance(value, Range):
        return {"low": _scalar(value.low, where), "high": _scalar(value.high, where), "log": bool(value.log)}
    if isinstance(value, Mapping):
        if depth:
            raise ConfigError(f"{ORIGIN}: {where}: nests a dict in a dict: conditional tables are one level deep")
        if {"low", "high"} & set(value):
            return {k: _scalar(v, f"{where}.{k}") for k, v in value.items()}  # {low, high, log}, as in TOML
        return {_key(k, where): _spec(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, range, np.ndarray)):
        return [_scalar(v, where) for v in value]
    return _scalar(value, where)


def _scalar(value: Any, where: str) -> Any:
    """A value as TOML holds it: bool, int, float or str (NumPy's scalars become Python's)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{ORIGIN}: {where}: {value!r} is not a finite number")
        return value
    raise ConfigError(f"{ORIGIN}: {where}: {_shown(value)} is not a value a study can hold "
                      "(a bool, int, float or str, a list of them, or hpo.Range)")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def definition(*, name: str, space: Mapping[str, Any], source: str, builder: str, trials: int, metric: str,
               direction: str | None, sampler: str, seed: int, pruner: str, protocol: str, validation_split: float,
               subset: int | None, max_retries: int, repeats: int, description: str,
               loss: str | None = None, metrics: Sequence[str] | None = None,
               keep_models: str = "best") -> StudyDefinition:
    """The definition of a study made in Python, validated as a study file's."""
    study: dict[str, Any] = {"name": name, "metric": metric, "trials": trials, "max_retries": max_retries,
                             "description": description}
    if direction is not None:
        study["direction"] = direction
    if repeats != 1:
        study["repeats"] = repeats
    if keep_models != "best":
        study["keep_models"] = keep_models
    data: dict[str, Any] = {"source": source, "protocol": protocol}
    if protocol == "validation_split":
        data["validation_split"] = validation_split
    if subset is not None:
        data["subset"] = subset
    model: dict[str, Any] = {"builder": builder}
    if loss is not None:
        model["loss"] = loss
    if metrics is not None:
        model["metrics"] = list(metrics)
    raw = {"study": study, "sampler": {"type": sampler, "seed": seed}, "pruner": {"type": pruner},
           "data": data, "model": model, "space": tables(space)}
    return definition_from_tables(raw, ORIGIN)
