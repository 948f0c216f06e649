"""Study definitions: TOML files in ``studies/`` loaded into frozen, validated dataclasses.

A definition says everything needed to reproduce a study: what is searched, how it is sampled
and pruned, which data protocol scores it, the trial budget, and the report's reference numbers.
It is validated once, on load, and every error names the file, the key and the bad value.
The resolved definition is stored with the study (see :mod:`hpo.study.create`), so it round-trips
through :func:`definition_from_dict`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any
from collections.abc import Mapping

from hpo.errors import ConfigError

# Kept here, not imported from hpo.training.models, so that reading a study file never imports Keras.
# tests/test_config.py checks that they match the real registries.
ARCHITECTURE_NAMES = ("base", "deeper_dropout", "batchnorm")
AUGMENTATION_NAMES = ("none", "standard")

PARAMETERS = ("architecture", "augmentation", "learning_rate", "batch_size", "epochs")
SAMPLERS = ("grid", "tpe", "random", "fixed")
PRUNERS = ("none", "median", "hyperband")
PROTOCOLS = ("validation_split", "test")
METRICS = ("val_accuracy", "test_accuracy", "val_loss", "test_loss")
DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Range:
    """A numeric range sampled by TPE or random search."""

    low: float
    high: float
    log: bool = False


Values = tuple[Any, ...]  # a categorical choice, or the points of a grid axis
Spec = Range | Values


@dataclass(frozen=True)
class Reference:
    """One row of the report's Table 1 for this experiment."""

    params: Mapping[str, Any]
    test_accuracy: float
    test_loss: float


@dataclass(frozen=True)
class StudyDefinition:
    name: str
    description: str
    direction: str
    metric: str
    sampler: str
    seed: int
    pruner: str
    protocol: str
    validation_split: float
    trials: int
    max_retries: int
    space: Mapping[str, Spec]
    experiment: int | None = None
    references: tuple[Reference, ...] = field(default=())
    repeats: int = 1              # grid: trainings of every point, each with its own seed
    share_prefixes: bool = True   # grid: points that differ only in epochs share one training run
    min_resource: int = 1         # hyperband: epochs of its first rung; the last is the top of the epoch range
    reduction_factor: int = 3     # hyperband: 1/reduction_factor of a rung's trials go on to the next
    points: tuple[Mapping[str, Any], ...] = ()  # grid: explicit points, in place of the axes' product
    trial_limit: int = 10_000     # the most trials the study may queue (every one is a database row)

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def rank_key(self, value: float | None) -> float:
        """Sorts values of the study's metric best first, in its direction; None (and NaN) last."""
        if value is None or math.isnan(value):
            return math.inf
        return -value if self.maximize else value

    @property
    def worst(self) -> float:
        """A value every other ranks above: a loss that blew up, say."""
        return -math.inf if self.maximize else math.inf

    @property
    def grid(self) -> dict[str, list[Any]]:
        """The GridSampler search space: every parameter as a list of its values."""
        return {name: list(spec) for name, spec in self.space.items() if not isinstance(spec, Range)}

    @property
    def fixed(self) -> dict[str, Any]:
        """Parameters with a single value: recorded on every trial, but not searched (Optuna's
        parameters, and so the dashboard's importance chart, hold only what varies)."""
        return {name: spec[0] for name, spec in self.space.items() if not isinstance(spec, Range) and len(spec) == 1}

    @property
    def grid_points(self) -> list[dict[str, Any]]:
        """A grid's points: the product of its axes, or the points it lists (a confirmation)."""
        if self.points:
            return [dict(point) for point in self.points]
        names = list(self.space)
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*self.grid.values())]

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial trains: Hyperband's largest resource."""
        spec = self.space["epochs"]
        return int(spec.high) if isinstance(spec, Range) else int(max(spec))

    @property
    def n_points(self) -> int:
        """A grid's points, counted without listing them."""
        return len(self.points) if self.points else math.prod(len(values) for values in self.grid.values())

    @property
    def n_trials(self) -> int:
        """How many trials the study runs: one per grid point and repeat, or the budget."""
        return self.n_points * self.repeats if self.sampler == "grid" else self.trials

    @property
    def shares_prefixes(self) -> bool:
        """Whether trials of this grid share epoch prefixes: on unless switched off, for a grid
        whose points differ in epochs. Nothing in training depends on the total epoch count (no
        schedule), so a 5-epoch model is the first 5 epochs of the 15-epoch one, same seed."""
        return self.sampler == "grid" and self.share_prefixes and len(self.grid.get("epochs", ())) > 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["space"] = {
            name: asdict(spec) if isinstance(spec, Range) else list(spec)
            for name, spec in self.space.items()
        }
        data["references"] = [asdict(ref) for ref in self.references]
        data["points"] = [dict(point) for point in self.points]
        return data


def definition_from_dict(data: Mapping[str, Any], origin: str = "stored definition") -> StudyDefinition:
    """Rebuild a definition from :meth:`StudyDefinition.to_dict` output."""
    space = {
        name: Range(**spec) if isinstance(spec, dict) else tuple(spec)
        for name, spec in data["space"].items()
    }
    refs = tuple(Reference(**ref) for ref in data.get("references", ()))
    points = tuple(dict(point) for point in data.get("points", ()))
    fields = {k: v for k, v in data.items() if k not in ("space", "references", "points")}
    definition = StudyDefinition(**fields, space=space, references=refs, points=points)
    # The name is not checked again here: a study stored by an older hpo may carry a name the
    # study files no longer accept, and whatever writes files from it makes the name safe.
    validate_space(definition.space, definition.sampler, origin)
    return definition


MAX_NAME_LENGTH = 100  # names become folder and file names (logs, reports): keep them well short of 255


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a study, or None.

    A study's name becomes part of file and folder names, so it is letters, digits, '-', '_'
    and '.', starts with a letter or digit (no option look-alike '-x', no '.' or '..') and is
    at most MAX_NAME_LENGTH characters.
    """
    if not name or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
        return "must be letters, digits, '-', '_' or '.'"
    if not name[0].isalnum():
        return "must start with a letter or a digit"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long; at most {MAX_NAME_LENGTH}"
    return None


def validate_space(space: Mapping[str, Spec], sampler: str, origin: str) -> None:
    for key, spec in space.items():
        where = f"{origin}: space.{key}"
        if isinstance(spec, Range):
            if sampler in ("grid", "fixed"):
                raise ConfigError(f"{where} = {{low, high}} needs the tpe or random sampler; "
                                  f"a {sampler} study takes a list of values")
            if key in ("architecture", "augmentation"):
                raise ConfigError(f"{where} must be a list of names, not a range")
            if not spec.low < spec.high:
                raise ConfigError(f"{where}: low = {spec.low!r} must be less than high = {spec.high!r}")
            for bound in (spec.low, spec.high):
                check_value(key, bound, where)
            continue
        if sampler == "fixed" and len(spec) != 1:
            raise ConfigError(f"{where} = {list(spec)!r} must be a single value for the fixed sampler")
        if len(set(spec)) != len(spec):
            raise ConfigError(f"{where} = {list(spec)!r} lists a value twice")
        for value in spec:
            check_value(key, value, where)


def check_value(key: str, value: Any, where: str) -> None:
    if key == "architecture" and value not in ARCHITECTURE_NAMES:
        raise ConfigError(f"{where}: unknown architecture {value!r} (known: {', '.join(ARCHITECTURE_NAMES)})")
    if key == "augmentation" and value not in AUGMENTATION_NAMES:
        raise ConfigError(f"{where}: unknown augmentation {value!r} (known: {', '.join(AUGMENTATION_NAMES)})")
    if key == "learning_rate" and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0):
        raise ConfigError(f"{where}: learning rate {value!r} must be a number > 0")
    if key in ("batch_size", "epochs") and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1):
        raise ConfigError(f"{where}: {key.replace('_', ' ')} {value!r} must be an integer >= 1")
