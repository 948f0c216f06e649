"""Tasks other than image classification, as a user tunes them: tabular float features with a
float target (a regression, its loss and metrics named in the study or compiled by the builder),
token ids, and what hpo refuses at create, in one line, before anything is written: the report's
CNNs or augmentation on data that is not images, a regression with no loss, a study metric the
model does not report, and a classifier that gives logits to hpo's cross-entropy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from conftest import ok, run_hpo, study_body, user_error, write_npz, write_study
from hpo.training.data import load_dataset

REGRESSION_MODULE = '''
import keras


def build(params, *, input_shape, num_classes):
    assert num_classes is None  # float targets: no classes
    return keras.Sequential([keras.Input(shape=input_shape),
                             keras.layers.Dense(params["units"], activation="relu"), keras.layers.Dense(1)])


def compiled(params, *, input_shape, num_classes):
    model = build(params, input_shape=input_shape, num_classes=num_classes)
    model.compile(optimizer=keras.optimizers.SGD(momentum=0.5), loss="mae", metrics=["mse"])
    return model
'''

REGRESSION_STUDY = '''
metric = "{metric}"
trials = 3
max_retries = 0

[sampler]
type = "random"
seed = 1

[data]
source = "linear.npz"

[model]
builder = "{builder}"
{model}

[space]
learning_rate = {{ low = 0.005, high = 0.05, log = true }}
batch_size = 16
epochs = 3
units = [8, 16]
'''


def write_linear(path: Path, train: int = 120, test: int = 40, features: int = 6) -> Path:
    """A regression set: y = x . w + noise, float32 features and target."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=features)
    arrays = {}
    for split, n in (("train", train), ("test", test)):
        x = rng.normal(size=(n, features)).astype(np.float32)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, (x @ w + 0.1 * rng.normal(size=n)).astype(np.float32)
    np.savez(path, **arrays)
    return path


def regression_study(folder: Path, name: str = "linear", *, metric: str = "val_mae", builder: str = "regression:build",
                     model: str = 'loss = "mse"\nmetrics = ["mae"]') -> Path:
    (folder / "regression.py").write_text(REGRESSION_MODULE, encoding="utf-8")
    write_linear(folder / "linear.npz")
    return write_study(folder, name, REGRESSION_STUDY.format(metric=metric, builder=builder, model=model))


def test_float_features_and_targets_load_as_arrays_of_their_own_dtype(tmp_path: Path) -> None:
    data = load_dataset(write_linear(tmp_path / "linear.npz"), subset=50, cache_dir=tmp_path / "cache")
    assert data.kind == "arrays" and not data.is_images and not data.has_classes
    assert data.input_shape == (6,) and data.num_classes == 0
    assert data.y_train.dtype == np.float32 and len(data.y_train) == 50 and len(data.y_test) == 10
    again = load_dataset(tmp_path / "linear.npz", subset=50, cache_dir=tmp_path / "cache")  # from the cache
    assert again.kind == "arrays" and np.array_equal(again.y_train, data.y_train)


def test_token_ids_with_integer_labels_are_classes_of_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tokens.npz", x_train=rng.integers(0, 500, (60, 20), dtype=np.int32),
             y_train=np.arange(60) % 3, x_test=rng.integers(0, 500, (15, 20), dtype=np.int32),
             y_test=np.arange(15) % 3)
    data = load_dataset(tmp_path / "tokens.npz", cache_dir=tmp_path / "cache")
    assert data.kind == "arrays" and data.has_classes and data.num_classes == 3
    assert data.x_train.dtype == np.int32 and data.input_shape == (20,)


def test_a_regression_tuned_on_val_mae_through_the_cli_ranks_ascending(storage_url: str, tmp_path: Path) -> None:
    study_file = regression_study(tmp_path)
    ok(run_hpo("launch", str(study_file), "-n", "2", storage=storage_url, cwd=tmp_path))
    exported = run_hpo("export", "linear", "--format", "json", storage=storage_url, cwd=tmp_path)
    ok(exported)
    rows = json.loads(exported.stdout)
    assert [row["state"] for row in rows] == ["COMPLETE"] * 3
    assert {"val_mae", "test_mae", "val_loss", "test_loss"} <= set(rows[0]) and "test_accuracy" not in rows[0]
    values = [row["val_mae"] for row in rows]
    assert values == sorted(values)  # minimised: the smallest error first
    study = optuna.load_study(study_name="linear", storage=storage_url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    trial = study.best_trial
    assert trial.value == trial.user_attrs["val_mae"]
    # The epochs' curve (the pruner's input) is the metric on the validation set.
    assert list(trial.intermediate_values.values())[-1] == pytest.approx(trial.value, abs=1e-6)
    assert not any(name.startswith("confusion") for name in trial.user_attrs)

    # Its report opens with its own results, not with the report's Table 1 it has no part in.
    ok(run_hpo("report", "linear", "--output", str(tmp_path / "report"), storage=storage_url, cwd=tmp_path))
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Table 1" not in report and not (tmp_path / "report" / "table1.csv").exists()
    first = report.split("## Findings")[1].strip().splitlines()[0]
    assert first.startswith(f"- Best trial of study linear: trial {trial.number} (")
    assert f"val_mae {trial.value:.4f}, test mae" in first


def test_a_compiled_model_keeps_its_loss_and_metrics(tmp_path: Path) -> None:
    study_file = regression_study(tmp_path, metric="val_mse", builder="regression:compiled", model="")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    ok(run_hpo("launch", str(study_file), "-n", "1", storage=db, cwd=tmp_path))
    study = optuna.load_study(study_name="linear", storage=db)
    attrs = study.best_trial.user_attrs
    assert {"val_mse", "test_mse", "val_loss", "test_loss"} <= set(attrs)
    # Its loss is MAE, as compiled, not hpo's default: the test loss is a mean absolute error, not
    # the mean squared one, and (Jensen) its square is at most the MSE.
    assert attrs["test_loss"] != pytest.approx(attrs["test_mse"])
    assert attrs["test_loss"] ** 2 <= attrs["test_mse"] + 1e-6


@pytest.mark.parametrize(("case", "fragments"), [
    ("report CNN on tabular data", ("the report's CNNs train on images", "float32 examples of shape (6,)")),
    ("augmentation on tabular data", ("space.augmentation", "does not apply")),
    ("regression with no loss", ("the study names no loss", "[model] loss")),
    ("metric the model does not report", ("val_auc", "reports only val_loss, val_mae")),
    ("unknown loss", ("cannot", "no_such_loss")),
    ("metric of no set", ("study.metric", "val_<name> or test_<name>")),
    ("metric of no known direction", ("study.direction is missing", "val_wobble")),
])
def test_what_a_task_cannot_train_is_refused_at_create(tmp_path: Path, case: str, fragments: tuple[str, ...]) -> None:
    db = tmp_path / "s.db"
    if case == "report CNN on tabular data":
        write_linear(tmp_path / "linear.npz")
        study_file = write_study(tmp_path, "linear", study_body(data={"source": "linear.npz"}))
    elif case == "augmentation on tabular data":
        study_file = regression_study(tmp_path)
        text = study_file.read_text().replace("units = [8, 16]", 'units = [8, 16]\naugmentation = ["none", "standard"]')
        study_file.write_text(text)
    elif case == "regression with no loss":
        study_file = regression_study(tmp_path, model="")
    elif case == "metric the model does not report":
        study_file = regression_study(tmp_path, metric="val_auc")
        text = study_file.read_text().replace('metric = "val_auc"', 'metric = "val_auc"\ndirection = "maximize"')
        study_file.write_text(text)
    elif case == "unknown loss":
        study_file = regression_study(tmp_path, model='loss = "no_such_loss"')
    elif case == "metric of no set":
        study_file = regression_study(tmp_path, metric="mae")
    else:
        study_file = regression_study(tmp_path, metric="val_wobble")
    user_error(run_hpo("create", str(study_file), storage=f"sqlite:///{db}", cwd=tmp_path), *fragments)
    assert not db.exists()  # nothing written


LOGITS_MODULE = '''
import keras


def build(params, *, input_shape, num_classes):
    return keras.Sequential([keras.Input(shape=input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes)])  # logits: no softmax
'''


def test_a_classifier_giving_logits_to_hpos_cross_entropy_is_refused(tmp_path: Path) -> None:
    (tmp_path / "logits.py").write_text(LOGITS_MODULE, encoding="utf-8")
    write_npz(tmp_path / "shapes.npz")
    study_file = write_study(tmp_path, "logits", REGRESSION_STUDY.format(
        metric="val_accuracy", builder="logits:build", model="").replace("linear.npz", "shapes.npz")
        .replace("units = [8, 16]", ""))
    user_error(run_hpo("create", str(study_file), storage=f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path),
               "outputs are not probabilities", "softmax")
