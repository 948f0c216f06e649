"""Simulated hosts on this machine: a network namespace, a host name and a PID namespace each.

A test that needs workers on "other machines" gets a :class:`Host` per machine. Each host
reaches the PostgreSQL server (which listens on 127.0.0.1 only and is left as it is) solely
through its own veth link: the host side of the link carries a small TCP forwarder, started here,
that relays to 127.0.0.1:5432. Cutting the link (:meth:`Host.cut`) takes the host side of the
veth down: packets are dropped silently, so TCP on both ends stalls and retransmits, as in a real
network partition, and nothing is reset. :meth:`Host.restore` brings it back.

One difference from a real partition: the server's end of a cut connection stays healthy, as
its peer is the forwarder, over loopback. So the server never notices a cut by itself here; a
real one would, through TCP retransmission timeouts (about 15 minutes, when it has unanswered
data) or keepalives (after two hours by default). Nothing in hpo may count on either.

Addresses: 10.200.K.0/30 per host (host side .1, namespace side .2), with K chosen among the
third octets no route here uses yet. Nothing else is touched.

Needs root, ``ip`` (iproute2) and ``unshare`` (util-linux); :func:`unavailable` says why not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator, Sequence

SUBNETS = ipaddress.ip_network("10.200.0.0/16")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why simulated hosts cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command"
    name = f"hpo-probe-{uuid.uuid4().hex[:6]}"
    try:
        made = _ip("netns", "add", name, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        probe = subprocess.run(
            ["ip", "netns", "exec", name, "unshare", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child",
             "sh", "-c", "hostname probe && hostname"],
            capture_output=True, text=True, timeout=30)
        if probe.returncode != 0 or probe.stdout.strip() != "probe":
            return f"`unshare --uts --pid` in a network namespace failed: {probe.stderr.strip()}"
    finally:
        _ip("netns", "delete", name, check=False)
    return None


class Forwarder:
    """Relays every TCP connection accepted on ``listen`` to ``target``, one thread per direction.

    End of stream is passed on as a half-close, so either side may close first. The relay never
    times a connection out: when a link is cut, both its sockets simply wait, as a router would.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(listen, reuse_port=False)
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name=f"forward-{listen[0]}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # One side is gone for good: end both, as a host that lost a peer would.
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        # Closing alone does not end an accept() blocked in another thread: on Linux the socket
        # would go on listening, and the next test's forwarder on the same address could not bind.
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@dataclass
class Host:
    """One simulated machine: its name, its network namespace and its link to this machine."""

    name: str
    netns: str
    veth: str            # the host side of the link, in this (the root) namespace
    gateway: str         # address of the link's host side, where the forwarder listens
    address: str         # address inside the namespace
    forwarder: Forwarder | None = field(default=None, repr=False)

    def cut(self) -> None:
        """Drop every packet on the link, silently: TCP on both ends stalls, nothing resets."""
        _ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        _ip("link", "set", self.veth, "up")

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on this host: in its network namespace, under its host name, as PID 1 of
        a PID namespace of its own (which dies with the ``unshare`` process that starts it)."""
        return ["ip", "netns", "exec", self.netns,
                "unshare", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child",
                "sh", "-c", f'hostname {self.name} && exec "$@"', "sh", *argv]

    def popen(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(argv), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def _free_octets(n: int) -> list[int]:
    routes = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr").stdout
    used = {net.network_address.packed[2] for net in _networks_in(routes) if net.overlaps(SUBNETS)}
    free = [k for k in range(1, 255) if k not in used]
    if len(free) < n:
        raise RuntimeError("no free 10.200.K.0/30 subnets left")
    return free[:n]


def _networks_in(text: str) -> Iterator[ipaddress.IPv4Network]:
    for word in text.split():
        with contextlib.suppress(ValueError):
            yield ipaddress.ip_network(word, strict=False)  # type: ignore[misc]


@contextlib.contextmanager
def hosts(count: int, *, target: tuple[str, int] = ("127.0.0.1", 5432)) -> Iterator[list[Host]]:
    """``count`` simulated hosts, each with a forwarder to ``target`` on its link's host side
    (same port). Namespaces, links and forwarders are removed on exit, whatever happened."""
    tag = uuid.uuid4().hex[:5]
    made: list[Host] = []
    try:
        for i, k in enumerate(_free_octets(count), start=1):
            host = Host(name=f"host{i}", netns=f"hpo-{tag}-{i}", veth=f"hv{tag}{i}",
                        gateway=f"10.200.{k}.1", address=f"10.200.{k}.2")
            peer = f"nv{tag}{i}"
            _ip("netns", "add", host.netns)
            made.append(host)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer, "netns", host.netns)
            _ip("addr", "add", f"{host.gateway}/30", "dev", host.veth)
            _ip("link", "set", host.veth, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/30", "dev", peer)
            _ip("-n", host.netns, "link", "set", peer, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            host.forwarder = Forwarder((host.gateway, target[1]), target)
        yield made
    finally:
        for host in made:
            if host.forwarder is not None:
                host.forwarder.close()
            _ip("link", "delete", host.veth, check=False)  # takes its peer with it
            _ip("netns", "delete", host.netns, check=False)
