"""examples/digits and examples/diabetes run as their READMEs say, from a copy of the folder (a fresh clone's)."""

from __future__ import annotations

import csv
import importlib.util
import io
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo.storage import records

from conftest import ROOT, missing, ok, run_hpo


def _needs_sklearn() -> None:
    """The examples' data ships inside scikit-learn (the test extra has it): absent, the test is
    skipped here and fails in CI, as every missing prerequisite does."""
    if importlib.util.find_spec("sklearn") is None:
        missing("the example's data ships inside scikit-learn: pip install -e '.[examples]'")


def test_the_digits_example_tunes_its_own_model_on_its_own_data(tmp_path: Path) -> None:
    _needs_sklearn()
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("*.npz", "__pycache__"))
    made = subprocess.run([sys.executable, "examples/digits/make_data.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert "1442 training and 355 test images, 8x8x1, 10 classes" in made.stdout
    db = "sqlite:///digits.db"
    ok(run_hpo("launch", "examples/digits/digits.toml", "-n", "2", storage=db, cwd=tmp_path, timeout=900))
    exported = run_hpo("export", "digits", "--format", "csv", storage=db, cwd=tmp_path)
    ok(exported)

    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert list(rows[0])[2:13] == ["optimizer", "learning_rate", "batch_size", "epochs", "dropout", "family",
                                   "mlp.hidden_layers", "mlp.units", "cnn.conv_layers", "cnn.filters", "sgd.momentum"]
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / 'digits.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 30
    assert study.best_value > 0.9  # handwritten digits are easy: the best model is far above chance (10%)
    for row in rows:  # each family's knobs only where it was chosen, momentum only for SGD
        assert (row["mlp.units"] != "") == (row["family"] == "mlp")
        assert (row["cnn.filters"] != "") == (row["family"] == "cnn")
        assert (row["sgd.momentum"] != "") == (row["optimizer"] == "sgd")
    assert records.record_of(study)[records.DATA_IDENTITY]["class_names"] == [str(n) for n in range(10)]


def _copy_examples(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("*.npz", "__pycache__"))


def test_the_diabetes_study_file_tunes_a_regression_on_val_mae(tmp_path: Path) -> None:
    _needs_sklearn()
    _copy_examples(tmp_path)
    made = subprocess.run([sys.executable, "examples/diabetes/make_data.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    db = "sqlite:///diabetes.db"
    ok(run_hpo("launch", "examples/diabetes/diabetes.toml", "-n", "2", storage=db, cwd=tmp_path, timeout=900))
    exported = run_hpo("export", "diabetes", "--format", "csv", storage=db, cwd=tmp_path)
    ok(exported)
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert list(rows[0])[7:11] == ["val_mae", "test_mae", "val_loss", "test_loss"]
    complete = [float(row["val_mae"]) for row in rows if row["state"] == "COMPLETE"]
    assert complete == sorted(complete)  # minimised: the smallest error ranks first
    study = optuna.load_study(study_name="diabetes", storage=f"sqlite:///{tmp_path / 'diabetes.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 12
    assert study.best_value < 60  # predicting the training mean is off by 68.5 on this test set


def test_the_diabetes_script_tunes_a_compiled_model_from_python(tmp_path: Path) -> None:
    _needs_sklearn()
    _copy_examples(tmp_path)
    ran = subprocess.run([sys.executable, "examples/diabetes/tune.py", "4"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "val_mae" in ran.stdout and "test_mae" in ran.stdout and "best: {" in ran.stdout
    study = optuna.load_study(study_name="diabetes-api", storage=f"sqlite:///{tmp_path / 'diabetes.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert study.best_trial.user_attrs["test_loss"] != study.best_trial.user_attrs["test_mae"]  # Huber's, kept
