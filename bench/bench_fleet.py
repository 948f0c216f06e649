"""Benchmark (q): N hpo workers on one PostgreSQL, directly and through PgBouncer. A LOAD GENERATOR.

Nothing trains: each trial sleeps for a drawn time (``--sleep``, uniform, 1-3 s) in two "epochs"
instead. Everything else is hpo's real worker: each worker is a process forked from this one (which
has imported hpo, Optuna and SQLAlchemy, so the pages are shared; no Keras or TensorFlow is
imported, and every worker checks it) that runs ``hpo.workers.loop.run_worker`` on a ``Job`` whose
objective is :class:`SleepingObjective`, a small implementation of the protocol in
``hpo.training.events``. So the fleet runs hpo's real claim (``queueing.claim``, with its
``recover`` before it), heartbeats (``liveness.Heartbeat``), epoch reports, pruner checks and
records (``records.finish_trial``), against a real study created by ``hpo.study.create`` from a
study file (random sampler, ``--per-worker`` trials per worker), with ``HPO_HEARTBEAT_INTERVAL``
and ``HPO_GRACE_PERIOD`` set by ``--heartbeat``.

The database is a private PostgreSQL cluster (initdb in a temporary folder, ``max_connections``
100, its own port) and, for the second path, a PgBouncer in front of it (``pool_mode =
transaction``, ``default_pool_size`` 20, ``max_client_conn`` 1000); both are stopped at the end.
Each run gets a fresh database. Part-way (when 30% of the trials are complete, or a third of
``--timeout`` has passed) ``--kill`` of the workers are SIGKILLed; a run still going at
``--timeout`` is stopped (SIGTERM, then SIGKILL). The workers run at nice 5, below the script.
At the end the database must show every slot COMPLETE at most once (exactly once in a run that
finished), and the killed workers' trials FAIL with a retry.

Per N and path it prints the server connections held (sampled from pg_stat_activity, the
sampler's own left out), claims and heartbeat writes per second, the claim's p50 and p99 (the
whole ``retrying(queueing.claim)`` call of the loop, timed in every worker that lived to the
end), the server's CPU (every process of the cluster, from /proc, as % of one core), the slots
trained twice (a sleep finished more than once), and the workers' memory.

    python bench/bench_fleet.py [--workers 50 100 200 500] [--paths direct pgbouncer] [--sleep 1 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import signal
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from typing import Any

import optuna
import psycopg
import sqlalchemy  # noqa: F401  (imported before forking, so the workers share its pages)

import private_pg  # bench/ is on sys.path when run as a script
from machine import describe_code, describe_machine

from hpo.storage import records
from hpo.storage.open import open_storage
from hpo.study.create import create_study, load_study
from hpo.study.definition import StudyDefinition
from hpo.study.files import load_definition
from hpo.study.space import Range, Spec, is_integer_range, resolve
from hpo.training.events import STOP, Begun, EpochEnd, Event, Finished, Run, TrainResult
from hpo.workers import loop
from hpo.workers.loop import Job, run_worker

STUDY = """[study]
name = "fleet"
description = "bench/bench_fleet.py: a load generator, trials sleep instead of training"
trials = {trials}
trial_limit = {trials}
max_retries = 2
[sampler]
type = "random"
seed = 0
[space]
architecture = "base"
augmentation = "none"
learning_rate = {{ low = 1e-4, high = 1e-2, log = true }}
batch_size = [32, 64, 128]
epochs = 2
"""


def _suggest(trial: optuna.Trial, definition: StudyDefinition) -> dict[str, Any]:
    """The trial's parameters, drawn as hpo.training.objective.suggest draws them (that module
    imports Keras)."""
    def draw(optuna_name: str, name: str, spec: Spec) -> Any:
        if optuna_name in definition.fixed:
            return definition.fixed[optuna_name]
        if not isinstance(spec, Range):
            return trial.suggest_categorical(optuna_name, list(spec))
        if is_integer_range(name, spec):
            return trial.suggest_int(optuna_name, int(spec.low), int(spec.high), log=spec.log)
        return trial.suggest_float(optuna_name, spec.low, spec.high, log=spec.log)
    return dict(resolve(definition.space, definition.conditional, draw, definition.has_builder))


class SleepingObjective:
    """An objective (hpo.training.events.Objective) that sleeps instead of training: it draws the
    trial's parameters, hands back a Begun, two EpochEnds and a Finished, as a real one does, and
    writes a line to ``ledger`` when a sleep has run to its end ("ran") and when the loop has
    recorded it ("recorded")."""

    def __init__(self, definition: StudyDefinition, low: float, high: float, ledger: Path) -> None:
        self.definition, self.low, self.high, self.ledger = definition, low, high, ledger
        self.rng = random.Random(os.getpid())

    def __call__(self, run: Run) -> Iterator[Event]:
        for t in run.trials:
            _suggest(t, self.definition)
        slot = records.frozen(run.trial).system_attrs.get(records.SLOT)
        yield Begun({t.number: {"seed": self.rng.randrange(1 << 30), "load_generator": "sleep"} for t in run.trials})
        seconds = self.rng.uniform(self.low, self.high)
        value = self.rng.random()
        for epoch in (1, 2):
            _sleep(seconds / 2)
            yield EpochEnd(epoch, value * epoch / 2)
        self._write(f"ran {slot} {run.trial.number} {os.getpid()}")
        result = TrainResult({}, value, 1 - value, value, 1 - value, 2, seconds, 0.0, 0.0, 0, False, False,
                             model=None, confusion=None)  # type: ignore[arg-type]  # no model: nothing trained
        yield Finished(run.trial, value, {"val_accuracy": value, "slept_seconds": round(seconds, 3)}, result)
        self._write(f"recorded {slot} {run.trial.number} {os.getpid()}")  # the loop asks for more once recorded

    def _write(self, line: str) -> None:
        fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def _sleep(seconds: float) -> None:
    """Sleep in steps, stopping at a step as training stops at a batch boundary."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        STOP.check()
        time.sleep(min(left, 0.1))


def _worker(index: int, url: str, args: argparse.Namespace, beats: Any, folder: Path) -> None:
    """A forked worker: the real loop on the study, timing its claims. Never returns."""
    code = 0
    os.nice(5)  # below the script, which must go on forking, sampling and killing on a busy machine
    log_fd = os.open(folder / f"worker-{index}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    try:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                            force=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        claims: list[tuple[float, bool]] = []
        real = loop.retrying

        def timed(fn: Any, *, what: str, timeout: float = 120.0) -> Any:
            if what != "claim a trial":
                return real(fn, what=what, timeout=timeout)
            started = time.perf_counter()
            result = real(fn, what=what, timeout=timeout)
            claims.append((time.perf_counter() - started, result is not None))
            return result

        loop.retrying = timed  # type: ignore[assignment]  # the loop looks it up at every call
        beat = optuna.storages.RDBStorage.set_trial_system_attr

        def counted(self: Any, trial_id: int, key: str, value: Any) -> None:
            beat(self, trial_id, key, value)
            if key == records.BEAT:
                beats[index] += 1

        optuna.storages.RDBStorage.set_trial_system_attr = counted  # type: ignore[method-assign]
        study, definition = load_study(open_storage(url, retry_for=120), "fleet")
        objective = SleepingObjective(definition, args.sleep[0], args.sleep[1], folder / "ledger")
        summary = run_worker([Job(study, definition, objective)])
        (folder / f"worker-{index}.json").write_text(json.dumps({
            "claims": claims, "complete": summary.complete, "failed": summary.failed, "dropped": summary.dropped,
            "keras": "keras" in sys.modules or "tensorflow" in sys.modules}))
    except BaseException:  # noqa: BLE001  (a worker's end is reported, whatever it was)
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


WORKER_GIB = 0.03  # a forked worker's own memory (PSS), measured: 30-35 MB at N = 50
LOW_MEMORY_GIB = 1.5  # a run is stopped (its workers SIGKILLed) when the machine has less left


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _memory(pids: list[int]) -> tuple[float, float]:
    """Summed RSS and PSS of ``pids``, in GiB (PSS shares the forked pages out among them)."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 2**20, pss / 2**20


@dataclass
class Samples:
    connections: list[int] = field(default_factory=list)
    complete: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def _sample(conn: psycopg.Connection[Any], samples: Samples) -> None:
    """Every 0.25 s: the server's client connections (not this one) and the trials complete."""
    while not samples.stop.wait(0.25):
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                           "AND pid <> pg_backend_pid()").fetchone()
        samples.connections.append(int(row[0]) if row else 0)
        row = conn.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()
        samples.complete = int(row[0]) if row else 0


def one_run(pg: private_pg.Cluster, n: int, path: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One fleet of ``n`` workers on a fresh database, through ``path``; its measures."""
    database = f"fleet_{n}_{path}"
    available = _available_gib()
    if available < n * WORKER_GIB + 3:  # and 3 GiB left to whatever else the machine runs
        raise MemoryError(f"{n} workers need about {n * WORKER_GIB + 3:.0f} GiB; {available:.0f} GiB available")
    pg.psql(f"CREATE DATABASE {database}")
    folder.mkdir(parents=True)
    trials = n * args.per_worker
    (folder / "fleet.toml").write_text(STUDY.format(trials=trials), encoding="utf-8")
    storage = open_storage(pg.url(database))
    create_study(storage, load_definition(folder / "fleet.toml"))
    load_study(storage, "fleet")[0].get_trials(deepcopy=False)  # what a worker imports on the way, imported here
    records.engine_of(storage).dispose()  # no connection of the parent's crosses the fork
    url = pg.url(database, bouncer=path == "pgbouncer")
    beats = RawArray("l", n)
    gc.collect()
    gc.freeze()  # the imported modules' objects stay shared: the collector leaves them untouched
    cpu0, started = pg.cpu_seconds(), time.monotonic()
    pids: dict[int, int] = {}
    for index in range(n):
        pid = os.fork()
        if pid == 0:
            _worker(index, url, args, beats, folder)
        pids[pid] = index
    gc.unfreeze()
    samples = Samples()
    sampler_conn = psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname={database}", autocommit=True)
    sampler = threading.Thread(target=_sample, args=(sampler_conn, samples), daemon=True)
    sampler.start()
    exits: dict[int, int] = {}
    killed: list[int] = []
    memory = (0.0, 0.0)
    deadline = started + args.timeout
    stopping = False
    try:
        while len(exits) < n:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                exits[pid] = os.waitstatus_to_exitcode(status)
                continue
            now = time.monotonic()
            if _available_gib() < LOW_MEMORY_GIB:
                print(f"  {path} N={n}: under {LOW_MEMORY_GIB} GiB of memory left; SIGKILLing the fleet",
                      file=sys.stderr, flush=True)
                for p in pids:
                    if p not in exits:
                        os.kill(p, signal.SIGKILL)
                stopping, deadline = True, now + 30
            if not killed and (samples.complete >= 0.3 * trials or now > started + args.timeout / 3):
                live = [p for p in pids if p not in exits]
                killed = random.Random(n).sample(live, round(args.kill * n))
                for p in killed:
                    os.kill(p, signal.SIGKILL)
                # After the kill: reading every worker's page tables takes seconds on a busy machine.
                memory = _memory([p for p in live if p not in killed])
                print(f"  {path} N={n}: {samples.complete}/{trials} complete at {now - started:.0f} s; "
                      f"SIGKILLed {len(killed)} workers", file=sys.stderr, flush=True)
            if now > deadline and not stopping:
                print(f"  {path} N={n}: timeout after {args.timeout} s; stopping the workers", file=sys.stderr)
                for p in pids:
                    if p not in exits:
                        os.kill(p, signal.SIGTERM)
                stopping, deadline = True, now + 30
            elif now > deadline:
                for p in pids:
                    if p not in exits:
                        os.kill(p, signal.SIGKILL)
            time.sleep(0.1)
    finally:
        for p in pids:
            if p not in exits:
                os.kill(p, signal.SIGKILL)
                exits[p] = os.waitstatus_to_exitcode(os.waitpid(p, 0)[1])
        samples.stop.set()
        sampler.join()
    wall, cpu = time.monotonic() - started, pg.cpu_seconds() - cpu0
    result = _results(sampler_conn, folder, n, trials, pids, exits, killed, beats, stopping)
    sampler_conn.close()
    pg.psql(f"DROP DATABASE {database} WITH (FORCE)")
    conns = samples.connections or [0]
    result["samples"] = len(samples.connections)
    result.update(path=path, n=n, wall=wall, server_cpu=100 * cpu / wall, conn_peak=max(conns),
                  conn_mean=statistics.mean(conns), rss=memory[0], pss=memory[1], timed_out=stopping)
    return result


def _results(conn: psycopg.Connection[Any], folder: Path, n: int, trials: int, pids: dict[int, int],
             exits: dict[int, int], killed: list[int], beats: Any, stopping: bool) -> dict[str, Any]:
    """What the database and the workers' files say about the run."""
    rows = conn.execute("""
        SELECT t.number, t.state::text, s.value_json, w.value_json, r.value_json,
               extract(epoch FROM t.datetime_start), extract(epoch FROM t.datetime_complete)
        FROM trials t
        LEFT JOIN trial_system_attributes s ON s.trial_id = t.trial_id AND s.key = 'hpo:slot'
        LEFT JOIN trial_system_attributes w ON w.trial_id = t.trial_id AND w.key = 'hpo:worker'
        LEFT JOIN trial_system_attributes r ON r.trial_id = t.trial_id AND r.key = 'hpo:retry_of'""").fetchall()
    complete = Counter(int(slot) for _, state, slot, *_ in rows if state == "COMPLETE")
    killed_pids = {str(p) for p in killed}
    # The trials the killed workers held when killed: theirs, and never completed.
    killed_trials = [(number, state) for number, state, _, worker, *_ in rows if state != "COMPLETE"
                     and worker and json.loads(worker).rpartition(":")[2] in killed_pids]
    retried = {int(retry) for *_, retry, _, _ in rows if retry is not None}
    starts = [float(s) for *_, s, _ in rows if s is not None]
    ends = [float(e) for *_, e in rows if e is not None]
    window = (max(ends) - min(starts)) if starts and ends else float("nan")
    ledger = (folder / "ledger").read_text().splitlines() if (folder / "ledger").exists() else []
    runs = [line.split() for line in ledger if line.startswith("ran")]
    ran = Counter(slot for _, slot, _, _ in runs)
    # A sleep that ran to its end in a worker killed before the loop recorded it: trained again
    # by the retry, the kill's own window (the record's transaction), not a live worker's trial
    # taken from it.
    recorded = {(slot, pid) for kind, slot, _, pid in (line.split() for line in ledger) if kind == "recorded"}
    cut = {slot for _, slot, _, pid in runs if pid in killed_pids and (slot, pid) not in recorded}
    claims: list[float] = []
    keras = dropped = 0
    for index in range(n):
        file = folder / f"worker-{index}.json"
        if file.exists():
            data = json.loads(file.read_text())
            claims += [seconds for seconds, got in data["claims"] if got]
            keras += bool(data["keras"])
            dropped += data["dropped"]
    claims.sort()
    # A worker SIGTERMed at the time limit exits 130, its trial failed as interrupted: no error.
    stopped = [p for p, code in exits.items() if stopping and code == 130 and p not in killed]
    errors = [pids[p] for p, code in exits.items() if code != 0 and p not in killed and p not in stopped]
    return {
        "trials": trials, "slots_complete": len(complete),
        "slots_twice_complete": sum(c > 1 for c in complete.values()),
        "trained_twice": sum(c > 1 for c in ran.values()),
        "twice_by_kill": sum(c > 1 and slot in cut for slot, c in ran.items()), "dropped": dropped,
        "claimed": len(starts), "window": window, "claims_per_s": len(starts) / window,
        "beats_per_s": sum(beats) / window, "claim_p50": claims[len(claims) // 2] if claims else float("nan"),
        "claim_p99": claims[min(len(claims) - 1, int(len(claims) * 0.99))] if claims else float("nan"),
        "killed": len(killed), "killed_trials": len(killed_trials),
        "killed_failed_retried": sum(state == "FAIL" and number in retried for number, state in killed_trials),
        "worker_errors": len(errors), "error_workers": errors[:5], "stopped": len(stopped),
        "keras_loaded": keras,
    }


HEADER = ("| path | N | trials complete (of) | wall | server conns peak / mean | claims/s | claim p50 / p99 "
          "| beats/s | server CPU | trained twice | killed workers: their trials FAIL and retried "
          "| worker errors | workers RSS / PSS |")


def row(r: dict[str, Any]) -> str:
    return (f"| {r['path']} | {r['n']} | {r['slots_complete']} ({r['trials']}){' timed out' if r['timed_out'] else ''} "
            f"| {r['wall']:.0f} s | {r['conn_peak']} / {r['conn_mean']:.0f} | {r['claims_per_s']:.1f} "
            f"| {r['claim_p50'] * 1000:.0f} / {r['claim_p99'] * 1000:.0f} ms | {r['beats_per_s']:.1f} "
            f"| {r['server_cpu']:.0f}% | {r['trained_twice']} ({r['twice_by_kill']} cut by a kill) "
            f"| {r['killed']} killed: "
            f"{r['killed_failed_retried']}/{r['killed_trials']} "
            f"| {r['worker_errors']} ({r['stopped']} stopped at the limit) "
            f"| {r['rss']:.1f} / {r['pss']:.1f} GiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", nargs="+", type=int, default=[50, 100, 200, 500])
    parser.add_argument("--paths", nargs="+", default=["direct", "pgbouncer"], choices=["direct", "pgbouncer"])
    parser.add_argument("--sleep", nargs=2, type=float, default=[1.0, 3.0], metavar=("LOW", "HIGH"),
                        help="A trial sleeps uniform(LOW, HIGH) seconds instead of training.")
    parser.add_argument("--per-worker", type=int, default=4, help="Trials in the study per worker.")
    parser.add_argument("--kill", type=float, default=0.1, help="Fraction of the workers SIGKILLed part-way.")
    parser.add_argument("--heartbeat", nargs=2, type=int, default=[2, 20], metavar=("INTERVAL", "GRACE"))
    parser.add_argument("--timeout", type=float, default=180, help="Seconds a run may take before it is stopped.")
    parser.add_argument("--pool-size", type=int, default=20, help="PgBouncer's default_pool_size.")
    parser.add_argument("--keep", type=Path, help="Keep the workers' logs here.")
    args = parser.parse_args()
    os.environ["HPO_HEARTBEAT_INTERVAL"], os.environ["HPO_GRACE_PERIOD"] = map(str, args.heartbeat)
    print("A LOAD GENERATOR: trials sleep instead of training; hpo's real worker loop, queue, heartbeats "
          f"and records (HPO_HEARTBEAT_INTERVAL={args.heartbeat[0]}, HPO_GRACE_PERIOD={args.heartbeat[1]}).",
          flush=True)
    describe_machine("start")
    describe_code()
    out = args.keep or Path(private_pg.tempfile.mkdtemp(prefix="bench-fleet-"))
    results = []
    with private_pg.cluster(max_connections=100) as pg:
        pg.start_bouncer(args.pool_size, max_clients=1000)
        for i, n in enumerate(args.workers):
            for path in args.paths if i % 2 == 0 else args.paths[::-1]:
                try:
                    r = one_run(pg, n, path, args, out / f"{path}-{n}")
                except MemoryError as exc:
                    print(f"| {path} | {n} | skipped: {exc} |", flush=True)
                    continue
                results.append(r)
                print(row(r), flush=True)
                print(f"  {json.dumps(r)}", file=sys.stderr, flush=True)
    print("\n" + HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for r in sorted(results, key=lambda r: (r["n"], r["path"])):
        print(row(r))
    describe_machine("end")
    if args.keep is None:
        private_pg.shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
