"""A study's queue lock, on SQLite (a flock beside the file) and PostgreSQL (an advisory lock):
one holder at a time across processes, and a holder that dies lets go at once."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import time

import pytest
from typing import Any

from hpo.storage.lock import lock_key, study_lock
from hpo.storage.open import open_storage

HOLD_S = 1.5


def _hold(url: str, name: str, out: multiprocessing.Queue, hold_s: float, barrier: Any = None) -> None:
    """Take the study's lock (after the others are ready, with a ``barrier``), hold it, say when."""
    storage = open_storage(url)
    if barrier is not None:
        barrier.wait(timeout=120)
    with study_lock(storage, name):
        out.put(("in", os.getpid(), time.monotonic()))
        time.sleep(hold_s)
        out.put(("out", os.getpid(), time.monotonic()))


def test_the_lock_key_is_the_same_in_every_process_and_differs_per_study() -> None:
    """Every host must lock the same key for a study: no per-process hash seed may enter it."""
    other = subprocess.run([sys.executable, "-c", "from hpo.storage.lock import lock_key; print(lock_key('exp3'))"],
                           capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "random"})
    assert int(other.stdout) == lock_key("exp3") != lock_key("exp4")
    assert -(2**63) <= lock_key("exp3") < 2**63  # a bigint, as pg_advisory_xact_lock takes


def test_one_holder_at_a_time(storage_url: str) -> None:
    open_storage(storage_url)  # the tables, before the processes race
    ctx = multiprocessing.get_context("spawn")
    out, barrier = ctx.Queue(), ctx.Barrier(3)
    procs = [ctx.Process(target=_hold, args=(storage_url, "grid", out, HOLD_S, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    events = sorted((out.get(timeout=120) for _ in range(6)), key=lambda e: e[2])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # In, out, in, out, ...: never two holders at once.
    assert [kind for kind, _, _ in events] == ["in", "out"] * 3
    assert all(events[i][1] == events[i + 1][1] for i in range(0, 6, 2))


@pytest.mark.postgres
def test_on_postgresql_a_lock_on_another_study_does_not_wait(postgres_url: str) -> None:
    """One advisory lock per study. (On SQLite the lock is one file beside the database, shared
    by its studies: SQLite takes one writer at a time anyway.)"""
    storage_url = postgres_url
    open_storage(storage_url)
    ctx = multiprocessing.get_context("spawn")
    out, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_hold, args=(storage_url, name, out, HOLD_S, barrier)) for name in ("a", "b")]
    for p in procs:
        p.start()
    events = sorted((out.get(timeout=120) for _ in range(4)), key=lambda e: e[2])
    for p in procs:
        p.join(timeout=60)
    assert [kind for kind, _, _ in events][:2] == ["in", "in"]  # both held at once


@pytest.mark.chaos
def test_a_holder_that_dies_lets_go(storage_url: str) -> None:
    open_storage(storage_url)
    ctx = multiprocessing.get_context("spawn")
    # A queue each: the holder is killed the moment its message arrives, maybe before its queue's
    # feeder thread has let go of the queue's lock, which would then stay taken for good.
    said, says = ctx.Queue(), ctx.Queue()
    holder = ctx.Process(target=_hold, args=(storage_url, "grid", said, 600))
    holder.start()
    kind, pid, _ = said.get(timeout=120)
    assert kind == "in"
    os.kill(pid, signal.SIGKILL)
    holder.join(timeout=30)
    killed_at = time.monotonic()
    waiter = ctx.Process(target=_hold, args=(storage_url, "grid", says, 0))  # killed by conftest if it hangs
    waiter.start()
    kind, _, got_at = _next(says, waiter, timeout=120)
    waiter.join(timeout=60)
    assert kind == "in" and waiter.exitcode == 0
    assert got_at - killed_at < 30  # the server (or the kernel) dropped the dead holder's lock


def _next(out: multiprocessing.Queue, process: Any, timeout: float) -> tuple[str, int, float]:
    """The next message ``process`` puts on ``out``; a process that dies first fails the test at once,
    with its exit code, where waiting out the timeout would say nothing of why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return out.get(timeout=2)
        except queue.Empty:
            if process.exitcode is not None:
                pytest.fail(f"the waiter exited with {process.exitcode} before it held the lock")
    pytest.fail(f"the waiter did not hold the lock within {timeout:.0f} s (alive: {process.is_alive()})")
