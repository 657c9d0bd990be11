"""LAN discovery over real mDNS on this machine.

The announce-and-find tests need multicast datagrams to loop back to this host's own
sockets. :func:`multicast_probe` checks exactly that with plain sockets first; where
it fails (a sandbox without a multicast-capable interface) those tests are skipped with
the socket error as the reason, never passed silently. Where it works they must pass.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from pqcall import __version__
from pqcall.client.discovery import FoundServer, find_servers
from pqcall.exceptions import LocalProtocolError
from pqcall.server.discovery import ServerAnnouncer, local_addresses
from pqcall.signaling.mdns import SERVICE_TYPE, DiscoveryUnavailable
from tests.harness import TIMEOUT_SCALE, run_bounded

FIND_S = 2.0 * TIMEOUT_SCALE  # browse time
TEST_TIMEOUT_S = 30.0 * TIMEOUT_SCALE  # a whole test
MDNS_GROUP = "224.0.0.251"
PROBE_TIMEOUT_S = 1.0 * TIMEOUT_SCALE
UNROUTABLE_INTERFACE = "203.0.113.9"  # TEST-NET-3: on no interface of any machine

T = TypeVar("T")


def multicast_probe() -> tuple[list[str], list[str]]:
    """Which local IPv4 interfaces loop a multicast datagram back to this host's sockets.

    Tries every local IPv4 address as the multicast interface, as zeroconf does.
    Returns the interfaces that work, and the errors of those that do not.
    """
    working: list[str] = []
    errors: list[str] = []
    interfaces = [a for a in local_addresses() if ipaddress.ip_address(a).version == 4]
    for interface in dict.fromkeys([*interfaces, "127.0.0.1"]):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            receiver.bind(("", 0))
            membership = struct.pack(
                "4s4s", socket.inet_aton(MDNS_GROUP), socket.inet_aton(interface)
            )
            receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            sender.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface)
            )
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sender.sendto(b"pqcall probe", (MDNS_GROUP, receiver.getsockname()[1]))
            receiver.settimeout(PROBE_TIMEOUT_S)
            if receiver.recv(64) == b"pqcall probe":
                working.append(interface)
        except OSError as exc:
            errors.append(f"{interface}: {exc}")
        finally:
            receiver.close()
            sender.close()
    return working, errors


MULTICAST_INTERFACES, MULTICAST_ERRORS = multicast_probe()
needs_multicast = pytest.mark.skipif(
    not MULTICAST_INTERFACES,
    reason=f"multicast to {MDNS_GROUP} does not loop back here ({'; '.join(MULTICAST_ERRORS)})",
)
# observed in a network namespace with only lo up: announce and find work, but a second
# responder on the host does not see the first one's answers to its probes
needs_multicast_beyond_loopback = pytest.mark.skipif(
    MULTICAST_INTERFACES == ["127.0.0.1"],
    reason="multicast loops back only through lo here, where zeroconf's name-conflict "
    "probing between two responders on one host does not work",
)


def run(main: Coroutine[Any, Any, T]) -> T:
    return run_bounded(main, TEST_TIMEOUT_S)


@needs_multicast
def test_announced_server_is_found_and_withdrawn_at_close():
    async def main() -> None:
        announcer = ServerAnnouncer(
            "pqcall test server", 5001, ["192.0.2.10"], relay_port=5002, is_tls=True
        )
        # a foreign announcer with a sloppy TXT record must parse without errors
        foreign = AsyncZeroconf()
        sloppy = ServiceInfo(
            SERVICE_TYPE,
            f"sloppy.{SERVICE_TYPE}",
            port=8080,
            properties={"relay": "not a port", "api": "no-slash"},
            server="sloppy-host.local.",
            parsed_addresses=["192.0.2.11"],
        )
        await asyncio.gather(announcer.start(), foreign.async_register_service(sloppy))
        try:
            found = {server.name: server for server in await find_servers(FIND_S)}
            assert found["pqcall test server"] == FoundServer(
                name="pqcall test server",
                url="https://192.0.2.10:5001",
                addresses=("192.0.2.10",),
                port=5001,
                version=__version__,
                relay_port=5002,
            )
            assert found["sloppy"] == FoundServer(
                name="sloppy",
                url="http://192.0.2.11:8080",
                addresses=("192.0.2.11",),
                port=8080,
                version="",
                relay_port=None,
            )
            await announcer.close()
            names = [server.name for server in await find_servers(FIND_S)]
            assert "pqcall test server" not in names
            assert "sloppy" in names
        finally:
            await announcer.close()
            await foreign.async_close()

    run(main())


async def two_responders_see_each_others_probes() -> bool:
    """Whether a second zeroconf responder on this host notices a name the first one holds.

    Probing asks for unicast answers (RFC 6762 section 5.4) to port 5353, which both
    responders bind with SO_REUSEPORT; the kernel hands each such datagram to one of
    them only, so on some hosts the answer never reaches the prober. Plain zeroconf,
    no pqcall code: this checks the host, not us.
    """
    # the second opens after the first has announced, so only its probes can find the name
    first = AsyncZeroconf()
    second: AsyncZeroconf | None = None
    try:
        infos = [
            ServiceInfo(
                SERVICE_TYPE,
                f"host check.{SERVICE_TYPE}",
                port=port,
                server="host-check.local.",
                parsed_addresses=[address],
            )
            for port, address in ((5101, "192.0.2.40"), (5102, "192.0.2.41"))
        ]
        await (await first.async_register_service(infos[0]))
        second = AsyncZeroconf()
        await (await second.async_register_service(infos[1], allow_name_change=True))
        return infos[1].name != infos[0].name
    finally:
        await first.async_close()
        if second is not None:
            await second.async_close()


@needs_multicast
@needs_multicast_beyond_loopback
def test_a_taken_name_gets_a_suffix():
    if not run(two_responders_see_each_others_probes()):
        pytest.skip(
            "two mDNS responders on this host do not see each other's probe answers "
            "(unicast replies to a shared port 5353 reach only one socket), so name "
            "conflicts cannot be detected here; plain zeroconf shows the same"
        )

    async def main() -> None:
        first = ServerAnnouncer("pqcall twin", 5001, ["192.0.2.20"])
        second = ServerAnnouncer("pqcall twin", 5003, ["192.0.2.21"])
        try:
            await first.start()
            await second.start()
            assert first.name == "pqcall twin"
            assert second.name == "pqcall twin-2"
        finally:
            await asyncio.gather(first.close(), second.close())

    run(main())


@needs_multicast
def test_background_start_returns_at_once():
    async def main() -> None:
        announcer = ServerAnnouncer("pqcall background", 5001, ["192.0.2.30"])
        loop = asyncio.get_running_loop()
        started = loop.time()
        await announcer.start(wait=False)
        assert loop.time() - started < 0.5 * TIMEOUT_SCALE  # probing takes about 1.7 s
        await announcer.close()  # also cancels the announcement in flight
        await announcer.close()

    run(main())


def test_no_multicast_interface_is_a_clear_error_not_a_crash():
    async def main() -> None:
        message = "mDNS is not available here: 203.0.113.9 is not an address of this host"
        with pytest.raises(DiscoveryUnavailable, match=message):
            await find_servers(0.1, interfaces=[UNROUTABLE_INTERFACE])
        announcer = ServerAnnouncer(
            "pqcall nowhere", 5001, ["192.0.2.40"], interfaces=[UNROUTABLE_INTERFACE]
        )
        with pytest.raises(DiscoveryUnavailable, match=message):
            await announcer.start()
        await announcer.close()
        addressless = ServerAnnouncer("pqcall addressless", 5001, [])
        with pytest.raises(DiscoveryUnavailable, match="no network address to announce"):
            await addressless.start()

    run(main())


@pytest.mark.parametrize(
    "name", ["", "a.b", "x" * 64, "é" * 32], ids=["empty", "dot", "too-long", "too-many-bytes"]
)
def test_bad_instance_names_are_refused(name):
    with pytest.raises(LocalProtocolError, match="server name must be 1-63 bytes without dots"):
        ServerAnnouncer(name, 5001)


def test_bad_port_is_refused():
    with pytest.raises(LocalProtocolError, match="port must be 1-65535, not 0"):
        ServerAnnouncer("pqcall", 0)


def test_local_addresses_are_addresses():
    for address in local_addresses():  # may be empty: a host with no interface up
        assert not ipaddress.ip_address(address).is_link_local
