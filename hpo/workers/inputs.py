"""What a study trains with, its data and its model, found and checked against what the study recorded.

Whoever creates a study (``hpo create``, ``launch``, ``confirm``, a worker given a study file)
loads its data and locates its builder, and the study records both
(:class:`hpo.study.data.DataIdentity`, :class:`hpo.study.builder.BuilderIdentity`). Every
worker does the same before it claims a trial and refuses, in one line, a study whose recorded
data or builder differs from its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.storage import records
from hpo.study.data import DataIdentity, check_named_copy, choose_subset, is_named, location, study_folder
from hpo.study.data import check_same as check_same_data
from hpo.study.definition import StudyDefinition
from hpo.study.builder import BuilderIdentity, check_same, locate
from hpo.training.data import Dataset, load_dataset


@dataclass(frozen=True)
class Inputs:
    """A study's data, loaded, and what identifies it and its builder."""

    data: Dataset
    identity: DataIdentity
    builder: BuilderIdentity | None


def stored_data(attrs: Mapping[str, Any]) -> DataIdentity | None:
    saved = attrs.get(records.DATA_IDENTITY)
    return DataIdentity.from_dict(saved) if saved else None


def stored_builder(attrs: Mapping[str, Any]) -> BuilderIdentity | None:
    saved = attrs.get(records.BUILDER)
    return BuilderIdentity.from_dict(saved) if saved else None


class Loader:
    """Loads each data set once, however many studies of a worker or launch train on it."""

    def __init__(self, data: str | None, subset: int | None) -> None:
        self.data, self.subset = data, subset
        self._loaded: dict[tuple[str, int | None], Dataset] = {}

    def inputs(self, definition: StudyDefinition, *, study_file: str | None = None,
               attrs: Mapping[str, Any] | None = None, builder: BuilderIdentity | None = None) -> Inputs:
        """The study's inputs, checked against ``attrs`` (its stored record:
        hpo.storage.records.study_record) where given.
        ``builder``: the builder's identity where the caller has it (a function given from Python)."""
        data_before, builder_before = stored_data(attrs or {}), stored_builder(attrs or {})
        subset = choose_subset(definition.subset, data_before, self.subset, definition.name)
        where = location(definition.data, study_file=study_file, stored=data_before, data=self.data)
        if (where, subset) not in self._loaded:
            dataset = load_dataset(where, subset=subset)
            if is_named(definition.data) and where != definition.data:
                origin = "--data" if self.data else "HPO_DATA"
                check_named_copy(definition.data, dataset.input_shape, dataset.num_classes, f"{origin} {where}")
            self._loaded[where, subset] = dataset
        dataset = self._loaded[where, subset]
        identity = identify(definition.data, dataset)
        if data_before is not None:
            check_same_data(data_before, identity, definition.name)
        builder = builder or _builder(definition, study_file, builder_before)
        if builder is not None and builder_before is not None:
            check_same(builder_before, builder, definition.name)
        return Inputs(dataset, identity, builder)


def _builder(definition: StudyDefinition, study_file: str | None,
             before: BuilderIdentity | None) -> BuilderIdentity | None:
    """The builder a study file names, found beside it; for a study given by name, the one it
    was created with: the function it holds, or its module's file as it is now."""
    if definition.builder is None:
        return None
    if study_file is not None or before is None:
        return locate(definition.builder, study_folder(study_file, follow=True) if study_file is not None else None)
    if before.is_pickled:
        return before
    return locate(definition.builder, Path(before.file).parent)


def identify(source: str, dataset: Dataset) -> DataIdentity:
    return DataIdentity(source=source, location=dataset.source, content=dataset.content, subset=dataset.subset,
                        seed=dataset.seed, shape=tuple(dataset.input_shape), class_names=tuple(dataset.class_names),
                        train=len(dataset.y_train), test=len(dataset.y_test), kind=dataset.kind)

