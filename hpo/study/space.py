"""A study's search space: which parameters there are, what values each takes, and when each applies.

Three kinds of parameter share ``[space]``:

- **training**, hpo's own whatever the model: ``learning_rate``, ``batch_size``, ``epochs``,
  ``augmentation``, ``optimizer`` and the optimizer's settings ``momentum`` (sgd, rmsprop) and
  ``weight_decay`` (adamw);
- **model knobs** of the report's architectures: ``architecture`` picks one, and its
  ``conv_blocks``, ``filters_1`` .. ``filters_4``, ``dense_units``, ``dropout_conv``,
  ``dropout_dense`` and ``batch_norm`` default to the report's model (:data:`ARCHITECTURES`);
- with a ``[model] builder`` of the user's own, every other name: the builder's parameters.

A parameter is drawn only where it **applies** (a conditional parameter): ``filters_3`` only for
a model of 3 or more conv blocks, ``momentum`` only for sgd and rmsprop, and the parameters of a
table ``[space.<value>]`` only when a categorical parameter takes that value (say
``[space.deeper_dropout]``, or ``[space.sgd]``). Such a table's parameters are named
``<value>.<name>`` in Optuna (``deeper_dropout.dense_units``), and reach the model as ``<name>``.
So TPE learns each from the trials that drew it, and the importance chart holds only what
varied where it mattered.

Nothing here imports Keras: reading a study file stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hpo.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """A numeric range sampled by TPE or random search."""

    low: float
    high: float
    log: bool = False


Values = tuple[Any, ...]  # a categorical choice, or the points of a grid axis
Spec = Range | Values

MAX_CONV_BLOCKS = 4

# The report's three models, as values of the knobs. Knobs a model does not use (filters_2 of a
# one-block model) say what a search that adds blocks starts from: twice the filters before.
_BASE = {"conv_blocks": 1, "filters_1": 32, "filters_2": 64, "filters_3": 128, "filters_4": 256,
         "dense_units": 128, "dropout_conv": 0.0, "dropout_dense": 0.0, "batch_norm": False}
ARCHITECTURES: Mapping[str, Mapping[str, Any]] = {
    "base": _BASE,  # experiments 1 and 3
    "deeper_dropout": {**_BASE, "conv_blocks": 2, "filters_2": 128, "filters_3": 256, "filters_4": 512,
                       "dropout_conv": 0.25, "dropout_dense": 0.5},  # experiment 2
    "batchnorm": {**_BASE, "batch_norm": True},  # experiment 4
}
ARCHITECTURE_NAMES = tuple(ARCHITECTURES)
AUGMENTATION_NAMES = ("none", "standard")
# Each optimizer's settings and their defaults (Keras' own, but SGD's momentum: "SGD with momentum").
OPTIMIZERS: Mapping[str, Mapping[str, float]] = {
    "adam": {}, "sgd": {"momentum": 0.9}, "rmsprop": {"momentum": 0.0}, "adamw": {"weight_decay": 0.004}}

TRAINING = ("learning_rate", "batch_size", "epochs", "augmentation", "optimizer", "momentum", "weight_decay")
MODEL_KNOBS = ("architecture", "conv_blocks", *(f"filters_{i}" for i in range(1, MAX_CONV_BLOCKS + 1)),
               "dense_units", "dropout_conv", "dropout_dense", "batch_norm")
# Shown first, in this order, wherever a study's parameters are listed (the report's five first).
CANONICAL_ORDER = ("architecture", "augmentation", "optimizer", "learning_rate", "batch_size", "epochs")
DEFAULTS: Mapping[str, Any] = {"augmentation": "none", "optimizer": "adam"}
REQUIRED = ("learning_rate", "batch_size", "epochs")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return _number(value) and value == int(value)


def _one_of(names: tuple[str, ...], what: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in names else f"unknown {what} {v!r} (known: {', '.join(names)})"


def _integer_from(low: int, high: int | None = None) -> Callable[[Any], str | None]:
    top = f" and at most {high}" if high is not None else ""
    return lambda v: (None if _integer(v) and v >= low and (high is None or v <= high)
                      else f"{v!r} must be an integer >= {low}{top}")


def _fraction(v: Any) -> str | None:
    return None if _number(v) and 0 <= v < 1 else f"{v!r} must be a number >= 0 and < 1"


MAX_LEARNING_RATE = 10
MAX_EPOCHS = 10_000

# hpo's parameters: the problem with a value, or None.
CHECKS: Mapping[str, Callable[[Any], str | None]] = {
    "architecture": _one_of(ARCHITECTURE_NAMES, "architecture"),
    "augmentation": _one_of(AUGMENTATION_NAMES, "augmentation"),
    "optimizer": _one_of(tuple(OPTIMIZERS), "optimizer"),
    # At most what could be meant: no optimizer trains at a learning rate past 10, and no trial is
    # meant to run 10,000 epochs (a batch size is held to the training set when the study is made).
    "learning_rate": lambda v: (None if _number(v) and 0 < v <= MAX_LEARNING_RATE
                                else f"learning rate {v!r} must be a number > 0 and at most {MAX_LEARNING_RATE}"),
    "batch_size": lambda v: None if _integer(v) and v >= 1 else f"batch size {v!r} must be an integer >= 1",
    "epochs": lambda v: (None if _integer(v) and 1 <= v <= MAX_EPOCHS
                         else f"epochs {v!r} must be an integer >= 1 and at most {MAX_EPOCHS:,}"),
    "conv_blocks": _integer_from(1, MAX_CONV_BLOCKS),
    **{f"filters_{i}": _integer_from(1) for i in range(1, MAX_CONV_BLOCKS + 1)},
    "dense_units": _integer_from(1),
    "dropout_conv": _fraction,
    "dropout_dense": _fraction,
    "batch_norm": lambda v: None if isinstance(v, bool) else f"{v!r} must be true or false",
    "momentum": _fraction,
    "weight_decay": lambda v: None if _number(v) and v >= 0 else f"{v!r} must be a number >= 0",
}
NAMED = ("architecture", "augmentation", "optimizer")  # chosen from names, never a range
INTEGERS = ("batch_size", "epochs", "conv_blocks", *(f"filters_{i}" for i in range(1, MAX_CONV_BLOCKS + 1)),
            "dense_units")


def is_integer_range(name: str, spec: Range) -> bool:
    """Whether ``spec`` is drawn as integers: hpo's integer parameters, and a parameter of the
    user's own whose bounds are both written as integers."""
    return name in INTEGERS or (name not in CHECKS and isinstance(spec.low, int) and isinstance(spec.high, int))


def hpo_parameters(builder: bool) -> tuple[str, ...]:
    """The names hpo gives a meaning to: with a builder of the user's own, only training's."""
    return TRAINING if builder else (*TRAINING, *MODEL_KNOBS)


def check_value(name: str, value: Any, where: str, builder: bool = False) -> None:
    """Refuse a value hpo cannot train with; a builder's own parameters are the builder's to check."""
    check = CHECKS.get(name) if name in hpo_parameters(builder) else None
    problem = check(value) if check is not None else None
    if problem:
        raise ConfigError(f"{where}: {problem}")


# --- when a parameter applies ---------------------------------------------------------------------

def depends(name: str, builder: bool) -> bool:
    """Whether ``name`` applies depending on another parameter's value: drawn after every other."""
    return name in ("momentum", "weight_decay") or (not builder and (name.startswith("filters_")
                                                                      or name == "dropout_conv"))


def applies(name: str, values: Mapping[str, Any], builder: bool = False) -> bool:
    """Whether ``name`` has an effect, given the values drawn so far (and the model's defaults)."""
    optimizer = values.get("optimizer", DEFAULTS["optimizer"])
    if name in ("momentum", "weight_decay"):
        return name in OPTIMIZERS.get(optimizer, {})
    if builder or not depends(name, builder):
        return True
    blocks = values.get("conv_blocks", ARCHITECTURES.get(values.get("architecture", "base"), _BASE)["conv_blocks"])
    if name == "dropout_conv":  # a dropout between conv blocks: after each but the last
        return blocks >= 2
    return int(name.removeprefix("filters_")) <= blocks


def condition_of(value: str, space: Mapping[str, Spec]) -> str | None:
    """The categorical parameter of ``space`` that takes ``value`` (a ``[space.<value>]`` table's)."""
    parents = [name for name, spec in space.items() if not isinstance(spec, Range) and value in spec]
    return parents[0] if len(parents) == 1 else None


Draw = Callable[[str, str, Spec], Any]  # (Optuna's name, the model's name, spec) -> value


def resolve(space: Mapping[str, Spec], conditional: Mapping[str, Mapping[str, Spec]], draw: Draw,
            builder: bool = False) -> dict[str, Any]:
    """Draw the parameters that apply, in an order where each one's conditions are known first:
    the top level, then the tables of the values chosen, then what depends on others.

    Returns the drawn values under the model's names (``dense_units``, not
    ``deeper_dropout.dense_units``).
    """
    values: dict[str, Any] = {}
    later: list[tuple[str, str, Spec]] = []

    def visit(entries: Iterator[tuple[str, str, Spec]]) -> None:
        for optuna_name, name, spec in entries:
            if depends(name, builder):
                later.append((optuna_name, name, spec))
            else:
                values[name] = draw(optuna_name, name, spec)

    visit((name, name, spec) for name, spec in space.items())
    for value, table in conditional.items():
        parent = condition_of(value, space)
        if parent is not None and values.get(parent) == value:
            visit((f"{value}.{name}", name, spec) for name, spec in table.items())
    for optuna_name, name, spec in later:
        if applies(name, values, builder):
            values[name] = draw(optuna_name, name, spec)
    return values


MAX_PROBED_VALUES = 8  # of one categorical parameter, besides those that open a table


def _probed(values: Values, conditional: Mapping[str, Mapping[str, Spec]]) -> list[Any]:
    """The values of a categorical parameter a dry build tries: every one that opens a
    ``[space.<value>]`` table (its parameters are reached only so), and of the others at most
    :data:`MAX_PROBED_VALUES`, spread over the list from its first to its last: 10,000 values
    are not 10,000 dry builds."""
    tabled = {i for i, value in enumerate(values) if isinstance(value, str) and value in conditional}
    others = [i for i in range(len(values)) if i not in tabled]
    if len(others) > MAX_PROBED_VALUES:
        step = (len(others) - 1) / (MAX_PROBED_VALUES - 1)
        others = [others[round(k * step)] for k in range(MAX_PROBED_VALUES)]
    return [values[i] for i in sorted({*tabled, *others})]


def probe_points(space: Mapping[str, Spec], conditional: Mapping[str, Mapping[str, Spec]],
                 builder: bool = False) -> list[dict[str, Any]]:
    """A few points that together reach every parameter of the space: each parameter at its first
    value (a range: its low end), then each value (up to :data:`MAX_PROBED_VALUES` and those with a
    table, :func:`_probed`) of every categorical parameter that is the builder's own or chooses a
    ``[space.<value>]`` table. A dry build of a user's model tries each (:mod:`hpo.training.probe`)."""
    def first(choose: Mapping[str, Any]) -> Draw:
        def draw(_optuna_name: str, name: str, spec: Spec) -> Any:
            if name in choose:
                return choose[name]
            if isinstance(spec, Range):
                return int(spec.low) if is_integer_range(name, spec) else spec.low
            return spec[0]
        return draw

    points = [resolve(space, conditional, first({}), builder)]
    for name, spec in space.items():
        if isinstance(spec, Range) or (name in TRAINING and not any(value in conditional for value in spec)):
            continue
        for value in _probed(spec, conditional):
            point = resolve(space, conditional, first({name: value}), builder)
            if point not in points:
                points.append(point)
    return points


# --- validation -------------------------------------------------------------------------------------


def validate(space: Mapping[str, Spec], conditional: Mapping[str, Mapping[str, Spec]], sampler: str,
             origin: str, builder: bool = False, listed_points: bool = False) -> None:
    """Every spec well formed for its parameter and sampler; every table's value chosen by exactly
    one categorical; every conditional parameter able to apply somewhere. A grid of listed points
    (a confirmation) may hold conditional parameters: its points say which each has."""
    allowed = hpo_parameters(builder)
    for name in (*REQUIRED, *(() if builder else ("architecture",))):
        if name not in space:
            raise ConfigError(f"{origin}: space.{name} is missing")
    for key, spec in space.items():
        _check_spec(key, key, spec, sampler, origin, builder, allowed)
    if conditional and sampler == "grid" and not listed_points:
        raise ConfigError(f"{origin}: [space.{next(iter(conditional))}] is a conditional table; a grid takes every "
                          "parameter at the top of [space] (use the tpe or random sampler for conditional ones)")
    for value, table in conditional.items():
        parent = condition_of(value, space)
        if parent is None:
            raise ConfigError(f"{origin}: [space.{value}] names no value of a categorical parameter in [space] "
                              "(a table of conditional parameters is named by the value that chooses it)")
        for key, spec in table.items():
            where = f"{value}.{key}"
            if key in space:
                raise ConfigError(f"{origin}: space.{where} is also at the top of [space]; give it in one place")
            if key == parent or (key == "architecture" and not builder):
                raise ConfigError(f"{origin}: space.{where} cannot be conditional")
            _check_spec(where, key, spec, sampler, origin, builder, allowed)
            if key in ("momentum", "weight_decay") and parent == "optimizer" and key not in OPTIMIZERS.get(value, {}):
                raise ConfigError(f"{origin}: space.{where}: {value} takes no {key} "
                                  f"(it is a setting of {_takers(key)})")
    optimizers = {*(_choices(space, "optimizer") or (DEFAULTS["optimizer"],)),
                  *(o for table in conditional.values() for o in _choices(table, "optimizer"))}
    for key in ("momentum", "weight_decay"):
        if key in space and not any(key in OPTIMIZERS.get(o, {}) for o in optimizers):
            raise ConfigError(f"{origin}: space.{key}: no optimizer in space.optimizer takes it "
                              f"(it is a setting of {_takers(key)})")


def _takers(key: str) -> str:
    return " and ".join(name for name, settings in OPTIMIZERS.items() if key in settings)


def _choices(space: Mapping[str, Spec], name: str) -> Values:
    spec = space.get(name, ())
    return spec if not isinstance(spec, Range) else ()


def _check_spec(where: str, key: str, spec: Spec, sampler: str, origin: str, builder: bool,
                allowed: tuple[str, ...]) -> None:
    where = f"{origin}: space.{where}"
    if not builder and key not in allowed:
        shown = spec if isinstance(spec, Range) else spec[0] if len(spec) == 1 else list(spec)
        raise ConfigError(f"{where} = {shown!r} is not a parameter hpo knows (known: {', '.join(allowed)}); "
                          "a [model] builder of your own takes parameters of its own")
    if not key.isidentifier():
        raise ConfigError(f"{where}: a parameter's name is letters, digits and '_'")
    if isinstance(spec, Range):
        if sampler in ("grid", "fixed"):
            raise ConfigError(f"{where} = {{low, high}} needs the tpe or random sampler; "
                              f"a {sampler} study takes a list of values")
        if key in NAMED or key == "batch_norm":
            raise ConfigError(f"{where} must be a list of values, not a range")
        if not spec.low < spec.high:
            raise ConfigError(f"{where}: low = {spec.low!r} must be less than high = {spec.high!r}")
        if spec.log and spec.low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, not {spec.low!r}")
        if key in INTEGERS and not (_integer(spec.low) and _integer(spec.high)):
            raise ConfigError(f"{where}: {key} takes integers; low and high must be integers")
        for bound in (spec.low, spec.high):
            check_value(key, bound, where, builder)
        return
    if sampler == "fixed" and len(spec) != 1:
        raise ConfigError(f"{where} = {list(spec)!r} must be a single value for the fixed sampler")
    if len(set(map(repr, spec))) != len(spec):
        raise ConfigError(f"{where} = {list(spec)!r} lists a value twice")
    for value in spec:
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"{where}: {value!r} is not a string, number or true/false")
        check_value(key, value, where, builder)


def check_points_apply(points: Iterator[Mapping[str, Any]], origin: str, builder: bool) -> None:
    """Refuse a grid (or fixed study) that gives a parameter where it has no effect: it would
    train the same model under two names."""
    for point in points:
        for name in point:
            if depends(name, builder) and not applies(name, point, builder):
                if name in ("momentum", "weight_decay"):
                    cause = f"optimizer = {point.get('optimizer', DEFAULTS['optimizer'])!r}"
                else:
                    blocks = point.get("conv_blocks", ARCHITECTURES[point.get("architecture", "base")]["conv_blocks"])
                    cause = f"the model has {blocks} conv block(s)"
                raise ConfigError(f"{origin}: space.{name} has no effect where {cause}; a grid would train one "
                                  "model under several values (use the tpe or random sampler, or a [space.<value>] "
                                  "table)")
