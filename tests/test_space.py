"""Search spaces: the architecture's knobs, the optimizer's settings and conditional parameters,
as a study file says them and as a trial draws them."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from conftest import write_study
from hpo.errors import ConfigError
from hpo.study.files import load_definition
from hpo.study.plan import make_sampler
from hpo.training.objective import suggest

SEARCH = """
trials = 30
[sampler]
type = "tpe"
seed = 0
[space]
architecture = ["base", "deeper_dropout"]
learning_rate = { low = 1e-4, high = 1e-2, log = true }
batch_size = [32, 64]
epochs = 2
optimizer = ["adam", "sgd", "adamw"]
momentum = { low = 0.5, high = 0.95 }
[space.deeper_dropout]
conv_blocks = [2, 3]
filters_3 = [64, 128]
dropout_dense = { low = 0.0, high = 0.6 }
[space.adamw]
weight_decay = { low = 0.0001, high = 0.01, log = true }
"""


def _draws(tmp_path: Path, body: str, n: int) -> list[tuple[dict, object]]:
    definition = load_definition(write_study(tmp_path, "space", body))
    study = optuna.create_study(sampler=make_sampler(definition), direction="maximize")
    draws = []
    for i in range(n):
        trial = study.ask()
        params = suggest(trial, definition)
        draws.append((dict(trial.params), params))
        study.tell(trial, float(i % 7) / 7)
    return draws


def test_a_parameter_is_drawn_only_where_it_applies(tmp_path: Path) -> None:
    for optuna_params, params in _draws(tmp_path, SEARCH, 30):  # 10 random, then 20 by TPE
        deeper = params.architecture == "deeper_dropout"
        assert ("deeper_dropout.conv_blocks" in optuna_params) == deeper
        assert ("deeper_dropout.filters_3" in optuna_params) == (deeper and params.others["conv_blocks"] == 3)
        # A table's parameter reaches the model under its own name.
        assert ("filters_3" in params.others) == ("deeper_dropout.filters_3" in optuna_params)
        assert ("momentum" in optuna_params) == (params.optimizer == "sgd")  # adamw takes none
        assert ("adamw.weight_decay" in optuna_params) == (params.optimizer == "adamw")
        assert params.epochs == 2 and "epochs" not in optuna_params  # single-valued: not searched


def test_the_report_spaces_draw_what_they_always_drew(tmp_path: Path) -> None:
    body = SEARCH.split("optimizer")[0].replace("epochs = 2", "epochs = { low = 1, high = 3 }")
    for optuna_params, params in _draws(tmp_path, body, 12):
        assert set(optuna_params) == {"architecture", "learning_rate", "batch_size", "epochs"}
        assert params.optimizer == "adam" and params.others == {}


@pytest.mark.parametrize(("addition", "message"), [
    ("[space.resnet]\nfilters_1 = [8]\n", "[space.resnet] names no value of a categorical parameter"),
    ("[space.base]\nlearning_rate = [0.1]\n", "space.base.learning_rate is also at the top of [space]"),
    ("[space.base]\nconv_blocks = [5]\n", "5 must be an integer >= 1 and at most 4"),
    ("[space.base]\ndropout_dense = { low = 0.2, high = 1.5 }\n", "1.5 must be a number >= 0 and < 1"),
    ("[space.base]\nbatch_norm = { low = 0, high = 1 }\n", "must be a list of values, not a range"),
    ("[space.base]\nfilters_1 = { low = 8.5, high = 64 }\n", "filters_1 takes integers"),
    ("[space.adam]\nweight_decay = [0.01]\n",
     "space.adam.weight_decay: adam takes no weight_decay (it is a setting of adamw)"),
    ("[space.base]\nwidth = [3]\n", "space.base.width = 3 is not a parameter hpo knows"),
    ("[space.base.more]\nfilters_1 = [8]\n", "conditional tables are one level deep"),
])
def test_a_bad_conditional_table_is_one_line(tmp_path: Path, addition: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_definition(write_study(tmp_path, "bad", SEARCH + addition))


GRID = """
[sampler]
type = "grid"
[space]
architecture = "base"
learning_rate = [0.001]
batch_size = [32]
epochs = [1]
"""


def test_a_grid_refuses_a_knob_that_has_no_effect_at_some_point(tmp_path: Path) -> None:
    ok = GRID + "conv_blocks = [2, 3]\nfilters_2 = [32, 64]\n"
    assert load_definition(write_study(tmp_path, "grid", ok)).n_points == 4
    with pytest.raises(ConfigError, match=r"space.filters_3 has no effect where the model has 2 conv block"):
        load_definition(write_study(tmp_path, "grid", GRID + "conv_blocks = [2, 3]\nfilters_3 = [32, 64]\n"))
    with pytest.raises(ConfigError, match=r"space.momentum has no effect where optimizer = 'adam'"):
        load_definition(write_study(tmp_path, "grid", GRID + 'optimizer = ["adam", "sgd"]\nmomentum = [0.9]\n'))
    with pytest.raises(ConfigError, match=r"\[space.base\] is a conditional table; a grid takes"):
        tables = GRID.replace('"base"', '["base"]') + "[space.base]\nfilters_1 = [8]\n"
        load_definition(write_study(tmp_path, "grid", tables))


def test_without_a_builder_a_parameter_of_its_own_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"space.family = \['mlp', 'cnn'\] is not a parameter hpo knows"):
        load_definition(write_study(tmp_path, "own", GRID + 'family = ["mlp", "cnn"]\n'))
    with_builder = GRID.replace('architecture = "base"\n', "")
    with_builder += 'family = ["mlp", "cnn"]\n[model]\nbuilder = "m:build"\n'
    assert load_definition(write_study(tmp_path, "own", with_builder)).parameter_names[-1] == "family"
