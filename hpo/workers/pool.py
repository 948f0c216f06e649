"""Running N worker processes on this machine, with a live progress line on stderr.

Each worker is a plain ``hpo worker`` process (what a container or another machine would run),
pinned to its CPU threads and, with ``--gpus``, to a GPU round-robin. Their logs go to files;
the terminal shows one line of progress. Ctrl-C or SIGTERM stops every worker cleanly: each
fails its current trial as retryable and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from collections.abc import Callable, Sequence

import optuna

from hpo.workers import device

from hpo.workers import queueing
from hpo.study.definition import StudyDefinition
from hpo.results.status import StudyStatus, study_status
from hpo.errors import HpoError
from hpo.storage.open import StorageUnusable, retrying

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
MIN_WORKER_MEMORY_GIB = 0.5  # a TensorFlow worker on a small subset, idle: no fewer can run


def max_workers(memory_gib: float | None = None) -> int:
    """The most workers one launch may start: as many as this machine's memory could hold at the
    least a TensorFlow worker needs. More is a typo (``-n 100000``), and would only fail to fork."""
    memory_gib = memory_gib if memory_gib is not None else _memory_gib()
    return max(1, int(memory_gib // MIN_WORKER_MEMORY_GIB))


def check_workers(n_workers: int, memory_gib: float | None = None) -> int:
    """``n_workers`` if this machine can hold them, else one line saying what can."""
    memory_gib = memory_gib if memory_gib is not None else _memory_gib()
    most = max_workers(memory_gib)
    if n_workers > most:
        raise HpoError(f"-n {n_workers}: at most {most} workers fit in this machine's {memory_gib:.0f} GiB of memory "
                       f"(about {MIN_WORKER_MEMORY_GIB} GiB each, idle); run more on other machines with hpo worker")
    return n_workers


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


def worker_command(studies: Sequence[str], worker_args: Sequence[str]) -> list[str]:
    """A worker's command line. The storage URL is not on it: any user on the machine can read a
    command line (ps), so it goes through the worker's environment, HPO_STORAGE."""
    return [sys.executable, "-m", "hpo", "worker", *studies, *worker_args]


class Workers:
    """The worker processes of one launch: started together, stopped together, reaped.

    Each runs in a session of its own, so Ctrl-C reaches the launcher only, which forwards it
    once, as SIGTERM; one still running :data:`STOP_TIMEOUT_S` later is killed. The kernel sends
    each worker SIGTERM when the launcher dies, however it dies: no worker outlives its launcher
    (one started alone, with ``hpo worker``, lives as long as it is let).
    """

    def __init__(self, studies: Sequence[str], storage_url: str, placements: Sequence[Placement],
                 worker_args: Sequence[str], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stop_requested_at: float | None = None
        for i, place in enumerate(placements):
            env = {**os.environ, **device.worker_environment(place.threads, place.gpu), "HPO_STORAGE": storage_url}
            try:
                with open(log_dir / f"worker-{i}.log", "ab") as logfile:  # the child keeps its own copy
                    self.procs.append(subprocess.Popen(
                        worker_command(studies, worker_args), env=env, stdout=logfile, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, start_new_session=True,
                        preexec_fn=functools.partial(_die_with_parent, os.getpid())))
            except OSError as exc:  # fork refused (too many processes, no memory), a log that cannot be opened
                self.stop()
                self.wait(STOP_TIMEOUT_S)
                raise HpoError(f"cannot start worker {i + 1} of {len(placements)}: {exc.strerror or exc}; "
                               f"the {len(self.procs)} started are stopped") from None

    @property
    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        """Ask every worker to fail its trial as retryable and exit (SIGTERM)."""
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        self._signal(signal.SIGTERM)

    def kill_stragglers(self) -> None:
        if self.stop_requested_at is not None and time.monotonic() - self.stop_requested_at > STOP_TIMEOUT_S:
            self._signal(signal.SIGKILL)

    def wait(self, timeout: float) -> None:
        """Reap every worker, killing those still running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _signal(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def exit_code(self, out: TextIO) -> int:
        """130 after a stop; 1 if any worker failed; else 0. A worker that refused its input or
        its database (exit code 2) is an error of the launch: its own line is raised."""
        if self.stop_requested_at is not None:
            return 130
        refused = [i for i, p in enumerate(self.procs) if p.returncode == 2]
        if refused:
            raise HpoError(self._error_line(refused[0]))
        bad = [p.returncode for p in self.procs if p.returncode != 0]
        if bad:
            _say(out, f"hpo: {len(bad)} of {len(self.procs)} workers exited with an error; see {self.log_dir}/")
            return 1
        return 0

    def _error_line(self, index: int) -> str:
        """The one-line error a worker ended with (``hpo: error: ...``), from its log."""
        log = self.log_dir / f"worker-{index}.log"
        try:
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        errors = [line.removeprefix("hpo: error: ") for line in lines if line.startswith("hpo: error: ")]
        return errors[-1] if errors else f"worker {index} refused to run; see {log}"


def _die_with_parent(launcher: int) -> None:
    """In a new worker, before it runs: SIGTERM when the launcher dies (Linux's PR_SET_PDEATHSIG),
    and at once if it died already, between the fork and this call."""
    with contextlib.suppress(OSError, AttributeError):  # no libc or no prctl: the worker just lives on
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher:
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def _say(out: TextIO, line: str) -> None:
    """Print a line of progress; a terminal or pipe that is gone stops nothing (the logs keep all)."""
    with contextlib.suppress(OSError, ValueError):  # BrokenPipeError, EIO from a closed terminal
        print(line, file=out, flush=True)


Job = tuple[optuna.Study, StudyDefinition]


def launch(
    studies: Sequence[Job],
    storage_url: str,
    placements: Sequence[Placement],
    worker_args: Sequence[str],
    log_dir: Path,
    *,
    out: TextIO = sys.stderr,
    interval: float = 2.0,
) -> int:
    """Start the workers on the studies, show progress until they all exit, return the exit code.

    Every worker takes every study, in order: one pool, so no core idles while one study's last
    trial trains. SIGINT, SIGTERM and SIGHUP (a closed terminal) stop the workers cleanly, and
    so does an error of the launcher's own: no worker is left running.
    """
    names = [definition.name for _, definition in studies]
    workers = Workers(names, storage_url, placements, worker_args, log_dir)
    _say(out, f"hpo: {len(workers.procs)} workers on {_studies(names)} ({describe(placements)}); "
              f"logs in {log_dir}/")

    def stop(_signum: int, _frame: object) -> None:
        if workers.stop_requested_at is None:
            _say(out, f"\nhpo: stopping {len(workers.procs)} workers...")
        workers.stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    progress = Progress(out, sum(definition.n_trials for _, definition in studies))
    try:
        while workers.running:
            progress.show(_statuses(studies))
            time.sleep(interval)
            workers.kill_stragglers()
    finally:
        if workers.running:  # the launcher's own error: take the workers down with it
            workers.stop()
            workers.wait(STOP_TIMEOUT_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # Every worker has exited: no trial of theirs may stay RUNNING.
    try:
        for study, definition in studies:
            retrying(functools.partial(queueing.recover, study, definition), what="recover trials of exited workers")
    except StorageUnusable:
        workers.exit_code(out)  # a worker's own account of the same cause comes first
        raise
    progress.show(_statuses(studies), final=True)
    return workers.exit_code(out)


def _studies(names: Sequence[str]) -> str:
    return f"study {names[0]}" if len(names) == 1 else f"{len(names)} studies ({', '.join(names)})"


def _statuses(studies: Sequence[Job]) -> list[StudyStatus]:
    return [retrying(functools.partial(study_status, s, d), what="read progress") for s, d in studies]


class Progress:
    """One line of progress: redrawn in place on a terminal, printed on change otherwise."""

    def __init__(self, out: TextIO, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.total, self.clock = out, total, clock
        self.started = clock()
        self.first_done: int | None = None  # trials finished before this launch say nothing of its speed
        self.last = ""
        self.tty = out.isatty()

    def show(self, statuses: Sequence[StudyStatus], final: bool = False) -> None:
        done = sum(_done(s) for s in statuses)
        if self.first_done is None:
            self.first_done = done
        counts = self._counts(statuses, done)
        line = counts + self._eta(done)
        if self.tty:
            with contextlib.suppress(OSError, ValueError):  # a closed terminal stops no training
                self.out.write("\r\033[K" + line + ("\n" if final else ""))
                self.out.flush()
        elif final or counts != self.last:
            _say(self.out, line)
        self.last = counts

    def _counts(self, statuses: Sequence[StudyStatus], done: int) -> str:
        running = sum(s.points["running"] for s in statuses)
        failed = sum(s.points["failed"] for s in statuses)
        epochs = ", ".join(s.running_progress() for s in statuses if s.running_epochs)
        head = f"{done}/{self.total} done, {running} running{f' (epochs {epochs})' if epochs else ''}, {failed} failed"
        if len(statuses) == 1:
            return f"{statuses[0].name}: {head}, best {statuses[0].metric} {_best(statuses[0])}"
        each = ", ".join(f"{s.name} {_done(s)}/{s.total_points} best {_best(s)}" for s in statuses)
        return f"{len(statuses)} studies: {head} ({each})"

    def _eta(self, done: int) -> str:
        elapsed = self.clock() - self.started
        fresh = done - (self.first_done or 0)
        remaining = self.total - done
        if remaining <= 0:
            return f", {_duration(elapsed)} elapsed"
        if fresh <= 0:
            return f", {_duration(elapsed)} elapsed, ETA -"
        return f", {_duration(elapsed)} elapsed, ETA {_duration(elapsed / fresh * remaining)}"


def _done(status: StudyStatus) -> int:
    return status.points["complete"] + status.points["pruned"] + status.points["failed"]


def _best(status: StudyStatus) -> str:
    return f"{status.best_value:.4f}" if status.best_value is not None else "-"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
