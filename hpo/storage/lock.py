"""One lock per study, held while its queue is changed, so every slot is queued exactly once.

Creating a study, filling its queue and queueing a retry are each a read followed by writes
(which slots exist? add the missing ones). Any number of processes on any hosts may do this at
the same moment, so the read and the writes happen under a lock that the database itself holds:

- PostgreSQL: a transaction-level advisory lock (``pg_try_advisory_xact_lock``, tried until it is
  free). Every host that reaches the database shares it, the server drops it when the holder's
  transaction ends or its connection closes, so a crashed holder never leaves the study locked,
  and it holds through PgBouncer's transaction pooling. The reads and writes made under it run
  in the lock's own transaction (savepoints for each of Optuna's commits): one connection per
  holder, and all of it durable, or none of it, when the lock is let go.
- SQLite: an exclusive ``flock`` on ``<database>.lock`` beside the file. SQLite serves the
  processes of one host only (its locking does not hold over network filesystems), and so
  does this lock; the kernel drops it when the holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import random
import time
from pathlib import Path
from collections.abc import Iterator

import optuna
import sqlalchemy
import sqlalchemy.orm

from hpo.storage import connections, records
from hpo.errors import StorageError
from hpo.storage.url import StorageURL

LOCK_IDLE_LIMIT_S = 60


class StillHeld:
    """Asks the database, before each write made under the lock, whether the lock still holds.

    A holder cut off for longer than :data:`LOCK_IDLE_LIMIT_S` loses the lock (the server ends
    its session, rolling back what it wrote under it). On PostgreSQL the writes run in the lock's
    transaction, so they would fail anyway; the check fails the holder before it builds the next
    batch. On SQLite (a file lock, held until the process lets go or dies) there is nothing to ask.
    """

    def __init__(self, conn: sqlalchemy.Connection | None = None) -> None:
        self._conn = conn

    def __call__(self) -> None:
        if self._conn is not None:
            self._conn.execute(sqlalchemy.text("SELECT 1"))


def lock_key(study_name: str) -> int:
    """A signed 64-bit key for the study's advisory lock, the same on every host."""
    digest = hashlib.sha256(f"hpo-study:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, study_name: str) -> Iterator[StillHeld]:
    """Hold the study's queue lock for the ``with`` block; waits while another process holds it."""
    engine = records.engine_of(storage)
    if engine.dialect.name == "postgresql":
        # The lock's transaction waits, between its statements, on the holder's own work (the
        # trials to queue worked out from the stored ones), so it gets a longer idle limit than hpo's
        # other transactions (see hpo.storage.connections.limit_idle_transactions), yet a bounded
        # one: a holder cut off from the network must not block every other process's queueing
        # until the server's TCP gives up on it, which can take hours.
        with _advisory_lock(engine, lock_key(study_name), idle_limit_s=LOCK_IDLE_LIMIT_S) as conn, \
                _sessions_on(storage, conn):
            yield StillHeld(conn)
        return
    with _file_lock(engine.url.database, f"study {study_name!r}"):
        yield StillHeld()  # a flock holds until this process lets go or dies


@contextlib.contextmanager
def _sessions_on(storage: optuna.storages.BaseStorage, conn: sqlalchemy.Connection) -> Iterator[None]:
    """Make the storage's sessions, in this thread, run on the lock's connection, inside its
    transaction: each one's commit a SAVEPOINT released, the writes made durable together when
    the lock's transaction commits.

    Writes on a second connection, opened while the lock's is held, would make each holder hold
    two at once and wait for the second: on a server, a role or a PgBouncer pool whose slots are
    all taken, holders could wait for each other, their locks idling past their limit. So the
    holder never asks for a second, and a holder that dies or is cut off leaves nothing half
    queued: its whole transaction rolls back.
    """
    registry = records.scoped_session_of(storage).registry
    before = registry() if registry.has() else None
    registry.set(sqlalchemy.orm.Session(bind=conn, join_transaction_mode="create_savepoint"))
    try:
        yield
    finally:
        registry().close()
        if before is not None:
            registry.set(before)
        else:
            registry.clear()


@contextlib.contextmanager
def schema_lock(url: StorageURL) -> Iterator[None]:
    """Held while a database's tables are created or checked: processes starting together on a
    new database take turns, so one creates the tables and the others find them made."""
    if url.backend == "postgresql":
        engine = sqlalchemy.create_engine(url.secret, **connections.engine_kwargs())
        try:
            with _advisory_lock(engine, lock_key("\0schema")):
                yield
        finally:
            engine.dispose()
        return
    with _file_lock(url.parsed.database, "the database"):
        yield


@contextlib.contextmanager
def _advisory_lock(engine: sqlalchemy.engine.Engine, key: int,
                   idle_limit_s: int | None = None) -> Iterator[sqlalchemy.Connection]:
    """A transaction holding PostgreSQL's advisory lock ``key`` for the ``with`` block.

    A waiter holds no connection: it tries the lock (``pg_try_advisory_xact_lock``), and while
    another process has it, closes its connection and tries again after a jittered pause. Waiting
    inside ``pg_advisory_xact_lock`` would keep one server connection per waiter, and a fleet of
    workers all queueing at a study's end would fill the server, the holder's own writes included.
    A transaction-level lock is what PgBouncer's transaction pooling keeps: the server connection
    is the client's for exactly that transaction.
    """
    delay = 0.02
    while True:
        conn = engine.connect()
        transaction = conn.begin()
        try:
            if idle_limit_s is not None:
                conn.execute(sqlalchemy.text(f"SET LOCAL idle_in_transaction_session_timeout = {idle_limit_s * 1000}"))
            got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}).scalar()
        except BaseException:
            conn.close()
            raise
        if got:
            break
        transaction.rollback()
        conn.close()
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 1.5, 0.5)
    try:
        yield conn
        transaction.commit()
    finally:
        conn.close()


@contextlib.contextmanager
def _file_lock(database: str | None, what: str) -> Iterator[None]:
    """An exclusive flock on ``<database>.lock``: the processes of one host take turns."""
    if not database or database == ":memory:":
        yield  # one process owns an in-memory database
        return
    path = Path(database).with_name(Path(database).name + ".lock")
    try:
        handle = open(path, "a+b")  # noqa: SIM115  (closed below, after the lock is released)
    except OSError as exc:
        raise StorageError(f"cannot lock {what}: {path}: {exc.strerror or exc}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
