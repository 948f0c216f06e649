"""`hpo confirm` as a user runs it after a search: the best configurations trained again with
fresh seeds, linked to the trials they confirm, beside the search's value in export and report;
and the epochs the search spent (pruned trials included)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.storage import records
from hpo.study.definition import definition_from_dict
from hpo.study.plan import CONFIRM_SEED_OFFSET
from hpo.study.plan import trial_seed
from hpo.results.curves import epochs_trained, search_curve
from hpo.study.create import load_study

from conftest import ok, run_hpo, study_body, user_error, write_study

PNG = b"\x89PNG\r\n\x1a\n"

SEARCH = study_body("tpe", seed=5, pruner="hyperband", study={"trials": 4}, data={"protocol": "validation_split"},
                    architecture=["base"], learning_rate={"low": 1e-3, "high": 1e-2, "log": True}, batch_size=[32, 64],
                    epochs={"low": 1, "high": 3})


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))








@pytest.fixture(scope="module")
def confirmed(tmp_path_factory: pytest.TempPathFactory, data_path: str) -> tuple[Path, str]:
    """A 4-trial search on 200 images, then `hpo confirm --top 2 --repeats 2`, as a user runs them."""
    folder = tmp_path_factory.mktemp("confirm")
    db = f"sqlite:///{folder / 'hpo.db'}"
    search = write_study(folder, "search", SEARCH)
    ok(run_hpo("launch", str(search), "-n", "2", "--data", data_path, "--subset", "200", storage=db, cwd=folder))
    result = run_hpo("confirm", "search", "--top", "2", "--repeats", "2", "-n", "2", "--data", data_path,
                     "--subset", "200", storage=db, cwd=folder)
    ok(result)
    return folder, db


def _studies(db: str) -> tuple[optuna.Study, optuna.Study]:
    storage = optuna.storages.RDBStorage(db)
    return load_study(storage, "search")[0], load_study(storage, "search-confirm")[0]


def test_a_confirmation_retrains_the_best_configurations_with_seeds_the_search_never_used(
        confirmed: tuple[Path, str]) -> None:
    _, db = confirmed
    search, confirmation = _studies(db)
    searched = search.get_trials(deepcopy=False)
    ranked = sorted((t for t in searched if t.state == TrialState.COMPLETE), key=lambda t: (-(t.value or 0), t.number))
    link = records.record_of(confirmation)[records.CONFIRMS]
    assert link["study"] == "search" and link["trials"] == [t.number for t in ranked[:2]]

    trials = confirmation.get_trials(deepcopy=False)
    assert len(trials) == 4 and {t.state for t in trials} == {TrialState.COMPLETE}
    # Never a seed of the search: neither one a search trial recorded nor one it could draw.
    search_seeds = {t.user_attrs.get("seed") for t in searched} | {trial_seed(load_study(
        optuna.storages.RDBStorage(db), "search")[1], t.number) for t in searched}
    confirm_seeds = [t.user_attrs["seed"] for t in trials]
    assert len(set(confirm_seeds)) == 4 and not search_seeds & set(confirm_seeds)
    assert all(seed // 100_003 == 5 + CONFIRM_SEED_OFFSET for seed in confirm_seeds)

    for trial in trials:
        point = trial.system_attrs[records.POINT]
        confirmed_trial = search.trials[link["trials"][point]]
        assert records.trial_params(trial) == records.trial_params(confirmed_trial)
        # The whole training set (200 images, not the search's 160), scored on the test set.
        params = records.trial_params(trial)
        assert trial.user_attrs["train_steps"] == math.ceil(200 / params["batch_size"]) * params["epochs"]
        assert trial.value == trial.user_attrs["test_accuracy"]


def test_export_shows_the_search_value_beside_the_confirmed_mean_and_spread(confirmed: tuple[Path, str]) -> None:
    folder, db = confirmed
    search, confirmation = _studies(db)
    exported = run_hpo("export", "search-confirm", "--format", "csv", storage=db, cwd=folder)
    ok(exported)
    rows = _csv(exported.stdout)
    assert len(rows) == 2
    for row in rows:
        runs = [confirmation.trials[int(n)] for n in row["trials"].split()]
        assert int(row["n"]) == len(runs) == 2
        mean = sum(t.user_attrs["test_accuracy"] for t in runs) / 2
        assert float(row["mean_test_accuracy"]) == pytest.approx(mean, abs=5e-5)
        assert float(row["search_value"]) == pytest.approx(search.trials[int(row["search_trial"])].value, abs=5e-5)
        assert row["std_test_accuracy"] != ""

    # The search's own table: the confirmed columns filled for the two confirmed configurations.
    exported = run_hpo("export", "search", "--format", "csv", storage=db, cwd=folder)
    ok(exported)
    filled = [r for r in _csv(exported.stdout) if r["confirmed_n"]]
    assert sorted(int(r["trial"]) for r in filled) == sorted(int(r["search_trial"]) for r in rows)


def test_confirming_again_trains_nothing_twice(confirmed: tuple[Path, str], data_path: str) -> None:
    folder, db = confirmed
    before = len(_studies(db)[1].get_trials(deepcopy=False))
    ok(run_hpo("confirm", "search", "--top", "2", "--repeats", "2", "-n", "1", "--data", data_path,
               "--subset", "200", storage=db, cwd=folder))
    assert len(_studies(db)[1].get_trials(deepcopy=False)) == before
    # Asking for something else under the same name is refused, and changes nothing.
    user_error(run_hpo("confirm", "search", "--top", "1", "--repeats", "2", "--data", data_path,
                       "--subset", "200", storage=db, cwd=folder), "search-confirm", "different definition")
    user_error(run_hpo("confirm", "nosuch", storage=db, cwd=folder), "no study named 'nosuch'")
    assert len(_studies(db)[1].get_trials(deepcopy=False)) == before


def test_the_report_draws_the_search_and_tables_its_confirmed_configurations(confirmed: tuple[Path, str]) -> None:
    folder, db = confirmed
    out = folder / "report"
    ok(run_hpo("report", "--output", str(out), storage=db, cwd=folder))
    report = (out / "report.md").read_text()
    assert "## The searches" in report and "](search_progress.png)" in report
    assert (out / "search_progress.png").read_bytes().startswith(PNG)
    assert "### Confirmed top configurations" in report
    rows = _csv((out / "confirmed.csv").read_text())
    assert [r["search"] for r in rows] == ["search", "search"] and all(r["n"] == "2" for r in rows)


def test_the_search_curve_counts_every_epoch_trained(confirmed: tuple[Path, str]) -> None:
    _, db = confirmed
    storage = optuna.storages.RDBStorage(db)
    study, definition = load_study(storage, "search")
    curve = search_curve(study, definition)
    trials = study.get_trials(deepcopy=False)
    assert [p.epochs for p in curve] == sorted(p.epochs for p in curve)
    assert curve[-1].epochs == sum(len(t.intermediate_values) for t in trials) == sum(map(epochs_trained, trials))
    complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
    assert curve[-1].best == max(complete)


def test_a_confirmation_definition_round_trips_with_its_listed_points(confirmed: tuple[Path, str]) -> None:
    _, db = confirmed
    _, definition = load_study(optuna.storages.RDBStorage(db), "search-confirm")
    assert len(definition.points) == 2 and definition.n_trials == 4 and definition.metric == "test_accuracy"
    assert definition_from_dict(definition.to_dict()) == definition
