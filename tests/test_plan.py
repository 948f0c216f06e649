"""The plan: which trial trains what, with which seed, in which order."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.errors import ConfigError
from hpo.storage import records
from hpo.storage.open import open_storage
from hpo.study import plan, queueing
from hpo.study.create import create_study
from hpo.study.files import load_definition

from conftest import study_body, write_study

# 2 learning rates x 2 epoch counts, twice: 8 trials in 4 groups.
GROUPED = study_body(seed=5, study={"repeats": 2}, learning_rate=[0.001, 0.0001], batch_size=[32], epochs=[1, 2])


def test_prefix_groups_join_the_points_that_differ_only_in_epochs() -> None:
    points = [{"learning_rate": 0.1, "epochs": 5}, {"learning_rate": 0.1, "epochs": 15},
              {"learning_rate": 0.01, "epochs": 5}, {"learning_rate": 0.1, "epochs": 10}]
    assert plan.prefix_groups(points) == {0: 1, 1: 1, 2: 2, 3: 1}


def test_a_slot_trains_with_the_seed_of_its_group_and_every_group_has_its_own(tmp_path: Path) -> None:
    definition = load_definition(write_study(tmp_path, "grouped", GROUPED))
    slots = plan.Slots(definition)
    first = [slots.first_try(slot) for slot in range(definition.n_trials)]
    assert [attrs[records.SLOT] for attrs in first] == list(range(8))
    assert [attrs[records.REPEAT] for attrs in first] == [0] * 4 + [1] * 4
    seeds = {attrs[records.GROUP]: attrs[records.PLANNED_SEED] for attrs in first}
    assert len(seeds) == 4 and len(set(seeds.values())) == 4
    for attrs in first:  # the group's seed is its longest point's slot's own
        assert attrs[records.PLANNED_SEED] == plan.trial_seed(definition, attrs[records.GROUP]) == seeds[
            attrs[records.GROUP]]
        assert first[attrs[records.GROUP]][records.EPOCHS] == 2


def test_workers_take_a_repeat_at_a_time_longest_points_first(tmp_path: Path) -> None:
    """So that a study stopped early holds whole repeats, and its last runs are short ones."""
    body = GROUPED.replace("repeats = 2", "repeats = 2\nshare_prefixes = false").replace("[1, 2]", "[1, 3]")
    definition = load_definition(write_study(tmp_path, "order", body))
    study, _ = create_study(open_storage(f"sqlite:///{tmp_path / 'hpo.db'}"), definition)
    taken = []
    while (trial := queueing.claim(study, plan.trial_sampler(definition))) is not None:
        attrs = records.frozen(trial).system_attrs
        taken.append((attrs[records.REPEAT], attrs[records.EPOCHS]))
    assert taken == [(0, 3), (0, 3), (0, 1), (0, 1), (1, 3), (1, 3), (1, 1), (1, 1)]


def test_a_confirmation_never_trains_with_a_seed_of_its_search(tmp_path: Path) -> None:
    search = load_definition(write_study(tmp_path, "search", study_body("random", seed=3, study={"trials": 5},
                                                                        learning_rate={"low": 1e-4, "high": 1e-2})))
    confirmation = load_definition(write_study(tmp_path, "confirm", study_body(seed=3 + plan.CONFIRM_SEED_OFFSET)))
    trials = [optuna.trial.create_trial(value=0.5, user_attrs={records.SEED: plan.trial_seed(search, n)})
              for n in range(5)]
    for number, trial in enumerate(trials):
        trial.number = number
    plan.check_fresh_seeds(trials, search, confirmation)  # the offset keeps them apart
    trials[0].user_attrs[records.SEED] = plan.trial_seed(confirmation, 0)  # as if a search trial had used one
    with pytest.raises(ConfigError, match="were used by study 'search'"):
        plan.check_fresh_seeds(trials, search, confirmation)
