"""Study files: TOML read into a validated :class:`~hpo.study.definition.StudyDefinition`.

Every error names the file, the key and the bad value. A file is at most 1 MiB, and may be a
pipe (``hpo create <(generate-study)``); a quoted glob names several.
"""

from __future__ import annotations

import glob
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hpo.errors import ConfigError
from hpo.study import space as spaces
from hpo.study.data import check_source
from hpo.study.definition import (DIRECTIONS, KEEP_MODELS, PARAMETERS, PROTOCOLS, PRUNERS, SAMPLERS, Reference,
                                  StudyDefinition, default_direction, metric_problem, name_problem)
from hpo.study.space import Range, Spec, check_value


MAX_STUDY_FILE_BYTES = 1 << 20  # the report's studies are under 2 KB; a 10,000-point grid under 100 KB


def load_definition(path: str | Path) -> StudyDefinition:
    """Read and validate a study file. A pipe (``<(...)``) is read like a file, up to the size
    limit: ``/dev/zero`` or a runaway generator is refused, not read until memory runs out."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a study file")
        with path.open("rb") as file:
            data = file.read(MAX_STUDY_FILE_BYTES + 1)
        if len(data) > MAX_STUDY_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_STUDY_FILE_BYTES >> 20} MiB; not a study file")
        raw = tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such study file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read study file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:  # arrays or tables nested thousands deep
        raise ConfigError(f"{path}: not a study file: nested too deeply") from None
    return _parse(raw, str(path))


def load_definitions(patterns: Sequence[str]) -> list[tuple[str, StudyDefinition]]:
    """The study files named, a quoted glob (``'studies/exp*.toml'``) expanded and sorted, each
    with its definition; two files may not name one study."""
    files: list[str] = []
    for pattern in patterns:
        if not glob.has_magic(pattern) or Path(pattern).exists():
            files.append(pattern)
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ConfigError(f"{pattern}: no study file matches")
        files += matches
    definitions: dict[str, tuple[str, StudyDefinition]] = {}
    for file in dict.fromkeys(files):
        definition = load_definition(file)
        if definition.name in definitions:
            raise ConfigError(f"{file}: study {definition.name!r} is also named by another study file")
        definitions[definition.name] = (file, definition)
    return list(definitions.values())


_SECTIONS: dict[str, set[str] | None] = {
    "study": {"name", "description", "direction", "metric", "trials", "max_retries", "experiment", "repeats",
              "share_prefixes", "trial_limit", "keep_models"},
    "sampler": {"type", "seed"},
    "pruner": {"type", "min_resource", "reduction_factor"},
    "data": {"protocol", "validation_split", "source", "subset"},
    "model": {"builder", "loss", "metrics"},
    "space": None,  # any name: hpo's parameters, a builder's, and [space.<value>] tables (hpo.study.space)
    "reference": {"test_accuracy", "test_loss", *PARAMETERS},
}


class _Reader:
    """Reads keys out of one TOML table and names file and key in every error."""

    def __init__(self, origin: str, section: str, table: Any) -> None:
        self.origin, self.section = origin, section
        if not isinstance(table, dict):
            self.fail(section, table, "must be a table")
        known = _SECTIONS[section.split("[")[0]]
        unknown = sorted(set(table) - known) if known is not None else []
        if unknown:
            self.fail(f"{section}.{unknown[0]}", table[unknown[0]], "is not a known key")
        self.table = table

    def fail(self, key: str, value: Any, problem: str) -> None:
        raise ConfigError(f"{self.origin}: {key} = {value!r} {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.table:
            if default is ...:
                raise ConfigError(f"{self.origin}: {self.section}.{key} is missing")
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.fail(f"{self.section}.{key}", value, f"must be {_kind_name(kind)}")
        if not isinstance(value, kind):
            self.fail(f"{self.section}.{key}", value, f"must be {_kind_name(kind)}")
        return value

    def integer(self, key: str, default: int, minimum: int, problem: str | None = None) -> int:
        """An integer key, refused below ``minimum`` ("must be at least N", or ``problem``)."""
        value = self.get(key, int, default)
        if value < minimum:
            self.fail(f"{self.section}.{key}", value, problem or f"must be at least {minimum}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            self.fail(f"{self.section}.{key}", value, f"must be one of {', '.join(choices)}")
        return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "a table", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def definition_from_tables(raw: dict[str, Any], origin: str) -> StudyDefinition:
    """A definition from the tables a study file holds (``{"study": {...}, "space": {...}}``),
    validated as a file's is: how a study defined in Python (:mod:`hpo.api.space`) is read."""
    return _parse(raw, origin)


def _parse(raw: dict[str, Any], origin: str) -> StudyDefinition:
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{origin}: [{unknown[0]}] is not a known section")
    study = _Reader(origin, "study", raw.get("study", {}))
    sampler = _Reader(origin, "sampler", raw.get("sampler", {}))
    pruner = _Reader(origin, "pruner", raw.get("pruner", {}))
    data = _Reader(origin, "data", raw.get("data", {}))
    model = _Reader(origin, "model", raw.get("model", {}))
    space_reader = _Reader(origin, "space", raw.get("space", {}))

    name = study.get("name", str)
    problem = name_problem(name)
    if problem:
        study.fail("study.name", name, problem)
    sampler_type = sampler.choice("type", SAMPLERS)
    protocol = data.choice("protocol", PROTOCOLS, "validation_split")
    split = float(data.get("validation_split", (int, float), 0.2 if protocol == "validation_split" else 0.0))
    if protocol == "validation_split" and not 0.0 < split < 1.0:
        data.fail("data.validation_split", split, "must be between 0 and 1 (exclusive)")
    metric = study.get("metric", str, "val_accuracy")
    problem = metric_problem(metric)
    if problem:
        study.fail("study.metric", metric, problem)
    known = default_direction(metric)
    if known is None and "direction" not in study.table:
        raise ConfigError(f"{origin}: study.direction is missing: say whether a higher {metric} is better "
                          "('maximize') or a lower one ('minimize')")
    direction = study.choice("direction", DIRECTIONS, known)

    trials = study.integer("trials", 1, minimum=1)
    max_retries = study.integer("max_retries", 2, minimum=0, problem="must be 0 or more")
    experiment = study.get("experiment", int, None)
    repeats = study.integer("repeats", 1, minimum=1)
    if repeats > 1 and sampler_type != "grid":
        study.fail("study.repeats", repeats, f"needs the grid sampler; a {sampler_type} study sets study.trials")
    share_prefixes = study.get("share_prefixes", bool, True)
    pruner_type = pruner.choice("type", PRUNERS, "none")
    for key in ("min_resource", "reduction_factor"):
        if key in pruner.table and pruner_type != "hyperband":
            pruner.fail(f"pruner.{key}", pruner.table[key], "is a hyperband setting; pruner.type is not hyperband")
    min_resource = pruner.integer("min_resource", 1, minimum=1, problem="must be at least 1 epoch")
    reduction_factor = pruner.integer("reduction_factor", 3, minimum=2)

    builder = model.get("builder", str, None)
    if builder is not None:
        problem = builder_problem(builder)
        if problem:
            model.fail("model.builder", builder, problem)
    loss, metrics = _compiled_with(model, builder, metric)
    source = data.get("source", str, "cifar10")
    problem = check_source(source)
    if problem:
        data.fail("data.source", source, problem)
    subset = data.get("subset", int, None)
    if subset is not None and subset < 10:
        data.fail("data.subset", subset, "must be at least 10")
    space, conditional = _parse_space(space_reader)
    spaces.validate(space, conditional, sampler_type, origin, builder is not None)

    definition = StudyDefinition(
        name=name,
        description=study.get("description", str, ""),
        direction=direction,
        metric=metric,
        sampler=sampler_type,
        seed=sampler.get("seed", int, 0),
        pruner=pruner_type,
        protocol=protocol,
        validation_split=split if protocol == "validation_split" else 0.0,
        trials=trials,
        max_retries=max_retries,
        space=space,
        experiment=experiment,
        references=tuple(_parse_references(raw.get("reference", []), origin)),
        repeats=repeats,
        share_prefixes=share_prefixes,
        min_resource=min_resource,
        reduction_factor=reduction_factor,
        trial_limit=study.integer("trial_limit", StudyDefinition.trial_limit, minimum=1),
        conditional=conditional,
        builder=builder,
        data=source,
        subset=subset,
        loss=loss,
        metrics=metrics,
        keep_models=study.choice("keep_models", KEEP_MODELS, "best"),
    )
    if definition.n_trials > definition.trial_limit:
        size = (f"the grid has {definition.n_points:,} points x {repeats} repeat(s) = {definition.n_trials:,} trials"
                if sampler_type == "grid" else f"study.trials = {trials:,}")
        raise ConfigError(f"{origin}: {size}, more than study.trial_limit = {definition.trial_limit:,}; every trial "
                          "is queued as a database row up front: raise study.trial_limit to queue them all")
    if sampler_type in ("grid", "fixed") and definition.pruner != "none":
        pruner.fail("pruner.type", definition.pruner, f"cannot be used with the {sampler_type} sampler")
    if sampler_type in ("grid", "fixed"):
        spaces.check_points_apply(_points(definition), origin, definition.has_builder)
    if definition.pruner == "hyperband" and min_resource >= definition.max_epochs:
        pruner.fail("pruner.min_resource", min_resource,
                    f"must be less than the most epochs a trial trains ({definition.max_epochs})")
    return definition


def _points(definition: StudyDefinition) -> Iterator[dict[str, Any]]:
    """A grid's points (all of them: at most trial_limit), or a fixed study's one."""
    if definition.sampler == "fixed":
        yield dict(definition.fixed) | {k: v[0] for k, v in definition.space.items() if not isinstance(v, Range)}
    else:
        yield from definition.grid_points


def builder_problem(builder: str) -> str | None:
    """Why ``builder`` cannot name a function as ``module:function``, or None."""
    module, _, function = builder.partition(":")
    if not function or not all(part.isidentifier() for part in module.split(".")) or not function.isidentifier():
        return "must name a function as module:function (e.g. my_models:build)"
    return None


def _parse_space(reader: _Reader) -> tuple[dict[str, Spec], dict[str, dict[str, Spec]]]:
    """[space]'s parameters, and its [space.<value>] tables of conditional ones."""
    space: dict[str, Spec] = {}
    tables: dict[str, dict[str, Any]] = {}
    for key, value in reader.table.items():
        if isinstance(value, dict) and not ({"low", "high"} & set(value)):
            tables[key] = value
        else:
            space[key] = _parse_spec(reader, value, f"space.{key}")
    conditional = {}
    for name, table in tables.items():
        if any(isinstance(v, dict) and not ({"low", "high"} & set(v)) for v in table.values()):
            reader.fail(f"space.{name}", table, "nests a table in a table: conditional tables are one level deep")
        conditional[name] = {key: _parse_spec(reader, v, f"space.{name}.{key}") for key, v in table.items()}
    return space, conditional


def _parse_spec(reader: _Reader, value: Any, where: str) -> Spec:
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"low", "high", "log"})
        if unknown or "low" not in value or "high" not in value:
            reader.fail(where, value, "must be a list of values or a table {low, high, log}")
        if not all(isinstance(value[k], (int, float)) and not isinstance(value[k], bool) for k in ("low", "high")):
            reader.fail(where, value, "must have numeric low and high")
        if not isinstance(value.get("log", False), bool):
            reader.fail(f"{where}.log", value["log"], "must be true or false")
        return Range(value["low"], value["high"], value.get("log", False))
    values = tuple(value) if isinstance(value, list) else (value,)
    if not values:
        reader.fail(where, value, "must not be an empty list")
    return values


def _parse_references(rows: Any, origin: str) -> list[Reference]:
    if not isinstance(rows, list):
        raise ConfigError(f"{origin}: reference must be an array of tables ([[reference]])")
    refs = []
    for i, row in enumerate(rows):
        reader = _Reader(origin, f"reference[{i}]", row)
        acc = float(reader.get("test_accuracy", (int, float)))
        loss = float(reader.get("test_loss", (int, float)))
        if not 0.0 <= acc <= 1.0:
            reader.fail(f"reference[{i}].test_accuracy", acc, "must be between 0 and 1")
        params = {k: v for k, v in row.items() if k in PARAMETERS}
        for key, value in params.items():
            check_value(key, value, f"{origin}: reference[{i}].{key}")
        refs.append(Reference(params=params, test_accuracy=acc, test_loss=loss))
    return refs


def _compiled_with(model: _Reader, builder: str | None, metric: str) -> tuple[str | None, tuple[str, ...]]:
    """``[model] loss`` and ``metrics``: Keras' names of a loss and of metrics, for a builder's
    model that is not compiled (checked against Keras at the dry build)."""
    loss = model.get("loss", str, None)
    metrics = model.get("metrics", list, [])
    for key, names in (("loss", [loss] if loss is not None else []), ("metrics", metrics)):
        if names and builder is None:
            model.fail(f"model.{key}", model.table[key], "needs model.builder: the report's CNNs compile their own")
        for name in names:
            if not isinstance(name, str) or not name.replace("_", "a").isalnum():
                model.fail(f"model.{key}", model.table[key], "must name Keras losses and metrics, "
                                                             "as in model.compile (\"mse\", [\"mae\"])")
    if len(set(metrics)) != len(metrics):
        model.fail("model.metrics", metrics, "names a metric twice")
    return loss, tuple(metrics)
