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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO
from collections.abc import Sequence

import optuna

from hpo.workers import device

from hpo.workers import liveness
from hpo.study.definition import StudyDefinition
from hpo.results.status import StudyStatus, study_status
from hpo.errors import HpoError
from hpo import paths
from hpo.storage.url import StorageURL
from hpo.workers.liveness import Settings
from hpo.workers.placement import Placement, check_workers, default_workers, describe, plan
from hpo.workers.progress import Progress, say
from hpo.storage.open import StorageUnusable, retrying

STOP_TIMEOUT_S = 15.0


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

    def __init__(self, studies: Sequence[str], url: StorageURL, placements: Sequence[Placement],
                 worker_args: Sequence[str], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stop_requested_at: float | None = None
        self.stopped_by: int | None = None  # the signal that stopped the launch, if one did
        for i, place in enumerate(placements):
            env = {**os.environ, **device.worker_environment(place.threads, place.gpu), "HPO_STORAGE": url.secret}
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
            say(out, f"hpo: {len(bad)} of {len(self.procs)} workers exited with an error; see {self.log_dir}/")
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


LoadedStudy = tuple[optuna.Study, StudyDefinition]


class Display(Protocol):
    """What shows a launch's progress: :class:`hpo.workers.progress.Progress`, a line on stderr,
    or a notebook's progress bar."""

    def show(self, statuses: Sequence[StudyStatus], final: bool = False) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """How a launch ended: its exit code (0 done, 1 a worker failed, 130 stopped) and the signal
    that stopped it, if one did (the caller's to act on: a library caller re-raises it)."""

    code: int
    stopped_by: int | None = None


def launch(
    studies: Sequence[LoadedStudy],
    url: StorageURL,
    placements: Sequence[Placement],
    worker_args: Sequence[str],
    log_dir: Path,
    *,
    out: TextIO = sys.stderr,
    interval: float = 2.0,
    display: Display | None = None,
) -> Outcome:
    """Start the workers on the studies, show progress until they all exit, return the exit code.

    Every worker takes every study, in order: one pool, so no core idles while one study's last
    trial trains. SIGINT, SIGTERM and SIGHUP (a closed terminal) stop the workers cleanly, and
    so does an error of the launcher's own: no worker is left running. (Signals are caught only
    where Python lets them be, in the main thread; elsewhere the caller stops the launch.)
    """
    names = [definition.name for _, definition in studies]
    workers = Workers(names, url, placements, worker_args, log_dir)
    say(out, f"hpo: {len(workers.procs)} workers on {_studies(names)} ({describe(placements)}); "
              f"logs in {log_dir}/")

    def stop(signum: int, _frame: object) -> None:
        if workers.stop_requested_at is None:
            say(out, f"\nhpo: stopping {len(workers.procs)} workers...")
            workers.stopped_by = signum
        workers.stop()

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)} if main else {}
    progress = display or Progress(out, sum(definition.n_trials for _, definition in studies))
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
            retrying(functools.partial(liveness.recover, study, definition), what="recover trials of exited workers")
    except StorageUnusable:
        workers.exit_code(out)  # a worker's own account of the same cause comes first
        raise
    statuses = _statuses(studies)
    progress.show(statuses, final=True)
    code = workers.exit_code(out)
    unfinished = [s for s in statuses if s.trials["waiting"] or s.trials["running"]]
    if code == 0 and unfinished:
        # Every worker said it was done, yet trials are left: one ended without finishing its
        # trial (os._exit in a user's code, say), which was failed and queued again above.
        say(out, f"hpo: study {unfinished[0].name} is not done ({unfinished[0].trials['waiting']} trials waiting, "
                 f"{unfinished[0].trials['running']} running) though every worker has exited; see {log_dir}/")
        code = 1
    return Outcome(code, workers.stopped_by)


def _studies(names: Sequence[str]) -> str:
    return f"study {names[0]}" if len(names) == 1 else f"{len(names)} studies ({', '.join(names)})"


def _statuses(studies: Sequence[LoadedStudy]) -> list[StudyStatus]:
    return [retrying(functools.partial(study_status, s, d), what="read progress") for s, d in studies]


class Pool:
    """A pool of worker processes on this machine for some studies: every option checked when it
    is made, before anything is written; then run. (The launching command has loaded each study's
    data, so the workers find it decoded in the cache.)"""

    def __init__(self, url: StorageURL, names: Sequence[str], *, workers: int | None, gpus: str | None,
                 data: str | None, subset: int | None, threads: int | None, checkpoint_every: int = 1,
                 artifacts: str | None, log_dir: str) -> None:
        self.url = url
        Settings.from_environment()
        self.logs = paths.folder(Path(log_dir) / log_folder_name(names), "--logs", make=False)
        paths.artifact_dir(url, artifacts, make=False)
        gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else []
        self.placements = plan(check_workers(workers) if workers else default_workers(gpu_ids), gpus=gpu_ids,
                               threads=threads)
        self.args: list[str] = []
        for flag, value in (("--data", data), ("--subset", subset), ("--artifacts", artifacts),
                            ("--checkpoint-every", checkpoint_every)):
            if value is not None:
                self.args += [flag, str(value)]

    def run(self, studies: Sequence[LoadedStudy], display: Display | None = None) -> Outcome:
        return launch(studies, self.url, self.placements, self.args, self.logs, display=display)


def log_folder_name(names: Sequence[str]) -> str:
    """A launch's log folder: its study's name, or its studies' joined (short enough for any file system)."""
    joined = "+".join(names)
    return joined if len(joined) <= 100 else f"{names[0]}+{len(names) - 1}-more"
