"""Separate hosts on one machine: Linux network namespaces joined by veth links.

Each host (the server, the phones, the switch or NAT routers between them) is a
network namespace of its own, with real non-loopback IPv4 addresses, so a
process in one namespace reaches the others only over the links built here,
as on separate machines. Needs root and ``ip`` (iproute2); the NAT topology
also needs ``nft`` (nftables).

Topologies (:data:`TOPOLOGIES`)::

    lan         server 10.201.0.1 ─┐
                alice  10.201.0.2 ─┼─ br0 in "switch"      one L2 segment, like one WiFi
                bob    10.201.0.3 ─┘

    isolated    alice 10.202.1.2 ── 10.202.1.1 server 10.202.2.1 ── 10.202.2.2 bob
                (the server does not forward: alice and bob reach only the server)

    nat         alice 192.168.1.2 ── nat-alice ─┐                   each phone behind a
                                     10.203.0.2 ├─ br0 in "switch"  masquerading router;
                bob   192.168.2.2 ── nat-bob ───┤                   the server on the
                                     10.203.0.3 │                   "internet" side
                server 10.203.0.1 ──────────────┘

    wan         alice 192.168.1.2 ── nat-alice ── 10.204.1.1 ┐
                                     10.204.1.2              │ "internet": a router
                bob   192.168.2.2 ── nat-bob ──── 10.204.2.1 ├ (one hop between the NATs,
                                     10.204.2.2              │ as on the internet)
                server 10.204.0.2 ─────────────── 10.204.0.1 ┘

    ``wan:ALICE,BOB`` names each router's NAT kind (:data:`NAT_KINDS`; ``wan`` alone
    is ``wan:cone-accept,cone-accept``): ``cone`` masquerades keeping the port where
    it can (endpoint-independent in practice: Linux keeps the source port unless
    the tuple is taken), ``symmetric`` masquerades ``fully-random`` (a new port for
    every destination); ``accept`` lets unsolicited input reach the router itself
    (no firewall: a connection-tracking entry is kept for it), ``drop`` drops it
    (a home router's firewall: only replies and the LAN's traffic pass).

In every topology each phone's default route points at the next hop (the
server, or its router), so traffic the topology forbids is silently dropped
there (as on a WiFi with client isolation), not refused with an error. IPv6
link-local addresses are off (``addrgenmode none``) so that the only
addresses a phone finds on its interfaces are the ones drawn above.

Usage::

    with Network.create("lan") as net:
        server = net.server.popen(["pqcall", "server", ...])
        net.server.wait_for_port(5001)
        url = f"http://{net.address_of(net.server, net.alice)}:5001/health"
        net.alice.run([sys.executable, "-c", f"import httpx; httpx.get({url!r})"], check=True)

Namespace names are ``pqcall-t<pid>-<random>-<host>``: parallel runs never
meet, and namespaces left by a run that was killed (its pid is gone) are
deleted by the next :meth:`Network.create`. :meth:`Network.close` (also on
``with`` exit) stops every process started in the namespaces and deletes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from tests.netns_plans import NAT_KINDS, TOPOLOGIES, Plan, nat_rules, plan_of

__all__ = [
    "NAMESPACE_PREFIX",
    "NAT_KINDS",
    "TOPOLOGIES",
    "Host",
    "Network",
    "RigError",
    "Unavailable",
    "is_required",
    "remove_stale",
]

NAMESPACE_PREFIX: Final = "pqcall-t"
"""Every namespace this module creates starts with this."""
REQUIRED_ENV: Final = "PQCALL_TEST_NETNS"
"""Set to ``1`` where the rig must work (CI): a failure to build it then fails tests."""
STOP_TIMEOUT_S: Final = 5.0
"""How long :meth:`Network.close` waits for a process after SIGTERM before SIGKILL."""
NETNS_DIR: Final = Path("/run/netns")
"""Where ``ip netns`` keeps its named namespaces."""
_CLONE_NEWNET: Final = 0x40000000  # from <sched.h>


class Unavailable(Exception):
    """Network namespaces cannot be made here (not root, no ``ip``, no permission)."""


class RigError(Exception):
    """A step of building or tearing down the rig failed where namespaces do work."""


def is_required() -> bool:
    """Whether the rig must work here: ``PQCALL_TEST_NETNS=1`` or ``CI`` set to true."""
    ci = os.environ.get("CI", "").strip().lower()
    return os.environ.get(REQUIRED_ENV) == "1" or ci in ("1", "true", "yes")


def _ip_command() -> str:
    """Path of ``ip``, also where ``/usr/sbin`` is not on PATH.

    Raises:
        Unavailable: not root, or no ``ip``.
    """
    if os.geteuid() != 0:
        raise Unavailable("not running as root")
    for candidate in (shutil.which("ip"), "/usr/sbin/ip", "/sbin/ip"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise Unavailable("no ip command (install iproute2)")


def _run(args: Sequence[str], *, input_text: str | None = None) -> str:
    """Run a setup command; its stdout.

    Raises:
        RigError: it failed (the message has its stderr).
    """
    done = subprocess.run(args, input=input_text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RigError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespace_pids(ip: str, ns: str) -> list[int]:
    done = subprocess.run([ip, "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def _delete_namespace(ip: str, ns: str) -> None:
    """Kill what still runs in ``ns`` (only our own processes can be there), delete it."""
    for pid in _namespace_pids(ip, ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _run([ip, "netns", "delete", ns])


def remove_stale(ip: str | None = None) -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone; their names.

    Raises:
        Unavailable: not root, or no ``ip``.
        RigError: a stale namespace cannot be deleted.
    """
    ip = ip or _ip_command()
    listing = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, check=False)
    removed = []
    for line in listing.stdout.splitlines():
        name = line.split(" ", 1)[0]
        if not name.startswith(NAMESPACE_PREFIX):
            continue
        owner = name[len(NAMESPACE_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            _delete_namespace(ip, name)
            removed.append(name)
    return removed


@dataclass(eq=False)
class Host:
    """One machine of the rig: a network namespace and its address.

    ``run`` and ``popen`` take the arguments of :func:`subprocess.run` and
    :class:`subprocess.Popen` and run the command inside the namespace (``ip
    netns exec``); the environment, working directory and files are the test's
    own, only the network differs.
    """

    name: str
    """Role in the topology: ``server``, ``alice``, ``bob``, ``switch``, ``nat-alice`` ..."""
    ns: str
    """The namespace's name (for ``ip netns exec``)."""
    address: str
    """Its main IPv4 address (the server's address depends on who asks in ``isolated``:
    use :meth:`Network.address_of`); empty for a switch."""
    ip: str = field(repr=False)
    """Path of the ``ip`` command."""
    processes: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)
    """Everything :meth:`popen` started, stopped by :meth:`Network.close`."""

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` prefixed so they run inside this namespace."""
        return [self.ip, "netns", "exec", self.ns, *args]

    def run(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """:func:`subprocess.run` inside this namespace."""
        return subprocess.run(self.command(args), **kwargs)

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """:class:`subprocess.Popen` inside this namespace; stopped when the network closes."""
        process: subprocess.Popen[Any] = subprocess.Popen(self.command(args), **kwargs)
        self.processes.append(process)
        return process

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket of this test process that lives in this namespace.

        It is created in a short-lived thread that has joined the namespace
        (``setns``); the socket stays in it after the thread ends.

        Raises:
            RigError: the namespace cannot be joined.
        """
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def make() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(NETNS_DIR / self.ns, os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        error = ctypes.get_errno()
                        raise OSError(error, os.strerror(error))
                finally:
                    os.close(fd)
                made.append(socket.socket(family, kind))
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=make, name=f"setns-{self.ns}")
        thread.start()
        thread.join()
        if failed:
            raise RigError(f"cannot join namespace {self.ns}: {failed[0]}") from failed[0]
        return made[0]

    def wait_for_port(
        self,
        port: int,
        address: str | None = None,
        *,
        timeout_s: float = 10.0,
        process: subprocess.Popen[Any] | None = None,
    ) -> float:
        """Wait until a TCP connection from this host to ``address:port`` is accepted.

        Args:
            port: the TCP port.
            address: where to connect (default: this host's own address).
            timeout_s: how long to try.
            process: the process that should open the port; if it exits, stop waiting.

        Returns:
            The seconds it took.

        Raises:
            TimeoutError: nothing accepted within ``timeout_s``, or ``process`` exited.
        """
        target = (address or self.address, port)
        start = time.monotonic()
        deadline = start + timeout_s
        while True:
            with self.socket() as probe:
                probe.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
                try:
                    probe.connect(target)
                except OSError:
                    pass
                else:
                    return time.monotonic() - start
            if process is not None and process.poll() is not None:
                raise TimeoutError(
                    f"{target[0]}:{port} from {self.name}: the process exited"
                    f" with {process.returncode} before accepting"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{target[0]}:{port} from {self.name}: nothing accepted")
            time.sleep(0.02)


class Network:
    """A built topology: its hosts, and :meth:`close` to tear it all down.

    Make one with :meth:`create`; use it as a context manager.
    """

    def __init__(
        self, topology: str, hosts: dict[str, Host], ip: str, seen_as: dict[tuple[str, str], str]
    ) -> None:
        self.topology = topology  # one of TOPOLOGIES
        self.hosts = hosts  # by role
        self._ip = ip  # path of the ip command
        self._seen_as = seen_as  # (target role, from role) -> address, where not the main one
        self._closed = False  # close() ran

    @classmethod
    def create(cls, topology: str) -> Network:
        """Build ``topology`` (see the module docstring) under fresh namespace names.

        Raises:
            ValueError: unknown topology.
            Unavailable: namespaces cannot be made here (not root, no ``ip``,
                ``ip netns add`` refused, no ``nft`` for ``nat``).
            RigError: a later step failed (what was built is torn down).
        """
        plan = plan_of(topology)
        ip = _ip_command()
        nft = None
        if plan.masquerade:
            nft = shutil.which("nft") or next(
                (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
            )
            if nft is None:
                raise Unavailable("no nft command (install nftables)")
        remove_stale(ip)
        tag = f"{NAMESPACE_PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        hosts = {
            role: Host(name=role, ns=f"{tag}-{role}", address=address, ip=ip)
            for role, address in plan.hosts.items()
        }
        network = cls(topology, hosts, ip, plan.seen_as)
        try:
            network._build(plan, nft)
        except BaseException:
            network.close()
            raise
        return network

    def _build(self, plan: Plan, nft: str | None) -> None:
        ip, hosts = self._ip, self.hosts
        created: list[Host] = []
        for host in hosts.values():
            done = subprocess.run(
                [ip, "netns", "add", host.ns], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                self.hosts = {h.name: h for h in created}  # close() deletes only these
                raise Unavailable(f"ip netns add failed: {done.stderr.strip()}")
            created.append(host)
        # one batch of ip commands per namespace (``ip -n NS -batch -``), after the links
        batches: dict[str, list[str]] = {role: [] for role in hosts}
        for link in plan.links:
            (role_a, if_a, _), (role_b, if_b, _) = link.a, link.b
            ns_a, ns_b = hosts[role_a].ns, hosts[role_b].ns
            _run(
                [
                    ip,
                    "link",
                    "add",
                    if_a,
                    "netns",
                    ns_a,
                    "type",
                    "veth",
                    *("peer", "name", if_b),
                    *("netns", ns_b),
                ]
            )
            for role, interface, address in (link.a, link.b):
                batches[role].append(f"link set dev {interface} addrgenmode none")
                if address:
                    batches[role].append(f"address add {address} dev {interface}")
        for role, ports in plan.bridges.items():
            batches[role].append("link add br0 type bridge")
            batches[role].append("link set dev br0 addrgenmode none")
            batches[role].extend(f"link set dev {port} master br0" for port in ports)
        for link in plan.links:
            for role, interface, _ in (link.a, link.b):
                batches[role].append(f"link set dev {interface} up")
        for role in plan.bridges:
            batches[role].append("link set dev br0 up")
        for role in hosts:
            batches[role].append("link set dev lo up")
        for role, gateway in plan.routes.items():
            batches[role].append(f"route add default via {gateway}")
        for role, commands in batches.items():
            _run([ip, "-n", hosts[role].ns, "-batch", "-"], input_text="\n".join(commands) + "\n")
        for role, enabled in plan.forwarding.items():
            # per namespace; written from inside it (a new namespace's default is not ours)
            value = "1" if enabled else "0"
            _run(hosts[role].command(["sh", "-c", f"echo {value} > /proc/sys/net/ipv4/ip_forward"]))
        for role, interface in plan.masquerade.items():
            assert nft is not None
            rules = nat_rules(interface, plan.nat_kinds.get(role, "cone-accept"))
            _run(hosts[role].command([nft, "-f", "-"]), input_text=rules)

    @property
    def server(self) -> Host:
        """The signaling server's host."""
        return self.hosts["server"]

    @property
    def alice(self) -> Host:
        """The first phone's host."""
        return self.hosts["alice"]

    @property
    def bob(self) -> Host:
        """The second phone's host."""
        return self.hosts["bob"]

    @property
    def phones(self) -> tuple[Host, Host]:
        """Alice's and Bob's hosts."""
        return self.alice, self.bob

    def address_of(self, target: Host, seen_from: Host) -> str:
        """The address ``seen_from`` reaches ``target`` at.

        In ``isolated`` the server has one address per phone: the one on the
        link to it. Elsewhere, the target's main address (which ``seen_from``
        may have no route to: a phone behind NAT, for example).
        """
        return self._seen_as.get((target.name, seen_from.name), target.address)

    def close(self) -> None:
        """Stop every process started in the namespaces, delete the namespaces.

        Safe to call twice.

        Raises:
            RigError: a namespace could not be deleted (after trying them all).
        """
        if self._closed:
            return
        self._closed = True
        processes = [p for host in self.hosts.values() for p in host.processes]
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        errors = []
        for host in self.hosts.values():
            try:
                _delete_namespace(self._ip, host.ns)
            except RigError as exc:
                errors.append(str(exc))
        if errors:
            raise RigError("; ".join(errors))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        with contextlib.suppress(RigError):  # do not hide the error that got us here
            self.close()
