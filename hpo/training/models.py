"""The report's CNN architectures: one parameterised builder each, in a small registry.

Building is kept apart from training (as keras-tuner's ``HyperModel.build`` is from ``fit``):
:func:`build_model` returns an uncompiled model, :func:`compile_model` adds the optimizer, loss
and metrics the report used. Every model takes pixels in 0..255 (uint8 or float), applies the
augmentation layer if one is asked for, rescales to 0..1, then runs the report's layer stack.
Only the public ``keras`` API is used, so the models run under any Keras backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType

import keras
from keras import layers

from hpo.training.augment import augmentation_layer
from hpo.study.definition import check_value  # the one learning-rate rule
from hpo.errors import ConfigError

logger = logging.getLogger(__name__)

LayerStack = Callable[[int], list[keras.layers.Layer]]


def _base(num_classes: int) -> list[keras.layers.Layer]:
    """Experiment 1 (and 3): the base model."""
    return [
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(num_classes, activation="softmax"),
    ]


def _deeper_dropout(num_classes: int) -> list[keras.layers.Layer]:
    """Experiment 2: a second conv block and dropout."""
    return [
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Dropout(0.25),
        layers.Conv2D(128, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ]


def _batchnorm(num_classes: int) -> list[keras.layers.Layer]:
    """Experiment 4: the base model with BatchNormalization after the conv and after Dense 128."""
    return [
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.BatchNormalization(),
        layers.Dense(num_classes, activation="softmax"),
    ]


# Each entry returns fresh layers, so two models never share weights.
ARCHITECTURES: Mapping[str, LayerStack] = MappingProxyType(
    {
        "base": _base,
        "deeper_dropout": _deeper_dropout,
        "batchnorm": _batchnorm,
    }
)


def build_model(
    architecture: str,
    *,
    augmentation: str = "none",
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    seed: int | None = None,
) -> keras.Model:
    """Build (not compile) the model for ``architecture`` with ``augmentation`` in front.

    ``seed`` seeds the augmentation layer's random draws; weight initialisation follows Keras'
    global seed (``keras.utils.set_random_seed``).

    Raises:
        ConfigError: unknown architecture or augmentation name.
    """
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {architecture!r}; valid names: {', '.join(ARCHITECTURES)}"
        )
    augment = augmentation_layer(augmentation, seed=seed)
    stack: list[keras.layers.Layer] = [keras.Input(shape=input_shape)]
    if augment is not None:
        stack.append(augment)
    stack.append(layers.Rescaling(1.0 / 255))
    stack.extend(ARCHITECTURES[architecture](num_classes))
    logger.debug("built %s (augmentation=%s, input_shape=%s)", architecture, augmentation, input_shape)
    return keras.Sequential(stack, name=architecture)


def compile_model(
    model: keras.Model,
    learning_rate: float,
    *,
    jit_compile: bool | str = "auto",
    steps_per_execution: int = 1,
) -> keras.Model:
    """Compile ``model`` as the report did: Adam, sparse categorical cross-entropy, accuracy.

    ``jit_compile="auto"`` lets Keras decide; note that on the TensorFlow backend it means no XLA
    on a CPU-only machine. Returns the same model, for chaining.

    Raises:
        ConfigError: ``learning_rate`` is not a positive finite number (the study files' rule,
            :mod:`hpo.study.definition`'s, so the two cannot drift apart).
    """
    check_value("learning_rate", learning_rate, "compile_model(learning_rate)")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model
