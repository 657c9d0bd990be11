"""Path selection on real loopback UDP sockets, then media on the chosen path.

Both sides run in one event loop. Timing bounds only ever give more slack on slow
machines: scale them with ``PQCALL_TEST_TIMEOUT_SCALE``.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Sequence

import ifaddr
import pytest

from pqcall.crypto.handshake import CallKeys
from pqcall.exceptions import CallError, LocalProtocolError, PathFailed
from pqcall.media.audio import ToneSource
from pqcall.server.relay import MediaRelay
from pqcall.transport.candidates import MAX_CANDIDATES, Candidate
from pqcall.transport.connect import (
    establish_path,
    local_candidates,
    open_media_socket,
    parse_host_port,
    resolve_candidates,
    run_path_selection,
)
from pqcall.transport.path_choice import DropReason, PathChoice, PathKind
from pqcall.transport.path_messages import (
    PATH_MAGIC,
    Address,
    MessageType,
    PathMessage,
    PathRole,
    path_check_key,
)
from pqcall.transport.path_responder import PathResponder
from pqcall.transport.pathcheck import PathSelection
from pqcall.transport.relay_wire import RelayTarget
from pqcall.transport.session import MediaSession, MediaSettings
from tests.transport.test_session import (
    CALLEE_TONE_HZ,
    CALLER_TONE_HZ,
    TIMEOUT_SCALE,
    MemorySink,
    dominant_hz,
    rms,
    run,
)
from tests.utils import MALLORY, handshake_pair, keys_of

CALLER_KEYS, CALLEE_KEYS = keys_of(handshake_pair())
MALLORY_KEYS, _ = keys_of(handshake_pair(call_id=b"call-2", caller_identity=MALLORY))
SHORT_TIMEOUT_S = 0.5 * TIMEOUT_SCALE  # for selections that must fail
SLACK_S = 0.5 * TIMEOUT_SCALE
TEST_NET = ("192.0.2.1", 9)  # RFC 5737 documentation address: nothing answers there
CALL_S = 1.5  # media after the path is chosen


def loopback_socket() -> socket.socket:
    return open_media_socket(host="127.0.0.1")


def address_of(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return (str(host), int(port))


def closed_port() -> int:
    """A loopback UDP port no socket is bound to (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def both(
    caller_sock: socket.socket,
    caller_remote: Sequence[Candidate | tuple[str, int]],
    callee_sock: socket.socket,
    callee_remote: Sequence[Candidate | tuple[str, int]],
    relays: tuple[RelayTarget, RelayTarget] | None = None,
    **kwargs: float,
) -> tuple[PathChoice, PathChoice]:
    """Both sides' path selection, run concurrently."""
    caller_relay, callee_relay = (None, None) if relays is None else relays
    return await asyncio.gather(
        establish_path(
            caller_sock, CALLER_KEYS, PathRole.CONTROLLING, caller_remote, caller_relay, **kwargs
        ),
        establish_path(
            callee_sock, CALLEE_KEYS, PathRole.CONTROLLED, callee_remote, callee_relay, **kwargs
        ),
    )


async def start_media(
    keys: CallKeys, sock: socket.socket, choice: PathChoice, tone_hz: float
) -> tuple[MediaSession, MemorySink]:
    """A session that adopts ``sock`` and sends a tone to the chosen peer."""
    sink = MemorySink()
    session = MediaSession(
        keys,
        ToneSource(tone_hz),
        sink,
        settings=MediaSettings(media_timeout_s=10.0),
        side_channel=PathResponder(keys, choice),
    )
    await session.open(sock=sock)
    session.connect(choice.peer)
    return session, sink


async def talk(
    caller_sock: socket.socket,
    caller_choice: PathChoice,
    callee_sock: socket.socket,
    callee_choice: PathChoice,
) -> None:
    """Tones both ways over the chosen paths for CALL_S; each side hears the other's."""
    caller, caller_hears = await start_media(
        CALLER_KEYS, caller_sock, caller_choice, CALLER_TONE_HZ
    )
    callee, callee_hears = await start_media(
        CALLEE_KEYS, callee_sock, callee_choice, CALLEE_TONE_HZ
    )
    try:
        await asyncio.sleep(CALL_S)
        assert dominant_hz(callee_hears.tail(0.5)) == pytest.approx(CALLER_TONE_HZ, abs=4)
        assert dominant_hz(caller_hears.tail(0.5)) == pytest.approx(CALLEE_TONE_HZ, abs=4)
        assert rms(callee_hears.tail(0.5)) > 0.25 and rms(caller_hears.tail(0.5)) > 0.25
        for session in (caller, callee):
            stats = session.snapshot()
            assert stats.packets_received >= 50
            assert stats.packets_rejected == 0
            assert session.foreign_datagrams == 0
    finally:
        await caller.close()
        await callee.close()
    assert caller_sock.fileno() == -1  # the session owned and closed the socket


# direct


def test_direct_path_between_two_sockets_then_audio_both_ways():
    async def main() -> None:
        a, b = loopback_socket(), loopback_socket()
        mine, its = await both(a, [address_of(b)], b, [address_of(a)])
        assert (mine.kind, mine.peer, mine.local_candidate) == (
            PathKind.DIRECT,
            address_of(b),
            address_of(a),
        )
        assert (its.kind, its.peer, its.local_candidate) == (
            PathKind.DIRECT,
            address_of(a),
            address_of(b),
        )
        assert mine.elapsed_ms < 500 * TIMEOUT_SCALE
        assert mine.stats.rejected == its.stats.rejected == 0
        await talk(a, mine, b, its)

    run(main)


def test_unreachable_candidates_first_then_the_reachable_one():
    async def main() -> None:
        a, b = loopback_socket(), loopback_socket()
        dead = [("127.0.0.1", closed_port()), TEST_NET]
        mine, its = await both(a, [*dead, address_of(b)], b, dead)
        assert (mine.kind, mine.peer) == (PathKind.DIRECT, address_of(b))
        assert (its.kind, its.peer) == (PathKind.DIRECT, address_of(a))
        assert mine.elapsed_ms < 500 * TIMEOUT_SCALE
        a.close()
        b.close()

    run(main)


def test_host_names_are_resolved():
    async def main() -> None:
        a, b = loopback_socket(), loopback_socket()
        port = address_of(b)[1]
        named: list[Candidate | tuple[str, int]] = [
            Candidate(host="no-such-host.invalid", port=port),
            ("localhost", port),
        ]
        mine, _ = await both(a, named, b, [Candidate(host="127.0.0.1", port=address_of(a)[1])])
        assert mine.peer == ("127.0.0.1", port)
        a.close()
        b.close()

    run(main)


# relay


def test_relay_when_no_candidate_answers_and_audio_flows_through_it():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            allocation = relay.allocate("call-1")
            relays = (
                RelayTarget(relay.address, allocation.caller_token),
                RelayTarget(relay.address, allocation.callee_token),
            )
            a, b = loopback_socket(), loopback_socket()
            dead = [("127.0.0.1", closed_port()), TEST_NET]
            mine, its = await both(a, dead, b, dead, relays, direct_timeout_s=0.3)
            for choice in (mine, its):
                assert (choice.kind, choice.peer) == (PathKind.RELAY, relay.address)
                assert choice.relay == relay.address
            # the caller tried the direct path for 0.3 s first
            assert mine.elapsed_ms >= 300
            assert mine.stats.checks_sent >= 2 * 3  # both dead addresses, at 0, 50 and 150 ms
            await talk(a, mine, b, its)
            assert relay.stats().packets_forwarded >= 2 * 50

    run(main)


def test_no_candidate_and_no_relay_fails_within_the_timeout():
    async def main() -> None:
        a, b = loopback_socket(), loopback_socket()
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            establish_path(
                a, CALLER_KEYS, PathRole.CONTROLLING, [], None, timeout_s=SHORT_TIMEOUT_S
            ),
            establish_path(
                b, CALLEE_KEYS, PathRole.CONTROLLED, [], None, timeout_s=SHORT_TIMEOUT_S
            ),
            return_exceptions=True,
        )
        assert loop.time() - started < SHORT_TIMEOUT_S + SLACK_S
        for result in results:
            assert isinstance(result, PathFailed)
        assert str(results[0]) == (
            f"no media path after {SHORT_TIMEOUT_S:g} s: the peer offered no usable address; "
            "no relay offered"
        )
        assert str(results[1]) == (
            f"no media path after {SHORT_TIMEOUT_S:g} s: the caller nominated no direct path; "
            "no relay offered"
        )
        a.close()
        b.close()

    run(main)


# what is rejected


def selection(keys: CallKeys, remote: list[Address]) -> PathSelection:
    return PathSelection(
        keys,
        PathRole.of(keys.role),
        remote,
        token_source=secrets.token_bytes,
        timeout_s=SHORT_TIMEOUT_S,
    )


def test_a_third_party_is_rejected_and_counted():
    async def main() -> None:
        bob_sock, mallory_sock = loopback_socket(), loopback_socket()
        bob = selection(CALLEE_KEYS, [address_of(mallory_sock)])
        mallory = selection(MALLORY_KEYS, [address_of(bob_sock)])
        results = await asyncio.gather(
            run_path_selection(bob_sock, bob),
            run_path_selection(mallory_sock, mallory),
            return_exceptions=True,
        )
        assert all(isinstance(result, PathFailed) for result in results)
        assert bob.stats.dropped[DropReason.UNAUTHENTICATED] >= 3
        assert bob.stats.checks_received == bob.stats.responses_received == 0
        assert mallory.stats.dropped[DropReason.UNAUTHENTICATED] >= 3
        bob_sock.close()
        mallory_sock.close()

    run(main)


def test_our_own_checks_reflected_back_are_rejected():
    async def main() -> None:
        sock = loopback_socket()
        ours = selection(CALLER_KEYS, [address_of(sock)])  # "the peer" is ourselves
        with pytest.raises(PathFailed):
            await run_path_selection(sock, ours)
        stats = ours.stats
        assert stats.dropped[DropReason.REFLECTED] == stats.checks_sent >= 3
        assert stats.checks_received == stats.responses_received == 0
        sock.close()

    run(main)


# once media runs


async def receive_path_message(sock: socket.socket, key: bytes) -> PathMessage:
    """The next path message on ``sock``, skipping media."""
    loop = asyncio.get_running_loop()
    while True:
        data, _ = await loop.sock_recvfrom(sock, 2048)
        if data.startswith(PATH_MAGIC):
            return PathMessage.parse(data, key)


def test_callee_answers_a_late_nomination_after_its_session_started():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        key = path_check_key(CALLER_KEYS)
        hand = loopback_socket()  # plays the caller, by hand
        b = loopback_socket()
        selecting = asyncio.create_task(
            establish_path(b, CALLEE_KEYS, PathRole.CONTROLLED, [], None)
        )
        nominate = PathMessage(
            MessageType.NOMINATE, PathRole.CONTROLLING, bytes(12), address_of(b)
        ).serialize(key)
        await loop.sock_sendto(hand, nominate, address_of(b))
        choice = await asyncio.wait_for(selecting, 2 * TIMEOUT_SCALE)
        assert (choice.kind, choice.peer) == (PathKind.DIRECT, address_of(hand))
        first_ack = await receive_path_message(hand, key)
        assert first_ack.kind is MessageType.NOMINATE_ACK
        session, _ = await start_media(CALLEE_KEYS, b, choice, CALLEE_TONE_HZ)
        try:
            await asyncio.sleep(0.1)
            # the ack was lost, says the caller: it nominates again, and checks too
            await loop.sock_sendto(hand, nominate, address_of(b))
            late_ack = await asyncio.wait_for(receive_path_message(hand, key), 1 * TIMEOUT_SCALE)
            assert late_ack == first_ack
            check = PathMessage(
                MessageType.CHECK, PathRole.CONTROLLING, b"\x01" * 12, address_of(b)
            ).serialize(key)
            await loop.sock_sendto(hand, check, address_of(b))
            response = await asyncio.wait_for(receive_path_message(hand, key), 1 * TIMEOUT_SCALE)
            assert response.kind is MessageType.RESPONSE
            assert response.address == address_of(hand)
            # neither is media, nor rejected
            assert session.side_channel_datagrams == 2
            assert session.packets_rejected == 0
            assert session.protocol_stats.sframe.dropped == 0
        finally:
            await session.close()
            hand.close()

    run(main)


def test_media_session_takes_a_socket_or_an_address_not_both():
    async def main() -> None:
        sock = loopback_socket()
        session = MediaSession(CALLER_KEYS, ToneSource(440), MemorySink())
        with pytest.raises(LocalProtocolError, match="a local address or a socket, not both"):
            await session.open(("127.0.0.1", 0), sock=sock)
        assert await session.open(sock=sock) == address_of(sock)
        await session.close()

    run(main)


# the socket and the candidates


def test_a_media_port_in_use_is_a_clear_error():
    taken = open_media_socket()
    port = address_of(taken)[1]
    try:
        with pytest.raises(CallError) as raised:
            open_media_socket(port)
        assert str(raised.value) == f"media port {port} is in use"
    finally:
        taken.close()


def fake_adapters() -> list[ifaddr.Adapter]:
    def adapter(name: str, *ips: str | tuple[str, int, int]) -> ifaddr.Adapter:
        return ifaddr.Adapter(name, name, [ifaddr.IP(ip, 24, name) for ip in ips])

    return [
        adapter("lo", "127.0.0.1", ("::1", 0, 0)),
        adapter("eth0", "192.168.1.20", "169.254.3.4", ("fe80::1", 0, 2)),
        adapter("wlan0", "10.0.0.5", "192.168.1.20"),
    ]


def test_local_candidates_lists_interfaces_with_loopback_last(monkeypatch):
    monkeypatch.setattr(ifaddr, "get_adapters", fake_adapters)
    assert local_candidates(5004) == [
        Candidate(host="192.168.1.20", port=5004),
        Candidate(host="10.0.0.5", port=5004),
        Candidate(host="127.0.0.1", port=5004),
    ]


def test_local_candidates_are_at_most_eight(monkeypatch):
    many = [ifaddr.Adapter(f"if{i}", "", [ifaddr.IP(f"10.0.{i}.1", 24, "")]) for i in range(12)]
    monkeypatch.setattr(ifaddr, "get_adapters", lambda: many)
    candidates = local_candidates(5004)
    assert len(candidates) == MAX_CANDIDATES
    assert candidates[0].host == "10.0.0.1"


def test_an_advertised_address_is_the_only_candidate(monkeypatch):
    monkeypatch.setattr(ifaddr, "get_adapters", fake_adapters)
    assert local_candidates(5004, ("phone.example.org", 6000)) == [
        Candidate(host="phone.example.org", port=6000)
    ]
    with pytest.raises(LocalProtocolError, match="cannot advertise bad host!:6000"):
        local_candidates(5004, ("bad host!", 6000))
    with pytest.raises(LocalProtocolError, match="media port must be from 1 to 65535"):
        local_candidates(0)


def test_this_machine_has_candidates():
    candidates = local_candidates(5004)
    assert 1 <= len(candidates) <= MAX_CANDIDATES
    assert candidates[-1].host.startswith("127.") or all(
        not c.host.startswith("127.") for c in candidates
    )


def test_resolve_candidates_keeps_ipv4_in_order_once():
    async def main() -> list[Address]:
        return await resolve_candidates(
            [
                ("10.0.0.1", 5004),
                Candidate(host="::1", port=5004),
                ("::ffff:10.0.0.2", 5004),
                ("10.0.0.1", 5004),
                ("localhost", 5006),
            ]
        )

    assert run(main) == [("10.0.0.1", 5004), ("10.0.0.2", 5004), ("127.0.0.1", 5006)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.5:5004", ("203.0.113.5", 5004)),
        ("phone.example.org:1", ("phone.example.org", 1)),
    ],
)
def test_parse_host_port(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["5004", ":5004", "host:", "host:0", "host:65536", "host:x"])
def test_parse_host_port_refuses(text):
    with pytest.raises(LocalProtocolError, match="expected HOST:PORT"):
        parse_host_port(text)
