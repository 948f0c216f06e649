"""The report's models, written the report's way: the baselines the benchmarks compare hpo with.

Kept apart from ``hpo.training.models`` on purpose: a baseline must be the report's own code
(``Sequential`` with ``input_shape``, images scaled to [0, 1] before the model), not hpo's builder.
Keras is imported inside the functions: a benchmark's child sets its backend and threads first.
"""

from __future__ import annotations

from typing import Any


def base_model() -> Any:
    """Experiments 1 and 3: Conv2D 32, MaxPool, Flatten, Dense 128, Dense 10."""
    from keras import layers, models

    return models.Sequential([
        layers.Conv2D(32, (3, 3), activation="relu", input_shape=(32, 32, 3)),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])


def batchnorm_model() -> Any:
    """Experiment 4: the base model with BatchNormalization after the conv and after Dense 128."""
    from keras import layers, models

    return models.Sequential([
        layers.Conv2D(32, (3, 3), activation="relu", input_shape=(32, 32, 3)),
        layers.BatchNormalization(),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.BatchNormalization(),
        layers.Dense(10, activation="softmax"),
    ])
