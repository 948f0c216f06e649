"""Getting studies ready to run: the one sequence every way of starting work goes through.

``hpo create``, ``launch``, ``worker``, ``confirm`` and :func:`hpo.tune` all do the same, in this
order, so that a refused study changes nothing: read what the storage holds of the study (without
creating a database), load its data and find its builder, checked against what the study recorded
(:class:`hpo.workers.inputs.Loader`), dry-build a builder of a study about to be created
(:mod:`hpo.training.probe`), and only then create the study and queue its trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.errors import ConfigError, StudyNotFound
from hpo.storage import records
from hpo.storage.open import StorageEmpty, open_storage
from hpo.storage.url import StorageURL
from hpo.study.builder import BuilderIdentity, LoadedBuilder, load_builder
from hpo.study.create import create_study, load_study, record_inputs, stored_record
from hpo.study.definition import MAX_NAME_LENGTH, StudyDefinition
from hpo.study import footprint
from hpo.study.space import Range
from hpo.training import limits
from hpo.workers import device
from hpo.training.data import Dataset
from hpo.workers.inputs import Inputs, Loader

LoadedStudy = tuple[optuna.Study, StudyDefinition]


@dataclass(frozen=True)
class Checked:
    """A study whose data and builder passed every check, not yet written: its definition, its
    inputs, its builder loaded, and the study itself where it exists already."""

    definition: StudyDefinition
    inputs: Inputs
    builder: LoadedBuilder | None
    existing: optuna.Study | None = None
    model_bytes: int | None = None  # what training its largest model needs, where it was sized (a new study)


def stored(url: StorageURL, name: str) -> dict[str, Any] | None:
    """hpo's stored record of study ``name``, or None where it does not exist yet; reading
    them makes nothing (no database file, no schema)."""
    try:
        storage = open_storage(url, retry_for=60.0, create=False)
    except StorageEmpty:
        return None
    return stored_record(storage, name)


def check_new(url: StorageURL, definition: StudyDefinition, loader: Loader, *, origin: str,
              study_file: str | None = None, builder: BuilderIdentity | None = None) -> Checked:
    """A study from a definition (a file's, or one made in Python), checked: its data loaded and
    its builder found (``builder``, where the caller has its identity) and, where the study is
    about to be created, tried once on the data."""
    attrs = stored(url, definition.name)
    inputs = loader.inputs(definition, study_file=study_file, attrs=attrs, builder=builder)
    suits(definition, inputs.data, origin)
    need = None
    if attrs is None:
        check_batch_sizes(definition, len(inputs.data.y_train), origin)
        if inputs.builder is None:  # a builder's model is sized at its dry build
            need = check_memory(definition, inputs.data.input_shape, inputs.data.num_classes, origin)
    loaded, built = builder_of(definition, inputs, new=attrs is None, origin=origin)
    return Checked(definition, inputs, loaded, model_bytes=need if built is None else built)


def suits(definition: StudyDefinition, data: Dataset, origin: str) -> None:
    """Refuse data that the study's model cannot train on: the report's CNNs, and augmentation,
    are for images with class labels."""
    if data.is_images:
        return
    targets = f"labels of {data.num_classes} classes" if data.has_classes else \
        f"{data.y_train.dtype} targets of shape {data.y_train.shape[1:] or '()'}"
    what = (f"{data.source} holds {data.x_train.dtype} examples of shape {data.input_shape} with {targets}, "
            "not uint8 images with class labels")
    if not definition.has_builder:
        raise ConfigError(f"{origin}: the report's CNNs train on images; {what}: tune a model of your own "
                          "([model] builder, or hpo.tune), or give uint8 images 0..255")
    augmentation = definition.space.get("augmentation", ("none",))
    if isinstance(augmentation, tuple) and any(value != "none" for value in augmentation):
        raise ConfigError(f"{origin}: space.augmentation: image augmentation does not apply; {what}")


def check_memory(definition: StudyDefinition, input_shape: tuple[int, ...], num_classes: int, origin: str) -> int:
    """Refuse a space whose largest model of the report's cannot train in the memory this
    machine has available (:mod:`hpo.study.footprint`), saying how much it needs; else return that.

    Raises:
        ConfigError: it needs more.
    """
    largest = footprint.largest_report_model(definition.space, definition.conditional, input_shape, num_classes)
    available = limits.available_memory()
    if largest.bytes > available:
        where = ", ".join(f"{k}={v}" for k, v in largest.point.items())
        raise ConfigError(f"{origin}: the space's largest model ({where}) on {'x'.join(map(str, input_shape))} "
                          f"images has {largest.parameters:,} parameters and needs about "
                          f"{limits.human(largest.bytes)} to train; this machine has {limits.human(available)} "
                          "available (smaller images, fewer dense_units or more conv_blocks make it smaller)")
    return largest.bytes


def check_batch_sizes(definition: StudyDefinition, train_examples: int, origin: str) -> None:
    """Refuse a batch size larger than the set a trial trains on (``train_examples`` less the
    validation split): it cannot be meant, and would train on one batch of everything.

    Raises:
        ConfigError: a batch size of the space, or a range's top, is larger.
    """
    trained = train_examples
    where = f"{train_examples} training examples"
    if definition.protocol == "validation_split":
        trained = math.floor(train_examples * (1 - definition.validation_split))
        where = f"{trained} of the {train_examples} training examples, less the validation split"
    tables = {"": definition.space, **{f"{value}.": table for value, table in definition.conditional.items()}}
    for prefix, table in tables.items():
        spec = table.get("batch_size")
        if spec is None:
            continue
        largest = spec.high if isinstance(spec, Range) else max(spec)
        if largest > trained:
            raise ConfigError(f"{origin}: space.{prefix}batch_size: {largest} is larger than the set a trial trains "
                              f"on ({where}); at most {trained}")


def checked_name(name: str) -> str:
    """A study name given by a user: no study can have a longer one than the study files allow
    (its characters are not held to their rule: a study stored by other means may have others,
    and every file hpo writes from a name makes it safe first)."""
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"study name {name[:57]!r}... is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
    return name


def existing(url: StorageURL, name: str) -> LoadedStudy:
    """A study that must exist already; reading it writes nothing, not even an empty schema."""
    checked_name(name)
    try:
        storage = open_storage(url, retry_for=60.0, create=False)
    except StorageEmpty as exc:
        raise StudyNotFound(f"no study named {name!r}: {exc}") from None
    return load_study(storage, name)


def check_existing(url: StorageURL, name: str, loader: Loader) -> Checked:
    """A study that exists (given by name), with its data and builder checked against its record."""
    study, definition = existing(url, name)
    inputs = loader.inputs(definition, attrs=records.record_of(study))
    return Checked(definition, inputs, builder_of(definition, inputs, new=False, origin=name)[0], study)


@dataclass(frozen=True)
class Ready:
    """A study in the storage, ready for workers: whether this call created it."""

    study: optuna.Study
    definition: StudyDefinition
    created: bool

    @property
    def loaded(self) -> LoadedStudy:
        return self.study, self.definition


def create(url: StorageURL, checked: Sequence[Checked], attrs: Mapping[str, Any] | None = None) -> list[Ready]:
    """Create (or load, unchanged) each checked study and queue its trials; a study given by name
    that was created before hpo recorded its data takes these."""
    storage = open_storage(url, retry_for=60.0)
    ready = []
    for c in checked:
        if c.existing is not None:
            record_inputs(storage, c.existing, c.inputs.identity, c.inputs.builder)
            ready.append(Ready(c.existing, c.definition, False))
            continue
        study, created = create_study(storage, c.definition, dict(attrs or {}), data=c.inputs.identity,
                                      builder=c.inputs.builder)
        ready.append(Ready(study, c.definition, created))
    return ready


def builder_of(definition: StudyDefinition, inputs: Inputs, *, new: bool,
               origin: str) -> tuple[LoadedBuilder | None, int | None]:
    """The study's own model builder, loaded; tried once on the data (a dry build) where the
    study is about to be created, so that a builder that cannot serve it is refused before any
    write. With it, the bytes its largest model needs to train, where it was dry-built."""
    if inputs.builder is None:
        return None, None
    loaded = load_builder(inputs.builder)
    if not new:
        return loaded, None
    device.apply()  # before Keras: its log level, and the GPU memory it takes as needed
    device.import_backend()
    from hpo.training.probe import check_builder  # noqa: PLC0415  (Keras: only for a model of the user's own)
    return loaded, check_builder(loaded, definition, input_shape=inputs.data.input_shape,
                                 num_classes=inputs.data.num_classes, origin=origin, data=inputs.data)
