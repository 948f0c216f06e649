"""A damaged, foreign or full database is one line naming the file and the cause, at once.

No retry loop, no traceback, no folder made first; workers stopped by it leave nothing RUNNING
for good; afterwards SQLite's own integrity check passes and the finished trials read back.
Real SQLite files, a real full disk (a small tmpfs, as root, as in CI).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ok, run_hpo, small_file_system, study_body, user_error, write_study

def _grid(epochs: int) -> str:
    """Four learning rates, ``epochs`` each."""
    return study_body(learning_rate=[0.01, 0.001, 0.0005, 0.0001], batch_size=[32], epochs=[epochs])


# Commands that must refuse quickly: a retry loop (two minutes, before) is the bug.
QUICK_S = 60


def _timed(*args: str, storage: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = run_hpo(*args, storage=storage, cwd=cwd, timeout=300)
    assert time.monotonic() - started < QUICK_S, (args, result.stderr[-2000:])
    return result


def _integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def _trained_study(tmp_path: Path, data_path: str, db: Path) -> None:
    """A study with its four trials trained (one epoch on 100 images)."""
    ok(run_hpo("launch", str(write_study(tmp_path, "grid", _grid(1))), "-n", "1", "--data", data_path,
               "--subset", "100", "--logs", str(tmp_path / "logs"), storage=f"sqlite:///{db}", cwd=tmp_path))


def _damage(db: Path, table: str) -> None:
    """Overwrite the first page of ``table`` with garbage, as a torn write or a bad sector would."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    with db.open("r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(os.urandom(page_size))


def test_a_damaged_database_is_one_line_for_every_command(data_path: str, tmp_path: Path) -> None:
    db = tmp_path / "hpo.db"
    _trained_study(tmp_path, data_path, db)
    _damage(db, "trials")
    url = f"sqlite:///{db}"
    study_file = str(tmp_path / "grid.toml")
    # (hpo create of the same study reads no trial, so a damaged trials table does not stop it.)
    for args in (["status"], ["status", "grid"], ["export", "grid"],
                 ["worker", "grid", "--data", data_path, "--subset", "100"],
                 ["launch", study_file, "-n", "1", "--data", data_path, "--subset", "100"],
                 ["report", "-o", str(tmp_path / "report")], ["dashboard", "--artifacts", str(tmp_path / "art")]):
        user_error(_timed(*args, storage=url, cwd=tmp_path), str(db), "damaged")
    assert not (tmp_path / "art").exists() and not (tmp_path / "report").exists()


def test_a_database_of_another_application_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
        conn.commit()
    before = db.read_bytes()
    study = write_study(tmp_path, "grid", _grid(1))
    for args in (["create", str(study)], ["status"], ["launch", str(study)]):
        user_error(_timed(*args, storage=f"sqlite:///{db}", cwd=tmp_path), "notes.db", "another application")
    assert db.read_bytes() == before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_file_system(tmp_path / "disk", "1m") as folder:
        yield folder


def _fill(folder: Path, leave: int) -> Path:
    """Fill the file system under ``folder`` but for ``leave`` bytes."""
    filler = folder / "filler"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with filler.open("wb") as file, contextlib.suppress(OSError):
        file.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_under_the_database_is_one_line_and_loses_nothing(small_disk: Path, data_path: str,
                                                                      tmp_path: Path) -> None:
    db = small_disk / "hpo.db"
    url = f"sqlite:///{db}"
    study = write_study(tmp_path, "grid", _grid(3))
    ok(run_hpo("create", str(study), "--data", data_path, "--subset", "100", storage=url))
    filler = _fill(small_disk, leave=0)
    launch = ["launch", str(study), "-n", "2", "--data", data_path, "--subset", "100",
              "--artifacts", str(tmp_path / "artifacts"), "--logs", str(tmp_path / "logs")]
    user_error(_timed(*launch, storage=url, cwd=tmp_path), str(db), "disk is full")

    # Room again: the file is whole, and the next launch recovers whatever the full disk left
    # RUNNING (its workers died with it) and finishes the study.
    filler.unlink()
    assert _integrity(db) == "ok"
    ok(run_hpo(*launch, storage=url, cwd=tmp_path))
    assert _integrity(db) == "ok"
    trials = optuna.load_study(study_name="grid", storage=url).get_trials()
    points = {t.system_attrs["grid_id"] for t in trials if t.state == TrialState.COMPLETE}
    assert points == {0, 1, 2, 3}
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_a_disk_too_small_for_a_new_database_is_one_line(small_disk: Path, tmp_path: Path) -> None:
    _fill(small_disk, leave=300 * 1024)
    study = write_study(tmp_path, "grid", _grid(1))
    url = f"sqlite:///{small_disk / 'hpo.db'}"
    user_error(_timed("create", str(study), storage=url, cwd=tmp_path), "hpo.db", "disk is full")
    (small_disk / "filler").unlink()
    ok(run_hpo("create", str(study), storage=url))  # what the full disk cut short is completed
    assert _integrity(small_disk / "hpo.db") == "ok"
    assert len(optuna.load_study(study_name="grid", storage=url).get_trials()) == 4
