"""How many PostgreSQL connections hpo holds, counted by the server itself (pg_stat_activity).

A worker holds no connection while it trains and at most one while it claims, beats or records;
the launcher holds none while it watches. So a server's ``max_connections`` bounds the number of
workers, and no more: the README's "Scaling out" sizes it from this.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import psycopg
import pytest
import sqlalchemy
from optuna.trial import TrialState

from conftest import POSTGRES_ADMIN, ok, study_body, write_study

pytestmark = pytest.mark.usefixtures("postgres_admin")


class ConnectionCounter:
    """Samples, in a thread, how many sessions the server has open on one database (its own
    sampling connection goes to another database and is not counted)."""

    def __init__(self, database: str, interval: float = 0.02) -> None:
        self.database, self.interval = database, interval
        self.samples: list[int] = []
        self.busiest: list[str] = []  # the last statement of each session, at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            while not self._stop.is_set():
                # A session that is idle and has run nothing is one whose client has closed it,
                # its server process not yet gone (or one just opened): not a connection held.
                queries = [f"{row[0]}: {row[1]}" for row in conn.execute(
                    "SELECT state, query FROM pg_stat_activity WHERE datname = %s "
                    "AND NOT (state = 'idle' AND query = '')", (self.database,))]
                self.samples.append(len(queries))
                if len(queries) > len(self.busiest):
                    self.busiest = queries
                time.sleep(self.interval)

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


def _database(url: str) -> str:
    return str(sqlalchemy.engine.make_url(url).database)


def test_a_launch_of_four_workers_holds_at_most_one_connection_per_worker(postgres_url: str, data_path: str,
                                                                          tmp_path: Path) -> None:
    """The server never sees more than 4 + 1 sessions for a launch of 4 workers: one per worker
    at most (while it claims or records), and the launcher's while it reads the study's status."""
    study = write_study(tmp_path, "conns", study_body(learning_rate=[0.01, 0.001, 0.0001, 0.003],
                                                      batch_size=[32, 64], epochs=[2]))
    command = [sys.executable, "-m", "hpo", "--storage", postgres_url, "launch", str(study), "-n", "4",
               "--threads", "1", "--subset", "100", "--data", data_path]
    with ConnectionCounter(_database(postgres_url)) as counter:
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    ok(result)
    assert "8/8 done" in result.stderr, result.stderr[-2000:]
    assert len(counter.samples) > 100, "the server was sampled too rarely to count"
    assert counter.peak <= 4 + 1, f"peak {counter.peak} sessions: {counter.busiest}"


def test_a_worker_holds_no_connection_while_it_trains(postgres_url: str, data_path: str, tmp_path: Path) -> None:
    """While one worker trains a long epoch, the server has (almost always) no session for the
    study: a beat or a recorded epoch opens one for a moment and closes it."""
    study = write_study(tmp_path, "idle", study_body(learning_rate=[0.01], batch_size=[8], epochs=[3]))
    ok(subprocess.run([sys.executable, "-m", "hpo", "--storage", postgres_url, "create", str(study),
                       "--subset", "400", "--data", data_path], capture_output=True, text=True, cwd=tmp_path))
    worker = subprocess.Popen([sys.executable, "-m", "hpo", "--storage", postgres_url, "worker", "idle",
                               "--threads", "1", "--data", data_path], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with ConnectionCounter(_database(postgres_url), interval=0.05) as counter:
        output, _ = worker.communicate(timeout=900)
    assert worker.returncode == 0, output[-2000:]
    assert counter.peak <= 1, f"peak {counter.peak} sessions for one worker: {counter.busiest}"
    idle = counter.samples.count(0) / len(counter.samples)
    assert idle > 0.8, f"the worker held a session in {1 - idle:.0%} of {len(counter.samples)} samples"


@pytest.fixture
def limited_url(postgres_url: str) -> Iterator[str]:
    """The study database as reached by a role of its own that the server lets hold at most
    :data:`ROLE_LIMIT` connections at once (``CONNECTION LIMIT``: refused past it with SQLSTATE
    53300, as a full server refuses): a small server, without changing the real one's settings."""
    role = f"hpo_limited_{uuid.uuid4().hex[:8]}"
    database = _database(postgres_url)
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT {ROLE_LIMIT}')
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
    try:
        yield sqlalchemy.engine.make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


ROLE_LIMIT = 3  # opening a new database's tables nests three (the schema lock, Optuna's and alembic's)


def _claim_and_finish(url: str, name: str, barrier: Any, out: Any) -> None:
    """A worker without training: claim the study's trials one by one and complete each."""
    from hpo.storage import records
    from hpo.storage.open import open_storage
    from hpo.study import queueing
    from hpo.study.create import load_study
    from hpo.study.plan import trial_sampler

    study, definition = load_study(open_storage(url), name)
    barrier.wait(timeout=120)
    done = []
    while (trial := queueing.claim(study, trial_sampler(definition))) is not None:
        records.finish_trial(records.storage_of(study), records.trial_id(trial), TrialState.COMPLETE, value=0.5)
        done.append(trial.number)
    out.put(done)


def test_more_workers_than_the_server_admits_take_turns_and_each_trial_runs_once(
        limited_url: str, tmp_path: Path) -> None:
    """Six processes claim and complete the trials of one study through a role the server admits
    only three times at once: the refused connections wait for a slot, nobody fails, and every
    trial is claimed by exactly one of them."""
    from hpo.storage.open import open_storage
    from hpo.study.create import create_study
    from hpo.study.files import load_definition

    grid = study_body(learning_rate=[0.1 * (i + 1) for i in range(6)], batch_size=[8, 16, 32, 64, 128])
    create_study(open_storage(limited_url), load_definition(write_study(tmp_path, "crowd", grid)))
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_claim_and_finish, args=(limited_url, "crowd", barrier, out)) for _ in range(6)]
    for p in procs:
        p.start()
    claimed = [number for _ in procs for number in out.get(timeout=300)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(claimed) == list(range(30))
    trials = optuna.load_study(study_name="crowd", storage=limited_url).get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 30}


class CheckedOut:
    """Counts, from inside the process, the connections an engine has open: opened (checked
    out) and not yet closed (checked in). The server lists a closed session until its server
    process has exited, a moment later, so its own count cannot tell one at a time from two."""

    def __init__(self, engine: sqlalchemy.engine.Engine) -> None:
        self.held = self.peak = 0
        self._lock = threading.Lock()
        sqlalchemy.event.listen(engine, "checkout", self._opened)
        sqlalchemy.event.listen(engine, "checkin", self._closed)

    def _opened(self, *_: object) -> None:
        with self._lock:
            self.held += 1
            self.peak = max(self.peak, self.held)

    def _closed(self, *_: object) -> None:
        with self._lock:
            self.held -= 1


def test_the_threads_of_a_process_take_turns_for_one_connection(postgres_url: str) -> None:
    """Four threads of one process reading the storage at once (a worker's heartbeat beside its
    recording, say) never hold more than one connection between them. Counted by the process
    itself, as connections opened and not yet closed: the server lists a closed session until
    its server process has exited, a moment later."""
    from hpo.storage.open import open_storage

    storage = open_storage(postgres_url)
    errors: list[BaseException] = []
    checked_out = CheckedOut(storage.engine)

    def hammer() -> None:
        try:
            for _ in range(30):
                storage.get_all_studies()
        except BaseException as exc:  # noqa: BLE001  (reported by the test below)
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert (checked_out.peak, checked_out.held) == (1, 0)


def test_the_writes_under_the_queue_lock_go_through_the_lock_s_own_connection(postgres_url: str) -> None:
    """Creating a study (the lock, then its 27 trials queued under it) and queueing a retry hold
    one connection at a time: a holder that asked for a second while holding the first could,
    on a full server, wait for a slot that other holders would never give back."""
    from hpo.storage.open import open_storage
    from hpo.study import queueing
    from hpo.study.create import create_study
    from hpo.study.files import load_definition
    from hpo.study.plan import trial_sampler
    from conftest import STUDIES

    storage = open_storage(postgres_url)
    checked_out = CheckedOut(storage.engine)
    definition = load_definition(STUDIES / "exp3.toml")
    study, created = create_study(storage, definition)
    assert created and len(study.get_trials(deepcopy=False)) == 27
    trial = queueing.claim(study, trial_sampler(definition))
    assert trial is not None and queueing.fail(study, trial._trial_id, "lost")
    assert queueing.sync(study, definition) == 1  # its retry, queued under the lock
    assert (checked_out.peak, checked_out.held) == (1, 0)


def test_a_create_that_fails_under_the_queue_lock_leaves_nothing_queued(postgres_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The writes under the lock are one transaction: a create stopped half-way through queueing
    (here by a failing write of the second batch) leaves no trial behind, and the next create
    queues the whole grid once."""
    from hpo.storage import records
    from hpo.storage.open import open_storage
    from hpo.study import queueing
    from hpo.study.create import create_study
    from hpo.study.files import load_definition
    from conftest import STUDIES

    definition = load_definition(STUDIES / "exp3.toml")
    add, batches = records.add_waiting_trials, []

    def second_batch_fails(*args: Any) -> None:
        batches.append(1)
        if len(batches) == 2:
            raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
        add(*args)

    monkeypatch.setattr(queueing, "QUEUE_BATCH", 10)
    monkeypatch.setattr(records, "add_waiting_trials", second_batch_fails)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        create_study(open_storage(postgres_url), definition)
    assert optuna.get_all_study_names(open_storage(postgres_url)) == []  # not even the study
    monkeypatch.setattr(records, "add_waiting_trials", add)
    study, _ = create_study(open_storage(postgres_url), definition)
    assert sorted(t.system_attrs[records.SLOT] for t in study.get_trials(deepcopy=False)) == list(range(27))
