"""Candidate gathering on real UDP sockets: STUN against the server's relay port, openers' TTL."""

from __future__ import annotations

import asyncio
import socket
import time

from aioice import stun

from pqcall.server.relay import MediaRelay
from pqcall.transport.candidates import Candidate, candidate_priority, priority_of
from pqcall.transport.connect import open_media_socket
from pqcall.transport.gather import (
    GATHER_TIMEOUT_S,
    OPENER,
    OPENER_TTL,
    gather_candidates,
    send_openers,
    stun_binding,
    stun_server_of,
)
from tests.harness import TIMEOUT_SCALE

IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Linux's value; Python 3.11 lacks the name


def closed_port() -> int:
    """A UDP port on loopback that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _FixedStun(asyncio.DatagramProtocol):
    """A STUN server that says every client is at ``mapped`` (as a NAT would make it look)."""

    def __init__(self, mapped: tuple[str, int]) -> None:
        self.mapped = mapped
        self.transport: asyncio.DatagramTransport | None = None
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        request = stun.parse_message(data)
        self.requests += 1
        response = stun.Message(
            stun.Method.BINDING,
            stun.Class.RESPONSE,
            request.transaction_id,
            {"XOR-MAPPED-ADDRESS": self.mapped},
        )
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


def test_stun_binding_against_the_relay_port_gives_the_socket_address():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            with open_media_socket(0, host="127.0.0.1") as sock:
                mapped = await stun_binding(sock, relay.address)
                assert mapped == sock.getsockname()
            assert relay.stun.stats.answered >= 1

    asyncio.run(main())


def test_gathering_adds_the_server_reflexive_candidate_last_by_priority():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(
            lambda: _FixedStun(("203.0.113.7", 40000)), local_addr=("127.0.0.1", 0)
        )
        try:
            with open_media_socket(0) as sock:
                port = sock.getsockname()[1]
                offer = await gather_candidates(
                    sock, stun_server=transport.get_extra_info("sockname")[:2]
                )
        finally:
            transport.close()
        reflexive = Candidate("203.0.113.7", 40000, "srflx", candidate_priority("srflx"))
        assert offer[-1] == reflexive
        hosts = offer[:-1]
        assert hosts and all(c.kind == "host" and c.port == port for c in hosts)
        priorities = [c.priority for c in offer]
        assert priorities == sorted(priorities, reverse=True)
        assert len(set(priorities)) == len(priorities)
        assert server.requests >= 1

    asyncio.run(main())


def test_gathering_without_an_answer_gives_host_candidates_in_bounded_time():
    async def main() -> None:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent,
            open_media_socket(0, host="127.0.0.1") as sock,
        ):
            silent.bind(("127.0.0.1", 0))
            start = time.monotonic()
            offer = await gather_candidates(sock, stun_server=silent.getsockname())
            elapsed = time.monotonic() - start
            assert [c.kind for c in offer] == ["host"] * len(offer)
            assert GATHER_TIMEOUT_S * 0.9 <= elapsed <= GATHER_TIMEOUT_S + 1.0 * TIMEOUT_SCALE
            assert silent.recv(2048)  # the request did go out
        # nothing on that UDP port: the ICMP error ends the wait, and the socket works after
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer,
            open_media_socket(0, host="127.0.0.1") as sock,
        ):
            peer.bind(("127.0.0.1", 0))
            start = time.monotonic()
            offer = await gather_candidates(sock, stun_server=("127.0.0.1", closed_port()))
            assert time.monotonic() - start < GATHER_TIMEOUT_S * 0.9
            assert {c.kind for c in offer} == {"host"}
            sock.sendto(b"to closed", ("127.0.0.1", closed_port()))
            await asyncio.sleep(0.05)
            peer.sendto(b"media", sock.getsockname())
            loop = asyncio.get_running_loop()
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 64), 2.0 * TIMEOUT_SCALE)
            assert data == b"media"  # no error left over, none reported any more
        # no STUN server at all: no wait
        with open_media_socket(0) as sock:
            start = time.monotonic()
            offer = await gather_candidates(sock, stun_server=None)
            assert time.monotonic() - start < 0.2 * TIMEOUT_SCALE
            assert offer and offer[0].priority == candidate_priority("host")

    asyncio.run(main())


def test_advertise_is_the_only_candidate():
    async def main() -> None:
        with open_media_socket(0, host="127.0.0.1") as sock:
            offer = await gather_candidates(
                sock, stun_server=("127.0.0.1", 9), advertise=("198.51.100.4", 5004)
            )
        assert offer == [Candidate("198.51.100.4", 5004, "host", candidate_priority("host"))]

    asyncio.run(main())


def test_openers_leave_with_a_low_ttl_and_the_socket_ttl_is_restored():
    async def main() -> None:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer,
            open_media_socket(0, host="127.0.0.1") as sock,
        ):
            peer.bind(("127.0.0.1", 0))
            peer.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            peer.settimeout(2.0 * TIMEOUT_SCALE)
            before = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
            sent = await send_openers(sock, [peer.getsockname(), ("127.0.0.1", 9)])
            assert sent == 2
            data, ancillary, _, _ = peer.recvmsg(64, socket.CMSG_SPACE(4))
            assert data == OPENER
            ttls = [
                int.from_bytes(d[:4], "little")
                for level, kind, d in ancillary
                if (level, kind) == (socket.IPPROTO_IP, socket.IP_TTL)
            ]
            assert ttls == [OPENER_TTL]
            assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == before
            sock.sendto(b"media", peer.getsockname())
            _, ancillary, _, _ = peer.recvmsg(64, socket.CMSG_SPACE(4))
            assert int.from_bytes(ancillary[0][2][:4], "little") == before

    asyncio.run(main())


def test_stun_server_of_the_server_url_and_priorities():
    assert stun_server_of("http://10.0.0.1:5001") == ("10.0.0.1", 5001)
    assert stun_server_of("https://pqcall.example") == ("pqcall.example", 443)
    assert stun_server_of("not a url") is None
    assert candidate_priority("host") > candidate_priority("srflx") > candidate_priority("relay")
    assert candidate_priority("host", 0) > candidate_priority("prflx")
    assert priority_of(("1.2.3.4", 5)) == 0
    assert priority_of(Candidate("1.2.3.4", 5, "srflx", 7)) == 7
