"""Bad input: one clear line on stderr, exit code 2, and nothing written to the storage.

Every refusal is checked twice: the message names what is wrong, and the database (an SQLite
file, or the PostgreSQL database) is exactly as it was before the command ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from collections.abc import Iterator

import pytest
import sqlalchemy

from conftest import STUDIES, missing, ok, run_hpo, study_body, user_error, write_study

GRID = study_body()  # one point, one epoch


def _snapshot(url: str) -> object:
    """What the storage holds: an SQLite file's bytes (or its absence), or every PostgreSQL row."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sqlalchemy.inspect(conn)
            return {table: sorted(map(tuple, conn.execute(sqlalchemy.text(f'SELECT * FROM "{table}"'))))
                    for table in sorted(inspector.get_table_names())}
    finally:
        engine.dispose()


@contextlib.contextmanager
def _unchanged(url: str) -> Iterator[None]:
    before = _snapshot(url)
    yield
    assert _snapshot(url) == before, "a refused command changed the storage"


def test_worker_for_a_missing_study_creates_nothing(storage_url: str) -> None:
    with _unchanged(storage_url):
        user_error(run_hpo("worker", "nosuchstudy", storage=storage_url), "no study named 'nosuchstudy'")
        user_error(run_hpo("export", "nosuchstudy", storage=storage_url), "no study named 'nosuchstudy'")
        user_error(run_hpo("status", "nosuchstudy", storage=storage_url), "no study named 'nosuchstudy'")
    # status without a name, on an empty storage: a hint, exit 0, and still nothing written.
    with _unchanged(storage_url):
        result = run_hpo("status", storage=storage_url)
        ok(result)
        assert "no studies yet" in result.stderr


def test_launch_with_bad_data_or_subset_creates_no_study(storage_url: str, tmp_path: Path, data_path: str) -> None:
    study = write_study(tmp_path, "tiny", GRID)
    with _unchanged(storage_url):
        user_error(run_hpo("launch", str(study), "--data", str(tmp_path / "nowhere.tar.gz"), storage=storage_url,
                           cwd=tmp_path), "nowhere.tar.gz")
        user_error(run_hpo("launch", str(study), "--data", data_path, "--subset", "999999", storage=storage_url,
                           cwd=tmp_path), "--subset", "999999")
        user_error(run_hpo("worker", str(study), "--data", str(tmp_path / "nowhere.tar.gz"), storage=storage_url,
                           cwd=tmp_path), "nowhere.tar.gz")


def test_logs_or_artifacts_pointing_at_a_file_are_refused_before_anything_is_written(
        storage_url: str, tmp_path: Path, data_path: str) -> None:
    study = write_study(tmp_path, "tiny", GRID)
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    with _unchanged(storage_url):
        user_error(run_hpo("launch", str(study), "--logs", str(a_file), "--data", data_path, "--subset", "100",
                           storage=storage_url, cwd=tmp_path), "--logs", "is a file")
        user_error(run_hpo("launch", str(study), "--artifacts", str(a_file), "--data", data_path,
                           "--subset", "100", storage=storage_url, cwd=tmp_path), "--artifacts", "is a file")
        user_error(run_hpo("worker", str(study), "--artifacts", str(a_file / "sub"), "--data", data_path,
                           "--subset", "100", storage=storage_url, cwd=tmp_path), "--artifacts", "is a file")


def test_export_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    ok(run_hpo("create", str(write_study(tmp_path, "tiny", GRID)), storage=db))
    user_error(run_hpo("export", "tiny", "-o", str(tmp_path / "missing" / "out.csv"), storage=db),
               "--output", "does not exist")
    user_error(run_hpo("export", "tiny", "-o", str(tmp_path), storage=db), "--output", "is a folder")


@pytest.mark.parametrize("variable,value", [
    ("HPO_HEARTBEAT_INTERVAL", "abc"), ("HPO_HEARTBEAT_INTERVAL", "0"), ("HPO_GRACE_PERIOD", "-5"),
    ("HPO_GRACE_PERIOD", "1"),  # not longer than the interval
])
def test_bad_heartbeat_settings_are_one_line(variable: str, value: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    with _unchanged(db):
        # Checked by the commands that run workers, before they write anything.
        user_error(run_hpo("launch", str(STUDIES / "exp1.toml"), storage=db,
                           env={"HPO_HEARTBEAT_INTERVAL": "2", variable: value}), variable)
        user_error(run_hpo("worker", str(STUDIES / "exp1.toml"), storage=db,
                           env={"HPO_HEARTBEAT_INTERVAL": "2", variable: value}), variable)


def test_sqlite_paths_that_cannot_be_a_database(tmp_path: Path) -> None:
    not_a_database = tmp_path / "notes.db"
    not_a_database.write_text("these are my notes, not a database\n" * 100)
    before = not_a_database.read_bytes()
    user_error(run_hpo("create", str(STUDIES / "exp1.toml"), storage=f"sqlite:///{not_a_database}"),
               "notes.db", "not a database")
    assert not_a_database.read_bytes() == before
    user_error(run_hpo("status", storage=f"sqlite:///{tmp_path}"), "is a folder")
    user_error(run_hpo("create", str(STUDIES / "exp1.toml"), storage=f"sqlite:///{tmp_path / 'no' / 'hpo.db'}"),
               "does not exist")


def test_sqlite_on_a_read_only_file_system(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    db = f"sqlite:///{folder / 'hpo.db'}"
    ok(run_hpo("create", str(STUDIES / "exp1.toml"), storage=db))
    # Bind the folder read-only over itself (root, as in CI).
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        missing(f"cannot mount a read-only folder here (needs root): {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        user_error(run_hpo("create", str(STUDIES / "exp2.toml"), storage=db), "hpo.db")
        user_error(run_hpo("create", str(STUDIES / "exp1.toml"), storage=f"sqlite:///{folder / 'new.db'}"),
                   "new.db")
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    status = run_hpo("status", "--format", "json", storage=db)
    ok(status)
    assert '"exp1"' in status.stdout


@pytest.mark.parametrize("name,problem", [
    ("-rf", "must start with a letter or a digit"),
    (".", "must start with a letter or a digit"),
    ("..", "must start with a letter or a digit"),
    ("../escape", "must be letters, digits"),
    ("x" * 101, "at most 100"),
])
def test_study_names_that_could_escape_their_folders_are_refused(name: str, problem: str, tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text(f'[study]\nname = "{name}"\n{GRID}', encoding="utf-8")
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    with _unchanged(db):
        user_error(run_hpo("create", str(study), storage=db), "study.toml", "study.name", problem)
        user_error(run_hpo("launch", str(study), storage=db), "study.toml", "study.name", problem)


# --- inputs with no size limit ------------------------------------------------------------------

def test_a_study_file_with_no_end_is_refused_at_its_size_limit(storage_url: str, tmp_path: Path) -> None:
    with _unchanged(storage_url):
        user_error(run_hpo("create", "/dev/zero", storage=storage_url, timeout=60), "/dev/zero", "larger than 1 MiB")
        big = tmp_path / "big.toml"
        big.write_text(f'[study]\nname = "big"\ndescription = "{"x" * (1 << 20)}"\n{GRID}')
        user_error(run_hpo("launch", str(big), storage=storage_url, timeout=60), "big.toml", "larger than 1 MiB")
    # A study file read through a pipe (process substitution) is still a study file.
    shell = subprocess.run(["bash", "-c", f'"{sys.executable}" -m hpo --storage "{storage_url}" create '
                                          f'<(printf \'[study]\\nname = "piped"\\n%s\' "$0")', GRID],
                           capture_output=True, text=True, timeout=120)
    assert shell.returncode == 0, shell.stderr


def test_a_grid_over_the_trial_limit_is_refused_at_once_and_the_limit_can_be_raised(
        storage_url: str, tmp_path: Path) -> None:
    rates = ", ".join(f"{0.00001 * (i + 1):.5f}" for i in range(1000))
    sizes = ", ".join(str(i + 1) for i in range(1000))
    huge = GRID.replace("[0.001]", f"[{rates}]").replace("[64]", f"[{sizes}]")
    with _unchanged(storage_url):
        user_error(run_hpo("create", str(write_study(tmp_path, "huge", huge)), storage=storage_url, timeout=60),
                   "1,000,000 points", "study.trial_limit = 10,000")
        budget = GRID.replace('type = "grid"', 'type = "random"').replace("[0.001]", "{ low = 1e-4, high = 1e-2 }")
        user_error(run_hpo("create", str(write_study(tmp_path, "budget", "trials = 1000000\n" + budget)),
                           storage=storage_url, timeout=60), "study.trials = 1,000,000", "study.trial_limit")
    # The documented way past it: the study says how many trials it means to queue.
    wide = GRID.replace("[0.001]", f"[{', '.join(rates.split(', ')[:120])}]").replace("[64]", "[32, 64, 128, 256]")
    ok(run_hpo("create", str(write_study(tmp_path, "wide", "trial_limit = 480\n" + wide)), storage=storage_url))
    user_error(run_hpo("create", str(write_study(tmp_path, "wider", "trial_limit = 479\n" + wide)),
                       storage=storage_url), "480 trials", "study.trial_limit = 479")


def test_more_workers_than_the_machine_can_hold_are_refused_before_anything_starts(
        storage_url: str, tmp_path: Path) -> None:
    with _unchanged(storage_url):
        user_error(run_hpo("launch", str(STUDIES / "exp1.toml"), "-n", "100000", storage=storage_url,
                           cwd=tmp_path), "-n 100000", "at most")
    assert not (tmp_path / "hpo-logs").exists()


@pytest.mark.parametrize("command", [["worker"], ["export"], ["status"], ["confirm"], ["report", "-o", "out"]])
def test_a_study_name_past_100_characters_is_refused_by_every_command(command: list[str], storage_url: str,
                                                                       tmp_path: Path) -> None:
    name = "x" * 300
    ok(run_hpo("create", str(STUDIES / "exp1.toml"), storage=storage_url))
    with _unchanged(storage_url):
        args = [command[0], name, *command[1:]]
        user_error(run_hpo(*args, storage=storage_url, cwd=tmp_path), "is 300 characters long; at most 100")
    assert not (tmp_path / "out").exists()


# --- storage URLs -----------------------------------------------------------------------------

@pytest.mark.parametrize("password, raw", [("Zq9@Secr/et:Kx7", "@ / :"), ("Pw9#Hx2q", "#"), ("Kx7:Zq9", ":"),
                                           ("Wq3?Rt8", "?")])
def test_a_password_with_a_raw_separator_is_refused_before_connecting_and_never_shown(
        password: str, raw: str) -> None:
    url = f"postgresql://postgres:{password}@unresolvable.invalid:5432/db"
    for args in (["status"], ["create", str(STUDIES / "exp1.toml")]):
        result = run_hpo(*args, storage=url, timeout=60)
        line = user_error(result, "percent-encode", f"raw {raw}", "postgres:***@unresolvable.invalid")
        for fragment in {password, *re.split(r"[@/:#?]", password)}:
            assert fragment not in result.stderr, (fragment, line)


def test_paths_that_are_no_regular_file_are_refused_not_read_without_end(tmp_path: Path, data_path: str) -> None:
    fifo = tmp_path / "data.tar.gz"
    os.mkfifo(fifo)
    study = write_study(tmp_path, "tiny", GRID)
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    with _unchanged(db):
        user_error(run_hpo("launch", str(study), "--data", str(fifo), storage=db, timeout=60),
                   "data.tar.gz", "not a regular file")
        deep = tmp_path / "deep.toml"
        deep.write_text("x = " + "[" * 100_000 + "]" * 100_000)
        user_error(run_hpo("create", str(deep), storage=db, timeout=60), "deep.toml", "nested too deeply")
    for database in ("/dev/null", str(fifo)):
        user_error(run_hpo("create", str(study), storage=f"sqlite:///{database}", timeout=60),
                   database, "not a regular file")
    assert stat.S_ISCHR(Path("/dev/null").stat().st_mode) and stat.S_ISFIFO(fifo.stat().st_mode)
