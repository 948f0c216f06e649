"""Workers on several hosts, one of which loses the network without dying.

Three simulated hosts (tests/netns.py: a network namespace, a host name and a PID namespace
each) run one ``hpo worker`` each on the exp3 grid. They reach the real PostgreSQL server only
over their own veth link, through a forwarder on its host side. A worker on another host cannot
be found dead by its PID, so only heartbeats tell the others that a trial is lost. Links are cut
by taking their host side down: packets vanish, TCP stalls, nothing is reset, as in a real
partition. Three moments are cut:

- in the middle of claiming a trial (forced, see the test: the cut lands while the worker's
  ``SELECT ... FOR UPDATE`` of a WAITING trial waits for a row lock the test holds, so the server
  grants the lock to a session whose client can no longer hear it);
- in the middle of a trial (RUNNING, at least one epoch reported), longer than the grace period;
- while a worker is idle, polling for work once every trial is claimed.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import optuna
import psycopg
import pytest
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

import netns
from conftest import ROOT, STUDIES, missing, ok, run_hpo, wait_for
from hpo.storage import records

ARTIFACTS = ROOT / "test-artifacts"
GRACE_PERIOD = float(os.environ["HPO_GRACE_PERIOD"])  # set by conftest for every worker


@pytest.fixture
def three_hosts() -> Iterator[list[netns.Host]]:
    problem = netns.unavailable()
    if problem is not None:
        missing(f"cannot simulate hosts in network namespaces here: {problem}")
    with netns.hosts(3) as made:
        yield made


def _via(url: str, host: netns.Host) -> str:
    """The storage URL as seen from ``host``: the server behind its link's forwarder."""
    return make_url(url).set(host=host.gateway).render_as_string(hide_password=False)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _host_of(trial: FrozenTrial) -> str:
    """The host name part of the worker that claimed ``trial`` ("host2/<pid ns>:<pid>")."""
    return str(trial.system_attrs.get(records.WORKER, "")).split("/", 1)[0]


def _grid_outcome(trials: list[FrozenTrial]) -> dict[str, Any]:
    complete = Counter(t.system_attrs["grid_id"] for t in trials if t.state == TrialState.COMPLETE)
    return {
        "trials_per_state": dict(Counter(t.state.name for t in trials)),
        "complete_points": len(complete),
        "duplicate_complete_points": sum(1 for n in complete.values() if n > 1),
        "running_left": sum(t.state == TrialState.RUNNING for t in trials),
        "retries": sum(records.RETRY_OF in t.system_attrs for t in trials),
    }


def _errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.match(r"\S+ (ERROR|CRITICAL) ", line) or "Traceback" in line]


@pytest.mark.postgres
@pytest.mark.chaos
@pytest.mark.partition
def test_grid_survives_hosts_cut_off_mid_claim_mid_trial_and_idle(
        three_hosts: list[netns.Host], postgres_url: str, data_path: str, tmp_path: Path) -> None:
    started = time.monotonic()
    ok(run_hpo("create", str(STUDIES / "exp3.toml"), "--subset", "200", storage=postgres_url))
    storage = optuna.storages.RDBStorage(postgres_url)
    study_id = storage.get_study_id_from_name("exp3")

    def trials() -> list[FrozenTrial]:
        return storage.get_all_trials(study_id)

    host = {h.name: h for h in three_hosts}
    logs = {h.name: tmp_path / f"{h.name}.log" for h in three_hosts}
    workers: dict[str, Any] = {}

    def start(name: str) -> None:
        argv = [sys.executable, "-m", "hpo", "--storage", _via(postgres_url, host[name]), "worker", "exp3",
                "--data", data_path, "--subset", "200", "--threads", "1", "--artifacts", str(tmp_path / "artifacts")]
        # PGAPPNAME names the worker's sessions in pg_stat_activity; it changes nothing else.
        workers[name] = host[name].popen(argv, logs[name], env={"PGAPPNAME": f"hpo-{name}"})

    admin = psycopg.connect(_libpq(postgres_url), autocommit=True)

    def sessions(name: str) -> list[tuple[str, str | None]]:
        return admin.execute("SELECT state, wait_event_type FROM pg_stat_activity WHERE application_name = %s",
                             (f"hpo-{name}",)).fetchall()

    outcome: dict[str, Any] = {}
    try:
        # 1. Mid-claim, host3. Claiming is a few milliseconds, too short to hit by timing. So the
        # test holds the row lock of every WAITING trial, host3's claim queues behind it in
        # SELECT ... FOR UPDATE, and the link is cut then. Releasing the lock afterwards makes the
        # server grant it to host3's transaction, which now holds the row of a WAITING trial for
        # a client that cannot hear: the half-open claim of a real partition.
        lock = psycopg.connect(_libpq(postgres_url))
        lock.execute("SELECT trial_id FROM trials WHERE state = 'WAITING' FOR UPDATE")
        start("host3")
        wait_for(lambda: any(wait == "Lock" for _, wait in sessions("host3")), 300,
              "host3's claim to wait for the row lock")
        cut = time.monotonic()
        host["host3"].cut()
        lock.rollback()
        lock.close()
        wait_for(lambda: any(state == "idle in transaction" for state, _ in sessions("host3")), 10,
              "host3's cut-off session to hold the lock it was granted")
        start("host1")
        start("host2")
        # Hosts 1 and 2 queue behind that row lock too. The server ends a session idle in a
        # transaction (hpo.storage.connections.limit_idle_transactions), so they go on without host3.
        wait_for(lambda: sessions("host1") and sessions("host2"), 300, "hosts 1 and 2 to connect")
        wait_for(lambda: any(t.state == TrialState.RUNNING and _host_of(t) != "host3" for t in trials()), 90,
              "hosts 1 and 2 to claim a trial while host3's half-open claim holds a row lock")
        outcome["others_claimed_after_s"] = round(time.monotonic() - cut, 1)
        time.sleep(max(0.0, cut + GRACE_PERIOD + 5 - time.monotonic()))
        outcome["claim_cut_s"] = round(time.monotonic() - cut, 1)
        host["host3"].restore()

        # 2. Mid-trial: a trial RUNNING with at least one epoch reported loses its host's link,
        # which stays down until the others have failed it (no heartbeat for the grace period)
        # and another host has claimed its retry. It has three or more epochs to go, so the cut
        # lands before its last epoch's report and before its results are written, whatever
        # the epochs it trains between this read and the cut (each epoch's report is a write
        # that waits for the link).
        def mid_trial(t: FrozenTrial) -> bool:
            return (t.state == TrialState.RUNNING and _host_of(t) in host
                    and 1 <= len(t.intermediate_values) <= int(records.trial_params(t)["epochs"]) - 3)

        victim = wait_for(lambda: next((t for t in trials() if mid_trial(t)), None),
                       300, "a trial in the middle of training")
        cut_off = host[_host_of(victim)]
        cut = time.monotonic()
        cut_off.cut()

        def recovered() -> tuple[FrozenTrial, FrozenTrial] | None:
            now = {t.number: t for t in trials()}
            retry = next((t for t in now.values() if t.system_attrs.get(records.RETRY_OF) == victim.number
                          and t.state != TrialState.WAITING), None)
            return (now[victim.number], retry) if retry is not None else None

        failed, _retry = wait_for(recovered, 300, f"trial {victim.number} to be failed and its retry claimed")
        outcome["trial_cut_s"] = round(time.monotonic() - cut, 1)
        cut_off.restore()

        # 3. Idle: once every trial is claimed, a worker with nothing to train polls for work
        # (its host holds no RUNNING trial); cut it for longer than the grace period.
        def idle() -> netns.Host | None:
            now = trials()
            if any(t.state == TrialState.WAITING for t in now):
                return None
            busy = {_host_of(t) for t in now if t.state == TrialState.RUNNING}
            if not busy:
                return None
            # Another host than the one cut mid-trial if one is idle, to cut a third worker.
            for name, worker in sorted(workers.items(), key=lambda item: item[0] == cut_off.name):
                # The cut-off worker may still be inside its lost trial: idle only once it said so.
                done_with_victim = (name != cut_off.name or re.search(
                    rf"trial {victim.number} (was recovered|was declared dead|failed)", logs[name].read_text()))
                if name not in busy and worker.poll() is None and done_with_victim:
                    return host[name]
            return None

        idler = wait_for(idle, 900, "a worker idle while others still train")
        cut = time.monotonic()
        idler.cut()
        time.sleep(GRACE_PERIOD + 5)
        idler.restore()
        outcome["idle_host"] = idler.name
        outcome["idle_cut_s"] = round(time.monotonic() - cut, 1)

        for worker in workers.values():
            worker.wait(timeout=900)
    finally:
        for h in three_hosts:
            h.restore()
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()  # unshare --kill-child takes the worker with it
                worker.wait(timeout=30)
        admin.close()

    final = optuna.storages.RDBStorage(postgres_url).get_all_trials(study_id)  # nothing cached
    by_number = {t.number: t for t in final}
    outcome.update(_grid_outcome(final))
    outcome.update(cut_off_host=cut_off.name, failed_trial=victim.number,
                   exit_codes={n: w.returncode for n, w in workers.items()},
                   wall_s=round(time.monotonic() - started, 1))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "partition-postgres.json").write_text(json.dumps(outcome, indent=2))
    print("partition outcome:", json.dumps(outcome))

    # Every point once, nothing lost, nothing left running.
    assert outcome["complete_points"] == 27
    assert outcome["duplicate_complete_points"] == 0
    assert outcome["running_left"] == 0

    # The cut-off trial failed for its missing heartbeats, and stays exactly as it was then.
    late = by_number[victim.number]
    assert failed.state == late.state == TrialState.FAIL
    assert "heartbeats" in late.user_attrs["error"]
    assert late.value is None
    assert "test_accuracy" not in late.user_attrs
    assert late.intermediate_values == failed.intermediate_values
    assert late.user_attrs == failed.user_attrs
    # Its retry ran on another host and completed.
    retries = [t for t in final if t.system_attrs.get(records.RETRY_OF) == victim.number]
    assert [t.state for t in retries] == [TrialState.COMPLETE]
    assert retries[0].system_attrs["grid_id"] == victim.system_attrs["grid_id"]
    assert retries[0].user_attrs["host"] != late.user_attrs["host"] == cut_off.name

    # Every worker, the cut-off ones included, ended calmly.
    texts = {name: path.read_text() for name, path in logs.items()}
    for name, worker in workers.items():
        assert worker.returncode == 0, (name, texts[name][-3000:])
        assert _errors(texts[name]) == [], (name, _errors(texts[name]))
    assert f"trial {victim.number} was recovered by another worker" in texts[cut_off.name], texts[cut_off.name][-3000:]
