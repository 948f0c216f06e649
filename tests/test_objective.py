"""One trial end to end in this process: parameters, seed, per-epoch reports, recorded numbers."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.config import load_definition
from hpo.objective import run_trial, trial_seed
from hpo.storage import open_storage
from hpo.study import create_study
from hpo.worker import run_worker

from conftest import write_study

SEARCH = """
trials = 4
[sampler]
type = "tpe"
seed = 7
[pruner]
type = "median"
[data]
protocol = "validation_split"
[space]
architecture = ["base", "deeper_dropout", "batchnorm"]
augmentation = ["none", "standard"]
learning_rate = { low = 1e-4, high = 1e-2, log = true }
batch_size = [32, 64]
epochs = { low = 1, high = 3 }
"""


def test_search_trials_record_the_report_columns_and_stream_epochs(tmp_path: Path, small_data) -> None:  # type: ignore[no-untyped-def]
    definition = load_definition(write_study(tmp_path, "search", SEARCH))
    study, _ = create_study(open_storage(f"sqlite:///{tmp_path / 'hpo.db'}"), definition)
    summary = run_worker(study, lambda trial: run_trial(trial, definition, small_data,
                                                        environment={"host": "test"}))
    assert summary.complete + summary.pruned == 4 and summary.failed == 0

    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        assert set(trial.params) == {"architecture", "augmentation", "learning_rate", "batch_size", "epochs"}
        assert 1e-4 <= trial.params["learning_rate"] <= 1e-2
        # One validation accuracy per epoch, the last one being the trial's value.
        assert sorted(trial.intermediate_values) == list(range(1, trial.params["epochs"] + 1))
        last_epoch = trial.intermediate_values[trial.params["epochs"]]
        assert trial.value == attrs["val_accuracy"] == pytest.approx(last_epoch, abs=1e-6)
        assert 0.0 <= attrs["test_accuracy"] <= 1.0 and attrs["test_loss"] > 0
        assert attrs["epochs_run"] == trial.params["epochs"]
        assert attrs["seed"] == trial_seed(definition, trial)
        assert attrs["train_images"] == len(small_data.x_train) and attrs["host"] == "test"
        assert attrs["fit_seconds"] > 0 and attrs["images_per_second"] > 0
        assert isinstance(attrs["diverged"], bool)


def test_same_seed_same_numbers(tmp_path: Path, small_data) -> None:  # type: ignore[no-untyped-def]
    """A trial's recorded seed reproduces it: the same grid point twice gives the same result."""
    body = """
trials = 2
[sampler]
type = "fixed"
[data]
protocol = "test"
[space]
architecture = "base"
augmentation = "none"
learning_rate = 0.001
batch_size = 64
epochs = 1
"""
    definition = load_definition(write_study(tmp_path, "fixed", body))
    results = []
    for run in range(2):
        storage = open_storage(f"sqlite:///{tmp_path / f'run{run}.db'}")
        study, _ = create_study(storage, definition)
        run_worker(study, lambda trial: run_trial(trial, definition, small_data), max_trials=1)
        results.append(study.get_trials(states=(TrialState.COMPLETE,))[0])
    assert results[0].user_attrs["seed"] == results[1].user_attrs["seed"]
    assert results[0].user_attrs["test_loss"] == results[1].user_attrs["test_loss"]


def test_a_blown_up_run_is_complete_and_flagged_diverged(tmp_path: Path, small_data) -> None:  # type: ignore[no-untyped-def]
    body = """
[sampler]
type = "grid"
[data]
protocol = "test"
[space]
architecture = "base"
augmentation = "none"
learning_rate = [5.0]
batch_size = [32]
epochs = [2]
"""
    definition = load_definition(write_study(tmp_path, "diverge", body))
    study, _ = create_study(open_storage(f"sqlite:///{tmp_path / 'hpo.db'}"), definition)
    run_worker(study, lambda trial: run_trial(trial, definition, small_data))
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["diverged"] is True
    assert trial.user_attrs["test_accuracy"] <= 0.2


def test_trial_seed_is_distinct_per_trial() -> None:
    study = optuna.create_study()
    definition = load_definition(Path(__file__).resolve().parents[1] / "studies" / "exp1.toml")
    seeds = {trial_seed(definition, study.ask()) for _ in range(5)}
    assert len(seeds) == 5


def test_test_columns_match_keras_evaluate(small_data) -> None:  # type: ignore[no-untyped-def]
    """The report's columns come from one predict pass; they equal model.evaluate's."""
    from hpo.train import Params, train

    result = train(Params("base", "none", 0.001, 64, 1), small_data, seed=3)
    loss, accuracy = result.model.evaluate(small_data.x_test, small_data.y_test, verbose=0)
    assert result.test_loss == pytest.approx(loss, rel=1e-5)
    assert result.test_accuracy == pytest.approx(accuracy, abs=1e-6)
    assert result.confusion.sum() == len(small_data.y_test)
    assert result.confusion.trace() == round(accuracy * len(small_data.y_test))
