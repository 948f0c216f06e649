"""hpo: hyperparameter optimisation of Keras CIFAR-10 models on Optuna.

The public names below import nothing heavy; Keras is loaded only by the modules that train
(:mod:`hpo.training`).

    from hpo import load_definition, open_storage, create_study
    study, created = create_study(open_storage("sqlite:///hpo.db"), load_definition("studies/exp3.toml"))
"""

from __future__ import annotations

from hpo.study.definition import StudyDefinition
from hpo.study.files import load_definition
from hpo.errors import ConfigError, DataError, HpoError, StorageError, StudyNotFound
from hpo.storage.open import open_storage
from hpo.study.create import create_study, load_study

__all__ = [
    "ConfigError",
    "DataError",
    "HpoError",
    "StorageError",
    "StudyDefinition",
    "StudyNotFound",
    "create_study",
    "load_definition",
    "load_study",
    "open_storage",
]
