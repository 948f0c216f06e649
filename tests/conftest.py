"""Shared fixtures: study storages on SQLite and on the real PostgreSQL server, and the data set.

Every storage-facing test takes ``storage_url`` and runs twice, once per backend, each time on
a database of its own that is dropped afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TypeVar
from collections.abc import Callable, Iterator

import pytest

# Short heartbeats, so tests of dead workers need not wait half a minute. Set before hpo.storage.open
# is imported, and inherited by every worker process a test starts.
os.environ.setdefault("HPO_HEARTBEAT_INTERVAL", "1")
os.environ.setdefault("HPO_GRACE_PERIOD", "20")  # generous: a loaded 2-core machine starves threads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
POSTGRES_ADMIN = os.environ.get("HPO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def _postgres_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001  (any failure to connect means: no PostgreSQL here)
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    problem = _postgres_available()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN} is down in CI: {problem}")
        pytest.skip(f"PostgreSQL not reachable: {problem}")
    return POSTGRES_ADMIN


def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    import psycopg

    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    host = admin_url.split("@", 1)[1].rsplit("/", 1)[0]
    user = admin_url.split("//", 1)[1].split("@", 1)[0]
    try:
        yield f"postgresql+psycopg://{user}@{host}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty study database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hpo.db'}"
        return
    yield from fresh_postgres_database(request.getfixturevalue("postgres_admin"))


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    yield from fresh_postgres_database(postgres_admin)


@pytest.fixture(scope="session")
def data_path() -> str:
    """The real CIFAR-10 archive (HPO_DATA, or the shared copy beside the project)."""
    # Absolute: tests run hpo in other working directories.
    path = Path(os.environ.get("HPO_DATA") or DEFAULT_DATA).resolve()
    if not path.exists():
        pytest.skip(f"no CIFAR-10 archive at {path}; set HPO_DATA")
    os.environ["HPO_DATA"] = str(path)
    return str(path)


@pytest.fixture(scope="session")
def small_data(data_path: str):
    """A stratified subset of the real data: 400 training and 80 test images."""
    from hpo.training.data import load_dataset

    return load_dataset(data_path, subset=400)


def write_study(folder: Path, name: str, body: str) -> Path:
    """A study file written by a test; ``body`` holds everything but the [study] name."""
    path = folder / f"{name}.toml"
    path.write_text(f'[study]\nname = "{name}"\n{body}', encoding="utf-8")
    return path


def run_hpo(*args: str, storage: str | None = None, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``hpo`` command as a user would, in a subprocess."""
    command = [sys.executable, "-m", "hpo"]
    if storage:
        command += ["--storage", storage]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def ok(result: subprocess.CompletedProcess[str]) -> None:
    """The command succeeded; on failure, show the end of what it said."""
    assert result.returncode == 0, result.stderr[-3000:]


def user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The command refused its input as a user error: exit code 2 and one ``hpo: error:`` line
    holding every fragment, no traceback. Returns that line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("hpo: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- study bodies shared by test modules (what write_study takes) --------------------------------
# A module puts its own [study] lines (description, experiment, trials) before one of these and
# its [[reference]] rows after it.

TWO_LR_GRID = """
[sampler]
type = "grid"
[data]
protocol = "validation_split"
validation_split = 0.2
[space]
architecture = "base"
augmentation = "none"
learning_rate = [0.01, 0.001]
batch_size = [64]
epochs = [1]
"""
