"""examples/digits runs as its README says, from a copy of the folder (a fresh clone's)."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, ok, run_hpo


def test_the_digits_example_tunes_its_own_model_on_its_own_data(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the example's data ships inside scikit-learn: pip install -e '.[examples]'")
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
    assert study.user_attrs["data"]["class_names"] == [str(n) for n in range(10)]
