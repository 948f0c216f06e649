"""hpo through a real PgBouncer in transaction-pooling mode: every guarantee of "How trials run"
(exactly once, concurrent creates, retries, the queueing lock) holds as it does directly.

The tests of those guarantees are the ones that run directly against PostgreSQL, imported here
and given a storage that is a fresh database reached through PgBouncer, which lends only
:data:`POOL` server connections to all of a test's processes at once.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import pgbouncer
from conftest import fresh_postgres_database, missing, ok, study_body, write_study
from hpo.storage import records
from test_connections import ConnectionCounter
# The guarantees, as tested directly against the server (collected here a second time, through PgBouncer).
from test_exactly_once import (  # noqa: F401  (collected by pytest from this module, with its storage)
    test_a_retry_lost_to_a_crash_is_queued_by_the_next_worker,
    test_concurrent_create_commands_queue_every_point_once,
    test_concurrent_creates_queue_every_grid_point_once,
    test_processes_recovering_the_same_dead_trial_queue_one_retry,
    test_three_launchers_of_one_study_train_every_point_once,
)
from test_lock import test_a_holder_that_dies_lets_go, test_one_holder_at_a_time  # noqa: F401  (as above)
from test_recovery import test_chaos_kill_a_worker_mid_trial_on_postgres  # noqa: F401  (as above)

POOL = 3  # server connections PgBouncer lends, for every client together


@pytest.fixture(scope="module")
def bouncer(postgres_admin: str) -> Iterator[pgbouncer.PgBouncer]:
    problem = pgbouncer.unavailable()
    if problem is not None:
        missing(problem)
    with pgbouncer.running(pool_size=POOL) as running:
        yield running


@pytest.fixture
def storage_url(bouncer: pgbouncer.PgBouncer, postgres_admin: str) -> Iterator[str]:
    """A fresh database on the server, reached through PgBouncer (replaces conftest's, for this module)."""
    for url in fresh_postgres_database(postgres_admin):
        yield bouncer.url_for(url)


@pytest.fixture
def postgres_url(storage_url: str) -> str:
    return storage_url


def test_two_launches_through_pgbouncer_train_every_point_once_on_three_server_connections(
        storage_url: str, bouncer: pgbouncer.PgBouncer, data_path: str, tmp_path: Path) -> None:
    """What failed before hpo held nothing per session: two launches of one grid at once, two
    workers each, through transaction pooling. Every point completes once, no trial fails, no
    psycopg prepared-statement error appears, and the server never sees more than PgBouncer's
    pool for the four workers and two launchers."""
    study = write_study(tmp_path, "pooled", study_body(learning_rate=[0.01, 0.001, 0.0001], batch_size=[32, 64]))
    database = storage_url.rsplit("/", 1)[1]
    with ConnectionCounter(database) as counter:
        launches = [subprocess.Popen(
            [sys.executable, "-m", "hpo", "--storage", storage_url, "launch", str(study), "-n", "2", "--threads", "1",
             "--data", data_path, "--subset", "100", "--logs", str(tmp_path / f"logs{i}")],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        results = [launch.communicate(timeout=900) for launch in launches]
    for launch, (_, err) in zip(launches, results, strict=True):
        assert launch.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="pooled", storage=storage_url).get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 6}
    assert sorted(t.system_attrs[records.SLOT] for t in trials) == list(range(6))
    logs = "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in tmp_path.glob("logs*/**/*.log"))
    logs += "\n".join(err for _, err in results)
    for symptom in ("prepared statement", "StorageInternalError", "Multiple rows were found"):
        assert symptom not in logs
    assert 0 < counter.peak <= POOL, counter.busiest


def test_hpo_sends_nothing_transaction_pooling_refuses(storage_url: str, bouncer: pgbouncer.PgBouncer) -> None:
    """PgBouncer refuses startup parameters it does not know (hpo used to send ``options``), and
    its log names any; hpo's storage opens and works through it with none configured as ignored."""
    ok(subprocess.run([sys.executable, "-c", "from hpo.storage.open import open_storage; import sys; "
                       "s = open_storage(sys.argv[1]); print(s.get_all_studies())", storage_url],
                      capture_output=True, text=True, timeout=120))
    assert "unsupported startup parameter" not in bouncer.log.read_text(encoding="utf-8", errors="replace")
