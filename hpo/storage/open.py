"""Where studies live: one function that turns a URL into a ready Optuna RDB storage.

SQLite is the embedded default, set up for several local worker processes (WAL journal and a
busy timeout, so writers queue instead of failing with "database is locked"). PostgreSQL is for
several machines: a process holds one connection at a time, only for a transaction
(:mod:`hpo.storage.connections`), and :func:`retrying` rides out a restart.
Workers beat for their trials themselves (:mod:`hpo.workers.liveness`), so Optuna's heartbeats stay off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import TypeVar
from collections.abc import Callable

import optuna
import sqlalchemy
import sqlalchemy.exc

from hpo.errors import StorageError, StudyNotFound
from hpo.storage import connections
from hpo.storage.lock import schema_lock
from hpo.storage.url import StorageURL, shown

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60

T = TypeVar("T")

# What a lost or restarting database looks like from here. Optuna wraps some SQLAlchemy errors
# in StorageInternalError; SQLite's "database is locked" is an OperationalError too.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    optuna.exceptions.StorageInternalError,
)


class StorageEmpty(StudyNotFound):
    """The storage holds no studies at all (and a read-only command did not create it)."""


class StorageUnusable(StorageError):
    """The database answered, but cannot serve: damaged, not a study database, full, read-only.
    Waiting does not mend that, so nothing retries it."""


# SQLite result codes (the primary code, the low byte) that no retry mends, and what they mean.
_SQLITE_UNUSABLE = {
    3: "permission denied",
    8: "the database is read-only",
    10: "disk I/O error",
    11: "the database file is damaged",
    13: "the disk is full",
    14: "cannot open the database file",
    26: "the file is not an SQLite database",
}
# PostgreSQL SQLSTATE classes and codes that no retry mends (53300, too many connections, passes).
_POSTGRES_UNUSABLE = {
    "53100": "the server's disk is full",
    "53200": "the server is out of memory",
    "58030": "the server cannot read or write its files",
    "XX001": "the database's data is damaged",
    "XX002": "an index of the database is damaged",
    "25006": "the database is read-only",
    "3D000": "the database does not exist",
    "28000": "the server refused the login",
    "28P01": "the password was refused",
}


def unusable(exc: BaseException, sqlite_file: str | None = None) -> str | None:
    """Why ``exc``, a database error, means the database cannot be used now, or None where
    waiting may help (a lost connection, a lock held by another process)."""
    for error in (exc, getattr(exc, "orig", None), exc.__cause__):
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None:
            why = _SQLITE_UNUSABLE.get(code & 0xFF)
            if why == _SQLITE_UNUSABLE[10] and _disk_full(sqlite_file):
                why = _SQLITE_UNUSABLE[13]  # SQLite reports a full disk under its WAL index as an I/O error
            return why
        state = getattr(error, "sqlstate", None)
        if state is not None:
            return _POSTGRES_UNUSABLE.get(state)
    return None


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "handle_error")
def _refuse_unusable(context: sqlalchemy.engine.ExceptionContext) -> None:
    """Turn, for every engine (Optuna's included, from its first statement on), an error no retry
    mends into one line that names the database and the cause: hpo's retries and Optuna's own
    must not spend minutes on a damaged file or a full disk."""
    engine = context.engine
    why = unusable(context.original_exception, engine.url.database if engine is not None else None)
    if why is not None:
        raise StorageUnusable(f"{_where(engine)}: {why} ({_first_line(context.original_exception)})")


def _disk_full(database: str | None) -> bool:
    """Whether the file system under an SQLite file has (next to) no room left."""
    if not database or database == ":memory:":
        return False
    try:
        info = os.statvfs(Path(database or ".").resolve().parent)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < 64 * 1024


def _where(engine: sqlalchemy.engine.Engine | None) -> str:
    """The database an engine serves, as a message names it: an SQLite file's path, else the URL."""
    if engine is None:
        return "the database"
    if engine.url.get_backend_name() == "sqlite":
        return str(engine.url.database)
    return shown(engine.url)


def open_storage(url: StorageURL | str | None = None, *, retry_for: float = 0.0,
                 create: bool = True) -> optuna.storages.RDBStorage:
    """Open the storage behind ``url`` (a string is resolved as ``--storage`` is), creating its
    tables if ``create``.

    ``retry_for`` seconds of retries let workers start while the database is still coming up.
    Without ``create``, a storage that holds no studies raises :class:`StorageEmpty` and is
    left exactly as it was (no SQLite file, no tables).
    """
    url = url if isinstance(url, StorageURL) else StorageURL.resolve(url)
    if url.backend == "sqlite":
        _check_sqlite(url.sqlite_file, create)
        engine_kwargs: dict = {"pool_pre_ping": True, "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:
        if not create:
            _check_postgres(url)
        engine_kwargs = connections.engine_kwargs()

    def connect() -> optuna.storages.RDBStorage:
        if url.backend == "postgresql" and _postgres_has(url, "alembic_version"):  # Optuna makes it last
            storage = _existing_postgres(url, engine_kwargs)
            if storage is not None:
                return storage
        # Processes starting together on a new database would race to create its tables.
        with schema_lock(url):
            return optuna.storages.RDBStorage(url.secret, engine_kwargs=engine_kwargs)

    try:
        storage = retrying(connect, what=f"connect to {url}", timeout=retry_for)
    except RuntimeError as exc:  # Optuna: tables of a schema version it does not know
        raise StorageUnusable(f"cannot use {url}: {_first_line(exc)}") from None
    except TRANSIENT_ERRORS as exc:
        raise StorageError(f"cannot connect to {url}: {_first_line(exc)}") from None
    except sqlalchemy.exc.DatabaseError as exc:  # not a database, read-only, ...
        raise StorageError(f"cannot use {url}: {_first_line(exc)}") from None
    if url.backend == "sqlite":
        _serialize_sqlite(storage.engine)
    else:
        connections.limit_idle_transactions(storage.engine)
    return storage


def check_whole(storage: optuna.storages.RDBStorage) -> None:
    """Read an SQLite file through (``PRAGMA quick_check``: every page, a second per few hundred
    MB) and refuse it if any part is damaged: for a command that serves the database for long
    (the dashboard), which would otherwise fail on each request. PostgreSQL checks its own pages."""
    if storage.engine.dialect.name != "sqlite":
        return
    with storage.engine.connect() as conn:
        problems = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise StorageUnusable(f"{_where(storage.engine)}: {_SQLITE_UNUSABLE[11]} ({problems[0]})")


def _use_wal(conn: sqlite3.Connection) -> None:
    """WAL lets readers (status, dashboard) run beside writers; it is stored in the file, so
    setting it once holds for every later connection, Optuna's included.

    Switching needs the file to itself, and SQLite answers "database is locked" at once, without
    waiting, while another process has it open: several launchers creating one new file at the
    same moment. Then the others go on; whoever has the file alone next (or its next open) sets it.
    """
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        log.info("SQLite journal mode left for another process to set: %s", exc)


def _check_sqlite(path: Path | None, create: bool) -> None:
    """Refuse, in one line, an SQLite path that cannot be a study database; set up WAL mode."""
    if path is None:  # in memory
        return
    if path.is_dir():
        raise StorageError(f"{path} is a folder, not an SQLite database file")
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: SQLite would read or write nothing there
        raise StorageUnusable(f"{path} is not a regular file, so it cannot be an SQLite database")
    if not path.exists():
        if not create:
            raise StorageEmpty(f"{path} does not exist: no studies yet")
        if not path.parent.is_dir():
            raise StorageError(f"{path}: folder {path.parent} does not exist")
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "studies" not in tables:
                others = ", ".join(sorted(tables)[:3])
                raise StorageUnusable(f"{path} holds another application's tables ({others}), not studies; "
                                      "name another file")
            if create:
                _use_wal(conn)
    except sqlite3.DatabaseError as exc:  # not a database, damaged, read-only file system, no permission
        why = unusable(exc, str(path)) or "cannot use it as an SQLite database"
        raise StorageUnusable(f"{path}: {why} ({exc})") from None
    if not create and "studies" not in tables:
        raise StorageEmpty(f"{path} holds no studies yet")


def _check_postgres(url: StorageURL) -> None:
    """Raise :class:`StorageEmpty` if the database has no study tables, creating nothing."""
    try:
        has_tables = retrying(lambda: _postgres_has(url, "studies"), what=f"read {url}", timeout=0)
    except TRANSIENT_ERRORS as exc:
        raise StorageError(f"cannot connect to {url}: {_first_line(exc)}") from None
    if not has_tables:
        raise StorageEmpty(f"{url} holds no studies yet")


def _existing_postgres(url: StorageURL, engine_kwargs: dict) -> optuna.storages.RDBStorage | None:
    """Optuna's storage of a PostgreSQL database whose tables exist and are of this Optuna's
    schema version, or None (then Optuna's own check, under the schema lock, says what is wrong).

    Optuna's check reads the schema version on a second connection while its first is still open:
    two server connections per process, for a moment, where hpo holds one. So it is skipped and
    the version compared here, one connection after another.
    """
    storage = optuna.storages.RDBStorage(url.secret, engine_kwargs=engine_kwargs,
                                         skip_compatibility_check=True, skip_table_creation=True)
    versions = storage._version_manager  # Optuna's own reader of the schema version
    if versions.get_current_version() == versions.get_head_version():
        return storage
    storage.engine.dispose()
    return None


def _postgres_has(url: StorageURL, table: str) -> bool:
    """Whether the PostgreSQL database holds ``table`` (one short connection)."""
    engine = sqlalchemy.create_engine(url.secret, **connections.engine_kwargs())
    try:
        return sqlalchemy.inspect(engine).has_table(table)
    finally:
        engine.dispose()


def _serialize_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Make every SQLite transaction BEGIN IMMEDIATE.

    pysqlite starts a transaction only at the first write, so two workers can both read a
    trial as WAITING and both claim it. Taking the write lock at BEGIN makes Optuna's
    read-then-write updates atomic, as SELECT ... FOR UPDATE does on PostgreSQL.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners were added must not be reused


def retrying(fn: Callable[[], T], *, what: str, timeout: float = 120.0) -> T:
    """Call ``fn``, retrying transient database errors with exponential backoff."""
    deadline = time.monotonic() + timeout
    delay = 0.25
    while True:
        try:
            return fn()
        except TRANSIENT_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable (%s), retrying %s in %.1f s",
                        _first_line(exc), what, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def _first_line(exc: BaseException) -> str:
    """The first line of what went wrong; for Optuna's StorageInternalError, of what it wraps."""
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
