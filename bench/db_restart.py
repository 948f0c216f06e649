"""Restart PostgreSQL in the middle of a study: the workers must ride it out and lose nothing.

Not a test: it stops the machine's shared PostgreSQL server for a few seconds, which would break
any other test running at the same time. Run it alone:

    HPO_DATA=../shared/datasets/cifar10-jpeg.tar.gz .venv/bin/python bench/db_restart.py

It creates a throwaway database, runs a small grid with 2 workers, stops the server once the
first trials are complete, starts it again after --down seconds, and checks that every grid
point ends with exactly one COMPLETE trial and that every trial COMPLETE before the restart is
still there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import psycopg
from optuna.trial import TrialState

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
STUDY = """
[study]
name = "restart"
[sampler]
type = "grid"
[space]
architecture = "base"
augmentation = "none"
learning_rate = [0.01, 0.001, 0.0001]
batch_size = [64, 128]
epochs = [2, 3]
"""


def cluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True)


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="restart", storage=url).get_trials()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down", type=float, default=10.0, help="seconds the server stays down")
    parser.add_argument("--subset", type=int, default=400)
    args = parser.parse_args()

    name = f"hpo_restart_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    hpo = [sys.executable, "-m", "hpo", "--storage", url]
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "restart.toml"
        study.write_text(STUDY)
        subprocess.run([*hpo, "create", str(study)], check=True)
        workers = [subprocess.Popen([*hpo, "worker", "restart", "--subset", str(args.subset), "--threads", "1"],
                                    stdout=open(Path(tmp) / f"w{i}.log", "wb"),  # noqa: SIM115  (the worker's log, for its lifetime)
                                    stderr=subprocess.STDOUT)
                   for i in range(2)]
        while sum(t.state == TrialState.COMPLETE for t in trials(url)) < 2:
            time.sleep(1)
        before = {t.number: t.value for t in trials(url) if t.state == TrialState.COMPLETE}
        print(f"{len(before)} trials complete; stopping PostgreSQL for {args.down:.0f} s", flush=True)
        cluster("stop")
        time.sleep(args.down)
        cluster("start")
        print("PostgreSQL started again; waiting for the workers", flush=True)
        codes = [w.wait(timeout=1800) for w in workers]
        logs = "".join((Path(tmp) / f"w{i}.log").read_text() for i in range(2))

    final = trials(url)
    complete = Counter(t.system_attrs["grid_id"] for t in final if t.state == TrialState.COMPLETE)
    kept = all(any(t.number == n and t.value == v for t in final) for n, v in before.items())
    print(f"worker exit codes: {codes}")
    print(f"trials per state: {dict(Counter(t.state.name for t in final))}")
    print(f"grid points complete: {len(complete)} of 12; duplicates: {sum(n > 1 for n in complete.values())}")
    print(f"trials complete before the restart still stored unchanged: {kept}")
    print(f"retries of the connection logged by the workers: {logs.count('database unavailable')}")
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    ok = codes == [0, 0] and len(complete) == 12 and max(complete.values()) == 1 and kept
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
