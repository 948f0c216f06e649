"""A private PostgreSQL cluster and a PgBouncer in front of it, for one benchmark run.

Both live in a temporary folder, on ports of their own, run as the ``postgres`` user (initdb
refuses root) and are stopped when the ``with`` block ends, on an exception or Ctrl-C too. The
server's CPU (every process of the cluster, the backends that have exited included, through the
postmaster's ``cutime``/``cstime``) and its client connections can be read while it runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PGBOUNCER = os.environ.get("PGBOUNCER", "/usr/sbin/pgbouncer")
USER = "postgres"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", USER, "--", *args], check=True, capture_output=True, text=True,
                          **kwargs)  # type: ignore[call-overload]


@dataclass
class Cluster:
    folder: Path
    port: int
    bouncer_port: int | None = None
    _bouncer: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres", *, bouncer: bool = False) -> str:
        port = self.bouncer_port if bouncer else self.port
        return f"postgresql://{USER}@127.0.0.1:{port}/{database}"

    @property
    def postmaster(self) -> int:
        return int((self.folder / "data" / "postmaster.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole cluster so far: the postmaster, its reaped children
        (cutime, cstime) and its live ones."""
        total = 0.0
        master = self.postmaster
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(entry.name), int(fields[1])
            if pid == master:
                total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            elif ppid == master:
                total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run([str(BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d",
                              database, "-Atqc", sql], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def start_bouncer(self, pool_size: int, max_clients: int) -> None:
        """PgBouncer in transaction pooling mode in front of the cluster."""
        self.bouncer_port = free_port()
        conf = self.folder / "pgbouncer.ini"
        # hpo sends libpq's "options" (its idle_in_transaction_session_timeout); PgBouncer 1.18
        # refuses any startup parameter it does not know, so it is ignored here, and the server
        # carries the same limit as its default instead (see start()).
        conf.write_text(f"""[databases]
* = host=127.0.0.1 port={self.port} user={USER}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.bouncer_port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_clients}
ignore_startup_parameters = options,extra_float_digits
logfile = {self.folder / 'pgbouncer.log'}
pidfile = {self.folder / 'pgbouncer.pid'}
""", encoding="utf-8")
        shutil.chown(conf, USER)
        self._bouncer = subprocess.Popen(["runuser", "-u", USER, "--", PGBOUNCER, str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.bouncer_port), 0.2):
                return
            time.sleep(0.1)
        raise RuntimeError(f"PgBouncer did not start; see {self.folder / 'pgbouncer.log'}")

    def stop_bouncer(self) -> None:
        if self._bouncer is not None and self._bouncer.poll() is None:
            self._bouncer.terminate()
            try:
                self._bouncer.wait(10)
            except subprocess.TimeoutExpired:
                self._bouncer.kill()
                self._bouncer.wait()
        self._bouncer = None


@contextlib.contextmanager
def cluster(max_connections: int = 100, idle_in_transaction_s: int = 20) -> Iterator[Cluster]:
    """A fresh cluster, started, with ``max_connections``; stopped (and PgBouncer) at the end."""
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    shutil.chown(folder, USER)
    data = folder / "data"
    c = Cluster(folder, free_port())
    started = False
    try:
        _as_postgres([str(BIN / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"])
        options = (f"-p {c.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder} "
                   f"-c max_connections={max_connections} -c fsync=on -c synchronous_commit=on "
                   f"-c idle_in_transaction_session_timeout={idle_in_transaction_s * 1000}")
        _as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"),
                      "-w", "start"])
        started = True
        yield c
    finally:
        c.stop_bouncer()
        if started:
            with contextlib.suppress(subprocess.CalledProcessError):
                _as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)
