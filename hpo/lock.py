"""One lock per study, held while its queue is changed, so every slot is queued exactly once.

Creating a study, filling its queue and queueing a retry are each a read followed by writes
(which slots exist? add the missing ones). Any number of processes on any hosts may do this at
the same moment, so the read and the writes happen under a lock that the database itself holds:

- PostgreSQL: a transaction-level advisory lock (``pg_advisory_xact_lock``) on a connection of
  its own. Every host that reaches the database shares it, and the server drops it when the
  holder's connection closes, so a crashed holder never leaves the study locked.
- SQLite: an exclusive ``flock`` on ``<database>.lock`` beside the file. SQLite serves the
  processes of one host only (its locking does not hold over network filesystems), and so
  does this lock; the kernel drops it when the holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
from pathlib import Path
from typing import Iterator

import optuna
import sqlalchemy

from hpo import stored
from hpo.errors import StorageError

log = logging.getLogger(__name__)


def lock_key(study_name: str) -> int:
    """A signed 64-bit key for the study's advisory lock, the same on every host."""
    digest = hashlib.sha256(f"hpo-study:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, study_name: str) -> Iterator[None]:
    """Hold the study's queue lock for the ``with`` block; waits while another process holds it."""
    engine = stored.engine_of(storage)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn, conn.begin():
            # The lock's transaction stays idle while the queue is written through Optuna's own
            # connections; a server-side idle timeout must not end it half-way.
            conn.execute(sqlalchemy.text("SET LOCAL idle_in_transaction_session_timeout = 0"))
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(study_name)})
            yield
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield  # one process owns an in-memory database
        return
    path = Path(database).with_name(Path(database).name + ".lock")
    try:
        handle = open(path, "a+b")  # noqa: SIM115  (closed below, after the lock is released)
    except OSError as exc:
        raise StorageError(f"cannot lock study {study_name!r}: {path}: {exc.strerror or exc}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
