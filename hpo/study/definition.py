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

from hpo.study import space as spaces
from hpo.study.space import CANONICAL_ORDER, Range, Spec

# The report's five parameters: the columns of its Table 1 (and of a reference row).
PARAMETERS = ("architecture", "augmentation", "learning_rate", "batch_size", "epochs")
SAMPLERS = ("grid", "tpe", "random", "fixed")
PRUNERS = ("none", "median", "hyperband")
PROTOCOLS = ("validation_split", "test")
METRICS = ("val_accuracy", "test_accuracy", "val_loss", "test_loss")  # what hpo's own compile reports
DIRECTIONS = ("maximize", "minimize")
KEEP_MODELS = ("best", "all", "none")  # which trials' trained models are saved (StudyDefinition.keep_models)
# Any metric the model reports may be the study's, scored on the validation or the test set
# ("val_mae", "test_auc"); these are the directions hpo knows without being told.
LOWER_IS_BETTER = ("loss", "error", "mae", "mse", "rmse", "mape", "msle", "crossentropy", "hinge", "divergence")
HIGHER_IS_BETTER = ("accuracy", "auc", "precision", "recall", "f1_score", "fbeta_score", "r2_score", "iou")


def metric_problem(metric: str) -> str | None:
    """Why ``metric`` cannot be a study's metric, or None: ``val_<name>`` or ``test_<name>``."""
    split, _, name = metric.partition("_")
    if split not in ("val", "test") or not name or not name.replace("_", "a").isalnum() or not name[0].isalpha():
        return ("must be val_<name> or test_<name> of a metric the model reports "
                f"(for example {', '.join(METRICS)}, val_mae or val_auc)")
    return None


def default_direction(metric: str) -> str | None:
    """The direction of a metric whose name says it (losses and errors down, accuracies up); None
    where the study must say it."""
    name = metric.partition("_")[2]
    if name.endswith(LOWER_IS_BETTER):
        return "minimize"
    if name.endswith(HIGHER_IS_BETTER):
        return "maximize"
    return None


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
    conditional: Mapping[str, Mapping[str, Spec]] = field(default_factory=dict)  # [space.<value>] tables
    builder: str | None = None    # "module:function": the user's own model (hpo.study.builder)
    data: str = "cifar10"         # the data's source as the study file names it (hpo.study.data)
    subset: int | None = None     # the training images the study file asks for (None: all)
    loss: str | None = None       # [model] loss: a Keras loss by name (None: the builder's, or hpo's default)
    metrics: tuple[str, ...] = ()  # [model] metrics: Keras metrics by name, compiled with the loss
    keep_models: str = "best"     # "best": a trial's model is saved when it is the best so far; "all"; "none"

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def standard(self) -> bool:
        """Whether trials report what hpo's own compile gives (accuracy and loss, the report's
        columns): no loss or metrics of the study's own, and a metric of those four."""
        return self.metric in METRICS and self.loss is None and not self.metrics

    @property
    def measure(self) -> str:
        """The metric's name without its set: "accuracy" of "val_accuracy", "mae" of "test_mae"."""
        return self.metric.partition("_")[2]

    @property
    def curve_metric(self) -> str:
        """What every epoch reports (the dashboard's curves, and the pruner's input): the metric
        on the validation set (validation accuracy for the report's studies, scored on the test set)."""
        return f"val_{self.measure}"

    @property
    def test_metric(self) -> str:
        """What a confirmation ranks by: the metric on the test set (test accuracy, the report's
        number, for its studies)."""
        return f"test_{self.measure}"

    @property
    def scores(self) -> tuple[str, ...]:
        """The numbers of a trial the best-trial table shows: the report's three, or the metric on
        the validation and test sets and the losses."""
        if self.standard:
            return ("val_accuracy", "test_accuracy", "test_loss")
        return tuple(dict.fromkeys((f"val_{self.measure}", f"test_{self.measure}", "val_loss", "test_loss")))

    @property
    def test_scores(self) -> tuple[str, ...]:
        """The test-set numbers a configuration's repeats are averaged over."""
        return tuple(name for name in self.scores if name.startswith("test_"))

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
    def parameter_names(self) -> tuple[str, ...]:
        """Every parameter a trial may have, as Optuna names it: the report's first, then the
        rest of [space] in its order, then the conditional tables' (``deeper_dropout.dense_units``)."""
        names = [name for name in CANONICAL_ORDER if name in self.space]
        names += [name for name in self.space if name not in names]
        names += [f"{value}.{name}" for value, table in self.conditional.items() for name in table]
        return tuple(names)

    @property
    def grid(self) -> dict[str, list[Any]]:
        """The GridSampler search space: every parameter as a list of its values."""
        return {name: list(spec) for name, spec in self.space.items() if not isinstance(spec, Range)}

    @property
    def fixed(self) -> dict[str, Any]:
        """Parameters with a single value: recorded on every trial, but not searched (Optuna's
        parameters, and so the dashboard's importance chart, hold only what varies)."""
        return {name: spec[0] for name, spec in self.space.items()
                if not isinstance(spec, Range) and len(spec) == 1 and not spaces.depends(name, self.has_builder)}

    @property
    def has_builder(self) -> bool:
        return self.builder is not None

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
        data["conditional"] = {
            value: {name: asdict(spec) if isinstance(spec, Range) else list(spec) for name, spec in table.items()}
            for value, table in self.conditional.items()}
        data["references"] = [asdict(ref) for ref in self.references]
        data["points"] = [dict(point) for point in self.points]
        data["metrics"] = list(self.metrics)
        for key in ("loss", "metrics"):  # stored as before studies had them, where not set
            if not data[key]:
                del data[key]
        return data


def definition_from_dict(data: Mapping[str, Any], origin: str = "stored definition") -> StudyDefinition:
    """Rebuild a definition from :meth:`StudyDefinition.to_dict` output."""
    def specs(table: Mapping[str, Any]) -> dict[str, Spec]:
        return {name: Range(**spec) if isinstance(spec, dict) else tuple(spec) for name, spec in table.items()}

    refs = tuple(Reference(**ref) for ref in data.get("references", ()))
    points = tuple(dict(point) for point in data.get("points", ()))
    conditional = {value: specs(table) for value, table in data.get("conditional", {}).items()}
    fields = {k: v for k, v in data.items() if k not in ("space", "references", "points", "conditional", "metrics")}
    definition = StudyDefinition(**fields, space=specs(data["space"]), references=refs, points=points,
                                 conditional=conditional, metrics=tuple(data.get("metrics", ())))
    # The name is not checked again here: a study stored by an older hpo may carry a name the
    # study files no longer accept, and whatever writes files from it makes the name safe.
    spaces.validate(definition.space, definition.conditional, definition.sampler, origin, definition.has_builder,
                    listed_points=bool(definition.points))
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
