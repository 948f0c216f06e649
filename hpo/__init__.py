"""hpo: hyperparameter optimisation of Keras models on Optuna, from Python or the command line.

    import hpo
    result = hpo.tune(build, (x_train, y_train), test_data=(x_test, y_test), trials=20, workers=2,
                      space={"learning_rate": hpo.Range(1e-4, 1e-2, log=True), "batch_size": [32, 64],
                             "epochs": 10})
    result.table()          # the best-trial table, a pandas DataFrame
    hpo.launch("studies/exp3.toml", workers=2)
    hpo.results("exp3").best_params
    hpo.create("studies/exp1.toml")   # created and queued, its data and builder recorded

The names below import nothing heavy; Keras is loaded only by what trains (:mod:`hpo.training`).
"""

from __future__ import annotations

import hpo.results  # noqa: F401  (first: importing the package later would bind its name over results())
from hpo.api.result import Result
from hpo.api.tune import confirm, create, launch, results, tune
from hpo.errors import ConfigError, DataError, HpoError, OutputError, StorageError, StudyNotFound, TrialError
from hpo.storage.open import open_storage
from hpo.study.definition import StudyDefinition
from hpo.study.files import load_definition
from hpo.study.space import Range

__all__ = [
    "ConfigError",
    "DataError",
    "HpoError",
    "OutputError",
    "Range",
    "Result",
    "StorageError",
    "StudyDefinition",
    "StudyNotFound",
    "TrialError",
    "confirm",
    "create",
    "launch",
    "load_definition",
    "open_storage",
    "results",
    "tune",
]
