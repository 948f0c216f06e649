"""Creating and loading studies, with their definition stored beside them.

The resolved definition is stored with the study (hpo.storage.records), as nanoGPT saves its config in every
checkpoint: any result can be traced to what produced it, and a worker needs only the study
name. The sampler and pruner are rebuilt from it on every load.
"""

from __future__ import annotations

import json
import logging
import uuid
import warnings
from typing import Any

import optuna

from hpo.study import plan
from hpo.study import queueing
from hpo.study import shown

from hpo.storage import records
from hpo.study.definition import StudyDefinition, definition_from_dict
from hpo.errors import ConfigError, StudyNotFound
from hpo.study.builder import BuilderIdentity, check_same
from hpo.study.data import DataIdentity
from hpo.study.data import check_same as check_same_data
from hpo.storage.lock import study_lock

log = logging.getLogger(__name__)


def make_pruner(definition: StudyDefinition) -> optuna.pruners.BasePruner:
    if definition.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if definition.pruner == "hyperband":
        # Resources are epochs: rungs at min_resource x reduction_factor^k, up to the epoch range's top.
        return optuna.pruners.HyperbandPruner(min_resource=definition.min_resource,
                                              max_resource=definition.max_epochs,
                                              reduction_factor=definition.reduction_factor)
    return optuna.pruners.NopPruner()


def create_study(storage: optuna.storages.BaseStorage, definition: StudyDefinition,
                 attrs: dict[str, Any] | None = None, *, data: DataIdentity | None = None,
                 builder: BuilderIdentity | None = None) -> tuple[optuna.Study, bool]:
    """Create the study and queue its trials, or load it if it exists with this definition.

    ``attrs`` are further study user attributes, stored with the definition, as are ``data`` and
    ``builder``, what the study trains with. Returns the study and whether it was created now. A
    different definition, data or builder under an existing name is refused: its stored results
    would no longer mean what they say.
    """
    wanted = _normalise(definition.to_dict())
    # Under the study's lock: any number of processes on any hosts may create the same study
    # at once, and its trials are still queued exactly once.
    with study_lock(storage, definition.name) as still_held:
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=definition.name,
                direction=optuna.study.StudyDirection[definition.direction.upper()],
                sampler=plan.make_sampler(definition),
                pruner=make_pruner(definition),
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = _load(storage, definition)
            created = False
        record = records.record_of(study)
        stored_definition = record.get(records.DEFINITION)
        if stored_definition is not None:
            # As this hpo reads it: keys added since (with their defaults) are no difference.
            stored_definition = _normalise(definition_from_dict(stored_definition).to_dict())
            if stored_definition != wanted:
                raise ConfigError(
                    f"study {definition.name!r} already exists with a different definition "
                    f"({_first_difference(stored_definition, wanted)}); give the changed study a new name"
                )
            _record_inputs(study, record, data, builder)
            return study, created
        # New, or a create that died half-way: queue what is missing, then mark the study ready.
        if not created:
            _check_half_way(study, record, definition, wanted)
        records.set_record(study, records.QUEUEING, wanted)
        added = queueing.add_missing(study, definition, still_held)
        with warnings.catch_warnings():  # Optuna calls it experimental; hpo relies on it on purpose
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([definition.metric])
        _save_note(study, definition, data)
        for key, value in (attrs or {}).items():
            records.set_record(study, key, value)
        if records.UID not in record:  # kept by a create that finishes one that died half-way
            records.set_record(study, records.UID, uuid.uuid4().hex)
        _record_inputs(study, record, data, builder)
        for key, text in shown.study_attrs(definition, data, builder, (attrs or {}).get(records.CONFIRMS)).items():
            study.set_user_attr(key, text)
        records.set_record(study, records.DEFINITION, wanted)
    log.info("study %s: %d trials queued", definition.name, added)
    return study, True


def _check_half_way(study: optuna.Study, record: dict[str, Any], definition: StudyDefinition, wanted: Any) -> None:
    """A create that died while it queued this study's trials is finished only by one of the same
    definition: another would leave the first one's trials queued beside its own."""
    queueing_for = record.get(records.QUEUEING)
    if queueing_for is not None:
        before = _normalise(definition_from_dict(queueing_for).to_dict())
        if before != wanted:
            raise ConfigError(f"study {definition.name!r} was being created with a different definition when its "
                              f"create stopped ({_first_difference(before, wanted)}); create it again with the same "
                              f"file, or delete it first (optuna delete-study --study-name {definition.name})")
        return
    # Begun by an hpo that did not record what it queued: its trials must all be slots of this one.
    outside = [t for t in study.get_trials(deepcopy=False)
               if t.system_attrs.get(records.SLOT, definition.n_trials) >= definition.n_trials]
    if outside:
        raise ConfigError(f"study {definition.name!r} was being created when its create stopped, and holds "
                          f"{len(outside)} trials that this definition has no place for; delete it first "
                          f"(optuna delete-study --study-name {definition.name})")


def _record_inputs(study: optuna.Study, record: dict[str, Any], data: DataIdentity | None,
                   builder: BuilderIdentity | None) -> None:
    """Store the study's data and builder; where stored already (by its creator, or a worker of a
    study created before hpo recorded them), refuse others."""
    name = study.study_name
    if data is not None:
        stored = record.get(records.DATA_IDENTITY)
        if stored is None:
            records.set_record(study, records.DATA_IDENTITY, data.to_dict())
        else:
            check_same_data(DataIdentity.from_dict(stored), data, name)
    if builder is not None:
        stored = record.get(records.BUILDER)
        if stored is None:
            records.set_record(study, records.BUILDER, builder.to_dict())
        else:
            check_same(BuilderIdentity.from_dict(stored), builder, name)


def record_inputs(storage: optuna.storages.BaseStorage, study: optuna.Study, data: DataIdentity | None,
                  builder: BuilderIdentity | None) -> None:
    """:func:`create_study`'s record of what an existing study trains with, for a worker given its
    name: a study created before hpo recorded them takes the first worker's.

    Where both are recorded already (every study hpo created), this only compares, and takes no
    lock: workers starting together do not queue for it (nor, on PostgreSQL, hold a connection
    each while they wait)."""
    record = records.record_of(study)
    if (data is None or records.DATA_IDENTITY in record) and (builder is None or records.BUILDER in record):
        _record_inputs(study, record, data, builder)
        return
    with study_lock(storage, study.study_name):
        _record_inputs(study, records.record_of(study), data, builder)


def stored_record(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any] | None:
    """hpo's record of the study ``name`` (:func:`hpo.storage.records.study_record`), or None where
    there is no such study yet."""
    return records.records_by_name(storage).get(name)


def load_study(storage: optuna.storages.BaseStorage, name: str) -> tuple[optuna.Study, StudyDefinition]:
    """Load a study by name, with its sampler and pruner rebuilt from its stored definition."""
    by_name = records.records_by_name(storage)
    if name not in by_name:
        known = ", ".join(sorted(by_name)) or "none"
        raise StudyNotFound(f"no study named {name!r} in this storage (studies: {known})")
    saved = by_name[name].get(records.DEFINITION)
    if saved is None:
        raise StudyNotFound(f"study {name!r} was not created by hpo (no stored definition); run hpo create")
    definition = definition_from_dict(saved, origin=f"study {name!r}")
    return _load(storage, definition), definition


def _load(storage: optuna.storages.BaseStorage, definition: StudyDefinition) -> optuna.Study:
    return optuna.load_study(
        study_name=definition.name,
        storage=storage,
        sampler=plan.make_sampler(definition),
        pruner=make_pruner(definition),
    )


def _normalise(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data))


def _first_difference(stored: Any, wanted: Any, path: str = "") -> str:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in sorted(set(stored) | set(wanted)):
            if stored.get(key) != wanted.get(key):
                return _first_difference(stored.get(key), wanted.get(key), f"{path}.{key}" if path else key)
    return f"{path}: stored {stored!r}, file says {wanted!r}"


def _save_note(study: optuna.Study, definition: StudyDefinition, data: DataIdentity | None) -> None:
    """The description, the data, the parameters and the report's numbers, shown as the study's
    note in the dashboard."""
    lines = [f"# {definition.name}", "", definition.description, ""]
    if data is not None:
        lines += [f"Data: {data.description}; classes {', '.join(data.class_names[:20])}"
                  + (", ..." if len(data.class_names) > 20 else "") + ".", ""]
    lines += [f"Parameters: {', '.join(definition.parameter_names)}"
              + (f"; model built by `{definition.builder}`" if definition.builder else "") + ".", ""]
    if definition.references:
        names = sorted({k for ref in definition.references for k in ref.params})
        lines += ["## The report's Table 1", "",
                  "Measured by the report on all of CIFAR-10"
                  + ("." if data is None or data.is_report_data else f"; this study trains on {data.description}."), "",
                  "| " + " | ".join(names) + " | test accuracy | test loss |",
                  "|" + "---|" * (len(names) + 2)]
        for ref in definition.references:
            cells = [str(ref.params.get(n, "")) for n in names]
            lines.append(f"| {' | '.join(cells)} | {ref.test_accuracy:.4f} | {ref.test_loss:.2f} |")
    # optuna_dashboard imports scikit-learn (about 1.6 s): only a create that writes a note needs it,
    # not every command that imports this module to read a study.
    from optuna_dashboard import save_note  # noqa: PLC0415  (see above)

    save_note(study, "\n".join(lines))
