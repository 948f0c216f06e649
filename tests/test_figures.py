"""The figures a trial and a report leave, as a person reads them: whole epochs on the axis, the
test set called the test set, a title that fits, counts a person can read, and each trial of a
search shown beside the best so far. Real matplotlib figures, read back before they are saved."""

from __future__ import annotations

import datetime
import tomllib

import matplotlib
import numpy as np
import optuna
import pytest

from hpo.results.curves import CurvePoint, search_curve
from hpo.results.plots import search_progress_figure
from hpo.study.files import definition_from_tables
from hpo.training.artifacts import confusion_matrix_figure, learning_curves_figure

HISTORY = {"accuracy": [0.3, 0.4, 0.5], "val_accuracy": [0.28, 0.35, 0.41],
           "loss": [1.9, 1.6, 1.4], "val_loss": [2.0, 1.8, 1.7]}
SEVEN_PARAMETERS = ("trial 12: architecture=deeper, augmentation=flip_shift, learning_rate=0.000316228, "
                    "batch_size=64, epochs=3, dropout=0.25, filters=64")


def _ticks(axis: matplotlib.axis.Axis) -> list[float]:
    low, high = axis.get_view_interval()
    return [t for t in axis.get_ticklocs() if low - 1e-9 <= t <= high + 1e-9]


def test_a_three_epoch_run_has_a_tick_per_whole_epoch_and_none_between() -> None:
    fig = learning_curves_figure(HISTORY, "trial 0: learning_rate=0.001")
    for ax in fig.axes:
        assert _ticks(ax.xaxis) and all(float(t).is_integer() for t in _ticks(ax.xaxis)), _ticks(ax.xaxis)


@pytest.mark.parametrize(("validated_on", "shown"), [("validation", "validation"), ("test", "test")])
def test_the_curves_name_the_set_they_were_validated_on(validated_on: str, shown: str) -> None:
    """A confirmation (protocol "test") validates on the test set: its curves say so."""
    fig = learning_curves_figure(HISTORY, "trial 0", validated_on=validated_on)
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training", shown]


def test_a_title_of_seven_parameters_wraps_within_the_figure() -> None:
    fig = learning_curves_figure(HISTORY, SEVEN_PARAMETERS)
    title = fig._suptitle.get_text()
    assert title.replace("\n", " ") == f"Learning curves, {SEVEN_PARAMETERS}"
    assert len(title.splitlines()) >= 2
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox)


def test_confusion_counts_are_readable_and_the_colour_bar_counts_whole_numbers() -> None:
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 3, 9]])
    fig = confusion_matrix_figure(matrix, "trial 3: test accuracy 0.7", ("cat", "dog", "ship"))
    image_ax, bar_ax = fig.axes
    counts = [t for t in image_ax.texts]
    assert sorted(int(t.get_text()) for t in counts) == sorted(matrix.ravel().tolist())
    assert all(t.get_fontsize() >= 10 for t in counts)
    assert all(float(t).is_integer() for t in _ticks(bar_ax.yaxis)), _ticks(bar_ax.yaxis)


def test_the_search_progress_shows_every_trial_beside_the_best_so_far() -> None:
    points = [CurvePoint(0, 3, 10.0, 0.40, 0.40), CurvePoint(1, 6, 20.0, 0.40, 0.31),
              CurvePoint(2, 8, 30.0, 0.40, None),  # pruned: no value of its own
              CurvePoint(3, 11, 40.0, 0.52, 0.52)]
    fig = search_progress_figure({"search": points}, {"the report's best": 0.5}, "val_accuracy")
    by_epochs, by_time = fig.axes
    (trials,) = by_epochs.collections
    assert trials.get_offsets().tolist() == [[3, 0.40], [6, 0.31], [11, 0.52]]
    assert [line.get_ydata().tolist() for line in by_epochs.lines if line.get_label() == "search, best so far"] == [
        [0.40, 0.40, 0.40, 0.52]]
    assert "search, a trial" in [t.get_text() for t in by_time.get_legend().get_texts()]


def test_the_search_curve_carries_each_completed_trials_own_value() -> None:
    study = optuna.create_study(direction="maximize")
    start = datetime.datetime(2026, 12, 2, 12, 0, 0)
    for minute, (state, value) in enumerate([(optuna.trial.TrialState.COMPLETE, 0.4),
                                             (optuna.trial.TrialState.PRUNED, None),
                                             (optuna.trial.TrialState.COMPLETE, 0.3)]):
        trial = optuna.trial.create_trial(state=state, value=value, intermediate_values={0: 0.2},
                                          params={}, distributions={})
        trial.datetime_start = start + datetime.timedelta(minutes=minute)
        trial.datetime_complete = start + datetime.timedelta(minutes=minute, seconds=30)
        study.add_trial(trial)
    definition = definition_from_tables(tomllib.loads(SEARCH), "search.toml")
    assert [(p.value, p.best) for p in search_curve(study, definition)] == [(0.4, 0.4), (None, 0.4), (0.3, 0.4)]


SEARCH = """
[study]
name = "s"
trials = 3
metric = "val_accuracy"
direction = "maximize"
[sampler]
type = "tpe"
[space]
architecture = "base"
augmentation = "none"
learning_rate = { low = 1e-4, high = 1e-2, log = true }
batch_size = [32]
epochs = [1]
"""
