"""A study's results, for Python: read from its storage whenever they are asked for, so a
result held in a notebook shows what the workers have recorded since."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo import paths
from hpo.api import prepare
from hpo.errors import OutputError
from hpo.results.rows import export_rows
from hpo.results.status import best_of, study_status
from hpo.storage import records
from hpo.storage.url import StorageURL
from hpo.study.definition import StudyDefinition


class Result:
    """Study ``name`` in the storage at ``url``: its table, its best trial, plots and report."""

    def __init__(self, url: StorageURL, name: str, artifacts: str | None = None) -> None:
        self.url, self.name, self.artifacts = url, name, artifacts
        prepare.existing(url, name)  # a study that does not exist is refused now, not at first use

    def _loaded(self) -> tuple[optuna.Study, StudyDefinition]:
        return prepare.existing(self.url, self.name)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study itself (``result.study.trials_dataframe()``, Optuna's plots)."""
        return self._loaded()[0]

    @property
    def definition(self) -> StudyDefinition:
        return self._loaded()[1]

    def table(self, by: str | None = None) -> Any:
        """The export's rows as a pandas DataFrame, best first (``hpo export``): one row per trial,
        or with ``by="configuration"`` per configuration, its mean and spread over repeats."""
        import pandas as pd  # noqa: PLC0415  (only the API needs pandas)

        study, definition = self._loaded()
        if by not in (None, "trial", "configuration"):
            raise ValueError(f"by must be 'trial' or 'configuration', got {by!r}")
        rows, columns = export_rows(records.storage_of(study), study, definition, by)
        return pd.DataFrame(rows, columns=list(columns))

    @property
    def best_trial(self) -> FrozenTrial | None:
        """The best COMPLETE trial by the study's metric and direction, or None before the first."""
        study, definition = self._loaded()
        return best_of(study.get_trials(deepcopy=False), definition)

    @property
    def best_params(self) -> dict[str, Any]:
        """The best trial's parameters, the single-valued ones included ({} before the first)."""
        best = self.best_trial
        return records.trial_params(best) if best is not None else {}

    @property
    def best_value(self) -> float | None:
        best = self.best_trial
        return best.value if best is not None else None

    def status(self) -> dict[str, Any]:
        """Trials by state, queue coverage and the best value (``hpo status --format json``)."""
        return study_status(*self._loaded()).to_dict()

    def plot(self) -> Any:
        """The search's history: every trial's value and the best so far (a matplotlib Axes)."""
        import warnings  # noqa: PLC0415  (with the plot's import below)

        from optuna.visualization.matplotlib import plot_optimization_history  # noqa: PLC0415  (matplotlib)

        study, definition = self._loaded()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot_optimization_history(study, target_name=definition.metric)
        axes.set_title(f"{self.name}: {definition.metric} by trial")
        return axes

    def report(self, output: str | Path) -> Path:
        """Write ``hpo report``'s report of this study into the folder ``output``; its path."""
        from hpo.results.report import write_report  # noqa: PLC0415  (matplotlib)

        study, _ = self._loaded()
        folder = paths.artifact_dir(self.url, self.artifacts, make=False)
        paths.folder(output, "output", make=False)
        try:
            return write_report(records.storage_of(study), [self.name], Path(output),
                                artifacts=folder if folder.is_dir() else None, storage_url=self.url)
        except OSError as exc:
            raise OutputError(f"output {output}: cannot write the report: {exc.strerror or exc}") from None

    def __repr__(self) -> str:
        study, definition = self._loaded()
        complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        best = self.best_value
        shown = f", best {definition.metric} {best:.4f}" if best is not None else ""
        return f"<hpo.Result {self.name!r}: {complete} of {definition.n_trials} trials complete{shown}>"
