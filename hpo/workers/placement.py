"""Where a launch's workers run: how many, on which GPU, with how many CPU threads each.

Measured on 2 cores (BENCHMARKS.md, c): two single-threaded workers give 1.24 times the trials
per hour of one worker with both threads; these small models do not use two threads well.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hpo.errors import HpoError


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
