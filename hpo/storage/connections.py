"""How hpo holds PostgreSQL connections: none kept, one at a time per process, nothing per session.

A worker trains for minutes between database calls, so a pooled connection would sit idle on the
server all that time; with a server's ``max_connections`` (100 by default, fewer on managed
services) that capped a fleet at about two dozen workers. So:

- **None kept.** Every transaction opens a connection and closes it (:class:`OneAtATime`, a
  ``NullPool``): a worker that trains, and a launcher that only watches, hold none.
- **One at a time per process.** The threads of a process (a worker's heartbeat beside its
  recording) take turns for that one connection. A thread that holds one may open a second
  (re-entrant), but hpo's own code does not: the writes made under the study's queue lock run
  on the lock's connection (:mod:`hpo.storage.lock`); only the creation of a new database's
  tables, once, nests Optuna's connections inside the schema lock's.
- **A full server is waited for.** A connection the server refuses because every slot is taken
  ("too many clients", or PgBouncer's ``max_client_conn``) is tried again after a jittered wait,
  so more workers than slots take turns instead of failing.
- **Nothing per session.** No startup ``options``, no server-side prepared statements, no
  session-level ``SET`` or advisory lock: each transaction sets what it needs with ``SET LOCAL``
  (:func:`limit_idle_transactions`). PgBouncer in transaction-pooling mode hands each
  transaction to any server connection, and all of that would break there.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import sqlalchemy
import sqlalchemy.pool

log = logging.getLogger(__name__)

IDLE_IN_TRANSACTION_S = 20
FULL_SERVER_WAIT_S = 600.0  # how long a connection waits for a free slot before the error stands
GATE_WAIT_S = 60.0  # how long a thread waits for its process's connection before it opens its own


class _ProcessGate:
    """A process's one connection slot: reentrant for the thread that holds it, released by
    whichever thread returns the connection (the garbage collector may)."""

    def __init__(self) -> None:
        self._free = threading.Condition()
        self._owner: int | None = None
        self._held = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        deadline = time.monotonic() + GATE_WAIT_S
        with self._free:
            while self._owner not in (None, me):
                left = deadline - time.monotonic()
                if left <= 0:
                    # Never a deadlock: past the wait, this thread opens a connection of its own.
                    log.warning("a database connection has been held for %.0f s by another thread; "
                                "opening a second one", GATE_WAIT_S)
                    break
                self._free.wait(left)
            else:
                self._owner = me
            self._held += 1

    def release(self) -> None:
        with self._free:
            self._held = max(self._held - 1, 0)
            if self._held == 0:
                self._owner = None
                self._free.notify_all()


_GATE = _ProcessGate()


class OneAtATime(sqlalchemy.pool.NullPool):
    """A pool that keeps no connection and lets its process's threads hold one at a time
    (shared by every such pool of the process), waiting for a slot on a full server."""

    def _do_get(self) -> Any:
        _GATE.acquire()
        try:
            return _connect_when_room(super()._do_get)
        except BaseException:
            _GATE.release()
            raise

    def _do_return_conn(self, record: Any) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            _GATE.release()


# SQLAlchemy names a pool's logger after its class, here under hpo's own, whose INFO lines hpo
# shows: every disposed engine would print "Pool recreating" on each command.
logging.getLogger(f"{__name__}.{OneAtATime.__name__}").setLevel(logging.WARNING)


def _connect_when_room(connect: Any) -> Any:
    """``connect()``, tried again while the server (or the pooler in front of it) has no free slot."""
    deadline = time.monotonic() + FULL_SERVER_WAIT_S
    delay = 0.05
    while True:
        try:
            return connect()
        except Exception as exc:
            if not full(exc) or time.monotonic() + delay > deadline:
                raise
            log.debug("the database has no free connection slot; waiting %.2f s", delay)
            time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: waiting workers do not retry in step
            delay = min(delay * 2, 2.0)


_FULL = (
    "too many clients",  # the server's max_connections
    "too many connections",  # a role's or a database's CONNECTION LIMIT
    "no more connections allowed",  # PgBouncer's max_client_conn
)


def full(exc: BaseException) -> bool:
    """Whether ``exc`` says every connection slot is taken: PostgreSQL's SQLSTATE 53300, which a
    refused connection carries only in its message, or PgBouncer's refusal."""
    for error in (exc, getattr(exc, "orig", None), exc.__cause__):
        if error is None:
            continue
        if getattr(error, "sqlstate", None) == "53300":
            return True
        text = str(error)
        if any(words in text for words in _FULL):
            return True
    return False


def engine_kwargs() -> dict[str, Any]:
    """SQLAlchemy engine settings for a PostgreSQL study database (what Optuna's storage takes)."""
    return {"poolclass": OneAtATime, "connect_args": {"prepare_threshold": None}}


def limit_idle_transactions(engine: sqlalchemy.engine.Engine,
                            idle_in_transaction_s: int = IDLE_IN_TRANSACTION_S) -> None:
    """Make every transaction of ``engine`` tell the server to end it if it sits idle for
    ``idle_in_transaction_s`` (``SET LOCAL``: it holds for that transaction only, also through
    PgBouncer).

    A worker that loses the network in the middle of a transaction (claiming a trial holds the
    trial's row under SELECT ... FOR UPDATE) leaves its session open on the server, idle in
    transaction, its locks held: every other worker's claim waits behind that row until the
    server's TCP notices the peer is gone, minutes or, without keepalives, hours. None of hpo's
    transactions idles for more than a moment (the queue lock sets a longer limit of its own), so
    the server ends such a transaction: it rolls back, its locks are freed, and when the network
    returns the worker finds the connection closed and retries with a new one. Client-side TCP
    timeouts are left out on purpose: a cut-off worker then simply waits and resumes when the link
    returns, instead of failing its database calls until the retries give up.
    """
    statement = f"SET LOCAL idle_in_transaction_session_timeout = {int(idle_in_transaction_s * 1000)}"

    @sqlalchemy.event.listens_for(engine, "begin")
    def _limit(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql(statement)
