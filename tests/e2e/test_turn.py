"""TURN through a real coturn (issue 17 part 2): the server's credentials, and a call whose
callee has no UDP of its own.

coturn is started by each test with a temp configuration on random ports
(tests/turnserver.py). The credentials are the ones ``pqcall server --turn ...
--turn-secret-file`` hands out (server/turn.py); the phone's side is
transport/turn.py (aioice's TURN client). Timing bounds scale with
``PQCALL_TEST_TIMEOUT_SCALE``.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from aioice.stun import TransactionFailed

from pqcall.media.audio import ToneSource
from pqcall.server.relay import MediaRelay
from pqcall.server.relay_table import Role
from pqcall.server.turn import TurnService, turn_credentials
from pqcall.transport.connect import open_media_socket, run_path_selection
from pqcall.transport.path_choice import PathKind, TurnRoute
from pqcall.transport.path_messages import PathRole
from pqcall.transport.path_responder import PathResponder
from pqcall.transport.pathcheck import PathSelection
from pqcall.transport.relay_wire import RelayTarget
from pqcall.transport.session import MediaSession, MediaSettings
from pqcall.transport.turn import TurnRelay, TurnUrl, run_path_selection_over_turn
from pqcall.transport.turn_path import (
    allocate_turn,
    establish_path_over_turn,
    turn_for,
    udp_reaches_relay,
)
from tests.harness import TIMEOUT_SCALE
from tests.transport.test_connect import closed_port
from tests.transport.test_session import (
    CALLEE_TONE_HZ,
    CALLER_TONE_HZ,
    MemorySink,
    dominant_hz,
    rms,
    run,
)
from tests.turnserver import Coturn
from tests.utils import handshake_pair, keys_of

CALLER_KEYS, CALLEE_KEYS = keys_of(handshake_pair())
CALL_S = 2.0
ALLOCATE_S = 5.0 * TIMEOUT_SCALE


@pytest.fixture
def coturn(tmp_path: Path):
    with Coturn.start(tmp_path, tls=True) as server:
        yield server


def tls_context(server: Coturn) -> ssl.SSLContext:
    assert server.cafile is not None
    return ssl.create_default_context(cafile=str(server.cafile))


async def allocate(server: Coturn, transport: str, secret: bytes | None = None) -> TurnRelay:
    """An allocation with the credentials pqcall's server would hand out for a call."""
    service = TurnService((TurnUrl.parse(server.url(transport)),), secret or server.secret)
    grant = service.grant("0123456789abcdef0123456789abcdef", is_caller=False)
    return await TurnRelay.allocate(
        TurnUrl.parse(grant.urls[0]),
        grant.username,
        grant.password,
        ssl_context=tls_context(server),
        timeout_s=ALLOCATE_S,
    )


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((data, addr))


async def until(predicate: Any, timeout_s: float = 5.0 * TIMEOUT_SCALE) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_the_servers_credentials_allocate_on_coturn_and_relay_both_ways(coturn, transport):
    async def main() -> None:
        relay = await allocate(coturn, transport)
        loop = asyncio.get_running_loop()
        peer_transport, peer = await loop.create_datagram_endpoint(
            Inbox, local_addr=("127.0.0.1", 0)
        )
        inbox = Inbox()
        relay.receiver = inbox
        try:
            host, port = relay.relayed_address
            assert host == "127.0.0.1" and port != coturn.port
            # what a path through it shows (issue 17): the server and how it is reached
            server_port = coturn.tls_port if transport == "tls" else coturn.port
            assert relay.route == TurnRoute(
                transport, (coturn.host, server_port), relay.relayed_address
            )
            peer_at = peer_transport.get_extra_info("sockname")[:2]
            relay.sendto(b"from the phone", peer_at)  # makes the permission for the peer
            await until(lambda: bool(peer.received))
            assert peer.received[0] == (b"from the phone", relay.relayed_address)
            peer_transport.sendto(b"from the peer", relay.relayed_address)
            await until(lambda: bool(inbox.received))
            assert inbox.received[0] == (b"from the peer", peer_at)
        finally:
            peer_transport.close()
            await relay.close()

    run(main)


def test_expired_or_foreign_credentials_are_refused(coturn):
    async def main() -> None:
        url = TurnUrl.parse(coturn.url("tcp"))
        expired = turn_credentials(coturn.secret, "call.c", int(time.time()) - 10)
        with pytest.raises(TransactionFailed, match="401"):
            await TurnRelay.allocate(url, *expired, timeout_s=ALLOCATE_S)
        with pytest.raises(TransactionFailed, match="401"):
            await allocate(coturn, "tcp", secret=b"not the secret shared with coturn")

    run(main)


def test_a_call_whose_callee_has_only_turn_over_tcp(coturn):
    """Bob has no UDP socket at all: path checks and SFrame media go over his TCP
    connection to coturn, relayed as UDP to alice's ordinary media socket."""

    async def main() -> None:
        bob_relay = await allocate(coturn, "tcp")
        alice_sock = open_media_socket(host="127.0.0.1")
        alice_at = alice_sock.getsockname()[:2]
        # bob offers his relayed address (a relay candidate); alice offers her host one
        alice_selection = PathSelection(
            CALLER_KEYS,
            PathRole.CONTROLLING,
            [bob_relay.relayed_address],
            token_source=secrets.token_bytes,
        )
        bob_selection = PathSelection(
            CALLEE_KEYS,
            PathRole.CONTROLLED,
            [alice_at],
            token_source=secrets.token_bytes,
        )
        alice_choice, bob_choice = await asyncio.gather(
            run_path_selection(alice_sock, alice_selection),
            run_path_selection_over_turn(bob_relay, bob_selection),
        )
        assert alice_choice.kind is bob_choice.kind is PathKind.DIRECT
        assert alice_choice.peer == bob_relay.relayed_address  # alice sends to coturn
        assert bob_choice.peer == alice_at
        took = (alice_choice.elapsed_ms, bob_choice.elapsed_ms)
        print(f"\nTURN/TCP: path chosen after {took[0]:.0f} / {took[1]:.0f} ms")  # noqa: T201
        # media: real SFrame sessions, tones both ways
        alice_hears, bob_hears = MemorySink(), MemorySink()
        alice = MediaSession(
            CALLER_KEYS,
            ToneSource(CALLER_TONE_HZ),
            alice_hears,
            settings=MediaSettings(media_timeout_s=10.0),
            side_channel=PathResponder(CALLER_KEYS, alice_choice),
        )
        bob = MediaSession(
            CALLEE_KEYS,
            ToneSource(CALLEE_TONE_HZ),
            bob_hears,
            settings=MediaSettings(media_timeout_s=10.0),
            side_channel=PathResponder(CALLEE_KEYS, bob_choice),
        )
        await alice.open(sock=alice_sock)
        await bob.open(endpoint=bob_relay.endpoint)
        assert bob.local_address == bob_relay.relayed_address
        alice.connect(alice_choice.peer)
        bob.connect(bob_choice.peer)
        try:
            await asyncio.sleep(CALL_S * TIMEOUT_SCALE)
            assert dominant_hz(bob_hears.tail(0.5)) == pytest.approx(CALLER_TONE_HZ, abs=4)
            assert dominant_hz(alice_hears.tail(0.5)) == pytest.approx(CALLEE_TONE_HZ, abs=4)
            assert rms(bob_hears.tail(0.5)) > 0.25 and rms(alice_hears.tail(0.5)) > 0.25
            for session in (alice, bob):
                stats = session.snapshot()
                assert stats.packets_received >= 50
                assert stats.packets_rejected == 0
        finally:
            await alice.close()
            await bob.close()

    run(main)


# the policy: probe UDP, then TURN; the pqcall relay reached through TURN


def test_the_udp_probe_binds_nothing():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            allocation = relay.allocate("c1")
            target = RelayTarget(relay.address, allocation.caller_token)
            assert await udp_reaches_relay(target)
            stats = relay.stats()
            assert (stats.challenges, stats.binds) == (1, 0)
            assert relay._table.bound_address("c1", Role.CALLER) is None
            closed = RelayTarget(("127.0.0.1", closed_port()), allocation.caller_token)
            assert not await udp_reaches_relay(closed, timeout_s=0.2)
            # without TURN credentials, or when UDP works, the call stays on its socket
            assert await turn_for(None, target) is None

    run(main)


def test_tcp_first_when_udp_is_blocked_and_bad_urls_are_skipped(coturn):
    async def main() -> None:
        service = TurnService((TurnUrl.parse(coturn.url("tcp")),), coturn.secret)
        grant = service.grant("c" * 32, is_caller=True)
        dead_udp = f"turn:127.0.0.1:{closed_port()}?transport=udp"
        grant = grant.model_copy(update={"urls": ["turn:", dead_udp, *grant.urls]})
        relay = await allocate_turn(grant, udp_blocked=True, timeout_s=ALLOCATE_S)
        assert relay is not None and relay.url.transport == "tcp"
        await relay.close()

    run(main)


def test_both_use_the_pqcall_relay_and_bob_reaches_it_through_turn(coturn):
    """No direct path; bob's binds, the relay's challenge and bob's answer, then his
    media, all go through coturn over TCP; the relay sees bob at his relayed address."""

    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            allocation = relay.allocate("call-1")
            bob_turn = await allocate(coturn, "tcp")
            alice_sock = open_media_socket(host="127.0.0.1")
            dead = [("127.0.0.1", closed_port())]
            alice_choice, bob_choice = await asyncio.gather(
                run_path_selection(
                    alice_sock,
                    PathSelection(
                        CALLER_KEYS,
                        PathRole.CONTROLLING,
                        dead,
                        RelayTarget(relay.address, allocation.caller_token),
                        token_source=secrets.token_bytes,
                        direct_timeout_s=0.3,
                    ),
                ),
                establish_path_over_turn(
                    bob_turn,
                    CALLEE_KEYS,
                    PathRole.CONTROLLED,
                    dead,
                    RelayTarget(relay.address, allocation.callee_token),
                ),
            )
            assert alice_choice.kind is bob_choice.kind is PathKind.RELAY
            assert relay._table.bound_address("call-1", Role.CALLEE) == bob_turn.relayed_address
            alice_hears, bob_hears = MemorySink(), MemorySink()
            alice = MediaSession(CALLER_KEYS, ToneSource(CALLER_TONE_HZ), alice_hears)
            bob = MediaSession(CALLEE_KEYS, ToneSource(CALLEE_TONE_HZ), bob_hears)
            await alice.open(sock=alice_sock)
            await bob.open(endpoint=bob_turn.endpoint)
            alice.connect(alice_choice.peer)
            bob.connect(bob_choice.peer)
            try:
                await asyncio.sleep(CALL_S * TIMEOUT_SCALE)
                assert dominant_hz(bob_hears.tail(0.5)) == pytest.approx(CALLER_TONE_HZ, abs=4)
                assert dominant_hz(alice_hears.tail(0.5)) == pytest.approx(CALLEE_TONE_HZ, abs=4)
                assert relay.stats().packets_forwarded >= 2 * 50
            finally:
                await alice.close()
                await bob.close()

    run(main)
