"""The builder of diabetes.toml: an MLP for a float target, not compiled (the study names its loss
and metrics: [model] loss = "mse", metrics = ["mae"])."""

import keras


def build(params, *, input_shape, num_classes):
    # num_classes is None: the targets are floats, not labels of classes.
    model = keras.Sequential([keras.Input(shape=input_shape)])
    for _ in range(params["layers"]):
        model.add(keras.layers.Dense(params["units"], activation="relu"))
    model.add(keras.layers.Dense(1))  # one number per patient, no activation
    return model
