"""Which trial trains what, with which seed: the one place a reader goes to learn it.

- A study's trials fill numbered **slots**, all queued when it is created: a grid's slot is
  ``repeat x points + grid id``; a search's is an index of its trial budget.
- A grid's **points** are numbered as Optuna's GridSampler numbers them (shuffled by the study's
  seed); a confirmation lists its points instead.
- **Seeds**: every trial samples and trains with ``study seed x 100003 + index`` (index: the
  trial's number, or on a grid its slot, fixed when queued). Points of a grid that differ only in
  epochs form a **prefix group** that one training run completes, with the seed of the group's
  longest point. A confirmation's seeds are its search's moved by :data:`CONFIRM_SEED_OFFSET`.
- **Claim order**: a grid's repeats in turn, within one the longest points first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import ConfigError
from hpo.storage import records
from hpo.study.definition import StudyDefinition

# A confirmation's seeds: its search's moved this far, so that (with fewer than 100,003 trials a
# study) no confirmation trial trains with a seed of the search; checked by check_fresh_seeds.
CONFIRM_SEED_OFFSET = 7919


def trial_seed(definition: StudyDefinition, index: int) -> int:
    """A seed for the trial with this number (or, on a grid, this slot): the study's seed and the
    index. Distinct for every trial of a study, and the same when the study is run again."""
    return definition.seed * 100_003 + index


def run_seed(trial: FrozenTrial, definition: StudyDefinition) -> int:
    """The seed a trial trains with (and its sampler drew with): fixed when a grid trial was
    queued, shared by a prefix group; else the study's seed and the trial's number."""
    return int(trial.system_attrs.get(records.PLANNED_SEED, trial_seed(definition, trial.number)))


class QueuedGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, with the queue rather than the sampler deciding when a study ends.

    Every trial arrives with its ``grid_id`` already set, so ``before_trial`` and
    ``sample_independent`` work as in GridSampler. Its ``after_trial`` would call
    ``study.stop()``, which only exists inside ``study.optimize``; the queue makes it moot.
    """

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        return None

    def point(self, grid_id: int) -> dict[str, Any]:
        """The parameters GridSampler gives the trial with this grid id."""
        return records.grid_point(self, grid_id)


def make_sampler(definition: StudyDefinition, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler; workers make one per trial, seeded with :func:`trial_seed`.

    TPE uses the constant liar, as Optuna recommends for parallel workers: a trial still
    running counts as a poor result, so workers do not all crowd the same promising region.
    """
    if definition.sampler == "grid":
        # The study's own seed, always: GridSampler shuffles its points by its seed, so the
        # stored grid ids mean the same points only under the same seed.
        return QueuedGridSampler(grid_search_space(definition), seed=definition.seed)
    seed = definition.seed if seed is None else seed
    if definition.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, constant_liar=True)
    # "fixed" studies suggest single-valued parameters, which any sampler returns as they are.
    return optuna.samplers.RandomSampler(seed=seed)


def trial_sampler(definition: StudyDefinition) -> Callable[[int], optuna.samplers.BaseSampler]:
    """For :func:`hpo.study.queueing.claim`: trial number -> that trial's own seeded sampler."""
    return lambda number: make_sampler(definition, sampler_seed(definition, number))


def sampler_seed(definition: StudyDefinition, number: int) -> int:
    """The seed of trial ``number``'s sampler: its :func:`trial_seed` mixed through NumPy's
    SeedSequence. Optuna's samplers seed NumPy's Mersenne Twister, whose first draws from adjacent
    seeds are close (seeds 100003, 100004, 100005 first draw 0.303, 0.312, 0.305), so seeding them
    with the trial seed itself gave the first trials of a search almost the same parameters."""
    return int(np.random.SeedSequence(trial_seed(definition, number)).generate_state(1)[0])


def grid_search_space(definition: StudyDefinition) -> dict[str, list[Any]]:
    # GridSampler keys its grid ids to the sorted parameter names; so must the stored copy.
    return {name: values for name, values in sorted(definition.grid.items())}


def grid_points(definition: StudyDefinition) -> list[dict[str, Any]]:
    """A grid's points by grid id, as GridSampler (shuffled by the study's seed) numbers them;
    the points a grid lists (a confirmation), in their order."""
    if definition.points:
        return definition.grid_points
    sampler = QueuedGridSampler(grid_search_space(definition), seed=definition.seed)
    return [sampler.point(g) for g in range(definition.n_points)]


def prefix_groups(points: list[dict[str, Any]]) -> dict[int, int]:
    """Grid id -> grid id of the longest point that differs from it only in epochs.

    Such points form a group that one training run completes (see :mod:`hpo.workers.loop`).
    """

    def key(point: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, repr(v)) for k, v in point.items() if k != "epochs"))

    longest: dict[tuple[tuple[str, str], ...], int] = {}
    for g, point in enumerate(points):
        other = longest.get(key(point))
        if other is None or point["epochs"] > points[other]["epochs"]:
            longest[key(point)] = g
    return {g: longest[key(point)] for g, point in enumerate(points)}


class Slots:
    """What each slot of a study trains: for a grid, its points and prefix groups, listed once."""

    def __init__(self, definition: StudyDefinition) -> None:
        self.definition = definition
        self.points = grid_points(definition) if definition.sampler == "grid" else []
        self.groups = prefix_groups(self.points) if definition.shares_prefixes else {}

    def first_try(self, slot: int) -> dict[str, Any]:
        """The system attributes of a slot's first trial. On a grid the training seed is fixed
        now: the slot's own, or, with shared prefixes, that of its group's longest point."""
        definition = self.definition
        attrs: dict[str, Any] = {records.SLOT: slot, records.ATTEMPT: 0}
        if definition.sampler != "grid":
            return attrs
        n_points = len(self.points)
        grid_id, repeat = slot % n_points, slot // n_points
        if definition.points:
            # Listed points are no product of axes for GridSampler: the trial suggests them as fixed.
            fixed = definition.fixed
            attrs[records.FIXED_PARAMS] = {k: v for k, v in self.points[grid_id].items() if k not in fixed}
        else:
            # GridSampler needs only the id; the grid itself is the study's, stored once with its definition.
            attrs[records.GRID_ID] = grid_id
        attrs.update({records.POINT: grid_id, records.REPEAT: repeat,
                      records.PLANNED_SEED: trial_seed(definition, slot),
                      records.EPOCHS: int(self.points[grid_id].get("epochs", 0))})
        if self.groups:
            group = repeat * n_points + self.groups[grid_id]
            attrs.update({records.GROUP: group, records.PLANNED_SEED: trial_seed(definition, group)})
        return attrs


def by_slot(trials: Sequence[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
    """The trials of each queue slot, oldest first."""
    slots: dict[int, list[FrozenTrial]] = defaultdict(list)
    for trial in sorted(trials, key=lambda t: t.number):
        slot = trial.system_attrs.get(records.SLOT)
        if slot is not None:
            slots[int(slot)].append(trial)
    return slots


def planned_epochs(trial: FrozenTrial) -> int:
    """The epochs a queued grid trial will train (0 where the sampler has yet to draw them)."""
    return int(trial.system_attrs.get(records.EPOCHS, 0))


# Which WAITING trial a worker takes first: a grid's repeats in turn (a study stopped early holds
# whole repeats), within one the longest points first, so that the last runs of a study are short
# and no worker waits long on another's; else the oldest. (system attribute, 1 ascending or -1
# descending), compared in turn, a missing one as 0, then the trial's number: the database sorts
# by it when a worker claims (hpo.storage.records.claim_next), so :func:`claim_order` is its twin.
CLAIM_ORDER: tuple[tuple[str, int], ...] = ((records.REPEAT, 1), (records.EPOCHS, -1))


def claim_order(trial: FrozenTrial) -> tuple[int, ...]:
    """:data:`CLAIM_ORDER` as a sort key of stored trials: the first is claimed first."""
    return (*(sign * int(trial.system_attrs.get(key, 0)) for key, sign in CLAIM_ORDER), trial.number)


def check_fresh_seeds(search_trials: Sequence[FrozenTrial], search: StudyDefinition,
                      confirmation: StudyDefinition) -> None:
    """Refuse a confirmation whose seeds a search trial trained with (never expected: see
    :data:`CONFIRM_SEED_OFFSET`)."""
    used = {int(t.user_attrs[records.SEED]) for t in search_trials if records.SEED in t.user_attrs}
    used |= {trial_seed(search, t.number) for t in search_trials}
    mine = {trial_seed(confirmation, slot) for slot in range(confirmation.n_trials)}
    if used & mine:
        raise ConfigError(f"confirmation seeds {sorted(used & mine)[:3]} were used by study {search.name!r}")
