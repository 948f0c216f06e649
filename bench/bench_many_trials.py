"""Benchmark (r): hpo's queue in a study of 1k, 10k and 100k trials (optuna#3053).

optuna#3053 reports completing a trial slowing from 0.5 s to 5 s by about 80k trials. This
measures what hpo's worker loop pays per trial as a study grows, with hpo's real queue code on
a fresh database per size (PostgreSQL, and SQLite):

- ``create``: ``hpo.study.create.create_study`` queueing every trial (``queueing.add_missing``,
  ``records.add_waiting_trials``, 1,000 per transaction);
- ``claim``: ``queueing.claim`` (WAITING -> RUNNING) and ``finish``: ``records.finish_trial``
  (RUNNING -> COMPLETE with a value and a few attributes), each the median of ``--samples``,
  first in the fresh study (every trial WAITING), then in a late one: all but the last 1% marked
  COMPLETE (an UPDATE in SQL, with a value each), read by a freshly opened storage;
- ``recover`` (``liveness.recover``, what every worker runs before each claim) and ``sync``
  (``queueing.sync``, what an idle worker runs at every poll, and every retry), in both phases.

No Keras is imported and nothing trains.

    python bench/bench_many_trials.py [--sizes 1000 10000 100000] [--backends postgresql sqlite] [--samples 10]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from optuna.trial import TrialState

from machine import describe_code, describe_machine  # bench/ is on sys.path when run as a script

from hpo.storage import records
from hpo.storage.open import open_storage
from hpo.study import queueing
from hpo.study.create import create_study, load_study
from hpo.study.files import load_definition
from hpo.study.plan import trial_sampler
from hpo.workers import liveness

ADMIN = os.environ.get("HPO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

STUDY = """[study]
name = "many"
trials = {trials}
trial_limit = {trials}
[sampler]
type = "random"
seed = 0
[space]
architecture = "base"
augmentation = "none"
learning_rate = {{ low = 1e-4, high = 1e-2, log = true }}
batch_size = [32, 64]
epochs = 1
"""


def _psql(sql: str) -> None:
    subprocess.run(["psql", ADMIN, "-Atqc", sql], check=True, capture_output=True, text=True)


@contextmanager
def fresh_database(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / uuid.uuid4().hex}.db"
        return
    name = f"hpo_bench_{uuid.uuid4().hex[:12]}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Failed(Exception):
    """An operation of hpo's that raised: after how long, and why (its first line)."""

    def __init__(self, seconds: float, exc: BaseException) -> None:
        cause = exc.__cause__ or exc
        super().__init__(f"fails after {seconds:.0f} s: {type(cause).__name__}: {str(cause).splitlines()[0][:90]}")
        self.seconds = seconds


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # a failure is a result here
        raise Failed(time.perf_counter() - started, exc) from exc
    return time.perf_counter() - started


def per_trial(url: str, samples: int) -> dict[str, Any]:
    """Medians over ``samples`` claims and finishes, with a recover and a sync, in a storage
    opened afresh (no cache carried over from earlier phases); a failed operation's message
    in place of its time."""
    study, definition = load_study(open_storage(url), "many")
    storage, sampler = records.storage_of(study), trial_sampler(definition)
    claims: list[float] = []
    finishes: list[float] = []
    result: dict[str, Any] = {}
    claimed: list[Any] = []
    try:
        for _ in range(samples):
            claims.append(timed(lambda: claimed.append(queueing.claim(study, sampler, {records.BEAT: 0}))))
            finish = functools.partial(records.finish_trial, storage, records.trial_id(claimed[-1]),
                                       TrialState.COMPLETE, value=0.5, user_attrs={"val_accuracy": 0.5})
            finishes.append(timed(finish))
        result.update(claim=statistics.median(claims), claim_first=claims[0], finish=statistics.median(finishes))
    except Failed as exc:
        result.update(claim=str(exc), claim_first=str(exc), finish="-")
    for name, fn in (("recover", lambda: liveness.recover(study, definition, liveness.Watch())),
                     ("sync", lambda: queueing.sync(study, definition))):
        try:
            result[name] = timed(fn)
        except Failed as exc:
            result[name] = str(exc)
    return result


def complete_most(url: str, keep_waiting: int) -> None:
    """All WAITING trials but the last ``keep_waiting`` COMPLETE, with a value each, in SQL."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        (study_id,) = conn.execute(sqlalchemy.text("SELECT study_id FROM studies WHERE study_name = 'many'")).one()
        (top,) = conn.execute(sqlalchemy.text("SELECT max(number) FROM trials WHERE study_id = :s"),
                              {"s": study_id}).one()
        where = "study_id = :s AND state = 'WAITING' AND number <= :n"
        params = {"s": study_id, "n": top - keep_waiting}
        conn.execute(sqlalchemy.text(f"INSERT INTO trial_values (trial_id, objective, value, value_type) "
                                     f"SELECT trial_id, 0, 0.25, 'FINITE' FROM trials WHERE {where}"), params)
        conn.execute(sqlalchemy.text(f"UPDATE trials SET state = 'COMPLETE', datetime_start = CURRENT_TIMESTAMP, "
                                     f"datetime_complete = CURRENT_TIMESTAMP WHERE {where}"), params)
    engine.dispose()


def one(backend: str, size: int, samples: int, folder: Path) -> dict[str, Any]:
    (folder / "many.toml").write_text(STUDY.format(trials=size), encoding="utf-8")
    definition = load_definition(folder / "many.toml")
    with fresh_database(backend, folder) as url:
        storage = open_storage(url)  # the tables made first: the measure is the queue
        create = timed(lambda: create_study(storage, definition))
        fresh = per_trial(url, samples)
        complete_most(url, max(samples, size // 100))
        # Completed over hours, the trials would have been counted by the server's autovacuum
        # meanwhile; completed by one UPDATE, they are counted now.
        records.refresh_statistics(open_storage(url))
        late = per_trial(url, samples)
    return {"create": create, "fresh": fresh, "late": late}


def _ms(seconds: float | str) -> str:
    if isinstance(seconds, str):
        return seconds
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10_000, 100_000])
    parser.add_argument("--backends", nargs="+", default=["postgresql", "sqlite"])
    parser.add_argument("--samples", type=int, default=10, help="Claims and finishes timed per phase.")
    args = parser.parse_args()
    describe_machine("start")
    describe_code()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-many-") as tmp:
        for backend in args.backends:
            for size in args.sizes:
                result = one(backend, size, args.samples, Path(tmp))
                rows.append((backend, size, result))
                print(f"{backend} {size} trials: {result}", file=sys.stderr, flush=True)
    print("\n| backend | trials | create (queue all) | phase | claim (median) | first claim | finish (median) "
          "| recover | sync |")
    print("|---|---|---|---|---|---|---|---|---|")
    for backend, size, result in rows:
        for phase in ("fresh", "late"):
            p = result[phase]
            label = "all WAITING" if phase == "fresh" else "99% COMPLETE"
            print(f"| {backend} | {size:,} | {_ms(result['create'])} | {label} | {_ms(p['claim'])} | "
                  f"{_ms(p['claim_first'])} | {_ms(p['finish'])} | {_ms(p['recover'])} | {_ms(p['sync'])} |")
    describe_machine("end")


if __name__ == "__main__":
    main()
