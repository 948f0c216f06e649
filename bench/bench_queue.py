"""Benchmark (h): queueing a 10,000-point grid, before and after, on SQLite and PostgreSQL.

``hpo create`` of a grid study queues every point as a WAITING trial up front. Until issue 18
each trial stored a copy of the whole grid (GridSampler's ``search_space``) and was queued in a
transaction of its own; now a trial stores a few small attributes (its grid id, slot, seed) and
trials are queued a thousand per transaction. This times ``hpo create`` of one grid with the
``--baseline`` Python (an environment with the old hpo installed, say a git worktree of the
commit before) and with this one, alternated, on a fresh database each time, and measures the
storage each queued trial takes: the SQLite file (with its WAL) or the PostgreSQL database's
growth, divided by the trials.

    python bench/bench_queue.py --baseline ../baseline/.venv/bin/python --points 10000 --repeats 2
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from machine import describe_machine  # bench/ is on sys.path when run as a script

ADMIN = os.environ.get("HPO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def study_file(folder: Path, points: int) -> Path:
    """A grid of ``points`` points: learning rates x batch sizes, one epoch each."""
    side = math.isqrt(points)
    rates = ", ".join(f"{0.0001 * (i + 1):.4f}" for i in range(side))
    sizes = ", ".join(str(i + 1) for i in range(points // side))
    path = folder / "big.toml"
    # Up to 10,000 points the default trial limit holds, and the file is one both sides read.
    limit = f"trial_limit = {points}\n" if points > 10_000 else ""
    path.write_text(f'[study]\nname = "big"\n{limit}[sampler]\ntype = "grid"\n[space]\n'
                    f'architecture = "base"\naugmentation = "none"\nlearning_rate = [{rates}]\n'
                    f"batch_size = [{sizes}]\nepochs = [1]\n", encoding="utf-8")
    return path


def _sqlite_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if not p.name.endswith(".lock"))


def _postgres(sql: str, database: str = "postgres") -> str:
    url = ADMIN.rsplit("/", 1)[0] + "/" + database
    out = subprocess.run(["psql", url, "-Atc", sql], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def one(python: str, backend: str, study: Path, folder: Path) -> dict[str, Any]:
    """Create the study once on a fresh database: seconds, trials queued, bytes per trial."""
    if backend == "sqlite":
        db = folder / f"{uuid.uuid4().hex}.db"
        url, database = f"sqlite:///{db}", None
    else:
        database = f"hpo_bench_{uuid.uuid4().hex[:12]}"
        _postgres(f'CREATE DATABASE "{database}"')
        url = ADMIN.rsplit("/", 1)[0] + "/" + database
    try:
        # The empty schema first (a study that queues nothing), so that the measure is the queue.
        empty = folder / "empty.toml"
        empty.write_text('[study]\nname = "empty"\n[sampler]\ntype = "grid"\n[space]\narchitecture = "base"\n'
                         'augmentation = "none"\nlearning_rate = [0.001]\nbatch_size = [32]\nepochs = [1]\n')
        # cwd: the temporary folder, so that `python -m hpo` imports the hpo of ``python``'s
        # environment, not the one in the current folder.
        subprocess.run([python, "-m", "hpo", "--storage", url, "create", str(empty)], check=True,
                       capture_output=True, text=True, cwd=folder)
        before = _sqlite_bytes(db) if database is None else int(_postgres(f"SELECT pg_database_size('{database}')"))
        started = time.perf_counter()
        done = subprocess.run([python, "-m", "hpo", "--storage", url, "create", str(study)], capture_output=True,
                              text=True, cwd=folder)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{python}: hpo create failed: {done.stderr[-2000:]}")
        if database is None:
            subprocess.run(["python3", "-c", f"import sqlite3; sqlite3.connect('{db}').execute("
                                             "'PRAGMA wal_checkpoint(TRUNCATE)')"], check=True)
            after = _sqlite_bytes(db)
            trials = int(subprocess.run(["python3", "-c", f"import sqlite3; print(sqlite3.connect('{db}').execute("
                                                          "'SELECT count(*) FROM trials').fetchone()[0])"],
                                        capture_output=True, text=True, check=True).stdout)
        else:
            _postgres("CHECKPOINT")
            after = int(_postgres(f"SELECT pg_database_size('{database}')"))
            trials = int(_postgres("SELECT count(*) FROM trials", database))
        return {"seconds": seconds, "trials": trials - 1, "bytes_per_trial": (after - before) / (trials - 1)}
    finally:
        if database is not None:
            _postgres(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="Python of an environment with the old hpo installed.")
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2, help="Runs per side and backend, alternated.")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    describe_machine("start")
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        folder = Path(tmp)
        study = study_file(folder, args.points)
        for backend in args.backends:
            runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for r in range(args.repeats):
                order = [("before", args.baseline), ("after", sys.executable)]
                for side, python in order if r % 2 == 0 else order[::-1]:
                    result = one(python, backend, study, folder)
                    runs[side].append(result)
                    print(f"{backend} {side} run {r + 1}: {result['trials']} trials queued in "
                          f"{result['seconds']:.1f} s, {result['bytes_per_trial']:.0f} bytes per trial", flush=True)
            before, after = runs["before"], runs["after"]
            ratios = [b["seconds"] / a["seconds"] for b, a in zip(before, after, strict=True)]
            print(f"{backend}: create {statistics.median(r['seconds'] for r in before):.1f} s -> "
                  f"{statistics.median(r['seconds'] for r in after):.1f} s "
                  f"(paired ratio before/after, median {statistics.median(ratios):.1f}x); "
                  f"{statistics.median(r['bytes_per_trial'] for r in before):.0f} -> "
                  f"{statistics.median(r['bytes_per_trial'] for r in after):.0f} bytes per queued trial", flush=True)
    describe_machine("end")


if __name__ == "__main__":
    main()
