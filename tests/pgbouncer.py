"""A real PgBouncer (Debian's ``pgbouncer``) in transaction-pooling mode, in front of the test
PostgreSQL server, started and stopped by the tests that use it.

Transaction pooling is what managed PostgreSQL services put in front of their servers: each
transaction of a client runs on whichever server connection is free, so nothing a client sets
for its session (startup ``options``, ``SET``, prepared statements, session advisory locks)
survives to its next transaction. PgBouncer runs as the ``postgres`` user (it refuses root),
listens on a port of its own and relays every database name to the server (``* =``).
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

import sqlalchemy


@dataclass(frozen=True)
class PgBouncer:
    port: int
    log: Path

    def url_for(self, database_url: str) -> str:
        """``database_url`` (a database on the server) as reached through this PgBouncer."""
        url = sqlalchemy.engine.make_url(database_url)
        return url.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)


def unavailable() -> str | None:
    """Why PgBouncer cannot be started here, or None."""
    if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        return "no `pgbouncer` command (Debian's package pgbouncer)"
    if os.geteuid() != 0:
        return "PgBouncer is started as the postgres user, which needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(*, server_port: int = 5432, pool_size: int = 10) -> Iterator[PgBouncer]:
    """A PgBouncer on a free port for the ``with`` block, at most ``pool_size`` server connections
    per database; stopped (and its server connections closed) afterwards. Its files are in a
    folder of its own under /tmp (the postgres user cannot enter pytest's root-only ones)."""
    with tempfile.TemporaryDirectory(prefix="hpo-pgbouncer-") as name:
        yield from _run(Path(name), server_port, pool_size)


def _run(folder: Path, server_port: int, pool_size: int) -> Iterator[PgBouncer]:
    port = _free_port()
    (folder / "userlist.txt").write_text('"postgres" ""\n', encoding="utf-8")
    config = folder / "pgbouncer.ini"
    log = folder / "pgbouncer.log"
    config.write_text(f"""\
[databases]
* = host=127.0.0.1 port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
max_db_connections = {pool_size}
logfile = {log}
pidfile = {folder / "pgbouncer.pid"}
""", encoding="utf-8")
    shutil.chown(folder, "postgres")
    for path in folder.iterdir():
        shutil.chown(path, "postgres")
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    # Its output goes to a file: PgBouncer logs every login to stderr too, and a pipe nobody
    # reads fills, and stops it.
    with open(folder / "pgbouncer.out", "wb") as out:
        process = subprocess.Popen(["runuser", "-u", "postgres", "--", binary, str(config)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_listening(port, process, folder / "pgbouncer.out")
        yield PgBouncer(port, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], output: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = output.read_text(encoding="utf-8", errors="replace")
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {said[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"pgbouncer did not listen on port {port} within 30 s")
