"""The report's Table 1: its 30 rows, shipped with hpo, each measured on the stored trials.

The rows are data, ``table1.csv`` beside this module (package data, so an installed ``hpo``
has them without the repository's ``studies/`` folder), read and validated once. Augmentation
is named as the study files name it (``standard`` is the report's rotation 15, shift 0.1 and
horizontal flip). tests/test_report.py checks that the rows are, row for row, the
``[[reference]]`` rows of ``studies/exp*.toml``, so the two cannot drift apart.

Every row is in the table, in the report's order, whichever studies the storage holds. It is
measured on every study of its experiment (the definition's ``experiment``) whose space holds
the row's parameters, as mean and spread over the COMPLETE trials that ran exactly those
parameters; a row that no study has run says ``not run``.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.study.definition import PARAMETERS, Reference, StudyDefinition
from hpo.study.space import Range, check_value
from hpo.errors import ConfigError
from hpo.results.rows import mean_std
from hpo.storage import records
from hpo.study.data import CIFAR10_TRAIN, DataIdentity

FILE = "table1.csv"
# Its columns, in order, and the type of each (the same as the seed's table1.csv).
COLUMNS: dict[str, type] = {"experiment": int, "architecture": str, "learning_rate": float, "batch_size": int,
                            "epochs": int, "augmentation": str, "test_accuracy": float, "test_loss": float}


@dataclass(frozen=True)
class ReportRow:
    """One row of the report's Table 1: which experiment, what it ran, what it measured."""

    experiment: int
    reference: Reference

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.reference.params)


@functools.cache
def report_rows() -> tuple[ReportRow, ...]:
    """Table 1's rows in the report's order, from the packaged ``table1.csv``."""
    origin = f"hpo/results/{FILE}"
    try:
        text = resources.files("hpo.results").joinpath(FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{origin}: cannot read the report's Table 1 (is hpo installed whole?): {exc}") from None
    return parse(text, origin)


def parse(text: str, origin: str) -> tuple[ReportRow, ...]:
    """Rows from CSV text with exactly :data:`COLUMNS`; every error names the line and the column."""
    reader = csv.DictReader(io.StringIO(text))
    if list(reader.fieldnames or ()) != list(COLUMNS):
        raise ConfigError(f"{origin}: columns {reader.fieldnames} must be {list(COLUMNS)}")
    return tuple(_row(raw, f"{origin}: line {reader.line_num}") for raw in reader)


def _row(raw: dict[str, Any], where: str) -> ReportRow:
    values = {}
    for column, kind in COLUMNS.items():
        text = raw.get(column)
        try:
            values[column] = kind(text)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {column} = {text!r} must be {kind.__name__}") from None
    params = {name: values[name] for name in PARAMETERS}
    for name, value in params.items():
        check_value(name, value, where)
    if values["experiment"] < 1 or not 0.0 <= values["test_accuracy"] <= 1.0:
        raise ConfigError(f"{where}: experiment {values['experiment']} must be >= 1 and "
                          f"test_accuracy {values['test_accuracy']} between 0 and 1")
    return ReportRow(values["experiment"], Reference(params, values["test_accuracy"], values["test_loss"]))


# --- Measuring ----------------------------------------------------------------------------------

NOISE_FLOOR = 0.01   # run-to-run noise of one training, in test accuracy (seed README)
NOISE_TEST = "|diff_accuracy| > max(0.01, 2·std·√(1 + 1/n))"
NOISE_RULE = (f"a row differs from the report beyond run-to-run noise when {NOISE_TEST}: the report's "
              "number is ONE training run, so the difference between it and the mean of n measured "
              "runs varies with standard deviation std·√(1 + 1/n), std being the measured runs' "
              "spread; at least one percentage point (a single run's noise) where that is larger")

TABLE1_COLUMNS = ("study", "experiment", "architecture", "learning_rate", "batch_size", "epochs",
                  "augmentation", "n", "mean_test_accuracy", "std_test_accuracy", "mean_test_loss",
                  "report_accuracy", "report_loss", "diff_accuracy", "diff_loss", "tolerance", "note")
NOT_RUN = "not run"
BEYOND_NOISE = "beyond noise"


@dataclass
class StudyResult:
    """One study as the report reads it."""

    study: optuna.Study
    definition: StudyDefinition
    rows: list[dict[str, Any]] = field(default_factory=list)   # its Table 1 rows

    @property
    def name(self) -> str:
        return self.study.study_name

    @functools.cached_property
    def complete(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    @property
    def best(self) -> FrozenTrial | None:
        return self.study.best_trial if self.complete else None

    @property
    def data(self) -> DataIdentity | None:
        """What the study trains on (None: a study stored before hpo recorded it)."""
        saved = records.record_of(self.study).get(records.DATA_IDENTITY)
        return DataIdentity.from_dict(saved) if saved else None

    @property
    def on_report_data(self) -> bool:
        """Whether the study trains on the report's data, all of CIFAR-10: only then do the
        report's numbers belong beside its own. A study stored before hpo recorded its data
        counts where its trials trained on 50,000 images with no subset."""
        if self.data is not None:
            return self.data.is_report_data
        return bool(self.complete) and all(t.user_attrs.get(records.SUBSET) is None
                                           and t.user_attrs.get(records.TRAIN_IMAGES) == CIFAR10_TRAIN
                                           for t in self.complete)

    @property
    def data_note(self) -> str:
        """A note for a Table 1 row measured on other data than the report's."""
        if self.on_report_data:
            return ""
        return f"other data: {self.data.description}" if self.data is not None else "other data"


def reference_params(definition: StudyDefinition, reference: Reference) -> dict[str, Any]:
    """The full configuration of a reference row: its own params over the study's fixed ones."""
    return {**definition.fixed, **reference.params}


def same_params(wanted: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    for name, value in wanted.items():
        other = actual.get(name)
        if isinstance(value, float) or isinstance(other, float):
            if other is None or not math.isclose(float(value), float(other), rel_tol=1e-9):
                return False
        elif value != other:
            return False
    return True


def tolerance(std: float | None, n: int) -> float:
    """Two standard deviations of (mean of n runs - one run), floored at one point (see NOISE_RULE)."""
    if std is None or n < 2:
        return NOISE_FLOOR
    return max(NOISE_FLOOR, 2 * std * math.sqrt(1 + 1 / n))


def in_space(definition: StudyDefinition, params: Mapping[str, Any]) -> bool:
    """Whether the study can run ``params``: each is one of its values, or inside its range."""
    for name, value in params.items():
        spec = definition.space.get(name)
        if isinstance(spec, Range):
            if not spec.low <= value <= spec.high:
                return False
        elif spec is None or not any(same_params({name: value}, {name: choice}) for choice in spec):
            return False
    return True


def table1_rows(experiments: Sequence[StudyResult]) -> list[dict[str, Any]]:
    """Table 1, all its rows in the report's order: each measured on the COMPLETE trials of every
    study of its experiment that can run it (also kept in that study's ``rows``), or ``not run``."""
    table = []
    for wanted in report_rows():
        studies = [r for r in experiments
                   if r.definition.experiment == wanted.experiment and in_space(r.definition, wanted.params)]
        for result in studies:
            runs = [t for t in result.complete if same_params(wanted.params, records.trial_params(t))]
            result.rows.append(_measure(result.name, wanted, runs, result.data_note if runs else ""))
            table.append(result.rows[-1])
        if not studies:
            table.append(_measure(None, wanted, []))
    return table


def _measure(study: str | None, wanted: ReportRow, runs: list[FrozenTrial], other_data: str = "") -> dict[str, Any]:
    """A row of Table 1 measured on ``runs``; on other data than the report's (``other_data``
    says which) the difference is shown, but no verdict drawn from it."""
    reference = wanted.reference
    accuracy, std = mean_std(t.user_attrs.get("test_accuracy") for t in runs)
    loss, _ = mean_std(t.user_attrs.get("test_loss") for t in runs)
    limit = tolerance(std, len(runs))
    diff = accuracy - reference.test_accuracy if accuracy is not None else None
    diverged = sum(1 for t in runs if t.user_attrs.get("diverged"))
    notes = [NOT_RUN if not runs else "", f"diverged {diverged} of {len(runs)}" if diverged else "",
             BEYOND_NOISE if diff is not None and abs(diff) > limit and not other_data else "", other_data]
    note = ", ".join(filter(None, notes))
    return {
        "study": study,
        "experiment": wanted.experiment,
        **{name: reference.params.get(name) for name in PARAMETERS},
        "n": len(runs),
        "mean_test_accuracy": accuracy,
        "std_test_accuracy": std,
        "mean_test_loss": loss,
        "report_accuracy": reference.test_accuracy,
        "report_loss": reference.test_loss,
        "diff_accuracy": diff,
        "diff_loss": loss - reference.test_loss if loss is not None else None,
        "tolerance": limit if runs else None,
        "note": note,
    }
