"""A user's own model and data, end to end through the CLI on SQLite and PostgreSQL: a builder
module and an .npz of another shape and class count written by the test, conditional parameters
under TPE, and every way a builder can be wrong."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import optuna
import pytest
from hpo.storage import records
from optuna.trial import TrialState

from conftest import BUILDER_MODULE, ok, own_model_study, run_hpo, user_error


def test_a_builder_of_your_own_trains_on_data_of_your_own(storage_url: str, tmp_path: Path) -> None:
    study_file = own_model_study(tmp_path, trials=12)
    ok(run_hpo("worker", str(study_file), storage=storage_url, cwd=tmp_path, timeout=900))

    study = optuna.load_study(study_name="own", storage=storage_url)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12
    data = records.record_of(study)[records.DATA_IDENTITY]
    assert (data["shape"], data["class_names"]) == ([12, 12, 1], ["shape-0", "shape-1", "shape-2", "shape-3"])
    assert (data["train"], data["test"], data["subset"]) == (160, 40, None)
    assert records.record_of(study)[records.BUILDER]["builder"] == "my_models:build"
    # The shapes are learnable: the best trial is far above chance (25%).
    assert max(t.user_attrs["test_accuracy"] for t in trials) > 0.6

    # Conditional parameters: a family's own knobs only where it was chosen, under its own name.
    for trial in trials:
        family = trial.params["family"]
        other = "cnn" if family == "mlp" else "mlp"
        assert any(name.startswith(f"{family}.") for name in trial.params)
        assert not any(name.startswith(f"{other}.") for name in trial.params)
    assert {t.params["family"] for t in trials} == {"mlp", "cnn"}
    # TPE drew the last two (after its 10 startup trials) from them, and the importances (Optuna's
    # PED-ANOVA, which takes conditional parameters) weigh each knob over the trials that had it.
    assert {"family", "mlp.units", "cnn.filters"} <= set(optuna.importance.get_param_importances(study))

    # The export shows the study's own parameters as columns.
    exported = run_hpo("export", "own", "--format", "csv", storage=storage_url, cwd=tmp_path)
    ok(exported)
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert list(rows[0])[:8] == ["rank", "trial", "learning_rate", "batch_size", "epochs", "family", "mlp.units",
                                 "cnn.filters"]
    assert all((row["mlp.units"] == "") == (row["family"] == "cnn") for row in rows)


def test_a_confirmation_trains_the_builders_best_again(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    ok(run_hpo("worker", str(own_model_study(tmp_path, trials=3)), storage=db, cwd=tmp_path, timeout=600))
    confirmed = run_hpo("confirm", "own", "--top", "2", "--repeats", "1", "-n", "1", storage=db, cwd=tmp_path,
                        timeout=600)
    ok(confirmed)
    study = optuna.load_study(study_name="own-confirm", storage=db)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    search = optuna.load_study(study_name="own", storage=db)
    assert records.record_of(study)[records.DATA_IDENTITY] == records.record_of(search)[records.DATA_IDENTITY]
    assert "family" in confirmed.stdout


BAD_BUILDERS = {
    "no such module": ('builder = "nowhere:build"', None, "no module 'nowhere'"),
    "no such function": ('builder = "my_models:make"', BUILDER_MODULE, "has no 'make'"),
    "not a function": ('builder = "my_models:build"', "build = 3\n", "is a int, not a function"),
    "raises on import": ('builder = "my_models:build"', "raise RuntimeError('half-written')\n",
                         "importing my_models raised RuntimeError: half-written"),
    "not module:function": ('builder = "my_models.build"', BUILDER_MODULE, "must name a function as module:function"),
}


@pytest.mark.parametrize("case", list(BAD_BUILDERS))
def test_a_builder_that_cannot_be_called_is_one_line_and_nothing_trains(case: str, tmp_path: Path) -> None:
    line, module, message = BAD_BUILDERS[case]
    study_file = own_model_study(tmp_path, trials=1)
    if module is not None:
        (tmp_path / "my_models.py").write_text(module, encoding="utf-8")
    else:
        (tmp_path / "my_models.py").unlink()
    study_file.write_text(study_file.read_text().replace('builder = "my_models:build"', line))
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    user_error(run_hpo("worker", str(study_file), storage=db, cwd=tmp_path), message)
    if (tmp_path / "hpo.db").exists():  # refused before any study was made, or before any trial ran
        for summary in optuna.get_all_study_summaries(db):
            trials = optuna.load_study(study_name=summary.study_name, storage=db).get_trials()
            assert {t.state for t in trials} <= {TrialState.WAITING}


BAD_MODELS = {
    "raises": ("raise ValueError('no such layer size')", "my_models:build raised ValueError: no such layer size"),
    "returns no model": ("return 'a model'", "my_models:build returned str, not a keras.Model"),
    "wrong class count": ("return keras.Sequential([keras.Input(input_shape), layers.Flatten(), layers.Dense(3)])",
                          "outputs of shape (3,); the data has 4 classes"),
    "wrong input shape": ("return keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), "
                          "layers.Dense(num_classes)])", "does not take 12x12x1 images"),
    "a parameter it never reads": ("return keras.Sequential([keras.Input(input_shape), layers.Flatten(), "
                                   "layers.Dense(num_classes, activation='softmax')])",
                                   "space.family: my_models:build never reads params['family']"),
}


def _module(body: str) -> str:
    return f"import keras\nfrom keras import layers\n\ndef build(params, *, input_shape, num_classes):\n    {body}\n"


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_a_builder_whose_model_cannot_serve_the_data_is_refused_when_the_study_is_created(case: str,
                                                                                        tmp_path: Path) -> None:
    """One dry build on the data's real shape, before anything is written."""
    body, message = BAD_MODELS[case]
    study_file = own_model_study(tmp_path, trials=1, module=_module(body))
    for command in ("create", "launch", "worker") if case == "raises" else ("create",):
        user_error(run_hpo(command, str(study_file), storage=f"sqlite:///{tmp_path / 'hpo.db'}", cwd=tmp_path),
                   str(study_file), message)
        assert not (tmp_path / "hpo.db").exists()


def test_a_build_that_fails_only_for_some_parameters_fails_those_trials_once(tmp_path: Path) -> None:
    """The dry build takes each parameter's first value (a range's low end); a trial that draws
    another, which the builder cannot build, fails once and is not retried."""
    body = ("if params['learning_rate'] > 0.003:\n        raise ValueError('too fast')\n"
            "    width = params['units'] if params['family'] == 'mlp' else params['filters']\n"
            "    return keras.Sequential([keras.Input(input_shape), layers.Flatten(), layers.Dense(width), "
            "layers.Dense(num_classes, activation='softmax')])")
    study_file = own_model_study(tmp_path, trials=1, module=_module(body))
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    ok(run_hpo("worker", str(study_file), storage=db, cwd=tmp_path, timeout=300))
    trials = optuna.load_study(study_name="own", storage=db).get_trials()
    # Failed once, not retried (max_retries = 1): no retry would build another model.
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert "my_models:build raised ValueError: too fast" in trials[0].user_attrs["error"]
    assert "Traceback" not in trials[0].user_attrs["error"]
