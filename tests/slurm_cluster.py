"""A real Slurm cluster of its own, in a temporary folder: munged, slurmctld, and a slurmd per
simulated host (tests/netns.py: a network namespace, a host name and a PID namespace each).

Nothing of the machine's own Slurm or MUNGE set-up is used or touched: the cluster has its own
MUNGE key and socket, its own ``slurm.conf`` and ``cgroup.conf`` (``SLURM_CONF`` points at it in
:attr:`Cluster.env`), its own ports, state and spool folders, and its daemons are stopped on exit.
slurmctld runs on this machine and listens on every address; each node reaches it, and the
PostgreSQL forwarders of all hosts, through its link's gateway (a default route in each
namespace). Settings that make Slurm quick to test: requeued jobs may start again after 6 s
(``cred_expire=5``) and the scheduler runs every 2 s. Slurm's own clock for time limits and
``--signal`` is not sped up: slurmctld checks them every 30 s.

Needs root, Slurm's daemons and commands (Debian: slurmctld, slurmd, slurm-client), munged
(munge) and what tests/netns.py needs; :func:`unavailable` says what is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import netns

COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue", "sinfo")
CPUS_PER_NODE = 2  # declared, not detected (config_overrides): 2 nodes give 4 one-CPU tasks


def unavailable() -> str | None:
    """Why such a cluster cannot be started here, or None if it can."""
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        return f"no {', '.join(missing)} command (Debian: munge, slurmctld, slurmd, slurm-client)"
    return netns.unavailable()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _conf(folder: Path, hosts: Sequence[netns.Host], ctld_port: int, slurmd_port: int) -> str:
    nodes = "\n".join(f"NodeName={h.name} NodeAddr={h.address} NodeHostname={h.name} CPUs={CPUS_PER_NODE} "
                      f"RealMemory=16384 State=UNKNOWN" for h in hosts)
    return f"""\
ClusterName=hpotest
SlurmctldHost={socket.gethostname()}({hosts[0].gateway})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/socket,cred_expire=5
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/spool/%n.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=15
MinJobAge=3600
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Cluster:
    """The running cluster: its hosts, and the environment its commands need (SLURM_CONF)."""

    folder: Path
    hosts: list[netns.Host]
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *argv: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        """A Slurm command (sbatch, scontrol, ...) against this cluster, with ``env`` added to
        this process's environment (which sbatch hands on to the job): its stdout."""
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {}), **self.env},
                              timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Submit a job as a user does, from the cluster's folder: its job id."""
        return self.run("sbatch", "--parsable", f"--chdir={self.folder}", *args, env=env).strip().split(";")[0]

    def tasks(self, array: str) -> dict[str, dict[str, str]]:
        """Every task of a job array by its id ``ARRAY_TASK`` (``ARRAY_0-3`` for tasks not yet
        started): ``scontrol show job``'s fields (JobState, Restarts, NodeList, ...)."""
        out: dict[str, dict[str, str]] = {}
        for line in self.run("scontrol", "show", "job", "-o", array).splitlines():
            fields = dict(w.partition("=")[::2] for w in line.split() if "=" in w)
            out[f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"] = fields
        return out


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"the test cluster did not start: timed out waiting for {what}")


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@contextlib.contextmanager
def cluster(folder: Path, nodes: int = 2) -> Iterator[Cluster]:
    """A cluster of ``nodes`` simulated hosts (``host1``, ...), one partition holding them all;
    stopped, its jobs with it, on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("munge", "state", "log", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    folder.chmod(0o755)
    (folder / "munge").chmod(0o755)  # munged wants its socket's folder searchable by all
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    started: list[subprocess.Popen[bytes]] = []
    nodes_started: list[subprocess.Popen[bytes]] = []

    def start(argv: Sequence[str], log: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, stdout=(folder / "log" / log).open("wb"), stderr=subprocess.STDOUT,
                                   env={**os.environ, **env})
        started.append(process)
        return process

    with netns.hosts(nodes) as hosts:
        try:
            for host in hosts:
                # Each node reaches slurmctld and every host's forwarder through its gateway.
                subprocess.run(["ip", "-n", host.netns, "route", "add", "default", "via", host.gateway],
                               check=True, capture_output=True, timeout=30)
                (folder / "spool" / host.name).mkdir()
            conf = folder / "slurm.conf"
            conf.write_text(_conf(folder, hosts, _free_port(), _free_port()))
            # slurmd 22.05 refuses CgroupPlugin=disabled; v1 with systemd ignored starts anywhere.
            (folder / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n")
            made = Cluster(folder, hosts, {"SLURM_CONF": str(conf)})
            munge = folder / "munge"
            start(["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge / 'socket'}",
                   f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                   f"--seed-file={munge / 'munged.seed'}"], "munged.out", {})
            _wait(lambda: (munge / "socket").exists(), 30, "munged's socket")
            start(["slurmctld", "-D", "-f", str(conf)], "slurmctld.out", made.env)
            _wait(lambda: "is UP" in made.run("scontrol", "ping", check=False), 60, "slurmctld to answer")
            for host in hosts:
                nodes_started.append(start(host.command(["slurmd", "-D", "-N", host.name, "-f", str(conf)]),
                                           f"slurmd-{host.name}.out", made.env))
            _wait(lambda: made.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).split().count("idle") == nodes,
                  60, f"{nodes} idle nodes")
            yield made
        finally:
            subprocess.run(["scancel", "--user=root"], capture_output=True, timeout=60, check=False,
                           env={**os.environ, "SLURM_CONF": str(folder / "slurm.conf")})
            for process in nodes_started:
                # slurmd is PID 1 of its host's PID namespace, under `unshare`, which does not
                # end it: killing slurmd ends the namespace, and every job process in it.
                for pid in _children(process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for process in reversed(started):
                _stop(process)
