"""Study files: the shipped ones load as the report describes them, bad ones are refused clearly."""

from __future__ import annotations

import re

from pathlib import Path

import pytest

from hpo.study.definition import definition_from_dict
from hpo.study.space import ARCHITECTURE_NAMES, AUGMENTATION_NAMES, Range
from hpo.study.files import load_definition
from hpo.errors import ConfigError

from conftest import STUDIES, study_body, write_study

GOOD_BODY = study_body(learning_rate=[0.01, 0.001], batch_size=[32], epochs=[1, 2])


def test_exp3_is_the_reports_27_point_grid() -> None:
    d = load_definition(STUDIES / "exp3.toml")
    assert d.sampler == "grid" and d.protocol == "validation_split" and d.validation_split == 0.2
    assert d.n_trials == 27
    points = {(p["learning_rate"], p["batch_size"], p["epochs"]) for p in d.grid_points}
    assert points == {(lr, b, e) for lr in (0.01, 0.001, 0.0001) for b in (32, 64, 128) for e in (5, 10, 15)}
    assert all(p["architecture"] == "base" and p["augmentation"] == "none" for p in d.grid_points)


@pytest.mark.parametrize("name, arch, batch, augmentation", [
    ("exp1", "base", 32, "none"), ("exp2", "deeper_dropout", 32, "none"), ("exp4", "batchnorm", 64, "standard"),
])
def test_fixed_experiments_match_the_report(name: str, arch: str, batch: int, augmentation: str) -> None:
    d = load_definition(STUDIES / f"{name}.toml")
    assert d.sampler == "fixed" and d.protocol == "test"
    assert dict(d.space) == {"architecture": (arch,), "augmentation": (augmentation,),
                             "learning_rate": (0.001,), "batch_size": (batch,), "epochs": (10,)}


def test_search_samples_everything_with_tpe_and_pruning() -> None:
    d = load_definition(STUDIES / "search.toml")
    assert d.sampler == "tpe" and d.pruner == "hyperband" and d.protocol == "validation_split"
    assert (d.min_resource, d.reduction_factor, d.max_epochs) == (1, 3, 15)  # rungs at 1, 3, 9 epochs
    assert d.space["learning_rate"] == Range(1e-4, 1e-2, log=True)
    assert d.space["epochs"] == Range(5, 15)
    assert set(d.space["architecture"]) == set(ARCHITECTURE_NAMES)


def test_definition_round_trips_through_its_stored_form() -> None:
    for path in STUDIES.glob("*.toml"):
        d = load_definition(path)
        assert definition_from_dict(d.to_dict()) == d


def test_the_augmentation_names_a_study_file_takes_are_the_ones_training_has() -> None:
    """Two lists (the architectures are one: hpo.study.space.ARCHITECTURES, which
    tests/test_models.py builds, each name to the report's parameter count)."""
    from hpo.training.augment import AUGMENTATIONS

    assert set(AUGMENTATION_NAMES) == set(AUGMENTATIONS)


@pytest.mark.parametrize("body, key, value", [
    (GOOD_BODY.replace("batch_size = [32]", "batch_size = [32]\nmomentom = 0.9"), "space.momentom", "0.9"),
    (GOOD_BODY.replace("learning_rate = [0.01, 0.001]", "learning_rate = [0.01, 0]"), "space.learning_rate", "0"),
    (GOOD_BODY.replace("learning_rate = [0.01, 0.001]", "learning_rate = -0.1"), "space.learning_rate", "-0.1"),
    (GOOD_BODY.replace("epochs = [1, 2]", "epochs = []"), "space.epochs", "[]"),
    (GOOD_BODY.replace("batch_size = [32]", "batch_size = [0]"), "space.batch_size", "0"),
    (GOOD_BODY.replace('architecture = "base"', 'architecture = "resnet"'), "space.architecture", "resnet"),
    (GOOD_BODY.replace('augmentation = "none"', 'augmentation = "mixup"'), "space.augmentation", "mixup"),
    (GOOD_BODY.replace('type = "grid"', 'type = "bayes"'), "sampler.type", "bayes"),
    (GOOD_BODY + "[data]\nvalidation_split = 1.5\n", "data.validation_split", "1.5"),
    (GOOD_BODY.replace('type = "grid"', 'type = "grid"\nsed = 1'), "sampler.sed", "1"),
    (GOOD_BODY.replace("epochs = [1, 2]", "epochs = {low = 1, high = 5}"), "space.epochs", "low"),
    (GOOD_BODY.replace("epochs = [1, 2]", ""), "space.epochs", "missing"),
])
def test_bad_study_file_names_file_key_and_value(tmp_path: Path, body: str, key: str, value: str) -> None:
    path = write_study(tmp_path, "bad", body)
    with pytest.raises(ConfigError) as err:
        load_definition(path)
    message = str(err.value)
    assert str(path) in message and key in message and value in message
    assert "\n" not in message


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    path = write_study(tmp_path, "bad", GOOD_BODY.replace("[sampler]", "[sampler]\n") + "\n[optimizer]\nname = 'sgd'\n")
    with pytest.raises(ConfigError, match=r"\[optimizer\] is not a known section"):
        load_definition(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such study file"):
        load_definition(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[study\nname = ", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{broken}: not valid TOML"):
        load_definition(broken)


def test_good_file_loads(tmp_path: Path) -> None:
    d = load_definition(write_study(tmp_path, "ok", GOOD_BODY))
    assert d.n_trials == 4 and d.max_retries == 2 and d.direction == "maximize"


@pytest.mark.parametrize(("pruner", "problem"), [
    ('type = "median"\nmin_resource = 2', "pruner.min_resource = 2 is a hyperband setting"),
    ('type = "hyperband"\nmin_resource = 3', "must be less than the most epochs a trial trains (3)"),
    ('type = "hyperband"\nreduction_factor = 1', "pruner.reduction_factor = 1 must be at least 2"),
    ('type = "hyperband"\nmin_resource = 0', "must be at least 1 epoch"),
])
def test_bad_hyperband_settings_are_refused_in_one_line(tmp_path: Path, pruner: str, problem: str) -> None:
    hyperband = study_body("tpe", pruner="hyperband", learning_rate={"low": 1e-3, "high": 1e-2},
                           epochs={"low": 1, "high": 3})
    path = write_study(tmp_path, "bad", hyperband.replace('type = "hyperband"', pruner))
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_definition(path)
