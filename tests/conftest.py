"""Shared fixtures: study storages on SQLite and on the real PostgreSQL server, and the data set.

Every storage-facing test takes ``storage_url`` and runs twice, once per backend, each time on
a database of its own that is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn, TypeVar

import pytest

# Short heartbeats, so tests of dead workers need not wait half a minute. Set before hpo.storage.open
# is imported, and inherited by every worker process a test starts.
os.environ.setdefault("HPO_HEARTBEAT_INTERVAL", "1")
os.environ.setdefault("HPO_GRACE_PERIOD", "20")  # generous: a loaded 2-core machine starves threads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests tests/slow.py lists as slow: ``pytest -m "not slow"`` leaves them out."""
    from slow import is_slow

    for item in items:
        if is_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """Kill any ``multiprocessing`` child a test left running (one that failed while its
    processes waited): at exit, multiprocessing joins every child, so one left waiting would
    keep pytest from ever exiting, its report printed and the run never ending."""
    import multiprocessing

    yield
    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=10)


STUDIES = ROOT / "studies"
POSTGRES_ADMIN = os.environ.get("HPO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
# A study records its data when it is created, so even a test that only creates the report's
# studies reads CIFAR-10: from HPO_DATA, else the shared copy beside the project.
if not os.environ.get("HPO_DATA") and DEFAULT_DATA.exists():
    os.environ["HPO_DATA"] = str(DEFAULT_DATA.resolve())


def missing(what: str) -> NoReturn:
    """Something a test needs is not here: in CI (``CI`` set) that is a failure, for CI must
    provide it; elsewhere the test is skipped, with the reason."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must provide it)")
    pytest.skip(what)


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
        missing(f"PostgreSQL at {POSTGRES_ADMIN} is not reachable: {problem}")
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


@contextlib.contextmanager
def small_file_system(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``200k``, ``1m``) mounted on ``folder`` (made): a disk that fills (root)."""
    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        missing(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="session")
def data_path() -> str:
    """The real CIFAR-10 archive (HPO_DATA, or the shared copy beside the project)."""
    # Absolute: tests run hpo in other working directories.
    path = Path(os.environ.get("HPO_DATA") or DEFAULT_DATA).resolve()
    if not path.exists():
        missing(f"no CIFAR-10 archive at {path}; set HPO_DATA")
    os.environ["HPO_DATA"] = str(path)
    return str(path)


@pytest.fixture(scope="session")
def small_data(data_path: str):
    """A stratified subset of the real data: 400 training and 80 test images."""
    from hpo.training.data import load_dataset

    return load_dataset(data_path, subset=400)


def created_study(storage_url: str, folder: Path, body: str | None = None, name: str = "grid") -> tuple[Any, Any]:
    """(study, definition) of a study created now from ``body`` (default :data:`SMALL_GRID`) in
    the storage at ``storage_url``."""
    from hpo.storage.open import open_storage
    from hpo.study.create import create_study
    from hpo.study.files import load_definition

    definition = load_definition(write_study(folder, name, body or SMALL_GRID))
    study, created = create_study(open_storage(storage_url), definition)
    assert created
    return study, definition


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


def freeze_outside_a_transaction(worker: subprocess.Popen[bytes], db: Path) -> None:
    """SIGSTOP the worker (alive, but no heartbeat, no progress) at a moment it holds no write
    lock on the SQLite file: one frozen inside a write transaction blocks every process until it
    resumes (docs/guarantees.md says where exactly-once stops), and nobody could recover its trial meanwhile."""
    for _ in range(100):
        worker.send_signal(signal.SIGSTOP)
        try:
            with sqlite3.connect(db, timeout=0.5, isolation_level=None) as probe:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # frozen holding the lock: let it finish, try again
            worker.send_signal(signal.SIGCONT)
            time.sleep(0.1)
    raise AssertionError("the worker held the database's write lock at every try")


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


# --- study files -------------------------------------------------------------------------------

SpaceValue = Any  # one value, a list or tuple (a grid axis, a categorical choice), or {low, high, log}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def study_body(sampler: str = "grid", *, seed: int | None = None, pruner: str | None = None,
               study: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
               architecture: SpaceValue = "base", augmentation: SpaceValue = "none",
               learning_rate: SpaceValue = (0.001,), batch_size: SpaceValue = (64,),
               epochs: SpaceValue = (1,)) -> str:
    """A study file's TOML but for its name (what :func:`write_study` takes): by default a
    one-point grid of the base model, one epoch; ``study`` and ``data`` are keys of their tables."""
    lines = [f"{key} = {_toml(value)}" for key, value in (study or {}).items()]
    lines += ["[sampler]", f"type = {_toml(sampler)}", *([f"seed = {seed}"] if seed is not None else [])]
    if pruner is not None:
        lines += ["[pruner]", f"type = {_toml(pruner)}"]
    if data is not None:
        lines += ["[data]", *(f"{key} = {_toml(value)}" for key, value in data.items())]
    space = {"architecture": architecture, "augmentation": augmentation, "learning_rate": learning_rate,
             "batch_size": batch_size, "epochs": epochs}
    lines += ["[space]", *(f"{key} = {_toml(value)}" for key, value in space.items())]
    return "\n" + "\n".join(lines) + "\n"


# Six points of one epoch (three learning rates x two batch sizes), one retry each.
SMALL_GRID = study_body(study={"max_retries": 1}, learning_rate=[0.01, 0.001, 0.0001], batch_size=[32, 64])

# Two learning rates, one epoch, validated on a held-out 20% (what several modules train).
TWO_LR_GRID = study_body(data={"protocol": "validation_split", "validation_split": 0.2}, learning_rate=[0.01, 0.001])


# --- data and models of a user's own ------------------------------------------------------------

def write_npz(path: Path, *, size: int = 12, channels: int = 1, classes: int = 4, train: int = 160, test: int = 40,
              seed: int = 0, names: bool = True) -> Path:
    """An image data set of another shape and class count: ``size`` x ``size`` x ``channels``
    uint8 images of ``classes`` classes, each class a bright patch in a place of its own over noise
    (learnable in an epoch or two); with ``names``, class names "shape-0", "shape-1", ..."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def images(n: int) -> tuple[Any, Any]:
        labels = np.arange(n) % classes
        x = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
        cells = int(np.ceil(np.sqrt(classes)))
        step = size // cells
        for i, label in enumerate(labels):
            row, col = divmod(int(label), cells)
            x[i, row * step:(row + 1) * step, col * step:(col + 1) * step] = 220
        return x, labels.astype(np.int64)

    x_train, y_train = images(train)
    x_test, y_test = images(test)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    if names:
        arrays["class_names"] = np.array([f"shape-{i}" for i in range(classes)])
    np.savez(path, **arrays)
    return path


# A builder module as a user writes one: an MLP or a small CNN, their knobs conditional.
BUILDER_MODULE = '''
import keras
from keras import layers


def build(params, *, input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    if params["family"] == "cnn":
        x = layers.Conv2D(params["filters"], 3, padding="same", activation="relu")(inputs)
        x = layers.Flatten()(x)
    else:
        x = layers.Flatten()(inputs)
        x = layers.Dense(params["units"], activation="relu")(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
'''

OWN_MODEL_STUDY = '''
trials = {trials}
max_retries = 1

[sampler]
type = "tpe"
seed = 3

[data]
source = "shapes.npz"

[model]
builder = "my_models:build"

[space]
learning_rate = {{ low = 0.003, high = 0.03, log = true }}
batch_size = [16, 32]
epochs = {{ low = 1, high = 2 }}
family = ["mlp", "cnn"]

[space.mlp]
units = [16, 32, 64]

[space.cnn]
filters = [4, 8]
'''


def own_model_study(folder: Path, name: str = "own", trials: int = 4, module: str = BUILDER_MODULE) -> Path:
    """A study of a builder module and an .npz of its own, written into ``folder``: its file's path."""
    (folder / "my_models.py").write_text(module, encoding="utf-8")
    write_npz(folder / "shapes.npz")
    return write_study(folder, name, OWN_MODEL_STUDY.format(trials=trials))
