"""``hpo export --by configuration`` on trials stored in the real databases: one row per
configuration, with n, mean and spread over its repeats, ranked by the mean."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from conftest import TWO_LR_GRID, ok, run_hpo, user_error, write_study
from hpo.storage import records
from hpo.results import formats
from hpo.results.rows import configuration_columns
from hpo.study.files import load_definition

GRID = """
description = "Two learning rates by two batch sizes."
metric = "{metric}"
""" + TWO_LR_GRID.replace("batch_size = [64]", "batch_size = [64, 128]")

# Finished trials as workers leave them: (learning rate, batch size, val_accuracy, test_accuracy, test_loss).
# lr 0.001 / batch 64 has the best single trial (0.60) but lr 0.01 / batch 64 the best mean.
RUNS = [
    (0.001, 64, 0.50, 0.48, 1.50),
    (0.01, 64, 0.58, 0.57, 1.20),
    (0.001, 64, 0.60, 0.59, 1.10),
    (0.01, 128, 0.30, 0.31, 1.90),
    (0.01, 64, 0.57, 0.55, 1.25),
    (0.01, 64, 0.56, 0.56, 1.30),
]


def _study_with_repeats(tmp_path: Path, url: str, name: str, metric: str) -> optuna.Study:
    """A grid study created by ``hpo create`` whose workers finished RUNS, plus a FAIL trial."""
    ok(run_hpo("create", str(write_study(tmp_path, name, GRID.replace("{metric}", metric))), storage=url))
    study = optuna.load_study(study_name=name, storage=url)
    fixed = {"architecture": "base", "augmentation": "none", "epochs": 1}
    distributions = {"learning_rate": CategoricalDistribution([0.01, 0.001]),
                     "batch_size": CategoricalDistribution([64, 128])}
    for lr, batch, val, test, loss in RUNS:
        attrs = {"val_accuracy": val, "test_accuracy": test, "test_loss": loss, records.SINGLE_VALUED: fixed}
        value = {"val_accuracy": val, "test_loss": loss}[metric]
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": lr, "batch_size": batch}, distributions=distributions, value=value,
            user_attrs=attrs))
    study.add_trial(optuna.trial.create_trial(  # a crash is no result: it counts nowhere
        state=TrialState.FAIL, params={"learning_rate": 0.01, "batch_size": 128}, distributions=distributions,
        user_attrs={"error": "killed", records.SINGLE_VALUED: fixed}))
    return study


def _export(url: str, name: str, *args: str) -> list[dict[str, str]]:
    result = run_hpo("export", name, "--by", "configuration", *args, storage=url)
    ok(result)
    return list(csv.DictReader(io.StringIO(result.stdout)))


def _expected(lr: float, batch: int, column: int) -> list[float]:
    return [run[column] for run in RUNS if run[:2] == (lr, batch)]


def test_export_by_configuration_ranks_means_over_repeats(storage_url: str, tmp_path: Path) -> None:
    study = _study_with_repeats(tmp_path, storage_url, "repeats", "val_accuracy")
    numbers = {(t.params["learning_rate"], t.params["batch_size"], t.value): t.number
               for t in study.get_trials(states=(TrialState.COMPLETE,))}

    rows = _export(storage_url, "repeats", "--format", "csv")
    assert list(rows[0]) == ["rank", "architecture", "augmentation", "learning_rate", "batch_size", "epochs", "n",
                             "mean_val_accuracy", "std_val_accuracy", "mean_test_accuracy", "std_test_accuracy",
                             "mean_test_loss", "std_test_loss", "trials"]
    # The best mean first, though the best single trial belongs to the second; the FAIL trial
    # and the configuration never run are not rows.
    assert [(r["rank"], float(r["learning_rate"]), r["batch_size"], r["n"]) for r in rows] == \
        [("1", 0.01, "64", "3"), ("2", 0.001, "64", "2"), ("3", 0.01, "128", "1")]
    for row in rows:
        lr, batch = float(row["learning_rate"]), int(row["batch_size"])
        assert (row["architecture"], row["augmentation"], row["epochs"]) == ("base", "none", "1")
        for column, name in ((2, "val_accuracy"), (3, "test_accuracy"), (4, "test_loss")):
            values = _expected(lr, batch, column)
            assert float(row[f"mean_{name}"]) == pytest.approx(statistics.fmean(values), abs=5e-5)
            if len(values) > 1:
                assert float(row[f"std_{name}"]) == pytest.approx(statistics.stdev(values), abs=5e-5)
            else:
                assert row[f"std_{name}"] == ""  # no spread from one run
        assert [int(n) for n in row["trials"].split()] == \
            sorted(numbers[(lr, batch, v)] for v in _expected(lr, batch, 2))
    assert float(rows[0]["std_val_accuracy"]) == pytest.approx(0.01, abs=5e-5)

    # JSON keeps numbers and the trial list; every other format carries the same columns.
    data = json.loads(run_hpo("export", "repeats", "--by", "configuration", "--format", "json",
                              storage=storage_url).stdout)
    assert data[2]["std_val_accuracy"] is None and data[2]["n"] == 1
    assert data[0]["trials"] == [int(n) for n in rows[0]["trials"].split()]
    for fmt in set(formats.FORMATS) - {"csv", "json"}:
        out = tmp_path / f"configurations.{fmt}"
        ok(run_hpo("export", "repeats", "--by", "configuration", "--format", fmt, "-o", str(out), storage=storage_url))
        text = out.read_text().replace("\\_", "_")
        assert "mean_val_accuracy" in text and "std_test_loss" in text and rows[1]["mean_val_accuracy"] in text, fmt

    # Without --by, one row per COMPLETE trial, as before.
    assert len(list(csv.DictReader(io.StringIO(
        run_hpo("export", "repeats", "--format", "csv", storage=storage_url).stdout)))) == len(RUNS)


def test_configurations_of_a_loss_study_rank_lowest_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    _study_with_repeats(tmp_path, url, "byloss", "test_loss")
    rows = _export(url, "byloss", "--format", "csv")
    assert list(rows[0]) == list(configuration_columns(load_definition(tmp_path / "byloss.toml")))
    assert list(rows[0])[:6] == ["rank", "architecture", "augmentation", "learning_rate", "batch_size", "epochs"]
    assert list(rows[0]).count("mean_test_loss") == 1  # the metric is not listed twice
    means = [float(r["mean_test_loss"]) for r in rows]
    assert means == sorted(means) and [r["n"] for r in rows] == ["3", "2", "1"]


def test_a_bad_by_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    _study_with_repeats(tmp_path, url, "repeats", "val_accuracy")
    line = user_error(run_hpo("export", "repeats", "--by", "seed", storage=url), "--by", "seed")
    assert "trial" in line and "configuration" in line



def _add_pruned(study: optuna.Study, intermediate: dict[int, float], attrs: dict[str, object]) -> None:
    """A PRUNED trial at lr 0.001 / batch 128, as a worker leaves one: its epochs' values, no result."""
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.PRUNED, params={"learning_rate": 0.001, "batch_size": 128},
        distributions={"learning_rate": CategoricalDistribution([0.01, 0.001]),
                       "batch_size": CategoricalDistribution([64, 128])},
        intermediate_values=intermediate, user_attrs=attrs))


def test_a_pruned_trial_shows_its_last_epochs_validation_metric(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    study = _study_with_repeats(tmp_path, url, "pruned", "val_accuracy")
    _add_pruned(study, {1: 0.21, 2: 0.24}, {records.SINGLE_VALUED: {}})
    exported = run_hpo("export", "pruned", "--format", "json", storage=url)
    ok(exported)
    pruned = [row for row in json.loads(exported.stdout) if row["state"] == "PRUNED"]
    assert len(pruned) == 1 and pruned[0]["val_accuracy"] == 0.24 and pruned[0]["test_accuracy"] is None


def test_the_terminal_table_is_narrow_by_default_and_whole_with_all(tmp_path: Path) -> None:
    """What a person reads in a terminal: the parameters that differ, the metric on both sets,
    the state and a note cut to one short line; --all and the file formats keep every column."""
    url = f"sqlite:///{tmp_path / 'n.db'}"
    study = _study_with_repeats(tmp_path, url, "narrow", "val_accuracy")
    _add_pruned(study, {1: 0.2}, {records.SINGLE_VALUED: {"architecture": "base", "augmentation": "none", "epochs": 1},
                                  "error": "x" * 300})
    short = run_hpo("export", "narrow", storage=url)
    ok(short)
    header = short.stdout.splitlines()[0].split()
    # epochs differ: the pruned trial ran 1 (these made-up trials record no epochs_run of their own).
    assert header == ["rank", "trial", "learning_rate", "batch_size", "epochs", "val_accuracy", "test_accuracy",
                      "state", "note"]
    assert max(len(line) for line in short.stdout.splitlines()) < 130
    assert "x" * 39 + "…" in short.stdout and "x" * 40 not in short.stdout
    whole = run_hpo("export", "narrow", "--all", storage=url)
    ok(whole)
    assert {"architecture", "augmentation", "test_loss", "duration_s"} <= set(whole.stdout.splitlines()[0].split())
    assert "x" * 300 in whole.stdout
    csv_rows = list(csv.DictReader(io.StringIO(run_hpo("export", "narrow", "--format", "csv", storage=url).stdout)))
    assert {"architecture", "test_loss", "duration_s"} <= set(csv_rows[0])
