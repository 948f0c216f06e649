"""A study's record in words: the short user attributes the dashboard shows beside the study.

hpo's own record (definition, data, builder) is machine-read JSON, stored as system attributes
(hpo.storage.records), which the dashboard does not show; these lines say the same for a person.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpo.storage import records
from hpo.study.builder import BuilderIdentity
from hpo.study.data import DataIdentity
from hpo.study.definition import StudyDefinition


def study_attrs(definition: StudyDefinition, data: DataIdentity | None, builder: BuilderIdentity | None,
                confirms: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The study's user attributes, each one line."""
    shown = {records.SHOWN_STUDY: _study(definition), records.SHOWN_MODEL: _model(definition, builder)}
    if data is not None:
        shown[records.SHOWN_DATA] = data.description
    if confirms:
        trials = ", ".join(str(n) for n in confirms.get("trials", []))
        shown[records.SHOWN_CONFIRMS] = f"trials {trials} of study {confirms.get('study')!r}"
    return shown


def _study(definition: StudyDefinition) -> str:
    if definition.sampler == "grid":
        how = f"grid of {definition.n_points} points"
        if definition.repeats > 1:
            how += f" x {definition.repeats} repeats"
    else:
        how = f"{definition.sampler} sampler, {definition.n_trials} trials"
        if definition.pruner != "none":
            how += f", {definition.pruner} pruner"
    return f"{how}; {definition.direction} {definition.metric}"


def _model(definition: StudyDefinition, builder: BuilderIdentity | None) -> str:
    if builder is not None:
        where = "defined in Python, pickled" if builder.is_pickled else builder.file
        return f"{builder.builder} ({where}; sha256 {builder.sha256[:12]})"
    if definition.builder:
        return definition.builder
    spec = definition.space.get("architecture")
    if isinstance(spec, tuple):
        return f"hpo's built-in CNNs: {', '.join(str(v) for v in spec)}"
    return "hpo's built-in CNN, from the study's architecture knobs"
