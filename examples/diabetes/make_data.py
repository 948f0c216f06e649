"""Write diabetes.npz: scikit-learn's diabetes data (442 patients, 10 standardised float features,
a float target: disease progression a year on), a fifth of it held out as the test set."""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes


def split() -> dict[str, np.ndarray]:
    x, y = load_diabetes(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    test = order[: len(y) // 5]
    train = order[len(y) // 5:]
    return {"x_train": x[train].astype("float32"), "y_train": y[train].astype("float32"),
            "x_test": x[test].astype("float32"), "y_test": y[test].astype("float32")}


if __name__ == "__main__":
    path = Path(__file__).with_name("diabetes.npz")
    np.savez(path, **split())
    print(f"wrote {path}")
