"""Checkpoints: a retry goes on where the last attempt stopped, and ends exactly where an
uninterrupted run of the same seed ends: the same weights, the same test loss and accuracy.

In-process for the mechanism (every architecture, at an epoch's end and in the middle of one);
then real ``hpo worker`` processes on SQLite and PostgreSQL, killed (SIGKILL) or stopped
(SIGTERM) and restarted, a shared-prefix group resumed mid-run, and a retry on another "host"
(another UTS and PID namespace, the store reached by another path).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
from optuna.trial import FrozenTrial, TrialState

from hpo.storage import records
from hpo.training.checkpoints import Checkpoints, Identity
from hpo.training.events import STOP, Stopped
from hpo.training.train import Params, Training, train

from conftest import freeze_outside_a_transaction, missing, ok, study_body, wait_for, write_study

SUBSET = 200
EPOCHS = 6


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in model.variables]


class _StopAfter(keras.callbacks.Callback):
    """Asks the run to stop (as a worker's SIGTERM does) after ``n`` batches in all."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        self.n -= 1
        if self.n == 0:
            STOP.set("SIGTERM")


@pytest.mark.parametrize("architecture, augmentation", [("base", "none"), ("deeper_dropout", "none"),
                                                        ("batchnorm", "standard")])
@pytest.mark.parametrize("stop_after_batches", [20, 24])  # 10 batches an epoch: at its end, and 4 batches in
def test_a_run_stopped_and_restored_ends_as_an_uninterrupted_one(architecture: str, augmentation: str,
                                                                 stop_after_batches: int, small_data) -> None:
    params = Params(architecture, augmentation, 0.001, 32, 4)
    alone = train(params, small_data, seed=9)
    saved = []
    first = Training(params, small_data, seed=9, callbacks=[_StopAfter(stop_after_batches)])
    first.on_stop = saved.append
    try:
        with pytest.raises(Stopped):
            for _ in first.epochs():
                pass
    finally:
        STOP.clear()
    (state,) = saved
    assert (state.epochs_done, state.batches_done) == divmod(stop_after_batches, 10)
    again = Training(params, small_data, seed=9)  # a fresh model: another process, as far as Keras knows
    again.restore(state)
    for _ in again.epochs():
        pass
    resumed = again.result()
    assert all(np.array_equal(a, b) for a, b in zip(_weights(alone.model), _weights(again.model), strict=True))
    assert (resumed.test_loss, resumed.test_accuracy) == (alone.test_loss, alone.test_accuracy)
    assert again.history["val_accuracy"] == alone.history["val_accuracy"]


def _identity(**changes: object) -> Identity:
    base = {"study": "s", "uid": "a1", "slot": 3, "params": {"learning_rate": 0.001}, "seed": 7,
            "data": "file-abc/subset=200", "model": "v1"}
    return Identity(**{**base, **changes})  # type: ignore[arg-type]


def test_only_the_same_slot_configuration_seed_data_and_code_go_on(tmp_path: Path, small_data,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    training = Training(Params("base", "none", 0.001, 64, 1), small_data, seed=7)
    for _ in training.epochs():
        pass
    store = Checkpoints(tmp_path, "s")
    store.save(_identity(), training.state(), trained=1)
    loaded = store.load(_identity())
    assert loaded is not None and loaded[1] == 1 and loaded[0].epochs_done == 1
    with caplog.at_level(logging.WARNING):
        for other in (_identity(seed=8), _identity(data="file-def/subset=200"), _identity(model="v2"),
                      _identity(params={"learning_rate": 0.01}), _identity(uid="b2")):
            assert store.load(other) is None
    assert caplog.text.count("belongs to another run") == 5
    assert Checkpoints(tmp_path, "s").load(_identity(slot=4)) is None  # another slot has none


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_checkpoint_is_ignored_with_a_warning(damage: str, tmp_path: Path, small_data,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    training = Training(Params("base", "none", 0.001, 64, 1), small_data, seed=7)
    store = Checkpoints(tmp_path, "s")
    store.save(_identity(), training.state(), trained=0)
    path = store.path(3)
    whole = path.read_bytes()
    path.write_bytes({"garbage": os.urandom(len(whole)), "truncated": whole[: len(whole) // 2], "empty": b""}[damage])
    with caplog.at_level(logging.WARNING):
        assert store.load(_identity()) is None
    assert "unreadable" in caplog.text and "training from scratch" in caplog.text
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".partial")]


# --- real workers -----------------------------------------------------------------------------

def _worker(storage: str, study: Path | str, data_path: str, log: Path, artifacts: Path, *,
            prefix: tuple[str, ...] = (), env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "hpo", "--storage", storage, "worker", str(study), "--data", data_path,
         "--subset", str(SUBSET), "--threads", "1", "--artifacts", str(artifacts)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def _trials(storage: str, name: str) -> list[FrozenTrial]:
    try:
        return sorted(optuna.load_study(study_name=name, storage=storage).get_trials(), key=lambda t: t.number)
    except KeyError:
        return []


def _stopped_after(epochs: int, sig: signal.Signals, storage: str, study: Path, data_path: str, artifacts: Path,
                   log: Path) -> None:
    """Run a worker on ``study`` and send it ``sig`` once its run has a checkpoint at ``epochs``
    epochs or more; return when it has exited."""
    worker = _worker(storage, study, data_path, log, artifacts)
    try:
        wait_for(lambda: _checkpointed(artifacts, study.stem, epochs), 240, f"a checkpoint after {epochs} epochs")
        worker.send_signal(sig)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()


# Every trial saves its model: the tests compare its weights with an uninterrupted run's.
KEEP_ALL = {"keep_models": "all"}


def _checkpointed(artifacts: Path, name: str, epochs: int) -> bool:
    """Whether the study has a checkpoint at ``epochs`` epochs or more (the moment to strike)."""
    for path in (artifacts / "checkpoints" / name).glob("slot-*.npz"):
        try:
            with np.load(path) as saved:
                if json.loads(bytes(saved["meta"]).decode())["epochs_done"] >= epochs:
                    return True
        except (OSError, ValueError, KeyError):  # being replaced as we read
            continue
    return False


def _model_weights(trial: FrozenTrial, storage: str, artifacts: Path) -> list[np.ndarray]:
    """The weights of the model a trial saved with its artifacts."""
    (meta,) = [m for m in get_all_artifact_meta(trial, storage=optuna.storages.get_storage(storage))
               if m.filename.endswith(".keras")]
    target = artifacts.parent / f"model-{trial.number}-{meta.artifact_id}.keras"
    with FileSystemArtifactStore(str(artifacts)).open_reader(meta.artifact_id) as body:
        target.write_bytes(body.read())
    model = keras.models.load_model(target)
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _uninterrupted(study: Path, data_path: str, tmp_path: Path) -> dict[int, tuple[FrozenTrial, list[np.ndarray]]]:
    """The same study run by one worker that nothing stops, on a database of its own: per point
    (its epochs), its trial and the weights of its model. The same slots get the same seeds."""
    db, store = f"sqlite:///{tmp_path / 'reference.db'}", tmp_path / "reference-store"
    ok(subprocess.run(_worker_command(db, study, data_path, store), capture_output=True, text=True, timeout=600))
    name = optuna.get_all_study_summaries(db)[0].study_name
    return {t.system_attrs[records.EPOCHS]: (t, _model_weights(t, db, store)) for t in _trials(db, name)}


def _same(trial: FrozenTrial, weights: list[np.ndarray], reference: tuple[FrozenTrial, list[np.ndarray]]) -> None:
    """The trial ended exactly as the uninterrupted run of its point: weights, test loss, accuracy."""
    other, other_weights = reference
    assert trial.user_attrs[records.SEED] == other.user_attrs[records.SEED]
    assert all(np.array_equal(a, b) for a, b in zip(weights, other_weights, strict=True))
    for key in ("test_loss", "test_accuracy", "val_accuracy"):
        assert trial.user_attrs[key] == other.user_attrs[key], key


@pytest.mark.chaos
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_or_stopped_worker_s_trial_is_resumed_exactly(sig: signal.Signals, storage_url: str,
                                                               data_path: str, tmp_path: Path) -> None:
    study = write_study(tmp_path, "resume", study_body(study=KEEP_ALL, batch_size=[32], epochs=[EPOCHS]))
    artifacts = tmp_path / "store"
    _stopped_after(2, sig, storage_url, study, data_path, artifacts, tmp_path / "first.log")
    assert list((artifacts / "checkpoints" / "resume").glob("slot-0.npz"))  # what the retry goes on from
    ok(subprocess.run(_worker_command(storage_url, study, data_path, artifacts), capture_output=True, text=True,
                      timeout=600))
    trials = _trials(storage_url, "resume")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    failed, done = trials
    resumed_from = done.user_attrs[records.RESUMED_FROM]
    assert resumed_from >= 2 and done.system_attrs[records.RETRY_OF] == failed.number
    assert sorted(done.intermediate_values) == list(range(1, EPOCHS + 1))  # the whole curve
    # Every epoch trained once, but for at most the one a SIGKILL cut short after its report.
    trained = done.user_attrs[records.EPOCHS_ALL_ATTEMPTS]
    assert trained == len(failed.intermediate_values) + EPOCHS - resumed_from
    assert EPOCHS <= trained <= EPOCHS + (1 if sig == signal.SIGKILL else 0)
    _same(done, _model_weights(done, storage_url, artifacts), _uninterrupted(study, data_path, tmp_path)[EPOCHS])
    assert not list((artifacts / "checkpoints" / "resume").glob("*.npz"))  # deleted once the trial completed


@pytest.mark.chaos
def test_a_checkpoint_of_a_same_named_study_in_another_database_is_not_gone_on_from(data_path: str,
                                                                                    tmp_path: Path) -> None:
    # A user stops a launch, deletes hpo.db (or points at another database) and starts again with
    # the same study file and artifact folder: the old run's checkpoint has the same slot,
    # parameters, seed and data, but it is another study's.
    study = write_study(tmp_path, "again", study_body(study=KEEP_ALL, batch_size=[32], epochs=[EPOCHS]))
    artifacts = tmp_path / "store"
    _stopped_after(2, signal.SIGTERM, f"sqlite:///{tmp_path / 'first.db'}", study, data_path, artifacts,
                   tmp_path / "first.log")
    assert list((artifacts / "checkpoints" / "again").glob("slot-0.npz"))
    db = f"sqlite:///{tmp_path / 'second.db'}"
    result = subprocess.run(_worker_command(db, study, data_path, artifacts), capture_output=True, text=True,
                            timeout=600)
    ok(result)
    (done,) = _trials(db, "again")
    assert done.state == TrialState.COMPLETE and records.RESUMED_FROM not in done.user_attrs
    assert done.user_attrs[records.EPOCHS_ALL_ATTEMPTS] == EPOCHS
    assert "belongs to another run (uid: " in result.stderr


def _worker_command(storage: str, study: Path, data_path: str, artifacts: Path) -> list[str]:
    return [sys.executable, "-m", "hpo", "--storage", storage, "worker", str(study), "--data", data_path,
            "--subset", str(SUBSET), "--threads", "1", "--artifacts", str(artifacts)]


@pytest.mark.chaos
def test_a_shared_prefix_run_resumes_mid_run_and_completes_the_points_it_had_not_reached(
        data_path: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "group", study_body(study=KEEP_ALL, batch_size=[32], epochs=[2, 4, EPOCHS]))
    artifacts = tmp_path / "store"
    _stopped_after(3, signal.SIGKILL, db, study, data_path, artifacts, tmp_path / "first.log")
    ok(subprocess.run(_worker_command(db, study, data_path, artifacts), capture_output=True, text=True, timeout=600))
    trials = _trials(db, "group")
    by_epochs = {e: [t for t in trials if t.system_attrs[records.EPOCHS] == e] for e in (2, 4, EPOCHS)}
    assert [t.state for t in by_epochs[2]] == [TrialState.COMPLETE]  # passed before the kill, once
    # The 4-epoch point: completed on the way after the resume (or, if the kill came later, before it).
    assert [t.state for t in by_epochs[4]] in ([TrialState.FAIL, TrialState.COMPLETE], [TrialState.COMPLETE])
    assert [t.state for t in by_epochs[EPOCHS]] == [TrialState.FAIL, TrialState.COMPLETE]
    assert by_epochs[EPOCHS][1].user_attrs[records.RESUMED_FROM] >= 3
    reference = _uninterrupted(study, data_path, tmp_path)
    for epochs in (2, 4, EPOCHS):  # the one completed before the kill, on the way after the resume, at the end
        done = by_epochs[epochs][-1]
        _same(done, _model_weights(done, db, artifacts), reference[epochs])


@pytest.mark.chaos
def test_a_retry_on_another_host_goes_on_from_the_shared_store(data_path: str, tmp_path: Path) -> None:
    """The other worker has its own host name and PID namespace (so the first one's process cannot
    be checked: only its silence tells), and reaches the store by another path."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        missing("another host needs root and unshare (util-linux)")
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = write_study(tmp_path, "far", study_body(study=KEEP_ALL, batch_size=[32], epochs=[EPOCHS]))
    store = tmp_path / "store"
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "shared").symlink_to(store)
    short = {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_GRACE_PERIOD": "4"}
    first = _worker(db, study, data_path, tmp_path / "first.log", store, env=short)
    try:
        wait_for(lambda: _checkpointed(store, "far", 2), 240, "a checkpoint after two epochs")
        freeze_outside_a_transaction(first, tmp_path / "hpo.db")  # its heartbeats stop, its process stays
        other = subprocess.run(
            ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "sh", "-c",
             'hostname other-host && exec "$@"', "sh",
             *_worker_command(db, study, data_path, tmp_path / "mnt" / "shared")],
            capture_output=True, text=True, timeout=600)
    finally:
        first.kill()
        first.wait(timeout=60)
    ok(other)
    trials = _trials(db, "far")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "heartbeats" in trials[0].user_attrs[records.ERROR]
    assert trials[1].user_attrs[records.RESUMED_FROM] >= 2 and trials[1].user_attrs["host"] == "other-host"
    _same(trials[1], _model_weights(trials[1], db, store), _uninterrupted(study, data_path, tmp_path)[EPOCHS])
