"""Regression from Python: a compiled model (its own loss and metrics kept) tuned on arrays in
memory, ranked by validation MAE (lower is better).

    python examples/diabetes/tune.py [TRIALS]
"""

import sys

import keras
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split

import hpo


def build(params, input_shape, num_classes):
    model = keras.Sequential([keras.Input(shape=input_shape),
                              keras.layers.Dense(params["units"], activation="relu"),
                              keras.layers.Dense(1)])
    # hpo keeps this loss and these metrics; the trial's learning rate replaces Adam's default.
    model.compile(optimizer="adam", loss="huber", metrics=["mae"])
    return model


if __name__ == "__main__":
    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x.astype("float32"), y.astype("float32"),
                                                        test_size=0.2, random_state=0)
    result = hpo.tune(build, (x_train, y_train), test_data=(x_test, y_test),
                      space={"learning_rate": hpo.Range(0.003, 0.1, log=True), "batch_size": [16, 32],
                             "epochs": 100, "units": [16, 64]},
                      trials=int(sys.argv[1]) if len(sys.argv) > 1 else 12, workers=2,
                      storage="sqlite:///diabetes.db", name="diabetes-api", metric="val_mae")
    print(result.table().to_string(index=False))
    print(f"best: {result.best_params}, val_mae {result.best_value:.2f}")
