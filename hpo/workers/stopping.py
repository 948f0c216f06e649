"""Stopping a worker on a signal, whatever the trial's code is doing.

SIGTERM, SIGINT and SIGHUP (a closed terminal) ask the worker to stop: the trial training now
stops at its next batch boundary and fails as retryable (:data:`hpo.training.events.STOP`), and
the loop ends. A trial whose code never reaches a batch boundary (a ``build()`` that hangs, a
stuck data pipeline) cannot be stopped from within, so :data:`STOP_GRACE_S` after the signal, or
at once on a second one, a watchdog thread fails the run's trials as retryable and ends the
process (exit code 130, as an interrupted worker's). Signals are caught only in the main thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from hpo.training.events import STOP

log = logging.getLogger(__name__)

# How long a trial's code has, after a stop signal, to reach a batch boundary; then how long
# failing its trial may take (a database that does not answer) before the process ends anyway.
STOP_GRACE_S = 5.0
FORCE_EXIT_S = 10.0
EXIT_CODE = 130

Fail = Callable[[str], None]  # fails the running trials, retryable, with a message


class Signals:
    """The stop signals, caught for as long as a worker loop runs (a context manager)."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._current: tuple[int, Fail] | None = None  # the trial training now, and how to fail its run
        self._watchdog: threading.Timer | None = None

    def __enter__(self) -> Signals:
        STOP.clear()
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        return self

    def __exit__(self, *exc: object) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @contextlib.contextmanager
    def running(self, trial: int, fail: Fail) -> Iterator[None]:
        """While trial ``trial``'s run trains: the one a late stop fails with ``fail``."""
        self._current = trial, fail
        try:
            yield
        finally:
            self._current = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        again = self.requested is not None
        self.requested = signum
        STOP.set(signal.Signals(signum).name)
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = threading.Timer(0.0 if again else STOP_GRACE_S, self._force, (signum, again))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _force(self, signum: int, again: bool) -> None:
        """In the watchdog thread: the trial did not stop in time; fail it as retryable and exit."""
        current = self._current
        if current is None and not again:
            return  # between trials: the loop ends by itself
        ending = threading.Timer(FORCE_EXIT_S, os._exit, (EXIT_CODE,))
        ending.daemon = True
        ending.start()
        if current is not None:
            trial, fail = current
            name = signal.Signals(signum).name
            why = f"a second {name}" if again else f"{name}, and its code did not stop within {STOP_GRACE_S:.0f} s"
            log.warning("trial %d interrupted by %s; it will be retried, and the worker exits now", trial, why)
            try:
                fail(f"interrupted by {why}")
            except Exception:  # exiting regardless: a trial left RUNNING is recovered later
                log.exception("could not fail trial %d; a worker will recover it", trial)
        logging.shutdown()  # flush the log before the process ends
        os._exit(EXIT_CODE)
