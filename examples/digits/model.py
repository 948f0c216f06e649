"""The digits example's model: hpo calls ``build`` with each trial's parameters.

``build(params, *, input_shape, num_classes)`` returns an uncompiled Keras model taking images
of ``input_shape`` with pixels already scaled to 0..1 (hpo puts the rescaling, and any
augmentation, in front of it) and giving ``num_classes`` probabilities. hpo compiles it with the
trial's optimizer and learning rate. ``params`` holds every parameter of the trial, hpo's own
(learning_rate, batch_size, ...) among them; those of a ``[space.<family>]`` table arrive only
for the family chosen.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers


def build(params: dict[str, Any], *, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    if params["family"] == "cnn":
        x = inputs
        for _ in range(params["conv_layers"]):
            x = layers.Conv2D(params["filters"], 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
    else:  # "mlp"
        x = layers.Flatten()(inputs)
        for _ in range(params["hidden_layers"]):
            x = layers.Dense(params["units"], activation="relu")(x)
    x = layers.Dropout(params["dropout"])(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"digits_{params['family']}")
