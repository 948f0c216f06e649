"""Grid repeats and shared epoch prefixes, on SQLite and PostgreSQL, with real training.

A grid whose points differ only in epochs trains each group once, to its largest epoch count,
and completes the shorter points on the way. These tests check what a user relies on: every
point and repeat runs exactly once, a point completed on the way is the model an independent
run of that point gives, and a crash part-way loses nothing already passed.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState


from hpo.storage import records
from hpo.study.files import load_definition
from hpo.training.objective import run_trial
from hpo.storage.open import open_storage
from hpo.study.create import create_study
from hpo.training.train import Params, Training, train
from hpo.workers.loop import Job, run_worker

from conftest import ok, run_hpo, study_body, user_error, wait_for, write_study

# 2 learning rates x 2 epoch counts, twice: 8 trials, 4 training runs (2 groups x 2 repeats).
PREFIX_GRID = study_body(seed=5, study={"repeats": 2}, learning_rate=[0.001, 0.0001], batch_size=[32], epochs=[1, 2])


def _trials(url: str, name: str) -> list[FrozenTrial]:
    return sorted(optuna.load_study(study_name=name, storage=url).get_trials(), key=lambda t: t.number)


def _group(trial: FrozenTrial) -> tuple[float, int]:
    """(learning rate, repeat): what the trials of one shared run have in common."""
    return trial.params["learning_rate"], trial.user_attrs["repeat"]


def _create_at_barrier(url: str, study_file: str, barrier: multiprocessing.synchronize.Barrier,
                       out: multiprocessing.Queue) -> None:
    definition = load_definition(study_file)
    storage = open_storage(url)
    barrier.wait(timeout=120)
    create_study(storage, definition)
    out.put(True)


def test_concurrent_creates_queue_every_point_and_repeat_once(storage_url: str, tmp_path: Path) -> None:
    study_file = str(write_study(tmp_path, "rep", PREFIX_GRID))
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_create_at_barrier, args=(storage_url, study_file, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    assert [out.get(timeout=300) for _ in procs] == [True] * 4
    for p in procs:
        p.join(timeout=60)
    trials = _trials(storage_url, "rep")
    slots = Counter(t.system_attrs[records.SLOT] for t in trials)
    assert sorted(slots) == list(range(8)) and set(slots.values()) == {1}
    # Slot = repeat x 4 points + grid id; each repeat covers the 4 points.
    by_repeat = Counter((t.system_attrs[records.REPEAT], t.system_attrs[records.GRID_ID]) for t in trials)
    assert sorted(by_repeat) == [(r, g) for r in range(2) for g in range(4)]
    # One seed per group (a run and its shorter point), a different one for every group and repeat.
    seeds = {t.system_attrs[records.GROUP]: t.system_attrs[records.PLANNED_SEED] for t in trials}
    assert len(seeds) == 4 and len(set(seeds.values())) == 4
    assert all(t.system_attrs[records.PLANNED_SEED] == seeds[t.system_attrs[records.GROUP]] for t in trials)


def test_a_shared_run_completes_each_point_as_an_independent_run_would(storage_url: str, tmp_path: Path,
                                                                       small_data) -> None:
    definition = load_definition(write_study(tmp_path, "shared", PREFIX_GRID))
    study, _ = create_study(open_storage(storage_url), definition)
    runs: list[int] = []

    def objective(run):
        runs.append(run.trial.number)
        return run_trial(run, definition, small_data)

    summary = run_worker([Job(study, definition, objective)])
    trials = _trials(storage_url, "shared")
    assert summary.complete == 8 and [t.state for t in trials] == [TrialState.COMPLETE] * 8
    # 4 training runs of 2 epochs: 8 epochs trained instead of 12.
    by_number = {t.number: t for t in trials}
    assert [by_number[n].params["epochs"] for n in runs] == [2, 2, 2, 2]

    groups: dict[tuple[float, int], list[FrozenTrial]] = {}
    for t in trials:
        groups.setdefault(_group(t), []).append(t)
    assert len(groups) == 4
    for members in groups.values():
        short, long = sorted(members, key=lambda t: t.params["epochs"])
        assert (short.params["epochs"], long.params["epochs"]) == (1, 2)
        # Recorded: which run completed it, and the seed the group shares.
        assert short.user_attrs["prefix_run"] == long.user_attrs["prefix_run"] == long.number
        assert short.user_attrs["seed"] == long.user_attrs["seed"]
        assert short.user_attrs["epochs_run"] == 1 and long.user_attrs["epochs_run"] == 2
        # Its curve is the first epoch of the long run's.
        assert short.intermediate_values == {1: long.intermediate_values[1]}

    # Exactly an independent 1-epoch run with that seed: on one CPU, training is deterministic.
    short = min(trials, key=lambda t: (t.params["epochs"], t.number))
    alone = train(Params.from_mapping({**short.user_attrs["fixed"], **short.params}), small_data,
                  seed=short.user_attrs["seed"])
    assert alone.metrics()["test_accuracy"] == short.user_attrs["test_accuracy"]
    assert alone.metrics()["test_loss"] == short.user_attrs["test_loss"]
    assert alone.metrics()["val_accuracy"] == short.user_attrs["val_accuracy"]


ARCHITECTURES = pytest.mark.parametrize("architecture, augmentation", [
    ("base", "none"), ("deeper_dropout", "none"), ("batchnorm", "standard")])


@ARCHITECTURES
def test_a_milestone_holds_the_weights_of_an_independent_run(architecture: str, augmentation: str,
                                                             small_data) -> None:
    """The weights, not only the scores, with dropout and random augmentation too: nothing in
    training depends on the total epoch count, so epochs 1..k of a longer run are a k-epoch run.
    Exact equality holds on one CPU (TensorFlow's CPU kernels are deterministic here); on a GPU,
    non-deterministic reductions make any two runs, shared or not, differ slightly."""
    training = Training(Params(architecture, augmentation, 0.001, 64, 3), small_data, seed=11)
    for epoch in training.epochs():
        if epoch == 2:
            weights = [w.copy() for w in training.model.get_weights()]
            predictions = training.model.predict(small_data.x_test, verbose=0)
    alone = train(Params(architecture, augmentation, 0.001, 64, 2), small_data, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(weights, alone.model.get_weights(), strict=True))
    assert np.array_equal(predictions, alone.model.predict(small_data.x_test, verbose=0))




def test_a_crash_part_way_keeps_the_points_passed_and_retries_the_rest(storage_url: str, data_path: str,
                                                                        tmp_path: Path) -> None:
    body = PREFIX_GRID.replace("repeats = 2", "").replace("learning_rate = [0.001, 0.0001]",
                                                          "learning_rate = [0.001]").replace("[1, 2]", "[1, 400]")
    ok(run_hpo("create", str(write_study(tmp_path, "crash", body)), "--subset", "100", storage=storage_url))
    worker = [sys.executable, "-m", "hpo", "--storage", storage_url, "worker", "crash", "--data", data_path,
              "--subset", "100", "--threads", "1"]
    first = subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(t.state == TrialState.COMPLETE for t in _trials(storage_url, "crash")), 300,
                 "the 1-epoch point completed on the way")
        first.send_signal(signal.SIGKILL)  # a crash: no chance to clean up
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    ok(subprocess.run(worker, capture_output=True, text=True, timeout=900))  # recovers, retries
    trials = _trials(storage_url, "crash")
    by_epochs = {e: [t for t in trials if t.params["epochs"] == e] for e in (1, 400)}
    # The point passed before the crash stays complete, trained once.
    assert [t.state for t in by_epochs[1]] == [TrialState.COMPLETE]
    # The point that was still training failed with the worker and was retried, once, with the same seed.
    assert [t.state for t in by_epochs[400]] == [TrialState.FAIL, TrialState.COMPLETE]
    failed, retried = by_epochs[400]
    assert "died" in failed.user_attrs["error"] or "heartbeats" in failed.user_attrs["error"]
    assert retried.system_attrs[records.RETRY_OF] == failed.number
    assert retried.user_attrs["seed"] == by_epochs[1][0].user_attrs["seed"]


def test_sharing_can_be_switched_off(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    body = PREFIX_GRID.replace("repeats = 2", "repeats = 2\nshare_prefixes = false")
    study_file = write_study(tmp_path, "apart", body)
    ok(run_hpo("create", str(study_file), storage=url))
    trials = _trials(url, "apart")
    assert len(trials) == 8 and not any(records.GROUP in t.system_attrs for t in trials)
    assert len({t.system_attrs[records.PLANNED_SEED] for t in trials}) == 8  # every trial its own seed


def test_status_shows_each_point_and_repeat(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    ok(run_hpo("create", str(write_study(tmp_path, "cov", PREFIX_GRID)), storage=url))
    table = run_hpo("status", storage=url)
    ok(table)
    assert "cov: repeat 1: 0/4 complete, 4 pending; repeat 2: 0/4 complete, 4 pending" in table.stdout
    listing = run_hpo("status", "cov", "--format", "json", storage=url)
    ok(listing)
    coverage = json.loads(listing.stdout)[0]["coverage"]
    assert len(coverage) == 4 and all(point["repeats"] == ["pending", "pending"] for point in coverage)
    assert {(p["params"]["learning_rate"], p["params"]["epochs"]) for p in coverage} == {
        (0.001, 1), (0.001, 2), (0.0001, 1), (0.0001, 2)}


def test_a_study_created_before_repeats_existed_still_loads(tmp_path: Path) -> None:
    """A definition stored by an older hpo lacks the newer keys; it means their defaults."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study_file = write_study(tmp_path, "old", PREFIX_GRID.replace("repeats = 2", ""))
    ok(run_hpo("create", str(study_file), storage=url))
    study = optuna.load_study(study_name="old", storage=url)
    saved = dict(records.record_of(study)[records.DEFINITION])
    del saved["repeats"], saved["share_prefixes"]
    records.set_record(study, records.DEFINITION, saved)
    result = run_hpo("create", str(study_file), storage=url)
    ok(result)
    assert "already exists, unchanged" in result.stderr


def test_repeats_need_a_grid(tmp_path: Path) -> None:
    study_file = write_study(tmp_path, "bad", PREFIX_GRID.replace('type = "grid"', 'type = "random"'))
    result = run_hpo("create", str(study_file), storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    user_error(result, "study.repeats = 2 needs the grid sampler")
    assert not (tmp_path / "hpo.db").exists()




