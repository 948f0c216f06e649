"""Running N worker processes on this machine, with a live progress line on stderr.

Each worker is a plain ``hpo worker`` process (what a container or another machine would run),
pinned to its CPU threads and, with ``--gpus``, to a GPU round-robin. Their logs go to files;
the terminal shows one line of progress. Ctrl-C or SIGTERM stops every worker cleanly: each
fails its current trial as retryable and exits.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TextIO

import optuna

from hpo import device, queue
from hpo.config import StudyDefinition
from hpo.results import StudyStatus, study_status
from hpo.storage import retrying

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Placement:
    """Where worker ``index`` runs."""

    threads: int | None
    gpu: str | None


def plan(n_workers: int, *, gpus: Sequence[str] = (), threads: int | None = None,
         cpus: int | None = None) -> list[Placement]:
    """Round-robin workers over GPUs, and split the cores so their threads never oversubscribe."""
    if threads is None:
        threads = max(1, (cpus or os.cpu_count() or 1) // n_workers)
    if gpus:
        return [Placement(threads, gpus[i % len(gpus)]) for i in range(n_workers)]
    return [Placement(threads, None) for _ in range(n_workers)]


WORKER_MEMORY_GIB = 2  # a TensorFlow worker holding CIFAR-10 peaks near 1.3 GiB


def default_workers(gpus: Sequence[str], cpus: int | None = None, memory_gib: float | None = None) -> int:
    """Without -n: two workers per GPU (they share it well); on a CPU, one single-threaded
    worker per core, as memory allows.

    Measured on 2 cores (BENCHMARKS.md, c): two 1-thread workers gave 1.24 times the trials
    per hour of one 2-thread worker; these small models do not use two threads well.
    """
    if gpus:
        return 2 * len(gpus)
    memory_gib = memory_gib if memory_gib is not None else _memory_gib()
    return max(1, min(cpus or os.cpu_count() or 1, int(memory_gib // WORKER_MEMORY_GIB)))


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 8.0


def describe(placements: Sequence[Placement]) -> str:
    """'2 x 1 thread' or 'gpu 0: 2, gpu 1: 2', for the launch message."""
    gpus = Counter(p.gpu for p in placements if p.gpu is not None)
    if gpus:
        return ", ".join(f"gpu {gpu}: {n}" for gpu, n in gpus.items())
    threads = Counter(p.threads for p in placements)
    return ", ".join(f"{n} x {t} thread{'s' if t != 1 else ''}" for t, n in threads.items())


def worker_command(study: str, worker_args: Sequence[str]) -> list[str]:
    """A worker's command line. The storage URL is not on it: any user on the machine can read a
    command line (ps), so it goes through the worker's environment, HPO_STORAGE."""
    return [sys.executable, "-m", "hpo", "worker", study, *worker_args]


def launch(
    study: optuna.Study,
    definition: StudyDefinition,
    storage_url: str,
    placements: Sequence[Placement],
    worker_args: Sequence[str],
    log_dir: Path,
    *,
    out: TextIO = sys.stderr,
    interval: float = 2.0,
) -> int:
    """Start the workers, show progress until they all exit, and return the exit code."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    for i, place in enumerate(placements):
        env = {**os.environ, **device.worker_environment(place.threads, place.gpu), "HPO_STORAGE": storage_url}
        logfile = open(log_dir / f"worker-{i}.log", "ab")  # noqa: SIM115  (closed when it exits)
        procs.append(subprocess.Popen(
            worker_command(definition.name, worker_args),
            env=env, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us only; we forward it once, as SIGTERM
        ))
        logfile.close()
    where = describe(placements)
    print(f"hpo: {len(procs)} workers on study {definition.name} ({where}); logs in {log_dir}/",
          file=out, flush=True)

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            print(f"\nhpo: stopping {len(procs)} workers...", file=out, flush=True)
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    progress = Progress(out, definition.n_trials)
    try:
        stopped_at: float | None = None
        while any(p.poll() is None for p in procs):
            progress.show(_status(study, definition))
            time.sleep(interval)
            if stopping:
                stopped_at = stopped_at or time.monotonic()
                if time.monotonic() - stopped_at > STOP_TIMEOUT_S:
                    for proc in procs:
                        if proc.poll() is None:
                            proc.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # Every worker has exited: no trial of theirs may stay RUNNING.
    retrying(lambda: queue.recover(study, definition), what="recover trials of exited workers")
    final = _status(study, definition)
    progress.show(final, final=True)
    codes = [p.returncode for p in procs]
    if stopping:
        return 130
    bad = [c for c in codes if c != 0]
    if bad:
        print(f"hpo: {len(bad)} of {len(procs)} workers exited with an error; see {log_dir}/",
              file=out, flush=True)
        return 1
    return 0


def _status(study: optuna.Study, definition: StudyDefinition) -> StudyStatus:
    return retrying(lambda: study_status(study, definition), what="read progress")


class Progress:
    """One line of progress: redrawn in place on a terminal, printed on change otherwise."""

    def __init__(self, out: TextIO, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.total, self.clock = out, total, clock
        self.started = clock()
        self.first_done: int | None = None
        self.last = ""
        self.tty = out.isatty()

    def line(self, status: StudyStatus) -> str:
        return self._counts(status) + self._eta(status)

    def _counts(self, status: StudyStatus) -> str:
        p = status.points
        done = p["complete"] + p["pruned"] + p["failed"]
        if self.first_done is None:
            self.first_done = done  # trials finished before this launch say nothing of its speed
        best = f"{status.best_value:.4f}" if status.best_value is not None else "-"
        running = f" (epochs {status.running_progress()})" if status.running_epochs else ""
        return (f"{status.name}: {done}/{self.total} done, {p['running']} running{running}, "
                f"{p['failed']} failed, best {status.metric} {best}")

    def _eta(self, status: StudyStatus) -> str:
        p = status.points
        done = p["complete"] + p["pruned"] + p["failed"]
        elapsed = self.clock() - self.started
        fresh = done - (self.first_done or 0)
        remaining = self.total - done
        if remaining <= 0:
            return f", {_duration(elapsed)} elapsed"
        if fresh <= 0:
            return f", {_duration(elapsed)} elapsed, ETA -"
        return f", {_duration(elapsed)} elapsed, ETA {_duration(elapsed / fresh * remaining)}"

    def show(self, status: StudyStatus, final: bool = False) -> None:
        counts = self._counts(status)
        if self.tty:
            self.out.write("\r\033[K" + counts + self._eta(status) + ("\n" if final else ""))
            self.out.flush()
        elif final or counts != self.last:
            print(counts + self._eta(status), file=self.out, flush=True)
        self.last = counts


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
