"""Where studies live: one function that turns a URL into a ready Optuna RDB storage.

SQLite is the embedded default, set up for several local worker processes (WAL journal and a
busy timeout, so writers queue instead of failing with "database is locked"). PostgreSQL is for
several machines: connections are checked before use, and :func:`retrying` rides out a restart.
Heartbeats are always on, so a worker killed in the middle of a trial is noticed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from hpo.errors import StorageError

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///hpo.db"
HEARTBEAT_INTERVAL = int(os.environ.get("HPO_HEARTBEAT_INTERVAL", "5"))
GRACE_PERIOD = int(os.environ.get("HPO_GRACE_PERIOD", "30"))
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


def resolve_url(url: str | None) -> str:
    """The storage URL from the flag, then ``HPO_STORAGE``, then an SQLite file here."""
    url = url or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"--storage {url!r} is not a database URL "
                           "(try sqlite:///hpo.db or postgresql+psycopg://user@host/db)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(f"--storage {url!r}: only sqlite and postgresql are supported")
    return url


def open_storage(url: str | None = None, *, heartbeat: bool = True,
                 retry_for: float = 0.0) -> optuna.storages.RDBStorage:
    """Open (and if needed create) the storage behind ``url``.

    ``retry_for`` seconds of retries let workers start while the database is still coming up.
    """
    url = resolve_url(url)
    parsed = make_url(url)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed.database)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}

    def connect() -> optuna.storages.RDBStorage:
        for attempt in range(3):
            try:
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_INTERVAL if heartbeat else None,
                    grace_period=GRACE_PERIOD if heartbeat else None,
                )
            except sqlalchemy.exc.DatabaseError as exc:
                # Workers starting together on a new database race to create its tables;
                # the loser finds them made, and simply opens the storage again.
                if attempt == 2 or not any(s in str(exc) for s in ("already exists", "duplicate key", "UNIQUE constraint failed")):
                    raise
                log.debug("tables created by another process meanwhile; opening again")
        raise AssertionError("unreachable")

    try:
        storage = retrying(connect, what=f"connect to {display_url(url)}", timeout=retry_for)
    except TRANSIENT_ERRORS as exc:
        raise StorageError(f"cannot connect to {display_url(url)}: {_first_line(exc)}") from None
    if parsed.get_backend_name() == "sqlite":
        _serialize_sqlite(storage.engine)
    return storage


def _prepare_sqlite(database: str | None) -> None:
    if not database or database == ":memory:":
        return
    path = Path(database)
    if not path.parent.exists():
        raise StorageError(f"{path}: folder {path.parent} does not exist")
    # WAL lets readers (status, dashboard) run beside writers; it is stored in the file, so
    # setting it once here holds for every later connection, Optuna's included.
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def _serialize_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Make every SQLite transaction BEGIN IMMEDIATE.

    pysqlite starts a transaction only at the first write, so two workers can both read a
    trial as WAITING and both claim it. Taking the write lock at BEGIN makes Optuna's
    read-then-write updates atomic, as SELECT ... FOR UPDATE does on PostgreSQL.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:  # type: ignore[no-untyped-def]
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


def display_url(url: str) -> str:
    """The URL as it may be shown or logged: with its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
