"""Trials end to end in this process: parameters, seeds, per-epoch reports, pruning, recorded numbers,
and what counts as a diverged run."""

from __future__ import annotations

import functools

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpo.storage import records
from hpo.study.definition import StudyDefinition
from hpo.study.files import load_definition
from hpo.training.data import load_dataset
from hpo.training.checkpoints import Checkpoints
from hpo.training.objective import run_trial
from hpo.results.curves import search_curve
from hpo.results.rows import trial_row
from hpo.storage.open import open_storage
from hpo.study.create import create_study, load_study
from hpo.training.train import JUDGE_AFTER_STEPS, Params, _diverged, train
from hpo.workers.loop import Job, WorkerSummary, run_worker

from conftest import study_body, write_study

SEARCH = study_body("tpe", seed=7, pruner="median", study={"trials": 4}, data={"protocol": "validation_split"},
                    architecture=["base", "deeper_dropout", "batchnorm"], augmentation=["none", "standard"],
                    learning_rate={"low": 1e-4, "high": 1e-2, "log": True}, batch_size=[32, 64],
                    epochs={"low": 1, "high": 3})

LN10 = math.log(10)


def _run(tmp_path: Path, data, body: str, name: str = "study", db: str = "hpo.db",
         pruner: optuna.pruners.BasePruner | None = None) -> tuple[list[FrozenTrial], WorkerSummary, StudyDefinition]:
    """Create the study in a fresh SQLite file and let one worker run all of it."""
    definition = load_definition(write_study(tmp_path, name, body))
    study, _ = create_study(open_storage(f"sqlite:///{tmp_path / db}"), definition)
    if pruner is not None:
        study.pruner = pruner
    checkpoints = Checkpoints(tmp_path / "store", name)  # every epoch, as a worker keeps them
    objective = functools.partial(run_trial, definition=definition, data=data, environment={"host": "test"},
                                  checkpoints=checkpoints)
    summary = run_worker([Job(study, definition, objective, None, checkpoints)])
    assert not list(checkpoints.folder.glob("*.npz"))  # every trial ended (completed, pruned): none is left
    return sorted(study.get_trials(), key=lambda t: t.number), summary, definition


def test_search_trials_record_the_report_columns_and_stream_epochs(tmp_path: Path, small_data) -> None:
    trials, summary, definition = _run(tmp_path, small_data, SEARCH, "search")
    # Four trials are fewer than the median pruner's five start-up trials: all of them complete.
    assert (summary.complete, summary.pruned, summary.failed) == (4, 0, 0)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4

    for trial in trials:
        attrs = trial.user_attrs
        assert set(trial.params) == {"architecture", "augmentation", "learning_rate", "batch_size", "epochs"}
        assert 1e-4 <= trial.params["learning_rate"] <= 1e-2
        # One validation accuracy per epoch, the last one being the trial's value.
        assert sorted(trial.intermediate_values) == list(range(1, trial.params["epochs"] + 1))
        last_epoch = trial.intermediate_values[trial.params["epochs"]]
        assert trial.value == attrs["val_accuracy"] == pytest.approx(last_epoch, abs=1e-6)
        assert 0.0 <= attrs["test_accuracy"] <= 1.0 and attrs["test_loss"] > 0
        assert attrs["epochs_run"] == trial.params["epochs"]
        assert trial_row(trial, 1, definition)["epochs"] == trial.params["epochs"]
        assert isinstance(attrs["seed"], int)
        assert attrs["train_images"] == len(small_data.x_train) and attrs["host"] == "test"
        assert attrs["fit_seconds"] > 0 and attrs["images_per_second"] > 0
        train_images = int(len(small_data.x_train) * 0.8)
        assert attrs["train_steps"] == math.ceil(train_images / trial.params["batch_size"]) * trial.params["epochs"]
        assert isinstance(attrs["diverged"], bool)


def test_a_pruned_trial_keeps_its_epochs_and_records_no_result(tmp_path: Path, small_data) -> None:
    body = SEARCH.replace("trials = 4", "trials = 2").replace("epochs = { low = 1, high = 3 }", "epochs = [3]")
    # No validation accuracy reaches 1.01, so this pruner stops every trial at its first chance:
    # after epoch 2, the first step past its warm-up (steps below 2).
    always = optuna.pruners.ThresholdPruner(lower=1.01, n_warmup_steps=2)
    trials, summary, definition = _run(tmp_path, small_data, body, "pruned", pruner=always)
    assert (summary.complete, summary.pruned, summary.failed) == (0, 2, 0)
    for trial in trials:
        assert trial.state == TrialState.PRUNED and records.trial_params(trial)["epochs"] == 3
        assert sorted(trial.intermediate_values) == [1, 2]
        assert "test_accuracy" not in trial.user_attrs  # a partly trained model is never a result
        assert trial_row(trial, None, definition)["epochs"] == 2
    # What the search spent counts the pruned trials' epochs: 2 each, and no best value yet.
    study, _ = load_study(open_storage(f"sqlite:///{tmp_path / 'hpo.db'}"), "pruned")
    assert [(p.epochs, p.best) for p in search_curve(study, definition)] == [(2, None), (4, None)]


def test_seeds_differ_between_trials_and_a_study_run_again_repeats_them(tmp_path: Path, small_data) -> None:
    """Each trial records the seed it ran with; running the same study again repeats every trial:
    the same seeds, the same sampled parameters, the same numbers (on one CPU machine)."""
    body = SEARCH.replace("trials = 4", "trials = 3").replace("epochs = { low = 1, high = 3 }", "epochs = [1]")
    runs = [_run(tmp_path, small_data, body, "again", db=f"run{i}.db")[0] for i in range(2)]
    for trials in runs:
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
        assert len({t.user_attrs["seed"] for t in trials}) == 3
    first, second = runs
    assert [t.user_attrs["seed"] for t in first] == [t.user_attrs["seed"] for t in second]
    assert [t.params for t in first] == [t.params for t in second]
    assert [t.user_attrs["test_loss"] for t in first] == [t.user_attrs["test_loss"] for t in second]


def test_a_blown_up_run_is_complete_and_flagged_diverged(tmp_path: Path, small_data) -> None:
    # 400 images in batches of 32 are 13 steps an epoch: 8 epochs are past JUDGE_AFTER_STEPS.
    body = study_body(data={"protocol": "test"}, learning_rate=[5.0], batch_size=[32], epochs=[8])
    (trial,), _, definition = _run(tmp_path, small_data, body, "diverge")
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["train_steps"] >= JUDGE_AFTER_STEPS
    assert trial.user_attrs["diverged"] is True
    assert trial.user_attrs["test_accuracy"] <= 0.2
    assert trial_row(trial, 1, definition)["note"] == "diverged"


@pytest.mark.parametrize("learning_rate", [0.01, 0.001])
def test_one_epoch_on_200_images_has_learned_nothing_yet_but_has_not_diverged(
        learning_rate: float, data_path: str) -> None:
    tiny = load_dataset(data_path, subset=200)
    result = train(Params("base", "none", learning_rate, 64, 1), tiny, seed=0)
    assert result.steps == 3  # 160 training images in batches of 64
    # What the old rule called diverged: a loss still at (or, at lr 0.01, far above) chance.
    assert result.history["loss"][-1] >= 0.99 * LN10, result.history
    assert not result.diverged
    assert result.metrics()["diverged"] is False


@pytest.mark.parametrize("losses, steps, accuracy, diverged", [
    pytest.param([2.30, float("nan")], 6, 0.10, True, id="a NaN loss, however short the run"),
    pytest.param([5.5e6, float("inf")], 26, 0.10, True, id="an infinite loss"),
    pytest.param([7.3], 3, 0.10, False, id="3 steps that overshot at a high learning rate"),
    pytest.param([2.31], 3, 0.10, False, id="3 steps at chance: learned nothing yet"),
    pytest.param([3.5, 2.31, 2.28], 39, 0.125, False, id="39 steps, slowly leaving chance"),
    pytest.param([2.31] * 10, 1250, 0.10, True, id="1250 steps stuck at chance: collapsed"),
    pytest.param([2.31] * 10, 1250, 0.30, False, id="loss at chance but accuracy above it"),
    pytest.param([1.9, 2.6], 200, 0.25, True, id="ended worse than guessing"),
    pytest.param([2.1, 1.6], 200, 0.40, False, id="learning"),
    pytest.param([], 0, 0.10, False, id="no epochs"),
])
def test_diverged_means_blown_up_or_stuck_after_enough_steps(
        losses: list[float], steps: int, accuracy: float, diverged: bool) -> None:
    assert _diverged(losses, steps, accuracy, 10) is diverged


def test_test_columns_match_keras_evaluate(small_data) -> None:
    """The report's columns come from one predict pass; they equal model.evaluate's."""
    result = train(Params("base", "none", 0.001, 64, 1), small_data, seed=3)
    loss, accuracy = result.model.evaluate(small_data.x_test, small_data.y_test, verbose=0)
    assert result.test_loss == pytest.approx(loss, rel=1e-5)
    assert result.test_accuracy == pytest.approx(accuracy, abs=1e-6)
    assert result.confusion.sum() == len(small_data.y_test)
    assert result.confusion.trace() == round(accuracy * len(small_data.y_test))


FIXED_AND_VARIED = study_body(learning_rate=[0.01, 0.001], batch_size=[128])


def test_fixed_parameters_are_recorded_but_not_searched(tmp_path: Path, small_data) -> None:
    """Only what varies is an Optuna parameter (the dashboard's importance chart shows no 0.00
    bars for architecture and augmentation); exports still show every parameter."""
    trials, summary, definition = _run(tmp_path, small_data, FIXED_AND_VARIED, "fixed")
    assert summary.complete == 2
    for trial in trials:
        assert set(trial.params) == {"learning_rate"}
        assert trial.user_attrs["fixed"] == {"architecture": "base", "augmentation": "none",
                                             "batch_size": 128, "epochs": 1}
        row = trial_row(trial, 1, definition)
        assert (row["architecture"], row["augmentation"], row["batch_size"]) == ("base", "none", 128)
    assert {trial_row(t, 1, definition)["learning_rate"] for t in trials} == {0.01, 0.001}
    importances = optuna.importance.get_param_importances(
        optuna.load_study(study_name="fixed", storage=f"sqlite:///{tmp_path / 'hpo.db'}"))
    assert set(importances) == {"learning_rate"}
